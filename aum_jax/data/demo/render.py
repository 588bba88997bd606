"""Renders demo clips: one spoken keyword in coloured noise per 1 s, 16 kHz PCM-16 wav.

:mod:`aum_jax.data.demo.demo_data` plans the clips and caches the dataset; this module renders
them, each shard of :class:`ClipJob` in a fresh ``python -m aum_jax.data.demo.render``
interpreter (eSpeak NG keeps state between utterances, so only a fresh process gives the
same bytes).
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


def _mix(speech: np.ndarray, onset: int, snr_db: float, beta: float, peak_dbfs: float, rng: np.random.Generator) -> np.ndarray:
    """Places ``speech`` at ``onset`` in a 1 s clip with coloured noise; int16."""
    clean = np.zeros(CLIP_SAMPLES)
    clean[onset : onset + speech.size] = speech
    speech_rms = np.sqrt(np.mean(np.square(speech, dtype=np.float64)))
    mix = clean + _coloured_noise(rng, beta, CLIP_SAMPLES) * speech_rms * 10.0 ** (-snr_db / 20.0)
    mix *= 10.0 ** (peak_dbfs / 20.0) / np.abs(mix).max()
    return np.clip(np.round(mix * 32767.0), -32768, 32767).astype(np.int16)


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


def render_shard(jobs: Sequence[ClipJob], root: str) -> list[dict[str, str]]:
    """Renders and writes a shard of clips (run in a fresh process)."""
    import soundfile

    rows = []
    for job in jobs:
        audio, row = _render_clip(job)
        path = Path(root) / job.rel_path
        path.parent.mkdir(parents=True, exist_ok=True)
        soundfile.write(path, audio, SAMPLE_RATE, subtype="PCM_16", format="WAV")
        rows.append(row)
    return rows


def render_in_fresh_interpreter(shard: list[ClipJob], root: str) -> list[dict[str, str]]:
    """Runs :func:`render_shard` in a new ``python -m aum_jax.data.demo.render`` process.

    A fresh interpreter per shard keeps eSpeak NG's state, and so the bytes, the same. A
    plain subprocess imports only this module, where a multiprocessing child would import
    the caller's ``__main__`` first (the training CLI's loads TensorFlow and JAX: 8 s each).
    """
    request = json.dumps({"root": root, "jobs": [dataclasses.asdict(job) for job in shard]})
    package_parent = str(Path(__file__).resolve().parents[3])  # the folder holding aum_jax/.
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [package_parent, os.environ.get("PYTHONPATH")]))}
    done = subprocess.run([sys.executable, "-m", "aum_jax.data.demo.render"], input=request, capture_output=True,
                          text=True, env=env, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"rendering demo clips failed (exit {done.returncode}): {done.stderr.strip()[-2000:]}")
    return json.loads(done.stdout)


if __name__ == "__main__":  # one shard for render_in_fresh_interpreter: JSON jobs on stdin, rows on stdout.
    _request = json.load(sys.stdin)
    _jobs = [ClipJob(**{**job, "voices": tuple(job["voices"])}) for job in _request["jobs"]]
    json.dump(render_shard(_jobs, _request["root"]), sys.stdout)
