#!/usr/bin/env python
"""Training throughput, peak memory and MFU of the attention kernels, side by side in one run.

Every (shape, attn_impl, compile, dtype) cell trains the same model (same init, same
synthetic Zipf-like token stream, plain Adam, memory carried across steps) in its own
process, so its peak memory is its own; the cells are run ``--repeats`` times *interleaved*
(cell A, B, C, A, B, C, ...) and the table shows medians, so that load from other processes
on a shared machine hits every cell alike. Ratios are against the eager fp32 cell without
compile of the same shape, measured in the same run.

    python tools/bench_fast.py                                    # CPU: tiny, wt103_base, nvidia_base
    python tools/bench_fast.py --shapes wt103_base --repeats 5 --impls eager,sdpa
    python tools/bench_fast.py --shapes nvidia_base --dtypes bf16 --compile none,layers   # on a GPU

FLOPs per step come from :func:`skipxl.model.flops.segment_flops` (the explicit count, equal
to ``FlopCounterMode``; ``docs/PERFORMANCE.md``) with each step's real memory lengths and
adaptive-softmax cluster counts; MFU = FLOP/s over the device's datasheet peak (CUDA only).
Peak memory: ``torch.cuda.max_memory_allocated`` on a GPU; on the CPU the process RSS
high-water minus the RSS after imports (so the interpreter and torch are not counted).
FlexAttention has no backward on the CPU, so its training cells exist on CUDA only.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from contextlib import nullcontext
from pathlib import Path

from bench_common import zipf_tokens

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

# name: (preset, overrides, CPU batch, CUDA batch)
SHAPES = {
    "tiny": ("tiny", dict(n_token=10_000), 16, 64),
    "wt103_base": ("wt103_base", {}, 2, 16),
    # NVIDIA DeepLearningExamples Transformer-XL base (PyTorch, WikiText-103): 16 layers, d_model 512,
    # 8 heads of 64, d_inner 2048, tgt_len = mem_len = 192, batch 32 per GPU, cutoffs 19997/39997/199997.
    "nvidia_base": (
        "wt103_base",
        dict(
            d_model=512,
            n_head=8,
            d_head=64,
            d_inner=2048,
            tgt_len=192,
            mem_len=192,
            cutoffs=(19997, 39997, 199997),
        ),
        1,
        32,
    ),
}


def worker(args: argparse.Namespace) -> dict:
    """One cell (runs in its own process)."""
    import torch

    from skipxl.model import TransformerXL, get_preset
    from skipxl.model.compile import compile_model
    from skipxl.model.flops import peak_flops, segment_flops

    if args.threads:
        torch.set_num_threads(args.threads)
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # MiB after imports
    cuda = args.device == "cuda"
    device = torch.device(args.device)
    preset, overrides, cpu_batch, gpu_batch = SHAPES[args.shape]
    batch = args.batch or (gpu_batch if cuda else cpu_batch)
    if args.tgt_len:
        overrides = {**overrides, "tgt_len": args.tgt_len, "mem_len": args.tgt_len}
    cfg = get_preset(preset, **overrides, attn_impl=args.impl)
    tgt = cfg.tgt_len
    steps = args.warmup + args.steps
    data = torch.from_numpy(zipf_tokens(cfg.n_token, batch * (tgt * steps + 1))).view(batch, -1)
    torch.manual_seed(0)
    model = TransformerXL(cfg).to(device).train()
    compile_model(model, args.compile)
    opt = torch.optim.Adam(model.parameters(), lr=2.5e-4)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16) if args.dtype == "bf16" else nullcontext()
    if cuda:
        torch.backends.cuda.matmul.allow_tf32 = args.dtype == "fp32" and args.tf32
        torch.cuda.reset_peak_memory_stats()

    def sync() -> None:
        if cuda:
            torch.cuda.synchronize()

    mems, times, flops, warm_seconds = None, [], [], 0.0
    cutoffs = torch.tensor(cfg.cutoffs, dtype=torch.long)
    for i in range(steps):
        x = data[:, i * tgt : (i + 1) * tgt].to(device)
        y = data[:, i * tgt + 1 : (i + 1) * tgt + 1]
        mlens = [0] * cfg.n_layer if mems is None else [mems.mlen(j) for j in range(cfg.n_layer)]
        cluster = torch.bucketize(y.reshape(-1), cutoffs, right=True)  # host-side, not timed
        counts = torch.bincount(cluster, minlength=len(cfg.cutoffs) + 1).tolist()
        y = y.to(device)
        sync()
        start = time.perf_counter()
        with autocast:
            out = model(x, y, mems=mems)
        out.loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        sync()
        seconds = time.perf_counter() - start
        mems = out.mems
        if i < args.warmup:
            warm_seconds += seconds
        else:
            times.append(seconds)
            flops.append(segment_flops(cfg, batch, tgt, mlens, counts).training)
    median = statistics.median(times)
    step_flops = statistics.mean(flops)
    if cuda:
        peak = torch.cuda.max_memory_allocated() / 2**20
        name = torch.cuda.get_device_name()
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 - rss0
        name = "cpu"
    peak_dev = peak_flops(name, "bf16" if args.dtype == "bf16" else "fp32") if cuda else None
    achieved = step_flops / median
    return {
        "shape": args.shape,
        "impl": args.impl,
        "compile": args.compile,
        "dtype": args.dtype,
        "batch": batch,
        "tgt_len": tgt,
        "params_M": round(model.num_parameters() / 1e6, 1),
        "tokens_per_s": batch * tgt / median,
        "s_per_step": median,
        "warmup_s": warm_seconds,  # includes compilation
        "peak_MiB": peak,
        "gflop_per_token": step_flops / (batch * tgt) / 1e9,
        "tflop_per_s": achieved / 1e12,
        "mfu": None if peak_dev is None else achieved / peak_dev,
        "device": name,
        "threads": torch.get_num_threads(),
        "loss": float(out.loss),
    }


def cells(args: argparse.Namespace, cuda: bool) -> list[tuple[str, str, str, str]]:
    out = []
    if args.cells:  # explicit impl:compile:dtype cells for every shape
        for shape in args.shapes.split(","):
            for cell in args.cells.split(","):
                impl, comp, dtype = cell.split(":")
                if impl != "flex" or cuda:
                    out.append((shape, impl, comp, dtype))
        return out
    for shape in args.shapes.split(","):
        for impl in args.impls.split(","):
            if impl == "flex" and not cuda:
                continue  # no CPU backward for FlexAttention in this torch
            for comp in args.compile.split(","):
                for dtype in args.dtypes.split(","):
                    out.append((shape, impl, comp, dtype))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--shapes", default="tiny,wt103_base,nvidia_base")
    parser.add_argument("--impls", default="eager,sdpa,flex", help="flex is skipped on the CPU (no backward)")
    parser.add_argument("--compile", default="none", help="comma list of none,layers")
    parser.add_argument("--dtypes", default="fp32", help="comma list of fp32,bf16 (bf16 = autocast)")
    parser.add_argument("--cells", default=None, help="instead of the product: impl:compile:dtype,...")
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    parser.add_argument("--steps", type=int, default=3, help="timed steps per cell")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps (memory fills; compiles)")
    parser.add_argument("--repeats", type=int, default=3, help="interleaved repeats per cell (median)")
    parser.add_argument("--batch", type=int, default=None)
    parser.add_argument("--tgt-len", dest="tgt_len", type=int, default=None, help="also sets mem_len")
    parser.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: default)")
    parser.add_argument("--tf32", action="store_true", help="allow TF32 matmuls in fp32 cells (CUDA)")
    parser.add_argument("--json", default=None, help="also write every measurement to this file")
    parser.add_argument("--markdown", default=None, help="also write the table to this file")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--shape", help=argparse.SUPPRESS)
    parser.add_argument("--impl", help=argparse.SUPPRESS)
    parser.add_argument("--dtype", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print("RESULT " + json.dumps(worker(args)))
        return

    import torch

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    todo = cells(args, device == "cuda")
    rows: list[dict] = []
    for rep in range(args.repeats):
        for shape, impl, comp, dtype in todo:
            cmd = [sys.executable, __file__, "--worker", "--shape", shape, "--impl", impl, "--compile", comp]
            cmd += ["--dtype", dtype, "--device", device, "--steps", str(args.steps)]
            cmd += ["--warmup", str(args.warmup), "--threads", str(args.threads)]
            cmd += ["--batch", str(args.batch)] if args.batch else []
            cmd += ["--tgt-len", str(args.tgt_len)] if args.tgt_len else []
            cmd += ["--tf32"] if args.tf32 else []
            proc = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ), check=False)
            lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
            if proc.returncode or not lines:
                sys.exit(f"{shape}/{impl}/{comp}/{dtype} failed:\n{proc.stderr[-3000:]}")
            row = json.loads(lines[-1][7:])
            row["repeat"] = rep
            rows.append(row)
            print(
                f"[{rep}] {shape:>11} {impl:>5} {comp:>6} {dtype}: {row['tokens_per_s']:9.0f} tok/s, "
                f"peak {row['peak_MiB']:7.0f} MiB",
                file=sys.stderr,
            )
    table = render(rows, todo)
    print(table)
    if args.markdown:
        Path(args.markdown).write_text(table + "\n")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))


def render(rows: list[dict], todo: list[tuple[str, str, str, str]]) -> str:
    """Markdown table of medians over repeats, with ratios to the eager cell without compile of the
    same shape and dtype."""

    def med(cell: tuple[str, str, str, str], key: str) -> float:
        vals = [r[key] for r in rows if (r["shape"], r["impl"], r["compile"], r["dtype"]) == cell]
        return statistics.median(vals)

    first = rows[0]
    lines = [
        f"device: {first['device']}, torch threads: {first['threads']}, repeats: "
        f"{1 + max(r['repeat'] for r in rows)} (interleaved; medians)",
        "",
        "| shape | params | batch x tgt | attn_impl | compile | dtype | tokens/s | vs eager | peak MiB "
        "| vs eager | GFLOP/token | TFLOP/s | MFU |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for cell in todo:
        shape = cell[0]
        ref = (shape, "eager", "none", cell[3])
        row = next(r for r in rows if (r["shape"], r["impl"], r["compile"], r["dtype"]) == cell)
        tps, peak = med(cell, "tokens_per_s"), med(cell, "peak_MiB")
        has_ref = ref in todo
        speed = f"{tps / med(ref, 'tokens_per_s'):.2f}x" if has_ref else "-"
        mem = f"{peak / med(ref, 'peak_MiB'):.2f}x" if has_ref and med(ref, "peak_MiB") > 0 else "-"
        mfu = "-" if row["mfu"] is None else f"{100 * med(cell, 'mfu'):.1f}%"
        lines.append(
            f"| {shape} | {row['params_M']}M | {row['batch']}x{row['tgt_len']} | {cell[1]} | {cell[2]} "
            f"| {cell[3]} | {tps:,.0f} | {speed} | {peak:,.0f} | {mem} | {row['gflop_per_token']:.3f} "
            f"| {med(cell, 'tflop_per_s'):.3f} | {mfu} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
