"""Converter from the original Transformer-XL, and NLL parity with a naive re-implementation.

The reference below re-implements the original ``MemTransformerLM`` forward (attn_type 0)
from its description: time-major ``[T, B, D]`` tensors, the original parameter names, its
rel-shift (zero column then view), ``_update_mems`` over ``n_layer + 1`` hidden states,
and its projected adaptive softmax (tail cluster i reads head column -i), per-token NLL
in token order (the original's ``keep_order=True``).
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor

from skipxl.convert import config_from_original, from_original, original_hparams, to_original
from skipxl.errors import SkipxlError
from skipxl.model import SkipRetainConfig, TransformerXL

torch.set_num_threads(1)


# ---------------------------------------------------------------- original-layout weights
def original_state_dict(hp: dict, seed: int = 0) -> dict[str, Tensor]:
    """Random weights under the original's names and shapes, tied as its constructor ties."""
    g = torch.Generator().manual_seed(seed)

    def rnd(*shape: int, mean: float = 0.0, std: float = 0.2) -> Tensor:
        return mean + std * torch.randn(*shape, generator=g)

    n_token, d_model, h, dh = hp["n_token"], hp["d_model"], hp["n_head"], hp["d_head"]
    d_embed = hp.get("d_embed") or d_model
    cutoffs, div_val = list(hp.get("cutoffs", [])), hp.get("div_val", 1)
    ends = [0, *cutoffs, n_token]
    sd: dict[str, Tensor] = {}
    if div_val == 1:
        sd["word_emb.emb_layers.0.weight"] = rnd(n_token, d_embed, std=0.5)
        if d_model != d_embed:
            sd["word_emb.emb_projs.0"] = rnd(d_model, d_embed, std=0.3)
    else:
        for i in range(len(ends) - 1):
            d_i = d_embed // div_val**i
            sd[f"word_emb.emb_layers.{i}.weight"] = rnd(ends[i + 1] - ends[i], d_i, std=0.5)
            sd[f"word_emb.emb_projs.{i}"] = rnd(d_model, d_i, std=0.3)
    for layer in range(hp["n_layer"]):
        p = f"layers.{layer}."
        sd[p + "dec_attn.qkv_net.weight"] = rnd(3 * h * dh, d_model)
        sd[p + "dec_attn.o_net.weight"] = rnd(d_model, h * dh)
        sd[p + "dec_attn.layer_norm.weight"] = rnd(d_model, mean=1.0, std=0.1)
        sd[p + "dec_attn.layer_norm.bias"] = rnd(d_model, std=0.1)
        sd[p + "dec_attn.r_net.weight"] = rnd(h * dh, d_model)
        sd[p + "pos_ff.CoreNet.0.weight"] = rnd(hp["d_inner"], d_model)
        sd[p + "pos_ff.CoreNet.0.bias"] = rnd(hp["d_inner"], std=0.1)
        sd[p + "pos_ff.CoreNet.3.weight"] = rnd(d_model, hp["d_inner"])
        sd[p + "pos_ff.CoreNet.3.bias"] = rnd(d_model, std=0.1)
        sd[p + "pos_ff.layer_norm.weight"] = rnd(d_model, mean=1.0, std=0.1)
        sd[p + "pos_ff.layer_norm.bias"] = rnd(d_model, std=0.1)
    sd["r_w_bias"], sd["r_r_bias"] = rnd(h, dh), rnd(h, dh)
    sd["pos_emb.inv_freq"] = 1 / (10000 ** (torch.arange(0.0, d_model, 2.0) / d_model))
    if cutoffs:
        sd["crit.cluster_weight"] = rnd(len(cutoffs), d_embed, std=0.5)
        sd["crit.cluster_bias"] = rnd(len(cutoffs), std=0.5)
    if div_val == 1:
        sd["crit.out_layers.0.weight"] = rnd(n_token, d_embed, std=0.5)
        sd["crit.out_layers.0.bias"] = rnd(n_token, std=0.5)
        if d_model != d_embed:
            for i in range(len(ends) - 1):
                sd[f"crit.out_projs.{i}"] = rnd(d_model, d_embed, std=0.3)
    else:
        for i in range(len(ends) - 1):
            d_i = d_embed // div_val**i
            sd[f"crit.out_layers.{i}.weight"] = rnd(ends[i + 1] - ends[i], d_i, std=0.5)
            sd[f"crit.out_layers.{i}.bias"] = rnd(ends[i + 1] - ends[i], std=0.5)
            sd[f"crit.out_projs.{i}"] = rnd(d_model, d_i, std=0.3)
    if hp.get("tie_weight", True):
        for i in range(1 if div_val == 1 else len(ends) - 1):
            sd[f"crit.out_layers.{i}.weight"] = sd[f"word_emb.emb_layers.{i}.weight"]
    for i, tie in enumerate(hp.get("tie_projs", [False])):
        if tie and div_val == 1 and d_model != d_embed:
            sd[f"crit.out_projs.{i}"] = sd["word_emb.emb_projs.0"]
        elif tie and div_val != 1:
            sd[f"crit.out_projs.{i}"] = sd[f"word_emb.emb_projs.{i}"]
    return sd


# ---------------------------------------------------------------- naive original forward
def ref_embedding(sd: dict, hp: dict, inp: Tensor) -> Tensor:
    d_model = hp["d_model"]
    d_embed = hp.get("d_embed") or d_model
    cutoffs, div_val = list(hp.get("cutoffs", [])), hp.get("div_val", 1)
    if div_val == 1:
        emb = sd["word_emb.emb_layers.0.weight"][inp]
        if d_model != d_embed:
            emb = F.linear(emb, sd["word_emb.emb_projs.0"])
    else:
        flat = inp.reshape(-1)
        emb = torch.zeros(flat.numel(), d_model)
        ends = [0, *cutoffs, hp["n_token"]]
        for i in range(len(ends) - 1):
            idx = ((flat >= ends[i]) & (flat < ends[i + 1])).nonzero().squeeze(1)
            if idx.numel() == 0:
                continue
            e = sd[f"word_emb.emb_layers.{i}.weight"][flat[idx] - ends[i]]
            emb.index_copy_(0, idx, F.linear(e, sd[f"word_emb.emb_projs.{i}"]))
        emb = emb.view(*inp.shape, d_model)
    return emb * d_model**0.5


def ref_rel_shift(x: Tensor) -> Tensor:
    """The original's shift on [qlen, klen, B, H]: zero column on dim 1, re-view, drop a row."""
    zero_pad = torch.zeros((x.size(0), 1, *x.size()[2:]))
    padded = torch.cat([zero_pad, x], dim=1).view(x.size(1) + 1, x.size(0), *x.size()[2:])
    return padded[1:].view_as(x)


def ref_layer(sd: dict, hp: dict, i: int, w: Tensor, r: Tensor, mask: Tensor, mem: Tensor) -> Tensor:
    p = f"layers.{i}."
    h, dh, pre = hp["n_head"], hp["d_head"], hp.get("pre_lnorm", False)
    ln1 = (sd[p + "dec_attn.layer_norm.weight"], sd[p + "dec_attn.layer_norm.bias"])
    qlen, bsz = w.shape[:2]
    cat = torch.cat([mem, w], 0) if mem.numel() else w
    x = F.layer_norm(cat, (w.size(-1),), *ln1) if pre else cat
    heads = F.linear(x, sd[p + "dec_attn.qkv_net.weight"])
    q, k, v = torch.chunk(heads, 3, dim=-1)
    q = q[-qlen:]
    klen = k.size(0)
    q = q.view(qlen, bsz, h, dh)
    k = k.view(klen, bsz, h, dh)
    v = v.view(klen, bsz, h, dh)
    r_k = F.linear(r, sd[p + "dec_attn.r_net.weight"]).view(r.size(0), h, dh)
    ac = torch.einsum("ibnd,jbnd->ijbn", q + sd["r_w_bias"], k)
    bd = ref_rel_shift(torch.einsum("ibnd,jnd->ijbn", q + sd["r_r_bias"], r_k))
    score = (ac + bd) * (1 / math.sqrt(dh))
    score = score.masked_fill(mask[:, :, None, None], float("-inf"))
    prob = F.softmax(score, dim=1)
    vec = torch.einsum("ijbn,jbnd->ibnd", prob, v).reshape(qlen, bsz, h * dh)
    out = F.linear(vec, sd[p + "dec_attn.o_net.weight"])
    out = w + out if pre else F.layer_norm(w + out, (w.size(-1),), *ln1)
    ln2 = (sd[p + "pos_ff.layer_norm.weight"], sd[p + "pos_ff.layer_norm.bias"])
    inner = out if not pre else F.layer_norm(out, (w.size(-1),), *ln2)
    core = F.relu(F.linear(inner, sd[p + "pos_ff.CoreNet.0.weight"], sd[p + "pos_ff.CoreNet.0.bias"]))
    core = F.linear(core, sd[p + "pos_ff.CoreNet.3.weight"], sd[p + "pos_ff.CoreNet.3.bias"])
    return out + core if pre else F.layer_norm(out + core, (w.size(-1),), *ln2)


def ref_crit(sd: dict, hp: dict, hidden: Tensor, target: Tensor) -> Tensor:
    d_model = hp["d_model"]
    d_embed = hp.get("d_embed") or d_model
    cutoffs, div_val = list(hp.get("cutoffs", [])), hp.get("div_val", 1)
    ends = [0, *cutoffs, hp["n_token"]]

    def proj(i: int) -> Tensor | None:
        if div_val == 1 and d_model == d_embed:
            return None
        return sd[f"crit.out_projs.{i}"]

    def logit(x: Tensor, weight: Tensor, bias: Tensor, pr: Tensor | None) -> Tensor:
        if pr is not None:
            x = F.linear(x, pr.t().contiguous())
        return F.linear(x, weight, bias=bias)

    weights, biases = [], []
    for i in range(len(ends) - 1):
        if div_val == 1:
            wi = sd["crit.out_layers.0.weight"][ends[i] : ends[i + 1]]
            bi = sd["crit.out_layers.0.bias"][ends[i] : ends[i + 1]]
        else:
            wi, bi = sd[f"crit.out_layers.{i}.weight"], sd[f"crit.out_layers.{i}.bias"]
        if i == 0 and cutoffs:
            wi = torch.cat([wi, sd["crit.cluster_weight"]], 0)
            bi = torch.cat([bi, sd["crit.cluster_bias"]], 0)
        weights.append(wi)
        biases.append(bi)
    head_lp = F.log_softmax(logit(hidden, weights[0], biases[0], proj(0)), dim=1)
    if not cutoffs:
        return -head_lp.gather(1, target[:, None]).squeeze(1)
    nll = torch.zeros(target.numel())
    for i in range(len(ends) - 1):
        idx = ((target >= ends[i]) & (target < ends[i + 1])).nonzero().squeeze(1)
        if idx.numel() == 0:
            continue
        t_i = target[idx] - ends[i]
        if i == 0:
            lp = head_lp[idx].gather(1, t_i[:, None]).squeeze(1)
        else:
            tail = F.log_softmax(logit(hidden[idx], weights[i], biases[i], proj(i)), dim=1)
            lp = head_lp[idx][:, -i] + tail.gather(1, t_i[:, None]).squeeze(1)
        nll.index_copy_(0, idx, -lp)
    return nll


def ref_forward(sd: dict, hp: dict, data: Tensor, target: Tensor, mems: list[Tensor] | None):
    """data, target: [T, B] (time-major). Returns (nll [T, B], new mems: n_layer + 1 tensors)."""
    qlen, bsz = data.shape
    n_layer, mem_len = hp["n_layer"], hp["mem_len"]
    if mems is None:
        mems = [torch.empty(0) for _ in range(n_layer + 1)]
    word_emb = ref_embedding(sd, hp, data)
    mlen = mems[0].size(0) if mems[0].numel() else 0
    klen = mlen + qlen
    ones = torch.ones(qlen, klen)
    if hp.get("same_length", False):
        mask_len = klen - mem_len
        shift = qlen - mask_len if mask_len > 0 else qlen
        mask = (torch.triu(ones, 1 + mlen) + torch.tril(ones, -shift)).bool()
    else:
        mask = torch.triu(ones, diagonal=1 + mlen).bool()
    pos_seq = torch.arange(klen - 1, -1, -1.0)
    if hp.get("clamp_len", -1) > 0:
        pos_seq.clamp_(max=hp["clamp_len"])
    sinusoid = torch.ger(pos_seq, sd["pos_emb.inv_freq"])
    r = torch.cat([sinusoid.sin(), sinusoid.cos()], dim=-1)  # [klen, D]
    core = word_emb
    hids = [core]
    for i in range(n_layer):
        core = ref_layer(sd, hp, i, core, r, mask, mems[i])
        hids.append(core)
    end = mlen + max(0, qlen - hp.get("ext_len", 0))
    beg = max(0, end - mem_len)
    new_mems = [
        torch.cat([m, hh], 0)[beg:end] if m.numel() else hh[beg:end] for m, hh in zip(mems, hids, strict=True)
    ]
    nll = ref_crit(sd, hp, core.reshape(-1, core.size(-1)), target.reshape(-1))
    return nll.view(qlen, bsz), new_mems


# ---------------------------------------------------------------- tests
COMMON = dict(n_layer=3, n_head=2, d_model=16, d_head=8, d_inner=24, dropout=0.1, dropatt=0.1)
CONFIGS = {
    "plain_softmax": dict(n_token=40, tgt_len=5, mem_len=7),
    "adaptive_div1_tied_proj": dict(
        n_token=60, tgt_len=5, mem_len=5, cutoffs=[10, 30], d_embed=12, tie_projs=[False, True, True]
    ),
    "adaptive_div1_untied_noproj": dict(n_token=60, tgt_len=4, mem_len=6, cutoffs=[20], tie_weight=False),
    "adaptive_div2_untied": dict(
        n_token=60, tgt_len=5, mem_len=4, cutoffs=[10, 30, 45], div_val=2,
        tie_weight=False, tie_projs=[False] * 4,
    ),
    "adaptive_div2_tied_prelnorm_samelen_clamp": dict(
        n_token=60, tgt_len=5, mem_len=6, cutoffs=[10, 30], div_val=2, d_embed=16,
        tie_projs=[False, True, True], pre_lnorm=True, same_length=True, clamp_len=6,
    ),
}  # fmt: skip


@pytest.mark.parametrize("name", list(CONFIGS))
def test_parity_with_naive_original_over_three_segments(name: str) -> None:
    hp = {**COMMON, **CONFIGS[name]}
    sd = original_state_dict(hp)
    model = from_original(sd, **hp).eval()
    bsz, seg = 3, hp["tgt_len"]
    data = torch.randint(0, hp["n_token"], (bsz, 3 * seg + 1), generator=torch.Generator().manual_seed(9))
    mems, ref_mems = None, None
    for s in range(3):
        inp, tgt = data[:, s * seg : (s + 1) * seg], data[:, s * seg + 1 : (s + 1) * seg + 1]
        out = model(inp, tgt, mems=mems)
        ref_nll, ref_mems = ref_forward(sd, hp, inp.T, tgt.T, ref_mems)
        torch.testing.assert_close(out.nll, ref_nll.T, rtol=1e-5, atol=1e-5)
        for layer in range(hp["n_layer"]):  # our memory = the original's first n_layer mems
            torch.testing.assert_close(
                out.mems.states[layer], ref_mems[layer].transpose(0, 1), rtol=1e-5, atol=1e-5
            )
        mems = out.mems


@pytest.mark.parametrize("name", list(CONFIGS))
def test_round_trip_original_state_dict(name: str) -> None:
    hp = {**COMMON, **CONFIGS[name]}
    sd = original_state_dict(hp, seed=3)
    model = from_original(sd, **hp)
    back = to_original(model)
    assert set(back) == set(sd)
    for k, v in sd.items():
        assert torch.equal(back[k], v), k
    again = from_original(back, **original_hparams(model.cfg))
    for (ka, a), (kb, b) in zip(model.state_dict().items(), again.state_dict().items(), strict=True):
        assert ka == kb and torch.equal(a, b)
    assert config_from_original(**original_hparams(model.cfg)) == model.cfg


def test_module_prefix_and_extra_fields() -> None:
    hp = {**COMMON, **CONFIGS["plain_softmax"]}
    sd = {"module." + k: v for k, v in original_state_dict(hp).items()}
    model = from_original(sd, extra={"skip": SkipRetainConfig()}, **hp)
    assert isinstance(model, TransformerXL) and model.cfg.skip == SkipRetainConfig()


def test_validation_lists_every_problem() -> None:
    hp = {**COMMON, **CONFIGS["adaptive_div2_untied"]}
    sd = original_state_dict(hp)
    del sd["layers.1.dec_attn.r_net.weight"]
    sd["layers.0.pos_ff.CoreNet.0.weight"] = torch.zeros(5, 16)
    sd["layers.9.extra.weight"] = torch.zeros(1)
    with pytest.raises(SkipxlError) as err:
        from_original(sd, **hp)
    msg = str(err.value)
    assert "missing keys ['layers.1.dec_attn.r_net.weight']" in msg
    assert "unexpected keys ['layers.9.extra.weight']" in msg
    assert "layers.0.pos_ff.CoreNet.0.weight: checkpoint (5, 16) vs model (24, 16)" in msg


def test_tied_flags_must_match_the_checkpoint() -> None:
    hp = {**COMMON, **CONFIGS["adaptive_div2_untied"]}
    sd = original_state_dict(hp)
    with pytest.raises(SkipxlError, match="tied in this configuration but differ"):
        from_original(sd, **{**hp, "tie_weight": True})


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (dict(attn_type=1), "attn_type=1 is not supported"),
        (dict(sample_softmax=1000), "sampled softmax"),
        (dict(mem_len=None), "tgt_len and mem_len are required"),
        (dict(n_layers=3), "unknown Transformer-XL hyper-parameter"),
    ],
)
def test_unsupported_options_are_refused(change: dict, message: str) -> None:
    hp = {**COMMON, **CONFIGS["plain_softmax"], **change}
    with pytest.raises(SkipxlError, match=message):
        from_original({}, **hp)
    with pytest.raises(SkipxlError, match="missing Transformer-XL hyper-parameter"):
        from_original({}, n_token=5)
