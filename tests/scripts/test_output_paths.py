"""No command deletes or replaces what it did not write: every output path a script takes is
checked before any work. An existing file needs ``--overwrite``; an output folder that holds
other files is refused even with it; an earlier output of the same kind is replaced only with
``--overwrite``; folders follow the user's umask. (``predict``, ``export`` and ``--workdir``:
tests/inference and tests/training.)"""

from __future__ import annotations

import os
import stat
from pathlib import Path

import numpy as np
import pytest

from aum_jax.core import storage
from aum_jax.data import teacher_logits
from tests.helpers import assert_one_error_line, run


def _users_folder(root: Path) -> dict[Path, bytes]:
    """A folder of the user's own files; returns each file's bytes, to check they survive."""
    (root / "sub").mkdir(parents=True)
    files = {root / "thesis.txt": b"chapter one\n", root / "sub" / "data.csv": b"a,b\n1,2\n"}
    for path, data in files.items():
        path.write_bytes(data)
    return files


def _intact(files: dict[Path, bytes], folder: Path) -> None:
    assert {p: p.read_bytes() for p in files} == files
    assert sorted(p.name for p in folder.iterdir()) == sorted({p.relative_to(folder).parts[0] for p in files})


def _scripts_cases(tmp: Path) -> list[tuple[list[str], Path, str]]:
    """(command, the user's path it names, the flag the error must name): each must be refused."""
    folder = tmp / "users"
    existing = tmp / "notes.json"
    existing.write_text("{}")
    speech = tmp / "speech"
    speech.mkdir()
    for name in ("validation_list.txt", "testing_list.txt"):
        (speech / name).write_text("")
    (tmp / "clips.json").write_text('{"data": []}')
    (tmp / "clips_weight.csv").write_text("1.0\n")
    return [
        (["scripts/teacher_logits.py", "--model-dir=any", f"--out={folder}"], folder, "--out"),
        (["scripts/teacher_logits.py", "--model-dir=any", f"--out={folder}", "--overwrite"], folder, "--out"),
        (["scripts/convert_checkpoint.py", "--torch-checkpoint=any.pth", f"--output={folder}", "--overwrite"],
         folder, "--output"),
        (["scripts/linear_probe.py", "--model-dir=any", f"--out={existing}"], existing, "--out"),
        (["scripts/prep_audioset.py", "--segments-csv=any.csv", "--audio-dir=any", f"--out={existing}"], existing,
         "--out"),
        (["scripts/prep_epic_sounds.py", "--annotations=any.csv", "--hdf5=any.h5", f"--out={folder}"], folder, "--out"),
        (["scripts/prep_speechcommands.py", f"--root={speech}", f"--out-dir={folder / 'sub'}"], folder, "--out-dir"),
        (["scripts/gen_weight_file.py", f"--datafile={tmp / 'clips.json'}"], tmp / "clips_weight.csv", "weight file"),
    ]


def test_every_script_refuses_an_output_path_it_did_not_write_before_any_work(tmp_path):
    files = _users_folder(tmp_path / "users")
    (tmp_path / "users" / "sub" / "speechcommand_train_data.json").write_text("mine")
    files[tmp_path / "users" / "sub" / "speechcommand_train_data.json"] = b"mine"
    mode = stat.S_IMODE((tmp_path / "users").stat().st_mode)
    for args, path, flag in _scripts_cases(tmp_path):
        before = path.read_bytes() if path.is_file() else None
        done = run(*args)
        assert_one_error_line(done, flag, str(path))
        if before is not None:
            assert path.read_bytes() == before, args
    _intact(files, tmp_path / "users")
    assert stat.S_IMODE((tmp_path / "users").stat().st_mode) == mode


def test_stored_logits_never_replace_a_folder_of_other_files_and_follow_the_umask(tmp_path):
    keys, logits = ["a.wav", "b.wav"], np.eye(2, 3, dtype=np.float32)
    files = _users_folder(tmp_path / "users")
    with pytest.raises(storage.OutputExistsError, match="thesis.txt"):
        teacher_logits.write(tmp_path / "users", keys, logits, {})
    _intact(files, tmp_path / "users")
    assert [p.name for p in tmp_path.iterdir()] == ["users"]  # no staging folder left behind.

    old = os.umask(0o027)
    try:
        teacher_logits.write(tmp_path / "logits", keys, logits, {})
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "logits").stat().st_mode) == 0o750
    teacher_logits.write(tmp_path / "logits", keys, 2 * logits, {})  # an earlier stored-logits folder: replaced.
    np.testing.assert_array_equal(np.load(tmp_path / "logits" / teacher_logits.LOGITS_FILE), 2 * logits)
    (tmp_path / "logits" / "mine.txt").write_text("mine")
    with pytest.raises(storage.OutputExistsError, match="mine.txt"):
        teacher_logits.write(tmp_path / "logits", keys, logits, {})
    assert (tmp_path / "logits" / "mine.txt").read_text() == "mine"
