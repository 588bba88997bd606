"""Balanced sampling draws by what the run may see: the weight file with every label in view, the labels
the run keeps under ``config.data.label_fraction < 1`` (never those the fraction hid), and a missing or
misfitting weight file is refused before anything is written."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from aum_jax.data import teacher_logits
from aum_jax.data.pipeline import sampling
from aum_jax.data.sources import registry
from aum_jax.training import train
from tests.helpers import toy_config, write_toy_dataset


@pytest.fixture(scope="module")
def skewed(tmp_path_factory) -> dict[str, str]:
    """The toy set with 6 low-tone and 2 high-tone training clips, and a weight file made from all their labels."""
    root = tmp_path_factory.mktemp("skewed")
    paths = write_toy_dataset(root, clips_per_class=6)
    entries = json.loads(Path(paths["train"]).read_text())["data"]
    high = [e for e in entries if e["labels"].endswith("high")]
    Path(paths["train"]).write_text(json.dumps({"data": [e for e in entries if e not in high] + high[:2]}))
    paths["weights"] = str(root / "train_weight.csv")
    np.savetxt(paths["weights"], [1000 / 6.01] * 6 + [1000 / 2.01] * 2)  # scripts/gen_weight_file.py's, all labels.
    return paths


def _config(paths: dict[str, str], label_fraction: float):
    config = toy_config(paths, num_steps=2, steps_per_epoch=2)
    config.data.balanced_sampling, config.data.weight_csv = True, paths["weights"]
    config.data.label_fraction = label_fraction
    return config


def test_with_every_label_in_view_the_weight_file_draws(skewed) -> None:
    config = _config(skewed, 1.0)
    run = train.plan(config)
    np.testing.assert_array_equal(sampling.train_weights(config.data, run.source), np.loadtxt(skewed["weights"]))
    config.data.weight_csv = ""
    with pytest.raises(sampling.SampleWeightsError, match="config.data.balanced_sampling=True needs "
                                                          "config.data.weight_csv"):
        train.plan(config)


def test_under_a_label_fraction_the_weights_come_from_the_kept_labels_alone(skewed, tmp_path: Path) -> None:
    config = _config(skewed, 0.5)
    config.data.weight_csv = str(tmp_path / "never_read.csv")  # made from every label: not read.
    source = registry.make_source(config.data, "train")
    kept = [source[i].labels for i in range(len(source))]
    assert sum(bool(ls) for ls in kept) == 4  # 3 of the 6 low clips, 1 of the 2 high ones.
    low, high = 1000 / 3.01, 1000 / 1.01  # the kept labels' counts, not the datafile's 6 and 2.
    expected = np.array([{(0,): low, (1,): high}.get(tuple(ls), np.nan) for ls in kept])
    expected[np.isnan(expected)] = (3 * low + high) / 4  # a clip whose labels were hidden: a mean labelled clip.

    # With a teacher every clip trains; the hidden labels never weigh in.
    keys = [source[i].key for i in range(len(source))]
    teacher_logits.write(tmp_path / "logits", keys, np.zeros((len(keys), 2)), {"teacher": "t"})
    config.train.objective, config.distill.logits = "distill", str(tmp_path / "logits")
    run = train.plan(config)
    assert len(run.source) == 8
    np.testing.assert_allclose(sampling.train_weights(config.data, run.source), expected)

    # Without one the labelled share trains, weighted by its own labels.
    config.train.objective, config.distill.logits = "supervised", ""
    run = train.plan(config)
    assert len(run.source) == 4
    np.testing.assert_allclose(sampling.train_weights(config.data, run.source), [e for e, ls in zip(expected, kept)
                                                                                 if ls])
    report = train.train_and_evaluate(config, tmp_path / "work")
    assert report["step"] == 2 and np.isfinite(report["final"]["loss"])
