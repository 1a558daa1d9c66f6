"""Two-rank jobs under faults: a signal to one rank stops every rank at the same step with
128 + signum and no traceback (and the checkpoint resumes); a frozen rank is named by the
watchdog of the others, which exit with EXIT_HUNG instead of hanging."""

from __future__ import annotations

import json
import os
import signal

import pytest
from engine_helpers import finish, launch_cli, wait_for_step

from skipxl.engine import integrity
from skipxl.engine.checkpoint import read_latest
from skipxl.engine.watchdog import EXIT_HUNG

pytestmark = pytest.mark.slow

TINY = [
    "--builtin_train_tokens", "20000", "--builtin_eval_tokens", "2000", "--eval_batch_size", "2",
    "--eval_mem_len", "32", "--global_batch", "4", "--log_interval", "1", "--eval_interval", "0",
    "--save_interval", "0", "--progress", "False",
]  # fmt: skip


def test_sigterm_to_rank_1_stops_both_ranks_at_one_step_and_resumes(tmp_path):
    run = tmp_path / "run"
    procs = launch_cli(2, "train", "--max_steps", "2000", "--out", str(run), *TINY)
    wait_for_step(run, 2, procs)
    os.kill(procs[1].pid, signal.SIGTERM)
    codes, outs = finish(procs)
    assert codes == [143, 143], outs
    assert not any("Traceback" in o for o in outs), outs
    tag = read_latest(run / "checkpoints")
    step = int(tag.split("_")[1])
    assert f"stopped at step {step} (SIGTERM)" in outs[0]
    verdict = integrity.verify(run / "checkpoints" / tag)
    assert verdict.ok and verdict.rank_files() == 2
    procs = launch_cli(2, "train", "--resume", "--out", str(run), "--stop_at_step", str(step + 1))
    codes, outs = finish(procs)
    assert codes == [0, 0], outs
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "train/loss" in r] == list(range(1, step + 2))


def test_frozen_rank_is_named_and_the_job_exits(tmp_path):
    run = tmp_path / "run"
    procs = launch_cli(
        2, "train", "--max_steps", "2000", "--out", str(run), "--collective_timeout_s", "15", *TINY
    )
    try:
        wait_for_step(run, 2, procs)
        os.kill(procs[1].pid, signal.SIGSTOP)
        out0, _ = procs[0].communicate(timeout=120)
    finally:
        procs[1].kill()
        procs[1].communicate()
    assert procs[0].returncode == EXIT_HUNG, out0[-3000:]
    errors = [line for line in out0.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and f"rank 1 (pid {procs[1].pid}" in errors[0], out0[-3000:]
    assert "Traceback" not in out0
