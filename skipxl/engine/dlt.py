"""Dynamic Layer Tying as a training policy (Hay & Wolf, ICLR 2024, arXiv 2401.12819).

During training a Q-learning agent (:mod:`skipxl.engine.dlt_agent`) decides, layer by layer,
whether each layer trains its own weights or reuses an earlier layer's; the model's
:class:`~skipxl.model.tying.TiedStack` makes a tie real (the tied layer owns no parameter,
gradient or optimizer state). The policy only uses the Trainer's hooks:

* an *episode* walks ``i = 1 .. N-1``; for each layer: choose its action epsilon-greedily
  from the current state, apply it, train ``steps_per_action`` optimizer steps (4 in the
  released code), then reward, TD update, next layer. epsilon decays once per episode.
* the first action of a run is taken when its first step is planned; every later one right
  after the optimizer step that completes the previous action's steps, so a checkpoint at
  any step boundary holds a consistent "mid-action" state.
* the reward is computed from the training loss of the action's last step (the batch the
  model trains on, all-reduced over ranks so every rank's agent sees the same number and
  takes the same actions). The released code runs one extra forward in eval mode on a fresh
  training batch after the steps; using the loss the step already computed costs nothing and
  needs no data outside the training stream (a documented difference).
* the optimizer follows every change (:func:`~skipxl.engine.tying_optim.sync_optimizer`),
  which needs DeepSpeed ZeRO stage 0 in fp32 (other set-ups are refused with one error).
* model structure and weights are in the model's state_dict (``layers._extra_state``); the
  agent (Q-network, its AdamW, epsilon, generator) and the episode position are this
  policy's state: a resumed run continues bit for bit.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import nn

from skipxl.engine.distributed import all_reduce, collective_device
from skipxl.engine.dlt_agent import QAgent, reward_from_loss
from skipxl.engine.dlt_config import DLTConfig
from skipxl.engine.policies import PolicyEvent, StepMetrics, TrainingPolicy, TrainView
from skipxl.engine.tying_optim import require_dynamic_parameters, sync_optimizer
from skipxl.errors import SkipxlError
from skipxl.model.tying import TiedStack, TyingChange


def layer_metrics(sources: tuple[int, ...]) -> dict[str, int]:
    """``dlt/source/layer_XX`` for every layer (the heat-map's columns)."""
    return {f"dlt/source/layer_{i:02d}": int(s) for i, s in enumerate(sources)}


class DynamicLayerTyingPolicy(TrainingPolicy):
    """The DLT episode loop over the Trainer's hooks; see the module docstring."""

    name = "dlt"

    def __init__(self, n_layer: int, cfg: DLTConfig | None = None) -> None:
        self.cfg = cfg or DLTConfig()
        self.n_layer = n_layer
        self.agent = QAgent(n_layer, self.cfg.agent)
        self.started = False
        self.layer = 1  # the layer whose action is being trained
        self.steps_in_action = 0
        self.pending: tuple[list[int], int, int] | None = None  # (state before, layer, action)
        self.last: dict[str, float] = {}
        self.actions_taken = 0
        self.history: list[list[int]] = []  # [step, layer, action, *sources] per action (the heat-map)
        self._measure_steps = 2
        self._bytes: dict[str, int] = {}

    # ------------------------------------------------------------------ set-up
    def bind(self, view: TrainView) -> None:
        require_dynamic_parameters(view.zero_stage, view.precision)
        layers = getattr(view.module, "layers", None)
        if not isinstance(layers, TiedStack):
            raise SkipxlError("variant 'dlt' needs a model built with ModelConfig.tying (the recipes set it)")
        self.module, self.optimizer, self.world = view.module, view.optimizer, view.world
        self.tying = layers.tying
        self.tying.listeners.append(self._on_change)
        sync_optimizer(self.optimizer, self.module)

    def _on_change(self, change: TyingChange) -> None:
        sync_optimizer(self.optimizer, self.module)
        self._measure_steps = 2  # new parameters get Adam state at their first step

    # ------------------------------------------------------------------ hooks
    def plan(self, step: int, plan: Any) -> Any:
        if not self.started:
            self.started = True
            self._act(step)
        return plan

    def before_optimizer_step(self, step: int, plan: Any) -> None:
        if self._measure_steps > 0:  # gradients exist now; bytes only change with the tying
            from skipxl.profiling.state_bytes import model_state_bytes

            s = model_state_bytes(self.module, self.optimizer)
            self._bytes = {"params": s.params, "grads": s.grads, "optimizer": s.optimizer}
            self._measure_steps -= 1

    def after_step(self, metrics: StepMetrics) -> PolicyEvent | None:
        self.steps_in_action += 1
        if self.steps_in_action < self.cfg.steps_per_action:
            return None
        loss = metrics.loss.detach().float().reshape(1).to(collective_device(metrics.loss.device))
        loss = all_reduce(loss.clone(), "sum") / self.world.world_size
        reward = reward_from_loss(float(loss), self.cfg.agent)
        assert self.pending is not None
        state, layer, action = self.pending
        q_loss = self.agent.update(state, layer, action, reward, list(self.tying.sources))
        self.last = {"dlt/reward": reward, "dlt/q_loss": q_loss, "dlt/reward_loss": float(loss)}
        event = None
        self.layer += 1
        if self.layer == self.n_layer:  # episode done
            episode = self.agent.episode
            self.agent.end_episode()
            self.layer = 1
            event = PolicyEvent(
                {**layer_metrics(self.tying.sources), **self._counts(), "dlt/episode": episode + 1},
                f"step {metrics.step}: DLT episode {episode + 1} done, state {list(self.tying.sources)}, "
                f"{self.tying.n_independent}/{self.n_layer} independent layers, "
                f"epsilon {self.agent.epsilon:.3f}",
            )
        self._act(metrics.step)
        return event

    def _act(self, step: int) -> None:
        """Choose and apply layer ``self.layer``'s action before optimizer step ``step + 1``."""
        state = list(self.tying.sources)
        action, explored = self.agent.act(self.layer, state)
        self.pending = (state, self.layer, action)
        self.tying.set_source(self.layer, action)
        self.history.append([step, self.layer, action, *self.tying.sources])
        self.steps_in_action = 0
        self.actions_taken += 1
        self.last["dlt/explored"] = float(explored)

    # ------------------------------------------------------------------ logging
    def _counts(self) -> dict[str, float]:
        return {
            "dlt/independent_layers": self.tying.n_independent,
            "dlt/trainable_params": sum(p.numel() for p in self.module.parameters() if p.requires_grad),
            "dlt/layer_trainable_params": self.tying.trainable_parameters(),
        }

    def log_metrics(self) -> dict[str, Any]:
        row: dict[str, Any] = {**layer_metrics(self.tying.sources), **self._counts()}
        row.update({f"dlt/bytes/{k}": v for k, v in self._bytes.items()})
        row.update(self.last)
        row.update(
            {"dlt/epsilon": self.agent.epsilon, "dlt/episode": self.agent.episode, "dlt/layer": self.layer}
        )
        return row

    def summary(self) -> dict[str, Any]:
        return {
            "dlt": {
                "sources": list(self.tying.sources),
                "episodes": self.agent.episode,
                "actions": self.actions_taken,
                "epsilon": self.agent.epsilon,
                **{k.removeprefix("dlt/"): v for k, v in self._counts().items()},
                "bytes": dict(self._bytes),
                "history": [list(h) for h in self.history],
            }
        }

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        return {
            "agent": self.agent.state_dict(),
            "started": self.started,
            "layer": self.layer,
            "steps_in_action": self.steps_in_action,
            "pending": self.pending,
            "last": dict(self.last),
            "actions_taken": self.actions_taken,
            "history": [list(h) for h in self.history],
            "tying": self.tying.state_dict(),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        # The model's own state_dict restores the structure too (layers._extra_state); applying it
        # here as well makes the result independent of which of the two a trainer loads first.
        self.tying.load_state_dict(state["tying"])
        self.agent.load_state_dict(state["agent"])
        self.started = bool(state["started"])
        self.layer = int(state["layer"])
        self.steps_in_action = int(state["steps_in_action"])
        p = state["pending"]
        self.pending = None if p is None else (list(p[0]), int(p[1]), int(p[2]))
        self.last = dict(state["last"])
        self.actions_taken = int(state["actions_taken"])
        self.history = [list(h) for h in state["history"]]
        self._measure_steps = 2


def independent_modules(module: nn.Module) -> int:
    """Layers of ``module`` that hold weights of their own (a baseline: all of them)."""
    layers = getattr(module, "layers", ())
    if isinstance(layers, TiedStack):
        return layers.tying.n_independent
    return len(layers)
