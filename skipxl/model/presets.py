"""Named model configurations, as functions so every value can be overridden.

``get_preset("wt103_base", n_token=corpus.vocab.size, mem_len=300)``. Presets take
``n_token`` where the vocabulary decides it (defaults are the standard vocab sizes:
WikiText-103 267,735; WikiText-2 33,278; enwik8 204; text8 27).

Sources: Transformer-XL's released scripts (Dai et al. 2019, ``run_wt103_base.sh``,
``run_wt103_large.sh``, ``run_enwik8_*.sh``, ``run_text8_*.sh``) and the Skip-Retain
paper's released WikiText-103 script (arXiv 2311.08123, ``run_wt15_phase_1.sh``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

from skipxl.errors import SkipxlError
from skipxl.model.config import ModelConfig

WT103_CUTOFFS = (20000, 40000, 200000)


def _build(base: dict[str, Any], overrides: dict[str, Any]) -> ModelConfig:
    names = {f.name for f in dataclasses.fields(ModelConfig)}
    unknown = sorted(set(overrides) - names)
    if unknown:
        raise SkipxlError(f"unknown ModelConfig field(s) {unknown}; valid fields are {sorted(names)}")
    return ModelConfig(**{**base, **overrides})


def tiny(n_token: int = 256, **overrides: Any) -> ModelConfig:
    """4 layers, d_model 64: unit tests and the quickstart (trains in seconds on a CPU)."""
    base = dict(
        n_token=n_token, n_layer=4, n_head=4, d_model=64, d_head=16, d_inner=128,
        dropout=0.1, dropatt=0.0, tgt_len=16, mem_len=16,
    )  # fmt: skip
    return _build(base, overrides)


def wt2_small(n_token: int = 33278, **overrides: Any) -> ModelConfig:
    """A small word-level model that trains on WikiText-2 on a CPU in minutes.

    Adaptive input/softmax with cutoffs 2000/10000 (the 33,278-word vocab's head covers
    ~90% of tokens), div_val 2, tied weights and projections.
    """
    base = dict(
        n_token=n_token, n_layer=4, n_head=4, d_model=128, d_head=32, d_inner=512,
        dropout=0.1, dropatt=0.0, tgt_len=64, mem_len=64,
        cutoffs=(2000, 10000), div_val=2, tie_weight=True, tie_projs=True,
    )  # fmt: skip
    return _build(base, overrides)


def wt103_base(n_token: int = 267735, **overrides: Any) -> ModelConfig:
    """Transformer-XL base on WikiText-103 (151M parameters)."""
    base = dict(
        n_token=n_token, n_layer=16, n_head=10, d_model=410, d_head=41, d_inner=2100,
        dropout=0.1, dropatt=0.0, tgt_len=150, mem_len=150,
        cutoffs=WT103_CUTOFFS, div_val=1, tie_weight=True, tie_projs=True,
    )  # fmt: skip
    return _build(base, overrides)


def wt103_large(n_token: int = 267735, **overrides: Any) -> ModelConfig:
    """Transformer-XL large on WikiText-103 (285M parameters as built by the released
    script's settings; the paper quotes 257M)."""
    base = dict(
        n_token=n_token, n_layer=18, n_head=16, d_model=1024, d_head=64, d_inner=4096,
        dropout=0.2, dropatt=0.2, tgt_len=384, mem_len=384,
        cutoffs=WT103_CUTOFFS, div_val=4, tie_weight=True, tie_projs=True,
    )  # fmt: skip
    return _build(base, overrides)


def wt103_sch(n_token: int = 267735, **overrides: Any) -> ModelConfig:
    """The Skip-Retain paper's released WikiText-103 model (122M parameters).

    15 layers, d_model 624, 16 heads x 39, d_inner 2496, adaptive cutoffs
    20000/40000/200000 with div_val 4 and *untied* input/output, tgt = mem = 512,
    dropout 0.15, dropatt 0.0 (``run_wt15_phase_1.sh``). Their eval protocol
    (tgt 128, mem 640, clamp 800, same_length) is the run's ``EvalConfig`` (a ``Context`` per forward).
    """
    base = dict(
        n_token=n_token, n_layer=15, n_head=16, d_model=624, d_head=39, d_inner=2496,
        dropout=0.15, dropatt=0.0, tgt_len=512, mem_len=512,
        cutoffs=WT103_CUTOFFS, div_val=4, tie_weight=False, tie_projs=False,
    )  # fmt: skip
    return _build(base, overrides)


def enwik8_base(n_token: int = 204, **overrides: Any) -> ModelConfig:
    """Transformer-XL 12-layer on enwik8 (41M parameters), plain softmax over bytes."""
    base = dict(
        n_token=n_token, n_layer=12, n_head=8, d_model=512, d_head=64, d_inner=2048,
        dropout=0.1, dropatt=0.0, tgt_len=512, mem_len=512,
    )  # fmt: skip
    return _build(base, overrides)


def enwik8_large(n_token: int = 204, **overrides: Any) -> ModelConfig:
    """Transformer-XL 24-layer on enwik8 (277M parameters)."""
    base = dict(
        n_token=n_token, n_layer=24, n_head=8, d_model=1024, d_head=128, d_inner=3072,
        dropout=0.15, dropatt=0.15, tgt_len=768, mem_len=768,
    )  # fmt: skip
    return _build(base, overrides)


def text8_base(n_token: int = 27, **overrides: Any) -> ModelConfig:
    """The enwik8 base shape on text8's 27 characters."""
    return enwik8_base(n_token=n_token, **overrides)


def text8_large(n_token: int = 27, **overrides: Any) -> ModelConfig:
    """The enwik8 large shape on text8's 27 characters."""
    return enwik8_large(n_token=n_token, **overrides)


PRESETS: dict[str, Callable[..., ModelConfig]] = {
    "tiny": tiny,
    "wt2_small": wt2_small,
    "wt103_base": wt103_base,
    "wt103_large": wt103_large,
    "wt103_sch": wt103_sch,
    "enwik8_base": enwik8_base,
    "enwik8_large": enwik8_large,
    "text8_base": text8_base,
    "text8_large": text8_large,
}


def get_preset(name: str, **overrides: Any) -> ModelConfig:
    """The preset ``name`` with ``overrides`` (any :class:`ModelConfig` field, incl. n_token)."""
    if name not in PRESETS:
        raise SkipxlError(f"unknown model preset {name!r}; choose one of {sorted(PRESETS)}")
    return PRESETS[name](**overrides)
