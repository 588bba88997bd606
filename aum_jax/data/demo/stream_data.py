"""The one-pass demo's dataset: the demo's keywords at random places in seconds of its background noise.

Each stretch (:class:`aum_jax.data.demo.render.StretchJob`) is ``seconds`` of the demo clips' coloured
noise (1 s pieces crossfaded, :func:`aum_jax.data.demo.render.background`) with 0 to ``max_words``
keywords spoken by the split's voices (disjoint between splits, as the demo's), each at its own SNR;
their onsets and offsets are known, so every stretch has strong labels for free. Written as::

    <cache_dir>/<seed>-<manifest hash>/
      manifest.json  class_labels_indices.csv  stretches.csv (each stretch's recipe)
      train.json valid.json eval.json                # AST/AuM datafiles (clip labels: the words said)
      train.tsv valid.tsv eval.tsv                   # DCASE TSVs: filename, onset, offset, event_label
      audio/<split>/<n>.wav

The needles of the haystack test (a keyword hidden in minutes of noise) are test clips of the demo's
keywords in the stretches' own sound: :func:`needles` renders them with
:func:`aum_jax.data.demo.demo_data.generate_demo_dataset` (:data:`NEEDLE_RECIPE`), cached beside it.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from pathlib import Path

from aum_jax.data.demo import acoustics, demo_data, render
from aum_jax.data.demo.voices import espeak_ng
from aum_jax.data.sources.datafile import write_datafile

DATASET_VERSION = 1
# The needles: the held-out eSpeak NG voices in coloured noise, as the stretches are spoken.
NEEDLE_RECIPE = demo_data.Recipe(synthesizers=("espeak",), heldout_synthesizer="", speed=(1.0, 1.0),
                                 rooms=(0, 0, 0), mic_probability=0.0, backgrounds=("coloured",))


@dataclasses.dataclass(frozen=True)
class StreamDataset:
    """Paths of a generated one-pass demo dataset: per split (``train``, ``valid``, ``eval``) its datafile
    and events TSV, and the label list."""

    root: Path
    datafiles: dict[str, Path]
    events: dict[str, Path]
    label_csv: Path


def _plan(seed: int, stretches: dict[str, int], seconds: float, max_words: int,
          words: Sequence[str]) -> list[render.StretchJob]:
    return [render.StretchJob(seed, split, s, i, seconds, tuple(words), max_words, espeak_ng.Espeak.voices[split])
            for s, split in enumerate(demo_data.SPLITS) for i in range(stretches[split])]


def _write_outputs(root: Path, words: Sequence[str], rows: list[dict[str, str]]) -> None:
    demo_data.write_csv(root / "class_labels_indices.csv", ("index", "mid", "display_name"),
                        [(str(i), demo_data.mid(w), w) for i, w in enumerate(words)])
    demo_data.write_csv(root / "stretches.csv", list(rows[0]), [list(r.values()) for r in rows])
    for split in demo_data.SPLITS:
        split_rows = [r for r in rows if r["split"] == split]
        if not split_rows:
            continue
        events = {r["wav"]: [e.split(":") for e in r["events"].split(";") if e] for r in split_rows}
        write_datafile(root / f"{split}.json",
                       [(wav, sorted({demo_data.mid(w) for _, _, w in said})) for wav, said in events.items()])
        lines = ["filename\tonset\toffset\tevent_label"]
        for wav, said in events.items():  # a stretch with no word: one empty row (strong: no event).
            lines += [f"{wav}\t{on}\t{off}\t{demo_data.mid(w)}" for on, off, w in said] or [f"{wav}\t\t\t"]
        (root / f"{split}.tsv").write_text("\n".join(lines) + "\n", encoding="utf-8")


def generate_stream_dataset(
    cache_dir: str | os.PathLike[str], *, seed: int = 0, stretches: dict[str, int], seconds: float = 4.0,
    max_words: int = 2, words: Sequence[str] = demo_data.KEYWORDS, num_workers: int | None = None,
    force: bool = False, show_progress: bool = True,
) -> StreamDataset:
    """Generates (or reuses) the one-pass demo's dataset in ``cache_dir`` (see the module docstring).

    Args:
      cache_dir: the cache's folder; the dataset lands in its own subfolder, named for its manifest.
      seed: random seed; the same seed gives byte-identical files.
      stretches: stretches per split, ``{"train": n, "valid": n, "eval": n}`` (valid may be 0).
      seconds: each stretch's length.
      max_words: the most keywords a stretch holds (each stretch draws 0 to ``max_words``).
      words: keywords, one class each.
      num_workers: worker processes (default: CPU count); never affects bytes.
      force: regenerate even if the dataset is cached.
      show_progress: show a progress bar.

    Raises:
      ValueError: sizes that cannot be rendered (no train or eval stretch, words that do not fit).
    """
    if stretches.get("train", 0) < 1 or stretches.get("eval", 0) < 1 or stretches.get("valid", 0) < 0:
        raise ValueError(f"need >= 1 train and eval stretch and >= 0 valid, got {stretches}")
    if max_words < 1 or seconds < max_words * 1.0:
        raise ValueError(f"{max_words} words of up to 1 s each do not fit in {seconds:g} s stretches")
    counts = {split: int(stretches.get(split, 0)) for split in demo_data.SPLITS}
    manifest = {
        "version": DATASET_VERSION, "kind": "stretches", "seed": seed, "sample_rate": render.SAMPLE_RATE,
        "seconds": seconds, "max_words": max_words, "words": list(words), "stretches": counts,
        "recipe": {"rate_wpm": espeak_ng.RATE_WPM, "pitch": espeak_ng.PITCH,
                   "pitch_range": espeak_ng.PITCH_RANGE,
                   "snr_db": render.SNR_DB, "noise_beta": acoustics.BACKGROUND_BETA, "peak_dbfs": render.PEAK_DBFS,
                   "fade_seconds": render.FADE_SECONDS},
        "voices": {split: list(espeak_ng.Espeak.voices[split]) for split in demo_data.SPLITS},
    }

    def build(staging: Path) -> None:
        rows = demo_data.render_all(_plan(seed, counts, seconds, max_words, words), staging, num_workers,
                                    show_progress, "stream demo dataset")
        _write_outputs(staging, words, rows)

    root = demo_data.build_cached(Path(cache_dir).expanduser().resolve(), manifest, build, force=force)
    splits = [split for split in demo_data.SPLITS if counts[split]]
    return StreamDataset(root, {s: root / f"{s}.json" for s in splits}, {s: root / f"{s}.tsv" for s in splits},
                         root / "class_labels_indices.csv")


def needles(cache_dir: str | os.PathLike[str], *, seed: int = 0, clips_per_word: int = 40,
            show_progress: bool = True) -> Path:
    """The folder of the haystack's needles: demo test clips of :data:`NEEDLE_RECIPE` (``eval.json``,
    ``clips.csv``, the held-out voices), ``clips_per_word`` per keyword."""
    dataset = demo_data.generate_demo_dataset(cache_dir, seed=seed, clips_per_word=1, valid_clips_per_word=0,
                                              eval_clips_per_word=clips_per_word, recipe=NEEDLE_RECIPE,
                                              show_progress=show_progress)
    return dataset.root
