"""Embedded demo dataset: synthetic keyword spotting generated with eSpeak NG.

Nothing is downloaded. Ten Speech-Commands-like keywords are spoken by
eSpeak NG (shipped by the ``espeakng-loader`` wheel and driven through
ctypes) with many voices, speaking rates and pitches, resampled to 16 kHz,
placed at a random offset inside a 1 s clip and mixed with coloured noise at
a random SNR. The result is written as PCM-16 wav files plus standard
AST/AuM datafiles::

    <cache_dir>/<seed>-<manifest hash>/
      manifest.json                 # version, seed, sizes, voices per split
      class_labels_indices.csv      # index,mid,display_name
      train.json valid.json eval.json   # {"data": [{"wav": rel_path, "labels": mid}]}
      clips.csv                     # per-clip recipe (voice, rate, pitch, SNR, onset, ...)
      audio/<split>/<word>/<n>.wav

Voices are held out per split: the eSpeak *variants* (m1, f2, klatt, ...)
of the train, valid and eval splits are disjoint, so eval voices are never
seen in training.

eSpeak NG keeps internal state (e.g. pitch flutter phase) across
utterances in one process, so byte-exact determinism is obtained by
rendering fixed shards of clips, each in a fresh worker process.

Datasets of different recipes (seed, sizes, words) live side by side in the cache, each in
a folder named for its manifest; a dataset is rendered into a private folder and renamed
into place complete, so no run deletes or rewrites the clips another run reads.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import json
import math
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from absl import logging

from aum_jax.data.demo import espeak
from aum_jax.data.sources import datasets

SAMPLE_RATE = 16_000
CLIP_SAMPLES = SAMPLE_RATE  # exactly 1 s
DATASET_VERSION = 1

KEYWORDS: tuple[str, ...] = (
    "yes", "no", "up", "down", "left", "right", "on", "off", "stop", "go",
)
ACCENTS: tuple[str, ...] = (
    "en", "en-us", "en-gb-scotland", "en-gb-x-rp", "en-029", "en-us-nyc",
    "en-gb-x-gbclan", "en-gb-x-gbcwmd",
)
# eSpeak voice variants, disjoint between splits (the held-out voices).
SPLIT_VARIANTS: dict[str, tuple[str, ...]] = {
    "train": (
        "", "m1", "m2", "m3", "m5", "m6", "m8", "f1", "f2", "f4", "klatt",
        "klatt3", "Andy", "Annie", "Denis", "Gene", "Lee", "adam", "anika",
        "belinda", "benjamin", "david", "ed", "grandpa", "linda", "max",
        "paul", "quincy", "rob", "steph", "travis", "croak", "whisper",
    ),
    "valid": ("m4", "f5", "klatt2", "Alicia", "edward", "iven"),
    "eval": (
        "m7", "f3", "klatt4", "Mario", "Michael", "aunty", "grandma",
        "robert", "shelby", "whisperf",
    ),
}
SPLITS: tuple[str, ...] = ("train", "valid", "eval")

# Per-clip augmentation ranges (inclusive).
RATE_WPM = (120, 220)
PITCH = (25, 75)
PITCH_RANGE = (20, 80)
SNR_DB = (5.0, 30.0)
NOISE_BETA = (0.0, 2.0)  # spectral slope: 0 white, 1 pink, 2 brown
PEAK_DBFS = (-18.0, -3.0)

_SHARD_SIZE = 256  # clips rendered per fresh worker process
_TRIM_FRACTION = 0.01  # leading/trailing samples below 1 % of peak are silence

@dataclasses.dataclass(frozen=True)
class DemoDataset:
    """Paths of a generated demo dataset (AST/AuM datafile layout)."""

    root: Path
    train_json: Path
    valid_json: Path | None
    eval_json: Path
    label_csv: Path
    num_classes: int


@dataclasses.dataclass(frozen=True)
class _ClipJob:
    """Everything a worker needs to render one clip."""

    seed: int
    split: str
    word_index: int
    word: str
    clip_index: int
    voices: tuple[str, ...]

    @property
    def rel_path(self) -> str:
        return f"audio/{self.split}/{self.word}/{self.clip_index:05d}.wav"


def default_cache_dir() -> Path:
    """``$AUM_JAX_CACHE/demo`` if the variable is set, else ``~/.cache/aum_jax/demo``."""
    base = os.environ.get("AUM_JAX_CACHE")
    return (Path(base) if base else Path.home() / ".cache" / "aum_jax") / "demo"


def split_voices(split: str) -> tuple[str, ...]:
    """eSpeak voice names (``accent+variant``) used by one split."""
    return tuple(
        accent + (f"+{variant}" if variant else "")
        for variant in SPLIT_VARIANTS[split]
        for accent in ACCENTS
    )


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


def _render_clip(job: _ClipJob) -> tuple[np.ndarray, dict[str, str]]:
    """Renders one 1 s clip; returns int16 audio and its recipe row."""
    rng = np.random.default_rng([job.seed, SPLITS.index(job.split), job.word_index, job.clip_index])
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


def _render_shard(jobs: Sequence[_ClipJob], root: str) -> list[dict[str, str]]:
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


def _plan(seed: int, words: Sequence[str], clips: dict[str, int]) -> list[_ClipJob]:
    voices = {split: split_voices(split) for split in SPLITS}  # shared: pickled once
    return [
        _ClipJob(seed, split, w, word, i, voices[split])
        for split in SPLITS
        for w, word in enumerate(words)
        for i in range(clips[split])
    ]


def _shards(jobs: list[_ClipJob]) -> Iterator[list[_ClipJob]]:
    for start in range(0, len(jobs), _SHARD_SIZE):
        yield jobs[start : start + _SHARD_SIZE]


def _render_in_fresh_interpreter(shard: list[_ClipJob], root: str) -> list[dict[str, str]]:
    """Runs :func:`_render_shard` in a new ``python -m aum_jax.data.demo.demo_data`` process.

    A fresh interpreter per shard keeps eSpeak NG's state, and so the bytes, the same. A
    plain subprocess imports only this module, where a multiprocessing child would import
    the caller's ``__main__`` first (the training CLI's loads TensorFlow and JAX: 8 s each).
    """
    request = json.dumps({"root": root, "jobs": [dataclasses.asdict(job) for job in shard]})
    package_parent = str(Path(__file__).resolve().parents[1])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [package_parent, os.environ.get("PYTHONPATH")]))}
    done = subprocess.run([sys.executable, "-m", "aum_jax.data.demo.demo_data"], input=request, capture_output=True,
                          text=True, env=env, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"rendering demo clips failed (exit {done.returncode}): {done.stderr.strip()[-2000:]}")
    return json.loads(done.stdout)


def _render_all(jobs: list[_ClipJob], root: Path, num_workers: int, show_progress: bool) -> list[dict[str, str]]:
    """Renders every clip, one fresh interpreter per shard, ``num_workers`` at a time; results in job order."""
    from tqdm.auto import tqdm

    shards = list(_shards(jobs))
    rows: list[dict[str, str]] = []
    with (
        ThreadPoolExecutor(min(num_workers, len(shards))) as pool,
        tqdm(total=len(jobs), desc="demo dataset", unit="clip", disable=not show_progress) as bar,
    ):
        futures = [pool.submit(_render_in_fresh_interpreter, shard, str(root)) for shard in shards]
        for future in futures:
            shard_rows = future.result()
            rows.extend(shard_rows)
            bar.update(len(shard_rows))
    return rows


def _write_csv(path: Path, header: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(header)
        writer.writerows(rows)


def _mid(word: str) -> str:
    return f"/demo/{word}"


def _write_outputs(root: Path, words: Sequence[str], rows: list[dict[str, str]]) -> None:
    _write_csv(
        root / "class_labels_indices.csv",
        ("index", "mid", "display_name"),
        [(str(i), _mid(w), w) for i, w in enumerate(words)],
    )
    _write_csv(root / "clips.csv", list(rows[0]), [list(r.values()) for r in rows])
    for split in SPLITS:
        entries = [(r["wav"], [_mid(r["word"])]) for r in rows if r["split"] == split]
        if entries:
            datasets.write_datafile(root / f"{split}.json", entries)


def _manifest(seed: int, words: Sequence[str], clips: dict[str, int]) -> dict[str, object]:
    return {
        "version": DATASET_VERSION,
        "seed": seed,
        "sample_rate": SAMPLE_RATE,
        "clip_samples": CLIP_SAMPLES,
        "words": list(words),
        "recipe": {
            "rate_wpm": RATE_WPM, "pitch": PITCH, "pitch_range": PITCH_RANGE,
            "snr_db": SNR_DB, "noise_beta": NOISE_BETA, "peak_dbfs": PEAK_DBFS,
            "shard_size": _SHARD_SIZE,
        },
        "splits": {
            split: {"clips_per_word": n, "num_clips": n * len(words), "voices": list(split_voices(split))}
            for split, n in clips.items()
        },
    }


def _folder_name(manifest: dict[str, object]) -> str:
    """``<seed>-<first 12 hex digits of the manifest's SHA-256>``: one folder per recipe."""
    digest = hashlib.sha256(json.dumps(manifest, sort_keys=True).encode()).hexdigest()[:12]
    return f"{manifest['seed']}-{digest}"


def _is_cached(root: Path, manifest: dict[str, object]) -> bool:
    path = root / "manifest.json"
    # Round-trip through JSON so tuples compare equal to the stored lists.
    return path.is_file() and json.loads(path.read_text(encoding="utf-8")) == json.loads(json.dumps(manifest))


def _remove_abandoned(cache_dir: Path, name: str) -> None:
    """Deletes the private folders of renders of ``name`` whose process is gone."""
    for partial in cache_dir.glob(f".{name}.partial.*"):
        pid = int(partial.name.rsplit(".", 1)[1])
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            shutil.rmtree(partial, ignore_errors=True)
        except PermissionError:  # alive, another user's.
            pass


def _dataset(root: Path, num_classes: int, has_valid: bool) -> DemoDataset:
    return DemoDataset(
        root=root,
        train_json=root / "train.json",
        valid_json=root / "valid.json" if has_valid else None,
        eval_json=root / "eval.json",
        label_csv=root / "class_labels_indices.csv",
        num_classes=num_classes,
    )


def _validate(words: Sequence[str], clips: dict[str, int]) -> None:
    if not words or len(set(words)) != len(words) or not all(w.isalpha() and w.isascii() for w in words):
        raise ValueError(f"words must be distinct non-empty ASCII words, got {list(words)}")
    if clips["train"] < 1 or clips["eval"] < 1 or clips["valid"] < 0:
        raise ValueError(f"need >= 1 train and eval clip per word and >= 0 valid, got {clips}")


def generate_demo_dataset(
    cache_dir: str | os.PathLike[str],
    *,
    seed: int = 0,
    clips_per_word: int = 200,
    valid_clips_per_word: int = 20,
    eval_clips_per_word: int = 40,
    words: Sequence[str] = KEYWORDS,
    num_workers: int | None = None,
    force: bool = False,
    show_progress: bool = True,
) -> DemoDataset:
    """Generates (or reuses) the synthetic keyword-spotting dataset in ``cache_dir``.

    Args:
      cache_dir: the folder of the cache; the dataset lands in its own subfolder, named for
        its manifest, and is reused when it is there.
      seed: random seed; the same seed gives byte-identical files.
      clips_per_word: train clips per keyword.
      valid_clips_per_word: validation clips per keyword (0: no valid split).
      eval_clips_per_word: eval clips per keyword (held-out voices).
      words: keywords, one class each.
      num_workers: worker processes (default: CPU count); never affects bytes.
      force: regenerate even if the dataset is cached (the old copy is replaced in one rename).
      show_progress: show a tqdm progress bar.

    Returns:
      The paths of the dataset.
    """
    cache = Path(cache_dir).expanduser().resolve()
    clips = {"train": clips_per_word, "valid": valid_clips_per_word, "eval": eval_clips_per_word}
    _validate(words, clips)
    manifest = _manifest(seed, words, clips)
    name = _folder_name(manifest)
    root = cache / name
    dataset = _dataset(root, len(words), valid_clips_per_word > 0)
    if not force and _is_cached(root, manifest):
        logging.info("Reusing demo dataset in %s", root)
        return dataset
    logging.info("Generating demo dataset in %s (%s clips per word)", root, clips)
    cache.mkdir(parents=True, exist_ok=True)
    _remove_abandoned(cache, name)
    staging = cache / f".{name}.partial.{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    rows = _render_all(_plan(seed, words, clips), staging, num_workers or os.cpu_count() or 1, show_progress)
    _write_outputs(staging, words, rows)
    (staging / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n", encoding="utf-8")
    if force and root.exists():  # moved aside in one rename: readers of the old copy keep their open files.
        aside = cache / f".{name}.replaced.{os.getpid()}"
        root.rename(aside)
        shutil.rmtree(aside)
    try:
        staging.rename(root)  # complete, in one step.
    except OSError:  # another process put the same dataset in place first: use it.
        shutil.rmtree(staging)
    return dataset


if __name__ == "__main__":  # one shard for _render_in_fresh_interpreter: JSON jobs on stdin, rows on stdout.
    _request = json.load(sys.stdin)
    _jobs = [_ClipJob(**{**job, "voices": tuple(job["voices"])}) for job in _request["jobs"]]
    json.dump(_render_shard(_jobs, _request["root"]), sys.stdout)
