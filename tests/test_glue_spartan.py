"""SPARTAN memory (skipxl.glue.spartan): the math against hand-computed and naive references, and
where the memory sits in a Hugging Face BERT.

Checks: version 1 (dense) and version 2 (sparse gather) give equal outputs and gradients; top-k
keeps exactly k parents, the k largest; the children softmax runs within each group (a
hand-computed 2-parent case); the load-balancing loss at its two extremes and with padding;
attached to BERT the memory reads each layer's output and adds to it, and with zero values the
model is bitwise the stock model.
"""

from __future__ import annotations

import copy
import math

import pytest
import torch

pytest.importorskip("transformers")

from transformers import BertConfig, BertModel

from skipxl.errors import SkipxlError
from skipxl.glue.spartan import (
    MEMORY_ATTR,
    SpartanConfig,
    attach_spartan,
    load_balance_loss,
    parent_counts,
    parent_weights,
    spartan_memory,
)


def weights(E: int, M: int, H: int, seed: int = 0, dtype: torch.dtype = torch.float64):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(n, H, generator=gen, dtype=dtype, requires_grad=True) for n in (E, M, M)]


@pytest.mark.parametrize(("E", "M", "k"), [(16, 48, 8), (4, 12, 1), (4, 8, 4), (6, 6, 3)])
def test_versions_give_equal_outputs_and_gradients(E: int, M: int, k: int) -> None:
    H = 10
    gen = torch.Generator().manual_seed(1)
    h1 = torch.randn(3, 7, H, generator=gen, dtype=torch.float64, requires_grad=True)  # [B, S, H]
    h2 = h1.detach().clone().requires_grad_(True)
    w1 = weights(E, M, H)
    w2 = [w.detach().clone().requires_grad_(True) for w in w1]
    outs = []
    for version, h, w in (("v1", h1, w1), ("v2", h2, w2)):
        cfg = SpartanConfig(parents=E, children=M, topk=k, temperature=1.6, version=version)
        out = spartan_memory(h, *w, cfg).out
        (out * torch.linspace(-1, 1, H, dtype=out.dtype)).sum().backward()
        outs.append(out)
    torch.testing.assert_close(outs[0], outs[1], rtol=1e-12, atol=1e-12)
    for a, b in zip([h1, *w1], [h2, *w2], strict=True):
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-10, atol=1e-12)
    assert w1[2].grad.abs().sum() > 0  # a real gradient was compared
    # with one kept parent its weight is 1 whatever the logits: no gradient reaches W_e
    assert (w1[0].grad.abs().sum() > 0) == (k > 1)


def test_versions_agree_in_float32() -> None:
    torch.manual_seed(0)
    h = torch.randn(2, 9, 32)
    w = [t.float() for t in weights(16, 48, 32, dtype=torch.float32)]
    a = spartan_memory(h, *w, SpartanConfig(version="v1")).out
    b = spartan_memory(h, *w, SpartanConfig(version="v2")).out
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("k", [1, 3, 8, 16])
def test_topk_keeps_exactly_the_k_largest_parents(k: int) -> None:
    torch.manual_seed(k)
    h = torch.randn(4, 6, 12, dtype=torch.float64)
    w_parent = torch.randn(16, 12, dtype=torch.float64)
    a, top_a, top_idx = parent_weights(h, w_parent, k)
    logits = h @ w_parent.t()  # [B, S, E]
    assert ((a > 0).sum(-1) == k).all()
    torch.testing.assert_close(a.sum(-1), torch.ones(4, 6, dtype=torch.float64))
    naive = torch.argsort(logits, dim=-1, descending=True)[..., :k]  # the k largest, by sorting
    assert torch.equal(torch.sort(top_idx, -1).values, torch.sort(naive, -1).values)
    assert torch.equal((a > 0), torch.zeros_like(a, dtype=torch.bool).scatter(-1, naive, True))
    # kept weights: softmax over the kept logits only
    kept = torch.gather(logits, -1, top_idx)
    torch.testing.assert_close(top_a, torch.softmax(kept, -1))
    torch.testing.assert_close(torch.gather(a, -1, top_idx), top_a)
    counts = parent_counts(top_idx, 16)
    assert counts.sum() == k * 4 * 6


@pytest.mark.parametrize("version", ["v1", "v2"])
@pytest.mark.parametrize("k", [1, 2])
def test_children_softmax_is_per_group_hand_computed(version: str, k: int) -> None:
    """H = 2, E = 2 parents with C = 2 children each, temperature 2, h = (1, 0).

    parent logits (1, 0); child logits / T = (1, 0 | 2, 0) / 2 -> per-group softmax
    g0 = (e^.5, 1)/(e^.5 + 1), g1 = (e, 1)/(e + 1); values v0..v3 = (1,0), (0,1), (2,0), (0,3).
    """
    h = torch.tensor([[[1.0, 0.0]]], dtype=torch.float64)  # [1, 1, 2]
    w_parent = torch.tensor([[1.0, 0.0], [0.0, 0.0]], dtype=torch.float64)
    w_key = torch.tensor([[1.0, 0.0], [0.0, 0.0], [2.0, 0.0], [0.0, 0.0]], dtype=torch.float64)
    w_value = torch.tensor([[1.0, 0.0], [0.0, 1.0], [2.0, 0.0], [0.0, 3.0]], dtype=torch.float64)
    e = math.e
    a = [e / (e + 1), 1 / (e + 1)] if k == 2 else [1.0, 0.0]
    g0 = [math.exp(0.5) / (math.exp(0.5) + 1), 1 / (math.exp(0.5) + 1)]
    g1 = [e / (e + 1), 1 / (e + 1)]
    expected = [a[0] * g0[0] * 1 + a[1] * g1[0] * 2, a[0] * g0[1] * 1 + a[1] * g1[1] * 3]
    cfg = SpartanConfig(parents=2, children=4, topk=k, temperature=2.0, version=version)
    out = spartan_memory(h, w_parent, w_key, w_value, cfg).out
    torch.testing.assert_close(out[0, 0], torch.tensor(expected, dtype=torch.float64), rtol=1e-12, atol=0)
    # one softmax over all four children (no groups) would give a different answer
    flat = torch.softmax(h @ w_key.t() / 2.0, -1) @ w_value  # [1, 1, 2]
    assert not torch.allclose(out, flat)


def test_load_balance_loss_extremes_and_padding() -> None:
    E = 4
    uniform = torch.full((2, 3, E), 1.0 / E)
    assert load_balance_loss(uniform).item() == pytest.approx(1.0 / E**2)
    one = torch.zeros(2, 3, E)
    one[..., 2] = 1.0
    assert load_balance_loss(one).item() == pytest.approx(1.0 / E)
    # padding tokens are excluded: real tokens uniform, padding all on one parent
    mixed = uniform.clone()
    mixed[1, 1:] = one[1, 1:]
    mask = torch.ones(2, 3)
    mask[1, 1:] = 0
    assert load_balance_loss(mixed, mask).item() == pytest.approx(1.0 / E**2)
    assert load_balance_loss(mixed).item() > 1.0 / E**2


def tiny_bert(seed: int = 0) -> BertModel:
    torch.manual_seed(seed)
    cfg = BertConfig(
        vocab_size=60,
        hidden_size=16,
        num_hidden_layers=3,
        num_attention_heads=2,
        intermediate_size=32,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )
    return BertModel(cfg, add_pooling_layer=False).eval()


def batch() -> dict[str, torch.Tensor]:
    ids = torch.randint(1, 60, (2, 6), generator=torch.Generator().manual_seed(3))
    mask = torch.ones(2, 6, dtype=torch.long)
    mask[1, 4:] = 0
    return {"input_ids": ids, "attention_mask": mask}


def test_zero_values_leave_the_model_bitwise_stock() -> None:
    stock = tiny_bert()
    mem = copy.deepcopy(stock)
    attach_spartan(mem, SpartanConfig(parents=4, children=8, topk=2))
    for module in mem.modules():
        if hasattr(module, MEMORY_ATTR):
            torch.nn.init.zeros_(getattr(module, MEMORY_ATTR).value)
    assert torch.equal(stock(**batch()).last_hidden_state, mem(**batch()).last_hidden_state)


def test_memory_reads_every_layer_output_and_adds_to_it() -> None:
    """The memory's input is the stock layer output; the layer then returns input + memory(input)."""
    stock = tiny_bert()
    ids = {"input_ids": batch()["input_ids"]}  # no padding: layers can be called without a mask
    ref = stock(**ids, output_hidden_states=True).hidden_states  # embeddings + 3 layer outputs
    mem = copy.deepcopy(stock)
    cfg = SpartanConfig(parents=4, children=8, topk=2)
    state = attach_spartan(mem, cfg)
    seen: list[tuple[torch.Tensor, torch.Tensor]] = []
    for module in mem.modules():
        if hasattr(module, MEMORY_ATTR):
            getattr(module, MEMORY_ATTR).register_forward_hook(lambda m, a, o: seen.append((a[0], o)))
    # Feed layer i the stock input of layer i: its memory must see exactly stock layer output i.
    for i, layer in enumerate(mem.encoder.layer):
        seen.clear()
        returned = layer(ref[i])
        returned = returned[0] if isinstance(returned, tuple) else returned
        ((x, y),) = seen
        assert torch.equal(x, ref[i + 1])
        w = getattr(layer.output, MEMORY_ATTR)
        torch.testing.assert_close(y, x + spartan_memory(x, w.parent, w.key, w.value, cfg).out)
        assert torch.equal(returned, y)
    # the model-level hook captured the padding mask for the aux loss / usage counts
    mem(**batch())
    assert torch.equal(state.mask, batch()["attention_mask"])


def test_versions_agree_inside_a_model_and_aux_loss_is_collected() -> None:
    outs = []
    for version in ("v1", "v2"):
        model = tiny_bert()
        torch.manual_seed(5)
        state = attach_spartan(
            model, SpartanConfig(parents=4, children=12, topk=2, version=version, aux_loss=0.1)
        )
        model.train()
        outs.append(model(**batch()).last_hidden_state)
        assert len(state.aux_terms) == 3  # one per layer, reset at every forward
        model(**batch())
        assert len(state.aux_terms) == 3
    torch.testing.assert_close(outs[0], outs[1], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"children": 50}, "multiple of spartan_parents"),
        ({"topk": 17}, r"spartan_topk must be in \[1, spartan_parents=16\]"),
        ({"version": "v3"}, "spartan_version 'v3'"),
        ({"temperature": 0.0}, "spartan_temperature"),
        ({"aux_loss": -1.0}, "spartan_aux_loss"),
    ],
)
def test_bad_settings_are_one_clear_error(kwargs: dict, match: str) -> None:
    with pytest.raises(SkipxlError, match=match):
        SpartanConfig(**kwargs)


def test_attaching_twice_is_refused() -> None:
    model = tiny_bert()
    attach_spartan(model, SpartanConfig(parents=4, children=8, topk=2))
    with pytest.raises(SkipxlError, match="already attached"):
        attach_spartan(model, SpartanConfig(parents=4, children=8, topk=2))
