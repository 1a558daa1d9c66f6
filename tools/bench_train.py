#!/usr/bin/env python
"""Training throughput and peak memory: the skipxl DeepSpeed engine vs a plain PyTorch loop.

Both sides train the *same* TransformerXL (same config, same init, same synthetic Zipf-like
token stream, same Adam + cosine LambdaLR + clip 0.25, one memory carried across steps):

* ``engine``: ``skipxl.engine.ds_engine.build_engine`` + ``optimizer_step`` with
  ``skipxl.engine.train.lm_loss``, i.e. exactly the code ``skipxl train`` runs per optimizer
  step (DeepSpeed ZeRO config of your choice);
* ``plain``: ``loss.backward(); clip_grad_norm_(0.25); adam.step(); sched.step()``.

Each (shape, side) runs in a fresh process so that peak memory (CUDA max allocated, or peak
RSS on CPU) is its own. The ratio engine/plain is the engine's overhead.

    python tools/bench_train.py                          # tiny and wt103_base shapes, CPU or GPU
    python tools/bench_train.py --shapes tiny --steps 50 --batch 8
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from bench_common import zipf_tokens

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

SHAPES = {
    # preset name, n_token, default batch (CPU), default batch (GPU)
    "tiny": ("tiny", 10_000, 8, 64),
    "wt103_base": ("wt103_base", 267_735, 2, 16),
}


def worker(args: argparse.Namespace) -> dict:
    """One measurement (runs in its own process)."""
    import torch

    from skipxl.engine.config import TrainConfig
    from skipxl.engine.distributed import ensure_accelerator_env, ensure_launch_env
    from skipxl.engine.metrics import peak_memory_bytes
    from skipxl.model import TransformerXL, get_preset

    if args.threads:
        torch.set_num_threads(args.threads)
    preset, n_token, cpu_batch, gpu_batch = SHAPES[args.shape]
    cuda = torch.cuda.is_available()
    batch = args.batch or (gpu_batch if cuda else cpu_batch)
    cfg = get_preset(preset, n_token=n_token)
    tgt = cfg.tgt_len
    steps = args.steps + args.warmup
    data = torch.from_numpy(zipf_tokens(n_token, batch * (tgt * steps + 1))).view(batch, -1)  # [B, T*steps+1]
    tc = TrainConfig(global_batch=batch, max_steps=max(steps, 1), lr=2.5e-4, ds_config=args.ds_config)
    torch.manual_seed(0)
    model = TransformerXL(cfg)
    n_params = model.num_parameters()
    device = torch.device("cuda" if cuda else "cpu")

    if args.side == "engine":
        ensure_launch_env()
        ensure_accelerator_env()
        import logging

        import deepspeed

        deepspeed.utils.logger.setLevel(logging.WARNING)
        from skipxl.engine.ds_config import build_ds_config
        from skipxl.engine.ds_engine import build_engine, optimizer_step
        from skipxl.engine.schedule import make_optimizer
        from skipxl.engine.train import lm_loss

        ds = build_ds_config(
            args.ds_config,
            micro_batch=batch,
            grad_accum=1,
            world_size=1,
            overrides={"gradient_clipping": 0.25},
        )
        optimizer, scheduler = make_optimizer(model.parameters(), tc)
        engine = build_engine(model, optimizer, ds, scheduler, skip_single_process_allreduce=True)
        mems = [None]

        def step(x, y):
            (loss,) = optimizer_step(
                engine, [(x, y)], functools.partial(lm_loss, engine, mems, None, device=device)
            )
            return loss
    else:
        from skipxl.engine.schedule import make_scheduler

        model.to(device).train()
        opt = torch.optim.Adam(model.parameters(), lr=tc.lr)
        sched = make_scheduler(opt, tc)
        state = {"mems": None}

        def step(x, y):
            out = model(x.to(device), targets=y.to(device), mems=state["mems"])
            out.loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 0.25)
            opt.step()
            sched.step()
            opt.zero_grad(set_to_none=True)
            state["mems"] = out.mems
            return out.loss.detach()

    def sync():
        if cuda:
            torch.cuda.synchronize()

    losses = []
    for i in range(steps):
        if i == args.warmup:
            sync()
            start = time.perf_counter()
        x = data[:, i * tgt : (i + 1) * tgt]
        y = data[:, i * tgt + 1 : (i + 1) * tgt + 1]
        losses.append(step(x, y))
    sync()
    seconds = time.perf_counter() - start
    return {
        "shape": args.shape,
        "side": args.side,
        "batch": batch,
        "tgt_len": tgt,
        "params": n_params,
        "steps": args.steps,
        "seconds": seconds,
        "tokens_per_s": batch * tgt * args.steps / seconds,
        "peak_bytes": peak_memory_bytes(),
        "device": "cuda" if cuda else "cpu",
        "threads": torch.get_num_threads(),
        "last_loss": float(losses[-1]),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shapes", default="tiny,wt103_base")
    parser.add_argument(
        "--steps", type=int, default=None, help="timed steps (default: 30 tiny, 4 wt103_base on CPU)"
    )
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--batch", type=int, default=None)
    parser.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: PyTorch default)")
    parser.add_argument("--ds_config", default="zero0_fp32")
    parser.add_argument("--json", default=None, help="also write the rows to this file")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--shape", help=argparse.SUPPRESS)
    parser.add_argument("--side", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print("RESULT " + json.dumps(worker(args)))
        return

    import torch

    rows = []
    for shape in args.shapes.split(","):
        steps = args.steps or (30 if shape == "tiny" else (20 if torch.cuda.is_available() else 4))
        for side in ("plain", "engine"):
            cmd = [
                sys.executable,
                __file__,
                "--worker",
                "--shape",
                shape,
                "--side",
                side,
                "--steps",
                str(steps),
                "--warmup",
                str(args.warmup),
                "--threads",
                str(args.threads),
                "--ds_config",
                args.ds_config,
            ]
            if args.batch:
                cmd += ["--batch", str(args.batch)]
            env = {
                k: v
                for k, v in os.environ.items()
                if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_PORT", "MASTER_ADDR")
            }
            proc = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
            lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
            if proc.returncode or not lines:
                sys.exit(f"{shape}/{side} failed:\n{proc.stderr[-3000:]}")
            rows.append(json.loads(lines[-1][7:]))
            print(
                f"{shape:>11} {side:>6}: {rows[-1]['tokens_per_s']:10.0f} tokens/s, "
                f"peak {rows[-1]['peak_bytes'] / 2**20:8.0f} MiB",
                file=sys.stderr,
            )
    print(
        "| shape | params | batch x tgt | device/threads | plain tokens/s | engine tokens/s | engine/plain "
        "| plain peak MiB | engine peak MiB |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for shape in args.shapes.split(","):
        p, e = (next(r for r in rows if r["shape"] == shape and r["side"] == s) for s in ("plain", "engine"))
        ratio = e["tokens_per_s"] / p["tokens_per_s"]
        print(
            f"| {shape} | {p['params'] / 1e6:.1f}M | {p['batch']}x{p['tgt_len']} "
            f"| {p['device']}/{p['threads']} "
            f"| {p['tokens_per_s']:.0f} | {e['tokens_per_s']:.0f} | {ratio:.3f} "
            f"| {p['peak_bytes'] / 2**20:.0f} | {e['peak_bytes'] / 2**20:.0f} |"
        )
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
