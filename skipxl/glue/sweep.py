"""Seed sweeps: every (task, method, variant, seed) fine-tuned into its own run folder, resumably.

Layout: ``<out>/<task>/<label>/seed_<s>/`` where ``label`` is the variant for full fine-tuning
(``baseline``, ``cross_head``) and the method otherwise (``spartan``, ``lora+cross_head``, ...;
:func:`~skipxl.glue.finetune.run_label`) (see :mod:`skipxl.glue.runlog` for the files).
Resuming is the default: a run whose folder holds ``result.json`` is skipped -- after checking
that it was trained with the same configuration -- a run that failed (``failed.json``) is trained
again (``retry_failed=False`` keeps the failure), and a folder without a marker (a killed run) is
wiped and trained again from scratch. A sweep with a failed run ends with an error (exit 2). Runs
are ordered seed-major (seed 0: every task, method and variant, then seed 1 ...) so that a sweep stopped early
still compares every variant on every task over the same seeds.

Seeds: seed ``s`` gives ``init_seed = s`` and ``data_seed = s`` (separate streams), or a fixed
``data_seed`` for every run when one is given, to vary the initialisation alone.

Learning rate and batch size: given ones apply to every method; otherwise each method gets its
recommended values (:data:`skipxl.glue.methods.METHOD_DEFAULTS`: lr 2e-5 / batch 32 for full
fine-tuning, the released SPARTAN settings lr 1e-3 / batch 16 for SPARTAN and the adapters,
lr 5e-4 / batch 16 for LoRA).
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
from skipxl.glue.finetune import VARIANTS, FinetuneConfig, finetune, run_label
from skipxl.glue.methods import METHOD_DEFAULTS, METHOD_NAMES
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


def _parse_names(spec: Any, allowed: tuple[str, ...], what: str, flag: str) -> tuple[str, ...]:
    """``"a,b"`` (or a list) -> the names, each checked against ``allowed``, duplicates dropped."""
    names = [s.strip() for s in spec.split(",")] if isinstance(spec, str) else [str(s).strip() for s in spec]
    names = [n for n in names if n]
    for name in names:
        require(name in allowed, f"{what} {name!r} is unknown; choose from {allowed}")
    require(bool(names), f"no {what} given; pass e.g. --{flag} {','.join(allowed)}")
    return tuple(dict.fromkeys(names))


def parse_methods(spec: Any) -> tuple[str, ...]:
    """``"full,spartan,lora"`` (or a list) -> validated method names."""
    return _parse_names(spec, METHOD_NAMES, "method", "methods")


def parse_variants(spec: Any) -> tuple[str, ...]:
    """``"baseline,cross_head"`` (or a list) -> validated variant names."""
    return _parse_names(spec, VARIANTS, "variant", "variants")


@dataclass(frozen=True)
class SweepConfig:
    """A seed sweep over tasks x methods x variants x seeds, all sharing ``base``'s recipe.

    ``lr`` / ``batch_size`` (when given) replace ``base``'s for every method; when ``None`` each
    method gets :data:`~skipxl.glue.methods.METHOD_DEFAULTS`.
    """

    tasks: tuple[str, ...] = ("mrpc",)
    methods: tuple[str, ...] = ("full",)
    variants: tuple[str, ...] = VARIANTS
    seeds: tuple[int, ...] = (0, 1, 2, 3, 4)
    out: str = "runs/glue"
    base: FinetuneConfig = field(default_factory=FinetuneConfig)
    data_seed: int | None = None
    retry_failed: bool = True
    lr: float | None = None
    batch_size: int | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "tasks", tuple(t.name for t in parse_tasks(list(self.tasks))))
        object.__setattr__(self, "methods", parse_methods(list(self.methods)))
        require(self.lr is None or self.lr > 0, f"lr must be positive, got {self.lr}")
        require(
            self.batch_size is None or self.batch_size > 0,
            f"batch_size must be positive, got {self.batch_size}",
        )
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
    method: str = "full"

    @property
    def label(self) -> str:
        return run_label(self.method, self.variant)


def run_dir_for(out: str | Path, task: str, variant: str, seed: int) -> Path:
    """``<out>/<task>/<variant>/seed_<seed>`` (``variant`` is the run label)."""
    return Path(out) / task / variant / f"seed_{seed}"


def plan_runs(cfg: SweepConfig) -> list[PlannedRun]:
    """Every run of the sweep: seed-major, then task, then method, then variant."""
    runs = []
    for seed in cfg.seeds:
        for task in cfg.tasks:
            for method in cfg.methods:
                preset = METHOD_DEFAULTS[method]
                for variant in cfg.variants:
                    run_cfg = replace(
                        cfg.base,
                        task=task,
                        method=method,
                        variant=variant,
                        init_seed=seed,
                        data_seed=seed if cfg.data_seed is None else cfg.data_seed,
                        lr=preset["lr"] if cfg.lr is None else cfg.lr,
                        batch_size=preset["batch_size"] if cfg.batch_size is None else cfg.batch_size,
                    )
                    label = run_label(method, variant)
                    runs.append(
                        PlannedRun(
                            task, variant, seed, run_dir_for(cfg.out, task, label, seed), run_cfg, method
                        )
                    )
    return runs


def with_defaults(old: dict[str, Any]) -> dict[str, Any]:
    """A stored run config with fields added since it was written filled with their defaults, so
    folders from before a new option existed still resume (and pool in the report)."""
    defaults = to_dict(FinetuneConfig())
    return {**{k: v for k, v in defaults.items() if k not in old}, **old}


def _check_same_config(run: PlannedRun) -> None:
    path = run.run_dir / "config.json"
    if not path.is_file():
        return
    try:
        old = json.loads(path.read_text())
    except json.JSONDecodeError:
        return
    old = with_defaults({RENAMED_FLAGS.get(k, k): v for k, v in old.items()})
    diff = config_diff(old, to_dict(run.cfg), ignore=frozenset({"save_model"}))
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


def _duration(seconds: float) -> str:
    """``"1h02m"``, ``"3m05s"`` or ``"12s"``."""
    seconds = round(seconds)
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}h{minutes:02d}m" if hours else (f"{minutes}m{secs:02d}s" if minutes else f"{secs}s")


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
        tag = f"[{i}/{len(runs)}] {run.task} {run.label} seed {run.seed}"
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
                        "method": run.method,
                        "label": run.label,
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
        done = len(outcome.ran) + len(outcome.failed)
        left = len(pending) - done
        eta = (time.time() - t0) / done * left
        say(
            f"{tag}: {result['primary_metric']} {result['primary']:.4f} ({time.time() - t_run:.1f} s; "
            f"{left} to go, ETA {_duration(eta)})"
        )
    outcome.wall_time_s = time.time() - t0
    return outcome


#: FinetuneConfig fields a sweep sets per run (from --task/--variants/--seeds), not as flags.
PER_RUN_FIELDS = ("task", "variant", "init_seed", "data_seed")
#: Old flag spellings -> the FinetuneConfig field that replaced them.
RENAMED_FLAGS = {"attn_base": "attn_implementation"}
#: The sweep's own options (every other flag is a FinetuneConfig field).
SWEEP_OPTIONS = (
    "task",
    "methods",
    "variants",
    "seeds",
    "out",
    "data_seed",
    "retry_failed",
    "report",
    "dry_run",
)


def finetune_fields(flags: dict[str, Any]) -> tuple[dict[str, Any], set[str]]:
    """``--name value`` flags -> typed FinetuneConfig fields, checked against the dataclass.

    Every field of :class:`FinetuneConfig` (but the per-run ones) is a flag, so a field added
    to the dataclass is a flag at once; a misspelt name is one error line with the closest
    spellings, before anything runs. Returns the fields and the names the user gave.
    """
    import dataclasses
    import typing

    from skipxl.engine.flags import coerce, unknown_flag

    hints = typing.get_type_hints(FinetuneConfig)
    valid = [f.name for f in dataclasses.fields(FinetuneConfig) if f.name not in PER_RUN_FIELDS]
    out: dict[str, Any] = {}
    for name, value in flags.items():
        if name in RENAMED_FLAGS:
            new = RENAMED_FLAGS[name]
            print(f"warning: --{name} is deprecated; use --{new}", file=sys.stderr)
            if new in flags:
                raise SkipxlError(f"--{name} and --{new} are the same option; pass only --{new}")
            name = new
        if name not in valid:
            raise unknown_flag(name, [*valid, *SWEEP_OPTIONS], "recipes/glue.py")
        out[name] = coerce(name, value, hints[name])
    return out, set(out)


def glue_help(prog: str = "glue.py") -> str:
    """``--help`` of ``recipes/glue.py``: the sweep's options and every FinetuneConfig field."""
    import dataclasses
    import inspect
    import typing

    from skipxl.engine.flags import doc_entries, type_name

    hints = typing.get_type_hints(FinetuneConfig)
    docs = doc_entries(FinetuneConfig.__doc__)
    lines = [f"usage: {prog} [--FLAG VALUE ...]   |   {prog} report SWEEP_DIR", "", "sweep:"]
    for name, param in inspect.signature(main).parameters.items():
        if param.kind is inspect.Parameter.VAR_KEYWORD or name == "local_rank":
            continue
        lines.append(f"  --{name:<22} (default: {param.default})")
    lines += ["", "every run (FinetuneConfig):"]
    for f in dataclasses.fields(FinetuneConfig):
        if f.name in PER_RUN_FIELDS:
            continue
        head = f"  --{f.name} {type_name(hints[f.name]).upper()}"
        lines.append(f"{head:<36} (default: {f.default}) {docs.get(f.name, '')}".rstrip())
    lines += [
        "",
        "--attn_base: deprecated spelling of --attn_implementation; --deepspeed_config F = --ds_config F.",
    ]
    return "\n".join(lines)


def resolve_sweep(
    task: Any = "mrpc",
    methods: Any = "full",
    variants: Any = "baseline,cross_head",
    seeds: Any = "0-4",
    out: str = "runs/glue",
    data_seed: int | None = None,
    retry_failed: bool = True,
    **flags: Any,
) -> tuple[SweepConfig, dict[str, Any], int, int]:
    """Flags -> the validated :class:`SweepConfig`, its DeepSpeed JSON, micro-batch and accumulation.

    Everything that can be checked without a model is checked here (flags, field values, GLUE
    files, the DeepSpeed config and its batch arithmetic), so a mistake costs no training.
    """
    import os

    from skipxl.engine.ds_config import (
        check_supported,
        ds_config_for,
        load_ds_config,
        reconcile,
        resolve_ds_config_path,
        zero_stage_of,
    )
    from skipxl.engine.flags import coerce
    from skipxl.engine.recipe import ds_config_flag
    from skipxl.glue.finetune import resolve_ds_name
    from skipxl.glue.model import check_available

    ds_name = ds_config_flag(flags.pop("ds_config", None), flags)
    if ds_name is not None:
        flags["ds_config"] = ds_name
    fields, explicit = finetune_fields(flags)
    specs = parse_tasks(task if isinstance(task, str) else [str(t) for t in task])
    base = FinetuneConfig(task=specs[0].name, **fields)
    if base.data_source == "local":  # fail before any model is loaded when a file is missing
        root = resolve_glue_dir(base.glue_dir)
        for spec in specs:
            for split in spec.splits:
                task_file(root, spec, split)
    check_available(base.model)  # a hub name offline fails now, not after 50 s of retries
    # The Hugging Face convention for the DeepSpeed JSON: its explicit values stand, "auto" is filled.
    ds_path = resolve_ds_name(base.ds_config)
    ds_json = load_ds_config(ds_path)
    source = str(resolve_ds_config_path(ds_path))
    check_supported(
        ds_json,
        source,
        {
            "optimizer": "--lr, --adam_eps, --weight_decay",
            "scheduler": "--warmup_ratio (linear warm-up, decay)",
        },
    )
    names = {"global_batch": "batch_size", "clip": "grad_clip"}
    current = {
        "global_batch": base.batch_size,
        "micro_batch": base.micro_batch,
        "grad_accum": base.grad_accum,
    }
    current["clip"] = base.grad_clip
    merged = reconcile(
        ds_json, current, {k for k, v in names.items() if v in explicit} | explicit, source, flag_names=names
    )
    base = replace(
        base,
        batch_size=merged["global_batch"],
        micro_batch=merged["micro_batch"],
        grad_accum=merged["grad_accum"],
        grad_clip=merged["clip"],
    )
    # lr / batch size: the user's (flag or DeepSpeed JSON) for every method, else each method's own
    json_batch = merged["global_batch"] != current["global_batch"]
    cfg = SweepConfig(
        tasks=tuple(s.name for s in specs),
        methods=parse_methods(methods),
        variants=parse_variants(variants),
        seeds=parse_seeds(seeds),
        out=coerce("out", out, str),
        base=base,
        data_seed=coerce("data_seed", data_seed, int | None),
        retry_failed=coerce("retry_failed", retry_failed, bool),
        lr=base.lr if "lr" in explicit else None,
        batch_size=base.batch_size if "batch_size" in explicit or json_batch else None,
    )
    world = int(os.environ.get("WORLD_SIZE", "1"))
    train_view = _TrainView(base.batch_size, base.micro_batch, base.grad_accum, ds_path, base.grad_clip)
    ds, micro, accum = ds_config_for(train_view, world)
    if base.save_model and zero_stage_of(ds) == 3:
        raise SkipxlError(
            "--save_model with ZeRO stage 3 is not supported (the weights are partitioned); "
            "use a stage 0-2 --ds_config"
        )
    return cfg, ds, micro, accum


@dataclass(frozen=True)
class _TrainView:
    """The batch/clipping fields :func:`~skipxl.engine.ds_config.ds_config_for` reads, GLUE-named."""

    global_batch: int
    micro_batch: int | None
    grad_accum: int | None
    ds_config: str
    clip: float


def main(
    task: Any = "mrpc",
    methods: Any = "full",
    variants: Any = "baseline,cross_head",
    seeds: Any = "0-4",
    out: str = "runs/glue",
    data_seed: int | None = None,
    retry_failed: bool = True,
    report: bool = True,
    dry_run: bool = False,
    local_rank: int | None = None,
    **flags: Any,
) -> None:
    """Seed sweep, then report (rank 0); the body of ``recipes/glue.py``.

    ``deepspeed recipes/glue.py --task mrpc --variants baseline,cross_head --seeds 0-9 --model NAME``
    ``python recipes/glue.py --task mrpc,rte --methods full,spartan,adapter_houlsby,lora --variants baseline``

    ``lr`` / ``batch_size`` default to each method's recommended values (METHOD_DEFAULTS).

    Every :class:`~skipxl.glue.finetune.FinetuneConfig` field is a flag (``--lr``,
    ``--batch_size``, ``--attn_implementation``, ``--save_model``, ...); all of them are
    checked before the first run starts. ``--dry_run`` prints the resolved sweep and the
    DeepSpeed JSON and stops. ``local_rank`` is accepted (and ignored: LOCAL_RANK is read from
    the environment) because the ``deepspeed`` launcher appends ``--local_rank=N``.
    """
    from skipxl.engine.flags import coerce

    del local_rank
    cfg, ds, micro, accum = resolve_sweep(
        task, methods, variants, seeds, out, data_seed=data_seed, retry_failed=retry_failed, **flags
    )
    if coerce("dry_run", dry_run, bool):
        runs = plan_runs(cfg)
        plan = {"sweep": to_dict(cfg), "runs": len(runs), "micro_batch": micro, "grad_accum": accum}
        print(json.dumps({**plan, "ds_config": ds}, indent=2, sort_keys=True))
        return
    outcome = run_sweep(cfg)
    if _rank() == 0:
        print(
            f"sweep: {len(outcome.ran)} ran, {len(outcome.skipped)} skipped, {len(outcome.failed)} failed "
            f"in {outcome.wall_time_s:.1f} s -> {cfg.out}",
            flush=True,
        )
        if coerce("report", report, bool):
            from skipxl.glue.report import glue_report

            rep = glue_report(cfg.out)
            print(rep.markdown, flush=True)
            print(f"report: {rep.markdown_path} {rep.csv_path} {rep.plot_path or ''}", flush=True)
            if "spartan" in cfg.methods:
                from skipxl.glue.parents import parent_report

                md, png = parent_report(cfg.out)
                print(f"parent usage: {md} {png}", flush=True)
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
