"""Makes the demo's clips sound recorded: rooms, microphones and backgrounds.

- :func:`room_impulse_response`: a random shoe-box room's impulse response (pyroomacoustics' image-source
  method), which :func:`reverberate` applies to speech;
- :func:`microphone`: a random microphone and channel (band limits, resonances, saturation);
- :func:`background`: unit-RMS coloured noise, babble, music or mains hum.

Every random choice comes from the caller's :class:`numpy.random.Generator`: the same generator state gives
the same bytes. Audio is 1-D at ``sample_rate`` Hz. SciPy and pyroomacoustics load on first use (0.5 s each),
so importing this module stays cheap.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

# Rooms.
ROOM_RT60 = (0.15, 0.9)  # seconds, uniform
ROOM_SIZE = ((3.0, 10.0), (2.5, 8.0), (2.4, 4.0))  # metres: x, y and z, each uniform
ROOM_DISTANCE = (0.3, 3.0)  # metres from the source to the microphone, uniform
_WALL_MARGIN = 0.5  # metres, at least, from the source and the microphone to every wall
# Image-source order cap: at most ~170k images, 35 ms of a core a room on average (uncapped, the worst rooms
# need order 180: 7.6M images, 3 s); the capped RIRs' T20 stays within 2 % of the uncapped ones'.
_MAX_ORDER = 50
_RIR_SECONDS = 1.0  # taps kept after the direct path
_LEAD_SAMPLES = 8  # taps kept before the direct path

# Microphones: frequencies log-uniform, gains uniform.
MIC_HIGHPASS_HZ = (40.0, 400.0)
MIC_LOWPASS_HZ = (3400.0, 7900.0)
MIC_ORDER = (2, 4)  # Butterworth orders of the high-pass and the low-pass, each uniform
MIC_PEAKS = (1, 3)  # peaking EQ bands
MIC_PEAK_HZ = (200.0, 6000.0)
MIC_PEAKS_DB = (-8.0, 8.0)
MIC_PEAK_Q = (0.5, 4.0)
MIC_SATURATION_PROBABILITY = 0.3
MIC_SATURATION_DRIVE = (1.0, 4.0)  # tanh drive at the signal's peak

# Backgrounds.
BACKGROUND_KINDS = ("coloured", "babble", "music", "hum")
BACKGROUND_BETA = (0.0, 2.0)  # coloured noise's spectral slope: 0 white, 1 pink, 2 brown
_NOISE_FLOOR_HZ = 1.0  # coloured noise is white below this: its spectrum does not depend on its length
_NOISE_UNDER_DB = (-40.0, -20.0)  # the little coloured noise under babble and hum
BABBLE_TALKERS = (3, 7)
_TALKER_GAIN_DB = (-10.0, 0.0)
_TALKER_PAUSE_S = 0.25  # at most, between a talker's repetitions
MUSIC_HZ = (80.0, 1000.0)  # note fundamentals, on the equal-tempered scale
_MUSIC_NOTES = (math.ceil(69 + 12 * math.log2(MUSIC_HZ[0] / 440.0)),  # MIDI numbers, inclusive: 82-988 Hz
                math.floor(69 + 12 * math.log2(MUSIC_HZ[1] / 440.0)))
MUSIC_VOICES = (1, 3)
MUSIC_HARMONICS = (3, 8)
_TEMPO_BPM = (60.0, 180.0)
_NOTE_BEATS = (0.5, 1.0, 2.0)  # a voice's notes are this many beats apart
# The fundamental's time constant in steps between the voice's notes (harmonic h decays h times faster): a
# note rings into the next, so silence never comes, and at most 4 ring at once, so the cost has a bound.
_NOTE_DECAY_STEPS = (0.2, 0.6)
_NOTE_RING = 4.6  # time constants a note lasts (-40 dB)
_CHORD_PROBABILITY = 0.5
_CHORDS = ((0, 4, 7), (0, 3, 7))  # major and minor triads, semitones over the root
_CHORD_ROOTS = (40, 60)  # MIDI numbers, 82-262 Hz
_CHORD_GAIN_DB = (-20.0, -6.0)
MAINS_HZ = (50.0, 60.0)
HUM_HARMONICS = (2, 10)  # the fundamental included
_HUM_FALLOFF = (0.2, 0.9)  # each harmonic's amplitude over the one below's


def room_impulse_response(rng: np.random.Generator, sample_rate: int) -> tuple[np.ndarray, dict[str, str]]:
    """A random shoe-box room's impulse response from a random source to a random microphone.

    The room's size and RT60 are uniform in :data:`ROOM_SIZE` and :data:`ROOM_RT60` (drawn again together
    where Sabine's formula asks a big room for more than total absorption); its walls' absorption and the
    image-source order come from ``pra.inverse_sabine``, the order capped at ``_MAX_ORDER``. The source and
    the microphone are at least 0.5 m from every wall, :data:`ROOM_DISTANCE` apart.

    Returns:
      float32 ``(taps,)``, at most 8 taps + 1 s long, its largest absolute tap 1, the direct path at tap 8
      (the silence before it trimmed); and its recipe: ``rt60`` (the drawn target, s), ``room``
      (``"6.1x4.2x3.0"``, metres), ``distance`` (m).
    """
    import pyroomacoustics as pra

    while True:
        size = rng.uniform(*np.transpose(ROOM_SIZE))
        rt60 = float(rng.uniform(*ROOM_RT60))
        try:
            absorption, order = pra.inverse_sabine(rt60, size)
        except ValueError:  # Sabine's formula asks this big a room for more than total absorption.
            continue
        break
    low, high = np.full(3, _WALL_MARGIN), size - _WALL_MARGIN
    source = rng.uniform(low, high)
    while True:
        distance = float(rng.uniform(*ROOM_DISTANCE))
        direction = rng.standard_normal(3)
        mic = source + distance * direction / np.linalg.norm(direction)
        if np.all((low <= mic) & (mic <= high)):
            break
    room = pra.ShoeBox(size, fs=sample_rate, materials=pra.Material(absorption), max_order=min(order, _MAX_ORDER))
    room.add_source(source)
    room.add_microphone(mic)
    threads = pra.constants.get("num_threads")
    pra.constants.set("num_threads", 1)  # each thread sums a share of the images: the bytes would follow the cores.
    try:
        room.compute_rir()
    finally:
        pra.constants.set("num_threads", threads)
    direct = pra.constants.get("frac_delay_length") // 2 + distance / room.c * sample_rate
    start = max(int(direct) - _LEAD_SAMPLES, 0)
    rir = room.rir[0][0][start : start + _LEAD_SAMPLES + round(_RIR_SECONDS * sample_rate)]
    recipe = {"rt60": f"{rt60:.3f}", "room": "x".join(f"{side:.1f}" for side in size), "distance": f"{distance:.2f}"}
    return (rir / np.abs(rir).max()).astype(np.float32), recipe


def reverberate(audio: np.ndarray, rir: np.ndarray) -> np.ndarray:
    """``audio`` ``(n,)`` heard through ``rir`` ``(taps,)``: their full convolution ``(n + taps - 1,)``, at
    ``audio``'s RMS (silence stays silent)."""
    from scipy.signal import fftconvolve

    wet = fftconvolve(audio, rir)
    return wet * (_rms(audio) / (_rms(wet) or 1.0))


def microphone(audio: np.ndarray, rng: np.random.Generator, sample_rate: int) -> tuple[np.ndarray, dict[str, str]]:
    """``audio`` ``(n,)`` through a random microphone and channel; float64 ``(n,)`` and its recipe.

    Butterworth high-pass and low-pass filters (orders :data:`MIC_ORDER`, cut-offs :data:`MIC_HIGHPASS_HZ` and
    :data:`MIC_LOWPASS_HZ`), 1-3 peaking EQ bands (:data:`MIC_PEAK_HZ`, :data:`MIC_PEAKS_DB`, :data:`MIC_PEAK_Q`),
    then with probability :data:`MIC_SATURATION_PROBABILITY` a tanh saturation that keeps the peak. The
    low-pass cut-off must lie under ``sample_rate / 2``.

    Recipe (no spaces): ``highpass`` and ``lowpass`` as ``"<Hz>Hz/<order>"``; ``peaks`` as
    ``"<Hz>Hz<gain>dB/Q<q>"``, ``;``-separated; ``saturation`` as the drive, or ``"none"``.
    """
    from scipy.signal import butter, sosfilt

    highpass, lowpass = (float(_log_uniform(rng, bounds)) for bounds in (MIC_HIGHPASS_HZ, MIC_LOWPASS_HZ))
    orders = rng.integers(MIC_ORDER[0], MIC_ORDER[1] + 1, size=2)
    count = int(rng.integers(MIC_PEAKS[0], MIC_PEAKS[1] + 1))
    centres, gains = _log_uniform(rng, MIC_PEAK_HZ, count), rng.uniform(*MIC_PEAKS_DB, count)
    qs = _log_uniform(rng, MIC_PEAK_Q, count)
    sos = np.concatenate([
        butter(orders[0], highpass, "highpass", fs=sample_rate, output="sos"),
        butter(orders[1], lowpass, "lowpass", fs=sample_rate, output="sos"),
        _peaking_sos(centres, gains, qs, sample_rate),
    ])
    out = sosfilt(sos, np.asarray(audio, dtype=np.float64))
    saturation = "none"
    if rng.random() < MIC_SATURATION_PROBABILITY:
        drive = float(rng.uniform(*MIC_SATURATION_DRIVE))
        peak = np.abs(out).max(initial=0.0) or 1.0
        out = np.tanh(drive * out / peak) * (peak / np.tanh(drive))
        saturation = f"{drive:.2f}"
    recipe = {
        "highpass": f"{highpass:.0f}Hz/{orders[0]}", "lowpass": f"{lowpass:.0f}Hz/{orders[1]}",
        "peaks": ";".join(f"{c:.0f}Hz{g:+.1f}dB/Q{q:.2f}" for c, g, q in zip(centres, gains, qs)),
        "saturation": saturation,
    }
    return out, recipe


def _peaking_sos(centres: np.ndarray, gains_db: np.ndarray, qs: np.ndarray, sample_rate: int) -> np.ndarray:
    """Peaking EQ biquads ``(bands, 6)`` in SciPy's ``sos`` layout, one per ``(bands,)`` centre, gain and Q."""
    # Hand-written: SciPy designs no peaking EQ (iirpeak is a band-pass); the RBJ Audio EQ Cookbook's biquad.
    amplitude = 10.0 ** (gains_db / 40.0)
    w0 = 2.0 * np.pi * centres / sample_rate
    alpha, cos = np.sin(w0) / (2.0 * qs), np.cos(w0)
    sos = np.stack([1 + alpha * amplitude, -2 * cos, 1 - alpha * amplitude,
                    1 + alpha / amplitude, -2 * cos, 1 - alpha / amplitude], axis=1)
    return sos / sos[:, 3:4]


def background(kind: str, rng: np.random.Generator, samples: int, sample_rate: int,
               speech: Sequence[np.ndarray] = ()) -> np.ndarray:
    """``samples`` of unit-RMS background of ``kind`` (one of :data:`BACKGROUND_KINDS`), float64 ``(samples,)``.

    - ``"coloured"``: :func:`coloured_noise`, its slope uniform in :data:`BACKGROUND_BETA`.
    - ``"babble"``: 3-7 talkers, each one of ``speech``'s utterances (1-D, at ``sample_rate``) played
      backwards (no keyword is said), repeated after random pauses from a random offset, at its own level;
      over a little coloured noise.
    - ``"music"``: 1-3 voices of plucked notes on a beat of random tempo, each note a random pitch in
      :data:`MUSIC_HZ` with 3-8 harmonics decaying exponentially, ringing into the next; half the time over a
      sustained triad.
    - ``"hum"``: mains hum at 50 or 60 Hz, 2-10 harmonics of random decreasing levels, over a little
      coloured noise.

    Raises:
      ValueError: for an unknown ``kind``, or babble without ``speech``.
    """
    if kind not in BACKGROUND_KINDS:
        raise ValueError(f"unknown background kind {kind!r}: choose one of {', '.join(BACKGROUND_KINDS)}")
    if kind == "coloured":
        out = coloured_noise(rng, float(rng.uniform(*BACKGROUND_BETA)), samples, sample_rate)
    elif kind == "babble":
        if not speech:
            raise ValueError("a babble background needs speech to play backwards")
        out = _with_noise(rng, _babble(rng, samples, sample_rate, speech), sample_rate)
    elif kind == "music":
        out = _music(rng, samples, sample_rate)
    else:
        out = _with_noise(rng, _hum(rng, samples, sample_rate), sample_rate)
    return _unit_rms(out)


def coloured_noise(rng: np.random.Generator, beta: float, samples: int, sample_rate: int) -> np.ndarray:
    """Unit-RMS noise ``(samples,)`` with power spectrum ~ 1/f**beta above 1 Hz, white below.

    The 1 Hz floor keeps the spectrum's shape, and so the audible share of the power, the same at every
    length (1 s at 16 kHz: the same bytes as white noise shaped with its DC bin given the 1 Hz bin's gain).
    """
    # Hand-written: NumPy and SciPy generate no coloured noise; white noise shaped in the rFFT domain.
    spectrum = np.fft.rfft(rng.standard_normal(samples))
    freqs = np.maximum(np.fft.rfftfreq(samples), _NOISE_FLOOR_HZ / sample_rate)
    return _unit_rms(np.fft.irfft(spectrum * freqs ** (-beta / 2.0), samples))


def _with_noise(rng: np.random.Generator, audio: np.ndarray, sample_rate: int) -> np.ndarray:
    """Unit-RMS ``audio`` ``(n,)`` plus coloured noise :data:`_NOISE_UNDER_DB` under it."""
    level = 10.0 ** (rng.uniform(*_NOISE_UNDER_DB) / 20.0)
    return _unit_rms(audio) + level * coloured_noise(rng, float(rng.uniform(*BACKGROUND_BETA)), audio.size, sample_rate)


def _babble(rng: np.random.Generator, samples: int, sample_rate: int, speech: Sequence[np.ndarray]) -> np.ndarray:
    """Talkers ``(samples,)`` saying ``speech`` backwards, each repeated from a random offset."""
    out = np.zeros(samples)
    for _ in range(int(rng.integers(BABBLE_TALKERS[0], BABBLE_TALKERS[1] + 1))):
        said = _unit_rms(np.asarray(speech[rng.integers(len(speech))], dtype=np.float64)[::-1])
        period = np.concatenate([said, np.zeros(rng.integers(round(_TALKER_PAUSE_S * sample_rate) + 1))])
        offset = int(rng.integers(period.size))
        gain = 10.0 ** (rng.uniform(*_TALKER_GAIN_DB) / 20.0)
        out += gain * np.tile(period, -(-(offset + samples) // period.size))[offset : offset + samples]
    return out


def _music(rng: np.random.Generator, samples: int, sample_rate: int) -> np.ndarray:
    """Notes ``(samples,)`` on a shared beat, each voice with its own spacing, timbre and decay, the first
    notes struck before the start; half the time over a sustained triad."""
    beat = 60.0 / rng.uniform(*_TEMPO_BPM) * sample_rate  # samples
    downbeat = rng.uniform(0.0, beat)
    out = np.zeros(samples)
    for _ in range(int(rng.integers(MUSIC_VOICES[0], MUSIC_VOICES[1] + 1))):
        step = beat * rng.choice(_NOTE_BEATS)
        decay = step / sample_rate * rng.uniform(*_NOTE_DECAY_STEPS)  # seconds
        harmonics = np.arange(1, rng.integers(MUSIC_HARMONICS[0], MUSIC_HARMONICS[1] + 1) + 1)
        amplitudes = harmonics ** -rng.uniform(0.5, 2.0)
        length = math.ceil(_NOTE_RING * decay * sample_rate)
        beats = np.arange(math.ceil(-(length + downbeat) / step), math.ceil((samples - downbeat) / step))
        onsets = downbeat + step * beats  # the first still ringing at sample 0, the last before the end
        notes = rng.integers(_MUSIC_NOTES[0], _MUSIC_NOTES[1] + 1, size=onsets.size)
        velocities = rng.uniform(0.3, 1.0, size=onsets.size)
        for onset, note, velocity in zip(np.round(onsets).astype(int), notes, velocities):
            lo, hi = max(onset, 0), min(onset + length, samples)
            note_hz = _midi_hz(note)
            out[lo:hi] += velocity * _partials(amplitudes, note_hz, 1.0 / decay, lo - onset, hi - lo, sample_rate)
    if rng.random() < _CHORD_PROBABILITY:
        root = rng.integers(_CHORD_ROOTS[0], _CHORD_ROOTS[1] + 1)
        gain = 10.0 ** (rng.uniform(*_CHORD_GAIN_DB) / 20.0) * _rms(out)
        amplitudes = 1.0 / np.arange(1, 4)
        for interval in _CHORDS[rng.integers(len(_CHORDS))]:
            out += gain * _partials(amplitudes, _midi_hz(root + interval), 0.0, 0, samples, sample_rate)
    return out


def _hum(rng: np.random.Generator, samples: int, sample_rate: int) -> np.ndarray:
    """Mains hum ``(samples,)``: harmonics of 50 or 60 Hz, each weaker than the one below, at random phases."""
    hz = float(rng.choice(MAINS_HZ))
    count = int(rng.integers(HUM_HARMONICS[0], HUM_HARMONICS[1] + 1))
    levels = np.cumprod(np.concatenate([[1.0], rng.uniform(*_HUM_FALLOFF, count - 1)]))
    phasors = levels * np.exp(2j * np.pi * rng.uniform(size=count))
    return _partials(phasors, hz, 0.0, 0, samples, sample_rate)


def _partials(amplitudes: np.ndarray, hz: float, damping: float, start: int, samples: int,
              sample_rate: int) -> np.ndarray:
    """``samples`` of a harmonic tone from its sample ``start`` on: ``sum_h Im(amplitudes[h-1] * z**h)``, ``z =
    exp((2j pi hz - damping) t)``, over the harmonics under Nyquist; harmonic h at h * ``hz``, decaying at h *
    ``damping`` per second. ``amplitudes`` ``(harmonics,)``, complex for phases -> ``(samples,)``."""
    # Hand-written: SciPy has no additive synthesis. z is a running product of one complex step (a multiply a
    # sample, a quarter of exp's cost; 1e-10 of drift over a minute) and Horner's rule (polyval) sums its
    # powers: no sine per harmonic.
    kept = amplitudes[: max(math.ceil(sample_rate / 2 / hz) - 1, 0)]
    rate = 2j * np.pi * hz - damping
    steps = np.full(samples, np.exp(rate / sample_rate))
    steps[:1] = np.exp(rate * start / sample_rate)
    return np.polynomial.polynomial.polyval(np.cumprod(steps), np.concatenate([[0.0], kept])).imag


def _midi_hz(note: int) -> float:
    return 440.0 * 2.0 ** ((note - 69) / 12.0)


def _log_uniform(rng: np.random.Generator, bounds: tuple[float, float], size: int | None = None) -> np.ndarray:
    return np.exp(rng.uniform(math.log(bounds[0]), math.log(bounds[1]), size))


def _rms(audio: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(audio, dtype=np.float64))))


def _unit_rms(audio: np.ndarray) -> np.ndarray:
    return audio / np.sqrt(np.mean(audio**2))
