"""The registry of source kinds: a new kind is one class and one registry line, and the data
defaults, the file checks, ``make_source`` and the input pipeline take it from there."""

from __future__ import annotations

import ml_collections
import numpy as np
import pytest
from aum_jax.configs import data as data_configs

from aum_jax.data.pipeline import input_pipeline
from aum_jax.data.records import ClipRecord, RecordList
from aum_jax.data.sources import registry
from aum_jax.data.sources.base import DataNotFoundError, SourceKind

RATE = 16_000


class SineSource(RecordList, SourceKind):
    """A toy kind: ``config.data.sine.clips`` one-second sines per split, class k at 200 * (k + 1) Hz."""

    name = "sine"
    random_crops = False

    def __init__(self, clips: int, num_classes: int, seed: int):
        self.num_classes = num_classes
        labels = np.random.default_rng(seed).integers(num_classes, size=clips)
        self._records = [ClipRecord(key=f"sine/{i}", labels=(int(k),)) for i, k in enumerate(labels)]

    @staticmethod
    def config() -> ml_collections.ConfigDict:
        c = ml_collections.ConfigDict()
        c.clips = 6  # clips of each split.
        c.train_split = "train"  # what names the training split ("" none).
        c.validation_split = "validation"  # the validation split.
        return c

    @classmethod
    def split_key(cls, split: str) -> str:
        return f"sine.{split}_split"

    @classmethod
    def needed_files(cls, data, splits):
        return []  # generated: nothing to check.

    @classmethod
    def from_config(cls, data: ml_collections.ConfigDict, split: str) -> SineSource:
        return cls(data.sine.clips, data.num_classes, seed=len(split))

    def load_audio(self, index: int, rng: np.random.Generator | None) -> tuple[np.ndarray, int]:
        t = np.arange(RATE, dtype=np.float32) / RATE
        frequency = 200.0 * (self._records[index].labels[0] + 1)
        return (0.3 * np.sin(2 * np.pi * frequency * t))[None].astype(np.float32), RATE


@pytest.fixture
def sine_kind(monkeypatch):
    monkeypatch.setitem(registry.KINDS, SineSource.name, SineSource)  # the one registry line.


def sine_config() -> ml_collections.ConfigDict:
    c = data_configs.defaults()
    c.name, c.source, c.num_classes = "sines", "sine", 3
    c.audio_length, c.batch_size, c.eval_batch_size, c.num_workers = 96, 4, 4, 0
    return c


def test_a_registered_kind_gets_its_section_and_builds_batches(sine_kind):
    c = sine_config()
    assert c.sine.clips == 6 and c.tfds.train_split == "train"  # every kind's section, with its defaults.
    registry.check_files(c, ["train", "validation"])
    source = registry.make_source(c, "train")
    assert len(source) == 6 and source[0].key == "sine/0"
    batch = next(input_pipeline.make_train_iterator(c, process_index=0, process_count=1))
    assert batch["fbank"].shape == (4, 96, 128) and np.isfinite(batch["fbank"]).all()
    evaluated = list(input_pipeline.make_eval_iterator(c, "validation", process_index=0, process_count=1))
    assert sum(int(b["mask"].sum()) for b in evaluated) == 6


def test_an_unset_split_and_an_unknown_kind_are_named(sine_kind):
    c = sine_config()
    c.sine.train_split = ""
    with pytest.raises(ValueError, match=r"no 'train' split \(config.sine.train_split is unset\)"):
        registry.make_source(c, "train")
    c.source = "nope"
    with pytest.raises(ValueError, match="unknown data source 'nope'; choose from datafile, tfds, epic_sounds, "
                                         "folder, sine"):
        registry.make_source(c, "train")


def test_a_missing_file_names_its_key_and_how_to_make_it(tmp_path):
    c = data_configs.get_data_config("epic_sounds")
    c.epic_sounds.train_annotations = str(tmp_path / "train.csv")
    with pytest.raises(DataNotFoundError, match=r"train.csv does not exist: it is the epic_sounds train annotation "
                                                r"list \(config.data.epic_sounds.train_annotations\). Create it with: "
                                                "put or link"):
        registry.check_files(c, ["train"], data_configs.prep_step("epic_sounds"))


def test_every_dataset_declares_how_its_files_are_made():
    for name in data_configs.DATASETS:
        assert isinstance(data_configs.prep_step(name), str)
    assert "prep_audioset.py" in data_configs.prep_step("audioset_20k")
    assert data_configs.prep_step("folder") == ""  # not a recipe of DATASETS: made by the run itself.
