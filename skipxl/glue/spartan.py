"""SPARTAN: a sparse two-level memory after every layer of a frozen encoder (arXiv 2211.16634).

Deshpande et al., "SPARTAN: Sparse Hierarchical Memory for Parameter-Efficient Transformers".
After each layer's feed-forward output ``h [B, S, H]`` (the layer's return value) the layer
returns ``h + memory(h)`` (optionally followed by a new LayerNorm). The memory has two levels:

* **parents**: ``E`` expert logits ``h W_e^T`` (``W_e [E, H]``, no bias); only the top ``k``
  are kept (the rest set to ``-inf``) and soft-maxed over ``E`` -> ``a [B, S, E]``;
* **children**: ``M`` key slots ``W_k [M, H]`` and value slots ``W_v [M, H]`` in ``E`` groups
  of ``C = M / E``. Child logits ``h W_k^T / temperature`` are soft-maxed *within each group*
  and weight that group's values -> one vector per group; the memory output is
  ``sum_e a_e * group_e``.

Two versions, as in the release, compute the same function:

* ``"v1"`` (dense): every group is computed and the masked parents contribute weight 0. Since
  ``sum_e a_e sum_c p_ec v_ec = sum_m (a_e(m) p_m) v_m``, it is two ``[B, S, M]`` matmuls.
* ``"v2"`` (sparse): only the ``k`` selected groups' keys and values are gathered and used
  (``[B, S, k, C, H]``), the compute the paper counts as "sparse".

Optional load-balancing loss (per layer ``(1/E) sum_e (mean over tokens of a_e)^2``, averaged
over layers, times ``aux_loss``): minimal when every parent is used equally.

The math lives in pure functions (:func:`parent_weights`, :func:`children_dense`,
:func:`children_sparse`, :func:`spartan_memory`, :func:`load_balance_loss`) so the two
versions can be checked against each other; :func:`attach_spartan` hooks a
:class:`SpartanMemory` onto each layer's output module of any BERT-family model without
touching the model's code. Softmaxes run in fp32.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from skipxl.errors import SkipxlError, require

SPARTAN_VERSIONS = ("v1", "v2")
#: Submodule name of the memory inside each layer's output module.
MEMORY_ATTR = "spartan_memory"


@dataclass(frozen=True)
class SpartanConfig:
    """Memory shape and routing; defaults are the released settings (E 16, M 48, k 8, T 1.6)."""

    parents: int = 16
    children: int = 48
    topk: int = 8
    temperature: float = 1.6
    version: str = "v1"
    aux_loss: float = 0.0
    layernorm: bool = False
    init_std: float = 0.02

    def __post_init__(self) -> None:
        require(self.parents > 0, f"spartan_parents must be positive, got {self.parents}")
        require(
            self.children > 0 and self.children % self.parents == 0,
            f"spartan_children ({self.children}) must be a positive multiple of spartan_parents "
            f"({self.parents}): children are split into equal groups, one per parent",
        )
        require(
            1 <= self.topk <= self.parents,
            f"spartan_topk must be in [1, spartan_parents={self.parents}], got {self.topk}",
        )
        require(self.temperature > 0, f"spartan_temperature must be positive, got {self.temperature}")
        require(
            self.version in SPARTAN_VERSIONS,
            f"spartan_version {self.version!r} is unknown; choose one of {SPARTAN_VERSIONS}",
        )
        require(self.aux_loss >= 0, f"spartan_aux_loss must be >= 0, got {self.aux_loss}")
        require(self.init_std > 0, f"spartan init_std must be positive, got {self.init_std}")

    @property
    def group(self) -> int:
        """Children per parent, ``C = M / E``."""
        return self.children // self.parents


def memory_param_count(hidden: int, cfg: SpartanConfig) -> int:
    """Parameters of one layer's memory: ``E H + 2 M H`` (+ ``2 H`` with the LayerNorm)."""
    return cfg.parents * hidden + 2 * cfg.children * hidden + (2 * hidden if cfg.layernorm else 0)


# ----------------------------------------------------------------------------- pure functions


def _at_least_fp32(x: Tensor) -> Tensor:
    """bf16/fp16 -> fp32 for softmax; fp32/fp64 unchanged."""
    return x.to(torch.promote_types(x.dtype, torch.float32))


def parent_weights(h: Tensor, w_parent: Tensor, topk: int) -> tuple[Tensor, Tensor, Tensor]:
    """Top-k masked softmax over parents.

    Returns ``(a [B, S, E], top_a [B, S, k], top_idx [B, S, k])``: the full weights (exact zeros
    outside the top k), the kept weights and their parent indices (in descending logit order).
    """
    logits = _at_least_fp32(h @ w_parent.t())  # [B, S, H] @ [H, E] -> [B, S, E]
    top_val, top_idx = logits.topk(topk, dim=-1)  # [B, S, k]
    masked = torch.full_like(logits, float("-inf")).scatter(-1, top_idx, top_val)  # [B, S, E]
    a = torch.softmax(masked, dim=-1)  # [B, S, E], zero where masked
    top_a = torch.softmax(top_val, dim=-1)  # [B, S, k], the same numbers gathered
    return a, top_a, top_idx


def children_dense(h: Tensor, a: Tensor, w_key: Tensor, w_value: Tensor, parents: int, temperature: float):
    """Version 1: all ``E`` groups, weighted by ``a`` (zeros for unselected parents) -> ``[B, S, H]``."""
    B, S, _ = h.shape
    logits = _at_least_fp32(h @ w_key.t()) / temperature  # [B, S, M]
    p = torch.softmax(logits.view(B, S, parents, -1), dim=-1)  # [B, S, E, C], per-group softmax
    weight = (a.unsqueeze(-1) * p).reshape(B, S, -1)  # [B, S, E, C] -> [B, S, M]
    return weight.to(w_value.dtype) @ w_value  # [B, S, M] @ [M, H] -> [B, S, H]


def children_sparse(
    h: Tensor,
    top_a: Tensor,
    top_idx: Tensor,
    w_key: Tensor,
    w_value: Tensor,
    parents: int,
    temperature: float,
) -> Tensor:
    """Version 2: gather only the ``k`` selected groups' keys and values -> ``[B, S, H]``."""
    M, H = w_key.shape
    keys = w_key.view(parents, M // parents, H)[top_idx]  # [E, C, H][B, S, k] -> [B, S, k, C, H]
    values = w_value.view(parents, M // parents, H)[top_idx]  # [B, S, k, C, H]
    logits = _at_least_fp32(torch.einsum("bsh,bskch->bskc", h, keys)) / temperature  # [B, S, k, C]
    p = torch.softmax(logits, dim=-1)  # [B, S, k, C], per-group softmax
    weight = (top_a.unsqueeze(-1) * p).to(values.dtype)  # [B, S, k, C]
    return torch.einsum("bskc,bskch->bsh", weight, values)  # [B, S, H]


@dataclass
class MemoryOut:
    """What one memory read produced: ``out [B, S, H]`` and the parent routing."""

    out: Tensor
    a: Tensor  # [B, S, E] parent weights (zeros outside the top k)
    top_idx: Tensor  # [B, S, k] selected parents


def spartan_memory(
    h: Tensor, w_parent: Tensor, w_key: Tensor, w_value: Tensor, cfg: SpartanConfig
) -> MemoryOut:
    """The memory read ``memory(h)`` of one layer (without the residual) in ``cfg.version``."""
    a, top_a, top_idx = parent_weights(h, w_parent, cfg.topk)
    if cfg.version == "v1":
        out = children_dense(h, a, w_key, w_value, cfg.parents, cfg.temperature)
    else:
        out = children_sparse(h, top_a, top_idx, w_key, w_value, cfg.parents, cfg.temperature)
    return MemoryOut(out=out.to(h.dtype), a=a, top_idx=top_idx)


def load_balance_loss(a: Tensor, mask: Tensor | None = None) -> Tensor:
    """``(1/E) sum_e (mean over real tokens of a_e)^2`` for one layer (fp32 scalar).

    ``a [B, S, E]``; ``mask [B, S]`` (1 = real token) excludes padding from the mean. Equals
    ``1/E^2`` when usage is uniform, ``1/E`` when one parent takes everything.
    """
    a = _at_least_fp32(a)
    if mask is None:
        usage = a.mean(dim=(0, 1))  # [E]
    else:
        m = mask.to(a.dtype).unsqueeze(-1)  # [B, S, 1]
        usage = (a * m).sum(dim=(0, 1)) / m.sum().clamp_min(1.0)  # [E]
    return usage.pow(2).mean()


def parent_counts(top_idx: Tensor, parents: int, mask: Tensor | None = None) -> Tensor:
    """How many (real) tokens selected each parent: ``[E]`` float counts (no host sync)."""
    chosen = F.one_hot(top_idx, parents).sum(dim=-2).float()  # [B, S, k, E] -> [B, S, E]
    if mask is not None:
        chosen = chosen * mask.to(chosen.dtype).unsqueeze(-1)  # [B, S, E]
    return chosen.sum(dim=(0, 1))  # [E]


# ----------------------------------------------------------------------------- modules


@dataclass
class SpartanState:
    """Per-model mutable state shared by the memories: the batch's padding mask, the layers'
    load-balancing terms of the latest forward, and (when recording) parent-usage counts."""

    mask: Tensor | None = None
    aux_terms: list[Tensor] = field(default_factory=list)
    recording: bool = False
    counts: dict[int, Tensor] = field(default_factory=dict)  # layer -> [E]
    tokens: dict[int, Tensor] = field(default_factory=dict)  # layer -> scalar
    #: When a dict: every forward appends each layer's selected parents ``[B, S, k]`` (padding
    #: included; the caller holds the mask) - the per-token routing of skipxl.glue.specificity.
    selections: dict[int, list[Tensor]] | None = None


class SpartanMemory(nn.Module):
    """One layer's memory: ``h -> h + memory(h)`` (then the optional LayerNorm)."""

    def __init__(self, hidden: int, cfg: SpartanConfig, layer_idx: int, state: SpartanState, eps: float):
        super().__init__()
        self.cfg, self.layer_idx = cfg, layer_idx
        self.state = state  # not a submodule: shared, holds no parameters
        self.parent = nn.Parameter(torch.empty(cfg.parents, hidden))  # W_e [E, H]
        self.key = nn.Parameter(torch.empty(cfg.children, hidden))  # W_k [M, H]
        self.value = nn.Parameter(torch.empty(cfg.children, hidden))  # W_v [M, H]
        for w in (self.parent, self.key, self.value):
            nn.init.normal_(w, std=cfg.init_std)
        self.LayerNorm = nn.LayerNorm(hidden, eps=eps) if cfg.layernorm else None

    def forward(self, h: Tensor) -> Tensor:
        read = spartan_memory(h, self.parent, self.key, self.value, self.cfg)
        state = self.state
        if self.training and self.cfg.aux_loss > 0:
            state.aux_terms.append(load_balance_loss(read.a, state.mask))
        if state.recording:
            c = parent_counts(read.top_idx, self.cfg.parents, state.mask).detach()
            n = (
                state.mask.sum() if state.mask is not None else torch.tensor(h.shape[0] * h.shape[1])
            ).float()
            state.counts[self.layer_idx] = state.counts.get(self.layer_idx, 0) + c
            state.tokens[self.layer_idx] = state.tokens.get(self.layer_idx, 0) + n
        if state.selections is not None:
            state.selections.setdefault(self.layer_idx, []).append(read.top_idx.detach())
        out = h + read.out  # [B, S, H]
        return self.LayerNorm(out) if self.LayerNorm is not None else out


def encoder_layers(model: nn.Module) -> list[nn.Module]:
    """The transformer layers of a BERT-family model (``base_model.encoder.layer``)."""
    base = getattr(model, "base_model", model)
    layers = getattr(getattr(base, "encoder", None), "layer", None)
    if layers is None:
        raise SkipxlError(
            f"{type(model).__name__} has no base_model.encoder.layer list; SPARTAN, adapters and the "
            "parameter-efficient methods support BERT-family encoders (BERT, RoBERTa, ELECTRA, MiniLM)"
        )
    return list(layers)


def _output_module(layer: nn.Module) -> nn.Module:
    out = getattr(layer, "output", None)
    if out is None or not hasattr(out, "LayerNorm"):
        raise SkipxlError(
            f"{type(layer).__name__} has no .output module with a LayerNorm (the BERT layout); "
            "this method supports BERT-family encoders"
        )
    return out


def _memory_hook(module: nn.Module, args: Any, output: Tensor) -> Tensor:
    return getattr(module, MEMORY_ATTR)(output)


def _mask_hook(state: SpartanState):
    def hook(module: nn.Module, args: Any, kwargs: dict[str, Any]) -> None:
        state.mask = kwargs.get("attention_mask")
        state.aux_terms.clear()

    return hook


def attach_spartan(model: nn.Module, cfg: SpartanConfig) -> SpartanState:
    """Add a memory after every layer's output module (a forward hook; no model code copied).

    Each memory is registered as ``<layer>.output.spartan_memory`` so its parameters are part of
    ``model.parameters()`` and the state dict. A forward pre-hook on ``model`` records the
    attention mask (padding is excluded from the load-balancing loss and usage counts).
    """
    state = SpartanState()
    hidden = int(model.config.hidden_size)
    eps = float(getattr(model.config, "layer_norm_eps", 1e-12))
    for i, layer in enumerate(encoder_layers(model)):
        out = _output_module(layer)
        if hasattr(out, MEMORY_ATTR):
            raise SkipxlError("SPARTAN is already attached to this model; attach it once")
        ref = out.LayerNorm.weight
        out.add_module(MEMORY_ATTR, SpartanMemory(hidden, cfg, i, state, eps).to(ref.device, ref.dtype))
        out.register_forward_hook(_memory_hook)
    model.register_forward_pre_hook(_mask_hook(state), with_kwargs=True)
    model.spartan_state = state  # type: ignore[assignment]
    return state


def spartan_aux_loss(model: nn.Module) -> Tensor | None:
    """``aux_loss * mean over layers`` of the latest training forward's terms (``None`` if off)."""
    state: SpartanState | None = getattr(model, "spartan_state", None)
    if state is None or not state.aux_terms:
        return None
    scale = next(m.cfg.aux_loss for m in model.modules() if isinstance(m, SpartanMemory))
    return scale * torch.stack(state.aux_terms).mean()
