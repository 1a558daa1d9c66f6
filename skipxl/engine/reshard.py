"""Resume on another world size: hand every Transformer-XL stream its own memory again.

A run with global batch ``B`` reads ``B`` parallel token streams (Dai et al. 2019, Sec. 3.2;
:class:`~skipxl.data.LMOrderedIterator`). Rank ``r`` of ``W`` ranks, at micro-step ``a`` of
``A``, reads the ``b = B / (W * A)`` streams ``s = (r * A + a) * b + j`` (``j < b``) and keeps
their memory as ``mems[a]`` (rows ``j``). Requeued on ``W'`` ranks (and ``A'`` micro-steps,
``B`` unchanged), the same stream ``s`` lands on another rank, micro-step and row; its memory
must follow it, or the first segment after the resume would attend to another stream's past.

:func:`reshard` does that on the saved per-rank states, as pure functions of their contents:

* memories: the ``W x A`` memories are concatenated in stream order (``[B, M_l, d_model]`` per
  layer) and cut again into ``W' x A'`` pieces;
* the data position (epoch, segment, step) and the step are global: equal on every old rank
  (checked) and given to every new one;
* the training policies' state (the Skip-Retain / cross-head plan generator, the phase, the
  Dynamic Layer Tying agent) is identical on every rank by construction (every rank draws the
  same plan); it is checked equal and copied;
* RNGs (dropout): new rank ``r`` continues old rank ``r``'s generators when there was one;
  a rank that did not exist gets ``None`` and the trainer seeds it from ``(seed, rank, step)``.

What "exact" means across the change: weights, optimizer moments, the lr schedule, the step,
every stream's data position and memory, and every policy decision continue exactly. The
gradient of a step is the same mean over the same ``B`` streams, summed in another order (one
all-reduce over ``W'`` ranks of ``A'`` accumulated micro-batches instead of ``W`` of ``A``), so
losses agree to float rounding, not bitwise; with dropout the masks come from other generators
(a different but equally valid random stream).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from skipxl.errors import SkipxlError
from skipxl.model.memory import Memory

RankState = dict[str, Any]


def gather_memories(mems: Sequence[Memory | None]) -> Memory | None:
    """One memory of all streams from per-shard memories listed in stream order.

    Every shard holds the same segments (one plan per step on every rank), so the positions of
    every layer and ``next_position`` must agree; ``None`` (the start of an epoch) is all or none.
    """
    if all(m is None for m in mems):
        return None
    if any(m is None for m in mems):
        raise SkipxlError(
            "the checkpoint's per-rank memories disagree (some streams have a memory, others none); "
            "it cannot be resharded, resume it with the world size that saved it"
        )
    first = mems[0]
    assert first is not None
    for m in mems[1:]:
        assert m is not None
        same = m.next_position == first.next_position and all(
            torch.equal(p, q) for p, q in zip(m.positions, first.positions, strict=True)
        )
        if not same:
            raise SkipxlError(
                "the checkpoint's per-rank memories hold different positions; it cannot be "
                "resharded, resume it with the world size that saved it"
            )
    states = tuple(
        torch.cat([m.states[layer] for m in mems], dim=0)  # type: ignore[union-attr]
        for layer in range(first.n_layer)
    )  # n_layer x [B, M_l, D]
    return Memory(states, first.positions, first.next_position)


def split_memory(mem: Memory | None, pieces: int) -> list[Memory | None]:
    """``mem`` (all ``B`` streams) cut into ``pieces`` equal consecutive row blocks."""
    if mem is None:
        return [None] * pieces
    chunks = [s.chunk(pieces, dim=0) for s in mem.states]  # n_layer x pieces x [B / pieces, M_l, D]
    return [
        Memory(tuple(c[i].clone() for c in chunks), mem.positions, mem.next_position) for i in range(pieces)
    ]


def _equal(a: Any, b: Any) -> bool:
    """Structural equality of saved states (tensors compared exactly)."""
    if torch.is_tensor(a) or torch.is_tensor(b):
        return torch.is_tensor(a) and torch.is_tensor(b) and a.shape == b.shape and torch.equal(a, b)
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_equal(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_equal(x, y) for x, y in zip(a, b, strict=True))
    return bool(a == b)


def _require_same(states: Sequence[RankState], key: str, what: str) -> None:
    for rank, state in enumerate(states[1:], start=1):
        if not _equal(state[key], states[0][key]):
            raise SkipxlError(
                f"rank {rank}'s {what} differs from rank 0's in the checkpoint; it cannot be "
                "resharded, resume it with the world size that saved it"
            )


def reshard(states: Sequence[RankState], world: int, accum: int) -> list[RankState]:
    """The per-rank states of ``len(states)`` old ranks re-assigned to ``world`` ranks of
    ``accum`` micro-steps each (same global batch); see the module docstring.

    The old micro-step count is read from the memories' list (``train_state["mems"]``). A new
    rank's ``rng`` is the old same-numbered rank's, or ``None`` when it is new.
    """
    if not states:
        raise SkipxlError("no per-rank state to reshard")
    if any("train_state" not in s for s in states):
        raise SkipxlError(
            "the checkpoint was written before format version 2 (issue 11) and cannot be resharded; "
            "resume it with the world size and grad_accum that saved it"
        )
    old_accum = len(states[0]["train_state"]["mems"])
    if any(len(s["train_state"]["mems"]) != old_accum for s in states):
        raise SkipxlError("the checkpoint's ranks hold different numbers of micro-step memories")
    pieces = world * accum
    shards = [m for s in states for m in s["train_state"]["mems"]]  # old stream order: (r, a)
    for key, what in (("iterator", "data position"), ("policies", "training policy state")):
        _require_same(states, key, what)
    steps = {int(s["train_state"]["step"]) for s in states}
    if len(steps) != 1:
        raise SkipxlError(f"the checkpoint's ranks are at different steps {sorted(steps)}")
    everything = gather_memories(shards)
    if everything is not None and everything.states and everything.states[0].size(0) % pieces:
        raise SkipxlError(
            f"the checkpoint's {everything.states[0].size(0)} streams do not split over {world} ranks x "
            f"{accum} micro-steps; resume with a world size that divides the global batch"
        )
    new_mems = split_memory(everything, pieces)
    step = steps.pop()
    return [
        {
            "rng": states[rank]["rng"] if rank < len(states) else None,
            "train_state": {"step": step, "mems": new_mems[rank * accum : (rank + 1) * accum]},
            "iterator": states[0]["iterator"],
            "policies": states[0]["policies"],
        }
        for rank in range(world)
    ]


# ----------------------------------------------------------------------------- files


#: Where :func:`to_universal` writes DeepSpeed's universal form of a ZeRO checkpoint (removed
#: after the resume has loaded it).
UNIVERSAL = "universal"


def to_universal(ckpt_dir: Path, tag: str) -> Path:
    """Convert ZeRO checkpoint ``ckpt_dir/tag`` with DeepSpeed's ``ds_to_universal`` into
    ``ckpt_dir/universal/tag`` (its optimizer partitions merged per parameter, so a world of any
    size can load them with ``"checkpoint": {"load_universal": true}``); returns the load dir.

    Run by one process; the result appears atomically (converted into a temporary folder first).
    """
    import argparse
    import contextlib
    import io
    import os
    import shutil

    from deepspeed.checkpoint import ds_to_universal

    root = Path(ckpt_dir) / UNIVERSAL
    final, tmp = root / tag, root / f"tmp_{tag}"
    if final.is_dir():
        return root
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    args = argparse.Namespace(
        input_folder=str(Path(ckpt_dir) / tag),
        output_folder=str(tmp),
        num_extract_workers=1,
        num_merge_workers=1,
        keep_temp_folder=False,
        strict=True,
        inject_missing_state=True,  # a plain (non-Megatron) model records no universal info
    )
    log = io.StringIO()
    try:
        with contextlib.redirect_stdout(log):
            ds_to_universal.main(args)
    except Exception as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        reason = (str(exc).splitlines() or [""])[0][:200]
        raise SkipxlError(
            f"DeepSpeed could not convert checkpoint {Path(ckpt_dir) / tag} to a universal checkpoint "
            f"({type(exc).__name__}: {reason}); resume it with the world size that saved it"
        ) from exc
    os.replace(tmp, final)
    return root


def remove_universal(ckpt_dir: Path) -> None:
    """Drop the converted copies (the step folders stay the checkpoints of record)."""
    import shutil

    shutil.rmtree(Path(ckpt_dir) / UNIVERSAL, ignore_errors=True)
