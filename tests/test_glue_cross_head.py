"""Cross-head attention for Hugging Face BERT (skipxl.glue.cross_head_attention).

Checks: beta = 0 and eval mode are bitwise the stock model; at beta = 1 every head reads the
keys/values of the head its index names (per_head: always another head; permutation: head i
reads perm[i]) -- against a naive softmax reference and against a stock model whose K/V
projection rows were permuted; the draw never touches the global RNG; selection by name.
"""

from __future__ import annotations

import copy

import pytest
import torch

transformers = pytest.importorskip("transformers")

from transformers import AutoConfig, AutoModel, BertConfig, BertModel  # noqa: E402
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS  # noqa: E402

from skipxl.errors import SkipxlError  # noqa: E402
from skipxl.glue.cross_head_attention import (  # noqa: E402
    STATE_ATTR,
    CrossHeadState,
    enable_cross_head,
    make_generator,
)
from skipxl.model.heads import CrossHeadConfig, draw_head_index  # noqa: E402

H, D_HEAD = 4, 8


def tiny_bert(dropout: float = 0.1, attn: str = "sdpa", seed: int = 0) -> BertModel:
    torch.manual_seed(seed)
    cfg = BertConfig(
        vocab_size=50,
        hidden_size=H * D_HEAD,
        num_hidden_layers=2,
        num_attention_heads=H,
        intermediate_size=48,
        max_position_embeddings=32,
        hidden_dropout_prob=dropout,
        attention_probs_dropout_prob=dropout,
    )
    model = BertModel(cfg, add_pooling_layer=False)
    model.set_attn_implementation(attn)
    return model


def inputs(seed: int = 0) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, 50, (3, 7), generator=gen)  # [B, T]
    mask = torch.ones(3, 7, dtype=torch.long)
    mask[1, 5:] = 0  # padding: the mask builder must be registered for these to be ignored
    mask[2, 3:] = 0
    return {"input_ids": ids, "attention_mask": mask}


def run(model: torch.nn.Module, batch: dict[str, torch.Tensor], seed: int = 123) -> torch.Tensor:
    torch.manual_seed(seed)  # same dropout stream for both models
    return model(**batch).last_hidden_state


@pytest.mark.parametrize("base", ["sdpa", "eager"])
@pytest.mark.parametrize("mode", ["permutation", "per_head"])
def test_beta_zero_training_is_bitwise_stock(base: str, mode: str) -> None:
    stock = tiny_bert(attn=base).train()
    mixed = copy.deepcopy(stock)
    state = enable_cross_head(mixed, CrossHeadConfig(beta=0.0, mode=mode), seed=0, base=base)
    batch = inputs()
    out_stock, out_mixed = run(stock, batch), run(mixed, batch)
    assert torch.equal(out_stock, out_mixed)
    assert state.draws == 2  # one draw per layer happened, from the dedicated generator
    out_stock.sum().backward()
    out_mixed.sum().backward()
    for (name, p), q in zip(stock.named_parameters(), mixed.parameters(), strict=True):
        assert torch.equal(p.grad, q.grad), name


@pytest.mark.parametrize("base", ["sdpa", "eager"])
def test_eval_mode_is_bitwise_stock_even_at_beta_one(base: str) -> None:
    stock = tiny_bert(attn=base).eval()
    mixed = copy.deepcopy(stock)
    state = enable_cross_head(mixed, CrossHeadConfig(beta=1.0, mode="per_head"), seed=0, base=base)
    mixed.eval()
    batch = inputs()
    assert torch.equal(run(stock, batch), run(mixed, batch))
    assert state.draws == 0
    # Sanity: the same model in training mode does mix (otherwise the test above proves nothing).
    mixed.train()
    stock.train()
    assert not torch.allclose(run(stock, batch), run(mixed, batch))


def naive_head(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scaling: float) -> torch.Tensor:
    """softmax(q k^T * scaling) v for one head: q [B, T, d], k/v [B, S, d] -> [B, T, d]."""
    return torch.softmax(q @ k.transpose(1, 2) * scaling, dim=-1) @ v


def qkv(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    shape = (2, H, 5, D_HEAD)  # [B, H, T, d]
    return tuple(torch.randn(shape, generator=gen) for _ in range(3))  # type: ignore[return-value]


def attention_module(model: BertModel, layer: int = 0) -> torch.nn.Module:
    return model.encoder.layer[layer].attention.self


@pytest.mark.parametrize("impl", ["cross_head_eager", "cross_head_sdpa"])
def test_per_head_beta_one_every_head_reads_another_head(impl: str) -> None:
    model = tiny_bert(dropout=0.0).train()
    module = attention_module(model)
    state = CrossHeadState(cfg=CrossHeadConfig(beta=1.0, mode="per_head"), generator=make_generator(5))
    object.__setattr__(module, STATE_ATTR, state)
    fn = ALL_ATTENTION_FUNCTIONS[impl]
    scaling = D_HEAD**-0.5
    q, k, v = qkv()
    for _ in range(5):  # several draws
        out, _ = fn(module, q, k, v, None, dropout=0.0, scaling=scaling)  # [B, T, H, d]
        index = state.last_index[0]
        assert index is not None and all(int(index[i]) != i for i in range(H))
        for i in range(H):
            j = int(index[i])
            ref = naive_head(q[:, i], k[:, j], v[:, j], scaling)
            assert torch.allclose(out[:, :, i], ref, atol=1e-5)
            assert not torch.allclose(out[:, :, i], naive_head(q[:, i], k[:, i], v[:, i], scaling), atol=1e-3)
    # Head-identifiable values (head h holds the constant h): output slot i is exactly index[i].
    v_id = torch.arange(H, dtype=torch.float32).view(1, H, 1, 1).expand(2, H, 5, D_HEAD)  # [B, H, T, d]
    out, _ = fn(module, q, k, v_id, None, dropout=0.0, scaling=scaling)
    index = state.last_index[0]
    assert torch.allclose(out[0, 0, :, 0], index.float(), atol=1e-5)
    assert not torch.equal(index, torch.arange(H))


@pytest.mark.parametrize("impl", ["cross_head_eager", "cross_head_sdpa"])
def test_permutation_beta_one_head_i_reads_perm_i(impl: str) -> None:
    model = tiny_bert(dropout=0.0).train()
    module = attention_module(model)
    cfg = CrossHeadConfig(beta=1.0, mode="permutation")
    state = CrossHeadState(cfg=cfg, generator=make_generator(11))
    object.__setattr__(module, STATE_ATTR, state)
    replay = torch.Generator()
    scaling = D_HEAD**-0.5
    q, k, _ = qkv(1)
    v_id = (torch.arange(H, dtype=torch.float32) + 1.0).view(1, H, 1, 1).expand(2, H, 5, D_HEAD)
    seen_non_identity = False
    for _ in range(6):
        replay.set_state(state.generator.get_state())
        perm = draw_head_index(H, cfg, replay)  # what the layer is about to draw
        out, _ = ALL_ATTENTION_FUNCTIONS[impl](module, q, k, v_id, None, dropout=0.0, scaling=scaling)
        assert torch.equal(state.last_index[0], perm)
        for i in range(H):
            assert torch.allclose(
                out[:, :, i], torch.full_like(out[:, :, i], float(perm[i]) + 1.0), atol=1e-5
            )
            ref = naive_head(q[:, i], k[:, int(perm[i])], v_id[:, int(perm[i])], scaling)
            assert torch.allclose(out[:, :, i], ref, atol=1e-5)
        seen_non_identity |= not torch.equal(perm, torch.arange(H))
    assert seen_non_identity


def permute_kv_rows(model: BertModel, layer: int, perm: torch.Tensor) -> None:
    """Reference: a stock layer whose key/value projections output head perm[i] in slot i."""
    attn = attention_module(model, layer)
    rows = torch.cat([torch.arange(int(j) * D_HEAD, (int(j) + 1) * D_HEAD) for j in perm])  # [H * d]
    with torch.no_grad():
        for lin in (attn.key, attn.value):
            lin.weight.copy_(lin.weight[rows])  # [H*d, hidden] rows regrouped by head
            lin.bias.copy_(lin.bias[rows])


@pytest.mark.parametrize("base", ["sdpa", "eager"])
def test_permutation_mode_equals_stock_model_with_permuted_kv_weights(base: str) -> None:
    stock = tiny_bert(dropout=0.0, attn=base)
    mixed = copy.deepcopy(stock).train()
    state = enable_cross_head(mixed, CrossHeadConfig(beta=1.0, mode="permutation"), seed=3, base=base)
    batch = inputs(1)
    out = run(mixed, batch)
    perms = [state.last_index[layer] for layer in range(2)]
    assert any(not torch.equal(p, torch.arange(H)) for p in perms)
    reference = copy.deepcopy(stock).train()
    for layer, perm in enumerate(perms):
        permute_kv_rows(reference, layer, perm)
    valid = batch["attention_mask"].bool()  # compare real tokens (padded rows are never read)
    assert torch.allclose(out[valid], run(reference, batch)[valid], atol=1e-5)
    assert not torch.allclose(out[valid], run(stock.train(), batch)[valid], atol=1e-3)


def test_sdpa_and_eager_wrappers_draw_alike() -> None:
    a = tiny_bert(dropout=0.0, attn="sdpa")
    b = copy.deepcopy(a)
    enable_cross_head(a.train(), CrossHeadConfig(beta=1.0, mode="per_head"), seed=4, base="sdpa")
    enable_cross_head(b.train(), CrossHeadConfig(beta=1.0, mode="per_head"), seed=4, base="eager")
    batch = inputs(2)
    valid = batch["attention_mask"].bool()
    assert torch.allclose(run(a, batch)[valid], run(b, batch)[valid], atol=1e-5)


def test_draws_never_touch_the_global_rng() -> None:
    model = tiny_bert(dropout=0.0).train()
    enable_cross_head(model, CrossHeadConfig(beta=0.5, mode="permutation"), seed=0)
    before = torch.get_rng_state()
    model(**inputs())
    assert torch.equal(before, torch.get_rng_state())


def test_selected_by_name_through_from_pretrained(tmp_path) -> None:
    stock = tiny_bert(dropout=0.0)
    stock.save_pretrained(tmp_path)
    config = AutoConfig.from_pretrained(tmp_path)  # transformers 5 passes unknown kwargs to the model,
    config.cross_head_beta, config.cross_head_mode = 1.0, "per_head"  # so settings go on the config
    mixed = AutoModel.from_pretrained(tmp_path, config=config, attn_implementation="cross_head_sdpa")
    assert mixed.config._attn_implementation == "cross_head_sdpa"
    batch = inputs()
    assert torch.equal(run(stock.eval(), batch), run(mixed.eval(), batch))
    run(mixed.train(), batch)
    for layer in range(2):
        state = getattr(attention_module(mixed, layer), STATE_ATTR)  # created lazily, one per layer
        assert state.cfg == CrossHeadConfig(beta=1.0, mode="per_head")
        index = state.last_index[layer]
        assert all(int(index[i]) != i for i in range(H))


def test_real_minilm_checkpoint_eval_identical() -> None:
    from skipxl.glue.model import minilm_dir

    try:
        path = minilm_dir()
    except SkipxlError as err:
        pytest.skip(f"MiniLM package not installed: {err}")
    stock = AutoModel.from_pretrained(path, local_files_only=True, attn_implementation="sdpa").eval()
    config = AutoConfig.from_pretrained(path, local_files_only=True)
    config.cross_head_beta = 1.0
    mixed = AutoModel.from_pretrained(
        path, config=config, local_files_only=True, attn_implementation="cross_head_sdpa"
    ).eval()
    batch = {
        "input_ids": torch.tensor([[101, 7592, 2088, 102, 0], [101, 2023, 2003, 1037, 102]]),
        "attention_mask": torch.tensor([[1, 1, 1, 1, 0], [1, 1, 1, 1, 1]]),
    }
    with torch.no_grad():
        assert torch.equal(stock(**batch).last_hidden_state, mixed(**batch).last_hidden_state)


def test_bad_base_is_a_clear_error() -> None:
    with pytest.raises(SkipxlError, match="cross-head base"):
        enable_cross_head(tiny_bert(), CrossHeadConfig(), seed=0, base="flash")
