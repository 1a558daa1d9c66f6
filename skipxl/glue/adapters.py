"""Bottleneck adapters (Houlsby et al. 2019; Pfeiffer et al. 2021) hooked onto HF BERT modules.

The ``adapters`` library (AdapterHub) pins transformers 4.57 while skipxl uses 5.x, so the
bottleneck adapter is written here; it is small. One adapter is

    x -> x + W_up act(W_down x + b_down) + b_up,   W_down [m, H], W_up [H, m], m = H / reduction

with ``2 H m + m + H`` parameters (Houlsby et al. 2019, Sec. 2.1: "2md + d + m"). ``W_up`` starts
at zero, so a freshly attached adapter is the identity and the model is exactly the backbone.

Where (both in the position of Houlsby et al.'s Fig. 2: after a sub-layer's output projection
and its dropout, before the residual add and LayerNorm; the same place AdapterHub uses):

* ``"houlsby"``: two adapters per layer, after the attention output (``attention.output``) and
  after the feed-forward output (``output``); swish activation (AdapterHub's default);
* ``"pfeiffer"``: one adapter per layer after the feed-forward output only, ReLU (Pfeiffer et al.
  2021, AdapterFusion). AdapterHub's Pfeiffer config additionally re-applies the frozen output
  LayerNorm around the adapter; that detail is not reproduced here.

Attached as a forward hook on the ``dropout`` submodule of each BERT ``*Output`` module (it is
applied exactly once, to the projected sub-layer output), registered as a sibling submodule
``adapter`` so its parameters are in ``model.parameters()`` and the state dict.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch.nn.functional as F
from torch import Tensor, nn

from skipxl.errors import SkipxlError, require
from skipxl.glue.spartan import encoder_layers

ADAPTER_KINDS = ("houlsby", "pfeiffer")
ADAPTER_ACTIVATIONS = {"swish": F.silu, "relu": F.relu, "gelu": F.gelu}
#: Submodule name of the adapter inside a BERT ``*Output`` module.
ADAPTER_ATTR = "adapter"


@dataclass(frozen=True)
class AdapterConfig:
    """Which adapter, its bottleneck (``hidden // reduction``) and activation (None: the kind's)."""

    kind: str = "houlsby"
    reduction: int = 16
    activation: str | None = None
    init_std: float = 1e-2

    def __post_init__(self) -> None:
        require(self.kind in ADAPTER_KINDS, f"adapter kind {self.kind!r} is unknown; choose {ADAPTER_KINDS}")
        require(self.reduction >= 1, f"adapter_reduction must be >= 1, got {self.reduction}")
        require(
            self.activation is None or self.activation in ADAPTER_ACTIVATIONS,
            f"adapter activation {self.activation!r} is unknown; choose one of {sorted(ADAPTER_ACTIVATIONS)}",
        )

    @property
    def act(self) -> str:
        return self.activation or ("swish" if self.kind == "houlsby" else "relu")

    @property
    def per_layer(self) -> int:
        """Adapters per transformer layer: 2 (Houlsby) or 1 (Pfeiffer)."""
        return 2 if self.kind == "houlsby" else 1

    def bottleneck(self, hidden: int) -> int:
        return max(1, hidden // self.reduction)


def adapter_param_count(hidden: int, layers: int, cfg: AdapterConfig) -> int:
    """Published formula: ``layers * per_layer * (2 H m + m + H)``."""
    m = cfg.bottleneck(hidden)
    return layers * cfg.per_layer * (2 * hidden * m + m + hidden)


class BottleneckAdapter(nn.Module):
    """``x + up(act(down(x)))``; ``up`` is zero at initialisation (identity)."""

    def __init__(self, hidden: int, bottleneck: int, activation: str, init_std: float) -> None:
        super().__init__()
        self.down = nn.Linear(hidden, bottleneck)  # [m, H]
        self.up = nn.Linear(bottleneck, hidden)  # [H, m]
        self.activation = activation
        nn.init.normal_(self.down.weight, std=init_std)
        nn.init.zeros_(self.down.bias)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.up(ADAPTER_ACTIVATIONS[self.activation](self.down(x)))  # [B, S, H]


def _adapter_hook(adapter: BottleneckAdapter):
    def hook(module: nn.Module, args: Any, output: Tensor) -> Tensor:
        return adapter(output)

    return hook


def _sites(layer: nn.Module, cfg: AdapterConfig) -> list[nn.Module]:
    sites = [layer.attention.output, layer.output] if cfg.kind == "houlsby" else [layer.output]
    for site in sites:
        if not isinstance(getattr(site, "dropout", None), nn.Dropout) or not hasattr(site, "LayerNorm"):
            raise SkipxlError(
                f"{type(site).__name__} has no dropout + LayerNorm (the BERT *Output layout); bottleneck "
                "adapters support BERT-family encoders"
            )
    return sites


def attach_adapters(model: nn.Module, cfg: AdapterConfig) -> list[BottleneckAdapter]:
    """Insert the adapters of ``cfg.kind`` into every layer; returns them in layer order."""
    hidden = int(model.config.hidden_size)
    m = cfg.bottleneck(hidden)
    made: list[BottleneckAdapter] = []
    for layer in encoder_layers(model):
        for site in _sites(layer, cfg):
            if hasattr(site, ADAPTER_ATTR):
                raise SkipxlError("an adapter is already attached to this model; attach it once")
            ref = site.LayerNorm.weight
            adapter = BottleneckAdapter(hidden, m, cfg.act, cfg.init_std).to(ref.device, ref.dtype)
            site.add_module(ADAPTER_ATTR, adapter)
            site.dropout.register_forward_hook(_adapter_hook(adapter))
            made.append(adapter)
    return made
