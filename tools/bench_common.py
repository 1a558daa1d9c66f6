"""Helpers shared by the benchmark scripts in ``tools/`` (imported as a sibling module)."""

from __future__ import annotations


def zipf_tokens(n_token: int, length: int, seed: int = 0):
    """Token ids with a Zipf-like frequency profile (the adaptive softmax's head gets most tokens)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    ranks = np.floor(np.exp(rng.uniform(0.0, np.log(n_token), size=length))) - 1
    return ranks.astype(np.int64).clip(0, n_token - 1)
