"""SPARTAN parent specificity: the MI against references, the chance level, per-token routing,
and the step-0 control (the memory a run started from, rebuilt exactly)."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("transformers")

from engine_helpers import clean_env
from test_glue_sweep import make_rte

from skipxl.glue import finetune as ft
from skipxl.glue import specificity as sp
from skipxl.glue.finetune import FinetuneConfig, build_model, encode_evals
from skipxl.glue.model import load_tokenizer

REPO = Path(__file__).resolve().parents[1]


def test_mutual_information_hand_values():
    one = np.array([[0], [0], [1], [1]])  # k = 1
    groups = np.array([0, 0, 1, 1])
    assert sp.mutual_information(one, groups, 2) == pytest.approx(math.log(2))
    assert sp.mutual_information(np.array([[0], [1], [0], [1]]), groups, 2) == pytest.approx(0.0, abs=1e-12)
    # k = 2: group 0 always {0, 1}, group 1 always {2, 3}: H(P) = log 4, H(P_g) = log 2
    two = np.array([[0, 1], [1, 0], [2, 3], [3, 2]])
    assert sp.mutual_information(two, groups, 4) == pytest.approx(math.log(2))
    # unused group ids (gaps) and unused parents change nothing
    assert sp.mutual_information(one, groups * 5, 7) == pytest.approx(math.log(2))


def test_mutual_information_equals_sklearn_for_one_parent():
    from sklearn.metrics import mutual_info_score

    rng = np.random.default_rng(0)
    groups = rng.integers(0, 12, size=3000)
    sel = (groups % 4 + rng.integers(0, 3, size=3000)) % 16  # depends on the group, noisily
    assert sp.mutual_information(sel[:, None], groups, 16) == pytest.approx(mutual_info_score(groups, sel))


def test_shuffled_labels_give_the_chance_level():
    rng = np.random.default_rng(1)
    groups = rng.integers(0, 200, size=6000)
    noise = rng.integers(0, 16, size=(6000, 1))  # routing independent of the group
    scores = sp.layer_scores(noise, {"example": groups}, 16, n_perm=10, seed=0)["example"]
    assert scores["mi"] > 0.2  # plug-in bias with 200 groups of ~30 tokens is large ...
    assert abs(scores["excess"]) < 0.02  # ... and the shuffled null removes it
    special = sp.layer_scores(groups[:, None] % 2, {"example": groups}, 16, n_perm=10, seed=0)["example"]
    assert special["excess"] > math.log(2) - 0.05 and special["excess_frac"] > 0.9  # fully group-determined


def _tiny_spartan(glue: Path, **kw) -> FinetuneConfig:
    return FinetuneConfig(task="rte", model="tiny-random", method="spartan", glue_dir=str(glue), **kw)


@pytest.fixture(scope="module")
def glue(tmp_path_factory):
    return make_rte(tmp_path_factory.mktemp("spec") / "glue", n_train=48, n_dev=20)


def test_token_routing_drops_padding_and_matches_the_usage_counts(glue):
    cfg = _tiny_spartan(glue, spartan_parents=4, spartan_children=8, spartan_topk=2)
    model = build_model(cfg).eval()
    tok = load_tokenizer(cfg.model)
    data = next(iter(encode_evals(cfg, tok).values()))[1]
    pad = int(tok.pad_token_id or 0)
    sel, example = sp.token_routing(model, data, pad, batch_size=3)
    sel8, example8 = sp.token_routing(model, data, pad, batch_size=8)  # other batches, other padding
    assert np.array_equal(example, example8) and all(
        np.array_equal(a, b) for a, b in zip(sel, sel8, strict=True)
    )
    lengths = [len(ids) for ids in data.input_ids]  # token t = position t of the concatenated ids
    assert np.array_equal(example, np.repeat(np.arange(len(data)), lengths)) and len(sel) == 2
    assert all(s.shape == (example.size, 2) for s in sel)
    state = model.spartan_state
    assert state.selections is None  # restored: training forwards keep nothing
    state.recording = True
    ft.predict_logits(model, data, pad, 5)
    for layer, s in enumerate(sel):
        assert np.bincount(s.ravel(), minlength=4).tolist() == state.counts[layer].tolist()


def test_step0_control_is_the_memory_the_run_started_from(glue, tmp_path, monkeypatch):
    cfg = _tiny_spartan(glue, lr=1e-2, max_steps=3, batch_size=8, init_seed=3)
    started: dict[str, torch.Tensor] = {}

    def spy(c):
        model = build_model(c)
        started.update({n: p.detach().clone() for n, p in model.named_parameters() if "spartan_memory" in n})
        return model

    monkeypatch.setattr(ft, "build_model", spy)
    torch.manual_seed(123)  # whatever the global RNG holds before the run ...
    ft.finetune(cfg, tmp_path / "run")
    monkeypatch.undo()
    torch.rand(17)  # ... and before the rebuild
    rebuilt = {n: p for n, p in build_model(cfg).named_parameters() if "spartan_memory" in n}
    assert started and set(started) == set(rebuilt)
    assert all(torch.equal(started[n], rebuilt[n]) for n in started)


@pytest.mark.slow
def test_specificity_command_on_a_trained_run(glue, tmp_path):
    cfg = _tiny_spartan(glue, lr=5e-2, max_steps=6, batch_size=8)
    ft.finetune(cfg, tmp_path / "spartan" / "seed_0")
    lora = FinetuneConfig(task="rte", model="tiny-random", method="lora", glue_dir=str(glue), max_steps=1)
    ft.finetune(lora, tmp_path / "lora")
    run = tmp_path / "spartan" / "seed_0"
    sp.main(str(run), out=str(tmp_path / "out"), topics=3, n_perm=4)
    res = json.loads((tmp_path / "out" / sp.JSON_NAME).read_text())
    (r,) = res["runs"]
    assert (
        r["examples"] == 20 and r["topics"] == 3 and r["groupings"] == ["example", "label", "token", "topic"]
    )
    assert len(r["layers"]) == 2 and any(lay["changed_tokens"] > 0 for lay in r["layers"])  # it trained
    for lay in r["layers"]:
        for model in ("trained", "step0"):
            for g in r["groupings"]:
                s = lay[model][g]
                assert s["excess"] == pytest.approx(s["mi"] - s["null"]) and s["mi"] >= -1e-12
    rows = {row["grouping"]: row for row in res["learned"]}
    want = np.mean(
        [lay["trained"]["topic"]["excess"] - lay["step0"]["topic"]["excess"] for lay in r["layers"]]
    )
    assert rows["topic"]["learned"] == pytest.approx(want) and rows["topic"]["ci_low"] is None
    assert "| rte | topic | 1 |" in (tmp_path / "out" / sp.MD_NAME).read_text()
    bad = subprocess.run(
        [sys.executable, str(REPO / "recipes" / "glue.py"), "specificity", str(tmp_path / "lora")],
        capture_output=True,
        text=True,
        env=clean_env(),
    )
    assert bad.returncode == 2 and bad.stderr.strip().splitlines()[-1].startswith("error: ")
    assert "--method spartan" in bad.stderr
