"""Fine-tuning methods: which modules are added to the backbone and which parameters train.

=====================  ==========================================  ===================================
method                 added (per layer)                           trained
=====================  ==========================================  ===================================
``full``               nothing                                     every parameter
``spartan``            a SPARTAN memory after the layer output     memory, every LayerNorm, head
``adapter_houlsby``    2 bottleneck adapters (attention + FFN)     adapters, every LayerNorm, head
``adapter_pfeiffer``   1 bottleneck adapter (FFN)                  adapters, head
``lora``               LoRA on ``query`` and ``value`` (peft)      LoRA matrices, head
=====================  ==========================================  ===================================

The "head" is the task head created for fine-tuning: the ``classifier`` (or ``score``) module
of a ``*ForSequenceClassification`` model. For every method but ``full`` the backbone is
frozen first (``requires_grad = False``) and only the rule above switches parameters back on,
so the optimizer -- built from the parameters that require gradients -- holds nothing else.
The SPARTAN selection follows the paper (memory + LayerNorms + head), Houlsby et al. (2019)
also train the LayerNorms, AdapterHub's Pfeiffer adapters and LoRA (Hu et al. 2021) do not.

:func:`formula_trainable` gives the published parameter count of each method for a BERT
layout (hidden ``H``, ``L`` layers, ``C`` labels), which the tests check against the model.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from torch import nn

from skipxl.errors import require
from skipxl.glue.adapters import ADAPTER_ATTR, AdapterConfig, adapter_param_count, attach_adapters
from skipxl.glue.peft_methods import LoraSettings, attach_lora, lora_param_count
from skipxl.glue.spartan import MEMORY_ATTR, SpartanConfig, attach_spartan, memory_param_count


@dataclass(frozen=True)
class MethodSpec:
    """What a method adds and trains besides its own new parameters."""

    name: str
    trains_layernorm: bool
    summary: str


METHODS: dict[str, MethodSpec] = {
    "full": MethodSpec("full", True, "full fine-tuning (every parameter)"),
    "spartan": MethodSpec("spartan", True, "SPARTAN sparse hierarchical memory (arXiv 2211.16634)"),
    "adapter_houlsby": MethodSpec("adapter_houlsby", True, "Houlsby bottleneck adapters (arXiv 1902.00751)"),
    "adapter_pfeiffer": MethodSpec(
        "adapter_pfeiffer", False, "Pfeiffer bottleneck adapter (arXiv 2005.00247)"
    ),
    "lora": MethodSpec("lora", False, "LoRA through peft (arXiv 2106.09685)"),
}
METHOD_NAMES = tuple(METHODS)

#: Recommended optimiser settings per method when the user gives none: the standard BERT recipe
#: for full fine-tuning, the released SPARTAN settings (lr 1e-3, batch 16) for the memory and the
#: adapters (Houlsby et al. found high learning rates best for adapters), LoRA paper's GLUE lr.
METHOD_DEFAULTS: dict[str, dict[str, Any]] = {
    "full": {"lr": 2e-5, "batch_size": 32},
    "spartan": {"lr": 1e-3, "batch_size": 16},
    "adapter_houlsby": {"lr": 1e-3, "batch_size": 16},
    "adapter_pfeiffer": {"lr": 1e-3, "batch_size": 16},
    "lora": {"lr": 5e-4, "batch_size": 16},
}

Settings = SpartanConfig | AdapterConfig | LoraSettings | None


def check_method(name: str) -> MethodSpec:
    require(name in METHODS, f"method {name!r} is unknown; choose one of {METHOD_NAMES}")
    return METHODS[name]


def is_head(name: str) -> bool:
    """Parameter name of the task head (``classifier.*`` / ``score.*``)."""
    return name.split(".", 1)[0] in ("classifier", "score")


def is_layernorm(name: str) -> bool:
    return "LayerNorm" in name or "layer_norm" in name


def is_method_param(name: str, method: str) -> bool:
    """Parameters the method itself added."""
    if method == "spartan":
        return f".{MEMORY_ATTR}." in name
    if method.startswith("adapter_"):
        return f".{ADAPTER_ATTR}." in name
    if method == "lora":
        return ".lora_" in name
    return False


def should_train(name: str, method: str) -> bool:
    """The selection rule of the table above."""
    spec = check_method(method)
    if method == "full":
        return True
    return is_method_param(name, method) or is_head(name) or (spec.trains_layernorm and is_layernorm(name))


def apply_method(model: nn.Module, method: str, settings: Settings) -> nn.Module:
    """Attach the method's modules to ``model`` in place and set ``requires_grad`` by the rule."""
    check_method(method)
    if method == "full":
        return model
    for p in model.parameters():
        p.requires_grad_(False)
    if method == "spartan":
        assert isinstance(settings, SpartanConfig)
        attach_spartan(model, settings)
    elif method.startswith("adapter_"):
        assert isinstance(settings, AdapterConfig)
        attach_adapters(model, settings)
    elif method == "lora":
        assert isinstance(settings, LoraSettings)
        attach_lora(model, settings)
    for name, p in model.named_parameters():
        p.requires_grad_(should_train(name, method))
    model.skipxl_method = method  # type: ignore[assignment]
    return model


def trainable_parameters(model: nn.Module) -> dict[str, nn.Parameter]:
    """Name -> parameter of everything that trains (what a method's file stores)."""
    return {n: p for n, p in model.named_parameters() if p.requires_grad}


def count_trainable(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def count_total(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def bert_layernorm_params(hidden: int, layers: int) -> int:
    """Embedding LayerNorm + two per layer, weight and bias each: ``(1 + 2 L) 2 H``."""
    return (1 + 2 * layers) * 2 * hidden


def bert_full_params(cfg: Any, num_labels: int) -> int:
    """Every parameter of a ``BertForSequenceClassification`` (Devlin et al. 2019 layout)."""
    H, L, FF = int(cfg.hidden_size), int(cfg.num_hidden_layers), int(cfg.intermediate_size)
    emb = (int(cfg.vocab_size) + int(cfg.max_position_embeddings) + int(cfg.type_vocab_size)) * H + 2 * H
    layer = 4 * (H * H + H) + 2 * 2 * H + (H * FF + FF) + (FF * H + H)
    return emb + L * layer + (H * H + H) + (H * num_labels + num_labels)


def formula_trainable(cfg: Any, method: str, settings: Settings, num_labels: int) -> int:
    """Published trainable-parameter count of ``method`` on a BERT layout (``cfg`` = model config)."""
    H, L = int(cfg.hidden_size), int(cfg.num_hidden_layers)
    head = H * num_labels + num_labels
    ln = bert_layernorm_params(H, L)
    if method == "full":
        return bert_full_params(cfg, num_labels)
    if method == "spartan":
        assert isinstance(settings, SpartanConfig)
        return L * memory_param_count(H, settings) + ln + head
    if method.startswith("adapter_"):
        assert isinstance(settings, AdapterConfig)
        return adapter_param_count(H, L, settings) + (ln if METHODS[method].trains_layernorm else 0) + head
    if method == "lora":
        assert isinstance(settings, LoraSettings)
        targets = len(settings.targets)
        return L * targets * settings.rank * (H + H) + head
    raise AssertionError(method)


__all__ = [
    "METHODS",
    "METHOD_DEFAULTS",
    "METHOD_NAMES",
    "apply_method",
    "count_trainable",
    "formula_trainable",
    "lora_param_count",
    "should_train",
    "trainable_parameters",
]
