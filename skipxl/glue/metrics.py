"""GLUE metrics with scikit-learn and scipy (no hub-loaded metric scripts).

Per task (Wang et al. 2019, GLUE): CoLA Matthews correlation; SST-2, MNLI (matched and
mismatched), QNLI, RTE, WNLI accuracy; MRPC and QQP F1 of the positive class and accuracy;
STS-B Pearson and Spearman correlation. The *primary* metric (the first one GLUE lists) is
what the seed-sweep report summarises by default.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from skipxl.errors import SkipxlError
from skipxl.glue.tasks import TaskSpec, get_task


def accuracy(predictions: Sequence[int], labels: Sequence[int]) -> float:
    """Fraction of exact matches."""
    from sklearn.metrics import accuracy_score

    return float(accuracy_score(labels, predictions))


def f1_binary(predictions: Sequence[int], labels: Sequence[int]) -> float:
    """F1 of class 1 (paraphrase / duplicate), as GLUE reports for MRPC and QQP."""
    from sklearn.metrics import f1_score

    return float(f1_score(labels, predictions, pos_label=1, average="binary", zero_division=0))


def mcc(predictions: Sequence[int], labels: Sequence[int]) -> float:
    """Matthews correlation coefficient (0 when a confusion-matrix margin is empty)."""
    from sklearn.metrics import matthews_corrcoef

    return float(matthews_corrcoef(labels, predictions))


def pearson(predictions: Sequence[float], labels: Sequence[float]) -> float:
    """Pearson correlation (NaN when either side is constant)."""
    from scipy.stats import pearsonr

    p, y = np.asarray(predictions, dtype=np.float64), np.asarray(labels, dtype=np.float64)
    if p.std() == 0 or y.std() == 0:
        return math.nan
    return float(pearsonr(p, y)[0])


def spearman(predictions: Sequence[float], labels: Sequence[float]) -> float:
    """Spearman rank correlation (ties get average ranks; NaN when either side is constant)."""
    from scipy.stats import spearmanr

    p, y = np.asarray(predictions, dtype=np.float64), np.asarray(labels, dtype=np.float64)
    if p.std() == 0 or y.std() == 0:
        return math.nan
    return float(spearmanr(p, y)[0])


METRIC_FUNCTIONS = {
    "accuracy": accuracy,
    "f1": f1_binary,
    "mcc": mcc,
    "pearson": pearson,
    "spearman": spearman,
}


def compute_metrics(
    task: TaskSpec | str, predictions: Sequence[int | float], labels: Sequence[int | float], suffix: str = ""
) -> dict[str, float]:
    """All of a task's metrics on one eval split; names get ``suffix`` (MNLI mismatched: ``_mm``)."""
    spec = get_task(task) if isinstance(task, str) else task
    if len(predictions) != len(labels):
        raise SkipxlError(f"{len(predictions)} predictions for {len(labels)} labels; they must match")
    if len(labels) == 0:
        raise SkipxlError(f"no examples to score for {spec.name}; the eval split is empty")
    return {f"{name}{suffix}": METRIC_FUNCTIONS[name](predictions, labels) for name in spec.metrics}


def metric_names(task: TaskSpec | str) -> tuple[str, ...]:
    """Every metric name a run of ``task`` records (with split suffixes), primary first."""
    spec = get_task(task) if isinstance(task, str) else task
    return tuple(f"{m}{suffix}" for _, suffix in spec.eval_splits for m in spec.metrics)


def primary_metric(task: TaskSpec | str) -> str:
    """The metric a report summarises by default."""
    spec = get_task(task) if isinstance(task, str) else task
    return spec.primary
