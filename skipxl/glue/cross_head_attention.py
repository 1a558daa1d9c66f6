"""Stochastic cross-head attention for Hugging Face BERT-family models, without model code.

Paper (arXiv 2311.08123, "Stochastic cross-head attention", BERT/GLUE experiments): during
fine-tuning, with probability ``beta`` a head's query attends with the keys and values of
another head of the same layer; at evaluation every head reads itself. The authors released
no BERT code, so this module fixes the one place where the mixing happens:

* **where:** inside the attention function of every layer that calls transformers'
  ``AttentionInterface`` (``BertSelfAttention`` and friends), on the ``key`` and ``value``
  states of shape ``[B, H, S, d]`` *after* the Q/K/V projections (and after any KV-cache
  update) and *before* the score/softmax/weighted-sum kernel. The query and the output
  projection are untouched: output slot ``i`` is ``softmax(q_i k_j^T / sqrt(d)) v_j`` with
  ``j = index[i]``, written where head ``i``'s output always goes.
* **how:** through :func:`skipxl.model.heads.mix_heads` with an index drawn by
  :func:`skipxl.model.heads.draw_head_index` -- the very same pure functions as the
  Transformer-XL variant. ``"permutation"`` mode (default): one head permutation per layer
  and forward pass with probability ``beta``; ``"per_head"``: each head independently.
* **when:** only while ``module.training`` is true (transformers 5.x passes the attention
  module itself as the first argument; ``module.layer_idx`` names the layer). In eval mode the
  stock function is called with the untouched tensors, so outputs are bitwise the stock model.
* **randomness:** draws come from a dedicated ``torch.Generator``, never the global RNG used by
  dropout, so ``beta = 0`` trains bitwise like the stock model.

Two implementation names are registered (with the matching mask builders, so padding masks are
created exactly as for the stock implementation):

* ``"cross_head_sdpa"`` wraps transformers' stock ``sdpa`` attention function;
* ``"cross_head_eager"`` wraps the model's own ``eager_attention_forward`` (looked up in the
  Python module that defines the attention class, e.g. ``modeling_bert``).

Select one with ``from_pretrained(..., attn_implementation="cross_head_sdpa")`` or
``model.set_attn_implementation(...)``; settings come from ``config.cross_head_beta``,
``config.cross_head_mode`` and ``config.cross_head_seed`` (defaults 0.1, ``"permutation"``, 0;
set them on an ``AutoConfig`` and pass ``config=`` -- transformers 5 forwards unknown
``from_pretrained`` kwargs to the model constructor, not the config). :func:`enable_cross_head`
does all of this for an already loaded model and gives every layer one shared generator.

Not supported: gradient checkpointing (the recomputed forward would draw a new index).
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from skipxl.errors import SkipxlError
from skipxl.model.heads import CrossHeadConfig, draw_head_index, is_identity, mix_heads

#: Registered implementation name -> the stock implementation it wraps.
CROSS_HEAD_IMPLEMENTATIONS: dict[str, str] = {
    "cross_head_sdpa": "sdpa",
    "cross_head_eager": "eager",
}

#: Attribute under which each attention module holds its :class:`CrossHeadState`.
STATE_ATTR = "cross_head_state"

#: Defaults used when a model selects the implementation by name only.
DEFAULT_SEED = 0


@dataclass
class CrossHeadState:
    """Mutable per-model draw state: settings, the dedicated generator, the last indices.

    ``last_index[layer_idx]`` is the head index used by that layer in the latest training
    forward (``None`` while the layer ran in eval mode); it exists for logging and tests.
    """

    cfg: CrossHeadConfig
    generator: torch.Generator
    last_index: dict[int, Tensor | None] = field(default_factory=dict)
    draws: int = 0

    def generator_state(self) -> Tensor:
        """The generator state (to checkpoint or to replay a draw in tests)."""
        return self.generator.get_state()


def make_generator(seed: int) -> torch.Generator:
    """A CPU generator used only for head draws (independent of the dropout RNG)."""
    gen = torch.Generator(device="cpu")
    gen.manual_seed(int(seed))
    return gen


def _config_of(module: nn.Module) -> Any:
    config = getattr(module, "config", None)
    if config is None:
        raise SkipxlError(
            f"{type(module).__name__} has no .config; cross-head attention needs a transformers attention "
            "module (one that calls ALL_ATTENTION_FUNCTIONS.get_interface)"
        )
    return config


def cross_head_config_from(config: Any) -> CrossHeadConfig:
    """Read ``cross_head_beta`` / ``cross_head_mode`` from a transformers config (paper defaults)."""
    return CrossHeadConfig(
        beta=float(getattr(config, "cross_head_beta", 0.1)),
        mode=str(getattr(config, "cross_head_mode", "permutation")),
    )


def _state_of(module: nn.Module) -> CrossHeadState:
    """The module's draw state; created on first use when the model was selected by name only.

    A lazily created state is per layer, seeded with ``cross_head_seed * 1000 + layer_idx`` so
    that layers draw independently and reproducibly. :func:`enable_cross_head` instead attaches
    one shared state to every layer before the first forward.
    """
    state = getattr(module, STATE_ATTR, None)
    if state is None:
        config = _config_of(module)
        seed = int(getattr(config, "cross_head_seed", DEFAULT_SEED)) * 1000 + int(
            getattr(module, "layer_idx", 0) or 0
        )
        state = CrossHeadState(cfg=cross_head_config_from(config), generator=make_generator(seed))
        # object.__setattr__ keeps it a plain attribute (not a submodule, not in state_dict).
        object.__setattr__(module, STATE_ATTR, state)
    return state


def stock_attention_function(base: str, module: nn.Module) -> Callable[..., tuple[Tensor, Tensor | None]]:
    """The stock attention function the wrapper delegates to.

    ``sdpa`` is transformers' global one; ``eager`` is model specific in transformers 5.x (each
    ``modeling_*.py`` defines ``eager_attention_forward``), so it is found in the module that
    defines the attention class -- this is what makes the wrapper model-agnostic.
    """
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    if base != "eager":
        return ALL_ATTENTION_FUNCTIONS[base]
    fn = getattr(sys.modules.get(type(module).__module__), "eager_attention_forward", None)
    if fn is None:
        raise SkipxlError(
            f"{type(module).__module__} defines no eager_attention_forward; use "
            "attn_implementation='cross_head_sdpa' for this model"
        )
    return fn


def draw_layer_index(module: nn.Module, n_head: int) -> Tensor | None:
    """Draw this layer's head index for one training forward; ``None`` when it is the identity.

    Returning ``None`` for the identity means the stock kernel receives the very same tensors,
    which makes ``beta = 0`` (and every non-mixing step) bitwise the stock computation.
    """
    state = _state_of(module)
    index = draw_head_index(n_head, state.cfg, state.generator)  # [H] int64 on CPU
    state.draws += 1
    layer = int(getattr(module, "layer_idx", 0) or 0)
    state.last_index[layer] = index
    return None if is_identity(index) else index


def _make_cross_head_function(base: str) -> Callable[..., tuple[Tensor, Tensor | None]]:
    def cross_head_attention_forward(
        module: nn.Module,
        query: Tensor,
        key: Tensor,
        value: Tensor,
        attention_mask: Tensor | None,
        **kwargs: Any,
    ) -> tuple[Tensor, Tensor | None]:
        """Stock attention where, in training, query head i reads keys/values of head index[i]."""
        stock = stock_attention_function(base, module)
        if module.training:
            # key, value: [B, H_kv, S, d]; the head axis is dim 1 in transformers' convention.
            index = draw_layer_index(module, key.size(1))
            if index is not None:
                key = mix_heads(key, index, head_dim=1)  # [B, H_kv, S, d], head i <- head index[i]
                value = mix_heads(value, index, head_dim=1)  # [B, H_kv, S, d]
        else:
            state = getattr(module, STATE_ATTR, None)
            if state is not None:
                state.last_index[int(getattr(module, "layer_idx", 0) or 0)] = None
        return stock(module, query, key, value, attention_mask, **kwargs)

    cross_head_attention_forward.__name__ = f"cross_head_{base}_attention_forward"
    return cross_head_attention_forward


def register_cross_head_attention() -> tuple[str, ...]:
    """Register the implementations (attention function and mask builder); idempotent."""
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, AttentionMaskInterface
    from transformers.modeling_utils import AttentionInterface

    for name, base in CROSS_HEAD_IMPLEMENTATIONS.items():
        AttentionInterface.register(name, _make_cross_head_function(base))
        # Without a mask builder transformers would silently build no padding mask at all.
        AttentionMaskInterface.register(name, ALL_MASK_ATTENTION_FUNCTIONS._global_mapping[base])
    return tuple(CROSS_HEAD_IMPLEMENTATIONS)


def attention_modules(model: nn.Module) -> list[nn.Module]:
    """The modules that dispatch through the attention interface (one per layer and kind)."""
    from transformers import PreTrainedModel

    return [
        m
        for m in model.modules()
        if hasattr(m, "layer_idx") and hasattr(m, "config") and not isinstance(m, PreTrainedModel)
    ]


def _uses_checkpointing(model: nn.Module) -> bool:
    # transformers 5.x renamed is_gradient_checkpointing (deprecated) to is_activation_checkpointing.
    for name in ("is_activation_checkpointing", "is_gradient_checkpointing"):
        if hasattr(type(model), name):
            return bool(getattr(model, name))
    return False


def enable_cross_head(
    model: nn.Module, cfg: CrossHeadConfig, *, seed: int, base: str = "sdpa"
) -> CrossHeadState:
    """Switch a loaded transformers model to cross-head attention; return the shared state.

    Sets ``config.cross_head_{beta,mode,seed}`` (so ``save_pretrained`` records them), selects
    ``cross_head_<base>`` and gives every attention module one shared generator seeded with
    ``seed``: layers then draw in forward order from one stream.
    """
    name = f"cross_head_{base}"
    if name not in CROSS_HEAD_IMPLEMENTATIONS:
        raise SkipxlError(f"cross-head base {base!r} is unknown; choose one of ('sdpa', 'eager')")
    if _uses_checkpointing(model):
        raise SkipxlError(
            "cross-head attention cannot be combined with gradient checkpointing (the recomputed "
            "forward would draw a different head index); disable gradient checkpointing"
        )
    register_cross_head_attention()
    config = _config_of(model)
    config.cross_head_beta = cfg.beta
    config.cross_head_mode = cfg.mode
    config.cross_head_seed = int(seed)
    model.set_attn_implementation(name)  # type: ignore[operator]
    if config._attn_implementation != name:
        raise SkipxlError(
            f"{type(model).__name__} cannot switch attention implementation (it does not use "
            "transformers' AttentionInterface); cross-head attention needs a model that does"
        )
    modules = attention_modules(model)
    if not modules:
        raise SkipxlError(f"{type(model).__name__} has no attention module with a layer index")
    state = CrossHeadState(cfg=cfg, generator=make_generator(seed))
    for module in modules:
        object.__setattr__(module, STATE_ATTR, state)
    return state


register_cross_head_attention()
