"""aum_jax.core.storage: atomic replacement, and the checks that keep a command from replacing
what it did not write."""

from __future__ import annotations

import pytest

from aum_jax.core import storage


def test_staged_file_leaves_the_old_file_on_failure(tmp_path):
    path = tmp_path / "kept.json"
    path.write_text("old")
    with pytest.raises(RuntimeError), storage.staged_file(path) as staging:
        staging.write_text("half")
        raise RuntimeError("disk full")
    assert path.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["kept.json"]
    storage.write_text(path, "new")
    assert path.read_text() == "new" and [p.name for p in tmp_path.iterdir()] == ["kept.json"]


def test_the_output_checks_name_what_they_refuse(tmp_path):
    (tmp_path / "f.json").write_text("{}")
    storage.check_output_file(None, "--json")
    storage.check_output_file(tmp_path / "new.json", "--json")
    storage.check_output_file(tmp_path / "f.json", "--json", overwrite=True)
    with pytest.raises(storage.OutputExistsError, match=r"--json .*f\.json exists; pass --overwrite"):
        storage.check_output_file(tmp_path / "f.json", "--json")
    with pytest.raises(storage.OutputExistsError, match="is a folder"):
        storage.check_output_file(tmp_path, "--json", overwrite=True)
    with pytest.raises(storage.OutputExistsError, match="is a file"):
        storage.check_output_dir(tmp_path / "f.json", "--out", ("*.json",), overwrite=True)
    storage.check_output_dir(tmp_path / "new", "--out", ())
    storage.check_output_dir(tmp_path, "--out", ("*.json",), overwrite=True)
    (tmp_path / "empty").mkdir()
    storage.check_output_dir(tmp_path / "empty", "--out", ())
    with pytest.raises(storage.OutputExistsError, match="pass --overwrite"):
        storage.check_output_dir(tmp_path, "--out", ("*.json", "empty"))
    with pytest.raises(storage.OutputExistsError, match="did not write \\(empty\\)"):
        storage.check_output_dir(tmp_path, "--out", ("*.json",), overwrite=True)
