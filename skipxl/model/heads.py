"""Stochastic cross-head attention as a pure head-index function.

Paper (arXiv 2311.08123, Sec. "Stochastic cross-head attention"): during training, with
probability ``beta`` a head's query attends to the keys and values of *another* head of
the same layer. It regularises the heads by making each query robust to reading a
neighbour's key/value space, and it costs no memory beyond one index tensor per layer.

The mixing is expressed as an index over the head axis, drawn once per layer and step:
``index[i] = j`` means "query head i reads the keys/values (and positional keys) of head
j". Applying it is a gather on the head dimension of K/V, so it composes with any
attention kernel (explicit einsum, SDPA, Hugging Face's attention functions).

Two modes:

* ``"permutation"`` (default, the paper's released code): with probability ``beta`` one
  uniformly random permutation of the heads is drawn for the layer; a head may map to
  itself. Otherwise the identity.
* ``"per_head"`` (the paper's prose): each head independently, with probability
  ``beta``, reads another head chosen uniformly among the *other* heads.

Randomness comes from an explicit ``torch.Generator`` so that it never touches the main
RNG stream (dropout): with ``beta = 0`` training is bitwise identical to the baseline,
and every data-parallel rank seeded alike draws the same indices.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from skipxl.errors import require

CROSS_HEAD_MODES = ("permutation", "per_head")


@dataclass(frozen=True)
class CrossHeadConfig:
    """Stochastic cross-head attention settings.

    Attributes:
        beta: probability of mixing (per layer and step in ``permutation`` mode, per head
            in ``per_head`` mode). The paper uses 0.1.
        mode: one of :data:`CROSS_HEAD_MODES`.
    """

    beta: float = 0.1
    mode: str = "permutation"

    def __post_init__(self) -> None:
        require(0.0 <= self.beta <= 1.0, f"cross-head beta must be in [0, 1], got {self.beta}")
        require(
            self.mode in CROSS_HEAD_MODES,
            f"cross-head mode {self.mode!r} is unknown; choose one of {CROSS_HEAD_MODES}",
        )


def identity_index(n_head: int) -> Tensor:
    """The head index that leaves every head reading itself: ``[0, 1, ..., H-1]``."""
    return torch.arange(n_head, dtype=torch.long)


def draw_head_index(n_head: int, cfg: CrossHeadConfig, generator: torch.Generator) -> Tensor:
    """Draw one layer's head index ``[H]`` (CPU, int64) for one training step.

    The number of random draws per call is fixed for a given (n_head, mode), so the
    generator's stream position does not depend on the outcome: two runs that differ
    only in ``beta`` stay aligned step by step.
    """
    require(n_head >= 1, f"n_head must be >= 1, got {n_head}")
    if cfg.mode == "permutation":
        coin = torch.rand((), generator=generator)
        perm = torch.randperm(n_head, generator=generator)
        return perm if bool(coin < cfg.beta) else identity_index(n_head)
    # per_head: each head flips its own coin and, if it mixes, reads one of the H-1 others.
    coins = torch.rand(n_head, generator=generator)  # [H]
    offsets = torch.randint(1, max(n_head, 2), (n_head,), generator=generator)  # [H] in [1, H-1]
    others = (identity_index(n_head) + offsets) % n_head  # [H], never equal to the head itself
    mix = (coins < cfg.beta) & (n_head > 1)
    return torch.where(mix, others, identity_index(n_head))


def draw_head_indices(n_layer: int, n_head: int, cfg: CrossHeadConfig, generator: torch.Generator) -> Tensor:
    """Draw the head indices of every layer for one step: ``[n_layer, H]`` (CPU, int64)."""
    return torch.stack([draw_head_index(n_head, cfg, generator) for _ in range(n_layer)])


def is_identity(index: Tensor) -> bool:
    """True when ``index`` maps every head to itself (checked on a CPU tensor)."""
    return bool(torch.equal(index.cpu(), identity_index(index.numel())))


def mix_heads(x: Tensor, index: Tensor | None, head_dim: int) -> Tensor:
    """Gather heads of ``x`` along ``head_dim``: output head i is input head ``index[i]``.

    ``None`` means identity and returns ``x`` itself (no copy, no saved tensor), so the
    baseline path allocates nothing extra.
    """
    if index is None:
        return x
    require(
        index.dim() == 1 and index.numel() == x.size(head_dim),
        f"head index of shape {tuple(index.shape)} does not match {x.size(head_dim)} heads",
    )
    return x.index_select(head_dim, index.to(x.device, non_blocking=True))
