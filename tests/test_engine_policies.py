"""Training policies (skipxl.engine.policies): the paper's draws, phase switches, skipped
gradients, and exact resume through state_dict (pure, fast: no DeepSpeed)."""

from __future__ import annotations

import contextlib
import copy

import pytest
import torch

from skipxl.engine.config import TrainConfig
from skipxl.engine.distributed import WorldInfo
from skipxl.engine.phases import PHASE_SKIP, PHASE_VANILLA, PhaseController
from skipxl.engine.policies import (
    CrossHeadPolicy,
    Policies,
    SkipRetainPolicy,
    StepMetrics,
    TrainingPolicy,
    TrainView,
    paper_policies,
    plan_generator,
)
from skipxl.errors import SkipxlError
from skipxl.model import CrossHeadConfig, ModelConfig, SkipRetainConfig, StepPlan, TransformerXL

WORLD = WorldInfo(rank=0, local_rank=0, world_size=1)


def cfg_(**kw) -> ModelConfig:
    base = dict(n_token=50, n_layer=4, n_head=2, d_model=16, d_head=8, d_inner=32, tgt_len=4, mem_len=4)
    return ModelConfig(**{**base, **kw})


METHODS = dict(skip=SkipRetainConfig(schedule="constant", p=0.5), cross_head=CrossHeadConfig(beta=0.5))


def plans(policy: TrainingPolicy, start: int, n: int) -> list[StepPlan]:
    return [policy.plan(step, StepPlan()) for step in range(start, start + n)]


def same_plans(a: list[StepPlan], b: list[StepPlan]) -> bool:
    def key(p: StepPlan):
        return p.skip, None if p.head_index is None else p.head_index.tolist()

    return [key(p) for p in a] == [key(p) for p in b]


def test_plans_come_from_the_plan_generator_only():
    a, b = paper_policies(cfg_(**METHODS, plan_seed=7)), paper_policies(cfg_(**METHODS, plan_seed=7))
    torch.manual_seed(0)
    state = torch.get_rng_state()
    plans_a = plans(a, 0, 5)
    assert torch.equal(state, torch.get_rng_state())  # the global RNG (dropout) is never touched
    assert same_plans(plans_a, plans(b, 0, 5))
    assert any(p.n_skipped for p in plans_a) and any(p.skip[1] is False for p in plans_a)
    assert not same_plans(plans_a, plans(paper_policies(cfg_(**METHODS, plan_seed=8)), 0, 5))
    # Phase 2: skipping off, the generator stream is unchanged (same numbers drawn).
    skip = next(p for p in a if isinstance(p, SkipRetainPolicy))
    saved = copy.deepcopy(a.state_dict())
    skip.phase.phase = PHASE_VANILLA
    plan = a.plan(5, StepPlan())
    skip.phase.phase = PHASE_SKIP
    a.load_state_dict(saved)
    again = a.plan(5, StepPlan())
    assert plan.skip is None and torch.equal(plan.head_index, again.head_index)


@pytest.mark.parametrize(
    "make",
    [
        lambda: SkipRetainPolicy(
            METHODS["skip"], 4, PhaseController(enabled=True, phase=PHASE_SKIP), plan_generator(3)
        ),
        lambda: CrossHeadPolicy(CrossHeadConfig(beta=0.5, mode="per_head"), 4, 2, plan_generator(3)),
        lambda: paper_policies(cfg_(**METHODS, plan_seed=3)),
    ],
    ids=["skip_retain", "cross_head", "both"],
)
def test_state_dict_round_trip_resumes_bitwise(make):
    full = make()
    first = plans(full, 0, 6)
    full_rest = plans(full, 6, 6)
    part = make()
    assert same_plans(plans(part, 0, 6), first)
    state = copy.deepcopy(part.state_dict())
    resumed = make()  # a fresh process: same config, generator at its start
    resumed.load_state_dict(state)
    assert same_plans(plans(resumed, 6, 6), full_rest)
    assert not same_plans(plans(make(), 0, 6), full_rest)  # the test would notice a lost state


def test_phase_state_resumes_through_the_policy():
    tc = TrainConfig(max_steps=100, phase1_patience=2, phase1_min_delta=0.01)

    def make() -> SkipRetainPolicy:
        return SkipRetainPolicy(METHODS["skip"], 4, PhaseController.from_config(tc, True), plan_generator(0))

    policy = make()
    assert policy.after_validation(10, {"val/loss": 5.0}) is None
    assert policy.after_validation(20, {"val/loss": 4.995}) is None  # 1 bad validation
    resumed = make()
    resumed.load_state_dict(copy.deepcopy(policy.state_dict()))
    event = resumed.after_validation(30, {"val/loss": 4.999})
    assert event is not None and event.metrics == {"phase": PHASE_VANILLA, "phase/switch_step": 30}
    assert resumed.log_metrics() == {"phase": PHASE_VANILLA}
    assert resumed.summary()["phase"]["switch_step"] == 30


def test_plateau_switch_ends_skipping():
    """phase1_patience validations without an improvement of phase1_min_delta end phase 1; the next
    plans skip nothing while the cross-head draws go on."""
    tc = TrainConfig(max_steps=1000, phase1_patience=2, phase1_min_delta=0.1)
    policies = paper_policies(cfg_(**METHODS), PhaseController.from_config(tc, True))
    skip = next(p for p in policies if isinstance(p, SkipRetainPolicy))
    assert policies.after_validation_events(10, {"val/loss": 5.0}) == []
    assert policies.after_validation_events(20, {"val/loss": 4.0}) == []  # improved by 1.0
    assert policies.after_validation_events(30, {"val/loss": 3.95}) == []  # by 0.05 < 0.1: 1 bad
    assert skip.phase.skipping and any(p.n_skipped for p in plans(policies, 30, 8))
    (event,) = policies.after_validation_events(40, {"val/loss": 3.99})  # 2nd bad: plateau
    assert event.metrics["phase/switch_step"] == 40 and "plateau" in event.message
    after = plans(policies, 40, 8)
    assert all(p.skip is None and p.head_index is not None for p in after)
    assert policies.after_validation_events(50, {"val/loss": 9.0}) == []  # switches once


def test_phase_switch_by_step_is_an_event_once():
    tc = TrainConfig(max_steps=10, phase1_steps=3, phase1_patience=None)
    policy = SkipRetainPolicy(METHODS["skip"], 4, PhaseController.from_config(tc, True), plan_generator(0))
    loss = torch.zeros(())
    events = [policy.after_step(StepMetrics(s, loss, StepPlan(), 1.0)) for s in range(1, 6)]
    assert [e is not None for e in events] == [False, False, True, False, False]
    assert events[2].message == "step 3: phase 2 (no skipping) - reached step 3"


@pytest.mark.parametrize(("skipped_grad", "plain_fp32", "expect"), [
    ("none", True, "none"), ("zero", True, "zero"), ("none", False, "kept"), ("zero", False, "kept"),
])  # fmt: skip
def test_skipped_layers_gradients(skipped_grad, plain_fp32, expect):
    model = TransformerXL(cfg_(skip=SkipRetainConfig(skipped_grad=skipped_grad)))
    policy = SkipRetainPolicy(
        model.cfg.skip, 4, PhaseController(enabled=True, phase=PHASE_SKIP), plan_generator(0)
    )
    view = TrainView(model, None, WORLD, zero_stage=0 if plain_fp32 else 2)
    if plain_fp32:
        policy.bind(view)
    else:
        with pytest.warns(UserWarning) if skipped_grad == "none" else contextlib.nullcontext():
            policy.bind(view)
    for p in model.parameters():
        p.grad = None
    for p in model.layers[0].parameters():
        p.grad = torch.ones_like(p)  # layer 0 computed; layers 1 and 2 skipped (2 had a gradient)
    for p in model.layers[2].parameters():
        p.grad = torch.full_like(p, 0.0)
    policy.before_optimizer_step(0, StepPlan(skip=(False, True, True, False)))
    assert all(torch.equal(p.grad, torch.ones_like(p)) for p in model.layers[0].parameters())
    for layer in (model.layers[1], model.layers[2]):
        grads = [p.grad for p in layer.parameters()]
        if expect == "none":
            assert all(g is None for g in grads)
        elif expect == "zero":
            assert all(g is not None and not g.any() for g in grads)
    if expect == "kept":  # left to DeepSpeed's buffers: nothing changed
        assert all(p.grad is None for p in model.layers[1].parameters())
        assert all(p.grad is not None for p in model.layers[2].parameters())


def test_policies_refuse_clashing_names_and_foreign_state():
    gen = plan_generator(0)
    with pytest.raises(SkipxlError, match="share a name"):
        Policies(
            [CrossHeadPolicy(CrossHeadConfig(), 4, 2, gen), CrossHeadPolicy(CrossHeadConfig(), 4, 2, gen)]
        )
    with pytest.raises(SkipxlError, match="resume with the variant"):
        paper_policies(cfg_(**METHODS)).load_state_dict({"cross_head": {}})
    with pytest.raises(SkipxlError, match="keeps no state"):
        TrainingPolicy().load_state_dict({"x": 1})
    baseline, plan = paper_policies(cfg_()), StepPlan()
    assert len(baseline) == 0 and baseline.plan(0, plan) is plan  # no method: a plain step


def _tokens(b: int, t: int, seed: int) -> torch.Tensor:
    return torch.randint(0, 50, (b, t), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("mode", ["none", "zero"])
def test_skipped_grad_modes_under_adam(mode: str) -> None:
    """Plain torch Adam (lr 1e-2): "none" leaves a skipped layer and its moments untouched,
    "zero" gives it an explicit zero gradient, so momentum still moves it."""
    torch.manual_seed(0)
    model = TransformerXL(
        cfg_(dropout=0.0, skip=SkipRetainConfig(schedule="constant", p=0.5, skipped_grad=mode))
    )
    model.train()
    policy = SkipRetainPolicy(
        model.cfg.skip, 4, PhaseController(enabled=True, phase=PHASE_SKIP), plan_generator(0)
    )
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    policy.bind(TrainView(model, opt, WORLD))
    keep, skip1 = StepPlan(skip=(False,) * 4), StepPlan(skip=(False, True, False, False))
    model(_tokens(2, 4, 1), _tokens(2, 4, 2), plan=keep).loss.backward()
    policy.before_optimizer_step(0, keep)
    opt.step()
    opt.zero_grad(set_to_none=True)
    before = [p.detach().clone() for p in model.layers[1].parameters()]
    out = model(_tokens(2, 4, 3), _tokens(2, 4, 4), plan=skip1)
    out.loss.backward()
    policy.before_optimizer_step(1, skip1)
    grads = [p.grad for p in model.layers[1].parameters()]
    assert model.layers[0].dec_attn.qkv_net.weight.grad.abs().sum() > 0
    opt.step()
    after = list(model.layers[1].parameters())
    if mode == "none":
        assert all(g is None for g in grads)
        assert all(torch.equal(a, b) for a, b in zip(after, before, strict=True))  # untouched
    else:
        assert all(g is not None and torch.count_nonzero(g) == 0 for g in grads)
        assert any(not torch.equal(a, b) for a, b in zip(after, before, strict=True))  # momentum
