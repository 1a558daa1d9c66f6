"""Ordered language-model batches, sharded so that every stream meets its own memory.

Transformer-XL (Dai et al. 2019) trains on ``B`` parallel *streams*: the token sequence is
cut into ``B`` contiguous pieces (the tail that does not divide is dropped), and step
``k`` feeds segment ``k`` (``tgt_len`` tokens) of every stream. The memory carried from
step ``k`` to ``k + 1`` for batch row ``s`` is only meaningful if row ``s`` of the next
step continues the *same* stream - the recurrence (and the paper's Skip-Retain memory,
arXiv 2311.08123) relies on it.

The original splits a batch across gradient-accumulation chunks with ``batch_chunk``
and keeps one memory per chunk. Under data parallelism plus accumulation the same
invariant must hold per (rank, micro step): here the ``B`` global streams are assigned
rank-major then micro-step-major, so rank ``r``'s micro step ``a`` always gets streams
``[(r * A + a) * b, (r * A + a + 1) * b)`` with ``b = B / (W * A)``, every step. The
engine keeps one memory per (rank, micro step) and it always meets its own past.

Segments follow the original ``LMOrderedIterator.get_batch``: for start ``i``,
``seq_len = min(tgt_len, L - 1 - i)``, input ``stream[max(0, i - ext_len) : i + seq_len]``
and target ``stream[i + 1 : i + 1 + seq_len]`` (the next token). The last segment of an
epoch may be shorter; ``drop_last`` drops it (useful for training with fixed shapes).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from skipxl.errors import SkipxlError, require

MicroBatch = tuple[Tensor, Tensor]
"""(input [b, ext + T] int64, target [b, T] int64), batch-major."""

_STATE_VERSION = 1


@dataclass(frozen=True)
class BatchInfo:
    """Where the batch just yielded sits in the data.

    Attributes:
        step: global step index (0-based, counted across epochs and resumes).
        epoch: epoch of this batch (0-based).
        segment: segment index within the epoch.
        seq_len: number of target positions in this batch (``tgt_len`` except maybe the last).
        new_epoch: True on an epoch's first segment: the engine should reset the memory
            (the streams restart from their beginnings).
    """

    step: int
    epoch: int
    segment: int
    seq_len: int
    new_epoch: bool


class LMOrderedIterator:
    """Ordered LM batches for one data-parallel rank, split into micro steps.

    Args:
        tokens: 1-D token ids (numpy array/memmap or torch tensor), the whole split.
        global_batch: number of parallel streams over all ranks and micro steps (``B``).
        tgt_len: target length of a segment (``T``).
        ext_len: extra past tokens prepended to each input (original ``ext_len``; 0 usual).
        rank, world_size: this process's data-parallel rank and the number of ranks.
        micro_steps: gradient-accumulation micro steps per optimizer step (``A``).
        epochs: passes over the data; ``None`` iterates forever (training), restarting
            from the beginning of the streams and counting epochs.
        drop_last: skip each epoch's last segment when it is shorter than ``tgt_len``.
        pin_memory: return pinned CPU tensors (faster host-to-device copies).

    Iterating yields ``(step, micro_batches)`` with ``micro_batches`` a list of ``A``
    ``(input, target)`` int64 tensor pairs of ``b = B / (W * A)`` rows each; ``last`` then
    describes that batch (:class:`BatchInfo`).
    """

    def __init__(
        self,
        tokens: np.ndarray | Tensor,
        global_batch: int,
        tgt_len: int,
        ext_len: int = 0,
        *,
        rank: int = 0,
        world_size: int = 1,
        micro_steps: int = 1,
        epochs: int | None = 1,
        drop_last: bool = False,
        pin_memory: bool = False,
    ) -> None:
        if isinstance(tokens, Tensor):
            tokens = tokens.detach().cpu().numpy()
        tokens = np.asarray(tokens)
        require(tokens.ndim == 1, f"tokens must be 1-D, got shape {tuple(tokens.shape)}")
        require(global_batch >= 1, f"global_batch must be >= 1, got {global_batch}")
        require(tgt_len >= 1, f"tgt_len must be >= 1, got {tgt_len}")
        require(ext_len >= 0, f"ext_len must be >= 0, got {ext_len}")
        require(world_size >= 1 and micro_steps >= 1, "world_size and micro_steps must be >= 1")
        require(0 <= rank < world_size, f"rank {rank} is outside [0, world_size={world_size})")
        require(epochs is None or epochs >= 1, f"epochs must be >= 1 or None (forever), got {epochs}")
        shards = world_size * micro_steps
        require(
            global_batch % shards == 0,
            f"global_batch={global_batch} does not split over world_size={world_size} x "
            f"micro_steps={micro_steps} = {shards}; choose a global batch that is a multiple of {shards}",
        )
        self.global_batch = int(global_batch)
        self.tgt_len = int(tgt_len)
        self.ext_len = int(ext_len)
        self.rank = int(rank)
        self.world_size = int(world_size)
        self.micro_steps = int(micro_steps)
        self.local_batch = self.global_batch // shards
        self.epochs = epochs
        self.drop_last = bool(drop_last)
        self.pin_memory = bool(pin_memory)
        self.n_tokens = len(tokens)

        self.stream_len = self.n_tokens // self.global_batch
        require(
            self.stream_len >= 2,
            f"{self.n_tokens} tokens cannot feed {self.global_batch} streams (each needs >= 2 tokens); "
            "use a smaller global batch or a larger split",
        )
        # [B, L] view: stream s = tokens[s * L : (s + 1) * L] (original: data.view(bsz, -1))
        self.data = tokens[: self.stream_len * self.global_batch].reshape(self.global_batch, self.stream_len)
        last = self.stream_len - 1  # the final token of a stream is only ever a target
        starts = list(range(0, last, self.tgt_len))
        if self.drop_last:
            starts = [i for i in starts if i + self.tgt_len <= last]
        require(
            len(starts) > 0,
            f"streams of {self.stream_len} tokens hold no full segment of tgt_len={self.tgt_len} "
            "with drop_last=True; lower tgt_len or global_batch",
        )
        self.starts = starts
        self.steps_per_epoch = len(starts)
        # target tokens per epoch over all ranks (the eval-protocol denominator)
        self.targets_per_epoch = self.global_batch * sum(min(self.tgt_len, last - i) for i in starts)

        self.epoch = 0  # position of the NEXT batch
        self.segment = 0
        self.step = 0
        self.last: BatchInfo | None = None

    # -- sharding ------------------------------------------------------------------------
    def stream_rows(self, micro_step: int, rank: int | None = None) -> range:
        """Global stream indices fed to ``rank`` (default: this rank) at ``micro_step``."""
        rank = self.rank if rank is None else rank
        first = (rank * self.micro_steps + micro_step) * self.local_batch
        return range(first, first + self.local_batch)

    def _tensor(self, arr: np.ndarray) -> Tensor:
        t = torch.from_numpy(np.ascontiguousarray(arr, dtype=np.int64))
        return t.pin_memory() if self.pin_memory else t

    def batch_at(self, segment: int) -> list[MicroBatch]:
        """The micro batches of segment ``segment`` of an epoch (no state change)."""
        i = self.starts[segment]
        seq_len = min(self.tgt_len, self.stream_len - 1 - i)
        beg = max(0, i - self.ext_len)
        out: list[MicroBatch] = []
        for a in range(self.micro_steps):
            rows = self.stream_rows(a)
            chunk = self.data[rows.start : rows.stop, beg : i + seq_len + 1]  # [b, (i - beg) + seq_len + 1]
            inp = chunk[:, :-1]  # [b, (i - beg) + seq_len]
            tgt = chunk[:, i - beg + 1 :]  # [b, seq_len]
            out.append((self._tensor(inp), self._tensor(tgt)))
        return out

    # -- iteration -----------------------------------------------------------------------
    def __iter__(self) -> Iterator[tuple[int, list[MicroBatch]]]:
        while self.epochs is None or self.epoch < self.epochs:
            segment, epoch, step = self.segment, self.epoch, self.step
            batches = self.batch_at(segment)
            i = self.starts[segment]
            self.last = BatchInfo(
                step=step,
                epoch=epoch,
                segment=segment,
                seq_len=min(self.tgt_len, self.stream_len - 1 - i),
                new_epoch=segment == 0,
            )
            # advance before yielding: state_dict() taken after consuming this batch resumes after it
            self.step += 1
            self.segment += 1
            if self.segment == self.steps_per_epoch:
                self.segment = 0
                self.epoch += 1
            yield step, batches

    def __len__(self) -> int:
        """Batches in a full run (``epochs * steps_per_epoch``); infinite iterators raise."""
        if self.epochs is None:
            raise TypeError("an infinite LMOrderedIterator (epochs=None) has no length; use steps_per_epoch")
        return self.epochs * self.steps_per_epoch

    # -- resume --------------------------------------------------------------------------
    def _geometry(self) -> dict[str, Any]:
        return {
            "global_batch": self.global_batch,
            "tgt_len": self.tgt_len,
            "ext_len": self.ext_len,
            "drop_last": self.drop_last,
            "n_tokens": self.n_tokens,
        }

    def state_dict(self) -> dict[str, Any]:
        """Position of the next batch plus the geometry it is valid for (JSON-able)."""
        return {
            "version": _STATE_VERSION,
            "epoch": self.epoch,
            "segment": self.segment,
            "step": self.step,
            **self._geometry(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue exactly where ``state`` was taken.

        The position is global (segment of every stream), so a resume may change
        ``world_size``/``micro_steps`` as long as the global batch is the same - the
        engine must then re-shard its memories accordingly (or start them empty).

        Raises:
            SkipxlError: the state was taken with a different global batch, tgt_len,
                ext_len, drop_last or data length.
        """
        require(
            isinstance(state, dict) and state.get("version") == _STATE_VERSION,
            "not a data iterator state (missing version); resume from a checkpoint written by skipxl",
        )
        mismatched = {k: (state.get(k), v) for k, v in self._geometry().items() if state.get(k) != v}
        if mismatched:
            detail = ", ".join(f"{k}: checkpoint {a!r} vs now {b!r}" for k, (a, b) in mismatched.items())
            raise SkipxlError(
                f"cannot resume the data iterator: {detail}; resume with the same corpus, global batch, "
                "tgt_len, ext_len and drop_last as the checkpoint (or start a fresh run)"
            )
        segment = int(state["segment"])
        require(
            0 <= segment < self.steps_per_epoch,
            f"iterator state segment {segment} is outside [0, {self.steps_per_epoch})",
        )
        self.epoch = int(state["epoch"])
        self.segment = segment
        self.step = int(state["step"])
        self.last = None


def eval_batches(
    tokens: np.ndarray | Tensor,
    batch_size: int,
    tgt_len: int,
    ext_len: int = 0,
    *,
    rank: int = 0,
    world_size: int = 1,
) -> Iterator[MicroBatch]:
    """One ordered pass over a split for evaluation: ``(input, target)`` per segment.

    Transformer-XL's evaluation protocol: ``batch_size`` streams (e.g. 10, or 1 for the
    exact full-context number), consecutive segments of ``tgt_len`` with the memory carried
    across them, the last segment shorter, loss averaged over all target tokens
    (``LMOrderedIterator.targets_per_epoch`` of them). With ``world_size`` > 1 the streams
    are split over ranks (``batch_size`` must divide).
    """
    it = LMOrderedIterator(
        tokens, batch_size, tgt_len, ext_len, rank=rank, world_size=world_size, micro_steps=1, epochs=1
    )
    for _, micro in it:
        yield micro[0]
