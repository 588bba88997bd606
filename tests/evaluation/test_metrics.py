"""Metrics against hand-computed values and the values of an exact re-implementation (scikit-learn's definitions)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from aum_jax.evaluation import metrics
from aum_jax.evaluation.losses import label_loss


def test_average_precision_by_hand() -> None:
    # Ranked: + - + -  ->  P@1 = 1 (R .5), P@3 = 2/3 (R 1): AP = .5 * 1 + .5 * 2/3.
    labels, scores = np.array([1, 0, 1, 0]), np.array([0.9, 0.8, 0.7, 0.1])
    assert metrics.average_precision(labels, scores) == pytest.approx(0.5 + 0.5 * 2 / 3)


def test_average_precision_ties_form_one_threshold() -> None:
    # Thresholds .8 (P 1, R .5), .5 (2 of 3, R 1), .2: AP = .5 + .5 * 2/3.
    labels, scores = np.array([1, 1, 0, 0]), np.array([0.8, 0.5, 0.5, 0.2])
    assert metrics.average_precision(labels, scores) == pytest.approx(0.5 + 0.5 * 2 / 3)
    assert metrics.average_precision(np.array([1, 0]), np.array([0.5, 0.5])) == pytest.approx(0.5)


def test_auc_by_hand() -> None:
    labels, scores = np.array([1, 0, 1, 0]), np.array([0.9, 0.8, 0.7, 0.1])
    assert metrics.roc_auc(labels, scores) == pytest.approx(3 / 4)  # 3 of 4 pairs ordered.
    tied = np.array([0.8, 0.5, 0.5, 0.2])
    assert metrics.roc_auc(np.array([1, 1, 0, 0]), tied) == pytest.approx(3.5 / 4)  # a tie counts 1/2.
    assert metrics.roc_auc(np.array([1, 1, 0]), np.array([0.3, 0.2, 0.9])) == 0.0


def test_auc_matches_mann_whitney() -> None:
    rng = np.random.default_rng(0)
    labels = rng.random(200) < 0.3
    scores = np.round(rng.normal(size=200) + labels, 1)  # rounded: many ties.
    u = stats.mannwhitneyu(scores[labels], scores[~labels]).statistic
    assert metrics.roc_auc(labels, scores) == pytest.approx(u / (labels.sum() * (~labels).sum()))


def test_d_prime() -> None:
    assert metrics.d_prime(0.5) == pytest.approx(0.0)
    assert metrics.d_prime(stats.norm.cdf(1 / math.sqrt(2))) == pytest.approx(1.0)


def test_undefined_classes_are_left_out() -> None:
    labels = np.array([[1, 0, 0], [0, 1, 0], [1, 0, 0], [0, 1, 0]], np.float32)
    scores = np.array([[0.9, 0.1, 0.3], [0.8, 0.7, 0.2], [0.6, 0.2, 0.1], [0.1, 0.9, 0.0]])
    assert np.isnan(metrics.average_precision(labels[:, 2], scores[:, 2]))
    assert np.isnan(metrics.roc_auc(labels[:, 2], scores[:, 2]))
    result = metrics.classification_metrics(labels, scores)
    ap0 = metrics.average_precision(labels[:, 0], scores[:, 0])  # ranks + - + -: 0.8333.
    assert ap0 == pytest.approx(0.5 + 0.5 * 2 / 3)
    assert result["mAP"] == pytest.approx((ap0 + 1.0) / 2)
    assert result["mAUC"] == pytest.approx((0.75 + 1.0) / 2)
    assert result["d_prime"] == pytest.approx(metrics.d_prime(0.875))
    assert result["accuracy"] == pytest.approx(3 / 4)  # row 1 predicts class 0.


def test_metrics_keep_the_values_of_the_exact_reimplementation() -> None:
    # Tie-aware step-wise AP and Mann-Whitney AUC, computed by a NumPy re-implementation on this data.
    rng = np.random.default_rng(7)
    labels = (rng.random((300, 6)) < 0.3).astype(np.float32)
    scores = np.round(rng.normal(size=(300, 6)) + labels, 1)  # rounded: many ties.
    labels[:, 5] = 0  # no positive: NaN, left out of the means.
    aps = [0.5980906546113325, 0.5984335177560309, 0.6445068590714726, 0.6136322987630374, 0.5941201882407783]
    aucs = [0.8019939965694682, 0.7652910052910052, 0.7775262450868202, 0.7563754180602007, 0.7545803032865438]
    for k in range(5):
        assert metrics.average_precision(labels[:, k], scores[:, k]) == pytest.approx(aps[k], abs=1e-12)
        assert metrics.roc_auc(labels[:, k], scores[:, k]) == pytest.approx(aucs[k], abs=1e-12)
    result = metrics.classification_metrics(labels, scores)
    assert result["mAP"] == pytest.approx(0.6097567036885303, abs=1e-12)
    assert result["mAUC"] == pytest.approx(0.7711533936588076, abs=1e-12)
    assert result["d_prime"] == pytest.approx(1.0502666266326237, abs=1e-10)
    assert np.isnan(metrics.roc_auc(np.ones(4), np.arange(4.0)))  # no negative.


def test_mixup_labels_count_as_positive_above_half() -> None:
    labels = np.array([0.6, 0.4, 0.0])
    assert metrics.roc_auc(labels, np.array([0.9, 0.5, 0.1])) == 1.0


@pytest.mark.parametrize("loss", ["BCE", "CE"])
def test_loss_matches_the_original_torch_losses(loss: str) -> None:
    import torch

    rng = np.random.default_rng(1)
    logits = rng.normal(size=(6, 5)).astype(np.float32)
    labels = np.eye(5, dtype=np.float32)[rng.integers(5, size=6)]
    if loss == "BCE":
        want = torch.nn.BCEWithLogitsLoss()(torch.tensor(logits), torch.tensor(labels))
    else:
        want = torch.nn.CrossEntropyLoss()(torch.tensor(logits), torch.tensor(labels.argmax(1)))
    assert float(label_loss(logits, labels, loss)) == pytest.approx(float(want), rel=1e-5)


@pytest.mark.parametrize("loss", ["BCE", "CE"])
def test_every_reported_metric_has_a_direction(loss: str) -> None:
    from aum_jax.evaluation import evaluate

    labels = np.eye(3, dtype=np.float32)[[0, 1, 2, 0]]
    result = evaluate.split_metrics(evaluate.Outputs(logits=labels * 2 - 1, labels=labels), loss)
    assert set(result) - {"num_examples"} == set(evaluate.METRIC_DIRECTIONS)


def test_a_lower_loss_and_a_higher_accuracy_are_better() -> None:
    from aum_jax.evaluation.evaluate import is_better

    assert is_better("loss", 0.4, 0.7) and not is_better("loss", 0.7, 0.4) and not is_better("loss", 0.4, 0.4)
    assert is_better("accuracy", 0.9, 0.5) and not is_better("accuracy", 0.5, 0.9)
    assert is_better("mAP", 0.1, None) and is_better("d_prime", 1.0, float("nan"))  # undefined: any value beats it.
    assert not is_better("mAP", float("nan"), 0.1) and not is_better("loss", None, 0.7)
