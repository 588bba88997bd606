"""Renders demo audio, 16 kHz PCM-16 wav: clips (one spoken keyword in coloured noise per 1 s) and
stretches (seconds of the same noise with keywords at random places, their onsets and offsets known).

:mod:`aum_jax.data.demo.demo_data` and :mod:`aum_jax.data.demo.stream_data` plan the audio and cache
the datasets; this module renders them, each shard of :class:`ClipJob` or :class:`StretchJob` in a
fresh ``python -m aum_jax.data.demo.render`` interpreter (eSpeak NG keeps state between utterances,
so only a fresh process gives the same bytes).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from aum_jax.data.demo import espeak

SAMPLE_RATE = 16_000
CLIP_SAMPLES = SAMPLE_RATE  # exactly 1 s

# Per-clip augmentation ranges (inclusive).
RATE_WPM = (120, 220)
PITCH = (25, 75)
PITCH_RANGE = (20, 80)
SNR_DB = (5.0, 30.0)
NOISE_BETA = (0.0, 2.0)  # spectral slope: 0 white, 1 pink, 2 brown
PEAK_DBFS = (-18.0, -3.0)

_TRIM_FRACTION = 0.01  # leading/trailing samples below 1 % of peak are silence
FADE_SECONDS = 0.01  # equal-power crossfades between background pieces.


@dataclasses.dataclass(frozen=True)
class ClipJob:
    """Everything a worker needs to render one clip."""

    seed: int
    split: str
    split_index: int  # the split's place in demo_data.SPLITS, in the clip's random seed.
    word_index: int
    word: str
    clip_index: int
    voices: tuple[str, ...]

    @property
    def rel_path(self) -> str:
        return f"audio/{self.split}/{self.word}/{self.clip_index:05d}.wav"


@dataclasses.dataclass(frozen=True)
class StretchJob:
    """Everything a worker needs to render one stretch: ``seconds`` of background noise with up to
    ``max_words`` of ``words`` spoken at random places by ``voices``."""

    seed: int
    split: str
    split_index: int
    stretch_index: int
    seconds: float
    words: tuple[str, ...]
    max_words: int
    voices: tuple[str, ...]

    @property
    def rel_path(self) -> str:
        return f"audio/{self.split}/{self.stretch_index:05d}.wav"


def synthesize(
    text: str, voice: str = "en", *, rate: int = 175, pitch: int = 50, pitch_range: int = 50, seed: int = 0
) -> np.ndarray:
    """Speaks ``text`` with eSpeak NG; float32 mono at 16 kHz, silence trimmed.

    Args:
      text: what to say.
      voice: eSpeak voice name, optionally with a variant (``"en-us+f2"``).
      rate: speaking rate in words per minute (80..450).
      pitch: base pitch, 0..100.
      pitch_range: pitch range, 0..100.
      seed: seed of eSpeak's noise generators (breathy/whispered voices).

    eSpeak NG also carries state (e.g. pitch-flutter phase) between
    utterances, so repeated calls in one process may differ slightly in
    waveform detail; only a fresh process gives byte-identical output.
    """
    from scipy.signal import resample_poly

    engine = espeak.engine()
    raw = engine.synthesize(text, voice, rate, pitch, pitch_range, seed).astype(np.float32) / 32768.0
    gcd = math.gcd(SAMPLE_RATE, engine.sample_rate)
    audio = resample_poly(raw, SAMPLE_RATE // gcd, engine.sample_rate // gcd).astype(np.float32)
    return _trim(audio)


def _trim(audio: np.ndarray) -> np.ndarray:
    loud = np.flatnonzero(np.abs(audio) > _TRIM_FRACTION * np.abs(audio).max(initial=0.0))
    if loud.size == 0:
        raise RuntimeError("eSpeak NG produced silence")
    return audio[loud[0] : loud[-1] + 1]


def _coloured_noise(rng: np.random.Generator, beta: float, n: int) -> np.ndarray:
    """Unit-RMS noise with power spectrum ~ 1/f**beta."""
    # Hand-written: NumPy and SciPy generate no coloured noise; white noise shaped in the rFFT domain.
    spectrum = np.fft.rfft(rng.standard_normal(n))
    freqs = np.fft.rfftfreq(n)
    freqs[0] = freqs[1]
    noise = np.fft.irfft(spectrum * freqs ** (-beta / 2.0), n)
    return noise / np.sqrt(np.mean(noise**2))


def _ramps(samples: int) -> tuple[np.ndarray, np.ndarray]:
    """Equal-power fades over ``samples``: (in, out), in**2 + out**2 == 1."""
    t = (np.arange(samples) + 0.5) / samples
    return np.sin(0.5 * np.pi * t), np.cos(0.5 * np.pi * t)


def background(rng: np.random.Generator, beta: float, level: float, samples: int) -> np.ndarray:
    """``samples`` of the clips' noise at RMS ``level``: 1 s pieces of :func:`_coloured_noise` (each unit-RMS
    over its 1 s, as a clip's noise is) overlapped by equal-power crossfades of :data:`FADE_SECONDS`.

    One long ``_coloured_noise`` would not do: it is normalised over its whole length, so a brown
    noise's power would sit almost all below 1 Hz, its audible part far under the clips'.
    """
    piece = CLIP_SAMPLES
    fade = round(FADE_SECONDS * SAMPLE_RATE)
    hop = piece - fade
    count = -(-samples // hop) + 1
    fade_in, fade_out = _ramps(fade)
    window = np.ones((count, piece))
    window[1:, :fade], window[:, hop:] = fade_in, fade_out
    pieces = np.stack([_coloured_noise(rng, beta, piece) for _ in range(count)]) * window
    out = np.zeros((count + 1) * hop)
    out[: count * hop].reshape(count, hop)[:] += pieces[:, :hop]
    out[hop:].reshape(count, hop)[:, :fade] += pieces[:, hop:]  # each piece's tail under the next one's head
    return level * out[:samples]


def hide(haystack: np.ndarray, clip: np.ndarray, at: int) -> None:
    """Puts ``clip`` in place of ``haystack[at : at + len(clip)]``, with equal-power crossfades at both ends."""
    fade = round(FADE_SECONDS * SAMPLE_RATE)
    fade_in, fade_out = _ramps(fade)
    end = at + clip.size
    haystack[at : at + fade] *= fade_out
    haystack[at + fade : end - fade] = 0.0
    haystack[end - fade : end] *= fade_in
    window = np.ones(clip.size)
    window[:fade], window[-fade:] = fade_in, fade_out
    haystack[at:end] += clip * window


def _to_int16(audio: np.ndarray, peak_dbfs: float) -> np.ndarray:
    """Scales ``audio`` to a peak of ``peak_dbfs`` and rounds it to int16."""
    audio = audio * (10.0 ** (peak_dbfs / 20.0) / np.abs(audio).max())
    return np.clip(np.round(audio * 32767.0), -32768, 32767).astype(np.int16)


def _mix(speech: np.ndarray, onset: int, snr_db: float, beta: float, peak_dbfs: float, rng: np.random.Generator) -> np.ndarray:
    """Places ``speech`` at ``onset`` in a 1 s clip with coloured noise; int16."""
    clean = np.zeros(CLIP_SAMPLES)
    clean[onset : onset + speech.size] = speech
    speech_rms = np.sqrt(np.mean(np.square(speech, dtype=np.float64)))
    mix = clean + _coloured_noise(rng, beta, CLIP_SAMPLES) * speech_rms * 10.0 ** (-snr_db / 20.0)
    return _to_int16(mix, peak_dbfs)


def _render_clip(job: ClipJob) -> tuple[np.ndarray, dict[str, str]]:
    """Renders one 1 s clip; returns int16 audio and its recipe row."""
    rng = np.random.default_rng([job.seed, job.split_index, job.word_index, job.clip_index])
    voice = job.voices[rng.integers(len(job.voices))]
    rate, pitch, pitch_range = (int(rng.integers(lo, hi + 1)) for lo, hi in (RATE_WPM, PITCH, PITCH_RANGE))
    snr_db, beta, peak_dbfs = (float(rng.uniform(lo, hi)) for lo, hi in (SNR_DB, NOISE_BETA, PEAK_DBFS))
    espeak_seed = int(rng.integers(2**31))
    speech = synthesize(job.word, voice, rate=rate, pitch=pitch, pitch_range=pitch_range, seed=espeak_seed)
    speech = speech[:CLIP_SAMPLES]
    onset = int(rng.integers(CLIP_SAMPLES - speech.size + 1))
    audio = _mix(speech, onset, snr_db, beta, peak_dbfs, rng)
    row = {
        "split": job.split, "wav": job.rel_path, "word": job.word, "voice": voice,
        "rate": str(rate), "pitch": str(pitch), "pitch_range": str(pitch_range),
        "snr_db": f"{snr_db:.2f}", "noise_beta": f"{beta:.3f}", "peak_dbfs": f"{peak_dbfs:.2f}",
        "onset": str(onset), "offset": str(onset + speech.size),
    }
    return audio, row


def _spoken(rng: np.random.Generator, word: str, voices: Sequence[str]) -> tuple[np.ndarray, dict[str, str]]:
    """One utterance of ``word`` by a random voice at a random rate and pitch (at most 1 s), and its recipe."""
    voice = voices[rng.integers(len(voices))]
    rate, pitch, pitch_range = (int(rng.integers(lo, hi + 1)) for lo, hi in (RATE_WPM, PITCH, PITCH_RANGE))
    speech = synthesize(word, voice, rate=rate, pitch=pitch, pitch_range=pitch_range, seed=int(rng.integers(2**31)))
    return speech[:CLIP_SAMPLES], {"voice": voice, "rate": str(rate), "pitch": str(pitch)}


def _render_stretch(job: StretchJob) -> tuple[np.ndarray, dict[str, str]]:
    """Renders one stretch; returns int16 audio and its recipe row (``events``: ``onset:offset:word`` in
    seconds, ``;``-separated, in time order).

    Its ``k`` words (0 to ``max_words``, uniform) each get a slot of ``seconds / k`` and a random place in it,
    so they never overlap; each is scaled to its own SNR over the stretch's noise (the clips' ranges).
    """
    rng = np.random.default_rng([job.seed, job.split_index, job.stretch_index, 1])  # 4 entries, as no ClipJob's
    samples = round(job.seconds * SAMPLE_RATE)
    beta, peak_dbfs = float(rng.uniform(*NOISE_BETA)), float(rng.uniform(*PEAK_DBFS))
    mix = background(rng, beta, 1.0, samples)
    count = int(rng.integers(job.max_words + 1))
    slot = samples // max(count, 1)
    events, voices = [], []
    for k in range(count):
        word = job.words[int(rng.integers(len(job.words)))]
        speech, recipe = _spoken(rng, word, job.voices)
        speech = speech[:slot]
        onset = k * slot + int(rng.integers(slot - speech.size + 1))
        snr_db = float(rng.uniform(*SNR_DB))
        rms = np.sqrt(np.mean(np.square(speech, dtype=np.float64)))
        mix[onset : onset + speech.size] += speech * (10.0 ** (snr_db / 20.0) / rms)
        events.append(f"{onset / SAMPLE_RATE:.4f}:{(onset + speech.size) / SAMPLE_RATE:.4f}:{word}")
        voices.append(recipe["voice"])
    row = {"split": job.split, "wav": job.rel_path, "events": ";".join(events), "voices": ";".join(voices),
           "noise_beta": f"{beta:.3f}", "peak_dbfs": f"{peak_dbfs:.2f}"}
    return _to_int16(mix, peak_dbfs), row


def render_shard(jobs: Sequence[ClipJob | StretchJob], root: str) -> list[dict[str, str]]:
    """Renders and writes a shard of clips or stretches (run in a fresh process)."""
    import soundfile

    rows = []
    for job in jobs:
        audio, row = _render_clip(job) if isinstance(job, ClipJob) else _render_stretch(job)
        path = Path(root) / job.rel_path
        path.parent.mkdir(parents=True, exist_ok=True)
        soundfile.write(path, audio, SAMPLE_RATE, subtype="PCM_16", format="WAV")
        rows.append(row)
    return rows


def render_in_fresh_interpreter(shard: list[ClipJob] | list[StretchJob], root: str) -> list[dict[str, str]]:
    """Runs :func:`render_shard` in a new ``python -m aum_jax.data.demo.render`` process.

    A fresh interpreter per shard keeps eSpeak NG's state, and so the bytes, the same. A
    plain subprocess imports only this module, where a multiprocessing child would import
    the caller's ``__main__`` first (the training CLI's loads TensorFlow and JAX: 8 s each).
    """
    request = json.dumps({"root": root, "kind": type(shard[0]).__name__, "jobs": [dataclasses.asdict(job) for job in shard]})
    package_parent = str(Path(__file__).resolve().parents[3])  # the folder holding aum_jax/.
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [package_parent, os.environ.get("PYTHONPATH")]))}
    done = subprocess.run([sys.executable, "-m", "aum_jax.data.demo.render"], input=request, capture_output=True,
                          text=True, env=env, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"rendering demo clips failed (exit {done.returncode}): {done.stderr.strip()[-2000:]}")
    return json.loads(done.stdout)


if __name__ == "__main__":  # one shard for render_in_fresh_interpreter: JSON jobs on stdin, rows on stdout.
    _request = json.load(sys.stdin)
    _kind = {"ClipJob": ClipJob, "StretchJob": StretchJob}[_request["kind"]]
    _jobs = [_kind(**{**job, **{k: tuple(v) for k, v in job.items() if isinstance(v, list)}}) for job in _request["jobs"]]
    json.dump(render_shard(_jobs, _request["root"]), sys.stdout)
