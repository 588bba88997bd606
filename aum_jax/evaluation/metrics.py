"""Evaluation metrics of the original AuM recipes.

The original (``src/utilities/stats.py``) reports, per class, scikit-learn's
``average_precision_score`` and ``roc_auc_score``, then their means (mAP, mean AUC),
``d' = sqrt(2) * Phi^-1(mean AUC)`` and the top-1 accuracy of ``argmax(scores)``
against ``argmax(labels)``; these compute the same with scikit-learn.

A class with no positive (or, for AUC, no negative) among the evaluated rows has an
undefined score: it is NaN per class and left out of the means (scikit-learn would warn
or raise instead).
"""

from __future__ import annotations

import numpy as np
from scipy import stats
from sklearn import metrics as sk_metrics


def average_precision(labels: np.ndarray, scores: np.ndarray) -> float:
    """Average precision of one class.

    Args:
      labels: ``(N,)`` targets; values > 0.5 count as positive (mixup labels allowed).
      scores: ``(N,)`` scores, higher means more likely positive.

    Returns:
      ``sum_n (R_n - R_{n-1}) P_n`` over the distinct score thresholds, or NaN
      without positives.
    """
    positive = np.asarray(labels) > 0.5
    if not positive.any():
        return float("nan")
    return float(sk_metrics.average_precision_score(positive, np.asarray(scores, dtype=np.float64)))


def roc_auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC curve of one class (NaN unless both classes occur).

    Args:
      labels: ``(N,)`` targets; values > 0.5 count as positive.
      scores: ``(N,)`` scores; tied scores count one half.
    """
    positive = np.asarray(labels) > 0.5
    if positive.all() or not positive.any():
        return float("nan")
    return float(sk_metrics.roc_auc_score(positive, np.asarray(scores, dtype=np.float64)))


def d_prime(auc: float) -> float:
    """Sensitivity index of an AUC: ``sqrt(2) * Phi^-1(auc)``."""
    return float(np.sqrt(2.0) * stats.norm.ppf(auc))


def accuracy(labels: np.ndarray, scores: np.ndarray) -> float:
    """Top-1 accuracy: ``argmax(scores) == argmax(labels)`` over ``(N, C)`` arrays."""
    return float(np.mean(np.argmax(scores, axis=1) == np.argmax(labels, axis=1)))


def classification_metrics(labels: np.ndarray, scores: np.ndarray) -> dict[str, float]:
    """The original's summary statistics.

    Args:
      labels: ``(N, C)`` targets (one-hot, multi-hot or mixed).
      scores: ``(N, C)`` scores (the original uses sigmoid outputs; any monotone map of
        the logits gives the same values).

    Returns:
      ``{"mAP", "mAUC", "d_prime", "accuracy"}``; means skip undefined classes.
    """
    labels = np.asarray(labels)
    scores = np.asarray(scores)
    if labels.shape != scores.shape or labels.ndim != 2:
        raise ValueError(f"labels {labels.shape} and scores {scores.shape} must be equal (N, C)")
    if len(labels) == 0:
        raise ValueError("no examples to evaluate")
    aps = np.array([average_precision(labels[:, k], scores[:, k]) for k in range(labels.shape[1])])
    aucs = np.array([roc_auc(labels[:, k], scores[:, k]) for k in range(labels.shape[1])])
    mean_ap = float(np.nanmean(aps)) if np.isfinite(aps).any() else float("nan")
    mean_auc = float(np.nanmean(aucs)) if np.isfinite(aucs).any() else float("nan")
    return {
        "mAP": mean_ap,
        "mAUC": mean_auc,
        "d_prime": d_prime(mean_auc),
        "accuracy": accuracy(labels, scores),
    }
