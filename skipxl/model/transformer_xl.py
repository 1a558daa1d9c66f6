"""Transformer-XL language model with Skip-Retain and stochastic cross-head attention.

The baseline is the original Transformer-XL (Dai et al. 2019; ``MemTransformerLM`` with
``attn_type=0``): adaptive input, sinusoidal relative positions, segment recurrence over
per-layer memories of the layer *inputs*, projected adaptive softmax. Module and
parameter names follow the original so that :mod:`skipxl.convert` maps checkpoints by
name. Public tensors are batch-major (``[B, T, ...]``).

The forward pass is a pure function of its arguments (and the weights): the paper's methods
(Vishnu & Chandra Sekhar, arXiv 2311.08123) act through the :class:`StepPlan` passed in, which
the engine's training policies draw per step (:mod:`skipxl.engine.policies`); ``plan=None`` is a
plain Transformer-XL step. The attention context (memory length, clamp, ``same_length``) is a
:class:`~skipxl.model.context.Context` argument too (``None``: the config's training context).

* **Skip-Retain**: a skipped layer is the identity (not computed) and its memory is
  retained unchanged, states *and* absolute positions; attention to a retained memory
  uses true distances (gather path) unless ``retain_positions="contiguous"``.
* **Cross-head**: per layer a head index ``[H]`` mixes content keys, values and
  positional keys.

In evaluation mode (``model.eval()``) the plan is ignored: no skipping, no mixing. What a
skipped layer's gradient becomes (none or an explicit zero) is the engine's business too.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from skipxl.errors import require
from skipxl.model.adaptive import AdaptiveEmbedding, ProjectedAdaptiveLogSoftmax
from skipxl.model.attention import PositionalEmbedding, RelPartialLearnableAttention
from skipxl.model.config import ModelConfig
from skipxl.model.context import Context
from skipxl.model.functional import attention_mask, position_rows, relative_distances, update_memory
from skipxl.model.heads import is_identity
from skipxl.model.memory import Memory
from skipxl.model.tying import TiedStack


@dataclass(frozen=True, eq=False)
class StepPlan:
    """What the stochastic methods do in one training step.

    Attributes:
        skip: per-layer skip decisions (``None`` = skip nothing).
        head_index: ``[n_layer, n_head]`` int64 CPU cross-head indices (``None`` = identity).
    """

    skip: tuple[bool, ...] | None = None
    head_index: Tensor | None = None

    @property
    def n_skipped(self) -> int:
        return 0 if self.skip is None else sum(self.skip)


@dataclass
class LMOutput:
    """Result of :meth:`TransformerXL.forward`.

    Attributes:
        nll: ``[B, T']`` fp32 per-token negative log-likelihood (``None`` without targets).
        loss: scalar mean of ``nll`` (``None`` without targets).
        mems: the :class:`Memory` to pass to the next segment (detached).
        hidden: ``[B, T, d_model]`` final hidden states (after the final dropout).
        plan: the :class:`StepPlan` actually used.
    """

    nll: Tensor | None
    loss: Tensor | None
    mems: Memory
    hidden: Tensor
    plan: StepPlan


class PositionwiseFF(nn.Module):
    """Position-wise feed-forward block with residual and LayerNorm (pre or post)."""

    def __init__(self, d_model: int, d_inner: int, dropout: float, pre_lnorm: bool = False) -> None:
        super().__init__()
        self.pre_lnorm = pre_lnorm
        self.CoreNet = nn.Sequential(  # the original's name, for checkpoint conversion
            nn.Linear(d_model, d_inner),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
            nn.Linear(d_inner, d_model),
            nn.Dropout(dropout),
        )
        self.layer_norm = nn.LayerNorm(d_model)

    def forward(self, x: Tensor) -> Tensor:
        """``[B, T, D] -> [B, T, D]``."""
        if self.pre_lnorm:
            return x + self.CoreNet(self.layer_norm(x))
        return self.layer_norm(x + self.CoreNet(x))


class DecoderLayer(nn.Module):
    """Attention then feed-forward (the original ``RelPartialLearnableDecoderLayer``)."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.dec_attn = RelPartialLearnableAttention(
            cfg.n_head,
            cfg.d_model,
            cfg.d_head,
            cfg.dropout,
            cfg.dropatt,
            cfg.pre_lnorm,
            cfg.positions,
            cfg.attn_impl,
        )
        self.pos_ff = PositionwiseFF(cfg.d_model, cfg.d_inner, cfg.dropout, cfg.pre_lnorm)

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
        """``x [B, T, D]``, ``mem [B, M, D]`` -> ``[B, T, D]`` (see the attention's docs)."""
        out = self.dec_attn(x, mem, r, r_w_bias, r_r_bias, attn_mask, pos_index, head_index)
        return self.pos_ff(out)


def _to_device(t: Tensor, device: torch.device) -> Tensor:
    """Copy a small CPU tensor to ``device`` without a host sync (pinned, non-blocking)."""
    if t.device == device:
        return t
    if device.type == "cuda" and t.device.type == "cpu":
        return t.pin_memory().to(device, non_blocking=True)
    return t.to(device)


class TransformerXL(nn.Module):
    """Transformer-XL LM; see the module docstring and ``docs/DESIGN.md``."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        d_embed = cfg.d_embed_resolved
        self.n_layer, self.n_head, self.d_head, self.d_model = (
            cfg.n_layer,
            cfg.n_head,
            cfg.d_head,
            cfg.d_model,
        )
        self.word_emb = AdaptiveEmbedding(cfg.n_token, d_embed, cfg.d_model, cfg.cutoffs, cfg.div_val)
        self.drop = nn.Dropout(cfg.dropout)
        layers = [DecoderLayer(cfg) for _ in range(cfg.n_layer)]
        # Dynamic Layer Tying (arXiv 2401.12819): a stack whose tied layers own no weights.
        self.layers = (
            nn.ModuleList(layers)
            if cfg.tying is None
            else TiedStack(layers, lambda: DecoderLayer(cfg), cfg.tying)
        )
        self.crit = ProjectedAdaptiveLogSoftmax(cfg.n_token, d_embed, cfg.d_model, cfg.cutoffs, cfg.div_val)
        self.pos_emb = PositionalEmbedding(cfg.d_model)
        self.r_w_bias = nn.Parameter(torch.empty(cfg.n_head, cfg.d_head))  # u, shared by layers
        self.r_r_bias = nn.Parameter(torch.empty(cfg.n_head, cfg.d_head))  # v, shared by layers
        self.reset_parameters()
        self._tie()
        if cfg.tying is not None:
            self.layers.tying.start()  # every layer but the first tied to layer 0
        self.train_context = Context.of(cfg)  # what forward uses when no context is passed

    # ------------------------------------------------------------------ setup
    def _tie(self) -> None:
        """Weight and projection tying as the original constructor (shared storage)."""
        cfg = self.cfg
        if cfg.tie_weight:
            for i in range(len(self.crit.out_layers)):
                self.crit.out_layers[i].weight = self.word_emb.emb_layers[i].weight
        for i, tie in enumerate(cfg.tie_projs_list):
            if tie and cfg.div_val == 1 and cfg.d_model != cfg.d_embed_resolved:
                self.crit.out_projs[i] = self.word_emb.emb_projs[0]
            elif tie and cfg.div_val != 1:
                self.crit.out_projs[i] = self.word_emb.emb_projs[i]

    def _init_weight(self, w: Tensor) -> None:
        if self.cfg.init == "uniform":
            nn.init.uniform_(w, -self.cfg.init_range, self.cfg.init_range)
        else:
            nn.init.normal_(w, 0.0, self.cfg.init_std)

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """The original ``weights_init``: Linear/Embedding/cluster weights and u/v biases
        from ``init`` (normal ``init_std`` or uniform ``init_range``), projections
        ``N(0, proj_init_std)``, LayerNorm weights ``N(1, init_std)``, biases 0."""
        for m in self.modules():
            if isinstance(m, nn.Linear):
                self._init_weight(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Embedding):
                self._init_weight(m.weight)
            elif isinstance(m, nn.LayerNorm):
                nn.init.normal_(m.weight, 1.0, self.cfg.init_std)
                nn.init.zeros_(m.bias)
            elif isinstance(m, AdaptiveEmbedding):
                for p in m.emb_projs:
                    nn.init.normal_(p, 0.0, self.cfg.proj_init_std)
            elif isinstance(m, ProjectedAdaptiveLogSoftmax):
                if m.n_clusters > 0:
                    self._init_weight(m.cluster_weight)
                    nn.init.zeros_(m.cluster_bias)
                for p in m.out_projs:
                    nn.init.normal_(p, 0.0, self.cfg.proj_init_std)
        self._init_weight(self.r_w_bias)
        self._init_weight(self.r_r_bias)

    # ------------------------------------------------------------------ plans
    def _check_plan(self, plan: StepPlan) -> None:
        if plan.skip is not None:
            require(
                len(plan.skip) == self.n_layer,
                f"plan.skip has {len(plan.skip)} entries for {self.n_layer} layers",
            )
        if plan.head_index is not None:
            require(
                tuple(plan.head_index.shape) == (self.n_layer, self.n_head),
                f"plan.head_index has shape {tuple(plan.head_index.shape)}; "
                f"expected [n_layer, n_head] = [{self.n_layer}, {self.n_head}]",
            )

    # ------------------------------------------------------------------ forward
    def forward(
        self,
        input_ids: Tensor,
        targets: Tensor | None = None,
        mems: Memory | None = None,
        plan: StepPlan | None = None,
        context: Context | None = None,
    ) -> LMOutput:
        """One segment.

        Args:
            input_ids: ``[B, T]`` int64.
            targets: ``[B, T']`` int64 with ``T' <= T`` (scored on the last ``T'`` steps) or None.
            mems: :class:`Memory` from the previous segment, or ``None`` (stream start).
            plan: what this training step skips and mixes; ``None`` (and any plan in evaluation
                mode) is a plain Transformer-XL step.
            context: memory length, ext_len, clamp_len, same_length; ``None`` = the config's.
        """
        require(input_ids.dim() == 2, f"input_ids must be [B, T], got shape {tuple(input_ids.shape)}")
        bsz, qlen = input_ids.shape
        ctx = self.train_context if context is None else context
        if self.training and plan is not None:
            self._check_plan(plan)
        else:
            plan = StepPlan()
        skip = plan.skip if plan.skip is not None else (False,) * self.n_layer

        word_emb = self.word_emb(input_ids)  # [B, T, D]
        device, dtype = word_emb.device, word_emb.dtype
        if mems is None:
            mems = Memory.empty(self.n_layer, bsz, self.d_model, device, dtype)
        require(
            mems.n_layer == self.n_layer,
            f"mems has {mems.n_layer} layers but the model has {self.n_layer}; pass the "
            "memory returned by this model (or None at the start of a stream)",
        )
        start = mems.next_position
        seg_pos = torch.arange(start, start + qlen)  # [T] CPU int64 absolute positions

        # Position table length per computed layer: one row per key on the contiguous
        # path, or up to the largest true distance on the gather path.
        retain_contiguous = self.cfg.skip is not None and self.cfg.skip.retain_positions == "contiguous"
        r_lens, gather = mems.position_rows(qlen, skip, retain_contiguous)
        r_max = max(r for r, s in zip(r_lens, skip, strict=True) if not s) if not all(skip) else qlen

        pos_seq = torch.arange(r_max - 1, -1, -1.0, device=device)  # [R] fp32: R-1 .. 0
        if ctx.clamp_len > 0:
            pos_seq = pos_seq.clamp(max=ctx.clamp_len)
        pos_emb = self.pos_emb(pos_seq).to(dtype)  # [R, D]
        core = self.drop(word_emb)  # [B, T, D]
        pos_emb = self.drop(pos_emb)  # [R, D]

        head_rows: list[Tensor | None] = [None] * self.n_layer
        if plan.head_index is not None:
            mixed = [not is_identity(plan.head_index[layer]) for layer in range(self.n_layer)]
            if any(mixed):
                index_dev = _to_device(plan.head_index.long(), device)  # [n_layer, H]
                head_rows = [index_dev[layer] if mixed[layer] else None for layer in range(self.n_layer)]

        masks: dict[int, Tensor] = {}
        states, positions = list(mems.states), list(mems.positions)
        for layer, block in enumerate(self.layers):
            if skip[layer]:  # Skip-Retain: identity, memory (states and positions) retained
                continue
            mem_l, mlen = mems.states[layer], mems.mlen(layer)
            if mlen not in masks:
                masks[mlen] = attention_mask(qlen, mlen, ctx.same_length, ctx.mem_len, device)  # [T, K]
            r = pos_emb[r_max - r_lens[layer] :]  # [R_l, D]
            pos_index = None
            if gather[layer]:
                pos_index = self._pos_index(
                    mems.positions[layer], seg_pos, r_lens[layer], ctx.clamp_len, device
                )
            states[layer], positions[layer] = update_memory(
                mem_l, mems.positions[layer], core, seg_pos, ctx.mem_len, ctx.ext_len
            )
            core = block(
                core, mem_l, r, self.r_w_bias, self.r_r_bias, masks[mlen], pos_index, head_rows[layer]
            )
        hidden = self.drop(core)  # [B, T, D]
        new_mems = Memory(tuple(states), tuple(positions), start + max(0, qlen - ctx.ext_len))

        nll = loss = None
        if targets is not None:
            require(
                targets.dim() == 2 and targets.size(0) == bsz and targets.size(1) <= qlen,
                f"targets must be [B, T'] with T' <= T; got {tuple(targets.shape)} for input "
                f"{tuple(input_ids.shape)}",
            )
            tgt_len = targets.size(1)
            pred = hidden[:, qlen - tgt_len :].reshape(-1, self.d_model)  # [B*T', D]
            nll = self.crit(pred, targets.reshape(-1)).view(bsz, tgt_len)  # [B, T'] fp32
            loss = nll.mean()
        return LMOutput(nll=nll, loss=loss, mems=new_mems, hidden=hidden, plan=plan)

    def _pos_index(
        self, mem_pos: Tensor, seg_pos: Tensor, r_len: int, clamp_len: int, device: torch.device
    ) -> Tensor:
        """Gather-path rows of the position table for a non-contiguous memory.

        ``relative``: ``[T, K]`` rows of the true distances ``pos(i) - pos(j)``;
        ``segment_end``: ``[1, K]`` rows of each key's distance to the segment's last step.
        """
        key_pos = _to_device(torch.cat([mem_pos, seg_pos]), device)  # [K]
        first, qlen = int(seg_pos[0]), seg_pos.numel()
        if self.cfg.positions == "segment_end":
            query_pos = torch.full((1,), first + qlen - 1, device=device, dtype=torch.long)  # [1]
        else:
            query_pos = torch.arange(first, first + qlen, device=device)  # [T]
        dist = relative_distances(query_pos, key_pos, clamp_len)  # [T or 1, K]
        return position_rows(dist, r_len)  # [T or 1, K]

    # ------------------------------------------------------------------ helpers
    def log_prob(self, hidden: Tensor) -> Tensor:
        """``hidden [..., d_model]`` -> ``[N, n_token]`` fp32 log-probabilities."""
        return self.crit.log_prob(hidden.reshape(-1, self.d_model))

    def num_parameters(self) -> int:
        """Number of distinct parameters (tied ones counted once)."""
        return sum(p.numel() for p in self.parameters())
