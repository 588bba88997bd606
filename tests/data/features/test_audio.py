"""Parity and error tests for the Kaldi fbank front end (aum_jax.data.features.kaldi) and decoding (aum_jax.data.features.audio). No torch needed.

References:
* fixtures/fbank/sample{0,1,2}_fbank128.npy: the shared golden fbanks of the original.
* fixtures/fbank/cases.json + files: torchaudio 2.9.1 references for other sample
  rates, bin counts, frame shifts, channels and lengths, made once by
  scripts/make_fbank_references.py (its docstring has the exact recipe).
* fixtures/fbank/torch_sums.npz: float32 torch.sum results, to pin the summation order.
"""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from aum_jax.data.features import audio, kaldi, torch_sums
from aum_jax.data.features.preprocessing import pad_or_cut
from tests.helpers import FIXTURES

FBANK = FIXTURES / "fbank"
AUDIO = FIXTURES / "audio"

TOL = 1e-3
# torch computes its FFT in float32; its rounding noise is about 1e-7 of the frame's
# whole spectrum, so mel bins far below the frame's loudest bin carry noise that no
# other FFT reproduces. Below 80 dB (18.42 nats of energy) under the frame's peak we
# allow TOL_DEEP; everywhere else TOL holds.
DEEP_NATS = 18.42
TOL_DEEP = 2e-3

CASES = json.loads((FBANK / "cases.json").read_text())["cases"]
EXPECTED_CASES = {
    "synth_sr8000_bins23",
    "synth_sr8000_bins128",
    "synth_sr22050_bins64",
    "synth_sr44100_bins80",
    "synth_sr48000_bins128_float",
    "synth_stereo_sr16000",
    "synth_short_sr16000",
    "synth_shift25_sr16000_bins40",
    "sample3_cut_bins80_shift12p5",
    "sample4_cut_sr44100_bins128",
    "sample4_cut_sr8000_bins64",
    "raw_dc_sr16000_bins128",
}


def load_fbank(path: Path, num_mel_bins: int = 128, frame_shift_ms: float = 10.0) -> np.ndarray:
    """Decode, then the original ``_wav2fbank`` (mean removed, first channel, the file's own rate)."""
    waveform, sr = audio.load_waveform(path)
    return kaldi.fbank_from_waveform(waveform, sr, num_mel_bins, frame_shift_ms)


def _compute(case: dict) -> np.ndarray:
    if case["kind"] == "wav":
        return load_fbank(FBANK / case["input"], case["num_mel_bins"], case["frame_shift_ms"])
    x = np.load(FBANK / case["input"])
    return kaldi.kaldi_fbank(x, case["sample_rate"], case["num_mel_bins"], case["frame_shift_ms"])


def _assert_close(got: np.ndarray, ref: np.ndarray) -> None:
    assert got.dtype == np.float32
    assert got.shape == ref.shape
    err = np.abs(got.astype(np.float64) - ref)
    deep = (ref.max(axis=1, keepdims=True) - ref) > DEEP_NATS
    assert err[~deep].max(initial=0.0) <= TOL, f"max err {err[~deep].max()}"
    assert err[deep].max(initial=0.0) <= TOL_DEEP, f"max err (deep bins) {err[deep].max()}"


# --------------------------------------------------------------------------- parity


@pytest.mark.parametrize("k", [0, 1, 2])
def test_golden_fbank_strict(k):
    ref = np.load(FBANK / f"sample{k}_fbank128.npy")
    got = load_fbank(AUDIO / f"sample{k}.wav")
    assert got.dtype == np.float32 and got.shape == ref.shape
    # The shared fixtures must hold within 1e-3 everywhere, deep bins included.
    assert np.abs(got - ref).max() <= TOL


def test_reference_cases_present():
    assert {c["name"] for c in CASES} == EXPECTED_CASES
    rates = {c["sample_rate"] for c in CASES}
    assert {8000, 16000, 22050, 44100, 48000} <= rates
    assert {23, 40, 64, 80, 128} <= {c["num_mel_bins"] for c in CASES}
    assert {5.0, 10.0, 12.5, 25.0} <= {c["frame_shift_ms"] for c in CASES}


@pytest.mark.parametrize("case", CASES, ids=[c["name"] for c in CASES])
def test_torchaudio_reference(case):
    ref = np.load(FBANK / case["reference"])
    assert list(ref.shape) == case["shape"]
    _assert_close(_compute(case), ref)


def test_stereo_uses_first_channel_and_global_mean():
    case = next(c for c in CASES if c["name"] == "synth_stereo_sr16000")
    ref = np.load(FBANK / case["reference"])
    wav, sr = audio.load_waveform(FBANK / case["input"])
    assert wav.shape[0] == 2
    # Only channel 0 is used: the second channel alone gives something else.
    other = kaldi.fbank_from_waveform(wav[1], sr)
    assert np.abs(other - ref).max() > 1.0
    _assert_close(kaldi.fbank_from_waveform(wav, sr), ref)


def test_tolerance_is_discriminative():
    """One LSB of change in half the samples breaks the match: the test can fail."""
    ref = np.load(FBANK / "sample0_fbank128.npy")
    wav, sr = audio.load_waveform(AUDIO / "sample0.wav")
    wav[0, ::2] += np.float32(1.0 / 32768)
    assert np.abs(kaldi.fbank_from_waveform(wav, sr) - ref).max() > 10 * TOL


def test_sum_order_matches_torch():
    sums = np.load(FBANK / "torch_sums.npz")
    data, _ = sf.read(str(AUDIO / "sample0.wav"), dtype="float32", always_2d=True)
    x = np.ascontiguousarray(data[:, 0]) * np.float32(0.7071) + np.float32(0.0123)
    for length in (8, 100, 200, 400, 551, 1102, 1200, 2048, 5000):
        rows = np.lib.stride_tricks.as_strided(
            x, (1 + (x.size - length) // 997, length), (997 * x.itemsize, x.itemsize)
        )
        np.testing.assert_array_equal(torch_sums.torch_sum_f32(rows), sums[f"rows_{length}"])
    assert torch_sums.torch_sum_f32(x[None])[0] == sums["total_scaled"]
    for k in range(5):
        d, _ = sf.read(str(AUDIO / f"sample{k}.wav"), dtype="float32", always_2d=True)
        assert torch_sums.torch_sum_f32(d.T.reshape(1, -1))[0] == sums[f"total_sample{k}"]


# --------------------------------------------------------------------- behaviour


def test_frame_counts_and_shapes():
    rng = np.random.default_rng(0)
    x = rng.standard_normal(16000).astype(np.float32) * 0.1
    f = kaldi.kaldi_fbank(x, 16000, num_mel_bins=64, frame_shift_ms=10.0)
    assert f.shape == (98, 64)  # 1 + (16000 - 400) // 160 frames.
    assert kaldi.kaldi_fbank(x[:400], 16000).shape == (1, 128)
    # 22050 Hz: 551-sample window, shift int(220.5) = 220.
    y = rng.standard_normal(22050).astype(np.float32) * 0.1
    assert kaldi.kaldi_fbank(y, 22050).shape[0] == 1 + (22050 - 551) // 220
    assert np.isfinite(f).all()


def test_one_dim_and_two_dim_agree():
    wav, sr = audio.load_waveform(AUDIO / "sample1.wav")
    a = kaldi.fbank_from_waveform(wav, sr)
    b = kaldi.fbank_from_waveform(wav[0], sr)
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(load_fbank(AUDIO / "sample1.wav"), a)


def test_remove_mean_matches_fbank_from_waveform():
    wav, sr = audio.load_waveform(FBANK / "synth_stereo_sr16000.wav")
    centred = kaldi.remove_mean(wav)
    assert centred.dtype == np.float32 and centred.shape == wav.shape
    assert abs(float(centred.astype(np.float64).mean())) < 1e-6
    np.testing.assert_array_equal(
        kaldi.kaldi_fbank(centred, sr), kaldi.fbank_from_waveform(wav, sr)
    )


def test_silence_hits_log_floor():
    f = kaldi.kaldi_fbank(np.zeros(4000, np.float32), 16000)
    np.testing.assert_allclose(f, np.log(np.finfo(np.float32).eps), rtol=0, atol=1e-6)


def test_pad_or_cut():
    f = np.arange(12, dtype=np.float32).reshape(4, 3) + 1
    padded = pad_or_cut(f, 6)
    assert padded.shape == (6, 3) and padded.dtype == np.float32
    np.testing.assert_array_equal(padded[:4], f)
    assert not padded[4:].any()
    np.testing.assert_array_equal(pad_or_cut(f, 2), f[:2])
    np.testing.assert_array_equal(pad_or_cut(f, 4), f)
    with pytest.raises(ValueError, match="target_length"):
        pad_or_cut(f, 0)
    with pytest.raises(ValueError, match="frames, bins"):
        pad_or_cut(f[0], 3)


def test_load_waveform_pcm16_scaling(tmp_path):
    ints = np.array([[0, 16384, -32768, 32767]], dtype=np.int16).T
    p = tmp_path / "x.wav"
    sf.write(str(p), ints, 16000, subtype="PCM_16")
    wav, sr = audio.load_waveform(p)
    assert sr == 16000 and wav.dtype == np.float32 and wav.shape == (1, 4)
    np.testing.assert_array_equal(wav[0], ints[:, 0] / np.float32(32768))


@pytest.mark.parametrize("dtype, values, expected", [
    ("int8", [-128, 0, 64, 127], [-1.0, 0.0, 0.5, 127 / 128]),
    ("uint8", [0, 128, 192, 255], [-1.0, 0.0, 0.5, 127 / 128]),  # 8-bit WAV is unsigned, silence at 128.
    ("int16", [-32768, 0, 16384, 32767], [-1.0, 0.0, 0.5, 32767 / 32768]),
    ("int32", [-2**31, 0, 2**30, 2**31 - 1], [-1.0, 0.0, 0.5, 1.0]),  # float32 rounds the last to 1.
    ("float16", [-1.0, 0.0, 0.5, 2.0], [-1.0, 0.0, 0.5, 2.0]),  # floats as they are.
    ("float64", [-1.0, 0.0, 0.5, 2.0], [-1.0, 0.0, 0.5, 2.0]),
])
def test_as_float_samples_scales_integer_pcm_by_its_type(dtype, values, expected):
    samples = audio.as_float_samples(np.array([values], dtype), "x")
    assert samples.dtype == np.float32 and samples.shape == (1, 4)
    np.testing.assert_array_equal(samples[0], np.array(expected, np.float32))


def test_as_float_samples_refuses_what_is_no_audio():
    floats = np.zeros((2, 8), np.float32)
    assert audio.as_float_samples(floats, "x") is floats  # not copied.
    for values in (np.ones(4, bool), np.ones(4, np.complex64), np.ones(4, np.int64), np.ones(4, np.uint16),
                   np.array(["a", "b"]), np.array([None, 1.0], object)):
        with pytest.raises(ValueError, match=f"the clip holds {values.dtype} values, not audio samples"):
            audio.as_float_samples(values, "the clip")
    for bad in (np.nan, np.inf, -np.inf):
        with pytest.raises(ValueError, match="the clip holds NaN or Inf samples"):
            audio.as_float_samples(np.array([0.0, bad, 0.5], np.float16), "the clip")


def test_fbank_of_integer_pcm_is_that_of_its_float_samples():
    wav, sr = audio.load_waveform(AUDIO / "sample1.wav")  # 16-bit PCM.
    pcm = np.round(wav * 32768).astype(np.int16)
    np.testing.assert_array_equal(kaldi.fbank_from_waveform(pcm, sr), kaldi.fbank_from_waveform(wav, sr))
    np.testing.assert_array_equal(audio.resample(pcm, sr, 8000), audio.resample(wav, sr, 8000))


def _refuse(path):
    raise RuntimeError("pretend soundfile cannot read this")


def test_a_long_file_only_librosa_reads_is_named_in_a_warning(monkeypatch, caplog):
    monkeypatch.setattr(audio, "_open_soundfile", _refuse)
    with caplog.at_level("WARNING"):
        audio.open_audio(AUDIO / "sample2.wav").close()  # 10 s.
    assert "decoded whole" not in caplog.text
    monkeypatch.setattr(audio, "_WHOLE_DECODE_WARNING_SECONDS", 5.0)
    with caplog.at_level("WARNING"):
        audio.open_audio(AUDIO / "sample2.wav").close()
    assert "sample2.wav: only librosa reads this format, so its 0.2 minutes of audio are decoded whole" in caplog.text


def test_librosa_fallback(tmp_path, monkeypatch):
    monkeypatch.setattr(audio, "_open_soundfile", _refuse)


    wav, sr = audio.load_waveform(AUDIO / "sample2.wav")
    ref, ref_sr = sf.read(str(AUDIO / "sample2.wav"), dtype="float32", always_2d=True)
    assert sr == ref_sr and wav.shape == ref.T.shape
    np.testing.assert_allclose(wav, ref.T, atol=1e-6)


# ------------------------------------------------------------------------ errors


def test_missing_file():
    p = AUDIO / "does_not_exist.wav"
    with pytest.raises(audio.AudioLoadError, match="does_not_exist.wav") as e:
        load_fbank(p)
    assert e.value.path == str(p)
    assert isinstance(e.value, OSError)


def test_empty_file(tmp_path):
    p = tmp_path / "empty.wav"
    p.write_bytes(b"")
    with pytest.raises(audio.AudioLoadError, match="empty.wav"):
        audio.load_waveform(p)


def test_corrupt_file(tmp_path):
    p = tmp_path / "corrupt.wav"
    p.write_bytes(np.random.default_rng(1).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    with pytest.raises(audio.AudioLoadError, match="corrupt.wav"):
        load_fbank(p)


def test_header_only_wav(tmp_path):
    p = tmp_path / "nosamples.wav"
    sf.write(str(p), np.zeros((0, 1), np.float32), 16000, subtype="PCM_16")
    with pytest.raises(audio.AudioLoadError, match="no samples"):
        audio.load_waveform(p)


def test_directory_is_not_audio(tmp_path):
    with pytest.raises(audio.AudioLoadError, match="directory"):
        audio.load_waveform(tmp_path)


def test_audio_load_error_pickles():
    e = audio.AudioLoadError("/a/b.wav", "broken")
    e2 = pickle.loads(pickle.dumps(e))
    assert isinstance(e2, audio.AudioLoadError)
    assert (e2.path, e2.reason, str(e2)) == (e.path, e.reason, str(e))
    assert "/a/b.wav" in str(e2)


def test_too_short_clip():
    with pytest.raises(ValueError, match="too short"):
        kaldi.kaldi_fbank(np.zeros(399, np.float32), 16000)
    with pytest.raises(ValueError, match="too short"):
        kaldi.fbank_from_waveform(np.zeros((2, 100), np.float32), 16000)


def test_non_finite_samples():
    x = np.zeros(1600, np.float32)
    x[5] = np.nan
    with pytest.raises(ValueError, match="NaN or Inf"):
        kaldi.kaldi_fbank(x, 16000)
    x[5] = np.inf
    with pytest.raises(ValueError, match="NaN or Inf"):
        kaldi.fbank_from_waveform(x, 16000)


def test_non_finite_file(tmp_path):
    p = tmp_path / "nan.wav"
    data = np.zeros((800, 1), np.float32)
    data[3] = np.nan
    sf.write(str(p), data, 16000, subtype="FLOAT")
    with pytest.raises(audio.AudioLoadError, match="non-finite"):
        audio.load_waveform(p)


@pytest.mark.parametrize("sr", [0, -16000, float("nan"), float("inf"), 30, "16000", True])
def test_bad_sample_rate(sr):
    with pytest.raises(ValueError, match="sample_rate"):
        kaldi.kaldi_fbank(np.zeros(16000, np.float32), sr)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(num_mel_bins=3), "num_mel_bins"),
        (dict(num_mel_bins=12.5), "num_mel_bins"),
        (dict(frame_shift_ms=0.0), "frame_shift_ms"),
        (dict(frame_shift_ms=0.01), "frame shift of 0"),
    ],
)
def test_bad_options(kwargs, match):
    with pytest.raises(ValueError, match=match):
        kaldi.kaldi_fbank(np.zeros(16000, np.float32), 16000, **kwargs)


def test_bad_shape():
    with pytest.raises(ValueError, match="shape"):
        kaldi.kaldi_fbank(np.zeros((1, 2, 16000), np.float32), 16000)
    with pytest.raises(ValueError, match="no channels"):
        kaldi.kaldi_fbank(np.zeros((0, 16000), np.float32), 16000)
