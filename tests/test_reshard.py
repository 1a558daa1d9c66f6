"""Resharding the per-rank states for a resume on another world size (skipxl.engine.reshard):
every stream meets its own memory again, whatever the old and new (ranks x micro-steps) layout."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from skipxl.data import LMOrderedIterator
from skipxl.engine.reshard import gather_memories, reshard, split_memory
from skipxl.errors import SkipxlError
from skipxl.model.memory import Memory

B, N_LAYER, D = 8, 3, 5
LAYOUTS = [(1, 1), (1, 2), (2, 1), (2, 2), (4, 2), (1, 8), (8, 1)]


def stream_memory() -> torch.Tensor:
    """``[n_layer, B, M, D]`` with every value naming its (layer, stream): stream s, layer l is
    filled from ``100 * l + s`` plus a slot/feature ramp, so any mix-up changes some value."""
    slots = torch.arange(4 * D, dtype=torch.float32).reshape(1, 1, 4, D) / 1000
    ids = 100 * torch.arange(N_LAYER).reshape(-1, 1, 1, 1) + torch.arange(B).reshape(1, -1, 1, 1)
    return ids.float() + slots  # [n_layer, B, M=4, D]


def rows_of(world: int, accum: int, rank: int, micro: int) -> range:
    """Global streams of (rank, micro-step), as the data iterator assigns them."""
    it = LMOrderedIterator(np.arange(B * 10), B, 4, rank=rank, world_size=world, micro_steps=accum)
    return it.stream_rows(micro)


def rank_states(world: int, accum: int, *, empty: bool = False) -> list[dict]:
    """Per-rank states of a (world x accum) run whose streams hold :func:`stream_memory`."""
    full = stream_memory()
    positions = tuple(torch.arange(60, 64) for _ in range(N_LAYER))
    states = []
    for rank in range(world):
        mems = []
        for a in range(accum):
            rows = rows_of(world, accum, rank, a)
            part = tuple(full[layer, rows.start : rows.stop] for layer in range(N_LAYER))
            mems.append(None if empty else Memory(part, positions, 64))
        states.append(
            {
                "rng": {"rank": rank},
                "train_state": {"step": 7, "mems": mems},
                "iterator": {"epoch": 0, "segment": 7, "step": 7},
                "policies": {"skip_retain": {"generator": torch.tensor([1, 2, 3], dtype=torch.uint8)}},
            }
        )
    return states


@pytest.mark.parametrize("old", LAYOUTS)
@pytest.mark.parametrize("new", LAYOUTS)
def test_every_stream_keeps_its_own_memory(old, new):
    full = stream_memory()
    out = reshard(rank_states(*old), *new)
    world, accum = new
    assert len(out) == world
    for rank, state in enumerate(out):
        assert len(state["train_state"]["mems"]) == accum
        for a, mem in enumerate(state["train_state"]["mems"]):
            rows = rows_of(world, accum, rank, a)
            for layer in range(N_LAYER):
                assert torch.equal(mem.states[layer], full[layer, rows.start : rows.stop])
                assert torch.equal(mem.positions[layer], torch.arange(60, 64))
            assert mem.next_position == 64
        assert state["train_state"]["step"] == 7
        assert state["iterator"] == {"epoch": 0, "segment": 7, "step": 7}


@pytest.mark.parametrize("old, new", [((2, 1), (1, 4)), ((1, 2), (4, 1)), ((2, 2), (8, 1))])
def test_a_round_trip_is_bitwise_the_identity(old, new):
    before = rank_states(*old)
    back = reshard(reshard(before, *new), *old)
    for a, b in zip(before, back, strict=True):
        for m, n in zip(a["train_state"]["mems"], b["train_state"]["mems"], strict=True):
            assert all(torch.equal(x, y) for x, y in zip(m.states, n.states, strict=True))


def test_old_ranks_keep_their_rng_and_new_ranks_get_none():
    out = reshard(rank_states(2, 1), 4, 1)
    assert [s["rng"] for s in out] == [{"rank": 0}, {"rank": 1}, None, None]
    assert [s["rng"] for s in reshard(rank_states(4, 1), 1, 2)] == [{"rank": 0}]


def test_empty_memories_stay_empty():
    out = reshard(rank_states(2, 2, empty=True), 1, 1)
    assert out[0]["train_state"]["mems"] == [None]


def test_split_is_the_inverse_of_gather():
    full = stream_memory()
    positions = tuple(torch.arange(4) for _ in range(N_LAYER))
    mem = Memory(tuple(full[layer] for layer in range(N_LAYER)), positions, 4)
    again = gather_memories(split_memory(mem, 4))
    assert again is not None
    assert all(torch.equal(x, y) for x, y in zip(again.states, mem.states, strict=True))
    assert split_memory(None, 3) == [None, None, None]


def _mutate(states: list[dict], what: str) -> None:
    if what == "positions":
        m = states[1]["train_state"]["mems"][0]
        moved = tuple(p + 1 for p in m.positions)
        states[1]["train_state"]["mems"][0] = Memory(m.states, moved, m.next_position)
    elif what == "none":
        states[1]["train_state"]["mems"][0] = None
    elif what == "iterator":
        states[1]["iterator"] = {**states[1]["iterator"], "segment": 8}
    elif what == "policies":
        states[1]["policies"] = {"skip_retain": {"generator": torch.tensor([1, 2, 4], dtype=torch.uint8)}}
    elif what == "step":
        states[1]["train_state"]["step"] = 8
    elif what == "version1":
        del states[0]["train_state"]


@pytest.mark.parametrize(
    "what, message",
    [
        ("positions", "different positions"),
        ("none", "some streams have a memory"),
        ("iterator", "data position differs"),
        ("policies", "training policy state differs"),
        ("step", "different steps"),
        ("version1", "before format version 2"),
    ],
)
def test_inconsistent_states_are_refused_with_the_reason(what, message):
    states = rank_states(2, 1)
    _mutate(states, what)
    with pytest.raises(SkipxlError, match=message):
        reshard(states, 1, 1)


def test_a_layout_that_does_not_divide_the_streams_is_refused():
    with pytest.raises(SkipxlError, match="do not split over 3 ranks"):
        reshard(rank_states(2, 1), 3, 1)
