"""Model directories: every field of their files checked when one is opened, before a model is
built, and replaced atomically, so a kill at any moment leaves the old model or the new one."""

from __future__ import annotations

import json
import shutil
import textwrap
from pathlib import Path

import pytest

from aum_jax.checkpoints import model_files
from aum_jax.core import storage
from tests.helpers import NAMES, SAMPLE, assert_one_error_line, main_cli, run, save_tiny_fobi


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    return save_tiny_fobi(tmp_path_factory.mktemp("model") / "m", mean=-5.0, std=4.0, loss="CE", class_names=NAMES)


def _edited(model_dir: Path, to: Path, file: str, change) -> Path:
    """A copy of ``model_dir`` whose ``file`` has ``change`` (a dict merged into its JSON, a text, or None: deleted)."""
    shutil.copytree(model_dir, to)
    path = to / file
    if change is None:
        path.unlink()
    elif isinstance(change, str):
        path.write_text(change)
    else:
        path.write_text(json.dumps({**json.loads(path.read_text()), **change}))
    return to


@pytest.mark.parametrize("file, change, fragment", [
    ("preprocessing.json", {"std": -4.0}, "preprocessing.json: field std must be a finite number above 0, got -4.0"),
    ("preprocessing.json", {"std": 0}, "field std must be a finite number above 0"),
    ("preprocessing.json", {"mean": float("nan")}, "field mean must be a finite number, got nan"),
    ("preprocessing.json", {"mean": "abc"}, "field mean must be a number or null, got 'abc'"),
    ("preprocessing.json", {"num_mel_bins": "64"}, "field num_mel_bins must be a whole number, got '64'"),
    ("preprocessing.json", {"frame_shift_ms": 0}, "field frame_shift_ms must be positive, got 0"),
    ("preprocessing.json", {"sample_rate": -16000}, "field sample_rate must be positive"),
    ("preprocessing.json", {"skip_norm": "no"}, "field skip_norm must be true or false"),
    ("preprocessing.json", {"class_names": ["a", "b"]}, "field class_names has 2 names, but the model"),
    ("preprocessing.json", {"num_mel_bins": 64}, "field num_mel_bins is 64, but the model"),
    ("preprocessing.json", {"men": 1.0}, "unknown field(s) men"),
    ("preprocessing.json", "[1, 2", "preprocessing.json is not a readable JSON file"),
    ("config.json", {"depth": 100000}, "(100000, 384, 16) by config.json"),
    ("config.json", {"embed_dim": 10**6}, "cls_token is (1, 1, 192) in params/, (1, 1, 1000000) by config.json"),
    ("config.json", {"depth": "4"}, "config.json is not a valid model config: depth must be a whole number, got '4'"),
    ("config.json", {"patch_size": [16]}, "patch_size must be a list of 2 whole numbers"),
    ("config.json", {"data": {}}, "Unknown AuMConfig fields: ['data']"),
    ("config.json", None, "config.json not found"),
    ("checksums.json", "{\"sha256\": {\"a\" 1}}", "checksums.json is not a readable JSON file: Expecting ':'"),
    ("checksums.json", {"sha256": {"cls_token": "00"}}, "field sha256.cls_token is not a SHA-256 hex digest"),
    ("checksums.json", {"sha256": {}}, "checksums.json does not list the parameters"),
    ("checksums.json", None, "has no checksums.json, so damage to its parameters cannot be detected"),
], ids=lambda v: str(v)[:24])
def test_every_field_is_checked_when_a_model_directory_is_opened(model_dir, tmp_path, file, change, fragment):
    edited = _edited(model_dir, tmp_path / "m", file, change)
    with pytest.raises(model_files.ModelDirectoryError) as error:
        model_files.open_model_dir(edited)
    assert fragment in str(error.value) and str(edited) in str(error.value)


def test_without_checksums_no_verify_loads_with_one_warning(model_dir, tmp_path, caplog):
    bare = _edited(model_dir, tmp_path / "m", "checksums.json", None)
    assert model_files.load_model(bare, verify=False).config.depth == 4
    assert sum("without checking its parameters" in r.getMessage() for r in caplog.records) == 1


def test_a_wrong_field_is_one_error_line_naming_the_file_for_each_command(model_dir, tmp_path):
    edited = _edited(model_dir, tmp_path / "m", "preprocessing.json", {"std": -4.0})
    fragment = f"{edited / 'preprocessing.json'}: field std must be a finite number above 0"
    assert_one_error_line(run("-m", "aum_jax.predict", "--model-dir", str(edited), "--audio", str(SAMPLE)), fragment)
    assert_one_error_line(run("-m", "aum_jax.export", "--model-dir", str(edited), "--output",
                              str(tmp_path / "x.jaxexport")), fragment)
    assert not (tmp_path / "x.jaxexport").exists()


def test_a_workdir_without_model_says_so(tmp_path):
    workdir = tmp_path / "work"
    (workdir / "checkpoints").mkdir(parents=True)
    (workdir / "config.json").write_text(json.dumps({"data": {}, "model": {}}))
    with pytest.raises(model_files.ModelDirectoryError, match="is a training workdir with no model/"):
        model_files.open_model_dir(workdir)


# ---------------------------------------------------------------------------- atomic replacement

# Saves a model over DIR with the step named by argv[2] killing the process: "exchange" right after
# the swap (before the old folder is removed), "fallback" between the two renames of the fallback.
KILLED_SAVE = textwrap.dedent("""
    import os, signal, sys
    from pathlib import Path
    from aum_jax.checkpoints import convert, model_files
    from aum_jax.core import storage
    from tests.helpers import TINY_FOBI
    model = convert.convert(convert.read_torch_checkpoint(TINY_FOBI))
    model.head.bias[...] = model.head.bias[...] + 1.0  # the new model differs from the old one.
    real_exchange, real_rename = storage._exchange, os.rename
    if sys.argv[2] == "exchange":
        def exchange(a, b):
            assert real_exchange(a, b)
            os.kill(os.getpid(), signal.SIGKILL)
        storage._exchange = exchange
    else:
        storage._exchange = lambda a, b: False
        def rename(src, dst):
            real_rename(src, dst)
            if str(dst).endswith(".previous"):
                os.kill(os.getpid(), signal.SIGKILL)
        os.rename = rename
    model_files.save_model(model, Path(sys.argv[1]), overwrite=True)
""")


@pytest.mark.parametrize("step", ["exchange", "fallback"])
def test_a_kill_while_a_model_is_replaced_leaves_a_whole_model(model_dir, tmp_path, step):
    target = shutil.copytree(model_dir, tmp_path / "m")
    old_bias = model_files.load_model(target).head.bias[...]
    result = run("-c", KILLED_SAVE, str(target), step)
    assert result.returncode == -9, result.stderr[-3000:]
    model = model_files.load_model(target)  # the old folder is put back if the kill left it aside.
    changed = bool((model.head.bias[...] != old_bias).all())
    assert changed == (step == "exchange")  # after the swap: the new model; before it: the old one.
    assert not storage._backup_name(target).exists()


def test_a_truncated_array_gives_tensorstores_reason(model_dir, tmp_path):
    truncated = shutil.copytree(model_dir, tmp_path / "m")
    largest = max((p for p in (truncated / "params").rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)
    largest.write_bytes(largest.read_bytes()[: largest.stat().st_size // 2])
    with pytest.raises(model_files.ModelDirectoryError) as error:
        model_files.load_model(truncated)
    message = str(error.value)
    assert message.startswith(f"{truncated / 'params'} is damaged") and "\n" not in message
    assert "bound method" not in message and "Requested byte range" in message


# ---------------------------------------------------------------------------- fine-tuning sources

@pytest.mark.parametrize("source, fragment", [
    ("nowhere", "config.init.checkpoint={}: no such file or folder"),
    ("no_config", "config.init.checkpoint={}: {}/config.json not found"),
])
def test_a_fine_tuning_source_that_cannot_serve_is_one_line_before_anything_runs(
        model_dir, toy_overrides, tmp_path, source, fragment):
    path = tmp_path / source
    if source == "no_config":
        _edited(model_dir, path, "config.json", None)
    workdir = tmp_path / "work"
    result = main_cli(workdir, toy_overrides, f"--config.init.checkpoint={path}")
    assert_one_error_line(result, fragment.format(path, path))
    assert not workdir.exists()


def test_label_names_that_do_not_fit_the_class_count_are_one_line(toy_overrides, tmp_path):
    workdir = tmp_path / "work"
    result = main_cli(workdir, toy_overrides, "--config.data.num_classes=3")
    assert_one_error_line(result, "names 2 classes, but config.data.num_classes is 3")
    assert not workdir.exists()
