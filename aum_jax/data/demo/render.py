"""Renders demo audio, 16 kHz wav: utterances (a bank of words spoken by a neural synthesizer), room
impulse responses, clips (one spoken keyword per 1 s, in a room, through a microphone, over a
background) and stretches (seconds of coloured noise with keywords at random places, their onsets and
offsets known).

:mod:`aum_jax.data.demo.demo_data` and :mod:`aum_jax.data.demo.stream_data` plan the audio and cache
the datasets; this module renders them, each shard of :class:`UtteranceJob`, :class:`RoomJob`,
:class:`ClipJob` or :class:`StretchJob` in a fresh ``python -m aum_jax.data.demo.render`` interpreter
(eSpeak NG keeps state between utterances and onnxruntime seeds its models' noise when they load, so
only a fresh process gives the same bytes).
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from aum_jax.data.demo import acoustics, voices

SAMPLE_RATE = voices.base.SAMPLE_RATE
CLIP_SAMPLES = SAMPLE_RATE  # exactly 1 s

# Per-clip ranges (inclusive).
SNR_DB = (5.0, 30.0)
PEAK_DBFS = (-18.0, -3.0)

FADE_SECONDS = 0.01  # equal-power crossfades between background pieces.


@dataclasses.dataclass(frozen=True)
class UtteranceJob:
    """One word spoken by a banked (neural) synthesizer, for a split's bank of utterances."""

    seed: int
    split: str
    split_index: int
    synthesizer: str
    word_index: int
    word: str
    index: int
    voices: tuple[str, ...]

    @property
    def rel_path(self) -> str:
        return f"utterances/{self.split}/{self.synthesizer}/{self.word}/{self.index:04d}.wav"


@dataclasses.dataclass(frozen=True)
class RoomJob:
    """One random room's impulse response, for a split's rooms."""

    seed: int
    split: str
    split_index: int
    index: int

    @property
    def rel_path(self) -> str:
        return f"rooms/{self.split}/{self.index:03d}.npy"


@dataclasses.dataclass(frozen=True)
class ClipJob:
    """Everything a worker needs to render one clip: the word, who says it (``synthesizer`` with ``voices``,
    or for a banked one a draw from ``utterances``), and the acoustics: the ``speed`` range of the speed
    perturbation, a room of ``rooms`` with ``room_probability``, a microphone with ``mic_probability``, a
    background of ``backgrounds`` (babble made of the banked ``babble`` utterances, or when there are none
    of ``words`` said by eSpeak NG's ``babble_voices``)."""

    seed: int
    split: str
    split_index: int  # the split's place in demo_data.SPLITS, in the clip's random seed.
    word_index: int
    word: str
    clip_index: int
    synthesizer: str
    voices: tuple[str, ...]
    utterances: tuple[str, ...]
    speed: tuple[float, float]
    rooms: tuple[str, ...]
    room_probability: float
    mic_probability: float
    backgrounds: tuple[str, ...]
    babble: tuple[str, ...]
    babble_voices: tuple[str, ...]
    words: tuple[str, ...]

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


def _ramps(samples: int) -> tuple[np.ndarray, np.ndarray]:
    """Equal-power fades over ``samples``: (in, out), in**2 + out**2 == 1."""
    t = (np.arange(samples) + 0.5) / samples
    return np.sin(0.5 * np.pi * t), np.cos(0.5 * np.pi * t)


def background(rng: np.random.Generator, beta: float, level: float, samples: int) -> np.ndarray:
    """``samples`` of the clips' coloured noise at RMS ``level``: 1 s pieces of
    :func:`aum_jax.data.demo.acoustics.coloured_noise` (each unit-RMS over its 1 s, as a clip's noise is)
    overlapped by equal-power crossfades of :data:`FADE_SECONDS`.

    One long noise would not do: it is normalised over its whole length, so a brown noise's power would sit
    almost all below 1 Hz, its audible part far under the clips'.
    """
    piece = CLIP_SAMPLES
    fade = round(FADE_SECONDS * SAMPLE_RATE)
    hop = piece - fade
    count = -(-samples // hop) + 1
    fade_in, fade_out = _ramps(fade)
    window = np.ones((count, piece))
    window[1:, :fade], window[:, hop:] = fade_in, fade_out
    pieces = np.stack([acoustics.coloured_noise(rng, beta, piece, SAMPLE_RATE) for _ in range(count)]) * window
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


def _read(root: str, rel_path: str) -> np.ndarray:
    import soundfile

    audio, _ = soundfile.read(Path(root) / rel_path, dtype="float32")
    return audio


def _speed(audio: np.ndarray, factor: float) -> np.ndarray:
    """``audio`` played ``factor`` times as fast (pitch, formants and tempo together: Kaldi's speed perturbation)."""
    from scipy.signal import resample_poly

    down = round(100 * factor)
    return audio if down == 100 else resample_poly(audio, 100, down).astype(np.float32)


def _babble_speech(job: ClipJob, root: str, rng: np.random.Generator) -> list[np.ndarray]:
    """Talkers for a babble background: 6 of the split's banked utterances, else 3 words said by eSpeak NG."""
    if job.babble:
        return [_read(root, job.babble[i]) for i in rng.integers(len(job.babble), size=6)]
    espeak = voices.get("espeak")
    return [espeak.speak(job.words[i], job.babble_voices, rng)[0] for i in rng.integers(len(job.words), size=3)]


def _render_clip(job: ClipJob, root: str) -> tuple[np.ndarray, dict[str, str]]:
    """Renders one 1 s clip; returns int16 audio and its recipe row."""
    rng = np.random.default_rng([job.seed, job.split_index, job.word_index, job.clip_index])
    synthesizer = voices.get(job.synthesizer)
    if synthesizer.banked:
        utterance = job.utterances[rng.integers(len(job.utterances))]
        speech, said = _read(root, utterance), {"voice": utterance}
    else:
        speech, said = synthesizer.speak(job.word, job.voices, rng)
    speed = float(rng.uniform(*job.speed))
    speech = _speed(speech, speed)[:CLIP_SAMPLES]
    onset = int(rng.integers(CLIP_SAMPLES - speech.size + 1))
    offset = onset + speech.size
    room = ""
    if job.rooms and rng.random() < job.room_probability:  # the word where it was said, its echoes cut at 1 s
        room = job.rooms[rng.integers(len(job.rooms))]
        speech = acoustics.reverberate(speech, np.load(Path(root) / room))[: CLIP_SAMPLES - onset]
    snr_db, peak_dbfs = float(rng.uniform(*SNR_DB)), float(rng.uniform(*PEAK_DBFS))
    kind = job.backgrounds[rng.integers(len(job.backgrounds))]
    beta = float(rng.uniform(*acoustics.BACKGROUND_BETA)) if kind == "coloured" else None  # kept: the haystack extends the noise.
    noise = (acoustics.coloured_noise(rng, beta, CLIP_SAMPLES, SAMPLE_RATE) if beta is not None else
             acoustics.background(kind, rng, CLIP_SAMPLES, SAMPLE_RATE,
                                  _babble_speech(job, root, rng) if kind == "babble" else ()))
    clean = np.zeros(CLIP_SAMPLES)
    clean[onset : onset + speech.size] = speech
    speech_rms = np.sqrt(np.mean(np.square(clean[onset:offset], dtype=np.float64)))
    mix = clean + noise * speech_rms * 10.0 ** (-snr_db / 20.0)
    mic: dict[str, str] = {}
    if rng.random() < job.mic_probability:
        mix, mic = acoustics.microphone(mix, rng, SAMPLE_RATE)
    row = {
        "split": job.split, "wav": job.rel_path, "word": job.word, "synthesizer": job.synthesizer,
        "voice": said.pop("voice"), "settings": " ".join(f"{k}={v}" for k, v in said.items()),
        "speed": f"{speed:.3f}", "room": room, "microphone": " ".join(f"{k}={v}" for k, v in mic.items()),
        "background": kind, "noise_beta": "" if beta is None else f"{beta:.3f}", "snr_db": f"{snr_db:.2f}",
        "peak_dbfs": f"{peak_dbfs:.2f}",
        "onset": str(onset), "offset": str(offset),
    }
    return _to_int16(mix, peak_dbfs), row


def _render_utterance(job: UtteranceJob) -> tuple[np.ndarray, dict[str, str]]:
    """Speaks one banked utterance; int16 at a peak of -1 dBFS, and its recipe row."""
    rng = np.random.default_rng([job.seed, job.split_index, job.word_index, job.index, 2])  # 5 entries: its own.
    speech, said = voices.get(job.synthesizer).speak(job.word, job.voices, rng)
    row = {"split": job.split, "wav": job.rel_path, "word": job.word, "synthesizer": job.synthesizer, **said}
    return _to_int16(speech, -1.0), row


def _render_room(job: RoomJob) -> tuple[np.ndarray, dict[str, str]]:
    """One room's impulse response, float32 (taps,), and its recipe row."""
    rng = np.random.default_rng([job.seed, job.split_index, job.index, 3, 3])
    rir, recipe = acoustics.room_impulse_response(rng, SAMPLE_RATE)
    return rir, {"split": job.split, "wav": job.rel_path, **recipe}


def _spoken(rng: np.random.Generator, word: str, speakers: Sequence[str]) -> tuple[np.ndarray, dict[str, str]]:
    """One utterance of ``word`` by a random eSpeak NG voice of ``speakers`` at a random rate and pitch (at most
    1 s), and its recipe."""
    speech, recipe = voices.get("espeak").speak(word, speakers, rng)
    return speech[:CLIP_SAMPLES], recipe


def _render_stretch(job: StretchJob) -> tuple[np.ndarray, dict[str, str]]:
    """Renders one stretch; returns int16 audio and its recipe row (``events``: ``onset:offset:word`` in
    seconds, ``;``-separated, in time order).

    Its ``k`` words (0 to ``max_words``, uniform) each get a slot of ``seconds / k`` and a random place in it,
    so they never overlap; each is scaled to its own SNR over the stretch's noise (the clips' ranges).
    """
    rng = np.random.default_rng([job.seed, job.split_index, job.stretch_index, 1])  # 4 entries, as no ClipJob's
    samples = round(job.seconds * SAMPLE_RATE)
    beta, peak_dbfs = float(rng.uniform(*acoustics.BACKGROUND_BETA)), float(rng.uniform(*PEAK_DBFS))
    mix = background(rng, beta, 1.0, samples)
    count = int(rng.integers(job.max_words + 1))
    slot = samples // max(count, 1)
    events, speakers = [], []
    for k in range(count):
        word = job.words[int(rng.integers(len(job.words)))]
        speech, recipe = _spoken(rng, word, job.voices)
        speech = speech[:slot]
        onset = k * slot + int(rng.integers(slot - speech.size + 1))
        snr_db = float(rng.uniform(*SNR_DB))
        rms = np.sqrt(np.mean(np.square(speech, dtype=np.float64)))
        mix[onset : onset + speech.size] += speech * (10.0 ** (snr_db / 20.0) / rms)
        events.append(f"{onset / SAMPLE_RATE:.4f}:{(onset + speech.size) / SAMPLE_RATE:.4f}:{word}")
        speakers.append(recipe["voice"])
    row = {"split": job.split, "wav": job.rel_path, "events": ";".join(events), "voices": ";".join(speakers),
           "noise_beta": f"{beta:.3f}", "peak_dbfs": f"{peak_dbfs:.2f}"}
    return _to_int16(mix, peak_dbfs), row


Job = ClipJob | StretchJob | UtteranceJob | RoomJob


def render_shard(jobs: Sequence[Job], root: str) -> list[dict[str, str]]:
    """Renders and writes a shard of jobs of one kind (run in a fresh process), in order; onnxruntime is seeded
    from the first job before any model loads."""
    import soundfile

    first = [x for x in dataclasses.astuple(jobs[0]) if isinstance(x, int)]
    voices.seed_onnxruntime(int(np.random.default_rng([*first, 4]).integers(2**31)))
    rows = []
    for job in jobs:
        if isinstance(job, ClipJob):
            audio, row = _render_clip(job, root)
        elif isinstance(job, StretchJob):
            audio, row = _render_stretch(job)
        elif isinstance(job, UtteranceJob):
            audio, row = _render_utterance(job)
        else:
            audio, row = _render_room(job)
        path = Path(root) / job.rel_path
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(job, RoomJob):
            np.save(path, audio)  # not a float wav: libsndfile stamps its PEAK chunk with the time.
        else:
            soundfile.write(path, audio, SAMPLE_RATE, subtype="PCM_16", format="WAV")
        rows.append(row)
    return rows


def render_in_fresh_interpreter(shard: Sequence[Job], root: str) -> list[dict[str, str]]:
    """Runs :func:`render_shard` in a new ``python -m aum_jax.data.demo.render`` process.

    A fresh interpreter per shard keeps eSpeak NG's state and onnxruntime's seed, and so the bytes, the same. A
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
    _kind = {kind.__name__: kind for kind in (ClipJob, StretchJob, UtteranceJob, RoomJob)}[_request["kind"]]
    _jobs = [_kind(**{**job, **{k: tuple(v) for k, v in job.items() if isinstance(v, list)}}) for job in _request["jobs"]]
    json.dump(render_shard(_jobs, _request["root"]), sys.stdout)
