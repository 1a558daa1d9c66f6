"""Relative attention against a naive O(L^2) implementation; position paths; cross-head."""

from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor

from skipxl.model.attention import PositionalEmbedding, RelPartialLearnableAttention
from skipxl.model.functional import attention_mask, position_rows, relative_distances
from skipxl.model.heads import CrossHeadConfig, draw_head_index

torch.set_num_threads(1)
H, DH, D = 3, 4, 12


def sinusoid(dist: float, d_model: int) -> Tensor:
    """The position embedding of one distance, written out from the formula."""
    k = torch.arange(0, d_model, 2, dtype=torch.float64)
    freq = 1.0 / (10000 ** (k / d_model))
    return torch.cat([torch.sin(dist * freq), torch.cos(dist * freq)]).float()


def naive_attention(
    attn: RelPartialLearnableAttention,
    x: Tensor,
    mem: Tensor,
    u: Tensor,
    v: Tensor,
    key_pos: list[int],
    query_pos: list[int],
    mask: Tensor,
    clamp_len: int = -1,
    head_index: list[int] | None = None,
) -> Tensor:
    """Loop over batch, head, query and key; distances from the given absolute positions."""
    bsz, qlen, _ = x.shape
    cat = torch.cat([mem, x], 1)
    klen = cat.size(1)
    inp = attn.layer_norm(cat) if attn.pre_lnorm else cat
    wq, wk, wv = attn.qkv_net.weight.chunk(3, 0)
    q = (inp[:, -qlen:] @ wq.T).view(bsz, qlen, H, DH)
    k = (inp @ wk.T).view(bsz, klen, H, DH)
    val = (inp @ wv.T).view(bsz, klen, H, DH)
    src = list(range(H)) if head_index is None else head_index
    out = torch.zeros(bsz, qlen, H, DH)
    for b in range(bsz):
        for h in range(H):
            s = src[h]
            for i in range(qlen):
                scores = torch.full((klen,), float("-inf"))
                for j in range(klen):
                    if mask[i, j]:
                        continue
                    if attn.positions == "segment_end":
                        dist = query_pos[-1] - key_pos[j]
                    else:
                        dist = query_pos[i] - key_pos[j]
                    if clamp_len > 0:
                        dist = min(dist, clamp_len)
                    r_k = (attn.r_net.weight @ sinusoid(dist, D)).view(H, DH)[s]
                    scores[j] = (q[b, i, h] + u[h]) @ k[b, j, s] + (q[b, i, h] + v[h]) @ r_k
                p = torch.softmax(scores / math.sqrt(DH), 0)
                out[b, i, h] = (p[:, None] * val[b, :, s]).sum(0)
    o = attn.o_net(out.reshape(bsz, qlen, H * DH))
    return x + o if attn.pre_lnorm else attn.layer_norm(x + o)


def make(pre_lnorm: bool = False, positions: str = "relative", seed: int = 0) -> RelPartialLearnableAttention:
    torch.manual_seed(seed)
    attn = RelPartialLearnableAttention(
        H, D, DH, dropout=0.0, dropatt=0.0, pre_lnorm=pre_lnorm, positions=positions
    )
    with torch.no_grad():
        for p in attn.parameters():
            p.normal_(0, 0.3)
        attn.layer_norm.weight.add_(1.0)
    return attn.eval()


def table(r_len: int, clamp_len: int = -1) -> Tensor:
    pos_seq = torch.arange(r_len - 1, -1, -1.0)
    if clamp_len > 0:
        pos_seq = pos_seq.clamp(max=clamp_len)
    return PositionalEmbedding(D)(pos_seq)  # [R, D]


def gather_inputs(attn, key_pos, query_pos, clamp_len=-1):
    kp, qp = torch.tensor(key_pos), torch.tensor(query_pos)
    r_len = qp.max().item() - kp.min().item() + 1
    if attn.positions == "segment_end":
        qp = qp[-1:]
    index = position_rows(relative_distances(qp, kp, clamp_len), r_len)
    return table(r_len, clamp_len), index


@pytest.mark.parametrize("pre_lnorm", [False, True])
@pytest.mark.parametrize("positions", ["relative", "segment_end"])
@pytest.mark.parametrize(("mlen", "clamp_len", "same_length"), [(0, -1, False), (4, -1, False), (4, 3, True)])
def test_contiguous_attention_matches_naive(pre_lnorm, positions, mlen, clamp_len, same_length) -> None:
    attn = make(pre_lnorm, positions)
    qlen, bsz = 3, 2
    x, mem = torch.randn(bsz, qlen, D), torch.randn(bsz, mlen, D)
    u, v = torch.randn(H, DH), torch.randn(H, DH)
    mask = attention_mask(qlen, mlen, same_length, mem_len=mlen)
    out = attn(x, mem, table(mlen + qlen, clamp_len), u, v, mask)
    positions_ = list(range(mlen + qlen))
    ref = naive_attention(attn, x, mem, u, v, positions_, positions_[mlen:], mask, clamp_len)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("positions", ["relative", "segment_end"])
@pytest.mark.parametrize("clamp_len", [-1, 5])
def test_gather_path_equals_rel_shift_path_on_contiguous_positions(positions, clamp_len) -> None:
    attn = make(positions=positions)
    mlen, qlen = 5, 4
    x, mem = torch.randn(2, qlen, D), torch.randn(2, mlen, D)
    u, v = torch.randn(H, DH), torch.randn(H, DH)
    mask = attention_mask(qlen, mlen, False, mlen)
    fast = attn(x, mem, table(mlen + qlen, clamp_len), u, v, mask)
    r, index = gather_inputs(
        attn, list(range(20, 20 + mlen + qlen)), list(range(20 + mlen, 20 + mlen + qlen)), clamp_len
    )
    assert r.size(0) == mlen + qlen
    slow = attn(x, mem, r, u, v, mask, pos_index=index)
    assert torch.equal(fast, slow)


@pytest.mark.parametrize("positions", ["relative", "segment_end"])
@pytest.mark.parametrize("clamp_len", [-1, 9])
def test_retained_memory_uses_true_distances(positions, clamp_len) -> None:
    attn = make(positions=positions, seed=3)
    # A retained memory: slots 2..5 (skipped twice since), a gap, then the segment at 14..16.
    key_pos = [2, 3, 4, 5, 14, 15, 16]
    query_pos = [14, 15, 16]
    x, mem = torch.randn(2, 3, D), torch.randn(2, 4, D)
    u, v = torch.randn(H, DH), torch.randn(H, DH)
    mask = attention_mask(3, 4, False, 4)
    r, index = gather_inputs(attn, key_pos, query_pos, clamp_len)
    out = attn(x, mem, r, u, v, mask, pos_index=index)
    ref = naive_attention(attn, x, mem, u, v, key_pos, query_pos, mask, clamp_len)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    # ... and differs from pretending the memory were contiguous.
    pretend = attn(x, mem, table(7, clamp_len), u, v, mask)
    assert not torch.allclose(out, pretend, atol=1e-4)


def permuted_heads_copy(attn: RelPartialLearnableAttention, index: list[int], parts=("k", "v", "r")):
    """A copy whose key / value / positional-key projections of head i are head index[i]'s."""
    other = make(attn.pre_lnorm, attn.positions)
    other.load_state_dict(attn.state_dict())
    rows = torch.cat([torch.arange(h * DH, (h + 1) * DH) for h in index])
    with torch.no_grad():
        wq, wk, wv = attn.qkv_net.weight.chunk(3, 0)
        new_k = wk[rows] if "k" in parts else wk
        new_v = wv[rows] if "v" in parts else wv
        other.qkv_net.weight.copy_(torch.cat([wq, new_k, new_v]))
        if "r" in parts:
            other.r_net.weight.copy_(attn.r_net.weight[rows])
    return other


@pytest.mark.parametrize("mode", ["permutation", "per_head"])
def test_cross_head_query_head_reads_the_indexed_head(mode: str) -> None:
    attn = make(seed=1)
    g = torch.Generator().manual_seed(0)
    index = draw_head_index(H, CrossHeadConfig(beta=1.0, mode=mode), g)
    while index.tolist() == list(range(H)):  # permutation mode may draw the identity
        index = draw_head_index(H, CrossHeadConfig(beta=1.0, mode=mode), g)
    if mode == "per_head":
        assert all(index[i] != i for i in range(H))  # every head reads another head
    else:
        assert sorted(index.tolist()) == list(range(H))
    x, mem = torch.randn(2, 3, D), torch.randn(2, 4, D)
    u, v = torch.randn(H, DH), torch.randn(H, DH)
    mask = attention_mask(3, 4, False, 4)
    r = table(7)
    mixed = attn(x, mem, r, u, v, mask, head_index=index)
    # Same as a model whose K, V and R projections of head i are those of head index[i]
    # (u and v stay with the query head).
    expected = permuted_heads_copy(attn, index.tolist())(x, mem, r, u, v, mask)
    torch.testing.assert_close(mixed, expected, rtol=1e-5, atol=1e-6)
    ref = naive_attention(attn, x, mem, u, v, list(range(7)), [4, 5, 6], mask, head_index=index.tolist())
    torch.testing.assert_close(mixed, ref, rtol=1e-5, atol=1e-5)
    # Leaving out any one of K, V or R gives a different result: all three are mixed.
    for parts in (("v", "r"), ("k", "r"), ("k", "v")):
        partial = permuted_heads_copy(attn, index.tolist(), parts)(x, mem, r, u, v, mask)
        assert not torch.allclose(mixed, partial, atol=1e-4)


def test_cross_head_values_identify_their_head() -> None:
    """V of head h is the constant h+1: the attention vector of query head i is index[i]+1."""
    attn = make(seed=2)
    with torch.no_grad():
        wv = torch.zeros(H * DH, D)
        for h in range(H):
            wv[h * DH : (h + 1) * DH, 0] = h + 1.0
        attn.qkv_net.weight[2 * H * DH :] = wv
    x = torch.randn(2, 3, D)
    x[..., 0] = 1.0  # the constant feature that V reads
    mem = torch.randn(2, 2, D)
    mem[..., 0] = 1.0
    captured = {}
    attn.o_net.register_forward_hook(lambda m, inp, out: captured.update(vec=inp[0]))
    u, v = torch.randn(H, DH), torch.randn(H, DH)
    for index in ([2, 0, 1], [1, 2, 0], None):
        idx = None if index is None else torch.tensor(index)
        attn(x, mem, table(5), u, v, attention_mask(3, 2, False, 2), head_index=idx)
        vec = captured["vec"].view(2, 3, H, DH)
        src = list(range(H)) if index is None else index
        for h in range(H):
            torch.testing.assert_close(vec[:, :, h], torch.full((2, 3, DH), src[h] + 1.0))
