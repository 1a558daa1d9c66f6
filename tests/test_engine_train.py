"""The training loop in one process (DeepSpeed on CPU): exact resume, signals, crash-safe saves,
the run folder, and what Adam does to skipped layers."""

from __future__ import annotations

import json
import os
import signal

import pytest
import torch
from engine_helpers import tiny_config

from skipxl.engine import checkpoint as ckpt
from skipxl.engine import integrity
from skipxl.engine.checkpoint import fp32_state_dict, read_latest
from skipxl.engine.distributed import seed_everything
from skipxl.engine.policies import SkipRetainPolicy
from skipxl.engine.train import train
from skipxl.errors import SkipxlError
from skipxl.model import TransformerXL

pytestmark = pytest.mark.slow


def _weights(run_dir):
    return fp32_state_dict(run_dir / "checkpoints")


def _assert_same_weights(a, b):
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


@pytest.mark.parametrize("variant", ["baseline", "combined"])
def test_resume_is_bitwise_exact(tmp_path, variant):
    # dropout on, grad accumulation 2, a phase switch after the resume point, validations in between
    kw = dict(
        variant=variant, steps=8, grad_accum=2, phase1_steps=5, phase1_patience=None, phase1_fraction=None
    )
    full = train(tiny_config(tmp_path / "full", **kw), progress=False)
    first = train(tiny_config(tmp_path / "split", **kw), progress=False, stop_at_step=3)
    assert not first.finished and first.step == 3
    second = train(tiny_config(tmp_path / "split", **kw), progress=False, resume=True)
    assert second.finished
    assert first.losses + second.losses == full.losses  # bitwise: float equality
    _assert_same_weights(_weights(tmp_path / "full"), _weights(tmp_path / "split"))
    assert second.final["test/loss"] == full.final["test/loss"]
    rows = [json.loads(line) for line in (tmp_path / "split" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "train/loss" in r] == list(range(1, 9))  # no duplicates after resume
    results = json.loads((tmp_path / "split" / "results.json").read_text())
    if variant == "combined":
        assert results["phase"]["switch_step"] == 5


def test_sigterm_checkpoints_and_resume_continues_exactly(tmp_path, monkeypatch):
    kw = dict(variant="skip_retain", steps=6, pskip=0.5)
    full = train(tiny_config(tmp_path / "full", **kw), progress=False)

    calls = {"n": 0}
    original = SkipRetainPolicy.plan

    def draw_and_signal(self, step, plan):
        calls["n"] += 1
        if calls["n"] == 4:  # during step 4: the loop must finish the step, save, and stop
            os.kill(os.getpid(), signal.SIGTERM)
        return original(self, step, plan)

    monkeypatch.setattr(SkipRetainPolicy, "plan", draw_and_signal)
    stopped = train(tiny_config(tmp_path / "split", **kw), progress=False)
    monkeypatch.setattr(SkipRetainPolicy, "plan", original)
    assert stopped.interrupted_by == "SIGTERM" and stopped.step == 4
    assert read_latest(tmp_path / "split" / "checkpoints") == "step_00000004"
    resumed = train(tiny_config(tmp_path / "split", **kw), progress=False, resume=True)
    assert stopped.losses + resumed.losses == full.losses
    _assert_same_weights(_weights(tmp_path / "full"), _weights(tmp_path / "split"))


def test_crash_during_save_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    cfg = tiny_config(tmp_path / "run", steps=6, save_interval=2)
    real_save = torch.save
    state = {"n": 0}

    def failing_save(obj, path, *args, **kwargs):
        if str(path).endswith(".pt.tmp") and "step_00000004" in str(path):
            raise OSError("disk full (simulated)")
        state["n"] += 1
        return real_save(obj, path, *args, **kwargs)

    monkeypatch.setattr(ckpt.torch, "save", failing_save)
    with pytest.raises(SkipxlError, match=r"simulated.*step_00000002\) is kept"):
        train(cfg, progress=False)
    monkeypatch.setattr(ckpt.torch, "save", real_save)
    ckpt_dir = tmp_path / "run" / "checkpoints"
    assert read_latest(ckpt_dir) == "step_00000002"
    assert (ckpt_dir / "tmp_step_00000004").is_dir()  # the torn save, never pointed at
    resumed = train(cfg, progress=False, resume=True)
    assert resumed.finished and resumed.step == 6
    assert not (ckpt_dir / "tmp_step_00000004").exists()


def test_run_folder_and_metrics(tmp_path):
    run = tmp_path / "run"
    train(tiny_config(run, variant="combined", steps=4, phase1_steps=2), progress=False)
    config = json.loads((run / "config.json").read_text())
    assert {"model", "data", "train", "eval", "ds_config", "variant"} <= set(config)
    assert config["ds_config"]["train_batch_size"] == 4 and config["ds_config"]["gradient_clipping"] == 0.25
    meta = json.loads((run / "meta.json").read_text())
    assert meta["world_size"] == 1 and meta["seeds"]["seed"] == config["train"]["seed"]
    assert meta["torch"] == torch.__version__ and any(p.startswith("torch==") for p in meta["pip_freeze"])
    assert meta["cpu"]["torch_capability"] == torch.backends.cpu.get_cpu_capability()
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    train_rows = [r for r in rows if "train/loss" in r]
    for key in (
        "train/ppl",
        "lr",
        "grad_norm",
        "loss_scale",
        "tokens_per_s",
        "memory/peak_bytes",
        "phase",
        "skip/fraction/layer_00",
        "memory/age/layer_00",
        "context/effective_len",
        "cross_head/swap_rate",
    ):
        assert key in train_rows[0], key
    assert [r["phase"] for r in train_rows] == [1, 2, 2, 2]
    assert any("val/ppl" in r for r in rows) and any("test/ppl" in r for r in rows)
    assert any(r.get("phase/switch_step") == 2 for r in rows)
    # the protected end layers of the linear schedule are never skipped
    assert all(r["skip/fraction/layer_00"] == 0.0 and r["skip/fraction/layer_03"] == 0.0 for r in train_rows)
    events = list((run / "tb").glob("events.out.tfevents.*"))
    assert events and events[0].stat().st_size > 0
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run / "tb"))
    acc.Reload()
    assert {"train/loss", "lr", "val/loss", "test/loss"} <= set(acc.Tags()["scalars"])


def test_memory_profiler_logs_per_step_when_on(tmp_path):
    """`profile_memory` puts per-step memory records in metrics.jsonl; off by default, none appear."""

    def memory_rows(run):
        rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
        return [r for r in rows if any(k.startswith("memory/saved") for k in r)]

    train(tiny_config(tmp_path / "off", steps=2), progress=False)
    assert memory_rows(tmp_path / "off") == []
    train(tiny_config(tmp_path / "on", steps=2, profile_memory=True), progress=False)
    rows = memory_rows(tmp_path / "on")
    assert sorted({r["step"] for r in rows}) == [1, 2]
    for r in rows:  # measured through the engine's hooks == the analytic estimate, byte for byte
        assert r["memory/saved/bytes"] == r["memory/estimate/bytes"] > 0
        assert r["memory/mems/held_bytes"] == r["memory/mems/bytes"]


@pytest.mark.parametrize(("skipped_grad", "untouched"), [("none", True), ("zero", False)])
def test_skipped_layer_parameters_under_adam(tmp_path, skipped_grad, untouched):
    """Layer 1 is skipped at every step. "none": no gradient, Adam (with weight decay) never touches
    it, as in the paper's plain-PyTorch code; "zero": a zero gradient, so weight decay (and then
    momentum) move its non-zero weights."""
    run = tmp_path / skipped_grad
    cfg = tiny_config(
        run,
        variant="skip_retain",
        steps=3,
        pskip=[0, 1, 0, 0],
        skipped_grad=skipped_grad,
        weight_decay=0.1,
        ds_config="cpu",
        phase1_fraction=None,
        phase1_patience=None,
    )
    train(cfg, progress=False)
    seed_everything(cfg.train.seed)
    init = TransformerXL(cfg.model).state_dict()
    trained = _weights(run)
    layer1 = [k for k in init if k.startswith("layers.1.")]
    same = [torch.equal(init[k], trained[k]) for k in layer1]
    assert all(same) if untouched else not all(same)
    qkv = "layers.1.dec_attn.qkv_net.weight"
    assert torch.equal(init[qkv], trained[qkv]) == untouched
    assert not torch.equal(
        init["layers.0.pos_ff.CoreNet.0.weight"], trained["layers.0.pos_ff.CoreNet.0.weight"]
    )


def test_resume_refuses_missing_or_unreadable_checkpoints(tmp_path):
    with pytest.raises(SkipxlError, match="holds no run"):
        train(tiny_config(tmp_path / "nothing"), progress=False, resume=True)
    run = tmp_path / "run"
    train(tiny_config(run, steps=2), progress=False)
    with pytest.raises(SkipxlError, match="already holds a run"):
        train(tiny_config(run, steps=2), progress=False)
    tag = read_latest(run / "checkpoints")
    (run / "checkpoints" / tag / "mp_rank_00_model_states.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(SkipxlError, match=r"no intact checkpoint.*mp_rank_00_model_states\.pt"):
        train(tiny_config(run, steps=2), progress=False, resume=True)


def test_zero_probabilities_reproduce_the_baseline_bitwise(tmp_path):
    """pskip = 0 and beta = 0 through the whole engine (plans drawn, phases on, dropout on) give the
    baseline's losses and weights exactly: the stochastic methods never touch the main RNG stream."""
    base = train(tiny_config(tmp_path / "baseline", steps=5, grad_accum=2), progress=False)
    zero = train(
        tiny_config(tmp_path / "combined", variant="combined", steps=5, grad_accum=2, pskip=0.0, beta=0.0),
        progress=False,
    )
    assert zero.losses == base.losses
    _assert_same_weights(_weights(tmp_path / "baseline"), _weights(tmp_path / "combined"))


def _to_format_1(ckpt_dir):
    """Rewrite the latest checkpoint as skipxl wrote it before the training policies (format 1):
    the phase in DeepSpeed's client state, the model's plan generator and the memories in the
    rank file."""
    folder = ckpt_dir / read_latest(ckpt_dir)
    model_file, rank_file = folder / "mp_rank_00_model_states.pt", folder / "skipxl_rank_00000.pt"
    client = torch.load(model_file, weights_only=False)
    rank = torch.load(rank_file, weights_only=False)
    policies = rank["policies"]
    generator = next(iter(policies.values()))["generator"]
    assert all(torch.equal(p["generator"], generator) for p in policies.values())  # one shared stream
    client.pop("format_version")
    client.pop("policies")
    client["phase"] = policies["skip_retain"]["phase"]
    torch.save(client, model_file)
    old = {"rng": rank["rng"], "plan_generator": generator, "iterator": rank["iterator"]}
    torch.save({**old, "mems": rank["train_state"]["mems"]}, rank_file)
    (folder / "manifest.json").unlink()  # format 1 had no integrity manifest


def test_checkpoints_of_format_1_resume_exactly(tmp_path):
    """Run folders written before the training policies (checkpoint format 1) resume bit for bit."""
    kw = dict(
        variant="combined", steps=6, grad_accum=2, phase1_steps=4, phase1_fraction=None, phase1_patience=None
    )
    full = train(tiny_config(tmp_path / "full", **kw), progress=False)
    first = train(tiny_config(tmp_path / "old", **kw), progress=False, stop_at_step=3)
    _to_format_1(tmp_path / "old" / "checkpoints")
    second = train(tiny_config(tmp_path / "old", **kw), progress=False, resume=True)
    assert first.losses + second.losses == full.losses
    _assert_same_weights(_weights(tmp_path / "full"), _weights(tmp_path / "old"))
    results = json.loads((tmp_path / "old" / "results.json").read_text())
    assert results["phase"]["switch_step"] == 4


def test_checkpoints_of_another_format_fail_with_one_clear_error(tmp_path):
    cfg = tiny_config(tmp_path / "run", steps=2)
    train(cfg, progress=False)
    model_file = tmp_path / "run" / "checkpoints" / "step_00000002" / "mp_rank_00_model_states.pt"
    client = torch.load(model_file, weights_only=False)
    torch.save({**client, "format_version": 99}, model_file)
    integrity.write_manifest(model_file.parent)  # as the newer skipxl would have written it
    with pytest.raises(SkipxlError, match="format version 99, newer than this skipxl reads"):
        train(tiny_config(tmp_path / "run", steps=4), progress=False, resume=True)
    del client["format_version"]  # format 1, but its rank file is of format 2: lacks the old keys
    torch.save(client, model_file)
    integrity.write_manifest(model_file.parent)
    with pytest.raises(
        SkipxlError, match=r"format version 1 checkpoint .* lacks \['phase', 'plan_generator'"
    ):
        train(tiny_config(tmp_path / "run", steps=4), progress=False, resume=True)


BAD_EVAL_CONTEXTS = [
    (dict(eval_clamp_len=0), "clamp_len must be -1"),
    (dict(eval_clamp_len=-3), "clamp_len must be -1"),
    (dict(eval_same_length=True, eval_mem_len=0), "same_length=True with mem_len=0"),
    (dict(eval_tgt_len=0), "tgt_len must be >= 1"),
    (dict(eval_mem_len=-1), "mem_len must be >= 0"),
    (dict(eval_ext_len=-1), "ext_len must be >= 0"),
    (dict(eval_batch_size=0), "batch_size must be >= 1"),
]


@pytest.mark.parametrize(("flags", "match"), BAD_EVAL_CONTEXTS)
def test_bad_evaluation_contexts_fail_at_start_up(tmp_path, flags, match):
    """Every evaluation-context value the final evaluation would reject fails when the run is
    configured (and `skipxl eval` overrides alike), not after the training."""
    with pytest.raises(SkipxlError, match=match):
        tiny_config(tmp_path / "run", **flags)
    from skipxl.engine.config import run_config_to_dict
    from skipxl.engine.evaluate import evaluate_run

    run = tmp_path / "evaluated"
    run.mkdir()
    (run / "config.json").write_text(json.dumps(run_config_to_dict(tiny_config(run))))
    overrides = {k.removeprefix("eval_"): v for k, v in flags.items()}
    with pytest.raises(SkipxlError, match=match):
        evaluate_run(run, overrides=overrides)


def test_eval_streams_longer_than_a_split_fail_before_training(tmp_path):
    with pytest.raises(SkipxlError, match="too few for 5000 evaluation streams"):
        train(tiny_config(tmp_path / "run", eval_batch_size=5000), progress=False)
    assert (
        not (tmp_path / "run" / "checkpoints").exists() and not (tmp_path / "run" / "metrics.jsonl").exists()
    )
