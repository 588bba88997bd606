"""The data a run reads, fixed once: the loaded config stays as loaded, the run gets a derived,
read-only one.

:func:`prepare` copies the loaded config and sets in the copy what follows from the data: the
source kind's derived values (a folder's class count, label CSV, input length and statistics,
:mod:`aum_jax.data.sources.folder_setup`) and the generated demo dataset's paths
(:mod:`aum_jax.data.demo.demo_data`, when ``config.demo.generate``). The values it derives are
kept where they were made (``WORKDIR/folder_data.json``, the demo cache), so a later run derives
the same ones.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Callable
from pathlib import Path

import jax
import ml_collections
from absl import logging

from aum_jax.checkpoints import model_files
from aum_jax.configs import data as data_configs
from aum_jax.data.demo import demo_data, stream_data
from aum_jax.data.features import preprocessing
from aum_jax.data.pipeline import norm_stats
from aum_jax.data.sources import registry
from aum_jax.data.sources.base import DataNotFoundError
from aum_jax.training import config_checks


def adopt_model_dir(config: ml_collections.ConfigDict, checkpoint: str) -> None:
    """With ``checkpoint`` an aum-jax model directory (or training workdir): its model and input features
    set in ``config`` (a ``.pth`` leaves ``config.model`` to say what to build).

    Raises:
      ModelDirectoryError: a model directory whose files cannot be read.
    """
    directory = model_files.model_directory(os.path.expanduser(checkpoint))
    if not (directory / model_files.CONFIG_FILE).is_file():
        return  # a .pth source: config.model says what to build.
    try:
        source = model_files.load_config(directory)
        prep = model_files.load_preprocessing(directory)
    except ValueError as e:
        raise model_files.ModelDirectoryError(f"config.init.checkpoint={checkpoint}: {e}") from e
    for name in source.architecture_fields():  # the rest: classes, input length, dropout, execution.
        config.model[name] = getattr(source, name)
    if prep is not None:
        for name in preprocessing.FEATURE_FIELDS:
            config.data[name] = getattr(prep, name)
    else:
        config.data.num_mel_bins = source.num_mel_bins
    if config.data.audio_length <= 0:
        config.data.audio_length = source.audio_length
    config.init.checkpoint = str(directory)
    logging.info("Fine-tuning %s: a %s %s of depth %d on %d mel bins", directory, source.size_name, source.aum_type,
                 source.depth, config.data.num_mel_bins)


def _point_at_demo_data(config: ml_collections.ConfigDict) -> None:
    """Generates (or reuses) the eSpeak demo dataset of ``config.demo`` (its clips, or for
    ``kind="stretches"`` the one-pass demo's stretches and the haystack's needles) and points
    ``config.data`` (and ``config.eval.haystack_clips``) at it."""
    demo = config.demo
    if demo.get("kind") == "stretches":
        _point_at_stream_demo_data(config)
        return
    dataset = demo_data.generate_demo_dataset(
        os.path.expanduser(demo.cache_dir) if demo.cache_dir else demo_data.default_cache_dir(),
        seed=demo.seed,
        clips_per_word=demo.clips_per_word,
        valid_clips_per_word=demo.valid_clips_per_word,
        eval_clips_per_word=demo.eval_clips_per_word,
        synth_clips_per_word=demo.synth_clips_per_word,
        recipe=demo_data.Recipe.from_config(demo),
        show_progress=jax.process_index() == 0,
    )
    config.data.train_datafile = str(dataset.train_json)
    config.data.validation_datafile = str(dataset.valid_json or dataset.eval_json)
    config.data.test_datafile = str(dataset.eval_json)
    synth = demo_data.SYNTH_TEST_SPLIT
    if dataset.synth_json:
        config.data[f"{synth}_datafile"] = str(dataset.synth_json)
    else:  # no held-out synthesizer: no test_synth split to evaluate.
        config.eval.extra_test_splits = tuple(s for s in config.eval.extra_test_splits if s != synth)
    config.data.label_csv = str(dataset.label_csv)


def _point_at_stream_demo_data(config: ml_collections.ConfigDict) -> None:
    demo = config.demo
    cache = os.path.expanduser(demo.cache_dir) if demo.cache_dir else demo_data.default_cache_dir()
    show = jax.process_index() == 0
    dataset = stream_data.generate_stream_dataset(
        cache, seed=demo.seed, stretches={"train": demo.train_stretches, "valid": demo.valid_stretches,
                                          "eval": demo.eval_stretches},
        seconds=demo.stretch_seconds, max_words=demo.max_words, show_progress=show)
    splits = {"train": "train", "validation": "valid" if demo.valid_stretches else "eval", "test": "eval"}
    for split, part in splits.items():
        config.data[f"{split}_datafile"] = str(dataset.datafiles[part])
        config.data[f"{split}_events"] = str(dataset.events[part])
    config.data.label_csv = str(dataset.label_csv)
    if config.eval.haystack_seconds:
        config.eval.haystack_clips = str(stream_data.needles(cache, seed=demo.seed, clips_per_word=demo.needles_per_word,
                                                             show_progress=show))


def prepare(config: ml_collections.ConfigDict, workdir: Path, *, training: bool,
            check: Callable[[ml_collections.ConfigDict], None]) -> ml_collections.FrozenConfigDict:
    """The run's config: ``config`` with the values its data fixes, read-only; ``config`` is not changed.

    In order: the model and features of an adopted model directory (``config.init.adopt_model_dir``),
    the source kind's values that follow from the data (nothing written), ``check`` of
    the derived config (before anything is written), the demo dataset and the kind's first-use
    files, and the check that every file the run reads exists (the splits of training when
    ``training``, and ``config.eval``'s).

    Raises:
      DataNotFoundError: a file the run reads does not exist; the message says how to make it.
      Exception: what ``check`` and the kind raise (e.g. :mod:`aum_jax.data.sources.folder_setup`'s errors).
    """
    derived = copy.deepcopy(config)
    if derived.init.checkpoint and derived.init.get("adopt_model_dir"):
        adopt_model_dir(derived, derived.init.checkpoint)
    kind = registry.kind_of(derived.data)
    configured = kind.configure(derived, workdir)
    check(derived)
    if derived.get("demo") and derived.demo.generate:
        _point_at_demo_data(derived)
    kind.prepare(derived, workdir, configured, norm_stats.fbank_statistics)
    splits = (["train"] if training else []) + config_checks.evaluated_splits(derived)
    registry.check_files(derived.data, splits, data_configs.prep_step(derived.data.name))
    if training and derived.eval.get("haystack_seconds"):
        _check_needles(derived.eval.haystack_clips)
    return ml_collections.FrozenConfigDict(derived)


def _check_needles(folder: str) -> None:
    """Raises :class:`DataNotFoundError` unless ``folder`` (``config.eval.haystack_clips``) holds needle clips."""
    root = Path(folder).expanduser()
    for name in ("eval.json", "class_labels_indices.csv"):
        if not (root / name).is_file():
            raise DataNotFoundError(f"{root / name} does not exist: config.eval.haystack_clips must be a folder of "
                                    "needle clips in the demo dataset's layout (eval.json, class_labels_indices.csv)")
