"""Tests of the demo's rooms, microphones and backgrounds (aum_jax.data.demo.acoustics)."""

from __future__ import annotations

import numpy as np
import pytest
from pyroomacoustics.experimental import measure_rt60
from scipy.signal import chirp, correlate, sosfreqz

from aum_jax.data.demo import acoustics

SR = 16_000


def _rms(audio: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(audio, dtype=np.float64))))


def _up_chirp(samples: int) -> np.ndarray:
    """A rising 200-2000 Hz sweep standing in for an utterance: backwards it falls, and the two hardly correlate."""
    t = np.arange(samples) / SR
    return (chirp(t, 200.0, t[-1], 2000.0) * np.hanning(samples)).astype(np.float32)


SPEECH = [_up_chirp(n) for n in (4000, 7000, 11000)]


def test_room_impulse_response_is_deterministic_per_seed() -> None:
    rir, recipe = acoustics.room_impulse_response(np.random.default_rng(3), SR)
    again, recipe_again = acoustics.room_impulse_response(np.random.default_rng(3), SR)
    other, recipe_other = acoustics.room_impulse_response(np.random.default_rng(4), SR)
    assert rir.tobytes() == again.tobytes() and recipe == recipe_again
    assert recipe != recipe_other and rir.tobytes() != other.tobytes()


@pytest.mark.parametrize("seed", range(6))
def test_rir_is_normalised_and_starts_at_its_direct_path(seed: int) -> None:
    rir, recipe = acoustics.room_impulse_response(np.random.default_rng(seed), SR)
    assert rir.dtype == np.float32 and rir.ndim == 1
    assert np.abs(rir).max() == 1.0
    assert 0.1 * SR < rir.size <= SR + acoustics._LEAD_SAMPLES
    # The direct path is the first loud tap, a few taps in: the silence before it is gone.
    assert np.flatnonzero(np.abs(rir) >= 0.3)[0] in range(acoustics._LEAD_SAMPLES - 1, acoustics._LEAD_SAMPLES + 2)
    assert set(recipe) == {"rt60", "room", "distance"}
    assert acoustics.ROOM_RT60[0] <= float(recipe["rt60"]) <= acoustics.ROOM_RT60[1]
    for side, (low, high) in zip(recipe["room"].split("x"), acoustics.ROOM_SIZE, strict=True):
        assert low - 0.05 <= float(side) <= high + 0.05
    assert acoustics.ROOM_DISTANCE[0] - 0.005 <= float(recipe["distance"]) <= acoustics.ROOM_DISTANCE[1] + 0.005


def test_rir_decays_at_about_its_rt60() -> None:
    targets, measured = [], []
    for seed in range(8):
        rir, recipe = acoustics.room_impulse_response(np.random.default_rng(seed), SR)
        targets.append(float(recipe["rt60"]))
        measured.append(measure_rt60(rir, SR, decay_db=20))
    ratio = np.array(measured) / np.array(targets)
    # Sabine's formula and the image sources agree only roughly, but the ordering holds.
    assert np.all((0.5 < ratio) & (ratio < 2.0)), ratio
    assert np.corrcoef(targets, measured)[0, 1] > 0.8


def test_reverberate_convolves_and_keeps_rms() -> None:
    audio = np.random.default_rng(0).standard_normal(5000)
    rir, _ = acoustics.room_impulse_response(np.random.default_rng(1), SR)
    wet = acoustics.reverberate(audio, rir)
    assert wet.shape == (audio.size + rir.size - 1,)
    assert _rms(wet) == pytest.approx(_rms(audio), rel=1e-6)
    # A scaled delay of two taps: the same audio two samples later (a correlation would lead), its RMS over
    # the longer output that of the audio.
    delayed = acoustics.reverberate(audio, np.array([0.0, 0.0, 0.5]))
    np.testing.assert_allclose(delayed[:2], 0.0, atol=1e-9)
    np.testing.assert_allclose(delayed[2:], audio * np.sqrt((audio.size + 2) / audio.size), atol=1e-9)
    assert not np.any(acoustics.reverberate(np.zeros(100), rir))


def test_microphone_is_deterministic_and_keeps_length() -> None:
    audio = np.random.default_rng(0).standard_normal(SR).astype(np.float32)
    out, recipe = acoustics.microphone(audio, np.random.default_rng(5), SR)
    again, recipe_again = acoustics.microphone(audio, np.random.default_rng(5), SR)
    other, _ = acoustics.microphone(audio, np.random.default_rng(6), SR)
    assert out.shape == audio.shape and out.dtype == np.float64
    assert out.tobytes() == again.tobytes() and recipe == recipe_again
    assert out.tobytes() != other.tobytes()
    assert set(recipe) == {"highpass", "lowpass", "peaks", "saturation"}
    assert not any(" " in value or "=" in value for value in recipe.values())


def test_microphone_cuts_rumble_and_keeps_speech_band() -> None:
    t = np.arange(SR) / SR
    rumble, voice = np.sin(2 * np.pi * 20.0 * t), np.sin(2 * np.pi * 1000.0 * t)
    saturated = 0
    for seed in range(20):
        low, recipe = acoustics.microphone(rumble, np.random.default_rng(seed), SR)
        high, _ = acoustics.microphone(voice, np.random.default_rng(seed), SR)
        steady = slice(SR // 4, None)  # past the filters' onset transients
        assert _rms(low[steady]) < 0.3 * _rms(rumble[steady]), recipe
        assert _rms(high[steady]) > 0.4 * _rms(voice[steady]), recipe
        saturated += recipe["saturation"] != "none"
    assert 0 < saturated < 20


def test_peaking_band_has_its_gain_at_its_centre() -> None:
    sos = acoustics._peaking_sos(np.array([1000.0]), np.array([6.0]), np.array([2.0]), SR)
    _, response = sosfreqz(sos, worN=[50.0, 1000.0, 7000.0], fs=SR)
    np.testing.assert_allclose(20 * np.log10(np.abs(response)), [0.0, 6.0, 0.0], atol=0.1)


@pytest.mark.parametrize("kind", acoustics.BACKGROUND_KINDS)
@pytest.mark.parametrize("samples", [3000, SR, 5 * SR])
def test_background_is_unit_rms_and_deterministic(kind: str, samples: int) -> None:
    noise = acoustics.background(kind, np.random.default_rng(7), samples, SR, SPEECH)
    again = acoustics.background(kind, np.random.default_rng(7), samples, SR, SPEECH)
    other = acoustics.background(kind, np.random.default_rng(8), samples, SR, SPEECH)
    assert noise.shape == (samples,) and noise.dtype == np.float64 and np.all(np.isfinite(noise))
    assert _rms(noise) == pytest.approx(1.0, rel=1e-9)
    assert noise.tobytes() == again.tobytes()
    assert noise.tobytes() != other.tobytes()


@pytest.mark.parametrize("seed", range(4))
def test_babble_says_its_speech_backwards(seed: int) -> None:
    utterance = _up_chirp(8000)
    babble = acoustics.background("babble", np.random.default_rng(seed), 2 * SR, SR, [utterance])
    forwards = np.abs(correlate(babble, utterance, "valid")).max()
    backwards = np.abs(correlate(babble, utterance[::-1], "valid")).max()
    assert backwards > 3 * forwards


def test_babble_needs_speech() -> None:
    with pytest.raises(ValueError, match="speech"):
        acoustics.background("babble", np.random.default_rng(0), SR, SR)


@pytest.mark.parametrize("seed", range(4))
def test_hum_is_harmonics_of_the_mains(seed: int) -> None:
    power = np.abs(np.fft.rfft(acoustics.background("hum", np.random.default_rng(seed), SR, SR))) ** 2
    hz = np.arange(power.size)  # 1 Hz bins

    def share(fundamental: float) -> float:
        near = np.minimum(hz % fundamental, fundamental - hz % fundamental) <= 1
        return power[near].sum() / power.sum()

    mains = 50 if share(50.0) > share(60.0) else 60
    assert share(mains) > 0.95 and share(55.0) < 0.05
    harmonics = power[mains : 10 * mains + 1 : mains]
    heard = harmonics[np.cumprod(harmonics > 1e-3 * harmonics[0]).astype(bool)]  # 30 dB over the noise, in a row
    assert heard.size >= 2 and np.all(np.diff(heard) <= 0)  # each weaker than the one below


@pytest.mark.parametrize("seed", range(4))
def test_music_sounds_above_its_lowest_note_and_never_stops(seed: int) -> None:
    music = acoustics.background("music", np.random.default_rng(seed), SR, SR)
    power = np.abs(np.fft.rfft(music)) ** 2
    assert power[:70].sum() < 0.02 * power.sum()  # no fundamental under 80 Hz
    windows = np.sqrt(np.mean(music.reshape(-1, SR // 10) ** 2, axis=1))
    assert windows.min() > 0.1


@pytest.mark.parametrize("beta", [0.0, 1.0, 2.0])
def test_coloured_noise_slope_does_not_depend_on_length(beta: float) -> None:
    shares = {}
    for samples in (SR, 10 * SR):
        hz = np.fft.rfftfreq(samples, 1 / SR)
        band = (hz > 100) & (hz < 4000)
        draws = []
        for seed in range(8):
            power = np.abs(np.fft.rfft(acoustics.coloured_noise(np.random.default_rng(seed), beta, samples, SR))) ** 2
            assert np.polyfit(np.log(hz[band]), np.log(power[band]), 1)[0] == pytest.approx(-beta, abs=0.1)
            draws.append(power[hz > 20].sum() / power.sum())
        shares[samples] = np.mean(draws)
    # Normalised over its length with no floor, a 10 s brown noise would put ~5x less power above 20 Hz.
    assert 0.6 < shares[10 * SR] / shares[SR] < 1.6


def test_unknown_background_names_the_kinds() -> None:
    with pytest.raises(ValueError, match="coloured, babble, music, hum"):
        acoustics.background("rain", np.random.default_rng(0), SR, SR)
