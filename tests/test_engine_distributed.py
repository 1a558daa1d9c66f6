"""Two DeepSpeed ranks on CPU (gloo) equal one rank with gradient accumulation, for ZeRO 0-3.

Two ranks with micro-batch b see the global streams [rank-major]; one rank with micro-batch b
and accumulation 2 sees the same streams as its two micro-steps, keeps one memory per
micro-step, and must produce the same losses (within fp32 reduction-order tolerance), the
same skip masks (Skip-Retain draws come from a generator seeded alike on every rank, so all
ranks skip the same layers - otherwise ZeRO-3 deadlocks), and the same evaluation (streams
split across ranks, sums all-reduced). One process launch per world size covers all stages.
"""

from __future__ import annotations

import json
import math

import pytest
import torch
from engine_helpers import launch_workers

from skipxl.engine.checkpoint import fp32_state_dict

pytestmark = pytest.mark.slow

STAGES = (0, 1, 2, 3)
CONFIGS = {0: "cpu", 1: "cpu_zero1", 2: "cpu_zero2", 3: "cpu_zero3"}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    base = tmp_path_factory.mktemp("ds")
    spec2 = {
        "runs": [
            {
                "name": f"z{s}",
                "ds_config": CONFIGS[s],
                "micro_batch": 2,
                "grad_accum": 1,
                "steps": 3,
                "variant": "combined",
            }
            for s in STAGES
        ]
    }
    spec1 = {"runs": [dict(r, grad_accum=2) for r in spec2["runs"]]}
    launch_workers(2, base / "two_ranks", spec2)
    launch_workers(1, base / "one_rank", spec1)
    out = {
        world: {s: json.loads((base / d / f"z{s}.json").read_text()) for s in STAGES}
        for world, d in ((2, "two_ranks"), (1, "one_rank"))
    }
    out["dirs"] = {2: base / "two_ranks", 1: base / "one_rank"}
    return out


@pytest.mark.parametrize("stage", STAGES)
def test_two_ranks_equal_one_rank_with_accumulation(runs, stage):
    two, one = runs[2][stage], runs[1][stage]
    assert len(two["losses"]) == len(one["losses"]) == 3
    for a, b in zip(two["losses"], one["losses"], strict=True):
        assert math.isclose(a, b, rel_tol=1e-5), (two["losses"], one["losses"])
    for key, value in one["final"].items():
        assert math.isclose(two["final"][key], value, rel_tol=1e-5), key


@pytest.mark.parametrize("stage", STAGES)
def test_ranks_agree_on_skip_masks(runs, stage):
    rank0, rank1 = runs[2][stage]["masks"]
    assert rank0 == rank1 and len(rank0) >= 3
    assert rank0[:3] == runs[1][stage]["masks"][0][:3]  # and with the single-process run


@pytest.mark.parametrize("stage", STAGES)
def test_consolidated_fp32_weights_agree(runs, stage):
    """The fp32 export path (zero_to_fp32 for ZeRO 1-3, the module file for stage 0) gives the same
    weights for the two-rank (partitioned) and the one-rank checkpoint."""
    two = fp32_state_dict(runs["dirs"][2] / f"z{stage}" / "checkpoints")
    one = fp32_state_dict(runs["dirs"][1] / f"z{stage}" / "checkpoints")
    assert two.keys() == one.keys() and len(two) > 10
    for key in one:
        assert two[key].dtype == torch.float32
        assert torch.allclose(two[key], one[key], rtol=1e-4, atol=1e-6), key
