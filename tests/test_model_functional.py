"""Pure functions of skipxl.model.functional against hand-computed cases."""

from __future__ import annotations

import pytest
import torch

from skipxl.errors import SkipxlError
from skipxl.model.config import SkipRetainConfig
from skipxl.model.functional import (
    attention_mask,
    draw_skip_mask,
    gather_last,
    position_rows,
    rel_shift,
    relative_distances,
    skip_probabilities,
    update_memory,
)

torch.set_num_threads(1)


@pytest.mark.parametrize(("q", "k"), [(1, 1), (3, 3), (3, 7), (5, 9)])
def test_rel_shift_aligns_rows_to_distances(q: int, k: int) -> None:
    # x[b, i, j] = score of query i with the position row j (row j holds distance k-1-j).
    x = torch.randn(2, q, k)
    y = rel_shift(x)
    m = k - q  # memory length: query i is key number m + i
    for i in range(q):
        for j in range(m + i + 1):  # the causal (unmasked) part
            dist = m + i - j
            row = k - 1 - dist
            assert torch.equal(y[:, i, j], x[:, i, row])


def test_attention_mask_causal_with_memory() -> None:
    mask = attention_mask(qlen=3, mlen=2, same_length=False, mem_len=2)
    expected = torch.tensor(
        [
            [0, 0, 0, 1, 1],
            [0, 0, 0, 0, 1],
            [0, 0, 0, 0, 0],
        ],
        dtype=torch.bool,
    )
    assert torch.equal(mask, expected)


def test_attention_mask_same_length_every_query_sees_the_same_count() -> None:
    # qlen 3, mlen 3, mem_len 3: klen 6, mask_len 3, mask_shift_len 0 -> tril(0) masks j <= i.
    mask = attention_mask(qlen=3, mlen=3, same_length=True, mem_len=3)
    expected = torch.tensor(
        [
            [1, 0, 0, 0, 1, 1],
            [1, 1, 0, 0, 0, 1],
            [1, 1, 1, 0, 0, 0],
        ],
        dtype=torch.bool,
    )
    assert torch.equal(mask, expected)
    assert ((~mask).sum(1) == 3).all()


def test_attention_mask_same_length_short_memory() -> None:
    # qlen 3, no memory yet, mem_len 3: mask_len = 0 -> mask_shift_len = qlen: only causal.
    mask = attention_mask(qlen=3, mlen=0, same_length=True, mem_len=3)
    assert torch.equal(mask, torch.triu(torch.ones(3, 3, dtype=torch.bool), 1))
    # qlen 2, mlen 3, mem_len 2: klen 5, mask_len 3, shift -1 -> tril(+1) masks j <= i + 1.
    mask = attention_mask(qlen=2, mlen=3, same_length=True, mem_len=2)
    expected = torch.tensor([[1, 1, 0, 0, 1], [1, 1, 1, 0, 0]], dtype=torch.bool)
    assert torch.equal(mask, expected)


def test_relative_distances_and_clamp() -> None:
    q = torch.tensor([10, 11])
    k = torch.tensor([2, 3, 8, 10, 11])
    assert torch.equal(relative_distances(q, k), torch.tensor([[8, 7, 2, 0, 0], [9, 8, 3, 1, 0]]))
    assert torch.equal(
        relative_distances(q, k, clamp_len=3), torch.tensor([[3, 3, 2, 0, 0], [3, 3, 3, 1, 0]])
    )
    rows = position_rows(relative_distances(q, k), r_len=10)
    assert torch.equal(rows, 9 - relative_distances(q, k))


def test_update_memory_window_positions_and_detach() -> None:
    b, d = 2, 3
    hidden = torch.randn(b, 4, d, requires_grad=True)
    state, pos = update_memory(None, None, hidden, torch.arange(0, 4), mem_len=3)
    assert state.shape == (b, 3, d) and not state.requires_grad
    assert torch.equal(state, hidden[:, 1:].detach())
    assert torch.equal(pos, torch.tensor([1, 2, 3]))
    hidden2 = torch.randn(b, 4, d)
    state2, pos2 = update_memory(state, pos, hidden2, torch.arange(4, 8), mem_len=5)
    assert torch.equal(state2, torch.cat([state, hidden2], 1)[:, 2:])
    assert torch.equal(pos2, torch.tensor([3, 4, 5, 6, 7]))


def test_update_memory_holds_only_its_window() -> None:
    """The new memory owns exactly M' rows of storage: no view pins the [B, M+T, D] concat."""
    b, t, d, mem_len = 2, 5, 3, 4
    state, pos = update_memory(None, None, torch.randn(b, t, d), torch.arange(t), mem_len=mem_len)
    for step in range(1, 4):
        new = torch.randn(b, t, d)
        expected = torch.cat([state, new], 1)[:, -mem_len:]
        state, pos = update_memory(state, pos, new, torch.arange(step * t, (step + 1) * t), mem_len)
        assert torch.equal(state, expected)
        assert state.untyped_storage().nbytes() == b * mem_len * d * state.element_size()


def test_update_memory_ext_len_and_zero_mem_len() -> None:
    hidden = torch.randn(1, 6, 2)
    # end = 0 + (6 - 2) = 4, beg = max(0, 4 - 3) = 1
    state, pos = update_memory(None, None, hidden, torch.arange(6), mem_len=3, ext_len=2)
    assert torch.equal(state, hidden[:, 1:4]) and torch.equal(pos, torch.tensor([1, 2, 3]))
    state, pos = update_memory(None, None, hidden, torch.arange(6), mem_len=0)
    assert state.shape == (1, 0, 2) and pos.numel() == 0


def test_skip_probabilities_linear_matches_released_code() -> None:
    probs = skip_probabilities(SkipRetainConfig(), 15)
    expected = [0.0] + [i / 30 for i in range(1, 14)] + [0.0]
    assert probs == pytest.approx(expected)
    assert sum(probs) / 15 == pytest.approx(0.2022, abs=1e-3)


def test_skip_probabilities_constant_list_and_none() -> None:
    assert skip_probabilities(SkipRetainConfig(schedule="constant", p=0.3), 4) == pytest.approx(
        [0.0, 0.3, 0.3, 0.0]
    )
    unprotected = SkipRetainConfig(schedule="constant", p=0.3, protect_ends=False)
    assert skip_probabilities(unprotected, 3) == pytest.approx([0.3] * 3)
    assert skip_probabilities(SkipRetainConfig(schedule="list", probs=(0.1, 0.2)), 2) == (0.1, 0.2)
    assert skip_probabilities(None, 3) == (0.0, 0.0, 0.0)
    with pytest.raises(SkipxlError, match="one per layer"):
        skip_probabilities(SkipRetainConfig(schedule="list", probs=(0.1, 0.2)), 3)


def test_draw_skip_mask_uses_only_its_generator_and_fixed_draws() -> None:
    g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    torch.manual_seed(0)
    before = torch.get_rng_state()
    m1 = draw_skip_mask([0.0, 1.0, 0.5], g1)
    assert torch.equal(before, torch.get_rng_state())  # the global RNG is untouched
    assert m1[0] is False and m1[1] is True
    m2 = draw_skip_mask([0.0, 0.0, 0.0], g2)
    assert m2 == (False, False, False)
    # Same number of draws whatever the probabilities: the streams stay aligned.
    assert torch.equal(torch.rand(4, generator=g1), torch.rand(4, generator=g2))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_gather_last_equals_torch_gather_bitwise(dtype: torch.dtype) -> None:
    # Shapes of the gather position path: scores [B, H, T, R], a broadcast [T, K] index.
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 4, 9, generator=g, dtype=dtype)
    index = torch.randint(0, 9, (4, 6), generator=g).expand(2, 3, 4, 6)  # [B, H, T, K] view
    grad = torch.randn(2, 3, 4, 6, generator=g, dtype=dtype)
    a, b = x.clone().requires_grad_(), x.clone().requires_grad_()
    ya, yb = gather_last(a, index), b.gather(-1, index)
    assert torch.equal(ya, yb)
    ya.backward(grad)
    yb.backward(grad)
    assert torch.equal(a.grad, b.grad)  # repeated indices accumulate the same way
    assert torch.autograd.gradcheck(gather_last, (x.double().requires_grad_(), index))


def test_gather_last_keeps_the_index_not_the_input() -> None:
    saved: list[torch.Tensor] = []
    x = torch.randn(2, 3, 4, 9, requires_grad=True)
    scores = x * 2  # a non-leaf, like the position-score einsum's output
    index = torch.randint(0, 9, (4, 6)).expand(2, 3, 4, 6)
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        gather_last(scores, index)
    assert len(saved) == 1 and saved[0].dtype == torch.int64
    assert saved[0].untyped_storage().nbytes() == 4 * 6 * 8  # the [T, K] storage, not [B, H, T, K]
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        scores.gather(-1, index)
    assert any(t.dtype == x.dtype and t.shape == x.shape for t in saved[1:])  # torch's keeps x
