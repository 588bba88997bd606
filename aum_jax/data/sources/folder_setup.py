"""A run on a folder of clips (``config.data.source == "folder"``): what is fixed on first use.

Both functions set the run's derived config (:func:`aum_jax.training.prepare.prepare`), never
the loaded one. :func:`configure` runs before the config is checked and writes nothing: it scans
the folder (:func:`aum_jax.data.sources.folder_layout.scan`) and sets the class count, drops the
test split when the folder has no test clips and picks the input length
(``config.data.audio_length`` 0: the longest training clip). :func:`prepare` runs after
the checks: on first use it computes the fbank statistics of the training split
(:mod:`aum_jax.data.pipeline.norm_stats`) and writes them, with the classes and the input length, to
``WORKDIR/folder_data.json``, and the class names to ``WORKDIR/labels.csv``; the config's data
then points at both, so the model directory written by training carries them. A later run in
the same workdir reuses the record (a resumed run normalises as it began) and refuses a
folder whose classes have changed.
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import ml_collections
from absl import logging
from tqdm import tqdm

from aum_jax.core import storage
from aum_jax.core import workdir as workdir_lib
from aum_jax.data.features import audio, kaldi
from aum_jax.data.records import AudioSource
from aum_jax.data.sources import folder_layout
from aum_jax.data.sources.base import DataNotFoundError

LABELS_FILE = "labels.csv"
RECORD_FILE = "folder_data.json"
def configure(config: ml_collections.ConfigDict, workdir: Path) -> folder_layout.FolderLayout:
    """Scans ``config.data.folder.root`` and sets what follows from it in ``config`` (see the module docstring).

    Raises:
      DataNotFoundError: the folder does not exist.
      FolderError: no folder given, a folder that cannot serve (see :func:`aum_jax.data.sources.folder_layout.scan`), or
        one whose classes differ from those the workdir was trained on.
    """
    data = config.data
    if not data.folder.root:
        raise folder_layout.FolderError("config.data.folder.root is empty: pass --config.data.folder.root=PATH, a "
                                        "folder of PATH/<class name>/<clip>.wav")
    try:
        layout = folder_layout.scan(data.folder.root, data.folder.fractions, data.folder.extensions,
                                    classes_required=data.folder.classes_required)
    except FileNotFoundError as e:
        raise DataNotFoundError(f"{e} (config.data.folder.root)") from e
    record = storage.read_json(workdir / RECORD_FILE)
    if record is not None and record["classes"] != list(layout.class_names):
        raise folder_layout.FolderError(
            f"{layout.root} has the classes {', '.join(layout.class_names)}, but {workdir} was trained on "
            f"{', '.join(record['classes'])}: use another --workdir")
    data.num_classes = len(layout.class_names)
    data.label_csv = str(workdir / LABELS_FILE)
    if not layout.clips["test"] and config.eval.test_split:
        logging.warning("%s has no test clips: only the validation split is evaluated", layout.root)
        config.eval.test_split = ""
    if data.audio_length <= 0:
        data.audio_length = record["audio_length"] if record else _longest_clip_frames(config, layout)
    if record is not None:
        data.mean, data.std = record["mean"], record["std"]
    return layout


def _longest_clip_frames(config: ml_collections.ConfigDict, layout: folder_layout.FolderLayout) -> int:
    """Frames of the longest readable training clip, at least one patch and at most
    ``data.folder.max_audio_length``, in whole time strides of the patch grid."""
    data = config.data
    longest = 0.0
    for path, _ in tqdm(layout.clips["train"], desc="clip lengths", unit="clip", leave=False):
        try:
            with audio.open_audio(path) as f:
                longest = max(longest, f.num_samples / f.sample_rate)
        except audio.AudioLoadError:
            continue  # a bad clip: the input pipeline counts it.
    if data.feature == "epic_logmel":
        frames = 1 + int(longest * 1000 / data.epic_hop_ms)
    else:
        frames = 1 + int((longest * 1000 - kaldi.FRAME_LENGTH_MS) // data.frame_shift_ms)
    patch, stride = config.model.patch_size[1], config.model.strides[1]
    frames = patch + math.ceil(max(0, min(frames, data.folder.max_audio_length) - patch) / stride) * stride
    if frames > max(patch, data.folder.max_audio_length):
        frames -= stride
    logging.info("audio_length %d frames: the longest training clip is %.2f s", frames, longest)
    return frames


def _write(path: Path, text: str) -> None:
    """Replaces ``path`` with ``text`` atomically (:func:`aum_jax.core.storage.write_text`; process 0 only)."""
    if jax.process_index() == 0:
        storage.write_text(path, text)


def prepare(config: ml_collections.ConfigDict, workdir: Path, layout: folder_layout.FolderLayout,
            train: AudioSource, statistics: Callable[..., Any]) -> None:
    """On first use, the statistics of ``train`` (the layout's training clips) and the record; the label CSV;
    ``config.data`` set to them. ``statistics`` is :func:`aum_jax.data.pipeline.norm_stats.fbank_statistics`.

    Raises:
      BadInputError: too many training clips cannot be read.
      WorkdirNotWritableError: the workdir cannot be written.
    """
    data = config.data
    record = storage.read_json(workdir / RECORD_FILE)
    if record is None:
        stats = statistics(data, "train", data.folder.stats_batch_size, source=train)
        record = {"folder": str(layout.root), "classes": list(layout.class_names),
                  "clips": {split: len(clips) for split, clips in layout.clips.items()},
                  "split_folders": layout.split_folders, "audio_length": data.audio_length,
                  "sample_rate": data.sample_rate, "num_mel_bins": data.num_mel_bins, "mean": stats.mean,
                  "std": stats.std, "unreadable_train_clips": sorted(stats.bad_inputs)}
        logging.info("Fbank statistics of the %d training clips: mean %.6f, std %.6f", len(train), stats.mean, stats.std)
    labels = io.StringIO()
    csv.writer(labels, lineterminator="\n").writerows(
        [("index", "mid", "display_name"), *((i, name, name) for i, name in enumerate(layout.class_names))])
    labels = labels.getvalue()
    try:
        if not (workdir / RECORD_FILE).is_file():
            _write(workdir / RECORD_FILE, json.dumps(record, indent=1))
        if not (workdir / LABELS_FILE).is_file() or (workdir / LABELS_FILE).read_text(encoding="utf-8") != labels:
            _write(workdir / LABELS_FILE, labels)
    except OSError as e:
        raise workdir_lib.WorkdirNotWritableError(f"cannot write the folder's record in {workdir}: {e}") from e
    data.mean, data.std = record["mean"], record["std"]
