"""GLUE metrics (skipxl.glue.metrics) against values computed by hand."""

from __future__ import annotations

import math

import pytest

from skipxl.errors import SkipxlError
from skipxl.glue.metrics import accuracy, compute_metrics, f1_binary, mcc, metric_names, pearson, spearman

PRED = [1, 1, 0, 0, 1]
GOLD = [1, 0, 0, 0, 1]  # TP 2, TN 2, FP 1, FN 0


def test_classification_metrics_by_hand() -> None:
    assert accuracy(PRED, GOLD) == pytest.approx(4 / 5)
    precision, recall = 2 / 3, 2 / 2
    assert f1_binary(PRED, GOLD) == pytest.approx(2 * precision * recall / (precision + recall))
    tp, tn, fp, fn = 2, 2, 1, 0
    expected = (tp * tn - fp * fn) / math.sqrt((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn))
    assert mcc(PRED, GOLD) == pytest.approx(expected)
    assert mcc([1, 1, 1, 1], [1, 0, 1, 0]) == 0.0  # constant prediction


def test_correlations_by_hand() -> None:
    x, y = [1.0, 2.0, 3.0, 4.0], [2.0, 4.0, 6.0, 9.0]
    dx = [v - 2.5 for v in x]
    dy = [v - 5.25 for v in y]
    r = sum(a * b for a, b in zip(dx, dy, strict=True)) / math.sqrt(
        sum(a * a for a in dx) * sum(b * b for b in dy)
    )
    assert pearson(x, y) == pytest.approx(r)
    # Spearman without ties: 1 - 6 sum d^2 / (n (n^2 - 1)), ranks differ by 1 at two places.
    assert spearman([1, 2, 3, 4], [1, 3, 2, 4]) == pytest.approx(1 - 6 * 2 / (4 * 15))
    # With ties: ranks [1.5, 1.5, 3, 4] against [1, 2, 3, 4].
    ranks = [1.5, 1.5, 3.0, 4.0]
    dr = [v - 2.5 for v in ranks]
    rho = sum(a * b for a, b in zip(dx, dr, strict=True)) / math.sqrt(
        sum(a * a for a in dx) * sum(b * b for b in dr)
    )
    assert spearman([1, 2, 3, 4], [1, 1, 2, 3]) == pytest.approx(rho)
    assert math.isnan(pearson([1.0, 1.0, 1.0], [1.0, 2.0, 3.0]))


def test_task_metric_sets_and_suffixes() -> None:
    assert set(compute_metrics("mrpc", PRED, GOLD)) == {"f1", "accuracy"}
    assert compute_metrics("cola", PRED, GOLD)["mcc"] == pytest.approx(mcc(PRED, GOLD))
    assert compute_metrics("mnli", [0, 1, 2], [0, 1, 1], suffix="_mm") == {
        "accuracy_mm": pytest.approx(2 / 3)
    }
    assert metric_names("mnli") == ("accuracy", "accuracy_mm")
    assert set(compute_metrics("stsb", [0.1, 2.0, 4.5], [0.0, 2.5, 5.0])) == {"pearson", "spearman"}
    with pytest.raises(SkipxlError, match="must match"):
        compute_metrics("rte", [0, 1], [0])
