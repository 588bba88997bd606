"""Embedded demo dataset: synthetic keyword spotting, spoken by synthesizers of several kinds, in rooms.

Nothing is downloaded. Ten Speech-Commands-like keywords are spoken by the synthesizers of
:mod:`aum_jax.data.demo.voices` (eSpeak NG, Kokoro-82M, Piper), each with its voices held out
between the splits, sped up or slowed down, placed at a random offset inside a 1 s clip, in a
simulated room, over a background (coloured noise, babble, music or mains hum) at a random SNR, and
through a simulated microphone (:mod:`aum_jax.data.demo.acoustics`). The result is written as
PCM-16 wav files plus standard AST/AuM datafiles::

    <cache_dir>/<seed>-<manifest hash>/
      manifest.json                 # version, seed, recipe, sizes, voices per split
      class_labels_indices.csv      # index,mid,display_name
      train.json valid.json eval.json synth.json   # {"data": [{"wav": rel_path, "labels": mid}]}
      clips.csv                     # per-clip recipe (synthesizer, voice, speed, room, background, SNR, ...)
      utterances.csv rooms.csv      # the banked utterances and the rooms, each with its recipe
      audio/<split>/<word>/<n>.wav  utterances/<split>/<synthesizer>/<word>/<n>.wav  rooms/<split>/<n>.npy

Splits: ``train``, ``valid`` and ``eval`` are spoken by :attr:`Recipe.synthesizers`, each split with its own
voices (eSpeak NG's variants and Kokoro's blends are disjoint between them, so ``eval`` measures voices
never heard in training) and its own rooms; ``synth`` is spoken by :attr:`Recipe.heldout_synthesizer`
alone, a synthesizer never heard in training.

eSpeak NG keeps internal state across utterances in one process and onnxruntime draws its models'
noise from a seed set before they load, so byte-exact determinism is obtained by rendering fixed
shards of jobs, each in a fresh worker process (:mod:`aum_jax.data.demo.render`).

Datasets of different recipes (seed, sizes, words, ingredients) live side by side in the cache, each in
a folder named for its manifest; a dataset is rendered into a private folder and renamed
into place complete, so no run deletes or rewrites the clips another run reads.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import itertools
import json
import os
import shutil
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from absl import logging

from aum_jax.core import storage, warm_start
from aum_jax.data.demo import acoustics, render, voices
from aum_jax.data.demo.voices import espeak_ng, kokoro_82m, piper_tts
from aum_jax.data.sources.datafile import write_datafile

DATASET_VERSION = 3

KEYWORDS: tuple[str, ...] = (
    "yes", "no", "up", "down", "left", "right", "on", "off", "stop", "go",
)
SPLITS: tuple[str, ...] = ("train", "valid", "eval")  # the splits of held-out voices.
SYNTH_SPLIT = "synth"  # the held-out synthesizer's split.
SYNTH_TEST_SPLIT = f"test_{SYNTH_SPLIT}"  # its evaluation split in a run's config (config.data.test_synth_datafile).
CLIP_SPLITS: tuple[str, ...] = (*SPLITS, SYNTH_SPLIT)
SYNTH_ROOMS = 16  # the held-out synthesizer's rooms.
_ACOUSTICS = ("speed", "room_probability", "mic_probability", "backgrounds")  # Recipe's fields of acoustics.


@dataclasses.dataclass(frozen=True)
class Recipe:
    """What the clips are made of: who speaks, and the acoustics. The defaults are ``configs/demo.py``'s;
    each field is one ingredient of the BENCHMARKS.md table.

    The acoustics apply to the training synthesizers' splits (train, valid, eval); the held-out
    synthesizer's split is always heard in the defaults' acoustics (:meth:`heard_in`), :data:`SYNTH_ROOMS`
    rooms of its own: one test, whatever a recipe trains on."""

    synthesizers: tuple[str, ...] = ("espeak", "kokoro")  # speak train, valid and eval (each its held-out voices).
    heldout_synthesizer: str = "piper"  # speaks the synth split alone ("" no such split).
    bank_per_word: tuple[int, int, int, int] = (24, 4, 8, 24)  # banked utterances per word: train valid eval synth.
    speed: tuple[float, float] = (0.85, 1.15)  # speed perturbation range ((1, 1) none).
    rooms: tuple[int, int, int] = (64, 8, 16)  # rooms per split: train valid eval (0 none).
    room_probability: float = 0.8  # a clip's chance of being said in one of its split's rooms.
    mic_probability: float = 0.8  # a clip's chance of passing through a random microphone and channel.
    backgrounds: tuple[str, ...] = acoustics.BACKGROUND_KINDS  # each clip's background, drawn uniformly.

    @classmethod
    def from_config(cls, demo: Mapping[str, Any]) -> Recipe:
        """The recipe of ``config.demo`` (its keys of the fields' names)."""
        return cls(**{f.name: tuple(demo[f.name]) if isinstance(demo[f.name], (list, tuple)) else demo[f.name]
                      for f in dataclasses.fields(cls)})

    def heard_in(self, split: str) -> Recipe:
        """The recipe ``split`` is rendered with: this one, or for the synth split the defaults' acoustics."""
        if split != SYNTH_SPLIT:
            return self
        return dataclasses.replace(self, **{name: getattr(Recipe, name) for name in _ACOUSTICS})

    def room_count(self, split: str) -> int:
        """How many rooms of its own ``split`` is said in."""
        return SYNTH_ROOMS if split == SYNTH_SPLIT else self.rooms[CLIP_SPLITS.index(split)]

    def speakers(self, split: str) -> tuple[str, ...]:
        """The synthesizers of ``split``."""
        if split == SYNTH_SPLIT:
            return (self.heldout_synthesizer,) if self.heldout_synthesizer else ()
        return self.synthesizers

    def validate(self) -> None:
        """Raises ValueError for an unknown synthesizer or background, or a held-out synthesizer also in training."""
        for name in (*self.synthesizers, *filter(None, [self.heldout_synthesizer])):
            voices.get(name)
        if not self.synthesizers or self.heldout_synthesizer in self.synthesizers:
            raise ValueError(f"synthesizers {list(self.synthesizers)} must be non-empty and exclude the held-out "
                             f"synthesizer {self.heldout_synthesizer!r}")
        for split in CLIP_SPLITS:
            for name in self.speakers(split):
                if not voices.REGISTRY[name].voices.get(split):
                    raise ValueError(f"synthesizer {name!r} has no voices for the {split} split")
        unknown = set(self.backgrounds) - set(acoustics.BACKGROUND_KINDS)
        if not self.backgrounds or unknown:
            raise ValueError(f"backgrounds {list(self.backgrounds)}: choose from {list(acoustics.BACKGROUND_KINDS)}")
_SHARD_SIZE = 256  # clips rendered per fresh worker process
_SMALL_SHARD_SIZE = 32  # utterances or rooms per process: 10 s of a core or less, so the cores finish together


@dataclasses.dataclass(frozen=True)
class DemoDataset:
    """Paths of a generated demo dataset (AST/AuM datafile layout)."""

    root: Path
    train_json: Path
    valid_json: Path | None
    eval_json: Path
    synth_json: Path | None  # the held-out synthesizer's clips.
    label_csv: Path
    num_classes: int


def default_cache_dir() -> Path:
    """``$AUM_JAX_CACHE/demo`` if the variable is set, else ``~/.cache/aum_jax/demo`` (:func:`warm_start.cache_root`)."""
    return warm_start.cache_root() / "demo"


def _bank(seed: int, words: Sequence[str], recipe: Recipe, clips: dict[str, int]) -> list[render.UtteranceJob]:
    return [
        render.UtteranceJob(seed, split, s, name, w, word, i, voices.REGISTRY[name].voices[split])
        for s, split in enumerate(CLIP_SPLITS) if clips[split]
        for name in recipe.speakers(split) if voices.REGISTRY[name].banked
        for w, word in enumerate(words)
        for i in range(recipe.bank_per_word[s])
    ]


def _rooms(seed: int, recipe: Recipe, clips: dict[str, int]) -> list[render.RoomJob]:
    return [render.RoomJob(seed, split, s, i) for s, split in enumerate(CLIP_SPLITS) if clips[split]
            for i in range(recipe.room_count(split))]


def _plan(seed: int, words: Sequence[str], clips: dict[str, int], recipe: Recipe, bank: list[render.UtteranceJob],
          rooms: list[render.RoomJob]) -> list[render.ClipJob]:
    """The clips: clip ``i`` of word ``w`` is spoken by its split's synthesizer ``(w + i) mod n``."""
    jobs = []
    for s, split in enumerate(CLIP_SPLITS):
        split_bank = [u for u in bank if u.split == split]
        babble = tuple(u.rel_path for u in split_bank[:: max(1, len(split_bank) // 64)])  # 64 talkers at most
        split_rooms = tuple(r.rel_path for r in rooms if r.split == split)
        espeak_voices = espeak_ng.Espeak.voices.get(split) or espeak_ng.Espeak.voices["eval"]
        names, heard = recipe.speakers(split), recipe.heard_in(split)
        for w, word in enumerate(words):
            utterances = {name: tuple(u.rel_path for u in split_bank if u.synthesizer == name and u.word == word)
                          for name in names}
            for i in range(clips[split]):
                name = names[(w + i) % len(names)]
                jobs.append(render.ClipJob(
                    seed, split, s, w, word, i, name, voices.REGISTRY[name].voices[split], utterances[name],
                    heard.speed, split_rooms, heard.room_probability, heard.mic_probability, heard.backgrounds,
                    babble, espeak_voices, tuple(words)))
    return jobs


def _shards(jobs: Sequence[render.Job]) -> Iterator[Sequence[render.Job]]:
    """Runs of a clip split's jobs (and a bank's synthesizer's), so that a split's bytes never depend on another
    split's jobs; the stretches and the rooms each as one run (a room's bytes depend on its own job alone:
    no synthesizer, no state across jobs, so all splits' rooms share the fewest interpreters)."""
    size = _SHARD_SIZE if isinstance(jobs[0], (render.ClipJob, render.StretchJob)) else _SMALL_SHARD_SIZE

    def run_of(job: render.Job) -> tuple[str, str]:
        if isinstance(job, (render.StretchJob, render.RoomJob)):
            return ("", "")
        return (job.split, job.synthesizer if isinstance(job, render.UtteranceJob) else "")

    for _, run in itertools.groupby(jobs, key=run_of):
        run = list(run)
        for start in range(0, len(run), size):
            yield run[start : start + size]


def render_all(jobs: Sequence[render.Job], root: Path, num_workers: int | None,
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
    for split in CLIP_SPLITS:
        entries = [(r["wav"], [mid(r["word"])]) for r in rows if r["split"] == split]
        if entries:
            write_datafile(root / f"{split}.json", entries)


def _manifest(seed: int, words: Sequence[str], clips: dict[str, int], recipe: Recipe) -> dict[str, object]:
    return {
        "version": DATASET_VERSION,
        "seed": seed,
        "sample_rate": render.SAMPLE_RATE,
        "clip_samples": render.CLIP_SAMPLES,
        "words": list(words),
        "recipe": {
            **dataclasses.asdict(recipe),
            "espeak": {"rate_wpm": espeak_ng.RATE_WPM, "pitch": espeak_ng.PITCH,
                       "pitch_range": espeak_ng.PITCH_RANGE},
            "kokoro_speed": kokoro_82m.SPEED,
            "piper": {"length_scale": piper_tts.LENGTH_SCALE, "noise_scale": piper_tts.NOISE_SCALE,
                      "noise_w_scale": piper_tts.NOISE_W_SCALE},
            "room": {"rt60": acoustics.ROOM_RT60, "size": acoustics.ROOM_SIZE},
            "microphone": {"highpass_hz": acoustics.MIC_HIGHPASS_HZ, "lowpass_hz": acoustics.MIC_LOWPASS_HZ,
                           "peaks_db": acoustics.MIC_PEAKS_DB},
            "snr_db": render.SNR_DB, "noise_beta": acoustics.BACKGROUND_BETA, "peak_dbfs": render.PEAK_DBFS,
            "shard_size": _SHARD_SIZE, "small_shard_size": _SMALL_SHARD_SIZE,
        },
        "splits": {
            split: {"clips_per_word": n, "num_clips": n * len(words),
                    "voices": {name: list(voices.REGISTRY[name].voices[split]) for name in recipe.speakers(split)}}
            for split, n in clips.items() if n or split != SYNTH_SPLIT
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


def _dataset(root: Path, num_classes: int, clips: dict[str, int]) -> DemoDataset:
    return DemoDataset(
        root=root,
        train_json=root / "train.json",
        valid_json=root / "valid.json" if clips["valid"] else None,
        eval_json=root / "eval.json",
        synth_json=root / f"{SYNTH_SPLIT}.json" if clips[SYNTH_SPLIT] else None,
        label_csv=root / "class_labels_indices.csv",
        num_classes=num_classes,
    )


def _validate(words: Sequence[str], clips: dict[str, int]) -> None:
    if not words or len(set(words)) != len(words) or not all(w.isalpha() and w.isascii() for w in words):
        raise ValueError(f"words must be distinct non-empty ASCII words, got {list(words)}")
    if clips["train"] < 1 or clips["eval"] < 1 or clips["valid"] < 0 or clips[SYNTH_SPLIT] < 0:
        raise ValueError(f"need >= 1 train and eval clip per word and >= 0 valid and synth, got {clips}")


def generate_demo_dataset(
    cache_dir: str | os.PathLike[str],
    *,
    seed: int = 0,
    clips_per_word: int = 200,
    valid_clips_per_word: int = 20,
    eval_clips_per_word: int = 40,
    synth_clips_per_word: int = 40,
    words: Sequence[str] = KEYWORDS,
    recipe: Recipe = Recipe(),
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
      synth_clips_per_word: clips per keyword of the held-out synthesizer (0, or no
        ``recipe.heldout_synthesizer``: no synth split).
      words: keywords, one class each.
      recipe: the synthesizers and acoustics.
      num_workers: worker processes (default: CPU count); never affects bytes.
      force: regenerate even if the dataset is cached (the old copy is replaced in one rename).
      show_progress: show a tqdm progress bar.

    Returns:
      The paths of the dataset.
    """
    cache = Path(cache_dir).expanduser().resolve()
    clips = {"train": clips_per_word, "valid": valid_clips_per_word, "eval": eval_clips_per_word,
             SYNTH_SPLIT: synth_clips_per_word if recipe.heldout_synthesizer else 0}
    _validate(words, clips)
    recipe.validate()

    def build(staging: Path) -> None:
        bank, rooms = _bank(seed, words, recipe, clips), _rooms(seed, recipe, clips)
        for name in sorted({job.synthesizer for job in bank}):
            voices.REGISTRY[name].prepare()
        for jobs, what, csv_name in ((bank, "demo utterances", "utterances.csv"), (rooms, "demo rooms", "rooms.csv")):
            if jobs:
                rows = render_all(jobs, staging, num_workers, show_progress, what)
                write_csv(staging / csv_name, list(rows[0]), [list(r.values()) for r in rows])
        rows = render_all(_plan(seed, words, clips, recipe, bank, rooms), staging, num_workers, show_progress,
                          "demo clips")
        _write_outputs(staging, words, rows)

    root = build_cached(cache, _manifest(seed, words, clips, recipe), build, force=force)
    return _dataset(root, len(words), clips)


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
