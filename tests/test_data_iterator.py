"""LMOrderedIterator: stream layout, sharding over ranks / micro steps, resume, epochs.

Most tests feed ``np.arange(N)``, so a token's value *is* its corpus position and every
invariant (coverage, contiguity, shift by one) can be checked exactly.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from skipxl.data import LMOrderedIterator, eval_batches
from skipxl.errors import SkipxlError


def reference_batches(tokens: np.ndarray, bsz: int, tgt_len: int, ext_len: int = 0):
    """Naive Transformer-XL ordered batches ([bsz, *] batch-major), written from the spec."""
    n_step = len(tokens) // bsz
    streams = [tokens[s * n_step : (s + 1) * n_step] for s in range(bsz)]
    out = []
    i = 0
    while i < n_step - 1:
        seq_len = min(tgt_len, n_step - 1 - i)
        beg = max(0, i - ext_len)
        inp = np.stack([s[beg : i + seq_len] for s in streams])
        tgt = np.stack([s[i + 1 : i + 1 + seq_len] for s in streams])
        out.append((inp, tgt))
        i += tgt_len
    return out


def global_batches(tokens, B, T, ext=0, W=1, A=1, **kw):
    """Per step, the global [B, *] input/target reassembled from every rank and micro step."""
    per_rank = [
        list(LMOrderedIterator(tokens, B, T, ext, rank=r, world_size=W, micro_steps=A, **kw))
        for r in range(W)
    ]
    steps = []
    for k in range(len(per_rank[0])):
        inputs, targets = [], []
        for r in range(W):
            step, micro = per_rank[r][k]
            assert step == k
            assert len(micro) == A
            for inp, tgt in micro:
                assert inp.dtype == torch.int64 and tgt.dtype == torch.int64
                assert inp.shape[0] == tgt.shape[0] == B // (W * A)
                inputs.append(inp)
                targets.append(tgt)
        steps.append((torch.cat(inputs).numpy(), torch.cat(targets).numpy()))
    return steps


@pytest.mark.parametrize("ext_len", [0, 3])
@pytest.mark.parametrize(("B", "T", "W", "A"), [(4, 5, 1, 1), (8, 7, 2, 2), (12, 4, 3, 2), (6, 10, 1, 3)])
def test_matches_naive_reference(B, T, W, A, ext_len):
    tokens = np.arange(1003)
    got = global_batches(tokens, B, T, ext_len, W, A)
    want = reference_batches(tokens, B, T, ext_len)
    assert len(got) == len(want)
    for (gi, gt), (wi, wt) in zip(got, want, strict=True):
        np.testing.assert_array_equal(gi, wi)
        np.testing.assert_array_equal(gt, wt)


@settings(max_examples=40, deadline=None)
@given(
    n=st.integers(50, 700),
    local_b=st.integers(1, 3),
    W=st.integers(1, 3),
    A=st.integers(1, 3),
    T=st.integers(1, 20),
)
def test_epoch_covers_every_token_once(n, local_b, W, A, T):
    B = local_b * W * A
    tokens = np.arange(n)
    L = n // B
    if L < 2:
        with pytest.raises(SkipxlError):
            LMOrderedIterator(tokens, B, T, world_size=W, micro_steps=A)
        return
    seen_targets: list[np.ndarray] = []
    seen_inputs: list[np.ndarray] = []
    for r in range(W):
        it = LMOrderedIterator(tokens, B, T, rank=r, world_size=W, micro_steps=A)
        rows_seen = []
        prev_last: dict[tuple[int, int], torch.Tensor] = {}
        for _, micro in it:
            for a, (inp, tgt) in enumerate(micro):
                # targets are the inputs shifted by one (token value == position)
                np.testing.assert_array_equal(tgt.numpy(), inp.numpy() + 1)
                # every row continues its own stream from the previous segment
                if (r, a) in prev_last:
                    np.testing.assert_array_equal(inp[:, 0].numpy(), prev_last[(r, a)].numpy() + 1)
                prev_last[(r, a)] = inp[:, -1]
                # rank r / micro step a always holds streams (r*A + a)*b ... (+b)
                expected_rows = np.arange((r * A + a) * local_b, (r * A + a + 1) * local_b)
                np.testing.assert_array_equal(inp[:, 0].numpy() // L, expected_rows)
                rows_seen.extend(expected_rows.tolist())
                seen_targets.append(tgt.numpy().ravel())
                seen_inputs.append(inp.numpy().ravel())
        assert it.targets_per_epoch == B * (L - 1)
    targets = np.concatenate(seen_targets)
    inputs = np.concatenate(seen_inputs)
    # exactly once each: every kept position except each stream's first (target) / last (input)
    stream_start = np.arange(B) * L
    want_targets = np.setdiff1d(np.arange(B * L), stream_start)
    want_inputs = np.setdiff1d(np.arange(B * L), stream_start + L - 1)
    np.testing.assert_array_equal(np.sort(targets), want_targets)
    np.testing.assert_array_equal(np.sort(inputs), want_inputs)


def test_sharding_partitions_the_global_batch():
    it0 = LMOrderedIterator(np.arange(10_000), 24, 8, rank=0, world_size=3, micro_steps=4)
    rows = [list(it0.stream_rows(a, rank=r)) for r in range(3) for a in range(4)]
    assert sorted(x for group in rows for x in group) == list(range(24))
    assert all(len(g) == 2 for g in rows)
    assert rows[0] == [0, 1] and rows[4] == [8, 9]  # rank-major, then micro-step-major


def test_uint16_memmap_input(tmp_path):
    path = tmp_path / "ids.bin"
    arr = (np.arange(5000) % 60000).astype("<u2")
    arr.tofile(path)
    mm = np.memmap(path, dtype="<u2", mode="r", shape=(5000,))
    (_, micro), *_ = LMOrderedIterator(mm, 4, 16)
    inp, tgt = micro[0]
    assert inp.dtype == torch.int64
    np.testing.assert_array_equal(inp[0].numpy(), np.arange(16))
    np.testing.assert_array_equal(tgt[1].numpy(), np.arange(1251, 1267))


def test_torch_tensor_input():
    (_, micro), *_ = LMOrderedIterator(torch.arange(100), 2, 4)
    np.testing.assert_array_equal(micro[0][0].numpy(), [[0, 1, 2, 3], [50, 51, 52, 53]])


def test_last_segment_shorter_or_dropped():
    tokens = np.arange(2 * 23)  # streams of 23 -> 22 targets -> segments 10, 10, 2
    lens = [m[0][1].shape[1] for _, m in LMOrderedIterator(tokens, 2, 10)]
    assert lens == [10, 10, 2]
    it = LMOrderedIterator(tokens, 2, 10, drop_last=True)
    assert [m[0][1].shape[1] for _, m in it] == [10, 10]
    assert it.targets_per_epoch == 2 * 20
    with pytest.raises(SkipxlError, match="drop_last"):
        LMOrderedIterator(tokens, 2, 30, drop_last=True)


def test_infinite_epochs_restart_and_flag_memory_reset():
    tokens = np.arange(2 * 31)
    it = LMOrderedIterator(tokens, 2, 10, epochs=None)
    assert it.steps_per_epoch == 3
    seen = []
    for step, micro in it:
        info = it.last
        assert info is not None and info.step == step
        seen.append((info.epoch, info.segment, info.new_epoch, micro[0][0][0, 0].item()))
        if step == 7:
            break
    assert [s[:3] for s in seen] == [
        (0, 0, True), (0, 1, False), (0, 2, False),
        (1, 0, True), (1, 1, False), (1, 2, False),
        (2, 0, True), (2, 1, False),
    ]  # fmt: skip
    assert [s[3] for s in seen[:3]] == [s[3] for s in seen[3:6]]  # same data every epoch
    with pytest.raises(TypeError):
        len(it)
    assert len(LMOrderedIterator(tokens, 2, 10, epochs=2)) == 6


@pytest.mark.parametrize("stop", [0, 2, 3, 7])
def test_resume_gives_identical_continuation(stop):
    tokens = np.random.default_rng(0).integers(0, 1000, size=4 * 41)
    kw = dict(rank=1, world_size=2, micro_steps=2, epochs=3, ext_len=2)
    full = [(s, [(i.clone(), t.clone()) for i, t in m]) for s, m in LMOrderedIterator(tokens, 4, 9, **kw)]

    first = LMOrderedIterator(tokens, 4, 9, **kw)
    stream = iter(first)
    for _ in range(stop):
        next(stream)
    state = json.loads(json.dumps(first.state_dict()))  # checkpoints store it as JSON
    resumed = LMOrderedIterator(tokens, 4, 9, **kw)
    resumed.load_state_dict(state)
    rest = list(resumed)
    assert len(rest) == len(full) - stop
    for (s1, m1), (s2, m2) in zip(full[stop:], rest, strict=True):
        assert s1 == s2
        for (i1, t1), (i2, t2) in zip(m1, m2, strict=True):
            assert torch.equal(i1, i2) and torch.equal(t1, t2)


def test_resume_refuses_other_geometry():
    tokens = np.arange(1000)
    state = LMOrderedIterator(tokens, 4, 10).state_dict()
    with pytest.raises(SkipxlError, match="tgt_len"):
        LMOrderedIterator(tokens, 4, 12).load_state_dict(state)
    with pytest.raises(SkipxlError, match="n_tokens"):
        LMOrderedIterator(np.arange(999), 4, 10).load_state_dict(state)
    with pytest.raises(SkipxlError, match="version"):
        LMOrderedIterator(tokens, 4, 10).load_state_dict({"epoch": 0})
    # another world size with the same global batch is a valid resume
    LMOrderedIterator(tokens, 4, 10, world_size=2, rank=1).load_state_dict(state)


def test_bad_geometry_errors():
    with pytest.raises(SkipxlError, match="multiple of 4"):
        LMOrderedIterator(np.arange(1000), 6, 10, world_size=2, micro_steps=2)
    with pytest.raises(SkipxlError, match="streams"):
        LMOrderedIterator(np.arange(10), 8, 10)
    with pytest.raises(SkipxlError, match="rank"):
        LMOrderedIterator(np.arange(100), 4, 10, rank=2, world_size=2)
    with pytest.raises(SkipxlError, match="1-D"):
        LMOrderedIterator(np.zeros((4, 4)), 2, 2)


def test_eval_batches_cover_split_in_order():
    tokens = np.arange(10 * 57)
    pairs = list(eval_batches(tokens, 10, 8))
    targets = np.concatenate([t.numpy() for _, t in pairs], axis=1)  # [10, 56]
    np.testing.assert_array_equal(targets, np.arange(570).reshape(10, 57)[:, 1:])
    halves = [list(eval_batches(tokens, 10, 8, rank=r, world_size=2)) for r in range(2)]
    for k, (inp, _) in enumerate(pairs):
        np.testing.assert_array_equal(torch.cat([halves[0][k][0], halves[1][k][0]]).numpy(), inp.numpy())
