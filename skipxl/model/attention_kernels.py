"""The three attention kernels behind ``ModelConfig.attn_impl`` (same numbers, different speed).

Every kernel takes the projected heads of one Transformer-XL attention layer and returns the
attended values; the projections, cross-head mixing, output projection and LayerNorm stay in
:class:`~skipxl.model.attention.RelPartialLearnableAttention`. With ``s = 1/sqrt(d_head)``
the score of query ``i`` and key ``j`` is (Dai et al. 2019, Sec. 3.3)

    s * ((q_i + u) . k_j  +  (q_i + v) . r_{row(i, j)})

where ``row(i, j)`` is the position-table row of the pair: the rel-shift row
``T - 1 - i + j`` (contiguous ``relative``), ``pos_index[i, j]`` (gather path, a retained
Skip-Retain memory), or ``j`` (``segment_end``, rows already one per key).

* :func:`eager_attention` is the original algorithm and the reference: both score tensors,
  rel-shift (or gather), fp32 softmax, dropout on the probabilities, third einsum.
* :func:`sdpa_attention` hands the content product to
  ``torch.nn.functional.scaled_dot_product_attention`` (query ``q + u``) and adds the
  position term, already shifted/gathered and multiplied by ``s``, plus the mask (-inf) as
  a float bias: SDPA computes ``softmax(s * q.k^T + bias) V``, so ``s`` is applied once to
  each term. The kernels (CPU flash, CUDA memory-efficient) accumulate the softmax in fp32.
* :func:`flex_attention_rel` reads the position term inside ``score_mod`` from the
  *unshifted* ``[B, H, T, R]`` table ``(q + v) R^T`` by index arithmetic (no shifted copy)
  and the causal/``same_length`` mask as a block mask.

The fused kernels have no dropout on the probabilities (see ``ATTN_IMPLS`` in
:mod:`skipxl.model.config`); the config refuses ``dropatt > 0`` with them.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from skipxl.errors import require
from skipxl.model.functional import gather_last, rel_shift


def position_scores(
    q: Tensor, r_r_bias: Tensor, r_k: Tensor, pos_index: Tensor | None, positions: str
) -> Tensor:
    """The position term ``(q + v) . r`` aligned to keys: ``[B, H, T, K]`` (not yet scaled).

    Args:
        q: ``[B, T, H, Dh]``; r_r_bias: ``[H, Dh]``; r_k: ``[R, H, Dh]`` projected position rows.
        pos_index: ``[T, K]`` rows of the gather path, or ``None`` (rel-shift / one row per key).
        positions: ``"relative"`` or ``"segment_end"``.
    """
    bsz, qlen, h, _ = q.shape
    bd = torch.einsum("bihd,jhd->bhij", q + r_r_bias, r_k)  # [B, H, T, R] (K when selected)
    if pos_index is not None:
        return gather_last(bd, pos_index.expand(bsz, h, qlen, pos_index.size(-1)))  # [B, H, T, K]
    if positions == "relative":
        return rel_shift(bd)  # [B, H, T, K]: row of distance (M + i) - j
    return bd  # [B, H, T, K] segment_end: row j for key j


def eager_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    r_k: Tensor,
    r_w_bias: Tensor,
    r_r_bias: Tensor,
    attn_mask: Tensor,
    pos_index: Tensor | None,
    positions: str,
    scale: float,
    dropatt: Callable[[Tensor], Tensor],
) -> Tensor:
    """The reference: ``q [B, T, H, Dh]``, ``k, v [B, K, H, Dh]`` -> ``[B, T, H, Dh]``."""
    ac = torch.einsum("bihd,bjhd->bhij", q + r_w_bias, k)  # [B, H, T, K]
    bd = position_scores(q, r_r_bias, r_k, pos_index, positions)  # [B, H, T, K]
    score = ac.float().add_(bd.float()).mul_(scale)  # [B, H, T, K] fp32
    score = score.masked_fill(attn_mask, float("-inf"))  # [B, H, T, K]
    prob = torch.softmax(score, dim=-1).to(v.dtype)  # [B, H, T, K]
    prob = dropatt(prob)
    return torch.einsum("bhij,bjhd->bihd", prob, v)  # [B, T, H, Dh]


def sdpa_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    r_k: Tensor,
    r_w_bias: Tensor,
    r_r_bias: Tensor,
    attn_mask: Tensor,
    pos_index: Tensor | None,
    positions: str,
    scale: float,
) -> Tensor:
    """SDPA with the position term and the mask as an additive bias; shapes as :func:`eager_attention`.

    The bias is built in fp32 (``s * bd``, then -inf where masked) and handed over in the
    query's dtype, as SDPA requires; in fp32 this is the eager score up to the rounding of
    ``s*a + s*b`` against ``s*(a + b)``.
    """
    query = (q + r_w_bias).transpose(1, 2)  # [B, H, T, Dh]
    bias = position_scores(q, r_r_bias, r_k, pos_index, positions).float().mul_(scale)  # [B, H, T, K]
    bias = bias.masked_fill(attn_mask, float("-inf")).to(query.dtype)  # [B, H, T, K]
    out = F.scaled_dot_product_attention(
        query, k.transpose(1, 2), v.transpose(1, 2), attn_mask=bias, scale=scale
    )  # [B, H, T, Dh]
    return out.transpose(1, 2)  # [B, T, H, Dh]


# ----------------------------------------------------------------------------- FlexAttention


def _flex_ops() -> tuple[Callable, Callable]:
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention

    return flex_attention, create_block_mask


_COMPILED_FLEX: dict[str, Callable] = {}


def _flex_kernel(device: torch.device) -> Callable:
    """``flex_attention`` itself on the CPU (forward only; PyTorch runs its unfused reference
    there), ``torch.compile(flex_attention)`` on an accelerator (the fused Triton kernel)."""
    flex, _ = _flex_ops()
    if device.type == "cpu" or torch.compiler.is_compiling():
        return flex
    if device.type not in _COMPILED_FLEX:
        _COMPILED_FLEX[device.type] = torch.compile(flex, dynamic=False)
    return _COMPILED_FLEX[device.type]


def flex_attention_rel(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    r_k: Tensor,
    r_w_bias: Tensor,
    r_r_bias: Tensor,
    attn_mask: Tensor,
    pos_index: Tensor | None,
    positions: str,
    scale: float,
) -> Tensor:
    """FlexAttention with the position term read by distance in ``score_mod``.

    ``table [B, H, T, R] = (q + v) R^T`` is the *unshifted* position score; ``score_mod``
    adds ``s * table[b, h, i, row(i, j)]`` with ``row = T - 1 - i + j`` (contiguous
    ``relative``: the rel-shift as index arithmetic, clamped to the table for the future
    keys that the block mask removes anyway), ``pos_index[i, j]`` (gather path) or ``j``
    (``segment_end``). The block mask is ``~attn_mask``.
    """
    require(
        not (q.device.type == "cpu" and torch.is_grad_enabled() and q.requires_grad),
        f"attn_impl='flex' has no backward on the CPU (torch {torch.__version__}); train on the CPU "
        "with attn_impl='sdpa' or 'eager' (flex runs forward-only on the CPU, e.g. under torch.no_grad())",
    )
    _, create_block_mask = _flex_ops()
    qlen, klen = q.size(1), k.size(1)
    query = (q + r_w_bias).transpose(1, 2)  # [B, H, T, Dh]
    table = torch.einsum("bihd,jhd->bhij", q + r_r_bias, r_k).float()  # [B, H, T, R] fp32
    r_last = table.size(-1) - 1
    if pos_index is not None:
        rows = pos_index.expand(qlen, klen)  # [T, K]

        def row_of(q_idx: Tensor, kv_idx: Tensor) -> Tensor:
            return rows[q_idx, kv_idx]
    elif positions == "relative":

        def row_of(q_idx: Tensor, kv_idx: Tensor) -> Tensor:
            return torch.clamp(qlen - 1 - q_idx + kv_idx, max=r_last)
    else:

        def row_of(q_idx: Tensor, kv_idx: Tensor) -> Tensor:
            return kv_idx

    def score_mod(score: Tensor, b: Tensor, head: Tensor, q_idx: Tensor, kv_idx: Tensor) -> Tensor:
        return score + table[b, head, q_idx, row_of(q_idx, kv_idx)] * scale

    allowed = ~attn_mask  # [T, K] True = may attend

    def mask_mod(b: Tensor, head: Tensor, q_idx: Tensor, kv_idx: Tensor) -> Tensor:
        return allowed[q_idx, kv_idx]

    block_mask = create_block_mask(mask_mod, None, None, qlen, klen, device=q.device)
    kernel = _flex_kernel(q.device)
    out = kernel(
        query,
        k.transpose(1, 2),
        v.transpose(1, 2),
        score_mod=score_mod,
        block_mask=block_mask,
        scale=scale,
    )  # [B, H, T, Dh]
    return out.transpose(1, 2)  # [B, T, H, Dh]
