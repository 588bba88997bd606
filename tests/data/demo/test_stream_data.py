"""The one-pass demo's stretches: keywords at known places in the demo's noise, written as datafiles and
DCASE TSVs that agree, louder where the TSV says a word is, the same bytes for a seed."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import soundfile

from aum_jax.data.demo import stream_data
from aum_jax.data.sources.datafile import DatafileSource

SIZES = {"train": 3, "valid": 0, "eval": 2}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> stream_data.StreamDataset:
    return stream_data.generate_stream_dataset(tmp_path_factory.mktemp("stream"), seed=0, stretches=SIZES,
                                               seconds=3.0, max_words=2, num_workers=2, show_progress=False)


def test_the_tsv_and_the_datafile_agree_and_the_words_are_where_it_says(tiny):
    for split in ("train", "eval"):
        source = DatafileSource(tiny.datafiles[split], tiny.label_csv, tiny.events[split])
        assert len(source) == SIZES[split]
        for i in range(len(source)):
            record = source[i]
            assert record.events is not None and record.labels == tuple(sorted({e.label for e in record.events}))
            audio, rate = soundfile.read(record.key)
            assert rate == 16_000 and audio.shape == (48_000,)
            inside = np.zeros(audio.size, bool)
            for onset, offset, _ in record.events:
                assert 0 <= onset < offset <= 3.0
                inside[round(onset * rate) : round(offset * rate)] = True
            if record.events:  # speech at >= 5 dB SNR: louder inside the events than outside
                assert np.sqrt(np.mean(audio[inside] ** 2)) > 1.3 * np.sqrt(np.mean(audio[~inside] ** 2))
    with open(tiny.root / "stretches.csv", newline="") as f:
        assert len(list(csv.DictReader(f))) == 5


def test_the_same_seed_gives_the_same_bytes_in_another_cache(tiny, tmp_path):
    again = stream_data.generate_stream_dataset(tmp_path, seed=0, stretches=SIZES, seconds=3.0, max_words=2,
                                                show_progress=False)
    files = sorted(p.relative_to(tiny.root) for p in tiny.root.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(again.root) for p in again.root.rglob("*") if p.is_file())
    assert all((tiny.root / f).read_bytes() == (again.root / f).read_bytes() for f in files)
    assert json.loads((again.root / "manifest.json").read_text())["seconds"] == 3.0


def test_sizes_that_cannot_be_rendered_are_refused(tmp_path):
    with pytest.raises(ValueError, match="do not fit"):
        stream_data.generate_stream_dataset(tmp_path, stretches=SIZES, seconds=1.5, max_words=2)
    with pytest.raises(ValueError, match="need >= 1 train and eval stretch"):
        stream_data.generate_stream_dataset(tmp_path, stretches={"train": 0, "eval": 1})
