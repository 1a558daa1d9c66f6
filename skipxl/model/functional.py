"""Pure tensor math of Transformer-XL and Skip-Retain (no parameters, no state).

Everything the model does to positions, masks and memory windows lives here as small
functions that the tests check against hand-computed cases and naive references.
References: Transformer-XL (Dai et al. 2019, Sec. 3.2-3.3 and Appendix B, the rel-shift
"efficient computation"); Skip-Retain (Vishnu & Chandra Sekhar, arXiv 2311.08123).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from skipxl.errors import require
from skipxl.model.config import SkipRetainConfig


def rel_shift(x: Tensor) -> Tensor:
    """Turn "query x position-row" scores into "query x key" scores (Transformer-XL App. B).

    ``x[..., i, j]`` holds query ``i`` scored against the position-embedding row ``j`` of
    ``pos_seq = [K-1, K-2, ..., 0]``. The result ``y[..., i, j]`` holds query ``i`` scored
    against the row of distance ``(K - Q + i) - j``, i.e. the relative distance between
    query i (the ``K-Q+i``-th key) and key j. Entries with ``j > K - Q + i`` (future keys)
    are garbage and must be masked. Done with one zero column and two views, no gather.

    Args:
        x: ``[..., Q, K]`` with ``Q <= K``.
    Returns:
        ``[..., Q, K]``.
    """
    *lead, q, k = x.shape
    zero_pad = x.new_zeros(*lead, q, 1)  # [..., Q, 1]
    x_padded = torch.cat([zero_pad, x], dim=-1)  # [..., Q, K+1]
    x_padded = x_padded.view(*lead, k + 1, q)  # [..., K+1, Q]  (same memory, re-cut)
    return x_padded[..., 1:, :].reshape(*lead, q, k)  # drop first row -> [..., Q, K]


def attention_mask(
    qlen: int,
    mlen: int,
    same_length: bool,
    mem_len: int,
    device: torch.device | str | None = None,
) -> Tensor:
    """Causal mask over ``[memory, segment]`` keys, exactly as the original ``_forward``.

    ``True`` means "may not attend". Query ``i`` (the ``mlen + i``-th key) sees keys
    ``j <= mlen + i``. With ``same_length`` every query additionally loses its oldest keys
    so that all queries attend to the same number of keys: ``mask_len = klen - mem_len``,
    ``mask_shift_len = qlen - mask_len`` if ``mask_len > 0`` else ``qlen``, and keys
    ``j <= i - mask_shift_len`` are masked (``tril(-mask_shift_len)``). ``mem_len`` is
    the model's configured memory length; ``mlen`` the actual memory length.

    Returns:
        ``[qlen, mlen + qlen]`` bool.
    """
    klen = mlen + qlen
    ones = torch.ones(qlen, klen, dtype=torch.bool, device=device)  # [Q, K]
    mask = torch.triu(ones, diagonal=1 + mlen)  # [Q, K] future keys
    if same_length:
        mask_len = klen - mem_len
        mask_shift_len = qlen - mask_len if mask_len > 0 else qlen
        mask = mask | torch.tril(ones, diagonal=-mask_shift_len)  # [Q, K] too-old keys
    return mask


def relative_distances(query_pos: Tensor, key_pos: Tensor, clamp_len: int = -1) -> Tensor:
    """True distances ``query_pos[i] - key_pos[j]`` for the gather position path.

    Negative distances (future keys, always masked) are clamped to 0 so they index a
    valid row; with ``clamp_len > 0`` distances above ``clamp_len`` become ``clamp_len``
    as in the original's ``pos_seq.clamp_(max=clamp_len)``.

    Args:
        query_pos: ``[Q]`` int64 absolute positions of the queries.
        key_pos: ``[K]`` int64 absolute positions of the keys (memory then segment).
    Returns:
        ``[Q, K]`` int64.
    """
    dist = query_pos[:, None] - key_pos[None, :]  # [Q, K]
    dist = dist.clamp(min=0)
    if clamp_len > 0:
        dist = dist.clamp(max=clamp_len)
    return dist


class _GatherLast(torch.autograd.Function):
    """``x.gather(-1, index)`` whose backward keeps only the index, not ``x``."""

    @staticmethod
    def forward(ctx, x: Tensor, index: Tensor) -> Tensor:  # type: ignore[override]
        ctx.save_for_backward(index)
        ctx.x_shape = x.shape
        return x.gather(-1, index)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None]:  # type: ignore[override]
        (index,) = ctx.saved_tensors
        # The same formula as torch's own gather backward (zeros, then scatter_add).
        return grad.new_zeros(ctx.x_shape).scatter_add_(-1, index, grad), None


def gather_last(x: Tensor, index: Tensor) -> Tensor:
    """``x.gather(-1, index)`` with the same values and gradients, but less saved memory.

    The gather position path of a retained Skip-Retain memory (arXiv 2311.08123) picks each
    (query, key) score from the ``[B, H, T, R]`` position-score table. ``torch.gather``'s
    autograd keeps that whole input alive until backward although its gradient needs only
    the input's shape and the index; on the step after a skip that table (``R`` grows by
    ``tgt_len`` rows for every step a memory is retained) is the one batch-sized activation the
    baseline does not have, which would break the paper's "no extra memory" claim. Saving the
    index alone (usually a broadcast ``expand`` of a ``[T, K]`` int64 tensor, so its storage is
    ``T * K * 8`` bytes) removes it. The backward is torch's formula, so gradients are bitwise the same.

    Args:
        x: ``[..., R]``; index: ``[..., K]`` int64 with ``0 <= index < R``.
    Returns:
        ``[..., K]``.
    """
    return _GatherLast.apply(x, index)


def position_rows(distances: Tensor, r_len: int) -> Tensor:
    """Row of ``pos_seq = [r_len-1, ..., 0]`` that holds each distance: ``r_len - 1 - d``.

    Distances beyond the table (only possible when clamped by the table, which the model
    never builds shorter than the largest distance) are clamped to row 0.
    """
    return (r_len - 1 - distances).clamp(min=0)  # same shape as distances


def update_memory(
    state: Tensor | None,
    pos: Tensor | None,
    new_hidden: Tensor,
    new_pos: Tensor,
    mem_len: int,
    ext_len: int = 0,
) -> tuple[Tensor, Tensor]:
    """Next memory of one layer: the last ``mem_len`` cached steps, detached.

    Matches the original ``_update_mems`` window with its intended argument order:
    ``end = mlen + max(0, qlen - ext_len)``, ``beg = max(0, end - mem_len)`` over
    ``cat([memory, new_hidden])``. (The original calls ``_update_mems(hids, mems, mlen,
    qlen)`` against the signature ``(hids, mems, qlen, mlen)``; with ``ext_len = 0``, as
    in every released configuration, both orders give the same window.)

    Args:
        state: ``[B, M, D]`` current memory (``None`` = empty).
        pos: ``[M]`` int64 absolute positions of the memory (``None`` = empty).
        new_hidden: ``[B, T, D]`` this layer's input for the current segment.
        new_pos: ``[T]`` int64 absolute positions of the current segment.
    Returns:
        ``(state [B, M', D], pos [M'])`` with ``M' <= mem_len``, detached.
    """
    if state is None:
        state = new_hidden.new_zeros(new_hidden.size(0), 0, new_hidden.size(2))  # [B, 0, D]
    if pos is None:
        pos = new_pos.new_zeros(0)
    mlen, qlen = state.size(1), new_hidden.size(1)
    end = mlen + max(0, qlen - ext_len)
    beg = max(0, end - mem_len)
    # Concatenate only the slices inside the window [beg, end) of cat([memory, new]):
    # slicing a full [B, M+T, D] concatenation would return a view that keeps the whole
    # buffer alive, so the memory would hold (M+T)/M times its logical size.
    with torch.no_grad():
        kept_mem = state[:, min(beg, mlen) : min(end, mlen)].to(new_hidden.dtype)  # [B, <=M, D]
        kept_new = new_hidden[:, max(beg - mlen, 0) : max(end - mlen, 0)]  # [B, <=T, D]
        new_state = torch.cat([kept_mem, kept_new], dim=1).detach()  # [B, M', D], own storage
    new_positions = torch.cat([pos, new_pos.to(pos.device)])[beg:end]  # [M']
    return new_state, new_positions


def skip_probabilities(cfg: SkipRetainConfig | None, n_layer: int) -> tuple[float, ...]:
    """Per-layer skip probabilities ``pskip(l)`` of the schedule (arXiv 2311.08123).

    ``linear`` (the released code): ``p * l / N``; ``constant``: ``p``; ``list``: as given.
    With ``protect_ends`` the first and last layer get 0 (linear and constant).
    ``None`` means no skipping: all zeros.
    """
    require(n_layer >= 1, f"n_layer must be >= 1, got {n_layer}")
    if cfg is None:
        return (0.0,) * n_layer
    if cfg.schedule == "list":
        require(
            len(cfg.probs) == n_layer,
            f"skip probs has {len(cfg.probs)} entries for {n_layer} layers; give one per layer",
        )
        return tuple(cfg.probs)
    if cfg.schedule == "linear":
        probs = [cfg.p * layer / n_layer for layer in range(n_layer)]
    else:  # constant
        probs = [cfg.p] * n_layer
    if cfg.protect_ends:
        probs[0] = 0.0
        probs[-1] = 0.0
    return tuple(probs)


def draw_skip_mask(probs: Sequence[float], generator: torch.Generator) -> tuple[bool, ...]:
    """Draw one step's skip decisions: layer ``l`` is skipped iff ``u_l < probs[l]``.

    Always draws exactly ``len(probs)`` uniforms from ``generator`` (CPU) whatever the
    outcome, so that the generator's stream stays aligned between runs that differ only
    in the probabilities, and nothing touches the global RNG (dropout).
    """
    u = torch.rand(len(probs), generator=generator)  # [N] on CPU
    return tuple(bool(x < p) for x, p in zip(u.tolist(), probs, strict=True))
