"""``--variant dlt`` through the Trainer (DeepSpeed on CPU): exact resume mid-episode, two
ranks taking the same actions, the refusal of flat ZeRO states, the logged tying state."""

from __future__ import annotations

import json

import pytest
import torch
from engine_helpers import launch_workers, tiny_config

from skipxl.engine import run_dir as rd
from skipxl.engine.checkpoint import fp32_state_dict
from skipxl.engine.train import train
from skipxl.errors import SkipxlError

pytestmark = pytest.mark.slow

DLT_FLAGS = dict(dlt_steps_per_action=2, dlt_epsilon_decay=0.5, dlt_epsilon_floor=0.0)


def _sources(run_dir) -> list[int]:
    return json.loads((run_dir / rd.RESULTS).read_text())["dlt"]["sources"]


def test_dlt_resumes_mid_episode_bitwise(tmp_path) -> None:
    # tiny: 4 layers, episode = 3 actions x 2 steps; stop at step 5 = mid-action of episode 1
    full = train(tiny_config(tmp_path / "full", variant="dlt", steps=10, **DLT_FLAGS), progress=False)
    cfg = tiny_config(tmp_path / "cut", variant="dlt", steps=10, **DLT_FLAGS)
    first = train(cfg, progress=False, stop_at_step=5)
    assert not first.finished and first.step == 5
    second = train(cfg, resume=True, progress=False)
    assert first.losses + second.losses == full.losses
    assert _sources(tmp_path / "cut") == _sources(tmp_path / "full")
    a, b = (
        fp32_state_dict(tmp_path / "full" / "checkpoints"),
        fp32_state_dict(tmp_path / "cut" / "checkpoints"),
    )
    assert a.keys() == b.keys() and a["layers._extra_state"] == b["layers._extra_state"]
    for k in a:
        if torch.is_tensor(a[k]):
            assert torch.equal(a[k], b[k]), k
    rows = rd.read_metrics(tmp_path / "full")
    logged = [r for r in rows if "dlt/independent_layers" in r]
    assert logged and {"dlt/q_loss", "dlt/reward", "dlt/epsilon", "dlt/trainable_params"} <= set(logged[-1])
    assert {"dlt/bytes/params", "dlt/bytes/grads", "dlt/bytes/optimizer", "dlt/source/layer_03"} <= set(
        logged[-1]
    )
    results = json.loads((tmp_path / "full" / rd.RESULTS).read_text())
    assert results["dlt"]["episodes"] == 1 and len(results["dlt"]["sources"]) == 4
    assert (
        results["dlt"]["history"] == json.loads((tmp_path / "cut" / rd.RESULTS).read_text())["dlt"]["history"]
    )
    assert len(results["dlt"]["history"]) == 1 + 10 // 2

    from skipxl.cli import main

    assert (
        main(["tying", str(tmp_path / "full"), str(tmp_path / "cut"), "--png", str(tmp_path / "t.png")]) == 0
    )
    assert (tmp_path / "t.png").stat().st_size > 1000
    assert main(["tying", str(tmp_path / "nowhere")]) == 2  # one error line, no traceback

    # skipxl eval / export rebuild the trained tying state from the checkpoint
    from skipxl.engine.checkpoint import export, load_exported
    from skipxl.engine.evaluate import evaluate_run

    row = evaluate_run(
        str(tmp_path / "full"), split="valid", overrides={}, max_batches=2, tag=None, device="cpu"
    )
    losses = [v for k, v in row.items() if k.endswith("loss")]
    assert losses and all(0 < v < 20 for v in losses), row
    model = load_exported(export(tmp_path / "full"))
    assert list(model.layers.tying.sources) == results["dlt"]["sources"]


@pytest.mark.parametrize("ds_config", ["cpu_zero1", "cpu_zero3"])
def test_dlt_refuses_zero_stages_that_flatten_parameters(tmp_path, ds_config) -> None:
    cfg = tiny_config(tmp_path / "z", variant="dlt", steps=2, ds_config=ds_config)
    with pytest.raises(SkipxlError, match="ZeRO stage 0 fp32 config"):
        train(cfg, progress=False)


def test_two_ranks_take_the_same_actions(tmp_path) -> None:
    run = {
        "name": "dlt",
        "ds_config": "cpu",
        "micro_batch": 2,
        "grad_accum": 1,
        "steps": 12,
        "variant": "dlt",
        "dlt": {"steps_per_action": 1, "agent": {"epsilon_start": 0.5, "epsilon_floor": 0.0, "seed": 3}},
    }
    launch_workers(2, tmp_path, {"runs": [run]})
    out = json.loads((tmp_path / "dlt.json").read_text())
    rank0, rank1 = out["actions"]
    assert len(rank0) == 13 and rank0 == rank1  # layer, action, reward and Q-loss on every action
    assert len({a[2] for a in rank0[1:]}) > 1  # the rewards vary (the agent learns from something)


def test_dlt_composes_with_skip_retain_and_cross_head_on_a_memoryless_lm(tmp_path) -> None:
    cfg = tiny_config(tmp_path / "c", variant="combined_dlt", steps=6, mem_len=0, **DLT_FLAGS)
    assert cfg.model.mem_len == 0 and cfg.model.skip is not None and cfg.model.cross_head is not None
    result = train(cfg, progress=False)
    assert result.finished and len(result.losses) == 6
    results = json.loads((tmp_path / "c" / rd.RESULTS).read_text())
    assert {"dlt", "phase"} <= set(results) and len(results["dlt"]["history"]) == 4
    meta = json.loads((tmp_path / "c" / "meta.json").read_text())
    assert meta["policies"] == ["skip_retain", "cross_head", "dlt"]
