"""The long-range probe corpus and its per-distance scoring."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from skipxl.analysis.probe import (
    auto_roles,
    bin_table,
    probe_answers,
    recovered_fraction,
    score_answers,
)
from skipxl.data import BuiltinConfig, generate_builtin
from skipxl.data.probe import generate_probe, probe_records
from skipxl.errors import SkipxlError

CFG = BuiltinConfig(probe=True, train_tokens=20_000, eval_tokens=6_000, probe_bins=(2, 16, 64, 200))


@pytest.fixture(scope="module")
def corpus():
    return generate_probe(CFG)


def test_each_dependency_sits_exactly_at_its_declared_distance(corpus):
    vocab, splits, records = corpus
    for split, rec in records.items():
        tok = splits[split]
        assert len(rec.answer) > 50
        assert np.array_equal(rec.answer - rec.source, rec.distance)
        assert np.array_equal(tok[rec.answer], tok[rec.source])
        keys = np.array([vocab.lookup[f"key{c}"] for c in rec.channel])
        asks = np.array([vocab.lookup[f"ask{c}"] for c in rec.channel])
        assert np.array_equal(tok[rec.source - 1], keys) and np.array_equal(tok[rec.answer - 1], asks)
        assert all(vocab.symbols[t].startswith("v") for t in tok[rec.answer])
        # unambiguous: no other key of the same channel between the source and the answer
        for a, s, c in zip(rec.answer[:200], rec.source[:200], rec.channel[:200], strict=True):
            assert (tok[s : a - 1] == vocab.lookup[f"key{c}"]).sum() == 0
        # every declared bin is populated and no distance leaves the bins
        lo, hi = CFG.probe_bins[0], CFG.probe_bins[-1]
        assert rec.distance.min() >= lo and rec.distance.max() < hi
        counts = np.histogram(rec.distance, bins=CFG.probe_bins)[0]
        assert (counts > 0).all()


def test_builtin_dispatches_to_the_probe_and_records_regenerate(corpus):
    vocab, splits, records = corpus
    v2, s2 = generate_builtin(CFG)
    assert v2.symbols == vocab.symbols and np.array_equal(s2["valid"], splits["valid"])
    again = probe_records(CFG, "valid")
    assert np.array_equal(again.answer, records["valid"].answer)


def test_probe_options_validated():
    with pytest.raises(SkipxlError, match="increasing"):
        BuiltinConfig(probe_bins=(2, 64, 16))
    with pytest.raises(SkipxlError, match="eval_tokens"):
        BuiltinConfig(probe=True, eval_tokens=500, probe_bins=(2, 400))


def _run(fn_kind, corpus):
    vocab, splits, _ = corpus
    tokens = splits["valid"]
    answers = probe_answers(CFG, "valid", tokens, vocab)
    unigram = torch.log(torch.tensor(np.bincount(splits["train"], minlength=vocab.size) + 1.0))
    unigram = unigram - torch.logsumexp(unigram, 0)

    def fn(inputs, targets, mems, select):
        n = int(select.sum())
        if fn_kind == "oracle":  # given the answer: all mass on the target
            logp = torch.full((n, vocab.size), -1e4)
            logp[torch.arange(n), targets[select]] = 0.0
            return torch.log_softmax(logp, -1), None
        return unigram.expand(n, -1), None

    scores = score_answers(fn, tokens, answers, batch_size=3, tgt_len=16)
    return bin_table(scores, answers.distance, CFG.probe_bins, CFG.probe_values)


def test_oracle_scores_perfectly_per_bin(corpus):
    for row in _run("oracle", corpus):
        assert row["n"] > 10
        assert row["accuracy"] == 1.0 and row["loss"] == pytest.approx(0.0, abs=1e-6)
        assert row["loss_values"] == pytest.approx(0.0, abs=1e-6)


def test_unigram_scores_chance_per_bin(corpus):
    for row in _run("unigram", corpus):
        # the train frequencies of the values are nearly uniform: log(V) up to sampling noise (20k tokens)
        assert row["loss_values"] == pytest.approx(math.log(CFG.probe_values), abs=0.05)
        assert row["accuracy"] == 0.0  # the unigram argmax is always a filler, never a value


def test_transformer_scores_equal_its_own_nll(corpus):
    """The probe's full-vocabulary loss at the answers equals the model's nll at those targets."""
    from skipxl.analysis.probe import model_log_probs
    from skipxl.data import eval_batches
    from skipxl.model import TransformerXL
    from skipxl.model.context import Context
    from skipxl.model.presets import tiny

    vocab, splits, _ = corpus
    tokens = splits["valid"][:1500]
    answers = probe_answers(CFG, "valid", splits["valid"], vocab)
    keep = answers.index < len(tokens)
    answers = type(answers)(
        answers.index[keep], answers.distance[keep], answers.answer[keep], answers.value_ids
    )
    torch.manual_seed(0)
    model = TransformerXL(tiny(n_token=vocab.size)).eval()
    ctx = Context(tgt_len=16, mem_len=32)
    scores = score_answers(model_log_probs(model, ctx), tokens, answers, batch_size=2, tgt_len=16)
    # reference: the model's own nll over the same protocol
    nll = np.full(len(tokens), np.nan)
    mems = None
    ids = np.arange(len(tokens))
    with torch.no_grad():
        for (inp, tgt), (_, pos) in zip(eval_batches(tokens, 2, 16), eval_batches(ids, 2, 16), strict=True):
            out = model(inp, targets=tgt, mems=mems, context=ctx)
            mems = out.mems
            nll[pos.numpy().ravel()] = out.nll.numpy().ravel()
    np.testing.assert_allclose(scores["nll"], nll[answers.index], rtol=1e-5, atol=1e-5)


def test_recovered_fraction_and_roles():
    base, doubled = np.array([3.0, 3.2, 3.1]), np.array([2.0, 2.2, 2.1])
    point, ci = recovered_fraction(base, base - 0.5, doubled, n_boot=500)
    assert point == pytest.approx(0.5) and ci == pytest.approx((0.5, 0.5))
    point, ci = recovered_fraction(base, np.array([2.5, 3.2, 2.6]), doubled, n_boot=500)
    assert ci[0] < point < ci[1]
    assert recovered_fraction(base, base, base) == (None, None)
    # The doubled memory is worse: no fraction of a loss (the probe runs that missed the recall).
    assert recovered_fraction(base, base - 0.5, base + 1.0) == (None, None)
    # Its gain changes sign across seeds: the point stands, the CI's denominator does not.
    point, ci = recovered_fraction(base, base - 0.1, base - np.array([1.0, -0.8, -0.1]), n_boot=500)
    assert point == pytest.approx(0.1 / (0.1 / 3)) and ci is None
    # A negligible doubled-memory gain gives no fraction at all (46.6 "of" +0.0001 nats means nothing),
    # at the default floor and at one given explicitly.
    assert recovered_fraction(base, base - 0.005, base - 0.0001) == (None, None)
    assert recovered_fraction(base, base - 0.5, doubled, min_gain=1.5) == (None, None)
    assert recovered_fraction(base, base - 0.005, base - 0.0001, min_gain=1e-5)[0] == pytest.approx(50.0)
    labels = ["baseline mem16", "skip_retain mem16", "baseline mem32"]
    assert auto_roles(labels) == ("baseline mem16", "skip_retain mem16", "baseline mem32")
    assert auto_roles(labels[:2]) is None
    tagged = [f"{label} @step_00003000" for label in labels]  # a phase-1 checkpoint and its peers
    assert auto_roles(tagged) == tuple(tagged)
    assert auto_roles([*labels[:2], tagged[2]]) is None  # never pairs two different steps


@pytest.mark.slow
def test_probe_command_on_trained_runs(tmp_path, capsys):
    """``skipxl probe`` end to end: three runs trained on the probe corpus (baseline and Skip-Retain at
    mem 16, the baseline at mem 32), scored per bin, paired by seed, with the recovered fraction
    defined exactly where the doubled memory gains at least ``min_gain``."""
    from engine_helpers import tiny_config

    from skipxl.analysis import probe
    from skipxl.engine.train import train

    flags = dict(builtin_probe=True, builtin_eval_tokens=12_000, builtin_probe_bins=(2, 8, 16, 32, 64))
    runs = []
    for variant, mem in (("baseline", 16), ("skip_retain", 16), ("baseline", 32)):
        out = tmp_path / f"{variant}_mem{mem}"
        train(
            tiny_config(out, variant=variant, steps=4, mem_len=mem, eval_mem_len=mem, **flags), progress=False
        )
        runs.append(str(out))
    probe.main(*runs, out=str(tmp_path / "scores"), max_batches=4, n_boot=200)
    payload = json.loads((tmp_path / "scores" / "probe.json").read_text())
    assert [r["label"] for r in payload["runs"]] == ["baseline mem16", "skip_retain mem16", "baseline mem32"]
    rec = payload["recovery"]
    assert (rec["baseline"], rec["doubled"], rec["min_gain"]) == (
        "baseline mem16",
        "baseline mem32",
        probe.MIN_GAIN,
    )
    losses = [[b["loss_values"] for b in r["bins"]] for r in payload["runs"]]
    assert len(rec["bins"]) == len(losses[0]) == 4
    for i, row in enumerate(rec["bins"]):
        base, treat, doubled = (np.array([loss[i]]) for loss in losses)
        assert row["gain_doubled"] == pytest.approx(float(base[0] - doubled[0]))
        assert row["recovered"] == recovered_fraction(base, treat, doubled)[0]
        assert (row["recovered"] is None) == (row["gain_doubled"] < probe.MIN_GAIN)
        assert row["ci_low"] is None  # one seed: no interval
    assert "recovered [2,8)" in capsys.readouterr().out
    # Roles swapped so that the "doubled" model gains a hair (4 steps: all three are near chance):
    # 46.6 "of" +0.0001 nats is what the floor exists to refuse; below it no fraction, above it one.
    swapped = dict(baseline="baseline mem32", treatment="skip_retain mem16", doubled="baseline mem16")
    defined = {}
    for floor in (probe.MIN_GAIN, 1e-9):
        probe.main(*runs, out=str(tmp_path / "swapped"), max_batches=4, n_boot=200, min_gain=floor, **swapped)
        bins = json.loads((tmp_path / "swapped" / "probe.json").read_text())["recovery"]["bins"]
        assert all(0 < row["gain_doubled"] < probe.MIN_GAIN for row in bins)
        defined[floor] = [row["recovered"] is not None for row in bins]
    assert defined == {probe.MIN_GAIN: [False] * 4, 1e-9: [True] * 4}
    with pytest.raises(SkipxlError, match="--min_gain must be > 0"):
        probe.main(*runs, out=str(tmp_path / "bad"), max_batches=1, min_gain=0)
