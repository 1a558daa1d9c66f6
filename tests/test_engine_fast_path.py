"""The fast paths through the engine: ``attn_impl="sdpa"`` and ``compile="layers"`` train and
evaluate like the eager reference (DeepSpeed on CPU, the built-in corpus)."""

from __future__ import annotations

import pytest
from engine_helpers import one_thread, restore_launch_env, tiny_config  # noqa: F401 (autouse fixtures)

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


def test_compiled_layers_train_like_eager(tmp_path):
    kw = dict(steps=3, eval_interval=3, attn_impl="sdpa")
    eager = train(tiny_config(tmp_path / "eager", **kw), progress=False)
    compiled = train(tiny_config(tmp_path / "compiled", compile="layers", **kw), progress=False)
    worst = max(abs(a - b) for a, b in zip(compiled.losses, eager.losses, strict=True))
    assert worst <= 1e-5, f"largest loss difference {worst:.2e}"
