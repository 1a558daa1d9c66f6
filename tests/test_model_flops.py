"""The explicit FLOP formula (skipxl.model.flops) equals torch's FlopCounterMode on small shapes."""

from __future__ import annotations

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from skipxl.model import SkipRetainConfig, StepPlan, TransformerXL, get_preset
from skipxl.model.flops import peak_flops, segment_flops

torch.set_num_threads(1)

SHAPES = {
    "plain_softmax": dict(n_token=61),
    "adaptive_div1_proj": dict(n_token=300, cutoffs=(40, 120), div_val=1, d_embed=32),
    "adaptive_div2": dict(n_token=300, cutoffs=(40, 120), div_val=2),
    "segment_end": dict(n_token=61, positions="segment_end"),
}


def counted(model: TransformerXL, x, y, mems, plan, backward: bool) -> int:
    with FlopCounterMode(display=False) as counter:
        out = model(x, y, mems=mems, plan=plan)
        if backward:
            out.loss.backward()
    return counter.get_total_flops()


@pytest.mark.parametrize("shape", list(SHAPES))
def test_formula_equals_flop_counter(shape: str) -> None:
    cfg = get_preset(
        "tiny", d_model=48, n_head=3, d_head=8, d_inner=40, tgt_len=6, mem_len=9, **SHAPES[shape]
    )
    torch.manual_seed(0)
    model = TransformerXL(cfg).train()
    data = torch.randint(0, cfg.n_token, (2, 3 * 6 + 1), generator=torch.Generator().manual_seed(1))
    mems = None
    for step in range(3):  # memory 0, 6, 9 (> tgt_len)
        x, y = data[:, step * 6 : step * 6 + 6], data[:, step * 6 + 1 : step * 6 + 7]
        mlens = [0] * cfg.n_layer if mems is None else [mems.mlen(i) for i in range(cfg.n_layer)]
        cluster = torch.bucketize(y.reshape(-1), torch.tensor(cfg.cutoffs), right=True)
        counts = [int((cluster == i).sum()) for i in range(len(cfg.cutoffs) + 1)]
        expected = segment_flops(cfg, 2, 6, mlens, counts)
        assert counted(model, x, y, mems, StepPlan(), backward=False) == expected.forward
        total = counted(model, x, y, mems, StepPlan(), backward=True)
        assert total == expected.training
        mems = model(x, y, mems=mems).mems


def test_formula_follows_skips_and_the_gather_path() -> None:
    cfg = get_preset("tiny", tgt_len=5, mem_len=5, skip=SkipRetainConfig(schedule="list", probs=(0, 1, 0, 0)))
    torch.manual_seed(0)
    model = TransformerXL(cfg).train()
    x = torch.randint(0, cfg.n_token, (2, 6))
    skip_one = StepPlan(skip=(False, True, False, False))
    mems = model(x[:, :5], x[:, 1:], plan=StepPlan()).mems
    mems = model(x[:, :5], x[:, 1:], mems=mems, plan=skip_one).mems  # layer 1 keeps an old memory
    rlens, gather = mems.position_rows(5, (False,) * 4, False)
    assert gather == [False, True, False, False] and rlens[1] == 15
    mlens = [mems.mlen(i) for i in range(4)]
    for plan in (StepPlan(), skip_one):
        expected = segment_flops(cfg, 2, 5, mlens, rlens=rlens, skip=plan.skip)
        assert counted(model, x[:, :5], x[:, 1:], mems, plan, backward=True) == expected.training


def test_peak_table() -> None:
    assert peak_flops("NVIDIA H200", "bf16") == 989e12
    assert peak_flops("Some CPU", "fp32") is None
