"""A distilled run set up before it writes anything (``config.train.objective="distill"``): the teacher or its stored
logits read and checked against the student, and what the run's ``model/`` records of them.

Distillation is the objective ``config.train.objective="distill"``
(:func:`aum_jax.training.distillation.objective`), from ``config.distill.teacher`` (an online teacher)
or ``config.distill.logits`` (stored logits, ``scripts/teacher_logits.py``). Training clips without labels
(``config.data.label_fraction < 1``, or a datafile entry with empty ``labels``) train on the
teacher's targets alone: without distillation, the clips the fraction leaves unlabelled are not
trained on, and clips the source itself holds without labels are a config error.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

import jax
import ml_collections
from absl import logging
from flax import nnx

from aum_jax.checkpoints import model_checks, model_files
from aum_jax.core import logs, sharding
from aum_jax.data import teacher_logits
from aum_jax.data.features import preprocessing
from aum_jax.data.features.preprocessing import Preprocessing
from aum_jax.data.records import AudioSource
from aum_jax.data.sources import labels, record_views
from aum_jax.training import distillation
from aum_jax.training.config_checks import ConfigError

RECORD_FILE = "distillation.json"  # in the run's model/: what it was distilled from.
# The features an online teacher shares with the student for its input to be the student's batch
# (re-normalised to its statistics); a teacher that differs in one gets its own input from each waveform.
SHARED_FEATURES = (*preprocessing.FEATURE_FIELDS, *preprocessing.LENGTH_FIELDS, "skip_norm")


@dataclasses.dataclass(frozen=True)
class Setup:
    """A distilled run's teacher side.

    Attributes:
      source: the training clips (carrying their stored targets when the run reads logits).
      teacher_dir: the online teacher's model directory, or None (stored logits).
      teacher_preprocessing: the online teacher's features where they differ from the student's
        (the input pipeline then computes its input from each clip's waveform), else None.
      teacher_dtype: the online teacher's compute dtype.
      verify: check the teacher's parameters against its checksums.json when it is loaded.
      input_scale, input_shift: the online teacher's input from the student's normalised fbank
        (:class:`aum_jax.training.distillation.Teacher`).
      record: what ``model/distillation.json`` and the report say of the teacher.
    """

    source: AudioSource
    teacher_dir: Path | None
    teacher_preprocessing: Preprocessing | None
    teacher_dtype: str
    verify: bool
    input_scale: float
    input_shift: float
    record: dict[str, Any]


def is_on(config: ml_collections.ConfigDict) -> bool:
    """Whether ``config`` distils: its objective is "distill"."""
    return config.train.objective == "distill"


def setup(config: ml_collections.ConfigDict, source: AudioSource) -> Setup | None:
    """The teacher side of ``config``'s run on the training clips ``source``; None without distillation.

    Raises:
      ConfigError: a setting out of range; a teacher or
        logits folder that cannot be read, or whose classes or input features do not fit the
        student (each naming the key and the path).
    """
    d = config.distill
    if not is_on(config):
        if d.teacher or d.logits:
            raise ConfigError(f"config.distill.{'teacher' if d.teacher else 'logits'} is set, but "
                              f"config.train.objective={config.train.objective!r}: distil with "
                              "config.train.objective=distill")
        return None
    if d.teacher and d.logits:
        raise ConfigError("config.distill.teacher and config.distill.logits are both set; choose one")
    if not (d.teacher or d.logits):
        raise ConfigError("config.train.objective=distill needs config.distill.teacher (a model directory) or "
                          "config.distill.logits (stored logits, scripts/teacher_logits.py)")
    settings = distillation.step_settings(config, None)  # checked by config_checks before.
    student = labels.training_preprocessing(config)
    common = {"weight": settings.weight, "temperature": settings.temperature, "loss": settings.loss}
    if d.teacher:
        return _online(config, source, student, common)
    return _stored(config, source, student, common)


def _check_classes(what: str, num_classes: int, names: tuple[str, ...], config: ml_collections.ConfigDict,
                   student: Preprocessing) -> None:
    if num_classes != config.data.num_classes:
        raise ConfigError(f"{what} has {num_classes} classes, the student config.data.num_classes="
                          f"{config.data.num_classes}: distil from a teacher of the same classes")
    if names and student.class_names and tuple(names) != tuple(student.class_names):
        first = next(i for i, (a, b) in enumerate(zip(names, student.class_names, strict=True)) if a != b)
        raise ConfigError(f"{what} names its classes otherwise than the student's labels (class {first}: "
                          f"{names[first]!r} vs {student.class_names[first]!r})")


def _online(config: ml_collections.ConfigDict, source: AudioSource, student: Preprocessing,
            common: dict[str, Any]) -> Setup:
    d = config.distill
    what = f"config.distill.teacher={d.teacher}"
    try:
        directory = model_files.model_directory(os.path.expanduser(d.teacher))
        files = model_files.open_model_dir(directory, verify=config.init.verify)
    except (model_files.ModelDirectoryError, ValueError) as e:
        raise ConfigError(f"{what}: {e}") from e
    prep = files.preprocessing
    if prep is None or (not prep.skip_norm and (prep.mean is None or prep.std is None)):
        raise ConfigError(f"{what}: {directory} has no {model_files.PREPROCESSING_FILE} with its statistics, so "
                          "its input features are unknown")
    _check_classes(what, files.config.num_classes, prep.class_names, config, student)
    differ = [f"{k} {getattr(prep, k)} vs {getattr(student, k)}" for k in SHARED_FEATURES
              if getattr(prep, k) != getattr(student, k)]
    own_input = prep if differ else None  # its input made from each clip's waveform (the pipeline's teacher_input).
    if differ:
        logging.info("%s reads other features than the student (%s): its input is made from each waveform",
                     what, ", ".join(differ))
    scale, shift = (1.0, 0.0) if prep.skip_norm else (student.std / prep.std, (student.mean - prep.mean) / (2.0 * prep.std))
    record = {"teacher": str(directory), "teacher_checksums_sha256": model_checks.checksums_digest(directory), **common,
              "teacher_dtype": d.teacher_dtype}
    return Setup(source, directory, own_input, d.teacher_dtype, config.init.verify, scale, shift, record)


def _stored(config: ml_collections.ConfigDict, source: AudioSource, student: Preprocessing,
            common: dict[str, Any]) -> Setup:
    what = f"config.distill.logits={config.distill.logits}"
    try:
        stored = teacher_logits.StoredLogits(config.distill.logits)
    except ValueError as e:
        raise ConfigError(f"{what}: {e}") from e
    _check_classes(what, stored.num_classes, stored.class_names, config, student)
    kind = "softmax" if common["loss"] == "kl" else "sigmoid"
    try:
        source = record_views.with_teacher_targets(source, stored, config.distill.temperature, kind)
    except ValueError as e:
        raise ConfigError(f"{what}: {e}") from e
    record = {"logits": str(stored.folder), "teacher": stored.info.get("teacher"),
              "teacher_checksums_sha256": stored.info.get("teacher_checksums_sha256"), **common}
    return Setup(source, None, None, "float32", True, 1.0, 0.0, record)


def labelled_clips(config: ml_collections.ConfigDict, source: AudioSource) -> AudioSource:
    """The training clips of a run without distillation whose objective reads labels: those of ``source``
    that keep theirs under ``config.data.label_fraction`` (all of them at 1).

    Raises:
      ConfigError: clips that have no labels in the source itself (their count): they train only on a teacher.
    """
    if source.num_unlabelled > source.num_unlabelled_by_fraction:
        unlabelled = source.num_unlabelled - source.num_unlabelled_by_fraction
        raise ConfigError(f"{unlabelled} of the {len(source)} training clips have no labels (empty datafile labels "
                          "or a folder's unlabelled/); they train only on a teacher: config.train.objective=distill with "
                          "config.distill.teacher or config.distill.logits")
    if not source.num_unlabelled:
        return source
    kept = record_views.labelled_only(source)
    logs.line(f"config.data.label_fraction={config.data.label_fraction} without a teacher: training on the "
              f"{len(kept)} labelled of the {len(source)} clips")
    return kept


def load_teacher(setup: Setup, mesh: jax.sharding.Mesh) -> distillation.Teacher | None:
    """The online teacher, frozen in eval mode, its parameters replicated on ``mesh``, reading the
    student's batches (:class:`aum_jax.training.distillation.Teacher`); None for stored logits.

    Raises:
      ConfigError: parameters that cannot be read, are not finite or do not match their checksums (naming the key).
    """
    if setup.teacher_dir is None:
        return None
    try:
        teacher = model_files.load_model(setup.teacher_dir, verify=setup.verify, dtype=setup.teacher_dtype)
    except model_files.ModelDirectoryError as e:
        raise ConfigError(f"config.distill.teacher={setup.teacher_dir}: {e}") from e
    teacher.eval()
    nnx.update(teacher, sharding.replicate(nnx.state(teacher), mesh))
    return distillation.Teacher(teacher, setup.input_scale, setup.input_shift)
