"""MemoryProfiler (off costs nothing; on logs per step) and the `skipxl memory` gate."""

from __future__ import annotations

import json

import pytest
import torch

from skipxl.engine import memory as cli
from skipxl.model import TransformerXL, get_preset
from skipxl.profiling.profiler import MemoryProfiler

torch.set_num_threads(1)


def tiny_model(seed: int = 0) -> TransformerXL:
    torch.manual_seed(seed)
    return TransformerXL(get_preset("tiny", n_layer=2, tgt_len=8, mem_len=8)).train()


def hook_count(module: torch.nn.Module) -> int:
    return sum(len(m._forward_pre_hooks) + len(m._forward_hooks) for m in module.modules())


def train(model: TransformerXL, steps: int = 3, profiler: MemoryProfiler | None = None) -> list[torch.Tensor]:
    opt = torch.optim.Adam(model.parameters())
    g = torch.Generator().manual_seed(1)
    mems, losses = None, []
    for _ in range(steps):
        x = torch.randint(0, 256, (2, 9), generator=g)
        out = model(x[:, :-1].clone(), x[:, 1:].clone(), mems)
        out.loss.backward()
        if profiler is not None:
            profiler.measure_states(model, opt)
        opt.step()
        opt.zero_grad(set_to_none=True)
        mems = out.mems
        losses.append(out.loss.detach())
    return losses


class FakeWriter:
    def __init__(self) -> None:
        self.scalars: list[tuple[str, float, int]] = []

    def add_scalar(self, tag: str, value: float, step: int) -> None:
        self.scalars.append((tag, value, step))


def test_disabled_profiler_registers_nothing_and_changes_nothing(tmp_path):
    ref = train(tiny_model())
    model = tiny_model()
    prof = MemoryProfiler(enabled=False, jsonl_path=tmp_path / "m.jsonl").attach(model)
    assert hook_count(model) == 0
    got = train(model, profiler=prof)
    prof.close()
    assert prof.records == [] and not (tmp_path / "m.jsonl").exists()
    assert all(torch.equal(a, b) for a, b in zip(ref, got, strict=True))


def test_enabled_profiler_records_logs_and_detaches(tmp_path):
    ref = train(tiny_model())
    model = tiny_model()
    writer = FakeWriter()
    sunk: list[tuple[int, dict]] = []
    prof = MemoryProfiler(
        enabled=True,
        writer=writer,
        jsonl_path=tmp_path / "m.jsonl",
        sink=lambda step, values: sunk.append((step, values)),
    ).attach(model)
    assert hook_count(model) > 0
    got = train(model, profiler=prof)
    with torch.no_grad():  # evaluation is not profiled
        model.eval()
        model(torch.zeros(2, 8, dtype=torch.long))
    prof.close()
    assert hook_count(model) == 0
    assert all(torch.equal(a, b) for a, b in zip(ref, got, strict=True))  # bitwise the same training
    lines = [json.loads(s) for s in (tmp_path / "m.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lines] == [1, 2, 3] == [r["step"] for r in prof.records]
    for r in lines:
        assert r["saved/bytes"] == r["estimate/bytes"] > 0
        assert r["saved/retained_bytes"] == 0
        assert r["saved/layer_00"] > 0 and r["saved/layer_01"] > 0
        assert r["states/grads"] == r["states/params"] > 0
        assert r["mems/bytes"] > 0 and r["peak/bytes"] > 0
    tags = {t for t, _, _ in writer.scalars}
    assert {"memory/saved/bytes", "memory/mems/held_bytes", "memory/peak/bytes"} <= tags
    assert [step for step, _ in sunk] == [1, 2, 3]
    assert sunk[0][1]["memory/saved/bytes"] == lines[0]["saved/bytes"]


def test_profiler_every_k_steps():
    model = tiny_model()
    prof = MemoryProfiler(enabled=True, every=2).attach(model)
    train(model, steps=5)
    prof.close()
    assert [r["step"] for r in prof.records] == [1, 3, 5]


# ----------------------------------------------------------------------------- the command

COMMON = dict(preset="tiny", steps=3, batch=2, n_layer=2, engine="torch", isolate=False)


def test_memory_command_passes_and_writes_report(tmp_path, capsys):
    report = cli.run_memory(variants="cross_head", per_layer=True, out=str(tmp_path), beta=1.0, **COMMON)
    text = capsys.readouterr().out
    assert "memory check passed" in text and "layer_01" in text
    assert report["variants"] == ["baseline", "cross_head"]
    assert (tmp_path / "memory.png").stat().st_size > 0
    saved = json.loads((tmp_path / "memory.json").read_text())
    s = saved["summaries"]
    assert s["cross_head"]["mems_bytes"] == s["baseline"]["mems_bytes"]
    assert 0 <= s["cross_head"]["saved_max"] - s["baseline"]["saved_max"] <= 2 * 4 * 8  # index only
    assert saved["violations"] == []


def test_memory_command_fails_when_a_variant_allocates_more(tmp_path, monkeypatch, capsys):
    build = cli.build_model

    def leaky(cfg):
        model = build(cfg)
        if cfg.cross_head is not None:  # the cross_head variant
            for layer in model.layers:
                # out * c saves c for the backward: one extra [B, T, D] tensor per layer.
                layer.register_forward_hook(lambda m, args, out: out * torch.full_like(out, 1.0))
        return model

    monkeypatch.setattr(cli, "build_model", leaky)
    with pytest.raises(SystemExit) as exc:
        cli.run_memory(variants="cross_head", out=str(tmp_path), **COMMON)
    assert exc.value.code == 1
    text = capsys.readouterr().out
    assert "MEMORY CHECK FAILED" in text and "cross_head: peak saved activations" in text
    assert json.loads((tmp_path / "memory.json").read_text())["violations"]


def test_memory_command_rejects_unknown_variant(tmp_path):
    from skipxl.errors import SkipxlError

    with pytest.raises(SkipxlError, match="unknown --variant"):
        cli.run_memory(variants="baseline,fast", out=str(tmp_path), **COMMON)


def test_memory_profile_of_dlt_shows_the_state_saving_of_its_tying_state() -> None:
    """A tied layer owns no parameter, gradient or Adam moment: the states shrink by exactly the
    tied layers' share (torch engine, no isolation: seconds)."""
    from skipxl.engine.memory import profile_variant, summarize

    common = dict(preset="tiny", steps=2, batch=1, engine="torch", per_layer=False, overrides={"n_layer": 4})
    base = summarize(profile_variant(variant="baseline", **common))
    dlt = summarize(profile_variant(variant="dlt", tying_state=[0, 0, 2, 2], **common))
    assert dlt["tying_sources"] == [0, 0, 2, 2]
    from skipxl.model import TransformerXL, get_preset

    layer = sum(p.numel() * 4 for p in TransformerXL(get_preset("tiny", n_layer=4)).layers[0].parameters())
    assert base["states"]["params"] - dlt["states"]["params"] == 2 * layer
    assert base["states"]["grads"] - dlt["states"]["grads"] == 2 * layer
    assert base["states"]["optimizer"] - dlt["states"]["optimizer"] >= 2 * 2 * layer  # two Adam moments
    assert dlt["saved_max"] == base["saved_max"]  # the same computation: tying saves states, not activations
