"""DeepSpeed configuration: find a JSON in ``ds_configs/``, fill in the batch arithmetic.

The JSON files under ``ds_configs/`` say *how* to train (ZeRO stage, precision, offload,
gradient clipping); the recipe says *how much* (micro-batch, accumulation). This module
joins the two and checks the one identity DeepSpeed insists on::

    global_batch = micro_batch x grad_accum x world_size

so that a mistake is reported as one sentence before any process group is created.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

from skipxl.errors import SkipxlError

#: The folder of shipped configs (repository root / ds_configs).
DS_CONFIG_DIR = Path(__file__).resolve().parents[2] / "ds_configs"


def available_configs() -> list[str]:
    """Names of the shipped configs (file stems under ``ds_configs/``)."""
    return sorted(p.stem for p in DS_CONFIG_DIR.glob("*.json"))


def resolve_ds_config_path(name_or_path: str | Path) -> Path:
    """Turn ``"zero2_bf16"`` or ``"path/to/x.json"`` into an existing file path."""
    candidate = Path(name_or_path)
    if candidate.suffix == ".json" and candidate.is_file():
        return candidate
    shipped = DS_CONFIG_DIR / f"{candidate.stem if candidate.suffix == '.json' else name_or_path}.json"
    if shipped.is_file():
        return shipped
    raise SkipxlError(
        f"DeepSpeed config {str(name_or_path)!r} not found; pass a JSON file path or one of "
        f"{available_configs()} (from {DS_CONFIG_DIR})"
    )


def load_ds_config(name_or_path: str | Path) -> dict[str, Any]:
    """Read a DeepSpeed JSON config, with a clear error when it is not valid JSON."""
    path = resolve_ds_config_path(name_or_path)
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise SkipxlError(f"DeepSpeed config {path} is not valid JSON ({exc}); fix the file") from exc
    if not isinstance(data, dict):
        raise SkipxlError(f"DeepSpeed config {path} must hold a JSON object")
    return data


def resolve_batch(
    global_batch: int, micro_batch: int | None, grad_accum: int | None, world_size: int
) -> tuple[int, int]:
    """Return ``(micro_batch, grad_accum)`` with ``micro x accum x world == global``.

    Either value may be ``None`` and is then derived; accumulation defaults to 1.
    """
    if global_batch <= 0 or world_size <= 0:
        raise SkipxlError(f"global batch ({global_batch}) and world size ({world_size}) must be positive")
    if grad_accum is not None and grad_accum <= 0:
        raise SkipxlError(f"grad_accum must be a positive integer, got {grad_accum}")
    if micro_batch is not None and micro_batch <= 0:
        raise SkipxlError(f"micro_batch must be a positive integer, got {micro_batch}")
    if micro_batch is None:
        accum = grad_accum or 1
        if global_batch % (accum * world_size):
            raise SkipxlError(
                f"global batch {global_batch} is not divisible by grad_accum {accum} x world size "
                f"{world_size}; choose a global batch that is a multiple of {accum * world_size}"
            )
        return global_batch // (accum * world_size), accum
    if grad_accum is None:
        if global_batch % (micro_batch * world_size):
            raise SkipxlError(
                f"global batch {global_batch} is not divisible by micro_batch {micro_batch} x world size "
                f"{world_size}; change --micro_batch or the global batch"
            )
        return micro_batch, global_batch // (micro_batch * world_size)
    if micro_batch * grad_accum * world_size != global_batch:
        raise SkipxlError(
            f"micro_batch {micro_batch} x grad_accum {grad_accum} x world size {world_size} = "
            f"{micro_batch * grad_accum * world_size}, but the global batch is {global_batch}; "
            "make the product equal the global batch (or leave one of them unset)"
        )
    return micro_batch, grad_accum


def build_ds_config(
    name_or_path: str | Path,
    *,
    micro_batch: int,
    grad_accum: int,
    world_size: int,
    overrides: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Load a config, fill the batch fields and apply ``overrides`` (shallow, per key)."""
    cfg = copy.deepcopy(load_ds_config(name_or_path))
    cfg["train_micro_batch_size_per_gpu"] = micro_batch
    cfg["gradient_accumulation_steps"] = grad_accum
    cfg["train_batch_size"] = micro_batch * grad_accum * world_size
    for key, value in (overrides or {}).items():
        cfg[key] = value
    if cfg.get("bf16", {}).get("enabled") and cfg.get("fp16", {}).get("enabled"):
        raise SkipxlError("DeepSpeed config enables both bf16 and fp16; enable at most one")
    return cfg


def precision_of(ds_config: dict[str, Any]) -> str:
    """``"bf16"``, ``"fp16"`` or ``"fp32"``, as the config asks."""
    if ds_config.get("bf16", {}).get("enabled"):
        return "bf16"
    if ds_config.get("fp16", {}).get("enabled"):
        return "fp16"
    return "fp32"


def zero_stage_of(ds_config: dict[str, Any]) -> int:
    """The ZeRO stage the config asks for (0 when absent)."""
    return int(ds_config.get("zero_optimization", {}).get("stage", 0))
