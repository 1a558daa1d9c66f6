"""Forward+backward throughput and peak memory of the skipxl Transformer-XL.

Usage::

    python tools/bench_model.py                               # tiny and wt103_base on this CPU
    python tools/bench_model.py --presets wt103_sch --batch 4 --steps 5 --variants baseline,combined
    python tools/bench_model.py --device cuda --dtype bf16 --batch 16

Each (preset, variant) runs in its own subprocess so the peak is its own: RSS high-water
(``ru_maxrss``) on the CPU, ``torch.cuda.max_memory_allocated`` on a GPU. A step is one
training segment (``tgt_len`` tokens per stream, memory carried from the previous step)
with backward; the first ``--warmup`` steps are not timed, and tokens/s comes from the
median step time (robust to other processes on a shared machine). Skip-Retain variants draw their
skip masks as in training, so their throughput includes the saved layers.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from contextlib import nullcontext

VARIANTS = ("baseline", "skip_retain", "cross_head", "combined")


def run_one(args: argparse.Namespace) -> dict:
    import torch

    from skipxl.model import CrossHeadConfig, SkipRetainConfig, TransformerXL, get_preset

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    rss_at_start = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # MiB after imports
    overrides: dict = {}
    if args.variant in ("skip_retain", "combined"):
        overrides["skip"] = SkipRetainConfig()
    if args.variant in ("cross_head", "combined"):
        overrides["cross_head"] = CrossHeadConfig(beta=0.1)
    if args.tgt_len:
        overrides.update(tgt_len=args.tgt_len, mem_len=args.tgt_len)
    cfg = get_preset(args.one, **overrides)
    device = torch.device(args.device)
    model = TransformerXL(cfg).to(device).train()
    n_params = model.num_parameters()
    autocast = torch.autocast(device.type, dtype=torch.bfloat16) if args.dtype == "bf16" else nullcontext()
    gen = torch.Generator().manual_seed(1)
    batch = torch.randint(0, cfg.n_token, (args.batch, cfg.tgt_len + 1), generator=gen).to(device)
    mems = None
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    times: list[float] = []
    skipped = 0
    for step in range(args.warmup + args.steps):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        with autocast:
            out = model(batch[:, :-1], batch[:, 1:], mems=mems)
        out.loss.backward()
        model.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize()
        if step >= args.warmup:
            times.append(time.perf_counter() - t0)
            skipped += out.plan.n_skipped
        mems = out.mems
    median = statistics.median(times)  # robust to other processes on a shared machine
    peak = (
        torch.cuda.max_memory_allocated() / 2**20
        if device.type == "cuda"
        else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    )
    return {
        "preset": args.one,
        "variant": args.variant,
        "params_M": round(n_params / 1e6, 2),
        "batch": args.batch,
        "tgt_len": cfg.tgt_len,
        "mem_len": cfg.mem_len,
        "steps": args.steps,
        "layers_skipped_per_step": round(skipped / args.steps, 2),
        "tokens_per_s": round(args.batch * cfg.tgt_len / median, 1),
        "s_per_step": round(median, 3),
        "s_per_step_min": round(min(times), 3),
        "peak_MiB": round(peak, 1),
        "peak_above_imports_MiB": round(peak - (0.0 if device.type == "cuda" else rss_at_start), 1),
        "peak_kind": "cuda max_memory_allocated" if device.type == "cuda" else "process RSS high-water",
        "device": args.device,
        "dtype": args.dtype,
        "threads": args.threads,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--presets", default="tiny,wt103_base")
    parser.add_argument("--variants", default="baseline")
    parser.add_argument("--batch", type=int, default=None, help="default: 16 for tiny, 2 otherwise")
    parser.add_argument("--tgt-len", dest="tgt_len", type=int, default=None, help="also sets mem_len")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", choices=("fp32", "bf16"), default="fp32")
    parser.add_argument("--json", default=None, help="also write the rows to this JSON file")
    parser.add_argument("--one", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--variant", default="baseline", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(run_one(args)))
        return
    rows = []
    for preset in args.presets.split(","):
        for variant in args.variants.split(","):
            if variant not in VARIANTS:
                parser.error(f"unknown variant {variant!r}; choose from {VARIANTS}")
            batch = args.batch or (16 if preset == "tiny" else 2)
            cmd = [sys.executable, __file__, "--one", preset, "--variant", variant, "--batch", str(batch)]
            cmd += ["--steps", str(args.steps), "--warmup", str(args.warmup), "--threads", str(args.threads)]
            cmd += ["--device", args.device, "--dtype", args.dtype]
            if args.tgt_len:
                cmd += ["--tgt-len", str(args.tgt_len)]
            done = subprocess.run(cmd, capture_output=True, text=True, check=False)
            if done.returncode != 0:
                print(done.stderr, file=sys.stderr)
                raise SystemExit(f"benchmark of {preset}/{variant} failed")
            rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
    cols = ["preset", "variant", "params_M", "batch", "tgt_len", "mem_len", "layers_skipped_per_step"]
    cols += ["tokens_per_s", "s_per_step", "s_per_step_min", "peak_MiB", "peak_above_imports_MiB"]
    widths = [max(len(c), *(len(str(r[c])) for r in rows)) for c in cols]
    print(" | ".join(c.ljust(w) for c, w in zip(cols, widths, strict=True)))
    print("-+-".join("-" * w for w in widths))
    for r in rows:
        print(" | ".join(str(r[c]).ljust(w) for c, w in zip(cols, widths, strict=True)))
    print(f"device={args.device} dtype={args.dtype} threads={args.threads}; peak = {rows[0]['peak_kind']}")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(rows, fh, indent=2)


if __name__ == "__main__":
    main()
