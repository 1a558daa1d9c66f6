"""The run folder: everything needed to tell what trained, how, and to reproduce it.

Layout (``RUN_DIR/``)::

    config.json      resolved RunConfig (model, data, train, eval, variant) + the DeepSpeed JSON
    ds_config.json   the DeepSpeed JSON actually used (pass it back with --ds_config)
    meta.json        git hash, pip freeze, torch/deepspeed versions, world size, seeds, command
    metrics.jsonl    one JSON object per line: {"step": ..., "train/loss": ..., ...}
    results.json     final valid/test metrics, parameter count, best validation, throughput
    tb/              TensorBoard events (rank 0)
    checkpoints/     DeepSpeed checkpoints, one folder per step, ``latest`` names the newest good one
    export/          plain fp32 state_dict + config.json (``skipxl export``)
    eval_*.json      results of ``skipxl eval``, named by split, checkpoint, protocol, batch limit
    heartbeats/      one file per rank of a multi-rank job (the watchdog's, skipxl.engine.watchdog)
"""

from __future__ import annotations

import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

from skipxl.config_io import load_json, save_json
from skipxl.errors import SkipxlError
from skipxl.provenance import cpu_info, git_info, installed_packages

CONFIG = "config.json"
DS_CONFIG = "ds_config.json"
META = "meta.json"
METRICS = "metrics.jsonl"
RESULTS = "results.json"
TB = "tb"
CHECKPOINTS = "checkpoints"
EXPORT = "export"


def _git_hash() -> str | None:
    """The commit, with ``-dirty`` when tracked files have local changes."""
    info = git_info()
    if info["commit"] is None:
        return None
    return info["commit"] + ("-dirty" if info["dirty"] else "")


def collect_meta(
    *, world_size: int, seeds: dict[str, Any], extra: dict[str, Any] | None = None
) -> dict[str, Any]:
    """Provenance of a run: code version, environment, world, seeds, command line."""
    import torch

    try:
        import deepspeed

        ds_version = deepspeed.__version__
    except Exception:  # pragma: no cover - deepspeed is a dependency
        ds_version = None
    meta = {
        "git_hash": _git_hash(),
        "command": [sys.executable, *sys.argv],
        "cwd": os.getcwd(),
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "hostname": platform.node(),
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "deepspeed": ds_version,
        "cuda": torch.version.cuda,
        "ds_accelerator": os.environ.get("DS_ACCELERATOR"),
        "world_size": world_size,
        "seeds": seeds,
        "pip_freeze": installed_packages(),
        "cpu": cpu_info(),
    }
    meta.update(extra or {})
    return meta


def check_run_dir(out_dir: Path, *, resume: bool) -> None:
    """Read-only checks, run by every rank before any collective (so all ranks fail alike)."""
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise SkipxlError(f"--out {out_dir} is a file, not a folder; choose a folder path")
    has_run = (out_dir / CONFIG).is_file()
    if resume and not has_run:
        raise SkipxlError(
            f"--resume was given but {out_dir} holds no run (no {CONFIG}); "
            "drop --resume to start a new run there"
        )
    # --resume of a run killed before its first checkpoint restarts it from step 0 (the trainer
    # says so); a damaged `latest` or checkpoint is the trainer's to fall back from.
    if not resume and has_run:
        raise SkipxlError(
            f"{out_dir} already holds a run; pass --resume to continue it or choose another --out folder"
        )
    if not resume and out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise SkipxlError(f"{out_dir} exists and is not an empty folder; choose a new --out folder")


def write_config(out_dir: Path, config: dict[str, Any]) -> None:
    save_json(config, Path(out_dir) / CONFIG)


def write_ds_config(out_dir: Path, ds_config: dict[str, Any]) -> None:
    """The DeepSpeed JSON the engine was built with, as a file ``--ds_config`` takes back."""
    save_json(ds_config, Path(out_dir) / DS_CONFIG)


def write_meta(out_dir: Path, meta: dict[str, Any]) -> None:
    """Write ``meta.json``; a resumed run appends its own record under ``resumes`` (with its world
    size and batch layout, its CPU, and ``resharded_from`` when it changed the world size)."""
    path = Path(out_dir) / META
    if path.is_file():
        old = load_json(path)
        keys = ("command", "time", "world_size", "micro_batch", "grad_accum", "resharded_from")
        keys += ("git_hash", "hostname", "cpu")
        old.setdefault("resumes", []).append({k: meta[k] for k in keys if k in meta})
        meta = old
    save_json(meta, path)


def read_config(run_dir: Path) -> dict[str, Any]:
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise SkipxlError(f"run folder {run_dir} does not exist; pass a folder created by a training run")
    return load_json(run_dir / CONFIG)


def read_metrics(run_dir: Path) -> list[dict[str, Any]]:
    """All rows of ``metrics.jsonl`` (a torn last line from a crash is ignored)."""
    import json

    path = Path(run_dir) / METRICS
    if not path.is_file():
        return []
    rows = []
    for line in path.read_bytes().decode("utf-8", errors="replace").splitlines():
        line = line.strip()
        if not line:
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return rows
