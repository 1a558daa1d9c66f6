"""Relative partial-learnable multi-head attention (Transformer-XL, attn_type 0).

Dai et al. 2019, Sec. 3.3: the score of query i and key j is

    (q_i + u) . k_j        (content term, "AC")
  + (q_i + v) . W_r R_d    (position term, "BD"), d = distance of i and j

scaled by ``1/sqrt(d_head)``, with ``u = r_w_bias`` and ``v = r_r_bias`` shared by all
layers (held by the model, passed in). Parameter names (``qkv_net``, ``r_net``,
``o_net``, ``layer_norm``) are the original's so checkpoints convert by name.

Position paths (the position term only; the content term is the same everywhere):

* **rel-shift** (``pos_index=None``, ``positions="relative"``): the memory is contiguous
  with the segment, the position table has one row per key (``pos_seq = K-1 .. 0``) and
  :func:`~skipxl.model.functional.rel_shift` aligns rows to distances (the original).
* **gather** (``pos_index`` given): a retained Skip-Retain memory (arXiv 2311.08123) holds
  older steps, so distances are not ``K-Q+i-j``. The table covers ``R-1 .. 0`` with ``R``
  above the largest true distance, and each (query, key) picks its row with a gather.
  On a contiguous memory with ``R = K`` it picks exactly the rel-shift entries.
* **segment_end** (``positions="segment_end"``, the paper's released code): every key is
  scored by its distance to the end of the segment, the same for every query: with
  ``pos_index=None`` row j is used for key j (no shift); for a retained memory a ``[1, K]``
  index selects each key's row of the projected table before the product (not a gather of
  the scores), so the layer keeps ``K`` positional keys, as on the contiguous path.

Kernels (``attn_impl``, :mod:`skipxl.model.attention_kernels`): ``eager`` (the reference,
three einsums), ``sdpa`` (``scaled_dot_product_attention`` with the position term as a
bias) and ``flex`` (FlexAttention reading the position table by distance); same numbers.

Cross-head attention (arXiv 2311.08123): an optional head index ``[H]`` gathers the heads
of the content keys, values and positional keys together
(:func:`~skipxl.model.heads.mix_heads`); the u/v biases stay with the query head.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from skipxl.errors import SkipxlError, require
from skipxl.model.attention_kernels import eager_attention, flex_attention_rel, sdpa_attention
from skipxl.model.config import ATTN_IMPLS, POSITIONS
from skipxl.model.heads import mix_heads


class PositionalEmbedding(nn.Module):
    """Sinusoid table ``[sin(pos * inv_freq), cos(pos * inv_freq)]`` (Vaswani et al. 2017,
    as used by Transformer-XL), ``inv_freq = 1 / 10000^(2k/d)``. Not learned."""

    inv_freq: Tensor

    def __init__(self, d_model: int) -> None:
        super().__init__()
        inv_freq = 1.0 / (10000 ** (torch.arange(0.0, d_model, 2.0) / d_model))  # [D/2]
        self.register_buffer("inv_freq", inv_freq)

    def forward(self, pos_seq: Tensor) -> Tensor:
        """``pos_seq [R]`` (fp32) -> ``[R, d_model]`` fp32.

        Computed in fp32 even in a half-precision model: a bf16 position (or frequency)
        cannot even represent 257, so the table is rebuilt in fp32 when the buffer was cast.
        """
        inv_freq = self.inv_freq
        if inv_freq.dtype != torch.float32:
            d_model = 2 * inv_freq.numel()
            steps = torch.arange(0.0, d_model, 2.0, device=inv_freq.device)  # [D/2]
            inv_freq = 1.0 / (10000 ** (steps / d_model))  # [D/2] fp32
        sinusoid = torch.outer(pos_seq.float(), inv_freq)  # [R, D/2]
        return torch.cat([sinusoid.sin(), sinusoid.cos()], dim=-1)  # [R, D] fp32


class RelPartialLearnableAttention(nn.Module):
    """One Transformer-XL attention block with residual and LayerNorm (pre or post)."""

    def __init__(
        self,
        n_head: int,
        d_model: int,
        d_head: int,
        dropout: float,
        dropatt: float = 0.0,
        pre_lnorm: bool = False,
        positions: str = "relative",
        attn_impl: str = "eager",
    ) -> None:
        super().__init__()
        require(positions in POSITIONS, f"positions {positions!r} is unknown; choose one of {POSITIONS}")
        require(attn_impl in ATTN_IMPLS, f"attn_impl {attn_impl!r} is unknown; choose one of {ATTN_IMPLS}")
        require(
            attn_impl == "eager" or dropatt == 0.0,
            f"attn_impl={attn_impl!r} cannot apply dropatt={dropatt} exactly; "
            "use attn_impl='eager' or dropatt=0",
        )
        self.attn_impl = attn_impl
        self.n_head, self.d_model, self.d_head = n_head, d_model, d_head
        self.pre_lnorm = pre_lnorm
        self.positions = positions
        self.scale = 1.0 / math.sqrt(d_head)
        self.qkv_net = nn.Linear(d_model, 3 * n_head * d_head, bias=False)
        self.r_net = nn.Linear(d_model, n_head * d_head, bias=False)
        self.o_net = nn.Linear(n_head * d_head, d_model, bias=False)
        self.layer_norm = nn.LayerNorm(d_model)
        self.drop = nn.Dropout(dropout)
        self.dropatt = nn.Dropout(dropatt)

    def project(
        self,
        x: Tensor,
        mem: Tensor | None,
        r: Tensor,
        pos_index: Tensor | None = None,
        head_index: Tensor | None = None,
    ) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor | None]:
        """The per-head inputs of the attention kernel: ``q [B, T, H, Dh]``, ``k, v [B, K, H, Dh]``,
        ``r_k [R, H, Dh]`` (cross-head mixed when ``head_index`` is given) and the ``pos_index``
        left for the kernel (``None`` once a ``segment_end`` selection is folded into ``r_k``).
        Arguments as for :meth:`forward`; also what the head diagnostics recompute attention from."""
        bsz, qlen, _ = x.shape
        cat = x if mem is None or mem.size(1) == 0 else torch.cat([mem.to(x.dtype), x], dim=1)  # [B,K,D]
        klen, rlen = cat.size(1), r.size(0)
        h, dh = self.n_head, self.d_head
        inp = self.layer_norm(cat) if self.pre_lnorm else cat  # [B, K, D]
        # Queries only for the segment (the original projects memory queries and drops them).
        w_q, w_kv = self.qkv_net.weight.split([h * dh, 2 * h * dh], dim=0)  # [HDh, D], [2HDh, D]
        q = F.linear(inp[:, klen - qlen :], w_q).view(bsz, qlen, h, dh)  # [B, T, H, Dh]
        k, v = F.linear(inp, w_kv).chunk(2, dim=-1)  # 2 x [B, K, HDh]
        k = k.reshape(bsz, klen, h, dh)  # [B, K, H, Dh]
        v = v.reshape(bsz, klen, h, dh)  # [B, K, H, Dh]
        r_k = self.r_net(r).view(rlen, h, dh)  # [R, H, Dh]
        if head_index is not None:
            k = mix_heads(k, head_index, head_dim=2)  # [B, K, H, Dh], head i <- head index[i]
            v = mix_heads(v, head_index, head_dim=2)  # [B, K, H, Dh]
            r_k = mix_heads(r_k, head_index, head_dim=1)  # [R, H, Dh]
        if pos_index is not None and self.positions == "segment_end":
            # One row per key, the same for every query: select the keys' rows before the
            # product, so the scores are [B, H, T, K] as on the contiguous path and no
            # [B, H, T, R] position-score tensor is computed at all.
            r_k = r_k.index_select(0, pos_index.reshape(-1))  # [K, H, Dh]
            pos_index = None
        return q, k, v, r_k, pos_index

    def forward(
        self,
        x: Tensor,
        mem: Tensor | None,
        r: Tensor,
        r_w_bias: Tensor,
        r_r_bias: Tensor,
        attn_mask: Tensor,
        pos_index: Tensor | None = None,
        head_index: Tensor | None = None,
    ) -> Tensor:
        """Attend from the segment to ``[memory, segment]``.

        Args:
            x: ``[B, T, D]`` the layer input for the current segment.
            mem: ``[B, M, D]`` the layer's memory (``None`` or ``M = 0``: none).
            r: ``[R, D]`` position embeddings for ``pos_seq = R-1 .. 0`` (clamped, dropped out).
                Without ``pos_index`` ``R`` must equal ``K = M + T``.
            r_w_bias, r_r_bias: ``[H, Dh]`` the u and v biases.
            attn_mask: ``[T, K]`` bool, True = masked.
            pos_index: ``[T, K]`` (relative) or ``[1, K]`` (segment_end) int64 row of ``r``
                for each score (gather path), or ``None`` (contiguous fast path).
            head_index: ``[H]`` int64 cross-head index or ``None`` (identity, no gather).
        Returns:
            ``[B, T, D]``.
        """
        bsz, qlen, _ = x.shape
        h, dh = self.n_head, self.d_head
        q, k, v, r_k, pos_index = self.project(x, mem, r, pos_index, head_index)
        klen = k.size(1)
        if pos_index is None and r_k.size(0) != klen:
            # (the message is built only on failure: formatting a symbolic size under
            # torch.compile would specialise the graph to it)
            raise SkipxlError(
                f"contiguous position path needs one position row per key (R={r_k.size(0)}, K={klen})"
            )
        args = (q, k, v, r_k, r_w_bias, r_r_bias, attn_mask, pos_index, self.positions, self.scale)
        if self.attn_impl == "eager":
            vec = eager_attention(*args, dropatt=self.dropatt)  # [B, T, H, Dh]
        elif self.attn_impl == "sdpa":
            vec = sdpa_attention(*args)  # [B, T, H, Dh]
        else:
            vec = flex_attention_rel(*args)  # [B, T, H, Dh]
        out = self.drop(self.o_net(vec.reshape(bsz, qlen, h * dh)))  # [B, T, D]
        if self.pre_lnorm:
            return x + out
        return self.layer_norm(x + out)
