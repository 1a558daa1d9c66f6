"""The attention context of a forward pass: how far back a segment looks and how positions count.

Transformer-XL trains and evaluates with different contexts (Dai et al. 2019, ``eval.py``):
e.g. WikiText-103 base trains with ``tgt_len = mem_len = 150`` and is scored with ``tgt_len 64,
mem_len 640, clamp_len 400, same_length``. A :class:`Context` is that setting as one validated
value; ``TransformerXL.forward(..., context=...)`` reads it (``None``: the training context of
the model config), so the model holds no mutable evaluation state. The engine's evaluation
config builds one (and so is validated by the same rules before a run starts).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from skipxl.errors import require


@dataclass(frozen=True)
class Context:
    """Segment length, memory length, extended context, distance clamp and ``same_length``.

    Attributes:
        tgt_len: segment length (tokens scored per forward pass; the forward reads the input's
            length, the evaluation cuts segments of this length).
        mem_len: memory positions kept per layer (0 = no memory).
        ext_len: extended context: the last ``ext_len`` inputs are not moved into memory.
        clamp_len: relative distances beyond this use the embedding of ``clamp_len``; -1 = off.
        same_length: every query attends to the same number of keys (needs ``mem_len > 0``).
    """

    tgt_len: int
    mem_len: int
    ext_len: int = 0
    clamp_len: int = -1
    same_length: bool = False

    def __post_init__(self) -> None:
        require(self.tgt_len >= 1, f"tgt_len must be >= 1, got {self.tgt_len}")
        require(self.mem_len >= 0, f"mem_len must be >= 0, got {self.mem_len}")
        require(self.ext_len >= 0, f"ext_len must be >= 0, got {self.ext_len}")
        require(
            self.clamp_len == -1 or self.clamp_len > 0,
            f"clamp_len must be -1 (no clamping) or a positive int, got {self.clamp_len}",
        )
        require(
            not (self.same_length and self.mem_len == 0),
            "same_length=True with mem_len=0 masks every key; use same_length=False or mem_len > 0",
        )

    @classmethod
    def of(cls, cfg: Any) -> Context:
        """The context fields of a config (a ``ModelConfig`` for the training context)."""
        return cls(cfg.tgt_len, cfg.mem_len, cfg.ext_len, cfg.clamp_len, cfg.same_length)
