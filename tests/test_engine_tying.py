"""Layer tying under a DeepSpeed engine (ZeRO stage 0, fp32, CPU): the saving is real, the
optimizer follows, and a checkpoint round trip restores structure, weights and Adam state."""

from __future__ import annotations

import pytest
import torch

from skipxl.engine.tying_optim import sync_optimizer
from skipxl.model import TransformerXL
from skipxl.model.presets import tiny
from skipxl.model.tying import TyingConfig
from skipxl.profiling.state_bytes import model_state_bytes

pytestmark = pytest.mark.slow


def _engine(seed: int):
    import deepspeed

    from skipxl.engine.distributed import ensure_accelerator_env, ensure_launch_env
    from skipxl.engine.ds_config import build_ds_config
    from skipxl.engine.ds_engine import build_engine

    ensure_launch_env()
    ensure_accelerator_env()
    deepspeed.init_distributed(verbose=False)
    torch.manual_seed(seed)
    model = TransformerXL(tiny(n_token=50, n_layer=4, dropout=0.0, tying=TyingConfig()))
    ds = build_ds_config(
        "cpu", micro_batch=2, grad_accum=1, world_size=1, overrides={"gradient_clipping": 1.0}
    )
    engine = build_engine(model, torch.optim.Adam(model.parameters(), lr=1e-2), ds)
    model.layers.tying.listeners.append(lambda change: sync_optimizer(engine.optimizer, engine.module))
    return engine


def _step(engine, seed: int, measure: list | None = None) -> float:
    g = torch.Generator().manual_seed(seed)
    x, y = torch.randint(0, 50, (2, 16), generator=g), torch.randint(0, 50, (2, 16), generator=g)
    out = engine(x, targets=y)
    engine.backward(out.loss)
    if measure is not None:
        measure.append(model_state_bytes(engine))  # gradients exist between backward and step
    engine.step()
    return float(out.loss.detach())


def test_tying_under_deepspeed_stage0_frees_state_and_resumes_exactly(tmp_path) -> None:
    engine = _engine(0)
    tying = engine.module.layers.tying
    seen: list = []
    _step(engine, 1, seen)
    _step(engine, 2, seen)
    tying.set_source(2, 2)  # untie: a copy with fresh Adam state
    _step(engine, 3, seen)
    _step(engine, 4, seen)
    tied, after = seen[1], seen[3]
    per_layer = sum(p.numel() * 4 for p in engine.module.layers[0].parameters())
    assert after.params == tied.params + per_layer
    assert after.grads == tied.grads + per_layer == after.params
    n_tensors = len(list(engine.module.layers[0].parameters()))
    assert after.optimizer == tied.optimizer + 2 * per_layer + 4 * n_tensors  # Adam: 2 moments + a step each
    assert {id(p) for p in engine.optimizer.state} == {id(p) for p in engine.module.parameters()}

    engine.save_checkpoint(str(tmp_path), tag="t")
    ref = [_step(engine, s) for s in (5, 6)]
    ref_weights = {k: v.clone() for k, v in engine.module.state_dict().items() if torch.is_tensor(v)}

    other = _engine(7)  # fresh structure (all tied to 0) and other weights
    assert other.module.layers.tying.sources == (0, 0, 0, 0)
    other.load_checkpoint(str(tmp_path), tag="t")
    assert other.module.layers.tying.sources == (0, 0, 2, 0)
    got = [_step(other, s) for s in (5, 6)]
    assert got == ref
    for k, v in other.module.state_dict().items():
        if torch.is_tensor(v):
            assert torch.equal(v, ref_weights[k]), k
