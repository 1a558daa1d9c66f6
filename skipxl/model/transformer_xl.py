"""Transformer-XL language model with Skip-Retain and stochastic cross-head attention.

The baseline is the original Transformer-XL (Dai et al. 2019; ``MemTransformerLM`` with
``attn_type=0``): adaptive input, sinusoidal relative positions, segment recurrence over
per-layer memories of the layer *inputs*, projected adaptive softmax. Module and
parameter names follow the original so that :mod:`skipxl.convert` maps checkpoints by
name. Public tensors are batch-major (``[B, T, ...]``).

The paper's methods (Vishnu & Chandra Sekhar, arXiv 2311.08123) act through a
:class:`StepPlan` drawn per training step from ``model.plan_generator`` (a CPU generator
seeded from ``cfg.plan_seed``, never the global RNG, so dropout is unaffected and every
data-parallel rank seeded alike draws the same plan):

* **Skip-Retain**: a skipped layer is the identity (not computed) and its memory is
  retained unchanged, states *and* absolute positions; attention to a retained memory
  uses true distances (gather path) unless ``retain_positions="contiguous"``.
* **Cross-head**: per layer a head index ``[H]`` mixes content keys, values and
  positional keys.

In evaluation mode (``model.eval()``) the plan is ignored: no skipping, no mixing.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from skipxl.errors import require
from skipxl.model.adaptive import AdaptiveEmbedding, ProjectedAdaptiveLogSoftmax
from skipxl.model.attention import PositionalEmbedding, RelPartialLearnableAttention
from skipxl.model.config import ModelConfig
from skipxl.model.functional import (
    attention_mask,
    draw_skip_mask,
    position_rows,
    relative_distances,
    skip_probabilities,
    update_memory,
)
from skipxl.model.heads import draw_head_indices, is_identity
from skipxl.model.memory import Memory


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
        self.layers = nn.ModuleList([DecoderLayer(cfg) for _ in range(cfg.n_layer)])
        self.crit = ProjectedAdaptiveLogSoftmax(cfg.n_token, d_embed, cfg.d_model, cfg.cutoffs, cfg.div_val)
        self.pos_emb = PositionalEmbedding(cfg.d_model)
        self.r_w_bias = nn.Parameter(torch.empty(cfg.n_head, cfg.d_head))  # u, shared by layers
        self.r_r_bias = nn.Parameter(torch.empty(cfg.n_head, cfg.d_head))  # v, shared by layers
        self.reset_parameters()
        self._tie()
        self.tgt_len, self.mem_len, self.ext_len = cfg.tgt_len, cfg.mem_len, cfg.ext_len
        self.clamp_len, self.same_length = cfg.clamp_len, cfg.same_length
        self.skip_probs = skip_probabilities(cfg.skip, cfg.n_layer)
        self.skip_enabled = cfg.skip is not None  # the engine turns it off for phase 2
        self.plan_generator = torch.Generator(device="cpu")
        self.plan_generator.manual_seed(cfg.plan_seed)

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

    def reset_context(
        self,
        tgt_len: int | None = None,
        mem_len: int | None = None,
        ext_len: int | None = None,
        clamp_len: int | None = None,
        same_length: bool | None = None,
    ) -> None:
        """Change the context for evaluation (the original ``reset_length`` plus clamp_len
        and same_length); ``None`` keeps a value. Memories already built keep their size
        until the next update trims or grows them to the new ``mem_len``."""
        new = dict(self.context)
        given = dict(
            tgt_len=tgt_len, mem_len=mem_len, ext_len=ext_len, clamp_len=clamp_len, same_length=same_length
        )
        new.update({k: v for k, v in given.items() if v is not None})
        require(new["tgt_len"] >= 1, f"tgt_len must be >= 1, got {new['tgt_len']}")
        require(new["mem_len"] >= 0, f"mem_len must be >= 0, got {new['mem_len']}")
        require(new["ext_len"] >= 0, f"ext_len must be >= 0, got {new['ext_len']}")
        require(
            new["clamp_len"] == -1 or new["clamp_len"] > 0,
            f"clamp_len must be -1 or > 0, got {new['clamp_len']}",
        )
        require(
            not (new["same_length"] and new["mem_len"] == 0),
            "same_length=True with mem_len=0 masks every key; use same_length=False or mem_len > 0",
        )
        self.tgt_len, self.mem_len, self.ext_len = (
            int(new["tgt_len"]),
            int(new["mem_len"]),
            int(new["ext_len"]),
        )
        self.clamp_len, self.same_length = int(new["clamp_len"]), bool(new["same_length"])

    @property
    def context(self) -> dict[str, int | bool]:
        """The current context settings (see :meth:`reset_context`)."""
        return {
            "tgt_len": self.tgt_len,
            "mem_len": self.mem_len,
            "ext_len": self.ext_len,
            "clamp_len": self.clamp_len,
            "same_length": self.same_length,
        }

    # ------------------------------------------------------------------ plans
    def draw_plan(self) -> StepPlan:
        """Draw one training step's plan from ``plan_generator``.

        A fixed number of numbers is drawn per step (``n_layer`` uniforms when Skip-Retain
        is configured, even while ``skip_enabled`` is off; the cross-head draws), so the
        generator's stream does not depend on the outcomes or the phase.
        """
        skip = None
        head_index = None
        if self.cfg.skip is not None:
            mask = draw_skip_mask(self.skip_probs, self.plan_generator)
            skip = mask if self.skip_enabled else None
        if self.cfg.cross_head is not None:
            head_index = draw_head_indices(
                self.n_layer, self.n_head, self.cfg.cross_head, self.plan_generator
            )
        return StepPlan(skip=skip, head_index=head_index)

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
    ) -> LMOutput:
        """One segment.

        Args:
            input_ids: ``[B, T]`` int64.
            targets: ``[B, T']`` int64 with ``T' <= T`` (scored on the last ``T'`` steps) or None.
            mems: :class:`Memory` from the previous segment, or ``None`` (stream start).
            plan: :class:`StepPlan` (training only); ``None`` draws one when training.
        """
        require(input_ids.dim() == 2, f"input_ids must be [B, T], got shape {tuple(input_ids.shape)}")
        bsz, qlen = input_ids.shape
        if self.training:
            plan = self.draw_plan() if plan is None else plan
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
        if self.clamp_len > 0:
            pos_seq = pos_seq.clamp(max=self.clamp_len)
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
        skipped_params: list[Tensor] = []
        for layer, block in enumerate(self.layers):
            if skip[layer]:  # Skip-Retain: identity, memory (states and positions) retained
                skipped_params.extend(block.parameters())
                continue
            mem_l, mlen = mems.states[layer], mems.mlen(layer)
            if mlen not in masks:
                masks[mlen] = attention_mask(qlen, mlen, self.same_length, self.mem_len, device)  # [T, K]
            r = pos_emb[r_max - r_lens[layer] :]  # [R_l, D]
            pos_index = None
            if gather[layer]:
                pos_index = self._pos_index(mems.positions[layer], seg_pos, r_lens[layer], device)
            states[layer], positions[layer] = update_memory(
                mem_l, mems.positions[layer], core, seg_pos, self.mem_len, self.ext_len
            )
            core = block(
                core, mem_l, r, self.r_w_bias, self.r_r_bias, masks[mlen], pos_index, head_rows[layer]
            )
        hidden = self.drop(core)  # [B, T, D]
        new_mems = Memory(tuple(states), tuple(positions), start + max(0, qlen - self.ext_len))

        zero_term = None
        if skipped_params and self.cfg.skip is not None and self.cfg.skip.skipped_grad == "zero":
            # Skipped layers join the graph with weight 0: their gradient is an explicit zero.
            zero_term = torch.stack([p.sum() for p in skipped_params]).sum().to(torch.float32) * 0.0
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
            if zero_term is not None:
                nll = nll + zero_term
            loss = nll.mean()
        elif zero_term is not None:
            hidden = hidden + zero_term.to(hidden.dtype)
        return LMOutput(nll=nll, loss=loss, mems=new_mems, hidden=hidden, plan=plan)

    def _pos_index(self, mem_pos: Tensor, seg_pos: Tensor, r_len: int, device: torch.device) -> Tensor:
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
        dist = relative_distances(query_pos, key_pos, self.clamp_len)  # [T or 1, K]
        return position_rows(dist, r_len)  # [T or 1, K]

    # ------------------------------------------------------------------ helpers
    def log_prob(self, hidden: Tensor) -> Tensor:
        """``hidden [..., d_model]`` -> ``[N, n_token]`` fp32 log-probabilities."""
        return self.crit.log_prob(hidden.reshape(-1, self.d_model))

    def num_parameters(self) -> int:
        """Number of distinct parameters (tied ones counted once)."""
        return sum(p.numel() for p in self.parameters())
