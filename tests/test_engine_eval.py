"""The Transformer-XL evaluation protocol (Dai et al. 2019, eval.py) as the engine runs it."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch

from skipxl.data import eval_batches
from skipxl.engine.config import EvalConfig
from skipxl.engine.evaluate import evaluate_split
from skipxl.engine.metrics import loss_metrics
from skipxl.errors import SkipxlError
from skipxl.model import Context, TransformerXL, get_preset


@pytest.fixture(scope="module")
def model_and_tokens():
    torch.manual_seed(0)
    model = TransformerXL(get_preset("tiny", n_token=64, dropout=0.1, tgt_len=16, mem_len=16, clamp_len=-1))
    rng = np.random.default_rng(0)
    # a stream with structure (a repeating motif) so that context matters
    motif = rng.integers(0, 64, size=37)
    tokens = np.concatenate([motif] * 30 + [rng.integers(0, 64, size=50)]).astype(np.int32)
    return model, tokens


def test_matches_a_naive_token_weighted_loop(model_and_tokens):
    model, tokens = model_and_tokens
    proto = EvalConfig(tgt_len=12, mem_len=24, clamp_len=-1, same_length=False, batch_size=3)
    got = evaluate_split(model, tokens, proto)
    model.eval()
    context = Context(tgt_len=12, mem_len=24)
    nll, count, mems = 0.0, 0, None
    with torch.no_grad():
        for inputs, targets in eval_batches(tokens, 3, 12):
            out = model(inputs, targets=targets, mems=mems, context=context)
            mems = out.mems
            nll += float(out.nll.double().sum())
            count += out.nll.numel()
    model.train()
    assert got.tokens == count == 3 * (len(tokens) // 3 - 1)  # every target of every stream, once
    assert got.loss == pytest.approx(nll / count, rel=1e-12)


def test_longer_memory_gives_a_different_finite_result(model_and_tokens):
    model, tokens = model_and_tokens
    short = evaluate_split(model, tokens, EvalConfig(tgt_len=8, mem_len=8, batch_size=2))
    long = evaluate_split(model, tokens, EvalConfig(tgt_len=8, mem_len=64, batch_size=2))
    assert math.isfinite(short.loss) and math.isfinite(long.loss)
    assert short.tokens == long.tokens and short.loss != long.loss


def test_protocol_is_passed_through_and_restored(model_and_tokens):
    model, tokens = model_and_tokens
    seen = []
    handle = model.register_forward_pre_hook(
        lambda m, args, kwargs: seen.append(dict(dataclasses.asdict(kwargs["context"]), training=m.training)),
        with_kwargs=True,
    )
    try:
        evaluate_split(
            model,
            tokens,
            EvalConfig(tgt_len=10, mem_len=30, ext_len=0, clamp_len=7, same_length=True, batch_size=2),
            max_batches=3,
        )
    finally:
        handle.remove()
    assert len(seen) == 3  # max_batches respected
    assert all(
        s
        == {
            "tgt_len": 10,
            "mem_len": 30,
            "ext_len": 0,
            "clamp_len": 7,
            "same_length": True,
            "training": False,
        }
        for s in seen
    )
    assert dataclasses.asdict(model.train_context) == {
        "tgt_len": 16,
        "mem_len": 16,
        "ext_len": 0,
        "clamp_len": -1,
        "same_length": False,
    }
    assert model.training


def test_same_length_and_clamp_change_the_score(model_and_tokens):
    model, tokens = model_and_tokens
    base = evaluate_split(model, tokens, EvalConfig(tgt_len=8, mem_len=32, batch_size=2)).loss
    same = evaluate_split(
        model, tokens, EvalConfig(tgt_len=8, mem_len=32, same_length=True, batch_size=2)
    ).loss
    clamp = evaluate_split(model, tokens, EvalConfig(tgt_len=8, mem_len=32, clamp_len=3, batch_size=2)).loss
    assert len({base, same, clamp}) == 3


def test_eval_batch_must_split_over_ranks(model_and_tokens):
    model, tokens = model_and_tokens
    with pytest.raises(SkipxlError, match="--eval_batch_size 4"):
        evaluate_split(model, tokens, EvalConfig(tgt_len=8, mem_len=8, batch_size=3), rank=0, world_size=2)


def test_loss_metrics_word_and_char():
    assert loss_metrics(math.log(20.0), "word", "val") == {
        "val/loss": math.log(20.0),
        "val/ppl": pytest.approx(20.0),
    }
    assert loss_metrics(math.log(2.0) * 1.25, "char", "test")["test/bpc"] == pytest.approx(1.25)
