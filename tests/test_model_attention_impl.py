"""The fused attention kernels (``attn_impl`` "sdpa", "flex") compute the eager reference's numbers.

Layer level: every position path (rel-shift, true-distance gather, segment_end contiguous and
retained), ``same_length``, ``clamp_len``, memory empty / shorter / longer than the segment,
pre/post LayerNorm and a cross-head index; outputs and gradients (input, memory-free params,
u and v) to 1e-5. Model level: the four variants over several training steps with a growing
and retained memory, then the evaluation protocol (other tgt_len / mem_len, clamp, same_length).
FlexAttention has no backward on the CPU in this torch: forward here, backward under
``pytest -m cuda``.
"""

from __future__ import annotations

import pytest
import torch
from torch import Tensor

from skipxl.errors import SkipxlError
from skipxl.model import CrossHeadConfig, ModelConfig, SkipRetainConfig, TransformerXL, get_preset
from skipxl.model.attention import PositionalEmbedding, RelPartialLearnableAttention
from skipxl.model.context import Context
from skipxl.model.functional import (
    attention_mask,
    draw_skip_mask,
    position_rows,
    relative_distances,
    skip_probabilities,
)
from skipxl.model.heads import draw_head_indices
from skipxl.model.transformer_xl import StepPlan

#: The evaluation protocol of these tests: shorter segments, longer memory, clamp, same_length.
EVAL_CONTEXT = Context(tgt_len=3, mem_len=11, clamp_len=6, same_length=True)


def next_plan(model: TransformerXL, gen: torch.Generator) -> StepPlan:
    """One training step's plan, drawn as the engine's policies draw it (the model draws nothing)."""
    cfg = model.cfg
    skip = draw_skip_mask(skip_probabilities(cfg.skip, cfg.n_layer), gen) if cfg.skip else None
    heads = draw_head_indices(cfg.n_layer, cfg.n_head, cfg.cross_head, gen) if cfg.cross_head else None
    return StepPlan(skip=skip, head_index=heads)


torch.set_num_threads(1)
H, DH, D = 3, 5, 12  # d_head 5: the scale 1/sqrt(5) is not a power of two (no lucky exact rounding)
TOL = dict(rtol=1e-5, atol=1e-5)
CUDA = torch.cuda.is_available()
needs_cuda = pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU (run under tools/gpu_check.sh)")
pytestmark = pytest.mark.filterwarnings("ignore:flex_attention called without torch.compile")


def make(impl: str, positions: str, pre_lnorm: bool, seed: int = 0) -> RelPartialLearnableAttention:
    torch.manual_seed(seed)
    attn = RelPartialLearnableAttention(H, D, DH, 0.0, 0.0, pre_lnorm, positions, attn_impl=impl)
    with torch.no_grad():
        for p in attn.parameters():
            p.normal_(0, 0.3)
        attn.layer_norm.weight.add_(1.0)
    return attn


def table(r_len: int, clamp_len: int) -> Tensor:
    pos_seq = torch.arange(r_len - 1, -1, -1.0)
    if clamp_len > 0:
        pos_seq = pos_seq.clamp(max=clamp_len)
    return PositionalEmbedding(D)(pos_seq)  # [R, D]


def layer_inputs(positions: str, path: str, mlen: int, qlen: int, clamp_len: int, same_length: bool):
    """(r, mask, pos_index) for one layer call; ``path`` "shift" (contiguous) or "gather" (retained)."""
    mask = attention_mask(qlen, mlen, same_length, mem_len=max(mlen, 1))
    if path == "shift":
        return table(mlen + qlen, clamp_len), mask, None
    # A retained memory: mlen slots ending 2*qlen steps before the segment (skipped twice).
    seg = torch.arange(100, 100 + qlen)
    key_pos = torch.cat([torch.arange(100 - 2 * qlen - mlen, 100 - 2 * qlen), seg])  # [K]
    query_pos = seg[-1:] if positions == "segment_end" else seg
    r_len = int(seg[-1] - key_pos[0]) + 1
    index = position_rows(relative_distances(query_pos, key_pos, clamp_len), r_len)
    return table(r_len, clamp_len), mask, index


def run_layer(attn, x, mem, r, u, v, mask, index, head_index, grad: bool):
    """Output and (when ``grad``) the gradients of x, every parameter, u and v."""
    x, u, v = (t.detach().clone().requires_grad_(grad) for t in (x, u, v))
    attn.zero_grad(set_to_none=True)
    with torch.set_grad_enabled(grad):
        out = attn(x, mem, r, u, v, mask, index, head_index)
    if not grad:
        return out, []
    (out * torch.linspace(-1, 1, out.numel()).view_as(out)).sum().backward()
    return out, [x.grad, u.grad, v.grad, *(p.grad for p in attn.parameters())]


CASES = [
    # positions, path, mlen, qlen, clamp_len, same_length
    ("relative", "shift", 0, 4, -1, False),  # no memory
    ("relative", "shift", 2, 4, -1, False),  # memory shorter than the segment
    ("relative", "shift", 7, 4, -1, False),  # memory longer than the segment
    ("relative", "shift", 7, 4, 3, True),  # clamp_len and same_length
    ("relative", "gather", 3, 4, -1, False),  # retained Skip-Retain memory: true distances
    ("relative", "gather", 6, 3, 8, True),
    ("segment_end", "shift", 0, 4, -1, False),
    ("segment_end", "shift", 6, 4, 5, True),
    ("segment_end", "gather", 3, 4, -1, False),
    ("segment_end", "gather", 6, 3, 8, True),
]


@pytest.mark.parametrize("impl", ["sdpa", "flex"])
@pytest.mark.parametrize("pre_lnorm", [False, True])
@pytest.mark.parametrize("cross_head", [False, True])
@pytest.mark.parametrize(("positions", "path", "mlen", "qlen", "clamp_len", "same_length"), CASES)
def test_fused_layer_equals_eager(
    impl, pre_lnorm, cross_head, positions, path, mlen, qlen, clamp_len, same_length
):
    eager, fused = make("eager", positions, pre_lnorm), make(impl, positions, pre_lnorm)
    fused.load_state_dict(eager.state_dict())
    torch.manual_seed(1)
    x, mem = torch.randn(2, qlen, D), torch.randn(2, mlen, D)
    u, v = torch.randn(H, DH), torch.randn(H, DH)
    r, mask, index = layer_inputs(positions, path, mlen, qlen, clamp_len, same_length)
    head_index = torch.tensor([2, 0, 1]) if cross_head else None
    grad = impl != "flex"  # FlexAttention: forward only on the CPU (backward: test_flex_backward_cuda)
    ref, ref_grads = run_layer(eager, x, mem, r, u, v, mask, index, head_index, grad)
    out, grads = run_layer(fused, x, mem, r, u, v, mask, index, head_index, grad)
    torch.testing.assert_close(out, ref, **TOL)
    assert len(grads) == len(ref_grads)
    for g, g_ref in zip(grads, ref_grads, strict=True):
        torch.testing.assert_close(g, g_ref, **TOL)


def test_flex_refuses_cpu_backward_with_one_clear_error() -> None:
    attn = make("flex", "relative", False)
    x = torch.randn(2, 3, D, requires_grad=True)
    r, mask, _ = layer_inputs("relative", "shift", 2, 3, -1, False)
    with pytest.raises(SkipxlError, match="no backward on the CPU"):
        attn(x, torch.randn(2, 2, D), r, torch.randn(H, DH), torch.randn(H, DH), mask)


def test_config_validates_attn_impl_and_refuses_dropatt_with_fused_kernels() -> None:
    base = dict(n_token=50, n_layer=2, n_head=2, d_model=8, d_head=4, d_inner=16)
    with pytest.raises(SkipxlError, match="attn_impl 'fused' is unknown"):
        ModelConfig(**base, attn_impl="fused")
    for impl in ("sdpa", "flex"):
        with pytest.raises(SkipxlError, match=r"cannot apply dropatt=0\.1 exactly"):
            ModelConfig(**base, attn_impl=impl, dropatt=0.1)
    assert ModelConfig(**base, attn_impl="eager", dropatt=0.1).attn_impl == "eager"
    assert ModelConfig.from_dict(ModelConfig(**base, attn_impl="sdpa").to_dict()).attn_impl == "sdpa"


# ----------------------------------------------------------------------------- whole model

VARIANTS = {
    "baseline": {},
    "skip_retain": dict(skip=SkipRetainConfig(schedule="constant", p=0.5, protect_ends=False)),
    "cross_head": dict(cross_head=CrossHeadConfig(beta=0.7)),
    "combined": dict(
        skip=SkipRetainConfig(schedule="constant", p=0.5, protect_ends=False),
        cross_head=CrossHeadConfig(beta=0.7, mode="per_head"),
    ),
}


def twin_models(impl: str, **kw) -> tuple[TransformerXL, TransformerXL]:
    """Eager and ``impl`` models with the same weights; d_head 6 (scale not a power of two)."""
    cfg = dict(n_token=97, d_model=24, n_head=4, d_head=6, d_inner=32, tgt_len=5, mem_len=7, dropout=0.1)
    cfg.update(kw)
    torch.manual_seed(0)
    eager = TransformerXL(get_preset("tiny", **cfg))
    fused = TransformerXL(get_preset("tiny", **cfg, attn_impl=impl))
    fused.load_state_dict(eager.state_dict())
    return eager, fused


def grads_of(model: TransformerXL) -> list[Tensor]:
    return [p.grad.clone() for p in model.parameters() if p.grad is not None]


@pytest.mark.parametrize("variant", list(VARIANTS))
@pytest.mark.parametrize("positions", ["relative", "segment_end"])
def test_sdpa_model_trains_and_evaluates_like_eager(variant: str, positions: str) -> None:
    eager, fused = twin_models("sdpa", positions=positions, **VARIANTS[variant])
    data = torch.randint(0, 97, (3, 8 * 5 + 1), generator=torch.Generator().manual_seed(2))
    mems = {"e": None, "f": None}
    n_gather = 0
    gen = torch.Generator().manual_seed(0)
    for step in range(6):  # memory grows 0 -> 5 -> 7 (longer than the segment), then is retained
        x, y = data[:, step * 5 : step * 5 + 5], data[:, step * 5 + 1 : step * 5 + 6]
        plan = next_plan(eager, gen)  # one plan for both twins
        n_gather += sum(not m.is_contiguous(i) for m in [mems["e"]] if m for i in range(m.n_layer))
        outs = {}
        for key, model in (("e", eager), ("f", fused)):
            torch.manual_seed(10 + step)  # the same dropout masks for both
            model.zero_grad(set_to_none=True)
            out = model(x, y, mems=mems[key], plan=plan)
            out.loss.backward()
            mems[key], outs[key] = out.mems, out
        torch.testing.assert_close(outs["f"].nll, outs["e"].nll, **TOL)
        for g, g_ref in zip(grads_of(fused), grads_of(eager), strict=True):
            torch.testing.assert_close(g, g_ref, **TOL)
    if variant in ("skip_retain", "combined"):
        assert n_gather > 0, "no step used the gather path: the test would not cover it"
    for model in (eager, fused):  # the evaluation protocol: shorter segments, longer memory
        model.eval()
    mems = {"e": None, "f": None}
    with torch.no_grad():
        for step in range(5):
            x, y = data[:, step * 3 : step * 3 + 3], data[:, step * 3 + 1 : step * 3 + 4]
            nll = {}
            for key, model in (("e", eager), ("f", fused)):
                out = model(x, y, mems=mems[key], context=EVAL_CONTEXT)
                mems[key], nll[key] = out.mems, out.nll
            torch.testing.assert_close(nll["f"], nll["e"], **TOL)


@pytest.mark.parametrize("variant", list(VARIANTS))
@pytest.mark.parametrize("positions", ["relative", "segment_end"])
def test_flex_model_forward_equals_eager(variant: str, positions: str) -> None:
    """Training-mode forwards (plans, retained memories) and the eval protocol, without grad."""
    eager, fused = twin_models("flex", positions=positions, dropout=0.0, **VARIANTS[variant])
    data = torch.randint(0, 97, (2, 6 * 5 + 1), generator=torch.Generator().manual_seed(3))
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for mode in ("train", "eval"):
            mems = {"e": None, "f": None}
            context = EVAL_CONTEXT if mode == "eval" else None
            for model in (eager, fused):
                model.train(mode == "train")
            tgt = 5 if mode == "train" else 3
            for step in range(5):
                x, y = data[:, step * tgt : (step + 1) * tgt], data[:, step * tgt + 1 : (step + 1) * tgt + 1]
                plan = next_plan(eager, gen) if mode == "train" else None
                nll = {}
                for key, model in (("e", eager), ("f", fused)):
                    out = model(x, y, mems=mems[key], plan=plan, context=context)
                    mems[key], nll[key] = out.mems, out.nll
                torch.testing.assert_close(nll["f"], nll["e"], **TOL)


# ----------------------------------------------------------------------------- CUDA only


@pytest.mark.cuda
@needs_cuda
@pytest.mark.parametrize("impl", ["sdpa", "flex"])
@pytest.mark.parametrize(("positions", "path", "mlen", "qlen", "clamp_len", "same_length"), CASES)
def test_fused_layer_equals_eager_cuda(impl, positions, path, mlen, qlen, clamp_len, same_length):
    """Forward and backward on the GPU (fp32; TF32 off so that 1e-5 is meaningful)."""
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    dev = torch.device("cuda")
    eager, fused = make("eager", positions, False).to(dev), make(impl, positions, False).to(dev)
    fused.load_state_dict(eager.state_dict())
    torch.manual_seed(1)
    x, mem = torch.randn(2, qlen, D, device=dev), torch.randn(2, mlen, D, device=dev)
    u, v = torch.randn(H, DH, device=dev), torch.randn(H, DH, device=dev)
    r, mask, index = layer_inputs(positions, path, mlen, qlen, clamp_len, same_length)
    r, mask = r.to(dev), mask.to(dev)
    index = None if index is None else index.to(dev)
    head_index = torch.tensor([2, 0, 1], device=dev)
    ref, ref_grads = run_layer(eager, x, mem, r, u, v, mask, index, head_index, True)
    out, grads = run_layer(fused, x, mem, r, u, v, mask, index, head_index, True)
    torch.testing.assert_close(out, ref, **TOL)
    for g, g_ref in zip(grads, ref_grads, strict=True):
        torch.testing.assert_close(g, g_ref, **TOL)


@pytest.mark.cuda
@needs_cuda
@pytest.mark.parametrize("impl", ["eager", "sdpa", "flex"])
def test_bf16_autocast_tracks_fp32_cuda(impl: str) -> None:
    """bf16 autocast (softmax, loss and position table in fp32) stays close to the fp32 loss."""
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.manual_seed(0)
    model = TransformerXL(get_preset("tiny", dropout=0.0, attn_impl=impl)).cuda().train()
    data = torch.randint(0, 256, (4, 3 * 16 + 1), device="cuda")
    losses = {}
    for dtype in ("fp32", "bf16"):
        mems, vals = None, []
        for step in range(3):
            x, y = data[:, step * 16 : step * 16 + 16], data[:, step * 16 + 1 : step * 16 + 17]
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=dtype == "bf16"):
                out = model(x, y, mems=mems)
            assert out.nll.dtype == torch.float32  # the loss is fp32 under autocast
            out.loss.backward()
            model.zero_grad(set_to_none=True)
            mems, vals = out.mems, [*vals, out.loss.item()]
        losses[dtype] = torch.tensor(vals)
    torch.testing.assert_close(losses["bf16"], losses["fp32"], rtol=2e-2, atol=2e-2)


@pytest.mark.parametrize("impl", ["eager", "sdpa"])
def test_bf16_autocast_tracks_fp32_cpu(impl: str) -> None:
    """CPU bf16 autocast: fp32 loss, and losses within 2e-2 of the fp32 run (training)."""
    torch.manual_seed(0)
    model = TransformerXL(get_preset("tiny", dropout=0.0, attn_impl=impl)).train()
    data = torch.randint(0, 256, (2, 3 * 16 + 1), generator=torch.Generator().manual_seed(4))
    losses = {}
    for dtype in ("fp32", "bf16"):
        mems, vals = None, []
        for step in range(3):
            x, y = data[:, step * 16 : step * 16 + 16], data[:, step * 16 + 1 : step * 16 + 17]
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == "bf16"):
                out = model(x, y, mems=mems)
            assert out.nll.dtype == torch.float32
            out.loss.backward()
            model.zero_grad(set_to_none=True)
            mems, vals = out.mems, [*vals, out.loss.item()]
        losses[dtype] = torch.tensor(vals)
    torch.testing.assert_close(losses["bf16"], losses["fp32"], rtol=2e-2, atol=2e-2)
