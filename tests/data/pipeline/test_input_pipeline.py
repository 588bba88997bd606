"""Tests of the grain input pipeline (input_pipeline, sampling, clip_stages and stages, batching) on tiny synthetic wavs."""

from __future__ import annotations

import json
import math
import os

import numpy as np
import pytest
import soundfile as sf
from aum_jax.configs.data import get_data_config

from aum_jax.data.features import audio, kaldi
from aum_jax.data.features.preprocessing import pad_or_cut
from aum_jax.data.pipeline import input_pipeline as ip
from aum_jax.data.pipeline import sampling
from aum_jax.data.pipeline.batching import BadInputError, BatchIterator
from aum_jax.data.pipeline.stages import masks, mixup, warp
from aum_jax.data.sources import datafile, registry

SR = 16_000
BINS = 32
FRAMES = 40  # audio_length; 0.3 s clips give 28 fbank frames, so padding is used.


def _write_set(folder, num_clips: int, seconds: float = 0.3, bad: dict[int, str] | None = None):
    """num_clips wavs, clip i labelled class i; bad maps index -> 'missing'|'empty'|'corrupt'."""
    bad = bad or {}
    rng = np.random.default_rng(1)
    entries = []
    for i in range(num_clips):
        name = f"clip{i}.wav"
        path = os.path.join(folder, name)
        kind = bad.get(i)
        if kind == "empty":
            open(path, "wb").close()
        elif kind == "corrupt":
            with open(path, "wb") as f:
                f.write(b"RIFF\x00\x00not really a wav file" * 10)
        elif kind is None:
            t = np.arange(int(seconds * SR)) / SR
            wave = 0.2 * np.sin(2 * np.pi * (150 + 40 * i) * t) + 0.01 * rng.standard_normal(t.size)
            sf.write(path, wave.astype(np.float32), SR, subtype="PCM_16")
        entries.append({"wav": name, "labels": f"/m/c{i}"})  # relative to the JSON folder.
    datafile = os.path.join(folder, "data.json")
    with open(datafile, "w") as f:
        json.dump({"data": entries}, f)
    label_csv = os.path.join(folder, "labels.csv")
    with open(label_csv, "w") as f:
        f.write("index,mid,display_name\n")
        f.writelines(f"{i},/m/c{i},class {i}\n" for i in range(num_clips))
    return datafile, label_csv


def pipeline_config(folder, num_clips: int, **overrides):
    datafile, label_csv = _write_set(folder, num_clips, bad=overrides.pop("bad", None))
    c = get_data_config("speechcommands")
    c.train_datafile = c.validation_datafile = datafile
    c.label_csv = label_csv
    c.num_classes = num_clips
    c.num_mel_bins, c.audio_length = BINS, FRAMES
    c.freqm, c.timem, c.mixup, c.noise = 8, 10, 0.5, True
    c.batch_size, c.eval_batch_size = 4, 4
    c.num_workers, c.read_threads, c.prefetch_buffer_size = 0, 1, 8
    c.max_bad_fraction = 0.0
    for key, value in overrides.items():
        c[key] = value
    return c


def _take(iterator, n):
    return [next(iterator) for _ in range(n)]


def _one_epoch(c, process_index: int = 0, process_count: int = 1) -> BatchIterator:
    """The training batches of one pass over this process's shard (a partial last batch is dropped)."""
    source = registry.make_source(c, "train")
    clips = ip.train_examples(c, source, process_index, process_count)
    clips = clips[: len(sampling.shard(len(source), process_index, process_count))]
    return BatchIterator(clips, c, c.batch_size, train=True, limit=math.floor(c.max_bad_fraction * len(source)),
                         num_records=len(source))


def validation_batches(c, **kwargs) -> BatchIterator:
    return ip.make_eval_iterator(c, "validation", process_index=0, process_count=1, **kwargs)


def test_train_and_eval_shapes_and_tail(tmp_path):
    c = pipeline_config(tmp_path, 10)
    batch = next(ip.make_train_iterator(c, process_index=0, process_count=1))
    assert set(batch) == {"fbank", "label"}
    assert batch["fbank"].shape == (4, FRAMES, BINS) and batch["fbank"].dtype == np.float32
    assert batch["label"].shape == (4, 10) and batch["label"].dtype == np.float32

    batches = list(validation_batches(c))
    assert len(batches) == 3  # 10 clips in batches of 4: the tail is padded, not dropped.
    mask = np.concatenate([b["mask"] for b in batches])
    assert mask.dtype == bool and mask.tolist() == [True] * 10 + [False] * 2
    labels = np.concatenate([b["label"] for b in batches])
    np.testing.assert_array_equal(labels[:10], np.eye(10))  # ordered, one-hot.
    assert not labels[10:].any() and not np.concatenate([b["fbank"] for b in batches])[10:].any()


def test_eval_equals_fbank_pad_and_normalisation(tmp_path):
    c = pipeline_config(tmp_path, 3)
    batch = next(validation_batches(c))
    wav, sr = audio.load_waveform(tmp_path / "clip1.wav")
    fbank = kaldi.fbank_from_waveform(wav, sr, BINS, 10.0)
    assert fbank.shape[0] == 28
    expected = (pad_or_cut(fbank, FRAMES) - c.mean) / (2 * c.std)
    np.testing.assert_allclose(batch["fbank"][1], expected, rtol=1e-5, atol=1e-5)
    # Padded frames are normalised zeros, as the original pads before normalising.
    np.testing.assert_allclose(batch["fbank"][1][28:], -c.mean / (2 * c.std), rtol=1e-6)


def test_torchaudio_mask_bands():
    rng = np.random.default_rng(0)
    widths = set()
    for axis, param in ((0, 12), (1, 7)):
        for _ in range(400):
            spec = np.ones((50, 20), np.float32)
            masks.torchaudio_mask(spec, axis, param, rng)
            zero = spec == 0
            lines = zero.all(axis=1 - axis)  # fully-zeroed frames (axis 0) or bins (axis 1).
            assert zero.sum() == lines.sum() * spec.shape[1 - axis]  # only whole lines.
            idx = np.flatnonzero(lines)
            width = idx.size
            assert width < param
            if width:
                assert idx[-1] - idx[0] + 1 == width  # one contiguous band.
            widths.add((axis, width))
    assert {w for a, w in widths if a == 0} == set(range(12))
    assert {w for a, w in widths if a == 1} == set(range(7))


def test_pipeline_masks_zero_whole_frequency_bands(tmp_path):
    c = pipeline_config(tmp_path, 4, freqm=15, timem=0, mixup=0.0, noise=False, skip_norm=True)
    found_mask = False
    for batch in _take(ip.make_train_iterator(c, process_index=0, process_count=1), 5):
        for spec in batch["fbank"]:
            zero_cols = (spec == 0).all(axis=0)
            assert ((spec[:28] == 0) == zero_cols[None, :]).all()  # zeros only in whole bins.
            found_mask |= bool(zero_cols.any())
            assert zero_cols.sum() < 15
    assert found_mask


def test_mixup_labels(tmp_path):
    c = pipeline_config(tmp_path, 6, mixup=1.0)
    lambdas = []
    for batch in _take(ip.make_train_iterator(c, process_index=0, process_count=1), 6):
        np.testing.assert_allclose(batch["label"].sum(axis=1), 1.0, rtol=1e-5)
        for row in batch["label"]:
            nonzero = row[row > 0]
            assert nonzero.size in (1, 2)
            if nonzero.size == 2:
                lambdas.extend(nonzero.tolist())
    assert len(lambdas) >= 10 and all(0 < lam < 1 for lam in lambdas)
    assert len(set(np.round(lambdas, 6))) > 5  # lambda is drawn per clip (Beta(10, 10)).


def test_mix_waveforms_pads_cuts_and_centres():
    first = np.ones((1, 6), np.float32) + np.arange(6, dtype=np.float32)
    short = np.full((1, 3), 4.0, np.float32)
    mixed = mixup.mix_waveforms(first, short, 0.25)
    assert mixed.shape == (1, 6)
    centred = first - first.mean()
    expected = 0.25 * centred + 0.75 * np.array([[0, 0, 0, 0, 0, 0]], np.float32)
    np.testing.assert_allclose(mixed, expected - expected.mean(), atol=1e-6)
    long = np.arange(10, dtype=np.float32)[None]
    mixed = mixup.mix_waveforms(first, long, 0.5)
    second = (long - long.mean())[:, :6]
    expected = 0.5 * centred + 0.5 * second
    np.testing.assert_allclose(mixed, expected - expected.mean(), atol=1e-6)
    assert abs(mixed.mean()) < 1e-6


def test_weighted_sampling_frequencies():
    weights = np.array([1.0, 2.0, 3.0, 4.0, 0.0])
    draw = sampling.WeightedDraw(weights, seed=5, process_index=0, process_count=1)
    epochs = 2000
    drawn = np.array([draw(i, None) for i in range(epochs * 5)])
    counts = np.array([(drawn == k).sum() for k in range(5)])
    expected = weights / weights.sum() * drawn.size
    assert counts[-1] == 0  # zero weight is never drawn.
    chi2 = (((counts - expected) ** 2)[:4] / expected[:4]).sum()
    assert chi2 < 16.3  # 3 degrees of freedom, p = 0.001.
    # Deterministic, and a different draw each epoch.
    again = sampling.WeightedDraw(weights, seed=5, process_index=0, process_count=1)
    assert [again(i, None) for i in range(50)] == drawn[:50].tolist()
    # Each epoch draws anew: over 50 equally weighted clips, two epochs agree with chance 50!/50**50.
    many = sampling.WeightedDraw(np.ones(50), seed=5, process_index=0, process_count=1)
    epoch0, epoch1 = ([many(e * 50 + i, None) for i in range(50)] for e in range(2))
    assert epoch0 != epoch1


def test_weighted_sampling_is_global_across_processes():
    # Process shards interleave one global weighted sequence, as one sampler over all clips:
    # all weight on clips that process 0 would never own under index sharding still reaches it.
    weights = np.array([0.0, 1.0, 0.0, 1.0, 0.0, 1.0, 0.0])
    shards = [sampling.WeightedDraw(weights, seed=2, process_index=i, process_count=2) for i in range(2)]
    single = sampling.WeightedDraw(weights, seed=2, process_index=0, process_count=1)
    merged = [shards[pos % 2](pos // 2, None) for pos in range(7)]
    assert merged == [single(pos, None) for pos in range(7)]
    assert set(shards[0](i, None) for i in range(40)) <= {1, 3, 5}


def test_balanced_sampling_in_pipeline(tmp_path):
    c = pipeline_config(tmp_path, 4, mixup=0.0, balanced_sampling=True)
    c.weight_csv = str(tmp_path / "w.csv")
    np.savetxt(c.weight_csv, [0.0, 1.0, 0.0, 0.0])  # only clip 1 can be drawn.
    batch = next(ip.make_train_iterator(c, process_index=0, process_count=1))
    np.testing.assert_array_equal(batch["label"].argmax(axis=1), [1, 1, 1, 1])


def test_sharding_is_disjoint_and_complete(tmp_path):
    c = pipeline_config(tmp_path, 11, mixup=0.0, batch_size=1)
    eval_seen, train_seen, eval_batches = [], [], set()
    for p in range(3):
        batches = list(ip.make_eval_iterator(c, "validation", process_index=p, process_count=3))
        eval_batches.add(len(batches))
        for b in batches:
            eval_seen.extend(b["label"][b["mask"]].argmax(axis=1).tolist())
        train = _one_epoch(c, p, 3)
        train_seen.append({int(b["label"].argmax()) for b in train})
    assert eval_batches == {1}  # every process runs the same number of eval steps.
    assert sorted(eval_seen) == list(range(11))
    assert sorted(train_seen[0] | train_seen[1] | train_seen[2]) == list(range(11))
    assert sum(len(s) for s in train_seen) == 11


def test_resume_gives_the_same_batches(tmp_path):
    c = pipeline_config(tmp_path, 6)
    reference = _take(ip.make_train_iterator(c, process_index=0, process_count=1), 6)
    first = ip.make_train_iterator(c, process_index=0, process_count=1)
    _take(first, 3)
    state = json.loads(json.dumps(first.get_state()))  # must survive serialisation.
    resumed = ip.make_train_iterator(c, process_index=0, process_count=1)
    resumed.set_state(state)
    for want, got in zip(reference[3:], _take(resumed, 3)):
        np.testing.assert_array_equal(want["fbank"], got["fbank"])
        np.testing.assert_array_equal(want["label"], got["label"])


def test_seed_changes_order_and_augmentation(tmp_path):
    """One epoch of 8 clips (no mixup: the one-hot label names the clip): the same seed gives the same
    order and the same augmented fbanks; another seed another order of the same clips, and other fbanks."""
    c = pipeline_config(tmp_path, 8, mixup=0.0)

    def epoch(seed):
        c.seed = seed
        batches = _take(ip.make_train_iterator(c, process_index=0, process_count=1), 2)
        order = [int(label) for b in batches for label in b["label"].argmax(axis=1)]
        return order, {label: fbank for b in batches for label, fbank in zip(b["label"].argmax(axis=1), b["fbank"])}

    order, fbanks = epoch(0)
    again, fbanks_again = epoch(0)
    other, other_fbanks = epoch(7)
    assert order == again and all(np.array_equal(fbanks[k], fbanks_again[k]) for k in fbanks)
    assert sorted(order) == sorted(other) == list(range(8)) and order != other
    assert not any(np.array_equal(fbanks[k], other_fbanks[k]) for k in fbanks)


def test_bad_files_are_skipped_counted_and_limited(tmp_path):
    bad = {1: "missing", 3: "empty", 5: "corrupt"}
    c = pipeline_config(tmp_path, 8, bad=bad, mixup=0.0, max_bad_fraction=0.5)
    it = _one_epoch(c)
    seen = {int(i) for b in it for i in b["label"].argmax(axis=1)}
    assert seen <= {0, 2, 4, 6, 7} and len(seen) == 4  # 5 good clips, one partial batch dropped.
    assert sorted(os.path.basename(k) for k in it.bad_inputs) == ["clip1.wav", "clip3.wav",
                                                                  "clip5.wav"]
    assert it.num_skipped == 3

    c.max_bad_fraction = 0.25  # at most 2 of 8.
    with pytest.raises(BadInputError, match="clip1.wav") as err:
        _take(ip.make_train_iterator(c, process_index=0, process_count=1), 4)  # the third bad clip raises.
    assert "clip3.wav" in err.value.details and "clip5.wav" in err.value.details  # every bad clip, for -v.
    first = str(err.value)  # the line the command line prints names a clip and why.
    assert "\n" not in first and first.startswith("3 of 8 clips could not be loaded (at most 2 allowed by config.data.max_bad_fraction): "
                            "cannot load audio file '") and first.endswith("; and 2 more (run with -v for all)")

    c.max_bad_fraction = 0.5
    batches = list(validation_batches(c))
    mask = np.concatenate([b["mask"] for b in batches])
    assert mask.tolist() == [True, False, True, False, True, False, True, True]


def test_workers_and_worker_errors_surface(tmp_path):
    c = pipeline_config(tmp_path, 4, mixup=0.0)
    in_process = _take(ip.make_train_iterator(c, process_index=0, process_count=1), 2)
    c.num_workers = 1
    it = ip.make_train_iterator(c, process_index=0, process_count=1)
    for want in in_process:
        np.testing.assert_array_equal(next(it)["fbank"], want["fbank"])
    it.close()

    bad_dir = tmp_path / "bad"
    bad_dir.mkdir()
    c = pipeline_config(bad_dir, 4, num_workers=1, bad={0: "corrupt", 1: "corrupt", 2: "corrupt",
                                                 3: "corrupt"})
    with pytest.raises(BadInputError, match=r"bad/clip\d\.wav"):
        next(ip.make_train_iterator(c, process_index=0, process_count=1))


def test_batches_do_not_depend_on_worker_or_thread_counts(tmp_path):
    c = pipeline_config(tmp_path, 10, bad={3: "corrupt"}, max_bad_fraction=0.5)
    c.batch_size = 3  # batches straddle the 10-clip epoch and the per-worker slices.
    reference = _take(ip.make_train_iterator(c, process_index=0, process_count=1), 5)
    for workers, threads in ((2, 2), (0, 4)):  # one worker: test_workers_and_worker_errors_surface.
        c.num_workers, c.read_threads = workers, threads
        it = ip.make_train_iterator(c, process_index=0, process_count=1)
        for want, got in zip(reference, _take(it, 5)):
            np.testing.assert_array_equal(got["fbank"], want["fbank"], err_msg=f"{workers} workers")
            np.testing.assert_array_equal(got["label"], want["label"], err_msg=f"{workers} workers")
        it.close()


def test_resume_with_another_worker_count(tmp_path):
    c = pipeline_config(tmp_path, 6)
    reference = _take(ip.make_train_iterator(c, process_index=0, process_count=1), 5)
    c.num_workers = 2
    first = ip.make_train_iterator(c, process_index=0, process_count=1)
    _take(first, 2)
    state = json.loads(json.dumps(first.get_state()))
    first.close()
    c.num_workers = 0
    resumed = ip.make_train_iterator(c, process_index=0, process_count=1)
    resumed.set_state(state)
    for want, got in zip(reference[2:], _take(resumed, 3)):
        np.testing.assert_array_equal(got["fbank"], want["fbank"])


def test_a_truncated_wav_is_counted_as_bad_input(tmp_path):
    c = pipeline_config(tmp_path, 4, mixup=0.0, max_bad_fraction=0.5)
    path = tmp_path / "clip2.wav"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])  # the header still promises every frame.
    with pytest.raises(audio.AudioLoadError, match="truncated WAV"):
        audio.load_waveform(path)
    it = ip.make_train_iterator(c, process_index=0, process_count=1)
    _take(it, 2)
    assert it.skipped_by_kind == {"truncated": it.num_skipped} and it.num_skipped >= 1
    assert list(it.bad_inputs) == [str(path)]


def test_cached_features_give_the_same_batches_and_decode_clips_once(tmp_path, monkeypatch):
    c = pipeline_config(tmp_path, 10, bad={3: "corrupt"}, mixup=0.0, noise=False, max_bad_fraction=0.5)
    c.batch_size = 3  # 3 epochs of 9 good clips: batches straddle the epochs.
    plain = ip.make_train_iterator(c, process_index=0, process_count=1)
    reference = _take(plain, 9)
    plain.close()  # its prefetch thread reads no more.
    loads = []
    real_load = audio.load_waveform
    monkeypatch.setattr(audio, "load_waveform", lambda path: loads.append(path) or real_load(path))
    c.cache_features = True
    it = ip.make_train_iterator(c, process_index=0, process_count=1)
    for want, got in zip(reference, _take(it, 9), strict=True):  # the masks still differ per epoch.
        np.testing.assert_array_equal(got["fbank"], want["fbank"])
        np.testing.assert_array_equal(got["label"], want["label"])
    good = [p for p in loads if not p.endswith("clip3.wav")]
    # Three epochs, the last two from the cache (grain may start the first clip twice, in two threads).
    assert len(set(good)) == 9 and len(good) <= 10
    assert loads.count(str(tmp_path / "clip3.wav")) >= 2 and it.num_skipped >= 2  # the bad one is retried, counted
    c.num_workers = 1
    it = ip.make_train_iterator(c, process_index=0, process_count=1)
    for want, got in zip(reference, _take(it, 9), strict=True):
        np.testing.assert_array_equal(got["fbank"], want["fbank"])
    it.close()


def test_cached_features_refuse_mixup_and_random_crops(tmp_path):
    c = pipeline_config(tmp_path, 4, cache_features=True)
    with pytest.raises(ValueError, match="cache_features needs mixup 0"):
        ip.make_train_iterator(c, process_index=0, process_count=1)
    c.mixup = 0.0
    validation_batches(c)  # evaluation never caches.

    class CroppingSource(datafile.DatafileSource):
        random_crops = True

    source = CroppingSource(c.train_datafile, c.label_csv)
    with pytest.raises(ValueError, match="cache_features needs a source without random crops"):
        ip.make_train_iterator(c, source=source, process_index=0, process_count=1)


def _tone_fbank(hz: float) -> np.ndarray:
    t = np.arange(SR) / SR
    return kaldi.fbank_from_waveform((0.3 * np.sin(2 * np.pi * hz * t)).astype(np.float32)[None], SR, 64, 10.0)


@pytest.mark.parametrize("hz, factor", [(1000.0, 1.1), (2500.0, 0.9), (400.0, 1.08)])
def test_frequency_warp_moves_a_tone_to_the_warped_frequency(hz, factor):
    warped = warp.frequency_warp(_tone_fbank(hz), factor, SR)
    assert warped.dtype == np.float32 and warped.shape == _tone_fbank(hz).shape
    assert warped[50].argmax() == _tone_fbank(hz * factor)[50].argmax() != _tone_fbank(hz)[50].argmax()
    np.testing.assert_array_equal(warp.frequency_warp(_tone_fbank(hz), 1.0, SR), _tone_fbank(hz))


def test_pipeline_frequency_warp_draws_a_factor_per_clip(tmp_path):
    c = pipeline_config(tmp_path, 4, mixup=0.0, noise=False, freqm=0, timem=0, batch_size=4)
    plain = next(ip.make_train_iterator(c, process_index=0, process_count=1))
    c.freq_warp = 0.1
    warped = next(ip.make_train_iterator(c, process_index=0, process_count=1))
    np.testing.assert_array_equal(plain["label"], warped["label"])  # the same clips, warped.
    changed = [not np.array_equal(a, b) for a, b in zip(plain["fbank"], warped["fbank"])]
    assert all(changed)
    evaluation = next(validation_batches(c))  # evaluation never warps.
    c.freq_warp = 0.0
    np.testing.assert_array_equal(evaluation["fbank"], next(validation_batches(c))["fbank"])
    c.freq_warp, c.feature = 0.1, "epic_logmel"
    with pytest.raises(ValueError, match="freq_warp works on the Kaldi fbank"):
        ip.make_train_iterator(c, process_index=0, process_count=1)
