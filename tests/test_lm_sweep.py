"""The resumable LM sweep: finished runs skipped, unfinished ones resumed, crashed ones restarted."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from skipxl.engine.lm_sweep import LMSweepConfig, run_dir_for, run_lm_sweep, run_state
from skipxl.errors import SkipxlError


class FakeProc:
    def __init__(self, rc):
        self.returncode = rc
        self.terminated = False

    def poll(self):
        return self.returncode

    def terminate(self):
        self.terminated = True
        self.returncode = -15

    def wait(self):
        return self.returncode


def fake_launcher(calls, fail=()):
    def launch(argv, log, env):
        calls.append(argv)
        out = Path(next(a for a in argv if a.startswith("--out="))[6:])
        if out.name in fail:
            return FakeProc(1)
        out.mkdir(parents=True, exist_ok=True)
        (out / "results.json").write_text("{}")
        assert env["OMP_NUM_THREADS"] == "1"
        return FakeProc(0)

    return launch


def test_sweep_skips_resumes_and_restarts(tmp_path):
    cfg = LMSweepConfig(out=str(tmp_path), variants=("baseline", "skip_retain"), seeds=(0, 1), max_steps=7)
    done = run_dir_for(tmp_path, "baseline", 0)
    done.mkdir(parents=True)
    (done / "results.json").write_text("{}")
    half = run_dir_for(tmp_path, "baseline", 1)
    (half / "checkpoints" / "step_5").mkdir(parents=True)
    crashed = run_dir_for(tmp_path, "skip_retain", 0)
    crashed.mkdir(parents=True)
    (crashed / "config.json").write_text("{}")  # died before its first checkpoint
    assert [run_state(r) for r in (done, half, crashed)] == ["done", "resume", "fresh"]
    calls = []
    res = run_lm_sweep(cfg, launch=fake_launcher(calls))
    assert res["skipped"] == [str(done)] and res["resumed"] == [str(half)] and not res["failed"]
    assert len(calls) == 3
    resume = next(c for c in calls if f"--out={half}" in c)
    assert "--resume" in resume and not any(a.startswith("--seed") for a in resume)
    fresh = next(c for c in calls if f"--out={crashed}" in c)
    assert {"--variant=skip_retain", "--seed=0", "--max_steps=7", "--preset=small"} <= set(fresh)
    assert "--eval_interval=500" in fresh
    assert json.loads((tmp_path / "sweep.json").read_text())["max_steps"] == 7
    calls.clear()
    res = run_lm_sweep(cfg, launch=fake_launcher(calls))  # second sitting: all finished
    assert not calls and len(res["skipped"]) == 4


def test_sweep_refuses_other_settings_and_reports_failures(tmp_path):
    run_lm_sweep(
        LMSweepConfig(out=str(tmp_path), variants=("baseline",), seeds=(0,)),
        dry_run=False,
        launch=fake_launcher([]),
    )
    with pytest.raises(SkipxlError, match="other settings"):
        run_lm_sweep(LMSweepConfig(out=str(tmp_path), variants=("baseline",), seeds=(0,), max_steps=5))
    moved = tmp_path.parent / f"{tmp_path.name}_moved"  # the same sweep in another folder continues
    shutil.copytree(tmp_path, moved)
    again = LMSweepConfig(out=str(moved), variants=("baseline",), seeds=(0, 1))
    res = run_lm_sweep(again, launch=fake_launcher([]))
    assert not res["failed"] and json.loads((moved / "sweep.json").read_text())["out"] == str(moved)
    res = run_lm_sweep(
        LMSweepConfig(out=str(tmp_path / "b"), variants=("cross_head",), seeds=(3,)),
        launch=fake_launcher([], fail={"seed_3"}),
    )
    assert res["failed"] == [str(run_dir_for(tmp_path / "b", "cross_head", 3))]
    with pytest.raises(SkipxlError, match="variant"):
        LMSweepConfig(out=str(tmp_path), variants=("nope",))


def test_dry_run_plans_without_writing(tmp_path):
    res = run_lm_sweep(LMSweepConfig(out=str(tmp_path / "s"), seeds=(0,)), dry_run=True)
    assert len(res["planned"]) == 4 and not (tmp_path / "s").exists()


def test_interrupted_sweep_terminates_its_running_trainers(tmp_path):
    procs = []

    def launch(argv, log, env):
        procs.append(FakeProc(None))  # still running
        if len(procs) == 2:
            raise KeyboardInterrupt  # the sweep is stopped while the first run trains
        return procs[-1]

    cfg = LMSweepConfig(out=str(tmp_path), variants=("baseline",), seeds=(0, 1))
    with pytest.raises(KeyboardInterrupt):
        run_lm_sweep(cfg, jobs=2, launch=launch)
    assert procs[0].terminated
