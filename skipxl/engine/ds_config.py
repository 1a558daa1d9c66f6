"""DeepSpeed configuration: find a JSON in ``ds_configs/``, fill in the batch arithmetic.

The JSON files under ``ds_configs/`` say *how* to train (ZeRO stage, precision, offload);
the recipe says *how much* (micro-batch, accumulation, clipping), through ``"auto"`` values
as in the Hugging Face Trainer's DeepSpeed integration: a user's explicit value stands, and
one that contradicts an explicit flag is an error naming both. This module joins the two and
checks the one identity DeepSpeed insists on::

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


#: DeepSpeed keys that skipxl's own flags also set: key -> the flag that sets it.
#: As with the Hugging Face Trainer's DeepSpeed integration, a value in the JSON stands, only
#: ``"auto"`` (or a missing key) is filled from the flag, and an explicit JSON value that differs
#: from an explicitly given flag is an error naming both.
FLAG_KEYS = {
    "train_micro_batch_size_per_gpu": "micro_batch",
    "gradient_accumulation_steps": "grad_accum",
    "train_batch_size": "global_batch",
    "gradient_clipping": "clip",
}
#: Blocks skipxl does not hand to DeepSpeed (it builds its own optimizer and schedule), with the
#: flags that configure them instead; a JSON holding one is refused rather than ignored.
UNSUPPORTED_BLOCKS = {
    "optimizer": "--lr, --adam_betas, --adam_eps, --weight_decay",
    "scheduler": "--scheduler cosine|constant, --warmup_steps, --eta_min",
}


def explicit_values(ds_config: dict[str, Any]) -> dict[str, Any]:
    """The :data:`FLAG_KEYS` the JSON sets to a value (not ``"auto"``), by flag name."""
    return {flag: ds_config[key] for key, flag in FLAG_KEYS.items() if ds_config.get(key, "auto") != "auto"}


def check_supported(ds_config: dict[str, Any], source: str, flags: dict[str, str] | None = None) -> None:
    """Refuse ``optimizer`` / ``scheduler`` blocks, naming the flags that do the same."""
    flags = {**UNSUPPORTED_BLOCKS, **(flags or {})}
    for block, replacement in flags.items():
        if block in ds_config:
            params = ds_config[block].get("params", {}) if isinstance(ds_config[block], dict) else {}
            kind = ds_config[block].get("type", "?") if isinstance(ds_config[block], dict) else "?"
            given = ", ".join(f"{k}={v}" for k, v in params.items())
            raise SkipxlError(
                f"DeepSpeed config {source} has a {block!r} block ({kind}{': ' + given if given else ''}), "
                f"which skipxl does not use (it builds its own {block}); remove the block and pass "
                f"{replacement} instead"
            )


def reconcile(
    ds_config: dict[str, Any],
    values: dict[str, Any],
    explicit: set[str] | frozenset[str],
    source: str,
    *,
    flag_names: dict[str, str] | None = None,
) -> dict[str, Any]:
    """Merge a DeepSpeed JSON's explicit batch/clipping values into the flag ``values``.

    ``values`` maps flag names of :data:`FLAG_KEYS` (``micro_batch``, ``grad_accum``,
    ``global_batch``, ``clip``) to the resolved settings, ``explicit`` names those the user
    typed. A JSON value replaces a default; it must equal an explicit flag. Returns the
    updated ``values``. ``flag_names`` renames flags in messages (GLUE's ``--batch_size``).
    """
    names = flag_names or {}
    out = dict(values)
    for flag, value in explicit_values(ds_config).items():
        if flag not in out:
            continue
        key = next(k for k, f in FLAG_KEYS.items() if f == flag)
        shown = names.get(flag, flag)
        if flag in explicit and out[flag] is not None and out[flag] != value:
            raise SkipxlError(
                f"{key} {value} in {source} conflicts with --{shown} {out[flag]}; drop one of them "
                f'(or set {key} to "auto" in the JSON)'
            )
        out[flag] = value
    return out


def build_ds_config(
    name_or_path: str | Path,
    *,
    micro_batch: int,
    grad_accum: int,
    world_size: int,
    clip: float | None = None,
    overrides: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Load a config and fill its ``"auto"`` (or missing) batch fields and clipping.

    A value the JSON sets explicitly stands, and must agree with the run's; a disagreement is
    an error naming both (:func:`reconcile` merges a JSON into the flags before this is
    called, so only a config built by hand can disagree). ``overrides`` fill further keys the
    same way (``{"gradient_clipping": 1.0}`` is ``clip=1.0``).
    """
    source = str(resolve_ds_config_path(name_or_path))
    cfg = copy.deepcopy(load_ds_config(name_or_path))
    check_supported(cfg, source)
    wanted: dict[str, Any] = {
        "train_micro_batch_size_per_gpu": micro_batch,
        "gradient_accumulation_steps": grad_accum,
        "train_batch_size": micro_batch * grad_accum * world_size,
    }
    if clip is not None:
        wanted["gradient_clipping"] = clip
    wanted.update(overrides or {})
    for key, value in wanted.items():
        if cfg.get(key, "auto") == "auto":
            cfg[key] = value
        elif cfg[key] != value:
            flag = FLAG_KEYS.get(key, key)
            raise SkipxlError(
                f"{key} {cfg[key]} in {source} conflicts with --{flag} {value}; drop one of them "
                f'(or set {key} to "auto" in the JSON)'
            )
    left = sorted(k for k, v in cfg.items() if v == "auto")
    if left:
        raise SkipxlError(
            f'DeepSpeed config {source} leaves {left} at "auto" and nothing fills them; set them'
        )
    if cfg.get("bf16", {}).get("enabled") and cfg.get("fp16", {}).get("enabled"):
        raise SkipxlError("DeepSpeed config enables both bf16 and fp16; enable at most one")
    return cfg


def ds_config_for(train: Any, world_size: int) -> tuple[dict[str, Any], int, int]:
    """The DeepSpeed JSON a run of ``train`` (a TrainConfig) uses: ``(json, micro_batch, grad_accum)``."""
    micro, accum = resolve_batch(train.global_batch, train.micro_batch, train.grad_accum, world_size)
    cfg = build_ds_config(
        train.ds_config, micro_batch=micro, grad_accum=accum, world_size=world_size, clip=train.clip
    )
    return cfg, micro, accum


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
