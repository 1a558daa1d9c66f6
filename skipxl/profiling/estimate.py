"""Analytic activation memory of a Transformer-XL training step, layer by layer.

What a training step holds for backward is, to the byte, the list of tensors each op
saves. For skipxl's Transformer-XL (Dai et al. 2019, relative attention with a memory of
``M`` slots per layer; :mod:`skipxl.model.attention`) that list is short and depends on
``B`` (batch), ``T`` (segment), ``M``, ``K = M + T`` (keys), ``R`` (position rows),
``D``, ``H``, ``Dh``, ``Di`` (inner size) and the dtype. This module writes it down so a
run can be sized before it is launched; ``skipxl memory`` prints it next to the
measured figure (:mod:`skipxl.profiling.saved_tensors`), and a test keeps the two equal.

Per computed layer (post-LayerNorm, the Transformer-XL default; ``e`` = activation bytes,
``m`` = dropout-mask bytes: a float mask of the input dtype on CPU, a 1-byte bool mask
from the fused CUDA kernel):

===========================================  ===================================
saved tensor                                 bytes
===========================================  ===================================
query input (last T rows of [mem, x])        ``B T D e`` (shared with the next row when M = 0)
key/value input ``[mem, x]``                 ``B K D e``
``q + u``, ``q + v`` (einsum operands)       ``2 B T H Dh e``
keys, positional keys (einsum copies)        ``B K H Dh e + R H Dh e``
softmax output (fp32)                        ``B H T K 4``
attention dropout mask + output (dropatt>0)  ``B H T K (m + e)``; else a cast copy when e != 4
values (einsum copy)                         ``B K H Dh e``
output-projection input                      ``B T H Dh e``
dropout mask, LayerNorm input + mean/rstd    ``B T D m + B T D e + 2 B T 4``
FF: input, ReLU output                       ``B T D e + B T Di e``
FF: dropout mask + output (dropout>0)        ``B T Di (m + e)``
FF: dropout mask, LayerNorm input + stats    ``B T D m + B T D e + 2 B T 4``
gather path (retained memory, true dist.)    ``+ T K 8`` index (``gather_last`` keeps no scores)
  segment_end (one row per key)              ``+ K 8`` index; positional keys ``K H Dh e``
===========================================  ===================================

Once per step (shared by the layers): the position table ``R_max D e``, one ``T x K`` bool
attention mask per distinct memory length, and with cross-head attention the
``[n_layer, H]`` int64 head index. Skip-Retain: a skipped layer costs 0; a layer whose
memory was retained attends over true distances, so it may need more position rows
(``R > K``) and a gather index: that is the only way Skip-Retain can hold *more* than
the baseline in a step. The excess does not grow with the batch: the longer table
(``(R_max - K) D e``), the layer's ``R - K`` extra positional keys and a ``T x K`` index
(``gather_last`` in :mod:`skipxl.model.functional` keeps no ``[B, H, T, R]`` scores); with
``segment_end`` scoring the layer keeps ``K`` positional keys and a ``[K]`` index.

Embedding and adaptive softmax are included (token ids, masks, the head cluster's
log-probabilities, the tail clusters' rows); the tail part depends on how many target
tokens fall in each cluster, so pass ``cluster_tokens`` (``None``: all in the head).
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from skipxl.errors import require

INDEX_BYTES = 8  # int64 token ids, gather / index_select indices
STAT_BYTES = 4  # LayerNorm mean / rstd and softmax outputs are fp32


@dataclass(frozen=True)
class DTypeRule:
    """Byte sizes that depend on dtype and device.

    Attributes:
        act: bytes per activation element (4 fp32, 2 bf16/fp16).
        mask: bytes per dropout-mask element (CPU: the input dtype's size; CUDA: 1).
    """

    act: int = 4
    mask: int = 4

    @classmethod
    def for_device(cls, device: str, act: int = 4) -> DTypeRule:
        """CPU dropout saves a float mask of the input dtype; CUDA's fused kernel a bool mask."""
        return cls(act=act, mask=1 if device.startswith("cuda") else act)


def layer_bytes(
    *,
    batch: int,
    tgt_len: int,
    mlen: int,
    d_model: int,
    n_head: int,
    d_head: int,
    d_inner: int,
    dropout: float,
    dropatt: float = 0.0,
    pre_lnorm: bool = False,
    rlen: int | None = None,
    gather: bool = False,
    segment_end: bool = False,
    rule: DTypeRule = DTypeRule(),
) -> int:
    """Bytes one computed Transformer-XL layer saves for backward (see the module table).

    ``rlen`` is the number of position rows this layer reads (``K`` on the contiguous
    path; more for a retained memory on the gather path, then set ``gather=True``).
    """
    require(
        min(batch, tgt_len, d_model, n_head, d_head, d_inner) >= 1 and mlen >= 0,
        "layer_bytes needs positive shapes and mlen >= 0",
    )
    b, t, m, d, h, dh, di = batch, tgt_len, mlen, d_model, n_head, d_head, d_inner
    e, mb = rule.act, rule.mask
    k = m + t
    r = k if rlen is None else rlen
    hd = h * dh
    total = 0
    # --- attention inputs
    if pre_lnorm:
        total += b * k * d * e + 2 * b * k * STAT_BYTES  # LayerNorm([mem, x]) input + stats
    kv_in = b * k * d * e
    q_in = b * t * d * e if m > 0 else 0  # M = 0: the query input is the key/value input
    if pre_lnorm or m > 0:
        total += kv_in + q_in
    else:
        total += kv_in
    # --- scores
    total += 2 * b * t * hd * e  # q + u, q + v
    r_used = k if gather and segment_end else r  # segment_end selects one row per key first
    total += b * k * hd * e + r_used * hd * e  # keys, positional keys (einsum operand copies)
    total += b * h * t * k * STAT_BYTES  # softmax output
    if dropatt > 0:
        total += b * h * t * k * (mb + e)  # mask + dropped probabilities
    elif e != STAT_BYTES:
        total += b * h * t * k * e  # probabilities cast back to the activation dtype
    total += b * k * hd * e  # values
    total += b * t * hd * e  # output projection input
    if gather and segment_end:
        total += k * INDEX_BYTES  # index_select keeps its [K] index
    elif gather:
        # gather_last keeps only its (broadcast) [T, K] index, not the [B, H, T, R] scores.
        total += t * k * INDEX_BYTES
    drop_mask = b * t * d * mb if dropout > 0 else 0
    total += drop_mask
    ln = b * t * d * e + 2 * b * t * STAT_BYTES
    if not pre_lnorm:
        total += ln  # LayerNorm(x + attn)
    # --- feed-forward
    if pre_lnorm:
        total += ln  # LayerNorm(x) input + stats
    total += b * t * d * e  # first Linear input
    total += b * t * di * e  # ReLU output
    if dropout > 0:
        total += b * t * di * (mb + e)  # mask + second Linear input
    total += drop_mask
    if not pre_lnorm:
        total += ln
    return total


@dataclass(frozen=True)
class ActivationEstimate:
    """Estimated saved-for-backward bytes of one step, by part."""

    per_layer: tuple[int, ...]
    shared: int
    embedding: int
    softmax: int

    @property
    def layers(self) -> int:
        return sum(self.per_layer)

    @property
    def total(self) -> int:
        return self.layers + self.shared + self.embedding + self.softmax


def _embedding_bytes(cfg: Any, b: int, t: int, rule: DTypeRule) -> int:
    d, d_embed = cfg.d_model, cfg.d_embed_resolved
    e = rule.act
    if cfg.div_val == 1:
        total = b * t * INDEX_BYTES  # token ids (the embedding's backward index)
        if d != d_embed:
            total += b * t * d_embed * e  # projection input
    else:
        total = 0
        for i in range(len(cfg.cutoffs) + 1):
            d_i = d_embed // cfg.div_val**i
            total += b * t * (INDEX_BYTES + d_i * e + 1)  # clamped ids, projection input, where() mask
    if cfg.dropout > 0:
        total += b * t * d * rule.mask
    return total


def _softmax_bytes(cfg: Any, b: int, t: int, cluster_tokens: Sequence[int] | None, rule: DTypeRule) -> int:
    d, d_embed, n_token = cfg.d_model, cfg.d_embed_resolved, cfg.n_token
    cutoffs, div_val = tuple(cfg.cutoffs), cfg.div_val
    e, n = rule.act, b * t
    total = b * t * d * rule.mask if cfg.dropout > 0 else 0
    total += n * d * e  # final hidden states (the softmax input)
    proj = div_val > 1 or d != d_embed
    if not cutoffs:
        total += (n * d_embed * e if proj else 0) + n * n_token * STAT_BYTES + n * INDEX_BYTES
        return total
    bounds = [0, *cutoffs, n_token]
    head = cutoffs[0] + len(cutoffs)
    counts = list(cluster_tokens) if cluster_tokens is not None else [n] + [0] * len(cutoffs)
    require(len(counts) == len(cutoffs) + 1, "cluster_tokens needs one count per cluster (head first)")
    d0 = d_embed
    total += n * d0 * e if proj else 0  # projected input (head logits join two GEMMs: no weight copy)
    total += n * head * STAT_BYTES + n * INDEX_BYTES  # head log-probabilities, column index
    for i in range(1, len(bounds) - 1):
        n_i = counts[i]
        if n_i == 0:
            continue
        d_i = d_embed // div_val**i if div_val > 1 else d_embed
        v_i = bounds[i + 1] - bounds[i]
        total += n_i * INDEX_BYTES + n_i * d * e  # row index, selected hidden rows
        total += (n_i * d_i * e if proj else 0) + n_i * v_i * STAT_BYTES  # projected rows, log-probs
        total += n_i * INDEX_BYTES + n_i * STAT_BYTES  # target column, the rows added back (index_add)
    return total


def estimate_step(
    cfg: Any,
    batch: int,
    *,
    mlens: Sequence[int] | None = None,
    rlens: Sequence[int] | None = None,
    gather: Sequence[bool] | None = None,
    skip: Sequence[bool] | None = None,
    cross_head: bool = False,
    cluster_tokens: Sequence[int] | None = None,
    tgt_len: int | None = None,
    rule: DTypeRule = DTypeRule(),
) -> ActivationEstimate:
    """Estimate one training step of a :class:`~skipxl.model.config.ModelConfig` ``cfg``.

    Args:
        batch: sequences per micro-batch on this rank.
        mlens: memory slots per layer (default: ``mem_len`` everywhere, the steady state).
        rlens / gather: position rows and gather-path flags per layer (default: contiguous).
        skip: Skip-Retain decisions (a skipped layer saves nothing).
        cross_head: whether any layer mixes heads this step (adds the head index).
        cluster_tokens: target tokens per softmax cluster (head first).
        tgt_len: segment length (default ``cfg.tgt_len``).
    """
    n_layer = cfg.n_layer
    t = cfg.tgt_len if tgt_len is None else tgt_len
    mlens = list(mlens) if mlens is not None else [cfg.mem_len] * n_layer
    skip = list(skip) if skip is not None else [False] * n_layer
    gather = list(gather) if gather is not None else [False] * n_layer
    rlens = list(rlens) if rlens is not None else [m + t for m in mlens]
    require(
        len(mlens) == len(skip) == len(gather) == len(rlens) == n_layer,
        "mlens, rlens, gather and skip need one entry per layer",
    )
    segment_end = cfg.positions == "segment_end"
    per_layer = []
    for layer in range(n_layer):
        if skip[layer]:
            per_layer.append(0)
            continue
        per_layer.append(
            layer_bytes(
                batch=batch,
                tgt_len=t,
                mlen=mlens[layer],
                d_model=cfg.d_model,
                n_head=cfg.n_head,
                d_head=cfg.d_head,
                d_inner=cfg.d_inner,
                dropout=cfg.dropout,
                dropatt=cfg.dropatt,
                pre_lnorm=cfg.pre_lnorm,
                rlen=rlens[layer],
                gather=gather[layer],
                segment_end=segment_end,
                rule=rule,
            )
        )
    computed = [i for i in range(n_layer) if not skip[i]]
    shared = 0
    if computed:
        r_max = max(rlens[i] for i in computed)
        shared += r_max * cfg.d_model * rule.act  # position table
        shared += sum(t * (m + t) for m in sorted({mlens[i] for i in computed}))  # bool masks
        if cross_head:
            shared += n_layer * cfg.n_head * INDEX_BYTES
    return ActivationEstimate(
        per_layer=tuple(per_layer),
        shared=shared,
        embedding=_embedding_bytes(cfg, batch, t, rule),
        softmax=_softmax_bytes(cfg, batch, t, cluster_tokens, rule),
    )


def memory_geometry(
    cfg: Any, mems: Any, tgt_len: int, skip: Sequence[bool] | None = None
) -> tuple[list[int], list[int], list[bool]]:
    """``(mlens, rlens, gather)`` per layer for a step that starts from memory ``mems``.

    Mirrors the path choice of :meth:`skipxl.model.transformer_xl.TransformerXL.forward`:
    a layer whose memory is contiguous with the segment (or any layer when
    ``retain_positions="contiguous"``) reads ``K = M + T`` position rows by rel-shift; a
    retained memory reads rows up to its oldest slot's true distance through a gather.
    ``mems=None`` is the start of a stream (no memory).
    """
    n_layer = cfg.n_layer
    skip = list(skip) if skip is not None else [False] * n_layer
    if mems is None:
        return [0] * n_layer, [tgt_len] * n_layer, [False] * n_layer
    retain_contiguous = cfg.skip is not None and cfg.skip.retain_positions == "contiguous"
    mlens = [mems.mlen(layer) for layer in range(n_layer)]
    rlens, gather = mems.position_rows(tgt_len, skip, retain_contiguous)
    return mlens, rlens, gather


def cluster_counts(targets: Any, cfg: Any) -> list[int] | None:
    """Target tokens per adaptive-softmax cluster (head first); ``None`` without cutoffs."""
    if not cfg.cutoffs:
        return None
    bounds = [0, *cfg.cutoffs, cfg.n_token]
    return [int(((targets >= lo) & (targets < hi)).sum()) for lo, hi in itertools.pairwise(bounds)]
