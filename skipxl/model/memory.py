"""The recurrent memory of a Transformer-XL, with the absolute position of every slot.

Transformer-XL (Dai et al. 2019, Sec. 3.2) caches, per layer, the layer's *inputs* for
the last ``mem_len`` steps and lets the next segment attend to them. Skip-Retain
(arXiv 2311.08123) leaves a skipped layer's memory untouched, so different layers end up
holding different (older) steps; we therefore keep, next to each layer's states, the
absolute token position of each slot, so attention can use true distances.

Positions live on the CPU (small int64 vectors): deciding which attention path to use
and building the gather index never waits for the accelerator.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from skipxl.errors import require


@dataclass(frozen=True)
class Memory:
    """Per-layer detached layer inputs and their absolute positions.

    Attributes:
        states: ``n_layer`` tensors ``[B, M_l, d_model]`` (batch-major, detached).
        positions: ``n_layer`` int64 CPU tensors ``[M_l]`` (ascending absolute positions).
        next_position: absolute position of the next segment's first token.
    """

    states: tuple[Tensor, ...]
    positions: tuple[Tensor, ...]
    next_position: int = 0

    def __post_init__(self) -> None:
        object.__setattr__(self, "states", tuple(self.states))
        object.__setattr__(self, "positions", tuple(self.positions))
        require(
            len(self.states) == len(self.positions),
            f"Memory has {len(self.states)} state tensors but {len(self.positions)} position "
            "vectors; build it with Memory.empty or from a model output",
        )

    @classmethod
    def empty(
        cls,
        n_layer: int,
        batch_size: int,
        d_model: int,
        device: torch.device | str | None = None,
        dtype: torch.dtype = torch.float32,
        next_position: int = 0,
    ) -> Memory:
        """A memory with no slots (the start of a stream)."""
        states = tuple(
            torch.zeros(batch_size, 0, d_model, device=device, dtype=dtype) for _ in range(n_layer)
        )  # n_layer x [B, 0, D]
        positions = tuple(torch.zeros(0, dtype=torch.long) for _ in range(n_layer))  # [0]
        return cls(states, positions, next_position)

    @property
    def n_layer(self) -> int:
        return len(self.states)

    def mlen(self, layer: int) -> int:
        """Number of memory slots of ``layer``."""
        return int(self.states[layer].size(1))

    def is_contiguous(self, layer: int) -> bool:
        """True when ``layer``'s slots are exactly the steps just before ``next_position``."""
        pos = self.positions[layer]
        m = pos.numel()
        if m == 0:
            return True
        expected = torch.arange(self.next_position - m, self.next_position, dtype=pos.dtype)
        return bool(torch.equal(pos, expected))

    def position_rows(
        self, tgt_len: int, skip: Sequence[bool], retain_contiguous: bool
    ) -> tuple[list[int], list[bool]]:
        """Per layer ``(rlens, gather)`` for a segment of ``tgt_len`` steps after this memory.

        A skipped layer, any layer when ``retain_contiguous``, or a layer whose slots are
        contiguous with the segment reads ``K = M + T`` position rows by rel-shift
        (``gather`` False); a retained memory reads rows up to its oldest slot's true
        distance through a gather (``gather`` True).
        """
        start = int(self.next_position)
        rlens: list[int] = []
        gather: list[bool] = []
        for layer in range(self.n_layer):
            if skip[layer] or retain_contiguous or self.is_contiguous(layer):
                rlens.append(self.mlen(layer) + tgt_len)
                gather.append(False)
            else:
                rlens.append(start + tgt_len - int(self.positions[layer][0]))
                gather.append(True)
        return rlens, gather

    def ages(self) -> list[Tensor]:
        """Per layer ``[M_l]``: how many steps before the next segment each slot was made
        (``next_position - position``; 1 for the newest slot of a fresh memory)."""
        return [self.next_position - p for p in self.positions]

    def staleness(self) -> list[int]:
        """Per layer: steps between its newest slot and the next segment (0 = fresh,
        ``k * tgt_len`` after ``k`` consecutive skips; 0 for an empty memory)."""
        return [0 if p.numel() == 0 else int(self.next_position - 1 - int(p[-1])) for p in self.positions]

    def nbytes(self) -> int:
        """Bytes held by the states (positions are negligible and on the CPU)."""
        return sum(s.numel() * s.element_size() for s in self.states)

    def detach(self) -> Memory:
        return Memory(tuple(s.detach() for s in self.states), self.positions, self.next_position)

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> Memory:
        """Move the states (positions stay on the CPU)."""
        return Memory(
            tuple(s.to(device=device, dtype=dtype) for s in self.states),
            self.positions,
            self.next_position,
        )
