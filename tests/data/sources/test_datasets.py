"""Tests of the source kinds (aum_jax/data/sources/), the shipped label CSVs and data tools."""

from __future__ import annotations

import csv
import importlib.util
import json
import os

import h5py
import numpy as np
import pytest
from absl import flags
from aum_jax.configs.data import DATASETS, get_data_config

from aum_jax.data.features import audio
from aum_jax.data.pipeline import input_pipeline as ip
from aum_jax.data.pipeline import sampling
from aum_jax.data.records import ClipRecord
from aum_jax.data.sources import datafile, labels, registry
from aum_jax.data.sources.base import DataNotFoundError
from aum_jax.data.sources.epic_sounds import EpicSoundsSource
from aum_jax.data.sources.tfds import TfdsSource
from tests.helpers import REPO_ROOT

REPO = str(REPO_ROOT)


def _labels_csv(path, mids):
    with open(path, "w") as f:
        f.write("index,mid,display_name\n")
        f.writelines(f'{i},{m},"name {i}"\n' for i, m in enumerate(mids))


@pytest.mark.parametrize(
    "path, count",
    [
        ("data/audioset/class_labels_indices.csv", 527),
        ("data/vggsound/class_labels_indices.csv", 309),
        ("data/voxceleb/class_labels_indices.csv", 1251),
        ("data/speechcommands/speechcommands_class_labels_indices.csv", 35),
        ("data/epic_sounds/class_labels_indices.csv", 44),
    ],
)
def test_shipped_label_csvs(path, count):
    index_of, names = labels.load_label_csv(os.path.join(REPO, path))
    assert len(index_of) == len(names) == count
    assert all(names)


def test_every_config_builds_and_matches_its_label_csv():
    for name in DATASETS:
        c = get_data_config(name)
        assert c.num_classes > 0 and c.audio_length > 0 and c.std > 0
        if c.source == "datafile":
            assert len(labels.load_label_csv(os.path.join(REPO, c.label_csv))[1]) == c.num_classes
    with pytest.raises(ValueError, match="unknown dataset"):
        get_data_config("nope")


def test_datafile_resolves_paths_and_multi_labels(tmp_path):
    (tmp_path / "sub").mkdir()
    _labels_csv(tmp_path / "labels.csv", ["/m/a", "/m/b", "/m/c"])
    entries = [{"wav": "sub/x.wav", "labels": "/m/c,/m/a"}, {"wav": "/abs/y.wav", "labels": "/m/b"}]
    (tmp_path / "sub" / "data.json").write_text(json.dumps({"data": entries}))
    source = datafile.DatafileSource(tmp_path / "sub" / "data.json", tmp_path / "labels.csv")
    assert len(source) == 2 and source.num_classes == 3
    assert source[0] == ClipRecord(str(tmp_path / "sub" / "sub" / "x.wav"), (2, 0))
    assert source[1] == ClipRecord("/abs/y.wav", (1,))


def test_a_written_datafile_replaces_the_old_one_whole(tmp_path):
    path = tmp_path / "new" / "data.json"
    datafile.write_datafile(path, [("a.wav", ["/m/a"])])
    datafile.write_datafile(path, [("b.wav", ["/m/a", "/m/b"])])
    assert json.loads(path.read_text()) == {"data": [{"wav": "b.wav", "labels": "/m/a,/m/b"}]}
    assert [p.name for p in path.parent.iterdir()] == ["data.json"]  # no staging file is left.


def test_datafile_unknown_label_names_file_and_label(tmp_path):
    _labels_csv(tmp_path / "labels.csv", ["/m/a"])
    data = {"data": [{"wav": "a.wav", "labels": "/m/a"}, {"wav": "b.wav", "labels": "/m/zzz"}]}
    (tmp_path / "data.json").write_text(json.dumps(data))
    with pytest.raises(ValueError, match=r"b\.wav.*'/m/zzz'"):
        datafile.DatafileSource(tmp_path / "data.json", tmp_path / "labels.csv")


def test_tfds_source_with_mock_data():
    tfds = pytest.importorskip("tensorflow_datasets")
    with tfds.testing.mock_data(num_examples=5, policy=tfds.testing.MockPolicy.USE_CODE):
        source = TfdsSource("speech_commands", "train")
        assert len(source) == 5 and source.num_classes == 12 and source.sample_rate == 16000
        for i in range(5):
            assert len(source[i].labels) == 1 and 0 <= source[i].labels[0] < 12
            assert source[i].key == f"speech_commands/train/{i}"
            wave, sr = source.load_audio(i, None)
            assert sr == 16000 and wave.dtype == np.float32 and wave.ndim == 2
            assert wave.shape[0] == 1 and np.abs(wave).max() <= 1.0


def test_tfds_pipeline_scales_int16_and_labels():
    tfds = pytest.importorskip("tensorflow_datasets")
    t = np.arange(16000) / 16000
    tone = (0.5 * 32768 * np.sin(2 * np.pi * 440 * t)).astype(np.int16)
    examples = [{"audio": tone, "label": k} for k in (3, 7, 11)]

    def as_data_source(builder, split, **kwargs):
        del builder, kwargs
        assert split == "validation"
        return examples

    c = get_data_config("speechcommands_tfds")
    c.num_workers, c.eval_batch_size = 0, 4
    with tfds.testing.mock_data(policy=tfds.testing.MockPolicy.USE_CODE,
                                as_data_source_fn=as_data_source):
        source = registry.make_source(c, "validation")
        wave, _ = source.load_audio(0, None)
        np.testing.assert_allclose(np.abs(wave).max(), 0.5, atol=1e-3)  # int16 / 32768.
        batch = next(ip.make_eval_iterator(c, "validation", source=source, process_index=0, process_count=1))
    assert batch["fbank"].shape == (4, 128, 128)
    assert batch["mask"].tolist() == [True, True, True, False]
    assert batch["label"][:3].argmax(axis=1).tolist() == [3, 7, 11]


def _epic_files(tmp_path, class_id: int = 5):
    sr = 8000
    ramp = np.arange(20 * sr, dtype=np.float32) / (20 * sr)
    with h5py.File(tmp_path / "audio.hdf5", "w") as f:
        f.create_dataset("P01_01", data=ramp)
        f.create_dataset("P02_03", data=-ramp[: 5 * sr])
    rows = [
        ("P01_01_0", "P01", "P01_01", "00:00:01.000", "00:00:01.500", "x", "c", class_id),
        ("P01_01_1", "P01", "P01_01", "00:00:02.000", "00:00:05.250", "x", "c", 2),
        ("P02_03_0", "P02", "P02_03", "00:00:00.500", "00:00:01.000", "x", "c", 43),
    ]
    with open(tmp_path / "ann.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["annotation_id", "participant_id", "video_id", "start_timestamp",
                         "stop_timestamp", "description", "class", "class_id"])
        writer.writerows(rows)
    return sr, ramp


def test_epic_sounds_segments_from_hdf5(tmp_path):
    sr, ramp = _epic_files(tmp_path)
    source = EpicSoundsSource(tmp_path / "ann.csv", tmp_path / "audio.hdf5",
                                       sample_rate=sr, clip_secs=1.0)
    assert len(source) == 3
    assert source[0] == ClipRecord("P01_01/P01_01_0", (5,))
    short, rate = source.load_audio(0, None)  # 0.5 s segment < 1 s clip: used whole.
    assert rate == sr
    np.testing.assert_array_equal(short[0], ramp[sr : int(1.5 * sr)])
    first, _ = source.load_audio(1, None)  # 3.25 s segment: evaluation crop at its start.
    np.testing.assert_array_equal(first[0], ramp[2 * sr : 3 * sr - 1])
    starts = set()
    rng = np.random.default_rng(0)
    for _ in range(20):
        crop, _ = source.load_audio(1, rng)
        assert crop.shape == (1, sr - 1)
        start = int(round(crop[0, 0] * 20 * sr))
        assert 2 * sr <= start <= int(4.25 * sr)
        np.testing.assert_array_equal(crop[0], ramp[start : start + sr - 1])
        starts.add(start)
    assert len(starts) > 10
    other, _ = source.load_audio(2, None)
    np.testing.assert_array_equal(other[0], -ramp[sr // 2 : sr])


def test_epic_sounds_bad_class_and_missing_video(tmp_path):
    _epic_files(tmp_path, class_id=44)
    with pytest.raises(ValueError, match="P01_01_0.*class_id 44"):
        EpicSoundsSource(tmp_path / "ann.csv", tmp_path / "audio.hdf5")
    _epic_files(tmp_path)
    text = (tmp_path / "ann.csv").read_text().replace("P02_03,00", "P09_09,00")
    (tmp_path / "ann.csv").write_text(text)
    source = EpicSoundsSource(tmp_path / "ann.csv", tmp_path / "audio.hdf5",
                                       sample_rate=8000, clip_secs=1.0)
    with pytest.raises(audio.AudioLoadError, match="P09_09"):
        source.load_audio(2, None)


def test_epic_sounds_pipeline(tmp_path):
    sr, _ = _epic_files(tmp_path)
    c = get_data_config("epic_sounds")
    c.epic_sounds.hdf5 = str(tmp_path / "audio.hdf5")
    c.epic_sounds.train_annotations = c.epic_sounds.validation_annotations = str(tmp_path / "ann.csv")
    c.sample_rate, c.epic_sounds.clip_secs = sr, 1.0
    c.audio_length, c.timem = 256, 40
    c.batch_size, c.eval_batch_size, c.num_workers = 2, 4, 0
    ev = next(ip.make_eval_iterator(c, "validation", process_index=0, process_count=1))
    assert ev["fbank"].shape == (4, 256, 128)
    assert ev["label"][:3].argmax(axis=1).tolist() == [5, 2, 43]
    # 0.5 s at a 5 ms hop is 101 frames, edge-padded (not zero-padded) to 256.
    spec = ev["fbank"][0]
    np.testing.assert_array_equal(spec[101:], np.repeat(spec[100:101], 155, axis=0))
    train = next(ip.make_train_iterator(c, process_index=0, process_count=1))
    assert train["fbank"].shape == (2, 256, 128) and np.isfinite(train["fbank"]).all()


def _load_script(name):
    spec = importlib.util.spec_from_file_location(name, os.path.join(REPO, "scripts", f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    before = set(flags.FLAGS)
    spec.loader.exec_module(module)
    for flag in set(flags.FLAGS) - before:  # only its functions are used: drop its flags.
        delattr(flags.FLAGS, flag)
    return module


def test_sample_weights_formula():
    weights = sampling.label_weights([(0,), (0, 1), (2,), (0,)], num_classes=3)
    per_class = 1000.0 / (np.array([3, 1, 1]) + 0.01)
    np.testing.assert_allclose(
        weights, [per_class[0], per_class[0] + per_class[1], per_class[2], per_class[0]]
    )


def test_speechcommands_splits(tmp_path):
    prep = _load_script("prep_speechcommands")
    for word, files in {"yes": ["a.wav", "b.wav", "c.wav"], "no": ["d.wav"],
                        "_background_noise_": ["n.wav"]}.items():
        (tmp_path / word).mkdir()
        for name in files:
            (tmp_path / word / name).write_bytes(b"")
    (tmp_path / "validation_list.txt").write_text("yes/b.wav\n")
    (tmp_path / "testing_list.txt").write_text("no/d.wav\n")
    splits = prep.split_lists(str(tmp_path))
    assert splits == {"train": ["yes/a.wav", "yes/c.wav"], "valid": ["yes/b.wav"],
                      "eval": ["no/d.wav"]}


def test_a_tfds_dataset_not_prepared_is_refused_and_not_downloaded(tmp_path):
    with pytest.raises(DataNotFoundError, match=r"TFDS dataset 'speech_commands' \(train\) cannot be opened, is it "
                                                r"prepared in .*tfds build speech_commands"):
        TfdsSource("speech_commands", "train", data_dir=str(tmp_path))
    assert not any(p.is_file() for p in tmp_path.rglob("*"))  # nothing was fetched.
