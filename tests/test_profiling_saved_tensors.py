"""Saved-for-backward accounting: exact bytes, de-duplication, release, attribution."""

from __future__ import annotations

import gc

import pytest
import torch
from torch import nn

from skipxl.profiling.saved_tensors import SavedTensorAccountant, measure_saved

torch.set_num_threads(1)


def nbytes(t: torch.Tensor) -> int:
    return t.numel() * t.element_size()


@pytest.fixture
def no_gc():
    """Releases must happen by reference counting alone (no cycle left behind by our hooks)."""
    gc.collect()
    gc.disable()
    yield
    gc.enable()


def linear_relu(d_in: int = 8, d_out: int = 16) -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(d_in, d_out), nn.ReLU())


def test_linear_relu_exact_bytes_input_without_grad():
    # addmm needs the input for the weight gradient; the weight is not needed (the input
    # has no gradient); ReLU keeps its output. Nothing else.
    m = linear_relu()
    x = torch.randn(4, 8)
    out, saved = measure_saved(lambda: m(x), params=m.parameters())
    assert saved.packed_bytes == nbytes(x) + nbytes(out)
    assert saved.param_bytes == 0
    assert saved.peak_live_bytes == saved.packed_bytes


def test_linear_relu_with_input_grad_counts_weight_as_parameter():
    m = linear_relu()
    x = torch.randn(4, 8, requires_grad=True)
    out, saved = measure_saved(lambda: m(x), params=m.parameters())
    assert saved.packed_bytes == nbytes(x) + nbytes(out)
    assert saved.param_bytes == nbytes(m[0].weight)  # weight.t() is a view of the parameter


def test_three_d_input_exact_bytes():
    m = linear_relu()
    x = torch.randn(2, 3, 8)
    out, saved = measure_saved(lambda: m(x))
    assert saved.packed_bytes == nbytes(x) + nbytes(out)


def test_views_of_one_storage_count_once():
    a = torch.randn(6, 4, requires_grad=True)

    def f():
        h = a * 2.0  # [6, 4], nothing saved (scalar multiply)
        q, k = h.chunk(2)  # two views of h's storage
        return q * k  # saves q and k

    _, saved = measure_saved(f)
    assert saved.n_saved == 2
    assert saved.packed_bytes == nbytes(a)  # h has a's shape and dtype: one storage


def test_tensor_saved_by_several_ops_counts_once():
    a = torch.randn(5, 7, requires_grad=True)

    def f():
        s = torch.sigmoid(a)  # saves its output s
        return s * s  # saves s twice

    s, saved = measure_saved(f)
    assert saved.n_saved == 3
    assert saved.packed_bytes == nbytes(s)  # one storage (sigmoid's output), three saves


def test_release_after_backward_and_after_dropping_graph(no_gc):
    m = linear_relu()
    acct = SavedTensorAccountant(params=m.parameters())
    x = torch.randn(4, 8)
    with acct:
        y = m(x)
    expected = nbytes(x) + nbytes(y)
    assert acct.live_bytes == expected
    y.sum().backward()
    assert acct.live_bytes == 0
    assert acct.snapshot().peak_live_bytes == expected
    acct.reset()
    with acct:
        y = m(x)
    assert acct.live_bytes == expected
    del y  # graph dropped without backward: freed by refcount, no cycle through our hooks
    assert acct.live_bytes == 0


def test_gradients_bitwise_unchanged():
    m = linear_relu()
    x = torch.randn(4, 8, requires_grad=True)
    m(x).pow(2).sum().backward()
    ref = [p.grad.clone() for p in m.parameters()] + [x.grad.clone()]
    m.zero_grad()
    x.grad = None
    acct = SavedTensorAccountant()
    with acct:
        loss = m(x).pow(2).sum()
    loss.backward()
    got = [p.grad for p in m.parameters()] + [x.grad]
    assert all(torch.equal(a, b) for a, b in zip(ref, got, strict=True))


def test_scopes_attribute_each_block():
    torch.manual_seed(0)
    a, b = nn.Sequential(nn.Linear(8, 16), nn.ReLU()), nn.Sequential(nn.Linear(16, 4), nn.ReLU())
    acct = SavedTensorAccountant()
    remove = acct.attach_scopes({"a": a, "b": b})
    x = torch.randn(3, 8)
    with acct:
        h = a(x)
        y = b(h)
    snap = acct.snapshot()
    assert snap.per_scope == {"a": nbytes(x) + nbytes(h), "b": nbytes(y)}  # b's input is a's output
    remove()
    assert not a._forward_pre_hooks and not a._forward_hooks and not b._forward_hooks


def test_explicit_scope_and_default_scope():
    acct = SavedTensorAccountant(default_scope="rest")
    x = torch.randn(10, requires_grad=True)
    with acct:
        with acct.scope("mine"):
            y = torch.exp(x)  # saves its output
        z = torch.sin(x)  # saves x
    assert acct.snapshot().per_scope == {"mine": nbytes(y), "rest": nbytes(x)}
    del y, z


def test_accountant_does_not_nest():
    acct = SavedTensorAccountant()
    with acct, pytest.raises(RuntimeError, match="does not nest"):
        acct.__enter__()
