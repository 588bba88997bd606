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
rendering fixed shards of clips, each in a fresh worker process (:mod:`aum_jax.data.demo.render`).

Datasets of different recipes (seed, sizes, words) live side by side in the cache, each in
a folder named for its manifest; a dataset is rendered into a private folder and renamed
into place complete, so no run deletes or rewrites the clips another run reads.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import json
import os
import shutil
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from absl import logging

from aum_jax.core import storage
from aum_jax.data.demo import render
from aum_jax.data.sources.datafile import write_datafile

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
_SHARD_SIZE = 256  # clips rendered per fresh worker process


@dataclasses.dataclass(frozen=True)
class DemoDataset:
    """Paths of a generated demo dataset (AST/AuM datafile layout)."""

    root: Path
    train_json: Path
    valid_json: Path | None
    eval_json: Path
    label_csv: Path
    num_classes: int


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


def _plan(seed: int, words: Sequence[str], clips: dict[str, int]) -> list[render.ClipJob]:
    voices = {split: split_voices(split) for split in SPLITS}  # shared: pickled once
    return [
        render.ClipJob(seed, split, s, w, word, i, voices[split])
        for s, split in enumerate(SPLITS)
        for w, word in enumerate(words)
        for i in range(clips[split])
    ]


def _shards(jobs: list) -> Iterator[list]:
    for start in range(0, len(jobs), _SHARD_SIZE):
        yield jobs[start : start + _SHARD_SIZE]


def render_all(jobs: list[render.ClipJob] | list[render.StretchJob], root: Path, num_workers: int | None,
               show_progress: bool, what: str) -> list[dict[str, str]]:
    """Renders every job, one fresh interpreter per shard, ``num_workers`` (default: CPU count) at a time;
    results in job order; the progress bar says ``what``."""
    from tqdm.auto import tqdm

    shards = list(_shards(jobs))
    rows: list[dict[str, str]] = []
    with (
        ThreadPoolExecutor(min(num_workers or os.cpu_count() or 1, len(shards))) as pool,
        tqdm(total=len(jobs), desc=what, unit="file", disable=not show_progress) as bar,
    ):
        futures = [pool.submit(render.render_in_fresh_interpreter, shard, str(root)) for shard in shards]
        for future in futures:
            shard_rows = future.result()
            rows.extend(shard_rows)
            bar.update(len(shard_rows))
    return rows


def write_csv(path: Path, header: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(header)
        writer.writerows(rows)


def mid(word: str) -> str:
    return f"/demo/{word}"


def _write_outputs(root: Path, words: Sequence[str], rows: list[dict[str, str]]) -> None:
    write_csv(
        root / "class_labels_indices.csv",
        ("index", "mid", "display_name"),
        [(str(i), mid(w), w) for i, w in enumerate(words)],
    )
    write_csv(root / "clips.csv", list(rows[0]), [list(r.values()) for r in rows])
    for split in SPLITS:
        entries = [(r["wav"], [mid(r["word"])]) for r in rows if r["split"] == split]
        if entries:
            write_datafile(root / f"{split}.json", entries)


def _manifest(seed: int, words: Sequence[str], clips: dict[str, int]) -> dict[str, object]:
    return {
        "version": DATASET_VERSION,
        "seed": seed,
        "sample_rate": render.SAMPLE_RATE,
        "clip_samples": render.CLIP_SAMPLES,
        "words": list(words),
        "recipe": {
            "rate_wpm": render.RATE_WPM, "pitch": render.PITCH, "pitch_range": render.PITCH_RANGE,
            "snr_db": render.SNR_DB, "noise_beta": render.NOISE_BETA, "peak_dbfs": render.PEAK_DBFS,
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
    # Round-trip through JSON so tuples compare equal to the stored lists.
    return storage.read_json(root / "manifest.json") == json.loads(json.dumps(manifest))


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

    def build(staging: Path) -> None:
        rows = render_all(_plan(seed, words, clips), staging, num_workers, show_progress, "demo dataset")
        _write_outputs(staging, words, rows)

    root = build_cached(cache, _manifest(seed, words, clips), build, force=force)
    return _dataset(root, len(words), valid_clips_per_word > 0)


def build_cached(cache: Path, manifest: dict[str, object], build: Callable[[Path], None], *,
                 force: bool = False) -> Path:
    """The folder of ``manifest``'s dataset in ``cache``: reused when it is there (unless ``force``), else
    made by ``build(staging)`` in a private folder and renamed into place complete (see the module docstring).
    """
    name = _folder_name(manifest)
    root = cache / name
    if not force and _is_cached(root, manifest):
        logging.info("Reusing the dataset in %s", root)
        return root
    logging.info("Generating a dataset in %s", root)
    cache.mkdir(parents=True, exist_ok=True)
    _remove_abandoned(cache, name)
    staging = cache / f".{name}.partial.{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    build(staging)
    (staging / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n", encoding="utf-8")
    if force and root.exists():  # moved aside in one rename: readers of the old copy keep their open files.
        aside = cache / f".{name}.replaced.{os.getpid()}"
        root.rename(aside)
        shutil.rmtree(aside)
    try:
        staging.rename(root)  # complete, in one step.
    except OSError:  # another process put the same dataset in place first: use it.
        shutil.rmtree(staging)
    return root
