"""Training policies: everything a method decides *around* an optimizer step.

The model is a pure function of its inputs (``model(input_ids, targets, mems, plan)``); what a
method changes from step to step lives here, on the engine side, as a :class:`TrainingPolicy`.
The :class:`~skipxl.engine.train.Trainer` calls every policy at fixed points of each optimizer
step and never looks inside one, so a new method (e.g. Dynamic Layer Tying) is one more policy
and no change to the loop.

One optimizer step, as the Trainer runs it (``step`` = optimizer steps completed before it)::

    plan = policies.plan(step, StepPlan())           # what this step skips / mixes
    for each micro-batch:  forward(plan), backward    # one plan for all micro-steps and ranks
    policies.before_optimizer_step(step, plan)        # may edit gradients (set some to None, ...)
    optimizer step                                     # DeepSpeed: clip, Adam, lr schedule
    policies.after_step(StepMetrics(step + 1, ...))   # may change the model / its own state
    ... every eval_interval steps: validate, then policies.after_validation(step + 1, metrics)

``bind`` comes once before the first step (and before ``load_state_dict`` on resume); a policy
gets the trained module, the optimizer and the world there (:class:`TrainView`). ``state_dict``
/ ``load_state_dict`` are saved in every checkpoint (per rank) so that a resumed run continues
bit for bit. Hooks return a :class:`PolicyEvent` when something worth logging happened (the
Trainer logs its metrics at that step and prints its message).

The two methods of the paper (Vishnu & Chandra Sekhar, arXiv 2311.08123) are policies here:

* :class:`SkipRetainPolicy`: per-layer skip decisions from the pskip schedule, the two phases
  and their switch rules (:mod:`skipxl.engine.phases`), and what a skipped layer's gradient is;
* :class:`CrossHeadPolicy`: the per-layer head indices of stochastic cross-head attention.

They share one CPU generator seeded with ``ModelConfig.plan_seed`` (never the global RNG, so
dropout is unaffected and every rank seeded alike draws the same plan), drawn in a fixed order
and count per step: ``n_layer`` skip uniforms (in both phases), then the head draws. Two runs
that differ only in pskip / beta therefore stay aligned step by step.
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from skipxl.engine.distributed import WorldInfo
from skipxl.engine.phases import PHASE_SKIP, PhaseController
from skipxl.errors import SkipxlError
from skipxl.model.config import ModelConfig, SkipRetainConfig
from skipxl.model.functional import draw_skip_mask, skip_probabilities
from skipxl.model.heads import CrossHeadConfig, draw_head_indices
from skipxl.model.transformer_xl import StepPlan


@dataclass(frozen=True)
class TrainView:
    """What a policy may read and change, handed to :meth:`TrainingPolicy.bind`.

    Attributes:
        module: the model being trained (``engine.module``; under ZeRO-3 its parameters are
            partitioned outside forward/backward).
        optimizer: the optimizer DeepSpeed steps (``engine.optimizer``: the torch optimizer at
            ZeRO stage 0 in fp32, DeepSpeed's wrapper otherwise).
        world: this rank's place in the data-parallel world.
        zero_stage / precision: from the DeepSpeed config (``"fp32"``, ``"fp16"``, ``"bf16"``).
    """

    module: nn.Module
    optimizer: Any
    world: WorldInfo
    zero_stage: int = 0
    precision: str = "fp32"

    @property
    def plain_fp32(self) -> bool:
        """ZeRO stage 0 in fp32: ``p.grad`` of every parameter is the one the optimizer reads."""
        return self.zero_stage == 0 and self.precision == "fp32"


@dataclass(frozen=True)
class StepMetrics:
    """What :meth:`TrainingPolicy.after_step` sees of the optimizer step just taken.

    Attributes:
        step: optimizer steps completed (1 after the first step).
        loss: this rank's mean micro-batch loss, a 0-d device tensor (reading it is a host sync;
            all-reduce it with :func:`skipxl.engine.distributed.all_reduce` for the global mean).
        plan: the :class:`StepPlan` the step ran with.
        lr: the learning rate the step used.
    """

    step: int
    loss: Tensor
    plan: StepPlan
    lr: float


@dataclass(frozen=True)
class PolicyEvent:
    """Something a policy did that the run log should show (logged at that step)."""

    metrics: dict[str, Any]
    message: str


class TrainingPolicy:
    """Base class of a training policy; every hook is a no-op. Override what the method needs.

    A policy must be deterministic given its state (``state_dict`` holds everything it needs to
    continue exactly, e.g. generator states or a Q-network) and must behave the same on every
    data-parallel rank unless it synchronises itself. ``name`` is its key in checkpoints and in
    ``results.json``; two policies of one run need different names.
    """

    name: str = "policy"

    def bind(self, view: TrainView) -> None:
        """Called once, after the engine is built and before any step or ``load_state_dict``."""

    def plan(self, step: int, plan: StepPlan) -> StepPlan:
        """Return the plan of the step about to run (``step`` = steps completed), given the plan
        the previous policies made (start: ``StepPlan()``, a plain Transformer-XL step)."""
        return plan

    def before_optimizer_step(self, step: int, plan: StepPlan) -> None:
        """After the last micro-step's backward, before the optimizer: may edit ``p.grad``."""

    def after_step(self, metrics: StepMetrics) -> PolicyEvent | None:
        """After the optimizer step: may change the model or the policy's own state."""
        return None

    def after_validation(self, step: int, metrics: Mapping[str, float]) -> PolicyEvent | None:
        """After a validation during training (``metrics["val/loss"]``, ``"val/ppl"`` or ``"val/bpc"``)."""
        return None

    def log_metrics(self) -> dict[str, Any]:
        """Added to every logged training row (e.g. the current phase)."""
        return {}

    def summary(self) -> dict[str, Any]:
        """Added to ``results.json`` at the end of the run."""
        return {}

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if state:
            raise SkipxlError(f"policy {self.name!r} keeps no state but the checkpoint has {sorted(state)}")


class Policies(TrainingPolicy):
    """Several policies run as one, in order (plans pass from one to the next)."""

    name = "policies"

    def __init__(self, policies: Iterable[TrainingPolicy] = ()) -> None:
        self.policies = list(policies)
        names = [p.name for p in self.policies]
        if len(set(names)) != len(names):
            raise SkipxlError(f"two training policies share a name: {names}")

    def __iter__(self):
        return iter(self.policies)

    def __len__(self) -> int:
        return len(self.policies)

    def bind(self, view: TrainView) -> None:
        for p in self.policies:
            p.bind(view)

    def plan(self, step: int, plan: StepPlan) -> StepPlan:
        for p in self.policies:
            plan = p.plan(step, plan)
        return plan

    def before_optimizer_step(self, step: int, plan: StepPlan) -> None:
        for p in self.policies:
            p.before_optimizer_step(step, plan)

    def after_step_events(self, metrics: StepMetrics) -> list[PolicyEvent]:
        return [e for p in self.policies if (e := p.after_step(metrics)) is not None]

    def after_validation_events(self, step: int, metrics: Mapping[str, float]) -> list[PolicyEvent]:
        return [e for p in self.policies if (e := p.after_validation(step, metrics)) is not None]

    def log_metrics(self) -> dict[str, Any]:
        return {k: v for p in self.policies for k, v in p.log_metrics().items()}

    def summary(self) -> dict[str, Any]:
        return {k: v for p in self.policies for k, v in p.summary().items()}

    def state_dict(self) -> dict[str, Any]:
        return {p.name: p.state_dict() for p in self.policies}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        want, got = sorted(p.name for p in self.policies), sorted(state)
        if want != got:
            raise SkipxlError(
                f"the checkpoint holds the state of training policies {got} but this run has {want}; "
                "resume with the variant and options the run was started with"
            )
        for p in self.policies:
            p.load_state_dict(state[p.name])


# ----------------------------------------------------------------------------- the paper's methods


def plan_generator(seed: int) -> torch.Generator:
    """The CPU generator of the paper's stochastic plans (separate from the global RNG)."""
    return torch.Generator(device="cpu").manual_seed(seed)


class SkipRetainPolicy(TrainingPolicy):
    """Skip-Retain (arXiv 2311.08123): which layers a step skips, the phases, skipped gradients.

    Each step draws ``n_layer`` uniforms and skips layer ``l`` iff ``u_l < pskip(l)`` (the
    schedule of :func:`~skipxl.model.functional.skip_probabilities`); the model computes a
    skipped layer as the identity and retains its memory. In phase 2 the uniforms are still
    drawn (the cross-head stream is unaffected by the switch) but nothing is skipped.

    A skipped layer's gradient (``SkipRetainConfig.skipped_grad``), at ZeRO stage 0 in fp32:
    ``"none"`` sets it to ``None`` after backward, so torch Adam leaves the layer and its moments
    untouched (DeepSpeed's all-reduce zero-fills it first); ``"zero"`` makes it an explicit zero,
    so Adam's momentum and weight decay still move the layer. Under ZeRO stages > 0 or fp16/bf16
    DeepSpeed's flat gradient buffers give skipped layers a zero gradient either way ("none"
    cannot be honoured; a warning says so).
    """

    name = "skip_retain"

    def __init__(
        self, cfg: SkipRetainConfig, n_layer: int, phase: PhaseController, generator: torch.Generator
    ) -> None:
        self.cfg, self.n_layer, self.phase, self.generator = cfg, n_layer, phase, generator
        self.probs = skip_probabilities(cfg, n_layer)
        self.module: nn.Module | None = None
        self.grad_action: str | None = None  # "drop", "zero" or None (leave to DeepSpeed)

    def bind(self, view: TrainView) -> None:
        self.module = view.module
        if not view.plain_fp32:
            if self.cfg.skipped_grad == "none" and view.world.is_main:
                warnings.warn(
                    f"skipped_grad='none' cannot be honoured with ZeRO stage {view.zero_stage} / "
                    f"{view.precision}: the flat gradient buffers give a skipped layer a zero gradient, "
                    "so Adam's momentum still moves it (use ZeRO stage 0 in fp32 for the paper's "
                    "no-gradient behaviour)",
                    stacklevel=1,
                )
            return
        self.grad_action = "drop" if self.cfg.skipped_grad == "none" else "zero"

    def plan(self, step: int, plan: StepPlan) -> StepPlan:
        mask = draw_skip_mask(self.probs, self.generator)  # drawn in both phases
        return dataclasses.replace(plan, skip=mask) if self.phase.skipping else plan

    def before_optimizer_step(self, step: int, plan: StepPlan) -> None:
        if not plan.skip or self.grad_action is None:
            return
        # The live layer list (Dynamic Layer Tying changes it); a skipped layer's weights that a
        # computed layer also runs (a tie) got a real gradient from that use and keep it.
        layers = list(self.module.layers)
        used = {
            id(p) for layer, s in zip(layers, plan.skip, strict=True) if not s for p in _weights_of(layer)
        }
        for layer, skipped in zip(layers, plan.skip, strict=True):
            for p in layer.parameters() if skipped else ():
                if id(p) in used:
                    continue
                if self.grad_action == "drop":
                    p.grad = None
                elif p.grad is None:
                    p.grad = torch.zeros_like(p)

    def _event(self, step: int) -> PolicyEvent:
        return PolicyEvent(
            {"phase": self.phase.phase, "phase/switch_step": step},
            f"step {step}: phase 2 (no skipping) - {self.phase.switch_reason}",
        )

    def after_step(self, metrics: StepMetrics) -> PolicyEvent | None:
        return self._event(metrics.step) if self.phase.after_step(metrics.step) else None

    def after_validation(self, step: int, metrics: Mapping[str, float]) -> PolicyEvent | None:
        return self._event(step) if self.phase.after_validation(step, metrics["val/loss"]) else None

    def log_metrics(self) -> dict[str, Any]:
        return {"phase": self.phase.phase}

    def summary(self) -> dict[str, Any]:
        return {"phase": self.phase.state_dict()}

    def state_dict(self) -> dict[str, Any]:
        return {"phase": self.phase.state_dict(), "generator": self.generator.get_state()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.phase.load_state_dict(state["phase"])
        self.generator.set_state(state["generator"])


def _weights_of(layer: nn.Module) -> Iterable[nn.Parameter]:
    """The parameters a layer's forward runs: its own, or its source's for a tied layer."""
    return getattr(layer, "source", layer).parameters()


class CrossHeadPolicy(TrainingPolicy):
    """Stochastic cross-head attention (arXiv 2311.08123): one head index ``[n_head]`` per layer
    and step (:func:`~skipxl.model.heads.draw_head_indices`); on in both phases, as in the
    paper's scripts."""

    name = "cross_head"

    def __init__(self, cfg: CrossHeadConfig, n_layer: int, n_head: int, generator: torch.Generator) -> None:
        self.cfg, self.n_layer, self.n_head, self.generator = cfg, n_layer, n_head, generator

    def plan(self, step: int, plan: StepPlan) -> StepPlan:
        index = draw_head_indices(self.n_layer, self.n_head, self.cfg, self.generator)  # [n_layer, H]
        return dataclasses.replace(plan, head_index=index)

    def state_dict(self) -> dict[str, Any]:
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.generator.set_state(state["generator"])


def paper_policies(model_cfg: ModelConfig, phase: PhaseController | None = None) -> Policies:
    """The policies of the methods ``model_cfg`` switches on (``skip`` / ``cross_head``), sharing
    one plan generator seeded with ``plan_seed``; Skip-Retain draws first.

    ``phase`` is the Skip-Retain phase rule (default: phase 1 for the whole run).
    """
    gen = plan_generator(model_cfg.plan_seed)
    policies: list[TrainingPolicy] = []
    if model_cfg.skip is not None:
        phase = phase if phase is not None else PhaseController(enabled=True, phase=PHASE_SKIP)
        policies.append(SkipRetainPolicy(model_cfg.skip, model_cfg.n_layer, phase, gen))
    if model_cfg.cross_head is not None:
        policies.append(CrossHeadPolicy(model_cfg.cross_head, model_cfg.n_layer, model_cfg.n_head, gen))
    return Policies(policies)
