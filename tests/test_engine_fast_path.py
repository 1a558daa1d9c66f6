"""The fast path through the engine: ``attn_impl="sdpa"`` trains like the eager reference
(DeepSpeed on CPU, the built-in corpus)."""

from __future__ import annotations

import pytest
from engine_helpers import tiny_config

from skipxl.engine.train import train

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("variant", ["baseline", "combined"])
def test_sdpa_trains_50_steps_like_eager(tmp_path, variant):
    kw = dict(variant=variant, steps=50, eval_interval=25, log_interval=1)
    eager = train(tiny_config(tmp_path / "eager", **kw), progress=False)
    fused = train(tiny_config(tmp_path / "sdpa", attn_impl="sdpa", **kw), progress=False)
    assert len(fused.losses) == len(eager.losses) == 50
    worst = max(abs(a - b) for a, b in zip(fused.losses, eager.losses, strict=True))
    assert worst <= 1e-4, f"largest loss difference {worst:.2e} over 50 steps"
    assert eager.losses[-1] < eager.losses[0]  # it did train
