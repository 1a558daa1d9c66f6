"""Adaptive input embedding and projected adaptive softmax."""

from __future__ import annotations

import pytest
import torch

from skipxl.model import ModelConfig, TransformerXL
from skipxl.model.adaptive import AdaptiveEmbedding, ProjectedAdaptiveLogSoftmax

torch.set_num_threads(1)

CASES = [
    dict(cutoffs=(), div_val=1, d_embed=None),  # plain softmax
    dict(cutoffs=(10, 30), div_val=1, d_embed=None),  # no projections
    dict(cutoffs=(10, 30), div_val=1, d_embed=8),  # projected, single out layer
    dict(cutoffs=(10, 30, 45), div_val=2, d_embed=16),  # per-cluster sizes 16/8/4/2
]


def build(case: dict, **kw) -> TransformerXL:
    torch.manual_seed(0)
    cfg = ModelConfig(n_token=50, n_layer=1, n_head=2, d_model=16, d_head=8, d_inner=16, **case, **kw)
    model = TransformerXL(cfg)
    with torch.no_grad():  # larger weights than init so the distribution is far from uniform
        for name, p in model.named_parameters():
            if "crit" in name or "word_emb" in name:
                p.normal_(0, 0.5)
    return model.eval()


@pytest.mark.parametrize("case", CASES)
def test_log_probs_normalise_and_nll_matches(case: dict) -> None:
    crit = build(case).crit
    hidden = torch.randn(40, 16)
    lp = crit.log_prob(hidden)
    assert lp.shape == (40, 50) and lp.dtype == torch.float32
    torch.testing.assert_close(lp.exp().sum(1), torch.ones(40), rtol=1e-5, atol=1e-5)
    target = torch.arange(40) % 50 if not case["cutoffs"] else torch.randint(0, 50, (40,))
    target[:4] = torch.tensor([0, 9, 10, 49])  # every cluster, both edges
    nll = crit(hidden, target)
    torch.testing.assert_close(nll, -lp.gather(1, target[:, None]).squeeze(1), rtol=1e-5, atol=1e-5)


def test_tail_cluster_reads_head_column_minus_i() -> None:
    """The original's quirk: cluster i's probability is head column -i (reverse order)."""
    crit = build(dict(cutoffs=(10, 30), div_val=1, d_embed=None)).crit
    hidden = torch.randn(5, 16)
    head_lp = torch.log_softmax(
        hidden @ torch.cat([crit.out_layers[0].weight[:10], crit.cluster_weight]).T
        + torch.cat([crit.out_layers[0].bias[:10], crit.cluster_bias]),
        dim=1,
    )  # [N, 10 + 2]: columns 10, 11 = cluster_weight rows 0, 1
    lp = crit.log_prob(hidden)
    # Cluster 1 (ids 10..29) uses head column -1 = cluster_weight row 1; its tail sums to 1.
    torch.testing.assert_close(lp[:, 10:30].logsumexp(1), head_lp[:, 11], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(lp[:, 30:].logsumexp(1), head_lp[:, 10], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("case", CASES[1:])
def test_tied_weights_and_projections_share_storage(case: dict) -> None:
    model = build(case)
    emb, crit = model.word_emb, model.crit
    for i in range(len(crit.out_layers)):
        assert crit.out_layers[i].weight.data_ptr() == emb.emb_layers[i].weight.data_ptr()
        assert crit.out_layers[i].weight is emb.emb_layers[i].weight
    if len(crit.out_projs):
        # tie_projs=True is the original's [False] + [True] * len(cutoffs)
        assert crit.out_projs[0].data_ptr() != emb.emb_projs[0].data_ptr()
        for i in range(1, len(crit.out_projs)):
            j = 0 if case["div_val"] == 1 else i
            assert crit.out_projs[i] is emb.emb_projs[j]
    untied = build(case, tie_weight=False, tie_projs=False)
    ptrs = {p.data_ptr() for p in untied.parameters()}
    assert len(ptrs) == len(list(untied.parameters()))


def test_no_projections_when_d_proj_equals_d_embed() -> None:
    model = build(dict(cutoffs=(10, 30), div_val=1, d_embed=None))
    assert len(model.crit.out_projs) == 0 and len(model.word_emb.emb_projs) == 0
    assert len(model.crit.out_layers) == 1 and model.crit.out_layers[0].weight.shape == (50, 16)


@pytest.mark.parametrize("case", CASES)
def test_adaptive_embedding_matches_cluster_loop(case: dict) -> None:
    emb: AdaptiveEmbedding = build(case).word_emb
    inp = torch.randint(0, 50, (3, 7))
    inp[0, :4] = torch.tensor([0, 9, 10, 49])
    out = emb(inp)
    ref = torch.zeros(3, 7, 16)
    for b in range(3):
        for t in range(7):
            tok = int(inp[b, t])
            if emb.div_val == 1:
                e = emb.emb_layers[0].weight[tok]
                if len(emb.emb_projs):
                    e = emb.emb_projs[0] @ e
            else:
                i = sum(tok >= c for c in emb.cutoffs)
                lo = ([0, *emb.cutoffs])[i]
                e = emb.emb_projs[i] @ emb.emb_layers[i].weight[tok - lo]
            ref[b, t] = e * 16**0.5
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)


def test_adaptive_softmax_gradient_is_finite_and_reaches_all_clusters() -> None:
    crit: ProjectedAdaptiveLogSoftmax = build(CASES[3], tie_weight=False, tie_projs=False).crit.train()
    hidden = torch.randn(30, 16, requires_grad=True)
    target = torch.tensor([0, 12, 35, 47] * 7 + [1, 2])
    crit(hidden, target).sum().backward()
    for i, layer in enumerate(crit.out_layers):
        assert layer.weight.grad is not None and layer.weight.grad.abs().sum() > 0, i
    assert torch.isfinite(hidden.grad).all()
