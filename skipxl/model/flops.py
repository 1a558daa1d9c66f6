"""Explicit matmul FLOP count of one Transformer-XL training segment (for MFU).

Counted: every matrix product the model runs, at 2 FLOPs per multiply-add, exactly as
:class:`~skipxl.model.transformer_xl.TransformerXL` runs it (not an idealised model), so that
``torch.utils.flop_counter.FlopCounterMode`` agrees with it (``tests/test_model_flops.py``).
Not counted: softmax, LayerNorm, dropout, rel-shift, gathers (memory-bound, not FLOP-bound).
See ``docs/PERFORMANCE.md`` for the formula written out.

Per computed layer with ``B`` streams, ``T`` queries, ``M`` memory slots, ``K = M + T``
keys, ``R`` position rows (``K`` on the rel-shift path, up to the oldest slot's distance on
the gather path), ``H`` heads of ``Dh``, model width ``D`` and inner width ``F``:

* projections: ``q`` over T rows, ``k, v`` over **K** rows (memory included), ``r_net`` over
  R rows (no batch), output over T rows: ``2BTD·HDh + 2BK·D·2HDh + 2R·D·HDh + 2BT·HDh·D``;
* the three attention products: content ``(q+u)k^T`` ``2BHTK·Dh``, position ``(q+v)R^T``
  ``2BHTR'·Dh`` (``R' = K`` for ``segment_end``, whose rows are selected before the
  product) and ``PV`` ``2BHTK·Dh``;
* feed-forward ``2·2BTDF``.

Adaptive softmax over ``N`` scored tokens: the head (projection if any, shortlist + one
column per tail cluster) for every token; tail cluster ``i`` (projection, ``V_i`` logits)
only for the ``N_i`` tokens that fall in it, because that is what the model computes.
The adaptive input with ``div_val > 1`` projects every token in every cluster (a dense,
sync-free lookup), so it counts ``2N·Σ d_i·D``.

Backward is twice the forward for every product whose two operands need a gradient; the
``r_net`` input (the sinusoid table) needs none, so its input gradient is not computed.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from skipxl.model.config import ModelConfig


@dataclass(frozen=True)
class SegmentFlops:
    """Matmul FLOPs of one segment, split for the docs' tables."""

    attention_projections: int
    attention_products: int
    feed_forward: int
    embedding: int
    softmax: int
    backward: int

    @property
    def forward(self) -> int:
        return (
            self.attention_projections
            + self.attention_products
            + self.feed_forward
            + self.embedding
            + self.softmax
        )

    @property
    def training(self) -> int:
        """Forward plus backward."""
        return self.forward + self.backward


def segment_flops(
    cfg: ModelConfig,
    batch: int,
    qlen: int,
    mlens: Sequence[int],
    cluster_counts: Sequence[int] | None = None,
    rlens: Sequence[int] | None = None,
    skip: Sequence[bool] | None = None,
) -> SegmentFlops:
    """FLOPs of one training segment.

    Args:
        cfg: the model.
        batch, qlen: ``B`` streams of ``T`` steps (all ``T`` scored).
        mlens: per-layer memory lengths ``M_l``.
        cluster_counts: tokens per adaptive-softmax cluster (head first, ``len(cutoffs)+1``
            entries summing to ``B*T``); ``None`` = all in the head cluster.
        rlens: per-layer position rows (``None`` = ``K_l``, the rel-shift path).
        skip: per-layer Skip-Retain decisions (a skipped layer costs nothing).
    """
    n_layer, h, dh, d, f = cfg.n_layer, cfg.n_head, cfg.d_head, cfg.d_model, cfg.d_inner
    hd = h * dh
    bt = batch * qlen
    skip = skip or (False,) * n_layer
    proj = attn = ff = r_input_grad = 0
    for layer in range(n_layer):
        if skip[layer]:
            continue
        klen = mlens[layer] + qlen
        rlen = klen if rlens is None else rlens[layer]
        r_product = klen if cfg.positions == "segment_end" else rlen
        proj += 2 * bt * d * hd + 2 * batch * klen * d * 2 * hd + 2 * rlen * d * hd + 2 * bt * hd * d
        attn += 2 * batch * h * qlen * (klen + r_product + klen) * dh
        ff += 2 * 2 * bt * d * f
        r_input_grad += 2 * rlen * d * hd
    emb = _embedding_flops(cfg, bt)
    soft = _softmax_flops(cfg, bt, cluster_counts)
    backward = 2 * (proj + attn + ff + emb + soft) - r_input_grad
    # The adaptive input's projection input is an embedding row (a leaf gather): its
    # gradient is needed (the embedding weight learns), so the 2x holds there too.
    return SegmentFlops(proj, attn, ff, emb, soft, backward)


def _cluster_dims(cfg: ModelConfig) -> list[int]:
    d_embed = cfg.d_embed_resolved
    if cfg.div_val == 1:
        return [d_embed] * (len(cfg.cutoffs) + 1)
    return [d_embed // cfg.div_val**i for i in range(len(cfg.cutoffs) + 1)]


def _has_proj(cfg: ModelConfig) -> bool:
    return cfg.div_val > 1 or cfg.d_model != cfg.d_embed_resolved


def _embedding_flops(cfg: ModelConfig, n: int) -> int:
    if not _has_proj(cfg):
        return 0
    if cfg.div_val == 1:
        return 2 * n * cfg.d_embed_resolved * cfg.d_model
    return sum(2 * n * di * cfg.d_model for di in _cluster_dims(cfg))


def _softmax_flops(cfg: ModelConfig, n: int, cluster_counts: Sequence[int] | None) -> int:
    ends = [0, *cfg.cutoffs, cfg.n_token]
    sizes = [ends[i + 1] - ends[i] for i in range(len(ends) - 1)]
    dims = _cluster_dims(cfg)
    n_tail = len(cfg.cutoffs)
    counts = list(cluster_counts) if cluster_counts is not None else [n] + [0] * n_tail
    proj = _has_proj(cfg)
    total = 2 * n * dims[0] * (sizes[0] + n_tail) + (2 * n * cfg.d_model * dims[0] if proj else 0)
    for i in range(1, n_tail + 1):
        total += 2 * counts[i] * dims[i] * sizes[i] + (2 * counts[i] * cfg.d_model * dims[i] if proj else 0)
    return total


# Dense peak matmul throughput (FLOP/s) per device name fragment, for MFU. Vendor datasheets,
# dense (no sparsity): bf16/fp16 tensor cores and fp32 without TF32.
PEAK_FLOPS = {
    "H200": {"bf16": 989e12, "fp32": 67e12},
    "H100": {"bf16": 989e12, "fp32": 67e12},  # SXM
    "A100": {"bf16": 312e12, "fp32": 19.5e12},
}


def peak_flops(device_name: str, dtype: str) -> float | None:
    """Datasheet peak for a CUDA device name, or ``None`` when unknown (then no MFU is reported)."""
    for key, peaks in PEAK_FLOPS.items():
        if key in device_name:
            return peaks.get(dtype)
    return None
