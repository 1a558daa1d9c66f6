"""Run-folder bookkeeping for GLUE fine-tuning runs (independent of the Transformer-XL engine).

A run folder holds::

    config.json    the FinetuneConfig that trained it (JSON round-trip with skipxl.config_io)
    meta.json      git commit (+ dirty flag), pip freeze, seeds, world size, versions, ds config
    metrics.jsonl  one JSON object per logged train step / evaluation
    tb/            TensorBoard events (same scalars)
    result.json    final metrics; written last and atomically: it is the completion marker
    failed.json    written instead of result.json when the run failed (diverged or crashed)

Only rank 0 writes. A folder without ``result.json``/``failed.json`` is an interrupted run
and is wiped before it is run again, so a killed run restarts cleanly.
"""

from __future__ import annotations

import json
import math
import os
import platform
import shutil
import sys
import time
from pathlib import Path
from typing import Any

from skipxl.config_io import dumps, save_json
from skipxl.provenance import cpu_info, git_info, installed_packages

RESULT_FILE = "result.json"
FAILED_FILE = "failed.json"


def versions() -> dict[str, str | None]:
    """Versions of the libraries that decide the numbers."""
    out: dict[str, str | None] = {"python": platform.python_version()}
    for name in ("torch", "transformers", "deepspeed", "numpy", "sklearn", "scipy"):
        mod = sys.modules.get(name)
        out[name] = getattr(mod, "__version__", None) if mod is not None else None
    return out


def build_meta(**fields: Any) -> dict[str, Any]:
    """meta.json content: git, pip freeze, versions, host, argv, plus the caller's fields."""
    return {
        "git": git_info(),
        "pip_freeze": installed_packages(),
        "cpu": cpu_info(),
        "versions": versions(),
        "host": platform.node(),
        "argv": sys.argv,
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "env": {
            k: os.environ[k]
            for k in ("DS_ACCELERATOR", "OMP_NUM_THREADS", "CUDA_VISIBLE_DEVICES")
            if k in os.environ
        },
        **fields,
    }


def config_diff(a: dict[str, Any], b: dict[str, Any], ignore: frozenset[str] = frozenset()) -> list[str]:
    """Sorted fields (outside ``ignore``) whose values differ between two run configs."""
    return sorted(k for k in (set(a) | set(b)) - ignore if a.get(k) != b.get(k))


def is_finished(run_dir: Path, *, include_failed: bool = True) -> bool:
    """True when the run folder holds a readable completion marker."""
    for name in (RESULT_FILE, FAILED_FILE) if include_failed else (RESULT_FILE,):
        path = Path(run_dir) / name
        if path.is_file():
            try:
                json.loads(path.read_text())
            except (OSError, json.JSONDecodeError):
                continue
            return True
    return False


def reset_run_dir(run_dir: Path) -> None:
    """Wipe an interrupted run folder so the run starts from scratch."""
    run_dir = Path(run_dir)
    if run_dir.exists():
        shutil.rmtree(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)


def write_marker(run_dir: Path, name: str, payload: dict[str, Any]) -> None:
    """Write result.json / failed.json atomically (temporary file, then rename)."""
    save_json(payload, Path(run_dir) / name)


class RunLogger:
    """metrics.jsonl + TensorBoard scalars; a no-op on ranks other than 0."""

    def __init__(self, run_dir: Path, enabled: bool = True) -> None:
        self.enabled = enabled
        self.run_dir = Path(run_dir)
        self._fh = None
        self._tb = None
        if enabled:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            self._fh = (self.run_dir / "metrics.jsonl").open("a", encoding="utf-8")
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(log_dir=str(self.run_dir / "tb"))

    def log(self, step: int, split: str, values: dict[str, float], **extra: Any) -> None:
        """One record: ``{"step", "split", **values, **extra}``; scalars go to TB as split/name."""
        if not self.enabled:
            return
        record = {"step": step, "split": split, **{k: _json_float(v) for k, v in values.items()}, **extra}
        assert self._fh is not None and self._tb is not None
        self._fh.write(dumps(record, sort_keys=True) + "\n")
        self._fh.flush()
        for key, value in values.items():
            if isinstance(value, (int, float)) and math.isfinite(float(value)):
                self._tb.add_scalar(f"{split}/{key}", float(value), step)

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None
        if self._tb is not None:
            self._tb.flush()
            self._tb.close()
            self._tb = None


def _json_float(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value
