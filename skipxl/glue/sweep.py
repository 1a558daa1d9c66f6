"""Seed sweeps: every (task, variant, seed) fine-tuned into its own run folder, resumably.

Layout: ``<out>/<task>/<variant>/seed_<s>/`` (see :mod:`skipxl.glue.runlog` for the files).
Resuming is the default: a run whose folder holds ``result.json`` is skipped -- after checking
that it was trained with the same configuration -- a run that failed (``failed.json``) is trained
again (``retry_failed=False`` keeps the failure), and a folder without a marker (a killed run) is
wiped and trained again from scratch. A sweep with a failed run ends with an error (exit 2). Runs are ordered
seed-major (seed 0: every task and variant, then seed 1 ...) so that a sweep stopped early
still compares every variant on every task over the same seeds.

Seeds: seed ``s`` gives ``init_seed = s`` and ``data_seed = s`` (separate streams), or a fixed
``data_seed`` for every run when one is given, to vary the initialisation alone.
"""

from __future__ import annotations

import json
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from skipxl.config_io import save_json, to_dict
from skipxl.errors import SkipxlError, require
from skipxl.glue.finetune import VARIANTS, FinetuneConfig, finetune
from skipxl.glue.runlog import FAILED_FILE, config_diff, git_info, is_finished, reset_run_dir, write_marker
from skipxl.glue.tasks import parse_tasks, resolve_glue_dir, task_file


def parse_seeds(spec: Any) -> tuple[int, ...]:
    """``"0-9"``, ``"0,3,7"``, ``"0-2,5"``, ``5`` or a list -> sorted-unique-preserving seed tuple."""
    if isinstance(spec, bool):
        raise SkipxlError(f"bad seeds {spec!r}; write e.g. 0-9 or 0,3,7")
    if isinstance(spec, int):
        parts: list[Any] = [spec]
    elif isinstance(spec, (list, tuple)):
        parts = list(spec)
    else:
        parts = [p.strip() for p in str(spec).split(",")]
    seeds: list[int] = []
    for part in parts:
        if isinstance(part, int) and not isinstance(part, bool):
            values = [part]
        else:
            text = str(part).strip()
            lo, sep, hi = text.partition("-")
            try:
                if sep:
                    a, b = int(lo), int(hi)
                    if a > b:
                        raise SkipxlError(
                            f"bad seed range {text!r}: {a} > {b}; write LOW-HIGH with LOW <= HIGH"
                        )
                    values = list(range(a, b + 1))
                else:
                    values = [int(text)]
            except ValueError as exc:
                raise SkipxlError(f"bad seeds {spec!r}; write e.g. 0-9, 0,3,7 or 0-2,5") from exc
        for v in values:
            if v < 0:
                raise SkipxlError(f"bad seed {v}: seeds must be non-negative")
            if v not in seeds:
                seeds.append(v)
    if not seeds:
        raise SkipxlError(f"bad seeds {spec!r}: no seed given; write e.g. 0-9")
    return tuple(seeds)


def parse_variants(spec: Any) -> tuple[str, ...]:
    """``"baseline,cross_head"`` (or a list) -> validated variant names."""
    names = [s.strip() for s in spec.split(",")] if isinstance(spec, str) else [str(s).strip() for s in spec]
    names = [n for n in names if n]
    for name in names:
        require(name in VARIANTS, f"variant {name!r} is unknown; choose from {VARIANTS}")
    require(bool(names), f"no variant given; pass e.g. --variants {','.join(VARIANTS)}")
    return tuple(dict.fromkeys(names))


@dataclass(frozen=True)
class SweepConfig:
    """A seed sweep over tasks x variants x seeds, all sharing ``base``'s recipe."""

    tasks: tuple[str, ...] = ("mrpc",)
    variants: tuple[str, ...] = VARIANTS
    seeds: tuple[int, ...] = (0, 1, 2, 3, 4)
    out: str = "runs/glue"
    base: FinetuneConfig = field(default_factory=FinetuneConfig)
    data_seed: int | None = None
    retry_failed: bool = True

    def __post_init__(self) -> None:
        object.__setattr__(self, "tasks", tuple(t.name for t in parse_tasks(list(self.tasks))))
        object.__setattr__(self, "variants", parse_variants(list(self.variants)))
        object.__setattr__(self, "seeds", parse_seeds(list(self.seeds)))
        require(self.data_seed is None or self.data_seed >= 0, "data_seed must be a non-negative integer")


@dataclass(frozen=True)
class PlannedRun:
    task: str
    variant: str
    seed: int
    run_dir: Path
    cfg: FinetuneConfig


def run_dir_for(out: str | Path, task: str, variant: str, seed: int) -> Path:
    """``<out>/<task>/<variant>/seed_<seed>``."""
    return Path(out) / task / variant / f"seed_{seed}"


def plan_runs(cfg: SweepConfig) -> list[PlannedRun]:
    """Every run of the sweep: seed-major, then task, then variant."""
    runs = []
    for seed in cfg.seeds:
        for task in cfg.tasks:
            for variant in cfg.variants:
                run_cfg = replace(
                    cfg.base,
                    task=task,
                    variant=variant,
                    init_seed=seed,
                    data_seed=seed if cfg.data_seed is None else cfg.data_seed,
                )
                runs.append(
                    PlannedRun(task, variant, seed, run_dir_for(cfg.out, task, variant, seed), run_cfg)
                )
    return runs


def _check_same_config(run: PlannedRun) -> None:
    path = run.run_dir / "config.json"
    if not path.is_file():
        return
    try:
        old = json.loads(path.read_text())
    except json.JSONDecodeError:
        return
    diff = config_diff(old, to_dict(run.cfg))
    if diff:
        raise SkipxlError(
            f"{run.run_dir} was trained with a different configuration (fields {diff}); use another --out "
            "or delete that folder to retrain it"
        )


@dataclass
class SweepOutcome:
    """What a sweep invocation did."""

    ran: list[Path] = field(default_factory=list)
    skipped: list[Path] = field(default_factory=list)
    failed: list[Path] = field(default_factory=list)
    wall_time_s: float = 0.0


def _rank() -> int:
    import os

    return int(os.environ.get("RANK", "0"))


def run_sweep(
    cfg: SweepConfig,
    runner: Callable[[FinetuneConfig, Path], dict[str, Any]] | None = None,
    log: Callable[[str], None] | None = None,
) -> SweepOutcome:
    """Run every unfinished run of the sweep (``runner``, default :func:`finetune`); skip finished ones."""
    runner = runner if runner is not None else finetune
    t0 = time.time()
    main = _rank() == 0
    say = log if log is not None else (lambda msg: print(msg, flush=True) if main else None)
    runs = plan_runs(cfg)
    if main:
        save_json({"sweep": to_dict(cfg), "git": git_info(), "runs": len(runs)}, Path(cfg.out) / "sweep.json")
    outcome = SweepOutcome()
    # Decide once, before anything is written, so that every rank sees the same plan.
    pending = []
    for run in runs:
        if is_finished(run.run_dir, include_failed=not cfg.retry_failed):
            _check_same_config(run)
            outcome.skipped.append(run.run_dir)
        else:
            pending.append(run)
    for i, run in enumerate(runs, start=1):
        tag = f"[{i}/{len(runs)}] {run.task} {run.variant} seed {run.seed}"
        if run not in pending:
            say(f"{tag}: finished earlier, skipped")
            continue
        if main:
            reset_run_dir(run.run_dir)
        t_run = time.time()
        try:
            result = runner(run.cfg, run.run_dir)
        except (SkipxlError, KeyboardInterrupt):
            raise
        except Exception as exc:  # a diverged or crashed run is recorded and counted as failed
            if main:
                write_marker(
                    run.run_dir,
                    FAILED_FILE,
                    {
                        "task": run.task,
                        "variant": run.variant,
                        "init_seed": run.cfg.init_seed,
                        "data_seed": run.cfg.data_seed,
                        "error": f"{type(exc).__name__}: {exc}",
                        "traceback": traceback.format_exc(),
                        "wall_time_s": round(time.time() - t_run, 2),
                    },
                )
            outcome.failed.append(run.run_dir)
            say(f"{tag}: FAILED ({type(exc).__name__}: {exc})")
            continue
        outcome.ran.append(run.run_dir)
        say(f"{tag}: {result['primary_metric']} {result['primary']:.4f} ({time.time() - t_run:.1f} s)")
    outcome.wall_time_s = time.time() - t0
    return outcome


def main(
    task: Any = "mrpc",
    variants: Any = "baseline,cross_head",
    seeds: Any = "0-4",
    model: str = "minilm",
    glue_dir: str | None = None,
    out: str = "runs/glue",
    max_steps: int | None = None,
    beta: float = 0.1,
    mode: str = "permutation",
    attn_base: str = "sdpa",
    ds_config: str = "auto",
    lr: float = 2e-5,
    batch_size: int = 32,
    micro_batch: int | None = None,
    grad_accum: int | None = None,
    epochs: int = 3,
    max_length: int = 128,
    warmup_ratio: float = 0.1,
    data_seed: int | None = None,
    data_source: str = "local",
    max_train_examples: int | None = None,
    max_eval_examples: int | None = None,
    retry_failed: bool = True,
    report: bool = True,
    local_rank: int | None = None,
) -> None:
    """Seed sweep, then report (rank 0); the body of ``recipes/glue.py``.

    ``deepspeed recipes/glue.py --task mrpc --variants baseline,cross_head --seeds 0-9 --model NAME``

    ``local_rank`` is accepted (and ignored: LOCAL_RANK is read from the environment) because
    the ``deepspeed`` launcher appends ``--local_rank=N`` to the script's arguments.
    """
    del local_rank
    specs = parse_tasks(task if isinstance(task, str) else [str(t) for t in task])
    if data_source == "local":  # fail before any model is loaded when a file is missing
        root = resolve_glue_dir(glue_dir)
        for spec in specs:
            for split in spec.splits:
                task_file(root, spec, split)
    base = FinetuneConfig(
        task=specs[0].name,
        model=str(model),
        beta=float(beta),
        mode=str(mode),
        attn_base=str(attn_base),
        ds_config=str(ds_config),
        lr=float(lr),
        batch_size=int(batch_size),
        micro_batch=micro_batch,
        grad_accum=grad_accum,
        epochs=int(epochs),
        max_length=int(max_length),
        warmup_ratio=float(warmup_ratio),
        max_steps=max_steps,
        glue_dir=None if glue_dir is None else str(glue_dir),
        data_source=str(data_source),
        max_train_examples=max_train_examples,
        max_eval_examples=max_eval_examples,
    )
    cfg = SweepConfig(
        tasks=tuple(s.name for s in specs),
        variants=parse_variants(variants),
        seeds=parse_seeds(seeds),
        out=str(out),
        base=base,
        data_seed=data_seed,
        retry_failed=bool(retry_failed),
    )
    outcome = run_sweep(cfg)
    if _rank() == 0:
        print(
            f"sweep: {len(outcome.ran)} ran, {len(outcome.skipped)} skipped, {len(outcome.failed)} failed "
            f"in {outcome.wall_time_s:.1f} s -> {out}",
            flush=True,
        )
        if report:
            from skipxl.glue.report import glue_report

            rep = glue_report(out)
            print(rep.markdown, flush=True)
            print(f"report: {rep.markdown_path} {rep.csv_path} {rep.plot_path or ''}", flush=True)
    if outcome.failed:  # a sweep with failed runs is not a success, whatever its report says
        first = outcome.failed[0] / FAILED_FILE
        raise SkipxlError(
            f"{len(outcome.failed)} of {len(outcome.ran) + len(outcome.failed) + len(outcome.skipped)} "
            f"runs failed (first: {first}); fix the cause and rerun the command (failed runs are retried)"
        )


if __name__ == "__main__":  # pragma: no cover
    import fire

    try:
        fire.Fire(main)
    except SkipxlError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
