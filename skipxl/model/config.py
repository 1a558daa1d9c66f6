"""Model configuration: Transformer-XL hyper-parameters, Skip-Retain and cross-head settings.

Field names follow the original Transformer-XL PyTorch code (Dai et al. 2019,
``kimiyoung/transformer-xl``, ``MemTransformerLM``) so that a checkpoint's constructor
arguments map one to one (see :mod:`skipxl.convert`). Registries are strings, never
magic integers.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

from skipxl.config_io import from_dict, to_dict
from skipxl.errors import SkipxlError, require
from skipxl.model.context import Context
from skipxl.model.heads import CrossHeadConfig
from skipxl.model.tying import TyingConfig

POSITIONS = ("relative", "segment_end")
"""How keys are scored by position.

* ``"relative"``: Transformer-XL's relative position term: query i and key j are scored
  with the sinusoid of their distance ``pos(i) - pos(j)`` (rel-shift trick).
* ``"segment_end"``: the paper's released code (arXiv 2311.08123): each key is scored by
  its distance to the *end of the current segment*, the same for every query (no shift).
"""

RETAIN_POSITIONS = ("true", "contiguous")
"""Positions of a retained (skipped-layer) memory: ``"true"`` = the real absolute distance
of every memory slot (the paper's Skip-Retain); ``"contiguous"`` = pretend the memory
is adjacent to the current segment (ablation)."""

ATTN_IMPLS = ("eager", "sdpa", "flex")
"""How the attention scores are turned into the attended values (same numbers, different kernels).

* ``"eager"``: the original algorithm, kept as the reference: the content and position
  score tensors are materialised, rel-shifted or gathered, added, soft-maxed in fp32 and
  multiplied by the values (three einsums).
* ``"sdpa"``: ``torch.nn.functional.scaled_dot_product_attention`` with ``(q + u)`` as the
  query and the (shifted or gathered) position term plus the mask as an additive bias; the
  probabilities are never materialised for backward.
* ``"flex"``: ``torch.nn.attention.flex_attention`` with ``(q + u)`` as the query and the
  position term read inside ``score_mod`` from the unshifted ``(q + v) R^T`` table by
  distance (rel-shift as index arithmetic), masks as block masks. Forward only on the CPU.

The fused paths refuse ``dropatt > 0``: dropout on the attention probabilities needs the
probabilities, which a fused kernel never materialises, and a fused kernel's own dropout
draws from a different random stream, so no run could reproduce the eager numbers.
"""

SKIP_SCHEDULES = ("linear", "constant", "list")
SKIPPED_GRAD = ("none", "zero")
INITS = ("normal", "uniform")


@dataclass(frozen=True)
class SkipRetainConfig:
    """Skip-Retain (arXiv 2311.08123, Sec. "Skip-Retain"): per-layer skip probabilities.

    At each training step every layer is skipped with probability ``pskip(l)``; a skipped
    layer is the identity and its memory is retained. Phase switching (phase 1 with
    skipping, phase 2 without) is the engine's business, not this config's.

    Attributes:
        schedule: ``"linear"`` (default, the paper's released code): ``pskip(l) = p * l / N``
            for 0-indexed layer ``l`` of ``N``; with ``p = 0.5`` and ``N = 15`` this is
            ``0, 1/30, ..., 13/30`` and the last layer 0 (mean 0.20). ``"constant"``: ``p``
            for every layer. ``"list"``: the explicit per-layer ``probs``.
        p: slope (linear) or value (constant) of the schedule, in [0, 1].
        probs: explicit per-layer probabilities for ``schedule="list"`` (length n_layer).
        protect_ends: never skip the first and the last layer (the released code does so
            for the linear schedule; its "uniform" option skips every layer, i.e.
            ``schedule="constant", protect_ends=False``). Ignored for ``"list"``.
        retain_positions: one of :data:`RETAIN_POSITIONS`.
        skipped_grad: what the optimizer sees for a skipped layer's parameters that step.
            ``"none"``: no gradient at all (``p.grad`` stays ``None``/unchanged), so plain
            ``torch.optim.Adam`` skips them entirely: no moment update, no weight decay,
            no step. ``"zero"``: the skipped layers take part in the loss with weight 0
            (``loss + 0 * sum(params)``), so they receive an explicit zero gradient and Adam's
            momentum keeps moving them (``m <- beta1 m``, the update ``m / sqrt(v)`` is
            generally non-zero). Under DeepSpeed the engine honours ``"none"`` at ZeRO
            stage 0 in fp32; with ZeRO 1-3 or bf16/fp16 the flat gradient buffers turn an
            absent gradient into a zero slice, so it behaves like ``"zero"`` (with a warning).
    """

    schedule: str = "linear"
    p: float = 0.5
    probs: tuple[float, ...] = ()
    protect_ends: bool = True
    retain_positions: str = "true"
    skipped_grad: str = "none"

    def __post_init__(self) -> None:
        object.__setattr__(self, "probs", tuple(float(x) for x in self.probs))
        require(
            self.schedule in SKIP_SCHEDULES,
            f"skip schedule {self.schedule!r} is unknown; choose one of {SKIP_SCHEDULES}",
        )
        require(0.0 <= self.p <= 1.0, f"skip p must be in [0, 1], got {self.p}")
        require(
            all(0.0 <= x <= 1.0 for x in self.probs),
            f"skip probabilities must each be in [0, 1], got {self.probs}",
        )
        if self.schedule == "list":
            require(len(self.probs) > 0, "skip schedule 'list' needs probs=(p_0, ..., p_{N-1})")
        else:
            require(
                not self.probs,
                f"skip probs={self.probs} are only used with schedule='list'; "
                "set schedule='list' or drop probs",
            )
        require(
            self.retain_positions in RETAIN_POSITIONS,
            f"retain_positions {self.retain_positions!r} is unknown; choose one of {RETAIN_POSITIONS}",
        )
        require(
            self.skipped_grad in SKIPPED_GRAD,
            f"skipped_grad {self.skipped_grad!r} is unknown; choose one of {SKIPPED_GRAD}",
        )


@dataclass(frozen=True)
class ModelConfig:
    """Transformer-XL language model (attn_type 0, Dai et al. 2019) plus the paper's options.

    ``tie_projs=True`` means the original's ``[False] + [True] * len(cutoffs)`` (the head
    projection untied, tail projections tied); ``False`` means nothing tied; a tuple of
    ``len(cutoffs) + 1`` booleans is taken literally as in the original constructor.
    ``clamp_len=-1`` disables clamping. ``skip=None`` / ``cross_head=None`` switch the
    methods off (the baseline). ``tying`` (:class:`~skipxl.model.tying.TyingConfig`) builds
    the layer stack for Dynamic Layer Tying (arXiv 2401.12819): layers 1..N-1 start tied to
    layer 0; ``None`` = ordinary independent layers.
    methods off (the baseline). ``attn_impl`` picks the attention kernel (one of
    :data:`ATTN_IMPLS`); every choice computes the same numbers up to fp32 rounding.
    """

    n_token: int
    n_layer: int
    n_head: int
    d_model: int
    d_head: int
    d_inner: int
    dropout: float = 0.1
    dropatt: float = 0.0
    tgt_len: int = 128
    mem_len: int = 128
    d_embed: int | None = None
    ext_len: int = 0
    clamp_len: int = -1
    same_length: bool = False
    pre_lnorm: bool = False
    cutoffs: tuple[int, ...] = ()
    div_val: int = 1
    tie_weight: bool = True
    tie_projs: bool | tuple[bool, ...] = True
    init: str = "normal"
    init_range: float = 0.1
    init_std: float = 0.02
    proj_init_std: float = 0.01
    positions: str = "relative"
    skip: SkipRetainConfig | None = None
    cross_head: CrossHeadConfig | None = None
    plan_seed: int = 0
    tying: TyingConfig | None = None
    attn_impl: str = "eager"

    def __post_init__(self) -> None:
        object.__setattr__(self, "cutoffs", tuple(int(c) for c in self.cutoffs))
        if isinstance(self.tie_projs, (list, tuple)):
            object.__setattr__(self, "tie_projs", tuple(bool(t) for t in self.tie_projs))
        if isinstance(self.skip, dict):
            object.__setattr__(self, "skip", from_dict(SkipRetainConfig, self.skip))
        if isinstance(self.cross_head, dict):
            object.__setattr__(self, "cross_head", from_dict(CrossHeadConfig, self.cross_head))
        if isinstance(self.tying, dict):
            object.__setattr__(self, "tying", from_dict(TyingConfig, self.tying))
        for name in ("n_token", "n_layer", "n_head", "d_model", "d_head", "d_inner", "tgt_len"):
            value = getattr(self, name)
            require(
                isinstance(value, int) and value >= 1,
                f"{name} must be a positive int, got {value!r}",
            )
        require(
            self.d_model % 2 == 0,
            f"d_model must be even for the sinusoidal position embedding, got {self.d_model}",
        )
        require(self.d_embed is None or self.d_embed >= 1, f"d_embed must be >= 1, got {self.d_embed}")
        require(0.0 <= self.dropout < 1.0, f"dropout must be in [0, 1), got {self.dropout}")
        require(0.0 <= self.dropatt < 1.0, f"dropatt must be in [0, 1), got {self.dropatt}")
        Context.of(self)  # the training context: mem_len, ext_len, clamp_len, same_length
        self._check_adaptive()
        require(self.init in INITS, f"init {self.init!r} is unknown; choose one of {INITS}")
        for name in ("init_range", "init_std", "proj_init_std"):
            require(getattr(self, name) > 0, f"{name} must be > 0, got {getattr(self, name)}")
        require(
            self.positions in POSITIONS,
            f"positions {self.positions!r} is unknown; choose one of {POSITIONS}",
        )
        require(
            self.skip is None or isinstance(self.skip, SkipRetainConfig),
            f"skip must be a SkipRetainConfig or None, got {type(self.skip).__name__}",
        )
        require(
            self.cross_head is None or isinstance(self.cross_head, CrossHeadConfig),
            f"cross_head must be a CrossHeadConfig or None, got {type(self.cross_head).__name__}",
        )
        require(
            self.tying is None or isinstance(self.tying, TyingConfig),
            f"tying must be a TyingConfig or None, got {type(self.tying).__name__}",
        )
        require(self.tying is None or self.n_layer >= 2, "layer tying needs at least 2 layers")
        if self.skip is not None and self.skip.schedule == "list":
            require(
                len(self.skip.probs) == self.n_layer,
                f"skip probs has {len(self.skip.probs)} entries but the model has "
                f"{self.n_layer} layers; give one probability per layer",
            )
        require(
            self.attn_impl in ATTN_IMPLS,
            f"attn_impl {self.attn_impl!r} is unknown; choose one of {ATTN_IMPLS}",
        )
        require(
            self.attn_impl == "eager" or self.dropatt == 0.0,
            f"attn_impl={self.attn_impl!r} cannot apply dropatt={self.dropatt} exactly (a fused kernel "
            "never materialises the attention probabilities); use attn_impl='eager' or dropatt=0",
        )
        require(
            isinstance(self.plan_seed, int) and self.plan_seed >= 0,
            f"plan_seed must be an int >= 0, got {self.plan_seed!r}",
        )

    def _check_adaptive(self) -> None:
        c = self.cutoffs
        require(
            all(0 < x < self.n_token for x in c),
            f"cutoffs {c} must lie strictly between 0 and n_token={self.n_token}; "
            "drop the cutoffs that are >= n_token",
        )
        require(
            all(a < b for a, b in itertools.pairwise(c)),
            f"cutoffs {c} must be strictly increasing",
        )
        require(
            isinstance(self.div_val, int) and self.div_val >= 1,
            f"div_val must be an int >= 1, got {self.div_val!r}",
        )
        d_embed = self.d_embed_resolved
        if self.div_val > 1:
            smallest = d_embed // self.div_val ** len(c)
            require(
                smallest >= 1,
                f"div_val={self.div_val} with {len(c)} cutoffs shrinks the last cluster's "
                f"embedding to {smallest} dims (d_embed={d_embed}); lower div_val or use fewer cutoffs",
            )
        if isinstance(self.tie_projs, tuple):
            require(
                len(self.tie_projs) == len(c) + 1,
                f"tie_projs has {len(self.tie_projs)} entries; it needs len(cutoffs) + 1 = "
                f"{len(c) + 1} (one per cluster) or a single bool",
            )
        else:
            require(isinstance(self.tie_projs, bool), "tie_projs must be a bool or a tuple of bools")

    # ----------------------------------------------------------------- derived values
    @property
    def d_embed_resolved(self) -> int:
        """``d_embed``, defaulting to ``d_model`` as in the original."""
        return self.d_model if self.d_embed is None else self.d_embed

    @property
    def tie_projs_list(self) -> tuple[bool, ...]:
        """Per-cluster projection tying, in the original constructor's list form."""
        if isinstance(self.tie_projs, tuple):
            return self.tie_projs
        return (False,) + (bool(self.tie_projs),) * len(self.cutoffs)

    def to_dict(self) -> dict:
        """Plain JSON-able dict (round-trips through :meth:`from_dict`)."""
        return to_dict(self)

    @classmethod
    def from_dict(cls, data: dict) -> ModelConfig:
        """Rebuild from :meth:`to_dict` output; unknown fields raise :class:`SkipxlError`."""
        if not isinstance(data, dict):
            raise SkipxlError(f"expected a dict for ModelConfig, got {type(data).__name__}")
        return from_dict(cls, data)
