"""The command lines' console: quiet by default, -v restores library logs, --help exits 0,
plain --mode=print, results tables, a finished workdir is not trained twice, and a missing
datafile is a clear error that leaves nothing behind."""

from __future__ import annotations

import glob
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from aum_jax.checkpoints import convert
from aum_jax.checkpoints.model_files import save_model
from tests.helpers import REPO_ROOT, assert_one_error_line, read_only

# An INFO line of absl (Python or C++: "I1124 13:04:19.168 ..." / "I0000 00:00:...") or a library notice.
CHATTER = re.compile(r"^I\d{4} |oneDNN|orbax|logging_writer|work unit notes|Unable to initialize backend", re.M)


def run(*args: str, cache: Path | None = None, timeout: int = 300) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT))
    env.pop("TF_CPP_MIN_LOG_LEVEL", None)
    if cache:
        env["AUM_JAX_CACHE"] = str(cache)
    return subprocess.run([sys.executable, *args], cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=timeout)


@pytest.mark.parametrize("command", [
    ("-m", "aum_jax.main"), ("-m", "aum_jax.predict"), ("-m", "aum_jax.export"), ("scripts/convert_checkpoint.py",),
])
def test_help_exits_zero_quietly(command):
    result = run(*command, "--help")
    assert result.returncode == 0, result.stderr[-2000:]
    assert "--" in result.stdout and not CHATTER.search(result.stderr), result.stderr[-2000:]


def test_mode_print_shows_plain_values():
    result = run("-m", "aum_jax.main", "--config=configs/speechcommands.py:small_imgnet", "--mode=print",
                 "--config.train.num_steps=7", "--coordinator-address=localhost:1", "--num-processes=1", "--process-id=0")
    assert result.returncode == 0, result.stderr[-2000:]
    assert "train.num_steps = 7" in result.stdout  # kebab-case flags beside ml_collections' snake_case paths.
    assert "&id" not in result.stdout and "!!python" not in result.stdout
    assert "model.patch_size = (16, 16)" in result.stdout and "data.num_classes = 35" in result.stdout
    assert "model.num_classes = 35" in result.stdout  # a reference to data.num_classes, resolved.
    assert "eval.split = 'validation'" in result.stdout
    assert not CHATTER.search(result.stderr), result.stderr[-2000:]


def test_verbosity_brings_the_library_logs_back(tmp_path, fixtures_dir):
    state = convert.read_torch_checkpoint(fixtures_dir / "aum_torch" / "tiny_fobi" / "state_dict.pth")
    save_model(convert.convert(state), tmp_path / "m")
    import numpy as np

    np.save(tmp_path / "x.npy", np.zeros((1, 128, 128), np.float32))
    args = ("-m", "aum_jax.predict", "--model-dir", str(tmp_path / "m"), "--features", str(tmp_path / "x.npy"))
    quiet, verbose = run(*args), run(*args, "-v")
    assert quiet.returncode == verbose.returncode == 0, quiet.stderr[-2000:] + verbose.stderr[-2000:]
    assert not CHATTER.search(quiet.stderr), quiet.stderr[-2000:]
    assert re.search(r"^I\d{4} .*orbax", verbose.stderr, re.M) or re.search(r"^I\d{4} .*checkpoint", verbose.stderr, re.M)


def test_demo_run_is_quiet_prints_results_and_is_not_trained_twice(tmp_path):
    """The README's first command (runlocal): a quiet console, the results table and confusion
    matrix; run again, it prints the stored results; ``--mode=eval`` reproduces them."""
    workdir = tmp_path / "work"
    command = ("-m", "aum_jax.main", "--config=configs/demo.py:runlocal", f"--workdir={workdir}")
    first = run(*command, cache=tmp_path / "cache")
    assert first.returncode == 0, first.stderr[-3000:]
    # stderr: progress bars and compact lines only; no TensorFlow, orbax, clu or JAX INFO chatter.
    assert not CHATTER.search(first.stderr), first.stderr[-3000:]
    assert "step 4/4  loss" in first.stderr and "step 4 validation: accuracy" in first.stderr
    assert re.search(r"^validation\s+4\s+[0-9.]+", first.stdout, re.M) and re.search(r"^test\s+4\s", first.stdout, re.M)
    report = json.loads((workdir / "report.json").read_text())
    assert set(report["test"]) >= {"accuracy", "mAP"}
    assert report["step"] == 4 and report["test"]["num_examples"] == 20
    # The demo prints the test confusion matrix and saves it as a PNG.
    assert "Confusion matrix of the best model on test" in first.stdout
    assert re.search(r"^yes(\s+\d+){10}\s+[0-9.]+%$", first.stdout, re.M), first.stdout
    assert (workdir / "confusion_test.png").read_bytes()[:4] == b"\x89PNG"
    counts = json.loads((workdir / "confusion_test.json").read_text())["counts"]
    assert sum(map(sum, counts)) == 20 and sum(counts[i][i] for i in range(10)) == round(20 * report["test"]["accuracy"])
    events = sorted(glob.glob(str(workdir / "events.out.tfevents.*")))

    listing = sorted(p.name for p in workdir.iterdir())
    with read_only(workdir):  # a finished run writes nothing: it prints its results from a read-only workdir.
        second = run(*command, cache=tmp_path / "cache")
        assert second.returncode == 0, second.stderr[-3000:]
        assert f"{workdir} is already trained to step 4" in second.stdout
        assert f"{report['test']['accuracy']:.4f}" in second.stdout  # the stored results, printed again.
        assert "step 4 validation" not in second.stderr  # no re-evaluation...
        assert sorted(glob.glob(str(workdir / "events.out.tfevents.*"))) == events  # ...and no new scalars.
        assert json.loads((workdir / "report.json").read_text()) == report
        assert "Confusion matrix of the best model on test" in second.stdout  # the stored one.
        assert "confusion" not in second.stderr
        more = run(*command, "--config.train.num_steps=6", cache=tmp_path / "cache")  # more steps: it must write.
        assert_one_error_line(more, f"cannot write to workdir {workdir}")
    assert sorted(p.name for p in workdir.iterdir()) == listing

    evaluated = run(*command, "--mode=eval", cache=tmp_path / "cache")
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    assert json.loads((workdir / "eval_test.json").read_text())["accuracy"] == report["test"]["accuracy"]


def test_missing_datafile_names_path_dataset_and_step_and_leaves_nothing(tmp_path):
    workdir = tmp_path / "work"
    result = run("-m", "aum_jax.main", "--config=configs/audioset.py:base_scratch,runlocal", f"--workdir={workdir}")
    assert result.returncode == 1
    message = result.stderr
    assert "data/audioset/datafiles/unbalanced.json does not exist" in message
    assert "audioset train datafile (config.data.train_datafile)" in message
    assert "python scripts/prep_audioset.py" in message and "data/README.md" in message
    assert "Traceback" not in message
    assert not workdir.exists()


def test_confusion_table_and_plot(tmp_path):
    import numpy as np

    from aum_jax.evaluation import confusion

    counts = np.array([[8, 2, 0], [1, 9, 0], [0, 5, 5]])
    table = confusion.format_table(counts, ["yes", "no", "stop"])
    assert table.splitlines()[1].split() == ["yes", "8", "2", "0", "80.0%"]
    assert table.splitlines()[-1] == "accuracy 22/30 = 73.33%"
    json_path, png = confusion.save(counts, ["yes", "no", "stop"], tmp_path, "test")
    assert png.read_bytes()[:4] == b"\x89PNG"
    stored, names = confusion.load(tmp_path, "test")
    assert names == ["yes", "no", "stop"] and (stored == counts).all()
