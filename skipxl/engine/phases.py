"""The Skip-Retain phase switch (arXiv 2311.08123, Sec. "Two-phase training").

Phase 1 trains with stochastic layer skipping (skipped layers retain their memory), phase 2
continues the same weights and optimizer *without* skipping, which removes the shift
between training (some memories are older than their neighbours) and evaluation (all
memories are fresh). The paper's scripts run the phases as two jobs; here one command runs
both and the switch is part of the training state (logged and checkpointed).

Phase 1 ends at the first of three rules, each optional:

* ``phase1_steps``: a fixed optimizer step;
* ``phase1_fraction``: a fraction of ``max_steps``;
* ``phase1_patience``: the validation loss has not improved by at least ``phase1_min_delta``
  for that many consecutive validations (a plateau, the paper's "until convergence").

Cross-head attention is not a phase: it stays on in both phases, as in the paper's scripts.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from skipxl.engine.config import TrainConfig

PHASE_SKIP = 1
PHASE_VANILLA = 2


@dataclass
class PhaseController:
    """Tracks the phase; :meth:`after_step` and :meth:`after_validation` may end phase 1.

    ``enabled`` is False for variants without Skip-Retain: they are always in phase 2
    (no skipping) and nothing ever switches.
    """

    enabled: bool
    switch_at_step: int | None = None
    patience: int | None = None
    min_delta: float = 0.0
    phase: int = PHASE_VANILLA
    switch_step: int | None = None
    switch_reason: str | None = None
    best_val: float = math.inf
    bad_validations: int = 0
    history: list[float] = field(default_factory=list)

    @classmethod
    def from_config(cls, cfg: TrainConfig, enabled: bool) -> PhaseController:
        candidates = []
        if cfg.phase1_steps is not None:
            candidates.append(cfg.phase1_steps)
        if cfg.phase1_fraction is not None:
            candidates.append(round(cfg.phase1_fraction * cfg.max_steps))
        ctl = cls(
            enabled=enabled,
            switch_at_step=min(candidates) if candidates else None,
            patience=cfg.phase1_patience,
            min_delta=cfg.phase1_min_delta,
            phase=PHASE_SKIP if enabled else PHASE_VANILLA,
        )
        if enabled and ctl.switch_at_step is not None and ctl.switch_at_step <= 0:
            ctl._switch(0, "phase1_steps/fraction is 0")
        return ctl

    @property
    def skipping(self) -> bool:
        """Whether the current step draws layer skips."""
        return self.enabled and self.phase == PHASE_SKIP

    def _switch(self, step: int, reason: str) -> None:
        self.phase = PHASE_VANILLA
        self.switch_step = step
        self.switch_reason = reason

    def after_step(self, step: int) -> bool:
        """Call after optimizer step ``step`` (1-based count of completed steps); True if it switched."""
        if self.skipping and self.switch_at_step is not None and step >= self.switch_at_step:
            self._switch(step, f"reached step {self.switch_at_step}")
            return True
        return False

    def after_validation(self, step: int, val_loss: float) -> bool:
        """Feed a validation loss; True if the plateau rule ended phase 1 now."""
        self.history.append(float(val_loss))
        if not self.skipping or self.patience is None:
            return False
        if val_loss < self.best_val - self.min_delta:
            self.best_val = float(val_loss)
            self.bad_validations = 0
            return False
        self.bad_validations += 1
        if self.bad_validations >= self.patience:
            self._switch(step, f"validation plateau ({self.patience} validations without improvement)")
            return True
        return False

    def state_dict(self) -> dict[str, Any]:
        return {
            "phase": self.phase,
            "switch_step": self.switch_step,
            "switch_reason": self.switch_reason,
            "best_val": self.best_val,
            "bad_validations": self.bad_validations,
            "history": list(self.history),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.phase = int(state["phase"])
        self.switch_step = state["switch_step"]
        self.switch_reason = state["switch_reason"]
        self.best_val = float(state["best_val"])
        self.bad_validations = int(state["bad_validations"])
        self.history = [float(v) for v in state["history"]]
