"""More test splits than one (``config.eval.extra_test_splits``): evaluated with the best model after
training and by ``--mode=eval``, each a row of the results table, checked before a run starts."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from aum_jax.configs import speechcommands

from aum_jax.core import workdir as workdir_lib
from aum_jax.data.sources.datafile import write_datafile
from aum_jax.evaluation import report as report_lib
from aum_jax.training import config_checks, eval_mode, train
from tests.helpers import toy_config, write_toy_dataset


def _table(text: str) -> list[list[str]]:
    """The rows of the results table in ``text`` (after its header and rule, up to a blank line), each its cells."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("split "))
    rows = []
    for line in lines[start + 2:]:
        if not line.strip():
            break
        rows.append(line.split())
    return rows


def _row(text: str, split: str) -> list[str]:
    """The cells of ``split``'s row of the results table in ``text``."""
    rows = [row for row in _table(text) if row[0] == split]
    assert len(rows) == 1, text
    return rows[0][1:]


def test_the_results_table_has_a_row_per_extra_split_after_the_test_row(tmp_path: Path) -> None:
    config = speechcommands.get_config("runlocal")
    config.eval.extra_test_splits = ("noisy", "far")
    metrics = {"accuracy": 0.5, "mAP": 0.6, "mAUC": 0.7, "d_prime": 0.8, "loss": 0.9, "num_examples": 10}
    report = {"step": 4, "best": {"step": 2, **metrics}, "final": {"step": 4, **metrics},
              "test": {**metrics, "accuracy": 0.25, "num_examples": 20},
              "extra_tests": {"noisy": {**metrics, "accuracy": 0.125, "num_examples": 7},
                              "far": {**metrics, "accuracy": 0.375, "num_examples": 3}}}
    text = report_lib.training_run_text(report, config, tmp_path, tmp_path / "report.json", tmp_path / "model")
    assert [row[0] for row in _table(text)] == ["validation", "test", "noisy", "far"], text
    # step, accuracy, mAP, mAUC, d_prime, loss, num_examples: the best model's step.
    assert _row(text, "noisy") == ["2", "0.1250", "0.6000", "0.7000", "0.8000", "0.9000", "7"]
    assert _row(text, "far") == ["2", "0.3750", "0.6000", "0.7000", "0.8000", "0.9000", "3"]
    assert _row(text, "test")[1] == "0.2500"
    del report["extra_tests"]  # a report of a run without extra splits: the rows of today.
    text = report_lib.training_run_text(report, config, tmp_path, tmp_path / "report.json", tmp_path / "model")
    assert "noisy" not in text and _row(text, "test")[-1] == "20"


def test_the_confusion_matrix_of_each_extra_split_follows_the_test_splits(tmp_path: Path) -> None:
    config = speechcommands.get_config("runlocal")
    config.eval.extra_test_splits = ("noisy",)
    config.eval.confusion_matrix = True
    text = report_lib.training_run_text({"step": 1, "best": {"step": 1, "accuracy": 1.0}}, config, tmp_path,
                                        tmp_path / "report.json", tmp_path / "model")
    test, noisy = text.index("No confusion matrix of test is stored"), text.index("No confusion matrix of noisy")
    assert test < noisy


def test_evaluated_splits_are_the_validation_test_and_extra_splits_in_order() -> None:
    config = speechcommands.get_config("runlocal")
    assert config.eval.extra_test_splits == ()
    assert config_checks.evaluated_splits(config) == ["validation", "test"]
    config.eval.extra_test_splits = ("noisy", "far")
    assert config_checks.evaluated_splits(config) == ["validation", "test", "noisy", "far"]
    config.eval.split = config.eval.test_split = ""
    assert config_checks.evaluated_splits(config) == ["noisy", "far"]


@pytest.mark.parametrize("extra, message", [
    (("noisy", ""), r"config.eval.extra_test_splits=\('noisy', ''\): an empty split name"),
    (("validation",), r"config.eval.extra_test_splits=\('validation',\): 'validation' is evaluated already"),
    (("test",), r"config.eval.extra_test_splits=\('test',\): 'test' is evaluated already"),
    (("noisy", "noisy"), r"config.eval.extra_test_splits=\('noisy', 'noisy'\): 'noisy' is evaluated already"),
    (("far",), r"\('far',\): config.data has no key far_datafile, the datafile of the split 'far'; add it to"),
    (("quiet",), r"\('quiet',\): config.data.quiet_datafile, the datafile of the split 'quiet', is empty"),
])
def test_an_extra_split_that_cannot_be_evaluated_is_a_config_error(extra, message) -> None:
    config = speechcommands.get_config("runlocal")
    config.data.noisy_datafile, config.data.quiet_datafile = "noisy.json", ""
    config.eval.extra_test_splits = extra
    for mode in ("train", "eval"):
        with pytest.raises(config_checks.ConfigError, match=message):
            config_checks.check(config, mode)


def test_an_extra_split_with_its_datafile_passes_the_checks_and_alone_is_enough_for_eval_mode() -> None:
    config = speechcommands.get_config("runlocal")
    config.data.noisy_datafile = "noisy.json"
    config.eval.extra_test_splits = ("noisy", "train")  # the training clips may be evaluated as well.
    config_checks.check(config, "train")
    config.eval.split = config.eval.test_split = ""
    config_checks.check(config, "eval")
    config.eval.extra_test_splits = ()
    with pytest.raises(config_checks.ConfigError, match="no split is evaluated"):
        config_checks.check(config, "eval")


def test_a_folder_source_has_three_splits() -> None:
    config = speechcommands.get_config("runlocal")
    config.data.source, config.data.folder.root = "folder", "/clips"
    config.eval.extra_test_splits = ("noisy",)
    with pytest.raises(config_checks.ConfigError, match="a folder source has no split 'noisy', only train, "
                       "validation, test"):
        config_checks.check(config, "train")


def test_training_evaluates_each_extra_split_with_the_best_model(tmp_path: Path) -> None:
    toy = write_toy_dataset(tmp_path / "toy", clips_per_class=4)  # 4 training, 2 test clips per class.
    low = [(str(tmp_path / "toy" / "eval" / f"low{n}.wav"), ["/toy/low"]) for n in range(2)]
    write_datafile(tmp_path / "low.json", low)  # one class of the test clips: other metrics, other counts.
    config = toy_config(toy, num_steps=2, eval_every=2, checkpoint_every=0)
    config.data.test_datafile, config.eval.test_split = toy["eval"], "test"
    config.data.low_datafile = str(tmp_path / "low.json")
    config.eval.extra_test_splits = ("low",)
    config.eval.confusion_matrix = True
    config_checks.check(config, "train")
    workdir = tmp_path / "work"

    report = train.train_and_evaluate(config, workdir)
    assert report["test"]["num_examples"] == 4 and set(report["extra_tests"]) == {"low"}
    assert report["extra_tests"]["low"]["num_examples"] == 2
    assert json.loads((workdir / workdir_lib.REPORT_FILE).read_text())["extra_tests"]["low"]["num_examples"] == 2
    counts = json.loads((workdir / "confusion_low.json").read_text())["counts"]
    assert sum(counts[0]) == 2 and sum(counts[1]) == 0  # its two clips, both of the first class.
    text = report_lib.training_run_text(report, config, workdir, workdir / "report.json", workdir / "model")
    assert _row(text, "low")[0] == str(report["best"]["step"]) and _row(text, "low")[-1] == "2"
    assert _row(text, "test")[-1] == "4"
    assert "Confusion matrix of the best model on low" in text

    reports = eval_mode.evaluate_workdir(config, workdir)  # --mode=eval: the same model, the same numbers.
    assert list(reports) == ["validation", "test", "low"]
    assert reports["low"]["accuracy"] == pytest.approx(report["extra_tests"]["low"]["accuracy"])
    assert json.loads((workdir / workdir_lib.eval_report_file("low")).read_text())["num_examples"] == 2
