"""LoRA (Hu et al. 2021, arXiv 2106.09685) through Hugging Face ``peft``.

``peft.inject_adapter_in_model`` replaces the targeted ``nn.Linear`` modules in place with
LoRA layers (``W x + (alpha / r) B A x``, ``A [r, H_in]`` Kaiming-initialised, ``B [H_out, r]``
zero, so the injected model starts as the backbone) without wrapping the model in a
``PeftModel``: the model stays a ``*ForSequenceClassification`` and goes through the same
DeepSpeed engine, loss and evaluation code as every other method. Defaults follow the LoRA
paper's GLUE setting for RoBERTa-base: rank 8, alpha 8, on the attention ``query`` and
``value`` projections of every layer; the classifier head is trained too.

Parameters: ``layers * sum over targets of r * (H_in + H_out)`` (``2 * 2 r H`` per layer for
query + value in BERT).
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from skipxl.errors import SkipxlError, require


@dataclass(frozen=True)
class LoraSettings:
    """LoRA rank, scale numerator, dropout on the LoRA input and the targeted module names."""

    rank: int = 8
    alpha: float = 8.0
    dropout: float = 0.0
    targets: tuple[str, ...] = ("query", "value")

    def __post_init__(self) -> None:
        require(self.rank >= 1, f"lora_rank must be >= 1, got {self.rank}")
        require(self.alpha > 0, f"lora_alpha must be positive, got {self.alpha}")
        require(0.0 <= self.dropout < 1.0, f"lora_dropout must be in [0, 1), got {self.dropout}")
        require(bool(self.targets), "lora_targets must name at least one module, e.g. query,value")


def lora_param_count(model: nn.Module, cfg: LoraSettings) -> int:
    """``sum over targeted Linear modules of r * (in + out)`` (computed from the module shapes)."""
    total = 0
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear) and name.rsplit(".", 1)[-1] in cfg.targets:
            total += cfg.rank * (module.in_features + module.out_features)
    return total


def attach_lora(model: nn.Module, cfg: LoraSettings) -> nn.Module:
    """Inject LoRA layers in place (``peft.inject_adapter_in_model``); returns the same model."""
    try:
        from peft import LoraConfig, inject_adapter_in_model
    except ImportError as exc:  # pragma: no cover - peft is a dependency
        raise SkipxlError("--method lora needs the `peft` package; pip install 'peft>=0.21'") from exc
    found = {n.rsplit(".", 1)[-1] for n, m in model.named_modules() if isinstance(m, nn.Linear)}
    missing = [t for t in cfg.targets if t not in found]
    if missing:
        raise SkipxlError(
            f"lora_targets {missing} name no Linear module of {type(model).__name__}; "
            f"choose among {sorted(found)}"
        )
    config = LoraConfig(
        r=cfg.rank, lora_alpha=cfg.alpha, lora_dropout=cfg.dropout, target_modules=list(cfg.targets)
    )
    return inject_adapter_in_model(config, model)
