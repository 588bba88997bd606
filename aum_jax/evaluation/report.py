"""What training and ``--mode=eval`` report: the JSON files, the results table and the confusion matrix.

The JSON of ``report.json``, ``best.json`` and ``eval_<split>.json`` (:func:`to_json`,
:func:`write_report`), the fixed-width results table (:func:`results_table`), the one-line
metrics of the console (:func:`format_metrics`), and the confusion matrix of a split, stored
(:func:`save_confusion`) and as text (:func:`confusion_text`). Only process 0 writes; the command
line prints the texts.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import jax
import ml_collections
import numpy as np
from absl import logging

from aum_jax.core import storage
from aum_jax.data.sources import labels
from aum_jax.evaluation import confusion
from aum_jax.evaluation.evaluate import Outputs

ALREADY_TRAINED = "already_trained"  # key of a training report: the workdir was finished before, nothing ran.


def to_json(report: dict[str, Any]) -> str:
    """Indented, standard JSON: non-finite metrics (e.g. d' of a perfect AUC) become null."""

    def clean(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: clean(v) for k, v in value.items()}
        if isinstance(value, float) and not np.isfinite(value):
            return None
        return value

    return json.dumps(clean(report), indent=1, sort_keys=True, allow_nan=False)


def write_report(path: str | os.PathLike, report: dict[str, Any]) -> None:
    """Replaces ``path`` with ``report`` as indented JSON, atomically (on process 0 only)."""
    if jax.process_index() != 0:
        return
    storage.write_text(path, to_json(report))
    logging.info("Wrote the evaluation report %s", path)


def format_metrics(values: Mapping[str, Any], keys: Sequence[str] = ("accuracy", "mAP", "mAUC", "loss")) -> str:
    """``accuracy 0.9250  mAP 0.9512 ...`` for the keys present."""
    return "  ".join(f"{k} {values[k]:.4f}" for k in keys if isinstance(values.get(k), (int, float)))


def results_table(rows: Sequence[tuple[str, Mapping[str, Any] | None]]) -> str:
    """A fixed-width table of metrics, one row per ``(name, metrics)``; None rows are left out.

    Args:
      rows: e.g. ``[("validation", {"step": 620, "accuracy": 0.93, ...}), ("test", {...})]``.
    """
    columns = ("step", "accuracy", "mAP", "mAUC", "d_prime", "loss", "num_examples")
    present = [c for c in columns if any(r and r.get(c) is not None for _, r in rows)]
    header = f"{'split':<12}" + "".join(f"{c:>13}" for c in present)
    lines = [header, "-" * len(header)]
    for name, metrics in rows:
        if not metrics:
            continue
        cells = []
        for c in present:
            value = metrics.get(c)
            if value is None:
                cells.append(f"{'-':>13}")
            elif c in ("step", "num_examples"):
                cells.append(f"{int(value):>13d}")
            else:
                cells.append(f"{float(value):>13.4f}")
        lines.append(f"{name:<12}" + "".join(cells))
    return "\n".join(lines)


def training_run_text(report: Mapping[str, Any], config: ml_collections.ConfigDict, workdir: Path,
                      report_file: Path, model_dir: Path) -> str:
    """What a training run shows at its end: that it was trained before, if so; the best model on
    ``config.eval.split`` (and ``test_split``, then a row per split of the report's ``extra_tests``) and where its
    files are (``report_file``, ``model_dir``); the confusion matrices stored in ``workdir`` for the test split
    (else validation), then each of ``config.eval.extra_test_splits``, with ``config.eval.confusion_matrix``."""
    parts = []
    if report.get(ALREADY_TRAINED):
        parts.append(f"{workdir} is already trained to step {report['step']}; its stored results follow "
                     "(--mode=eval evaluates again, a larger --config.train.num_steps trains on).")
    split, test_split = config.eval.split, config.eval.test_split
    if split:
        rows = [(split, report.get("best") or report.get("final"))]
        tests = [(test_split, report.get("test")), *(report.get("extra_tests") or {}).items()]
        best_step = (report.get("best") or {}).get("step")
        rows += [(name, {"step": best_step, **metrics}) for name, metrics in tests if metrics]
        parts.append(f"\nResults ({report_file}); best model by {config.train.metric} in {model_dir}:")
        parts.append(results_table(rows))
    else:  # nothing evaluated (a run without labels): the objective's last logged training values.
        parts.append(f"\nResults ({report_file}); the model of step {report['step']} in {model_dir}; "
                     f"objective {config.train.objective}, its last logged training values:")
        parts.append("  ".join(f"{k} {v:.4f}" for k, v in (report.get("train") or {}).items()))
    if report.get("distilled"):
        d = report["distilled"]
        parts.append(f"Distilled from {d.get('logits') or d.get('teacher')} (weight {d['weight']}, temperature "
                     f"{d['temperature']}, {d['loss']} loss).")
    if config.eval.confusion_matrix:
        parts.append(confusion_text(workdir, test_split or split))
        parts += [confusion_text(workdir, extra) for extra in config.eval.get("extra_test_splits", ())]
    if report.get("haystack"):
        parts.append(haystack_text(report["haystack"], config))
    return "\n".join(parts)


def haystack_text(rows: Sequence[Mapping[str, Any]], config: ml_collections.ConfigDict) -> str:
    """The haystack rows of a report (:meth:`aum_jax.training.train._Results.haystack`) as a table."""
    lines = [(f"\nA test keyword hidden in noise, {config.eval.haystack_placements} placements per length (seed "
              f"{config.eval.haystack_seed}), found by the best model:"),
             (f"{'haystack':>9} {'read as':>8} {'found':>6} {'peak found':>11} {'detected':>9} {'latency':>8} "
              f"{'false alarms/min':>17} {'wall/min':>9}")]
    lines.append("-" * len(lines[-1]))
    for r in rows:
        length = f"{r['seconds'] / 60:g} min" if r["seconds"] >= 60 else f"{r['seconds']:g} s"
        latency = "-" if r["latency_s"] is None else f"{r['latency_s']:.2f}s"
        lines.append(f"{length:>9} {r['mode']:>8} {r['found']:>5.0f}% {r['peak_found']:>10.0f}% {r['detected']:>8.0f}% "
                     f"{latency:>8} {r['false_alarms_per_min']:>17.2f} {r['wall_per_min_s']:>8.2f}s")
    return "\n".join(lines)


def save_confusion(outputs: Outputs, names: Sequence[str], workdir: Path, split: str) -> None:
    """Stores the confusion matrix of ``outputs`` as ``workdir/confusion_<split>.json`` and ``.png`` (process 0)."""
    if jax.process_index() != 0:
        return
    counts = confusion.confusion_matrix(outputs)
    confusion.save(counts, labels.class_names(names, len(counts)), workdir, split)


def confusion_text(workdir: Path, split: str) -> str:
    """The confusion matrix stored for ``split`` in ``workdir`` as a table, or a line saying there is none."""
    stored = confusion.load(workdir, split)
    if stored is None:
        return f"\nNo confusion matrix of {split} is stored in {workdir}; --mode=eval computes it."
    counts, names = stored
    return (f"\nConfusion matrix of the best model on {split} (rows: true, columns: predicted; "
            f"{workdir / f'confusion_{split}.png'}):\n" + confusion.format_table(counts, names))
