"""The model variants as strings: the paper's four (arXiv 2311.08123) and Dynamic Layer Tying.

==============  =====================  =====================  =====================
variant         Skip-Retain (phase 1)  stochastic cross-head  Dynamic Layer Tying
==============  =====================  =====================  =====================
baseline        no                     no                     no  (Transformer-XL)
skip_retain     yes                    no                     no
cross_head      no                     yes                    no
combined        yes                    yes                    no  ("Skip Cross-head Transformer-XL")
dlt             no                     no                     yes (arXiv 2401.12819)
skip_retain_dlt yes                    no                     yes
cross_head_dlt  no                     yes                    yes
combined_dlt    yes                    yes                    yes
==============  =====================  =====================  =====================

A variant only decides which of ``ModelConfig.skip`` / ``ModelConfig.cross_head`` /
``ModelConfig.tying`` are set; their settings come from the preset (if it sets them) or the
defaults of the released code (linear pskip schedule with p = 0.5 and protected end layers;
cross-head permutation mode with beta = 0.1; tying with shared gradients, copy on untie,
real ties at the start), then from the recipe flags (``--pskip``, ``--beta``, ``--tying_*``).
With ``--mem_len 0`` any of them is a memory-less Transformer LM.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

from skipxl.errors import SkipxlError

VARIANTS: dict[str, tuple[bool, bool, bool]] = {
    "baseline": (False, False, False),
    "skip_retain": (True, False, False),
    "cross_head": (False, True, False),
    "combined": (True, True, False),
    "dlt": (False, False, True),
    "skip_retain_dlt": (True, False, True),
    "cross_head_dlt": (False, True, True),
    "combined_dlt": (True, True, True),
}
"""variant -> (uses Skip-Retain, uses cross-head attention, uses Dynamic Layer Tying)."""


def check_variant(variant: Any) -> str:
    if not isinstance(variant, str) or variant not in VARIANTS:
        raise SkipxlError(f"unknown --variant {variant!r}; choose one of {', '.join(VARIANTS)}")
    return variant


def uses_skip(variant: str) -> bool:
    return VARIANTS[check_variant(variant)][0]


def uses_cross_head(variant: str) -> bool:
    return VARIANTS[check_variant(variant)][1]


def uses_dlt(variant: str) -> bool:
    return VARIANTS[check_variant(variant)][2]


def _parse_pskip(pskip: Any) -> float | tuple[float, ...]:
    """A number (the schedule's ``p``) or a per-layer list; strings like "0.1,0.2" too."""
    if isinstance(pskip, str):
        parts = [s for s in pskip.replace("[", "").replace("]", "").split(",") if s.strip()]
        try:
            values = [float(s) for s in parts]
        except ValueError:
            raise SkipxlError(
                f"--pskip {pskip!r} is not a number or a comma-separated list of numbers"
            ) from None
        return values[0] if len(values) == 1 and "," not in pskip else tuple(values)
    if isinstance(pskip, bool):
        raise SkipxlError(f"--pskip must be a number or a per-layer list, got {pskip!r}")
    if isinstance(pskip, (int, float)):
        return float(pskip)
    if isinstance(pskip, Sequence):
        try:
            return tuple(float(v) for v in pskip)
        except (TypeError, ValueError):
            raise SkipxlError(f"--pskip list {pskip!r} must hold numbers only") from None
    raise SkipxlError(f"--pskip must be a number or a per-layer list, got {pskip!r}")


def apply_variant(
    model_cfg: Any,
    variant: str,
    *,
    pskip: Any = None,
    beta: float | None = None,
    skip_options: dict[str, Any] | None = None,
    cross_head_options: dict[str, Any] | None = None,
    tying_options: dict[str, Any] | None = None,
) -> Any:
    """Return ``model_cfg`` with ``skip`` / ``cross_head`` / ``tying`` set as ``variant`` says.

    Args:
        pskip: a number sets the schedule's ``p`` (linear slope or constant value); a list sets
            an explicit per-layer schedule (``schedule="list"``).
        beta: cross-head mixing probability.
        skip_options / cross_head_options: further field overrides (e.g. ``retain_positions``,
            ``skipped_grad``, ``mode``).
        tying_options: :class:`~skipxl.model.tying.TyingConfig` fields (``gradient``, ``untie``,
            ``start``) for the DLT variants.
    """
    from skipxl.model.config import SkipRetainConfig
    from skipxl.model.heads import CrossHeadConfig
    from skipxl.model.tying import TyingConfig

    skip_on, cross_on, dlt_on = VARIANTS[check_variant(variant)]
    if tying_options and not dlt_on:
        raise SkipxlError(f"tying options {sorted(tying_options)} need a DLT variant (e.g. --variant dlt)")
    if pskip is not None and not skip_on:
        raise SkipxlError(
            f"--pskip applies to Skip-Retain; use --variant skip_retain or combined (not {variant})"
        )
    if skip_options and not skip_on:
        raise SkipxlError(
            f"Skip-Retain options {sorted(skip_options)} need --variant skip_retain or combined"
        )
    if beta is not None and not cross_on:
        raise SkipxlError(
            f"--beta applies to cross-head attention; use --variant cross_head or combined (not {variant})"
        )
    if cross_head_options and not cross_on:
        raise SkipxlError(
            f"cross-head options {sorted(cross_head_options)} need --variant cross_head or combined"
        )

    skip = None
    if skip_on:
        skip = model_cfg.skip if model_cfg.skip is not None else SkipRetainConfig()
        fields: dict[str, Any] = dict(skip_options or {})
        if pskip is not None:
            value = _parse_pskip(pskip)
            if isinstance(value, tuple):
                fields.update(schedule="list", probs=value)
            else:
                fields.update(p=value, probs=())
                if skip.schedule == "list":
                    fields["schedule"] = "constant"
        skip = dataclasses.replace(skip, **fields) if fields else skip
    cross = None
    if cross_on:
        cross = model_cfg.cross_head if model_cfg.cross_head is not None else CrossHeadConfig()
        fields = dict(cross_head_options or {})
        if beta is not None:
            if isinstance(beta, bool) or not isinstance(beta, (int, float)):
                raise SkipxlError(f"--beta must be a number in [0, 1], got {beta!r}")
            fields["beta"] = float(beta)
        cross = dataclasses.replace(cross, **fields) if fields else cross
    tying = None
    if dlt_on:
        tying = model_cfg.tying if model_cfg.tying is not None else TyingConfig()
        tying = dataclasses.replace(tying, **tying_options) if tying_options else tying
    return dataclasses.replace(model_cfg, skip=skip, cross_head=cross, tying=tying)
