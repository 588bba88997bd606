"""Streaming features (aum_jax.data.features.streaming) and the ``remove_waveform_mean`` field.

The stream's frames, pushed in any chunks, must be the whole recording's frames
(``Preprocessing.frames``); the default preprocessing must keep the original front end.
"""

from __future__ import annotations

import json

import ml_collections
import numpy as np
import pytest

from aum_jax.checkpoints import model_files
from aum_jax.data.features import audio, kaldi, preprocessing
from aum_jax.data.features.preprocessing import (
    AUDIOSET_MEAN,
    AUDIOSET_STD,
    MissingStatisticsError,
    Preprocessing,
    pad_or_cut,
)
from aum_jax.data.features.streaming import StreamingFeatures
from tests.helpers import FIXTURES

STREAMED = Preprocessing(remove_waveform_mean=False, mean=AUDIOSET_MEAN, std=AUDIOSET_STD)
CHUNKINGS = [1, 7, 160, 399, 400, 401, 1000, "random"]


def _speech(seconds: float, offset: float = 0.3) -> np.ndarray:
    """``(samples,)`` float32: a stretch of a real 16 kHz clip, with a DC offset (which the stream keeps)."""
    wav, rate = audio.load_waveform(FIXTURES / "audio" / "sample0.wav")
    assert rate == 16_000
    start = 3 * rate
    return wav[0, start:start + int(seconds * rate)] + np.float32(offset)


def _sizes(chunking, total: int, seed: int):
    """Chunk sizes covering ``total`` samples: all equal, or random in [0, 1200] (0 included)."""
    rng = np.random.default_rng(seed)
    sizes, covered = [], 0
    while covered < total:
        size = int(rng.integers(0, 1201)) if chunking == "random" else chunking
        sizes.append(size)
        covered += size
    return sizes


def _stream(stream: StreamingFeatures, samples: np.ndarray, sizes) -> tuple[np.ndarray, list[int]]:
    """Pushes ``samples`` in chunks of ``sizes``, then flushes: the frames, and the buffer after each push."""
    outs, held, start = [], [], 0
    for size in sizes:
        out = stream.push(samples[start:start + size])
        assert out.dtype == np.float32 and out.ndim == 2 and out.shape[1] == stream.prep.num_mel_bins
        outs.append(out)
        held.append(stream.buffered_samples)
        start += size
    outs.append(stream.flush())
    return np.concatenate(outs), held


# --------------------------------------------------------------------------- stream == whole file


@pytest.mark.parametrize("chunking", CHUNKINGS)
def test_stream_of_any_chunking_equals_the_whole_files_frames(chunking):
    samples = _speech(1.0 if chunking == 1 else 2.5)
    whole = STREAMED.frames(samples[None], 16_000)
    assert whole.dtype == np.float32 and whole.shape == (1 + (samples.size - 400) // 160, 128)
    streamed, held = _stream(StreamingFeatures(STREAMED), samples, _sizes(chunking, samples.size, seed=7))
    np.testing.assert_array_equal(streamed, whole)
    # Fixed memory: only the frame in progress is kept, never a whole window.
    assert max(held) < 400


@pytest.mark.parametrize("prep", [
    Preprocessing(remove_waveform_mean=False, num_mel_bins=64, frame_shift_ms=12.5, mean=-3.0, std=2.0),
    Preprocessing(remove_waveform_mean=False, num_mel_bins=40, frame_shift_ms=30.0, skip_norm=True),  # shift > window.
    Preprocessing(remove_waveform_mean=False, sample_rate=8000, num_mel_bins=23, mean=-3.0, std=2.0),
], ids=["bins64_shift12.5", "shift_beyond_window", "sr8000"])
def test_stream_equals_whole_file_at_other_settings(prep):
    rng = np.random.default_rng(3)
    samples = (0.1 * rng.standard_normal(int(1.3 * prep.sample_rate)) + 0.05).astype(np.float32)
    whole = prep.frames(samples[None], prep.sample_rate)
    window, shift = kaldi.frame_layout(prep.sample_rate, prep.frame_shift_ms)
    assert whole.shape == (1 + (samples.size - window) // shift, prep.num_mel_bins)
    for chunking in (1, 399, 401, "random"):
        streamed, held = _stream(StreamingFeatures(prep), samples, _sizes(chunking, samples.size, seed=11))
        np.testing.assert_array_equal(streamed, whole)
        assert max(held) < window


@pytest.mark.parametrize("rate", [44_100, 8_000])
def test_audio_at_another_rate_is_resampled_as_the_whole_file_path_resamples_it(rate):
    rng = np.random.default_rng(rate)
    samples = (0.2 * rng.standard_normal(int(1.1 * rate))).astype(np.float32)
    whole = STREAMED.frames(samples[None], rate)  # audio.resample: soxr.resample, HQ.
    for chunking in (1, 401, "random"):
        stream = StreamingFeatures(STREAMED, sample_rate=rate)
        streamed, held = _stream(stream, samples, _sizes(chunking, samples.size, seed=5))
        np.testing.assert_array_equal(streamed, whole)
        assert max(held) < 400 and stream.frames_out == whole.shape[0]


def test_flush_at_the_models_rate_gives_nothing_and_ends_the_stream():
    stream = StreamingFeatures(STREAMED)
    first = stream.push(_speech(0.05))  # 800 samples: frames 0..2 complete, 320 samples pending.
    assert first.shape == (3, 128) and stream.buffered_samples == 800 - 3 * 160
    assert stream.flush().shape == (0, 128)
    assert stream.flush().shape == (0, 128)
    with pytest.raises(ValueError, match="flushed"):
        stream.push(np.zeros(10, np.float32))


def test_empty_and_single_sample_pushes():
    stream = StreamingFeatures(STREAMED)
    assert stream.push(np.zeros(0, np.float32)).shape == (0, 128)
    samples = _speech(0.03)  # 480 samples: one frame.
    rows = [stream.push(samples[i:i + 1]) for i in range(samples.size)]
    assert [i for i, r in enumerate(rows) if r.shape[0]] == [399]  # the frame completes with its 400th sample.
    np.testing.assert_array_equal(rows[399], STREAMED.frames(samples[None], 16_000))
    assert stream.frames_out == 1 and stream.buffered_samples == 480 - 160


def test_integer_pcm_is_scaled_as_the_whole_file_path_scales_it():
    pcm = (np.random.default_rng(0).standard_normal(4000) * 3000).astype(np.int16)
    streamed, _ = _stream(StreamingFeatures(STREAMED), pcm, [123] * 33)
    np.testing.assert_array_equal(streamed, STREAMED.frames(pcm[None], 16_000))


def test_memory_does_not_grow_with_the_number_of_pushes():
    stream = StreamingFeatures(STREAMED)
    rng = np.random.default_rng(1)
    chunk = (0.1 * rng.standard_normal(1000)).astype(np.float32)
    held = []
    for i in range(3000):
        stream.push(chunk[: int(rng.integers(0, 1000))])
        held.append(stream.buffered_samples)
        assert stream._pending.base is None  # its own copy: no pushed chunk is kept alive.
    assert max(held) < stream.window == 400
    assert stream._pending.nbytes < 400 * 4


# --------------------------------------------------------------------------- refusals


def test_a_preprocessing_that_removes_the_whole_waveforms_mean_is_refused():
    with pytest.raises(ValueError, match="field remove_waveform_mean is True"):
        StreamingFeatures(Preprocessing(mean=AUDIOSET_MEAN, std=AUDIOSET_STD))


def test_a_feature_other_than_kaldi_fbank_is_refused():
    prep = Preprocessing(feature="epic_logmel", sample_rate=24_000, skip_norm=True, remove_waveform_mean=False)
    with pytest.raises(ValueError, match="field feature is 'epic_logmel'"):
        StreamingFeatures(prep)


def test_missing_statistics_bad_rates_and_bad_samples_are_refused():
    with pytest.raises(MissingStatisticsError):
        StreamingFeatures(Preprocessing(remove_waveform_mean=False))
    for rate in (0, -16000, 44100.5, True, "16000"):
        with pytest.raises(ValueError, match="sample_rate must be a positive whole number"):
            StreamingFeatures(STREAMED, sample_rate=rate)
    stream = StreamingFeatures(STREAMED)
    with pytest.raises(ValueError, match="mono"):
        stream.push(np.zeros((2, 400), np.float32))
    with pytest.raises(ValueError, match="NaN or Inf"):
        stream.push(np.full(400, np.nan, np.float32))
    with pytest.raises(ValueError, match="not audio samples"):
        stream.push(np.zeros(400, bool))


# --------------------------------------------------------------------------- the field and the whole-file paths


def test_the_default_keeps_the_original_front_end():
    wav, rate = audio.load_waveform(FIXTURES / "audio" / "sample0.wav")
    prep = Preprocessing(mean=AUDIOSET_MEAN, std=AUDIOSET_STD)
    assert prep.remove_waveform_mean is True
    got = prep.features(wav, rate)
    # Bit for bit the original's _wav2fbank (whole-waveform mean removed) padded and normalised...
    expected = preprocessing.normalize(pad_or_cut(kaldi.fbank_from_waveform(wav, rate), 1024), AUDIOSET_MEAN,
                                       AUDIOSET_STD)
    np.testing.assert_array_equal(got, expected)
    # ...and within the shared tolerance of torchaudio's fbank of this clip (the golden fixture).
    golden = np.load(FIXTURES / "fbank" / "sample0_fbank128.npy")
    reference = preprocessing.normalize(pad_or_cut(golden, 1024), AUDIOSET_MEAN, AUDIOSET_STD)
    assert np.abs(got - reference).max() <= 1e-3 / (2 * AUDIOSET_STD)
    # frames(): the same frames, unpadded.
    np.testing.assert_array_equal(prep.frames(wav, rate), expected[:golden.shape[0]])


def test_without_the_waveform_mean_a_dc_offset_changes_the_features():
    samples = _speech(0.5, offset=0.0)
    shifted = samples + np.float32(0.25)
    with_mean = Preprocessing(mean=-4.0, std=4.0)
    assert np.array_equal(with_mean.frames(samples[None], 16_000), with_mean.frames(shifted[None], 16_000)) is False
    plain = kaldi.kaldi_fbank(shifted, 16_000)
    np.testing.assert_array_equal(
        Preprocessing(remove_waveform_mean=False, mean=-4.0, std=4.0, target_length=64).spectrogram(shifted[None],
                                                                                                    16_000),
        pad_or_cut(plain, 64))
    assert np.abs(plain - kaldi.fbank_from_waveform(shifted, 16_000)).max() > 0.0


def test_frames_of_a_clip_shorter_than_one_frame_are_refused_and_none_stream():
    with pytest.raises(ValueError, match="too short"):
        STREAMED.frames(np.zeros((1, 399), np.float32), 16_000)
    stream = StreamingFeatures(STREAMED)
    assert stream.push(np.zeros(399, np.float32)).shape == (0, 128) and stream.flush().shape == (0, 128)


def test_frame_features_is_kaldi_fbank_for_any_length():
    samples = _speech(0.2)
    np.testing.assert_array_equal(kaldi.frame_features(samples, 16_000), kaldi.kaldi_fbank(samples, 16_000))
    assert kaldi.frame_features(samples[:399], 16_000).shape == (0, 128)
    assert kaldi.frame_layout(16_000, 10.0) == (400, 160)


def test_the_field_is_a_feature_field_and_round_trips():
    assert "remove_waveform_mean" in preprocessing.FEATURE_FIELDS
    values = json.loads(json.dumps(STREAMED.to_dict()))
    assert values["remove_waveform_mean"] is False
    assert Preprocessing.from_dict(values) == STREAMED
    assert Preprocessing.from_dict(Preprocessing().to_dict()).remove_waveform_mean is True


def test_an_older_dict_without_the_field_reads_as_true():
    values = STREAMED.to_dict()
    del values["remove_waveform_mean"]
    assert Preprocessing.from_dict(values).remove_waveform_mean is True
    # Any other field is still required.
    del values["std"]
    with pytest.raises(ValueError, match="missing field"):
        Preprocessing.from_dict(values)


@pytest.mark.parametrize("value", ["no", 0, 1, None])
def test_the_fields_type_is_checked(value):
    with pytest.raises(ValueError, match="field remove_waveform_mean must be true or false"):
        Preprocessing(remove_waveform_mean=value)
    with pytest.raises(ValueError, match="field remove_waveform_mean must be true or false"):
        Preprocessing.from_dict({**STREAMED.to_dict(), "remove_waveform_mean": value})


def test_a_model_directorys_preprocessing_json_with_and_without_the_field(tmp_path):
    model_files.save_preprocessing(STREAMED, tmp_path)
    assert model_files.load_preprocessing(tmp_path) == STREAMED
    old = STREAMED.to_dict()
    del old["remove_waveform_mean"]
    (tmp_path / model_files.PREPROCESSING_FILE).write_text(json.dumps(old))
    assert model_files.load_preprocessing(tmp_path) == STREAMED.replace(remove_waveform_mean=True)
    (tmp_path / model_files.PREPROCESSING_FILE).write_text(json.dumps({**old, "remove_waveform_mean": "false"}))
    with pytest.raises(model_files.ModelDirectoryError, match="field remove_waveform_mean must be true or false"):
        model_files.load_preprocessing(tmp_path)


def test_a_data_config_without_the_knob_means_the_original_front_end():
    from aum_jax.configs import data as data_configs

    data = data_configs.defaults()
    data.name = "x"
    if "remove_waveform_mean" in data:
        del data["remove_waveform_mean"]
    assert Preprocessing.from_data_config(data).remove_waveform_mean is True
    data = ml_collections.ConfigDict({**data.to_dict(), "remove_waveform_mean": False})
    assert Preprocessing.from_data_config(data).remove_waveform_mean is False
