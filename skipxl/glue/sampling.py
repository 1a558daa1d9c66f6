"""Few-shot training sets: a stratified sample of ``n`` training examples from a recorded seed.

SPARTAN's few-shot setting trains on 200 examples. A plain random draw of 200 from an
unbalanced task can shift the class balance noticeably; the stratified draw keeps each class's
share of the full training set: class ``c`` gets ``floor(n p_c)`` examples, and the remaining
slots go to the classes with the largest remainders (Hamilton's method, ties to the lower class
id). Within a class, examples are drawn without replacement by a ``numpy`` generator seeded with
``seed`` (recorded in the run's ``meta.json`` and ``result.json``). Regression tasks (STS-B) are
sampled uniformly. The sample keeps the file order, so only ``seed`` decides it.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from skipxl.errors import SkipxlError


def class_quota(counts: Sequence[int], n: int) -> list[int]:
    """Examples per class summing to ``n``, proportional to ``counts`` (largest remainders)."""
    total = sum(counts)
    exact = [n * c / total for c in counts]
    quota = [int(x) for x in exact]
    order = sorted(range(len(counts)), key=lambda i: (-(exact[i] - quota[i]), i))
    for i in order[: n - sum(quota)]:
        quota[i] += 1
    return quota


def stratified_indices(labels: Sequence[int | float], n: int, seed: int, regression: bool) -> list[int]:
    """Indices (sorted) of a stratified sample of ``n`` of ``labels``; same seed, same sample."""
    if n > len(labels):
        raise SkipxlError(
            f"--train_samples {n} exceeds the {len(labels)} training examples; pass a smaller number"
        )
    rng = np.random.default_rng(seed)
    if regression:
        return sorted(rng.choice(len(labels), size=n, replace=False).tolist())
    classes = sorted({int(y) for y in labels})
    members = [[i for i, y in enumerate(labels) if int(y) == c] for c in classes]
    chosen: list[int] = []
    for idx, k in zip(members, class_quota([len(m) for m in members], n), strict=True):
        chosen += rng.choice(np.asarray(idx), size=k, replace=False).tolist()
    return sorted(chosen)
