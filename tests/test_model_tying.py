"""Layer tying (skipxl.model.tying) as real weight sharing, and the optimizer that follows it."""

from __future__ import annotations

import copy

import pytest
import torch

from skipxl.engine.tying_optim import parameter_role, require_dynamic_parameters, sync_optimizer
from skipxl.errors import SkipxlError
from skipxl.model import TransformerXL
from skipxl.model.presets import tiny
from skipxl.model.transformer_xl import DecoderLayer
from skipxl.model.tying import LayerTying, TiedLayer, TyingConfig, check_sources

N_LAYER = 4


def _model(seed: int = 0, **overrides) -> TransformerXL:
    torch.manual_seed(seed)
    cfg = tiny(n_token=50, n_layer=N_LAYER, dropout=0.0, **overrides)
    return TransformerXL(cfg)


def _tying(model: TransformerXL, **cfg) -> LayerTying:
    return LayerTying(model.layers, lambda: DecoderLayer(model.cfg), TyingConfig(**cfg))


def _batch(seed: int = 1, n_token: int = 50) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, n_token, (2, 16), generator=g)
    y = torch.randint(0, n_token, (2, 16), generator=g)
    return x, y


def _reference(model: TransformerXL, roots: tuple[int, ...]) -> TransformerXL:
    """An untied model whose layer i holds an independent copy of layer roots[i]'s weights."""
    ref = TransformerXL(model.cfg)
    ref.load_state_dict(model.state_dict(), strict=False)
    for i, r in enumerate(roots):
        ref.layers[i].load_state_dict(model.layers[r].state_dict())
    return ref


def _layer_inputs(model: TransformerXL) -> tuple:
    torch.manual_seed(3)
    x = torch.randn(2, 5, model.d_model)
    r = torch.randn(5, model.d_model)
    mask = torch.triu(torch.ones(5, 5, dtype=torch.bool), diagonal=1)
    return x, None, r, model.r_w_bias, model.r_r_bias, mask


@pytest.mark.parametrize("gradient", ["shared", "detached"])
def test_tied_layer_output_equals_its_source_on_the_same_input(gradient: str) -> None:
    model = _model()
    tying = _tying(model, gradient=gradient)
    tying.set_source(2, 1)
    model.eval()
    args = _layer_inputs(model)
    assert isinstance(model.layers[2], TiedLayer)
    assert torch.equal(model.layers[2](*args), model.layers[1](*args))


def test_tied_layers_own_nothing_and_the_model_equals_an_untied_copy() -> None:
    model = _model()
    tying = _tying(model)
    full = sum(p.numel() for p in model.parameters())
    per_layer = sum(p.numel() for p in model.layers[0].parameters())
    tying.start()
    assert tying.sources == (0, 0, 0, 0) and tying.n_independent == 1
    assert sum(p.numel() for p in model.parameters()) == full - 3 * per_layer
    assert not any(k.startswith(("layers.1.", "layers.2.", "layers.3.")) for k in model.state_dict())
    tying.set_source(2, 2)
    tying.set_source(3, 2)  # 3 -> 2 (owner)
    model.eval()
    ref = _reference(model, tying.roots).eval()
    assert tying.roots == (0, 0, 2, 2)
    x, y = _batch()
    assert torch.equal(model(x, y).nll, ref(x, y).nll)


def test_gradient_semantics_shared_sums_every_use_detached_keeps_only_the_own() -> None:
    x, y = _batch()
    for gradient in ("shared", "detached"):
        model = _model()
        tying = _tying(model, gradient=gradient)
        tying.apply((0, 0, 2, 0))  # layers 1 and 3 use layer 0's weights
        ref = _reference(model, tying.roots)
        model(x, y).loss.backward()
        ref(x, y).loss.backward()
        for (name, p), q0, q1, q3 in zip(
            model.layers[0].named_parameters(),
            ref.layers[0].parameters(),
            ref.layers[1].parameters(),
            ref.layers[3].parameters(),
            strict=True,
        ):
            expected = q0.grad + q1.grad + q3.grad if gradient == "shared" else q0.grad
            torch.testing.assert_close(p.grad, expected, rtol=1e-5, atol=1e-7, msg=f"{gradient} {name}")


def test_a_tied_layer_holds_no_optimizer_state_and_untying_adds_a_fresh_copy() -> None:
    model = _model()
    tying = _tying(model)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    tying.start()
    sync_optimizer(opt, model)
    x, y = _batch()
    model(x, y).loss.backward()
    opt.step()
    live = {id(p) for p in model.parameters()}
    assert {id(p) for p in opt.state} == live == {id(p) for p in opt.param_groups[0]["params"]}
    state_elems = sum(s["exp_avg"].numel() for s in opt.state.values())
    assert state_elems == sum(p.numel() for p in model.parameters())

    before0 = {k: v.clone() for k, v in model.layers[0].state_dict().items()}
    change = tying.set_source(2, 2)
    sync_optimizer(opt, model)
    assert len(change.added) == len(list(model.layers[2].parameters())) and not change.removed
    for (k, v), p in zip(before0.items(), model.layers[2].parameters(), strict=True):
        assert torch.equal(p, v), k  # its own copy of the source's current weights ...
        assert p.untyped_storage().data_ptr() != model.layers[0].state_dict()[k].untyped_storage().data_ptr()
    assert all(p not in opt.state for p in model.layers[2].parameters())  # ... with fresh state
    opt.zero_grad()
    with torch.no_grad():  # train only layer 2: its source must not move (copy, not alias)
        for p in model.layers[2].parameters():
            p.add_(1.0)
    for k, v in model.layers[0].state_dict().items():
        assert torch.equal(v, before0[k]), k

    change = tying.set_source(2, 0)  # tie again: the copy and its state go
    sync_optimizer(opt, model)
    assert len(change.removed) == len(before0)
    assert {id(p) for p in opt.state} <= {id(p) for p in model.parameters()}


def test_untie_alias_keeps_sharing_storage_with_the_former_source() -> None:
    model = _model()
    tying = _tying(model, untie="alias")
    tying.start()
    tying.set_source(1, 1)
    for p1, p0 in zip(model.layers[1].parameters(), model.layers[0].parameters(), strict=True):
        assert p1 is not p0 and p1.data_ptr() == p0.data_ptr()
    with torch.no_grad():
        next(model.layers[1].parameters()).add_(1.0)
    assert torch.equal(next(model.layers[1].parameters()), next(model.layers[0].parameters()))
    assert tying.alias_groups == [[0, 1]]


def test_frozen_start_keeps_own_frozen_weights_until_untied() -> None:
    model = _model()
    tying = _tying(model, start="frozen")
    w3 = next(model.layers[3].parameters()).clone()
    tying.start()
    assert tying.sources == (0, 0, 0, 0) and tying.n_independent == 1
    assert not isinstance(model.layers[3], TiedLayer)
    assert all(not p.requires_grad for p in model.layers[3].parameters())
    opt = torch.optim.Adam(model.parameters())
    sync_optimizer(opt, model)
    assert all(p.requires_grad for p in opt.param_groups[0]["params"])
    tying.set_source(3, 3)
    assert all(p.requires_grad for p in model.layers[3].parameters())
    assert torch.equal(next(model.layers[3].parameters()), w3)  # the old random weights, not layer 0's


def test_untying_consumes_no_global_rng() -> None:
    model = _model()
    tying = _tying(model)
    tying.start()
    before = torch.get_rng_state()
    tying.set_source(3, 3)
    assert torch.equal(torch.get_rng_state(), before)


def test_state_round_trip_rebuilds_the_structure_and_the_optimizer_layout() -> None:
    x, y = _batch()
    a = _model(seed=0)
    ta = _tying(a)
    ta.start()
    ta.apply((0, 1, 1, 3))
    opt_a = torch.optim.Adam(a.parameters(), lr=1e-2)
    sync_optimizer(opt_a, a)
    a(x, y).loss.backward()
    opt_a.step()

    b = _model(seed=5)  # other weights: everything must come from the saved state
    tb = _tying(b)
    tb.start()
    tb.load_state_dict(ta.state_dict())
    b.load_state_dict(a.state_dict())
    opt_b = torch.optim.Adam(b.parameters(), lr=1e-2)
    sync_optimizer(opt_b, b)
    opt_b.load_state_dict(copy.deepcopy(opt_a.state_dict()))  # as from a file: no shared moments
    assert tb.sources == ta.sources and tb.roots == ta.roots
    for opt, model in ((opt_a, a), (opt_b, b)):
        opt.zero_grad()
        model(x, y).loss.backward()
        opt.step()
    for (k, va), (_, vb) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
        assert torch.equal(va, vb), k


def test_memoryless_transformer_lm_trains_with_tying() -> None:
    model = _model(mem_len=0)
    tying = _tying(model)
    tying.start()
    tying.set_source(2, 2)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    sync_optimizer(opt, model)
    x, y = _batch()
    out = model(x, y)
    assert all(s.size(1) == 0 for s in out.mems.states)
    out.loss.backward()
    opt.step()
    assert torch.isfinite(out.loss)


def test_skip_retain_composes_with_tying() -> None:
    from skipxl.model.config import SkipRetainConfig

    model = _model(skip=SkipRetainConfig(schedule="constant", p=0.5, protect_ends=False))
    tying = _tying(model)
    tying.start()
    x, y = _batch()
    model.train()
    out = model(x, y)
    out.loss.backward()
    assert torch.isfinite(out.loss)


def test_bad_states_and_actions_fail_with_one_clear_error() -> None:
    with pytest.raises(SkipxlError, match="later layer"):
        check_sources((0, 2, 1), 3)
    with pytest.raises(SkipxlError, match="layer 0 cannot be tied"):
        check_sources((1, 1, 2), 3)
    model = _model()
    tying = _tying(model)
    with pytest.raises(SkipxlError, match="earlier layer or itself"):
        tying.set_source(1, 2)
    with pytest.raises(SkipxlError, match="unknown"):
        TyingConfig(gradient="both")


def test_parameter_roles_match_layers_by_position_in_the_layer() -> None:
    assert parameter_role("layers.3.dec_attn.o_net.weight") == "layers.*.dec_attn.o_net.weight"
    assert parameter_role("word_emb.emb_layers.0.weight") == "word_emb.emb_layers.0.weight"


def test_new_parameters_join_the_group_of_their_role() -> None:
    model = _model()
    tying = _tying(model)
    tying.start()
    decay = [p for n, p in model.named_parameters() if n.endswith("weight")]
    no_decay = [p for n, p in model.named_parameters() if not n.endswith("weight")]
    opt = torch.optim.AdamW([{"params": decay}, {"params": no_decay, "weight_decay": 0.0}])
    tying.set_source(1, 1)
    sync_optimizer(opt, model)
    names = {id(p): n for n, p in model.named_parameters()}
    assert all(names[id(p)].endswith("weight") for p in opt.param_groups[0]["params"])
    assert any(names[id(p)].startswith("layers.1.") for p in opt.param_groups[1]["params"])


@pytest.mark.parametrize(("stage", "precision"), [(1, "fp32"), (2, "fp32"), (3, "fp32"), (0, "bf16")])
def test_zero_stages_that_flatten_parameters_are_refused(stage: int, precision: str) -> None:
    with pytest.raises(SkipxlError, match=f"ZeRO stage {stage} with {precision}"):
        require_dynamic_parameters(stage, precision)
    require_dynamic_parameters(0, "fp32")  # the one that keeps the saving


def _dlt_model(seed: int = 0, **tying) -> TransformerXL:
    torch.manual_seed(seed)
    return TransformerXL(tiny(n_token=50, n_layer=N_LAYER, dropout=0.0, tying=TyingConfig(**tying)))


def test_a_tying_model_starts_tied_and_keeps_the_baselines_initial_weights() -> None:
    base, dlt = _model(seed=0), _dlt_model(seed=0)
    assert dlt.layers.tying.sources == (0, 0, 0, 0)
    shared = dlt.state_dict()
    for k, v in base.state_dict().items():
        if not k.startswith(("layers.1.", "layers.2.", "layers.3.")):
            assert torch.equal(v, shared[k]), k  # same RNG stream: embedding, layer 0, softmax
    assert shared["layers._extra_state"]["sources"] == [0, 0, 0, 0]
    assert "layers._extra_state" not in base.state_dict()  # the baseline's keys are unchanged


def test_a_strict_state_dict_load_rebuilds_the_tying_structure_and_tells_the_optimizer() -> None:
    a = _dlt_model(seed=0)
    a.layers.tying.apply((0, 1, 0, 1))
    opt_a = torch.optim.Adam(a.parameters())
    x, y = _batch()
    a(x, y).loss.backward()
    opt_a.step()
    b = _dlt_model(seed=4)
    opt_b = torch.optim.Adam(b.parameters())
    calls = []
    b.layers.tying.listeners.append(lambda change: (calls.append(change), sync_optimizer(opt_b, b)))
    b.load_state_dict(copy.deepcopy(a.state_dict()))  # strict: the saved structure comes first
    assert b.layers.tying.sources == (0, 1, 0, 1) and len(calls) == 1
    opt_b.load_state_dict(copy.deepcopy(opt_a.state_dict()))
    a.eval(), b.eval()
    assert torch.equal(a(x, y).nll, b(x, y).nll)
