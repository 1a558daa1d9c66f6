"""Learning-rate schedule of the original Transformer-XL recipes (Dai et al. 2019, ``train.py``).

Linear warm-up from 0 to ``lr`` over ``warmup_steps``, then cosine annealing to
``eta_min`` with period ``max_steps`` *counted from step 0* (the original calls
``CosineAnnealingLR(optimizer, max_step, eta_min)`` and steps it with the global step, so
the warm-up eats into the cosine rather than shifting it). The paper's released code
(arXiv 2311.08123, ``run_wt15_*.sh``) uses the same rule with 16k warm-up steps.

The rule is a pure function of the step so that it can be tested against a hand-written
formula and wrapped in a ``torch.optim.lr_scheduler.LambdaLR`` (which DeepSpeed
checkpoints with the engine). ``LambdaLR`` multiplies the base lr by the factor, so the
function returns a *factor*, not an lr.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

from skipxl.engine.config import TrainConfig


def lr_at(
    step: int,
    *,
    lr: float,
    max_steps: int,
    warmup_steps: int = 0,
    eta_min: float = 0.0,
    scheduler: str = "cosine",
) -> float:
    """Learning rate used for the optimizer step that follows ``step`` completed steps."""
    if warmup_steps > 0 and step < warmup_steps:
        return lr * step / warmup_steps
    if scheduler == "constant":
        return lr
    progress = min(step, max_steps) / max_steps
    return eta_min + 0.5 * (lr - eta_min) * (1.0 + math.cos(math.pi * progress))


@dataclass(frozen=True)
class LrFactor:
    """Picklable ``LambdaLR`` factor (a plain lambda would not survive ``state_dict``)."""

    lr: float
    max_steps: int
    warmup_steps: int
    eta_min: float
    scheduler: str

    def __call__(self, step: int) -> float:
        return (
            lr_at(
                step,
                lr=self.lr,
                max_steps=self.max_steps,
                warmup_steps=self.warmup_steps,
                eta_min=self.eta_min,
                scheduler=self.scheduler,
            )
            / self.lr
        )


def make_scheduler(optimizer: torch.optim.Optimizer, cfg: TrainConfig) -> torch.optim.lr_scheduler.LambdaLR:
    """A ``LambdaLR`` following :func:`lr_at` for ``cfg``."""
    factor = LrFactor(cfg.lr, cfg.max_steps, cfg.warmup_steps, cfg.eta_min, cfg.scheduler)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda=factor)


def make_optimizer(
    params: Any, cfg: TrainConfig
) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LambdaLR]:
    """The original recipe's plain ``torch.optim.Adam`` (betas, eps, weight decay of ``cfg``) and
    its :func:`make_scheduler`; DeepSpeed gets both as client objects."""
    optimizer = torch.optim.Adam(
        params, lr=cfg.lr, betas=tuple(cfg.adam_betas), eps=cfg.adam_eps, weight_decay=cfg.weight_decay
    )
    return optimizer, make_scheduler(optimizer, cfg)
