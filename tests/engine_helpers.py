"""Shared helper functions of the engine/CLI tests (not a test module; the shared fixtures are in
``conftest.py``)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
LAUNCH_VARS = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", "LOCAL_WORLD_SIZE")


def clean_env(**extra: str) -> dict[str, str]:
    """The environment for a child process: CPU DeepSpeed, no progress bar, no inherited launch vars
    (an in-process test run may have set RANK/MASTER_PORT, whose port this process still holds)."""
    env = {k: v for k, v in os.environ.items() if k not in LAUNCH_VARS}
    env.update(DS_ACCELERATOR="cpu", SKIPXL_NO_PROGRESS="1", OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    env.update(extra)
    return env


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def rank_env(rank: int, world: int, port: int) -> dict[str, str]:
    """The child environment of ``rank`` in a one-node job of ``world`` processes (gloo on CPU)."""
    ranks = {"RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": str(world)}
    return clean_env(**ranks, MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))


def launch_workers(world: int, out: Path, spec: dict[str, Any], timeout: float = 400) -> None:
    """Run tests/ds_worker.py as ``world`` processes (rank env vars, gloo on CPU); raise on failure."""
    port = free_port()
    procs = []
    for rank in range(world):
        procs.append(
            subprocess.Popen(
                [sys.executable, str(REPO / "tests" / "ds_worker.py"), str(out), json.dumps(spec)],
                env=rank_env(rank, world, port),
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
        )
    outputs = []
    for p in procs:
        try:
            text, _ = p.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            raise AssertionError(f"worker timed out after {timeout}s (deadlock?)") from None
        outputs.append(text)
    codes = [p.returncode for p in procs]
    assert codes == [0] * world, f"workers failed {codes}:\n" + "\n".join(o[-4000:] for o in outputs)


def run_cli(*args: str, timeout: float = 300, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """``skipxl ARGS`` in a fresh process (through ``python -m skipxl.cli``)."""
    return subprocess.run(
        [sys.executable, "-m", "skipxl.cli", *args],
        env=clean_env(),
        cwd=cwd or REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def run_recipe(name: str, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(REPO / "recipes" / f"{name}.py"), *args],
        env=clean_env(),
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def tiny_config(out: Path, *, variant: str = "baseline", steps: int = 6, **train: Any) -> Any:
    """A RunConfig for the tiny preset on a small built-in corpus (seconds to train on a CPU)."""
    from skipxl.engine.recipe import build_config

    flags: dict[str, Any] = dict(
        log_interval=1,
        eval_interval=3,
        save_interval=0,
        val_max_batches=2,
        builtin_train_tokens=20_000,
        builtin_eval_tokens=2_000,
        eval_batch_size=2,
        eval_mem_len=32,
        global_batch=4,
    )
    flags.update(train)
    return build_config("builtin", variant=variant, max_steps=steps, out=str(out), **flags)


def launch_cli(
    world: int, *args: str, port: int | None = None, preexec: Callable[[], None] | None = None
) -> list[subprocess.Popen[str]]:
    """``skipxl ARGS`` as ``world`` ranks of one job (rank env vars, gloo on CPU), not waited for:
    the multi-rank fault tests (and ``tools/faults.py``) signal single ranks of it. ``preexec``
    runs in each child before it starts (e.g. a file-size limit)."""
    port = port or free_port()
    procs = []
    for rank in range(world):
        procs.append(
            subprocess.Popen(
                [sys.executable, "-m", "skipxl.cli", *args],
                env=rank_env(rank, world, port),
                cwd=REPO,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
                start_new_session=True,  # a signal to the test's group never reaches them
                preexec_fn=preexec,
            )
        )
    return procs


def wait_for_step(run_dir: Path, step: int, procs: list[subprocess.Popen[str]], timeout: float = 300) -> int:
    """Block until rank 0 logged a training row at ``step`` or later; return that step."""
    import time

    deadline = time.time() + timeout
    path = Path(run_dir) / "metrics.jsonl"
    while time.time() < deadline:
        if path.is_file():
            steps = [json.loads(x)["step"] for x in path.read_text().splitlines() if '"train/loss"' in x]
            if steps and steps[-1] >= step:
                return steps[-1]
        if any(p.poll() is not None for p in procs):
            out = [p.communicate()[0][-3000:] for p in procs]
            raise AssertionError(f"a rank ended early {[p.returncode for p in procs]}:\n" + "\n".join(out))
        time.sleep(0.2)
    for p in procs:
        p.kill()
    raise AssertionError(f"no training row at step {step} within {timeout}s")


def finish(procs: list[subprocess.Popen[str]], timeout: float = 300) -> tuple[list[int], list[str]]:
    """Wait for every rank (kill them all after ``timeout``); return exit codes and outputs."""
    outputs = []
    for p in procs:
        try:
            outputs.append(p.communicate(timeout=timeout)[0])
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            outputs.append(p.communicate()[0])
    return [p.returncode for p in procs], outputs
