"""The Dynamic Layer Tying policy (skipxl.engine.dlt) driven through the TrainingPolicy hooks.

A minimal loop calls the hooks in the Trainer's order (plan, forward/backward,
before_optimizer_step, optimizer step, after_step) on a plain torch optimizer, which is what
DeepSpeed ZeRO-0 fp32 hands the policy; the engine-level tests live in test_engine_tying.py.
"""

from __future__ import annotations

import copy
import math

import pytest
import torch

from skipxl.engine.distributed import WorldInfo
from skipxl.engine.dlt import DLTConfig, DynamicLayerTyingPolicy
from skipxl.engine.dlt_agent import AgentConfig
from skipxl.engine.policies import StepMetrics, TrainView
from skipxl.errors import SkipxlError
from skipxl.model import StepPlan, TransformerXL
from skipxl.model.presets import tiny
from skipxl.model.tying import TyingConfig

N_LAYER = 4
WORLD = WorldInfo(rank=0, local_rank=0, world_size=1)


class Run:
    """Model + Adam + DLT policy + the global RNG, stepped like the Trainer does."""

    def __init__(self, seed: int = 0, steps_per_action: int = 2, **agent) -> None:
        torch.manual_seed(seed)
        self.model = TransformerXL(tiny(n_token=40, n_layer=N_LAYER, tying=TyingConfig()))
        self.opt = torch.optim.Adam(self.model.parameters(), lr=3e-3)
        cfg = DLTConfig(steps_per_action=steps_per_action, agent=AgentConfig(**{"seed": 5, **agent}))
        self.policy = DynamicLayerTyingPolicy(N_LAYER, cfg)
        self.policy.bind(TrainView(self.model, self.opt, WORLD))
        self.step = 0
        self.mems = None

    def train_step(self) -> tuple[float, tuple[int, ...], list[int]]:
        g = torch.Generator().manual_seed(1000 + self.step)
        x, y = torch.randint(0, 40, (2, 16), generator=g), torch.randint(0, 40, (2, 16), generator=g)
        plan = self.policy.plan(self.step, StepPlan())
        out = self.model(x, y, mems=self.mems, plan=plan)
        out.loss.backward()
        self.policy.before_optimizer_step(self.step, plan)
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        self.mems = out.mems
        self.step += 1
        trained = list(self.policy.pending[:2])  # (state, layer) this step trained under
        self.policy.after_step(StepMetrics(self.step, out.loss.detach(), plan, 3e-3))
        return float(out.loss.detach()), self.model.layers.tying.sources, trained

    def save(self) -> dict:
        return copy.deepcopy(
            {
                "model": self.model.state_dict(),
                "opt": self.opt.state_dict(),
                "policy": self.policy.state_dict(),
                "rng": torch.get_rng_state(),
                "step": self.step,
                "mems": self.mems,
            }
        )

    def load(self, saved: dict) -> None:
        saved = copy.deepcopy(saved)
        self.model.load_state_dict(saved["model"])  # the structure first (extra state), then weights
        self.opt.load_state_dict(saved["opt"])
        self.policy.load_state_dict(saved["policy"])
        torch.set_rng_state(saved["rng"])
        self.step, self.mems = saved["step"], saved["mems"]


def test_an_episode_walks_layers_one_to_n_minus_one_with_k_steps_each() -> None:
    run = Run(steps_per_action=2)
    layers_trained = [run.train_step()[2][1] for _ in range(2 * (N_LAYER - 1) * 2)]
    assert layers_trained == [1, 1, 2, 2, 3, 3] * 2  # two episodes, two steps per action
    assert run.policy.agent.episode == 2
    assert run.policy.agent.epsilon == pytest.approx(0.95**2)
    row = run.policy.log_metrics()
    assert row["dlt/independent_layers"] == run.model.layers.tying.n_independent
    assert row["dlt/trainable_params"] == sum(p.numel() for p in run.model.parameters())
    assert {"dlt/q_loss", "dlt/reward", "dlt/epsilon", "dlt/bytes/params", "dlt/bytes/grads"} <= set(row)
    assert row["dlt/bytes/grads"] == row["dlt/bytes/params"]  # every live parameter has a gradient
    assert row["dlt/reward"] == pytest.approx(-row["dlt/reward_loss"])
    assert all(0 <= row[f"dlt/source/layer_{i:02d}"] <= i for i in range(N_LAYER))


def test_the_optimizer_holds_exactly_the_live_parameters_after_every_action() -> None:
    run = Run(steps_per_action=1)
    for _ in range(12):
        run.train_step()
        live = {id(p) for p in run.model.parameters()}
        assert {id(p) for g in run.opt.param_groups for p in g["params"]} == live
        assert {id(p) for p in run.opt.state} <= live


def test_resume_mid_episode_is_bitwise() -> None:
    ref = Run(steps_per_action=3)
    trace = [ref.train_step() for _ in range(16)]

    first = Run(steps_per_action=3)
    for _ in range(7):  # mid-action (7 = 2 actions + 1 step) and mid-episode
        first.train_step()
    saved = first.save()
    resumed = Run(seed=123, steps_per_action=3)  # other weights, generator, structure
    resumed.load(saved)
    got = [resumed.train_step() for _ in range(9)]
    assert got == trace[7:]
    for (k, a), (_, b) in zip(
        ref.model.state_dict().items(), resumed.model.state_dict().items(), strict=True
    ):
        assert k == "layers._extra_state" or torch.equal(a, b), k
    assert ref.policy.agent.state_dict()["epsilon"] == resumed.policy.agent.state_dict()["epsilon"]
    for a, b in zip(ref.policy.agent.net.parameters(), resumed.policy.agent.net.parameters(), strict=True):
        assert torch.equal(a, b)


def test_the_reward_is_the_clipped_negative_training_loss() -> None:
    run = Run(steps_per_action=1, reward="neg_ppl")
    run.train_step()
    last = run.policy.last
    assert last["dlt/reward"] == max(-10.0, -math.exp(last["dlt/reward_loss"]))
    assert last["dlt/reward"] == -10.0  # ppl ~ 40 at the start: the released reward is constant


def test_dlt_refuses_flat_deepspeed_states_and_untied_models() -> None:
    policy = DynamicLayerTyingPolicy(N_LAYER)
    model = TransformerXL(tiny(n_token=40, n_layer=N_LAYER, tying=TyingConfig()))
    with pytest.raises(SkipxlError, match="ZeRO stage 2 with fp32"):
        policy.bind(TrainView(model, None, WORLD, zero_stage=2))
    plain = TransformerXL(tiny(n_token=40, n_layer=N_LAYER))
    with pytest.raises(SkipxlError, match=r"ModelConfig\.tying"):
        policy.bind(TrainView(plain, torch.optim.Adam(plain.parameters()), WORLD))


def test_history_records_every_action_and_the_heat_map_matrix_follows_it() -> None:
    from skipxl.engine.dlt_plot import state_matrix

    run = Run(steps_per_action=2)
    for _ in range(8):
        run.train_step()
    history = run.policy.history
    assert [h[0] for h in history] == [0, 2, 4, 6, 8]  # the step count before each action
    assert [h[1] for h in history] == [1, 2, 3, 1, 2]
    assert all(h[2] == h[3 + h[1]] for h in history)  # the action is the new state[layer]
    assert history[-1][3:] == list(run.model.layers.tying.sources)
    grid = state_matrix([h[0] for h in history], [h[3:] for h in history], 9)  # [L, 9]
    assert grid.shape == (N_LAYER, 9)
    assert grid[:, 0].tolist() == history[0][3:] and grid[:, 7].tolist() == history[3][3:]
    assert grid[:, 8].tolist() == history[4][3:]


@pytest.mark.parametrize(
    ("skip", "kept_layer_grads"),
    [
        ((True, False, False, False), True),
        ((False, False, True, False), True),
        ((False, False, True, True), False),
    ],
)
def test_skip_retain_keeps_the_gradient_a_computed_tie_gave_a_skipped_owner(skip, kept_layer_grads) -> None:
    """Sources (0, 0, 2, 2): skipping owner 0 while layer 1 (tied to 0) is computed, its weights did
    work and keep their gradient; an owner whose every use is skipped loses it (skipped_grad none)."""
    from skipxl.engine.phases import PHASE_SKIP, PhaseController
    from skipxl.engine.policies import SkipRetainPolicy, plan_generator
    from skipxl.model.config import SkipRetainConfig

    cfg = SkipRetainConfig(schedule="constant", p=0.5, protect_ends=False)
    torch.manual_seed(0)
    model = TransformerXL(tiny(n_token=40, n_layer=N_LAYER, dropout=0.0, skip=cfg, tying=TyingConfig()))
    model.layers.tying.apply((0, 0, 2, 2))
    policy = SkipRetainPolicy(
        cfg, N_LAYER, PhaseController(enabled=True, phase=PHASE_SKIP), plan_generator(0)
    )
    policy.bind(TrainView(model, torch.optim.Adam(model.parameters()), WORLD))
    x = torch.randint(0, 40, (2, 16))
    plan = StepPlan(skip=skip)
    model(x, x, plan=plan).loss.backward()
    policy.before_optimizer_step(0, plan)
    owner = 0 if skip[0] else 2
    grads = [p.grad for p in model.layers[owner].parameters()]
    assert all(g is not None for g in grads) == kept_layer_grads
    assert all(g is None for g in grads) == (not kept_layer_grads)
