"""``skipxl lm-sweep``: the paper's LM variants x seeds, resumable across sittings.

Every (variant, seed) run is one ``skipxl train`` process writing ``OUT/<variant>/seed_<s>``:

* a folder with ``results.json`` is finished and skipped;
* a folder with a checkpoint is continued with ``--resume`` (same settings: the trainer checks);
* an empty folder, or one that crashed before its first checkpoint, is (re)started fresh.

The sweep's settings are stored in ``OUT/sweep.json``; a later call with other settings is refused
(its runs would not pool: ``skipxl claims`` refuses them too). ``jobs`` runs several processes at a
time (one GPU can hold several small models; on the shared CPU keep 1). Each process gets
``OMP_NUM_THREADS=threads``.

Default budget (recipe wt2, preset small, 10,000 steps of 16 x 64 tokens, ~4.9 epochs of
WikiText-2). Measured: a 4,000-step sweep (``--max_steps 4000``, fp32 ZeRO-0, two runs side by
side on the 2-core machine, one thread each) takes ~15 min per run on a quiet machine (12 runs:
~1.5 h), and its baselines' validation perplexity still fell by ~11% over the last quarter of
training (docs/results/wt2_fp32_4k.md): 4,000 steps is too short; whether 10,000 is enough has
not been measured. ``skipxl claims`` reports whether the curve flattened (relative change over the last
quarter of training under 2%); if not, rerun with a larger ``--max_steps`` into a new ``--out``.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from skipxl.engine import run_dir as rd
from skipxl.engine.variants import check_variant
from skipxl.errors import SkipxlError

SWEEP_FILE = "sweep.json"
DEFAULT_FLAGS = {"eval_interval": 500, "save_interval": 500, "log_interval": 100}

#: The four variants of the paper (arXiv 2311.08123); the DLT variants are opt-in (``variants=``).
PAPER_VARIANTS = ("baseline", "skip_retain", "cross_head", "combined")


@dataclass(frozen=True)
class LMSweepConfig:
    """What to train: ``recipe``/``preset`` x ``variants`` x ``seeds`` with ``flags`` for every run."""

    out: str
    recipe: str = "wt2"
    preset: str | None = "small"
    variants: tuple[str, ...] = PAPER_VARIANTS
    seeds: tuple[int, ...] = (0, 1, 2)
    max_steps: int = 10_000
    data_dir: str | None = None
    flags: dict[str, Any] = field(default_factory=lambda: dict(DEFAULT_FLAGS))

    def __post_init__(self) -> None:
        for v in self.variants:
            check_variant(v)
        if not self.seeds or len(set(self.seeds)) != len(self.seeds):
            raise SkipxlError(f"--seeds {self.seeds!r} must be distinct integers, e.g. 0-2")
        if self.max_steps < 1:
            raise SkipxlError(f"--max_steps must be >= 1, got {self.max_steps}")


def run_dir_for(out: str | Path, variant: str, seed: int) -> Path:
    return Path(out) / variant / f"seed_{seed}"


def run_state(run: Path) -> str:
    """``done`` (results.json), ``resume`` (has a checkpoint) or ``fresh``."""
    if (run / rd.RESULTS).is_file():
        return "done"
    ckpt = run / rd.CHECKPOINTS
    if ckpt.is_dir() and any(ckpt.iterdir()):
        return "resume"
    return "fresh"


def train_argv(cfg: LMSweepConfig, variant: str, seed: int, state: str) -> list[str]:
    """The ``skipxl train`` command line of one run."""
    run = run_dir_for(cfg.out, variant, seed)
    argv = [
        sys.executable,
        "-m",
        "skipxl.cli",
        "train",
        f"--recipe={cfg.recipe}",
        f"--out={run}",
        "--progress=False",
    ]
    if state == "resume":
        return [*argv, "--resume"]
    argv += [f"--variant={variant}", f"--seed={seed}", f"--max_steps={cfg.max_steps}"]
    if cfg.preset is not None:
        argv.append(f"--preset={cfg.preset}")
    if cfg.data_dir is not None:
        argv.append(f"--data_dir={cfg.data_dir}")
    argv += [
        f"--{k}={','.join(map(str, v)) if isinstance(v, (list, tuple)) else v}" for k, v in cfg.flags.items()
    ]
    return argv


def _same(a: Any, b: Any) -> bool:
    return json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)


#: Fields a later sitting may change: which runs it adds, and where the folder now lies (a sweep
#: copied to another disk, or its finished runs kept under docs/results, continues there).
_FREE_FIELDS = ("variants", "seeds", "out")


def _check_sweep_file(cfg: LMSweepConfig) -> None:
    path = Path(cfg.out) / SWEEP_FILE
    mine = {k: v for k, v in asdict(cfg).items() if k not in _FREE_FIELDS}
    if path.is_file():
        theirs = {k: v for k, v in json.loads(path.read_text()).items() if k not in _FREE_FIELDS}
        diff = sorted(k for k in set(mine) | set(theirs) if not _same(mine.get(k), theirs.get(k)))
        if diff:
            shown = ", ".join(f"{k}: {theirs.get(k)!r} vs {mine.get(k)!r}" for k in diff[:3])
            raise SkipxlError(f"{cfg.out} holds a sweep with other settings ({shown}); use another --out")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(asdict(cfg), indent=2, sort_keys=True) + "\n")
    tmp.replace(path)


def _subprocess_runner(argv: list[str], log: Path, env: dict[str, str]) -> subprocess.Popen:
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("a") as f:
        return subprocess.Popen(argv, stdout=f, stderr=subprocess.STDOUT, env=env)


def run_lm_sweep(
    cfg: LMSweepConfig,
    *,
    jobs: int = 1,
    threads: int = 1,
    dry_run: bool = False,
    launch: Callable[[list[str], Path, dict[str, str]], Any] | None = None,
) -> dict[str, list[str]]:
    """Run every unfinished run (``jobs`` at a time); returns run folders by outcome."""
    if jobs < 1 or threads < 1:
        raise SkipxlError(f"--jobs and --threads must be >= 1 (got {jobs}, {threads})")
    if not dry_run:
        _check_sweep_file(cfg)
    launch = launch or _subprocess_runner
    env = {
        **os.environ,
        "OMP_NUM_THREADS": str(threads),
        "DS_ACCELERATOR": os.environ.get("DS_ACCELERATOR", ""),
    }
    if not env["DS_ACCELERATOR"]:
        env.pop("DS_ACCELERATOR")
    outcome: dict[str, list[str]] = {"skipped": [], "resumed": [], "started": [], "failed": [], "planned": []}
    queue = []
    for variant in cfg.variants:
        for seed in cfg.seeds:
            run = run_dir_for(cfg.out, variant, seed)
            state = run_state(run)
            if state == "done":
                outcome["skipped"].append(str(run))
                continue
            argv = train_argv(cfg, variant, seed, state)
            outcome["planned"].append(" ".join(argv[1:]))
            queue.append((run, state, argv))
    if dry_run:
        return outcome
    running: list[tuple[Path, str, Any]] = []

    def reap(block: bool) -> None:
        while running and (block or any(p.poll() is not None for _, _, p in running)):
            for item in list(running):
                run, state, proc = item
                if proc.poll() is None:
                    continue
                running.remove(item)
                ok = proc.returncode == 0 and run_state(run) == "done"
                outcome["resumed" if state == "resume" else "started"].append(str(run))
                if not ok:
                    outcome["failed"].append(str(run))
            if block and running:
                time.sleep(0.5)
            elif not block:
                break

    try:
        for run, state, argv in queue:
            while len(running) >= jobs:
                reap(block=False)
                time.sleep(0.5)
            if state == "fresh" and run.exists():
                shutil.rmtree(run)  # crashed before its first checkpoint: nothing to resume
            running.append((run, state, launch(argv, run.parent / f"{run.name}.log", env)))
        reap(block=True)
    finally:
        for _, _, proc in running:  # interrupted: the trainers checkpoint on SIGTERM and stop
            if proc.poll() is None:
                proc.terminate()
        for _, _, proc in running:
            proc.wait()
    return outcome


def _parse_seeds(spec: Any) -> tuple[int, ...]:
    from skipxl.glue.sweep import parse_seeds

    return parse_seeds(spec)


def main(
    out: str = "runs/wt2_sweep",
    recipe: str = "wt2",
    preset: str | None = "small",
    variants: Any = "baseline,skip_retain,cross_head,combined",
    seeds: Any = "0-2",
    max_steps: int = 10_000,
    data_dir: str | None = None,
    jobs: int = 1,
    threads: int = 1,
    dry_run: bool = False,
    **flags: Any,
) -> None:
    """Train variants x seeds into OUT/<variant>/seed_<s>, skipping finished runs, resuming unfinished.

    Args:
        out: the sweep folder (also holds sweep.json and one .log per run).
        recipe: as for skipxl train (default wt2).
        preset: as for skipxl train (default small; the recipe must have it).
        variants: comma-separated (default: all four).
        seeds: e.g. 0-2 or 0,3,7.
        max_steps: optimizer steps per run.
        data_dir: the corpus folder (e.g. /work/shared/data/wikitext-2).
        jobs: processes at a time (1 on a shared CPU; several small models share one GPU).
        threads: OMP_NUM_THREADS per process.
        dry_run: print the planned commands and exit.
        flags: any other skipxl train flag, passed to every run (--eval_interval, --d_model, ...).
    """
    from skipxl.engine.flags import coerce

    def stop(signum: int, _frame: Any) -> None:
        raise SystemExit(128 + signum)  # runs the sweep's cleanup: children checkpoint and stop

    signal.signal(signal.SIGTERM, stop)
    names = variants if isinstance(variants, (list, tuple)) else str(variants).split(",")
    cfg = LMSweepConfig(
        out=str(out),
        recipe=str(recipe),
        preset=None if preset is None else str(preset),
        variants=tuple(v.strip() for v in names if str(v).strip()),
        seeds=_parse_seeds(seeds),
        max_steps=coerce("max_steps", max_steps, int),
        data_dir=data_dir,
        flags={**DEFAULT_FLAGS, **flags},
    )
    res = run_lm_sweep(
        cfg, jobs=coerce("jobs", jobs, int), threads=coerce("threads", threads, int), dry_run=dry_run
    )
    if dry_run:
        print("\n".join(res["planned"]) or "nothing to run: every run is finished")
        return
    print(
        f"lm-sweep: {len(res['started'])} started, {len(res['resumed'])} resumed, {len(res['skipped'])} "
        f"finished before, {len(res['failed'])} failed -> {out}"
    )
    if res["failed"]:
        raise SkipxlError(f"{len(res['failed'])} run(s) failed: {res['failed'][:3]}; see their .log files")
