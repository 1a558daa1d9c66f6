"""TransformerXL: memory semantics, Skip-Retain mechanics, cross-head, RNG isolation."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from torch import Tensor

from skipxl.errors import SkipxlError
from skipxl.model import (
    Context,
    CrossHeadConfig,
    Memory,
    ModelConfig,
    SkipRetainConfig,
    StepPlan,
    TransformerXL,
    get_preset,
)
from skipxl.model.attention import PositionalEmbedding
from skipxl.model.functional import draw_skip_mask, skip_probabilities
from skipxl.model.heads import draw_head_indices

torch.set_num_threads(1)
V = 50


def cfg_(**kw) -> ModelConfig:
    base = dict(
        n_token=V, n_layer=4, n_head=2, d_model=16, d_head=8, d_inner=32, dropout=0.0, tgt_len=4, mem_len=4
    )
    return ModelConfig(**{**base, **kw})


def build(seed: int = 0, **kw) -> TransformerXL:
    torch.manual_seed(seed)
    return TransformerXL(cfg_(**kw))


def tokens(b: int, t: int, seed: int = 1) -> Tensor:
    return torch.randint(0, V, (b, t), generator=torch.Generator().manual_seed(seed))


def draw_plan(model: TransformerXL, seed: int = 0) -> StepPlan:
    """One step's plan as the engine's policies draw it (the model itself draws nothing)."""
    gen = torch.Generator().manual_seed(seed)
    skip = None
    if model.cfg.skip is not None:
        skip = draw_skip_mask(skip_probabilities(model.cfg.skip, model.n_layer), gen)
    head_index = None
    if model.cfg.cross_head is not None:
        head_index = draw_head_indices(model.n_layer, model.n_head, model.cfg.cross_head, gen)
    return StepPlan(skip=skip, head_index=head_index)


# ---------------------------------------------------------------- memory semantics
@pytest.mark.parametrize("kw", [dict(), dict(pre_lnorm=True), dict(cutoffs=(10, 30), div_val=2, d_embed=16)])
def test_segments_with_full_memory_equal_one_pass(kw: dict) -> None:
    model = build(tgt_len=6, mem_len=6, **kw).eval()
    x = tokens(2, 13)
    inp, tgt = x[:, :-1], x[:, 1:]
    out1 = model(inp[:, :6], tgt[:, :6])
    out2 = model(inp[:, 6:], tgt[:, 6:], mems=out1.mems)
    full = model(inp, tgt, context=dataclasses.replace(model.train_context, mem_len=0))
    torch.testing.assert_close(full.nll[:, :6], out1.nll, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(full.nll[:, 6:], out2.nll, rtol=1e-5, atol=1e-5)


def single_pass_with_mask(model: TransformerXL, inp: Tensor, tgt: Tensor, mask: Tensor) -> Tensor:
    """One pass over the whole sequence through the model's own layers with a given mask."""
    klen = inp.size(1)
    core = model.word_emb(inp)
    r = PositionalEmbedding(model.d_model)(torch.arange(klen - 1, -1, -1.0))
    for layer in model.layers:
        core = layer(core, None, r, model.r_w_bias, model.r_r_bias, mask)
    return model.crit(core.reshape(-1, model.d_model), tgt.reshape(-1)).view(tgt.shape)


@pytest.mark.parametrize("mem_len", [2, 5])
def test_segments_with_short_memory_equal_one_pass_under_band_mask(mem_len: int) -> None:
    seg = 5
    model = build(tgt_len=seg, mem_len=mem_len).eval()
    x = tokens(2, 3 * seg + 1)
    inp, tgt = x[:, :-1], x[:, 1:]
    mems, nlls = None, []
    for s in range(3):
        out = model(inp[:, s * seg : (s + 1) * seg], tgt[:, s * seg : (s + 1) * seg], mems=mems)
        mems, nlls = out.mems, [*nlls, out.nll]
    # Query i of segment s sees key j iff j <= i and j >= s * seg - mem_len.
    i = torch.arange(3 * seg)[:, None]
    j = torch.arange(3 * seg)[None, :]
    mask = (j > i) | (j < (i // seg) * seg - mem_len)
    ref = single_pass_with_mask(model, inp, tgt, mask)
    torch.testing.assert_close(torch.cat(nlls, 1), ref, rtol=1e-5, atol=1e-5)


def test_memory_is_detached_and_bounded() -> None:
    model = build(tgt_len=4, mem_len=10).train()
    mems = None
    expected_len = [4, 8, 10, 10, 10]
    for s in range(5):
        out = model(tokens(2, 4, seed=s), tokens(2, 4, seed=s + 10), mems=mems)
        out.loss.backward()
        mems = out.mems
        for state, pos in zip(mems.states, mems.positions, strict=True):
            assert state.shape == (2, expected_len[s], 16)
            assert not state.requires_grad and state.grad_fn is None
            assert torch.equal(pos, torch.arange(4 * (s + 1) - expected_len[s], 4 * (s + 1)))
        assert mems.next_position == 4 * (s + 1)
    assert mems.nbytes() == 4 * 2 * 10 * 16 * 4


def test_context_grows_memory_and_validates() -> None:
    model = build(tgt_len=4, mem_len=4).eval()
    out = model(tokens(1, 4))
    context = Context(tgt_len=2, mem_len=6, clamp_len=3, same_length=True)
    out = model(tokens(1, 2), mems=out.mems, context=context)
    out = model(tokens(1, 2), mems=out.mems, context=context)
    assert out.mems.mlen(0) == 6 and context.clamp_len == 3
    assert model.train_context == Context(tgt_len=4, mem_len=4)  # the model keeps no evaluation state
    with pytest.raises(SkipxlError, match="clamp_len"):
        dataclasses.replace(context, clamp_len=0)


def test_targets_may_cover_the_last_steps_only() -> None:
    model = build().eval()
    x = tokens(2, 6)
    full = model(x, x)
    part = model(x, x[:, 2:])
    torch.testing.assert_close(part.nll, full.nll[:, 2:])
    assert model(x).nll is None and model(x).hidden.shape == (2, 6, 16)


# ---------------------------------------------------------------- Skip-Retain
def test_skipped_layer_is_not_computed_and_retains_its_memory() -> None:
    model = build(skip=SkipRetainConfig(schedule="constant", p=0.5)).train()
    calls = [0] * 4
    for idx, layer in enumerate(model.layers):
        layer.register_forward_hook(lambda m, i, o, idx=idx: calls.__setitem__(idx, calls[idx] + 1))
    out1 = model(tokens(2, 4), tokens(2, 4, 2), plan=StepPlan(skip=(False,) * 4))
    out2 = model(
        tokens(2, 4, 3), tokens(2, 4, 4), mems=out1.mems, plan=StepPlan(skip=(False, True, False, False))
    )
    assert calls == [2, 1, 2, 2]
    assert out2.mems.states[1] is out1.mems.states[1]
    assert torch.equal(out2.mems.positions[1], out1.mems.positions[1])
    for layer in (0, 2, 3):
        assert torch.equal(out2.mems.positions[layer], torch.arange(4, 8))
        assert not torch.equal(out2.mems.states[layer], out1.mems.states[layer])
    assert out2.mems.next_position == 8  # the segment positions advance


def test_ages_and_true_distances_after_a_sequence_of_skips() -> None:
    model = build(mem_len=6, skip=SkipRetainConfig(schedule="constant", p=0.5)).train()
    seen: dict[str, Tensor | None] = {}

    def spy(module, args):
        seen["r_len"], seen["index"], seen["mask"] = args[2].size(0), args[6], args[5]

    model.layers[1].dec_attn.register_forward_pre_hook(spy)
    plans = [(0, 0, 0, 0), (0, 1, 0, 0), (0, 1, 1, 0), (0, 0, 0, 0)]
    mems = None
    for s, skip in enumerate(plans):
        if s == 3:  # before the last step: hand-computed memories
            assert [p.tolist() for p in mems.positions] == [
                [6, 7, 8, 9, 10, 11],
                [0, 1, 2, 3],
                [2, 3, 4, 5, 6, 7],
                [6, 7, 8, 9, 10, 11],
            ]
            assert [a.tolist() for a in mems.ages()][1] == [12, 11, 10, 9]
            assert mems.staleness() == [0, 8, 4, 0]
        out = model(
            tokens(2, 4, s), tokens(2, 4, s + 9), mems=mems, plan=StepPlan(skip=tuple(map(bool, skip)))
        )
        mems = out.mems
    # Step 4, layer 1: keys at positions [0, 1, 2, 3, 12, 13, 14, 15], queries 12..15.
    keys = torch.tensor([0, 1, 2, 3, 12, 13, 14, 15])
    expected = torch.arange(12, 16)[:, None] - keys[None, :]
    dist = seen["r_len"] - 1 - seen["index"]
    visible = ~seen["mask"]
    assert seen["r_len"] == 16
    assert torch.equal(dist[visible], expected[visible])
    assert [p.tolist() for p in mems.positions] == [
        [10, 11, 12, 13, 14, 15],
        [2, 3, 12, 13, 14, 15],
        [6, 7, 12, 13, 14, 15],
        [10, 11, 12, 13, 14, 15],
    ]
    assert mems.ages()[1].tolist() == [14, 13, 4, 3, 2, 1]


def test_retain_positions_contiguous_uses_the_rel_shift_path() -> None:
    model = build(skip=SkipRetainConfig(schedule="constant", p=0.5, retain_positions="contiguous")).train()
    seen = {}
    model.layers[1].dec_attn.register_forward_pre_hook(lambda m, a: seen.update(r=a[2].size(0), index=a[6]))
    out = model(tokens(2, 4), plan=StepPlan(skip=(False,) * 4))
    out = model(tokens(2, 4), mems=out.mems, plan=StepPlan(skip=(False, True, False, False)))
    model(tokens(2, 4), mems=out.mems, plan=StepPlan(skip=(False,) * 4))
    assert seen["index"] is None and seen["r"] == 8


def train_losses(model: TransformerXL, steps: int = 4) -> tuple[list[Tensor], list[Tensor]]:
    torch.manual_seed(123)  # the dropout stream
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    mems, losses = None, []
    for s in range(steps):
        out = model(tokens(3, 4, s), tokens(3, 4, s + 50), mems=mems, plan=draw_plan(model, seed=s))
        out.loss.backward()
        opt.step()
        opt.zero_grad()
        mems, losses = out.mems, [*losses, out.loss.detach()]
    return losses, [p.detach().clone() for p in model.parameters()]


def test_pskip0_beta0_is_bitwise_the_baseline_with_dropout() -> None:
    kw = dict(dropout=0.2, dropatt=0.1, cutoffs=(10, 30), div_val=2, d_embed=16)
    base_losses, base_params = train_losses(build(**kw).train())
    methods = build(**kw, skip=SkipRetainConfig(p=0.0), cross_head=CrossHeadConfig(beta=0.0)).train()
    losses, params = train_losses(methods)
    assert all(torch.equal(a, b) for a, b in zip(losses, base_losses, strict=True))
    assert all(torch.equal(a, b) for a, b in zip(params, base_params, strict=True))
    # The test is sensitive: actually mixing heads changes the losses.
    mixed_losses, _ = train_losses(build(**kw, cross_head=CrossHeadConfig(beta=1.0)).train())
    assert not all(torch.equal(a, b) for a, b in zip(mixed_losses, base_losses, strict=True))


def test_evaluation_ignores_the_plan_and_the_methods() -> None:
    base = build().eval()
    methods = build(
        skip=SkipRetainConfig(schedule="constant", p=1.0), cross_head=CrossHeadConfig(beta=1.0)
    ).eval()
    x = tokens(2, 4)
    ref = base(x, x)
    out = methods(x, x, plan=StepPlan(skip=(True,) * 4, head_index=torch.tensor([[1, 0]] * 4)))
    assert torch.equal(out.nll, ref.nll) and out.plan.skip is None and out.plan.head_index is None


def test_cross_head_in_training_mixes_and_identity_plan_does_not() -> None:
    model = build(cross_head=CrossHeadConfig(beta=1.0, mode="per_head")).train()
    x = tokens(2, 4)
    out = model(x, x, plan=draw_plan(model))
    assert out.plan.head_index is not None
    assert all((out.plan.head_index[l] != torch.arange(2)).all() for l in range(4))
    ident = model(x, x, plan=StepPlan(head_index=torch.arange(2).repeat(4, 1)))
    torch.testing.assert_close(ident.nll, model.eval()(x, x).nll)
    assert not torch.allclose(out.nll, ident.nll)


def test_bad_inputs_raise_clear_errors() -> None:
    model = build().train()
    with pytest.raises(SkipxlError, match=r"plan\.skip has 2 entries"):
        model(tokens(1, 4), plan=StepPlan(skip=(False, True)))
    with pytest.raises(SkipxlError, match="head_index has shape"):
        model(tokens(1, 4), plan=StepPlan(head_index=torch.zeros(4, 3, dtype=torch.long)))
    with pytest.raises(SkipxlError, match="mems has 2 layers"):
        model(tokens(1, 4), mems=Memory.empty(2, 1, 16))
    with pytest.raises(SkipxlError, match="input_ids must be"):
        model(tokens(1, 4)[0])


def test_segment_end_positions_score_keys_by_distance_to_segment_end() -> None:
    rel = build(seed=4).eval()
    with torch.no_grad():  # make the position term matter
        for p in rel.parameters():
            p.mul_(20.0)
    seg = TransformerXL(dataclasses.replace(rel.cfg, positions="segment_end")).eval()
    seg.load_state_dict(rel.state_dict())
    x = tokens(2, 4)
    assert not torch.allclose(seg(x, x).nll, rel(x, x).nll)
    # With one query the two definitions coincide (its distance is the distance to the end).
    torch.testing.assert_close(seg(x[:, :1], x[:, :1]).nll, rel(x[:, :1], x[:, :1]).nll)


def test_tiny_preset_trains() -> None:
    torch.manual_seed(0)
    model = TransformerXL(get_preset("tiny", n_token=V, dropout=0.0)).train()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    x = tokens(4, 17)
    first = None
    for _ in range(30):
        loss = model(x[:, :-1], x[:, 1:]).loss
        first = first if first is not None else loss.item()
        loss.backward()
        opt.step()
        opt.zero_grad()
    assert loss.item() < 0.5 * first


def test_forward_needs_no_tensor_values_on_the_host() -> None:
    """On the meta device a tensor has no data: any .item() / bool() / nonzero on a device
    tensor would raise. Skip-Retain (gather path) and cross-head run; only the adaptive
    softmax tail (documented) needs data, so the loss here uses a plain softmax."""
    kw = dict(skip=SkipRetainConfig(schedule="constant", p=0.5), cross_head=CrossHeadConfig(beta=1.0))
    with torch.device("meta"):
        adaptive = TransformerXL(cfg_(cutoffs=(10, 30), div_val=2, **kw)).train()
        plain = TransformerXL(cfg_(**kw)).train()
    x = torch.zeros(2, 4, dtype=torch.long, device="meta")
    for model, targets in ((adaptive, None), (plain, x)):
        out = model(x, targets, plan=StepPlan(skip=(False,) * 4))
        for skip in ((False, True, False, False), (False,) * 4):
            plan = StepPlan(skip=skip, head_index=draw_plan(model).head_index)
            out = model(x, targets, mems=out.mems, plan=plan)
        (out.loss if targets is not None else out.hidden.sum()).backward()
        assert out.mems.positions[1].tolist() == [8, 9, 10, 11]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA to detect host syncs")
def test_forward_has_no_host_sync_without_adaptive_tail() -> None:
    model = (
        build(skip=SkipRetainConfig(schedule="constant", p=0.5), cross_head=CrossHeadConfig(beta=1.0))
        .cuda()
        .train()
    )
    x = tokens(2, 4).cuda()
    out = model(x, x, plan=draw_plan(model))
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for skip in ((False, True, False, False), (False,) * 4):  # retained memory: gather path
            plan = StepPlan(skip=skip, head_index=draw_plan(model).head_index)
            out = model(x, x, mems=out.mems, plan=plan)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    out.loss.backward()
