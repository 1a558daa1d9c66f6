"""Side-by-side speed and memory of the GLUE fine-tuning methods on one backbone (default MiniLM).

Usage::

    OMP_NUM_THREADS=1 python tools/bench_glue_methods.py --out docs/results/glue_methods_bench
    python tools/bench_glue_methods.py --methods full,spartan,adapter_houlsby,lora --rounds 5

SPARTAN's claims (arXiv 2211.16634): over 90% higher inference throughput than adapters on a
Raspberry Pi 4 (a small CPU), 34% faster few-shot training. Timing every method in one process,
interleaved round-robin (the order rotates every round), and reporting medians over rounds keeps
the comparison fair on a shared machine: a slow moment hits every method alike.

* **inference**: real MRPC dev pairs (first ``--examples``, file order, max length 128, dynamic
  padding) at batch 1 and batch 32, ``torch.inference_mode``, eval mode;
* **training step**: forward + backward + AdamW step over the method's trainable parameters
  at batch 16 (the released SPARTAN batch), real tokens/s;
* **peak memory**: each method in a fresh interpreter (``skipxl.profiling.peak.run_isolated``):
  RSS high-water mark of building the model and 3 training steps at batch 16.

Variants: every ``--methods`` entry, plus ``spartan_v2`` (the sparse-gather version, same
function as v1) and ``lora_merged`` (LoRA folded into the frozen weights for inference, which
peft supports and adapters/SPARTAN cannot). Weights are untrained: cost does not depend on them.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

VARIANTS = ("full", "spartan", "spartan_v2", "adapter_houlsby", "adapter_pfeiffer", "lora", "lora_merged")


def variant_config(variant: str, model: str) -> Any:
    from skipxl.glue.finetune import FinetuneConfig

    method = {"spartan_v2": "spartan", "lora_merged": "lora"}.get(variant, variant)
    cfg = FinetuneConfig(task="mrpc", model=model, method=method, dropout=0.0)
    return replace(cfg, spartan_version="v2") if variant == "spartan_v2" else cfg


def build(variant: str, model: str) -> Any:
    import torch

    from skipxl.glue.finetune import build_model

    torch.manual_seed(0)
    net = build_model(variant_config(variant, model))
    if variant == "lora_merged":
        from peft.tuners.lora import LoraLayer

        for module in net.modules():
            if isinstance(module, LoraLayer):
                module.merge()
    return net


def batches(data: Any, pad_id: int, bs: int, n: int, labels: bool = False) -> list[dict]:
    from skipxl.glue.finetune import collate

    out = []
    for i in range(0, min(n, len(data)), bs):
        b = collate(data, list(range(i, min(i + bs, n, len(data)))), pad_id, regression=False)
        if not labels:
            b.pop("labels")
        out.append(b)
    return out


def time_inference(net: Any, bs_batches: list[dict]) -> float:
    import torch

    net.eval()
    with torch.inference_mode():
        t0 = time.perf_counter()
        for b in bs_batches:
            net(**b).logits.sum().item()
        return time.perf_counter() - t0


def time_train(net: Any, opt: Any, train_batches: list[dict]) -> float:
    from skipxl.glue.finetune import loss_of, method_loss

    net.train()
    t0 = time.perf_counter()
    for b in train_batches:
        b = dict(b)
        labels = b.pop("labels")
        loss = loss_of(net(**b).logits, labels, False)
        extra = method_loss(net)
        if extra is not None:
            loss = loss + extra
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    return time.perf_counter() - t0


def load_data(model: str, glue_dir: str | None, n: int) -> tuple[Any, int]:
    from skipxl.glue.finetune import encode, load_split
    from skipxl.glue.model import load_tokenizer

    tok = load_tokenizer(model)
    dev = load_split("mrpc", "dev", glue_dir=glue_dir)
    return encode(tok, dev, 128, n), int(tok.pad_token_id or 0)


def peak_of(variant: str, model: str, glue_dir: str | None, threads: int) -> dict[str, Any]:
    """Run in a fresh interpreter: build + 3 training steps at batch 16; RSS high-water (MiB)."""
    import torch

    from skipxl.glue.finetune import build_optimizer
    from skipxl.profiling.peak import rss_bytes, rss_peak_bytes

    torch.set_num_threads(threads)
    base = rss_bytes()
    data, pad = load_data(model, glue_dir, 48)
    net = build(variant, model)
    opt = build_optimizer(net, variant_config(variant, model))
    time_train(net, opt, batches(data, pad, 16, 48, labels=True))
    return {"peak_rss_mib": rss_peak_bytes() / 2**20, "rss_after_imports_mib": base / 2**20}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--methods", default=",".join(VARIANTS))
    parser.add_argument("--model", default="minilm")
    parser.add_argument("--glue_dir", default=None)
    parser.add_argument("--examples", type=int, default=96, help="dev examples per timing")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--train_steps", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--no_peak", action="store_true")
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)

    import torch

    from skipxl.glue.finetune import build_optimizer
    from skipxl.glue.methods import count_trainable
    from skipxl.profiling.peak import run_isolated

    torch.set_num_threads(args.threads)
    variants = [v.strip() for v in args.methods.split(",") if v.strip()]
    for v in variants:
        if v not in VARIANTS:
            parser.error(f"unknown method {v!r}; choose from {VARIANTS}")
    data, pad = load_data(args.model, args.glue_dir, max(args.examples, 16 * args.train_steps))
    plans = {
        "infer_b1": batches(data, pad, 1, args.examples),
        "infer_b32": batches(data, pad, 32, args.examples),
    }
    train = batches(data, pad, 16, 16 * args.train_steps, labels=True)
    tokens = {k: sum(int(b["attention_mask"].sum()) for b in v) for k, v in plans.items()}
    train_tokens = sum(int(b["attention_mask"].sum()) for b in train)
    nets = {v: build(v, args.model) for v in variants}
    opts = {v: build_optimizer(nets[v], variant_config(v, args.model)) for v in variants}
    times: dict[str, dict[str, list[float]]] = {
        v: {"infer_b1": [], "infer_b32": [], "train": []} for v in variants
    }
    for v in variants:  # warm-up, untimed
        time_inference(nets[v], plans["infer_b1"][:2])
        time_inference(nets[v], plans["infer_b32"][:1])
    for r in range(args.rounds):
        order = variants[r % len(variants) :] + variants[: r % len(variants)]
        for v in order:
            for key, plan in plans.items():
                times[v][key].append(time_inference(nets[v], plan))
            if v != "lora_merged":  # merged LoRA is an inference-time form
                times[v]["train"].append(time_train(nets[v], opts[v], train))
    rows: dict[str, dict[str, Any]] = {}
    for v in variants:
        med = {k: statistics.median(t) if t else None for k, t in times[v].items()}
        rows[v] = {
            "trainable_params": count_trainable(nets[v]) if v != "lora_merged" else None,
            "infer_b1_ex_per_s": args.examples / med["infer_b1"],
            "infer_b32_ex_per_s": args.examples / med["infer_b32"],
            "infer_b32_tok_per_s": tokens["infer_b32"] / med["infer_b32"],
            "train_tok_per_s": None if med["train"] is None else train_tokens / med["train"],
            "train_ex_per_s": None if med["train"] is None else 16 * args.train_steps / med["train"],
        }
    if not args.no_peak:
        del nets, opts
        for v in variants:
            if v == "lora_merged":
                continue
            res = run_isolated(
                "tools.bench_glue_methods:peak_of",
                {"variant": v, "model": args.model, "glue_dir": args.glue_dir, "threads": args.threads},
            )
            rows[v].update(res)
    ref = "adapter_houlsby" if "adapter_houlsby" in rows else variants[0]
    for row in rows.values():
        for key in ("infer_b1_ex_per_s", "infer_b32_ex_per_s", "train_tok_per_s"):
            row[f"{key}_vs_{ref}"] = None if row[key] is None else row[key] / rows[ref][key]
    report = {
        "model": args.model,
        "threads": args.threads,
        "rounds": args.rounds,
        "examples": args.examples,
        "tokens": tokens,
        "train_tokens": train_tokens,
        "reference": ref,
        "rows": rows,
        "torch": torch.__version__,
    }
    md = render(report)
    print(md)
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "bench.json").write_text(json.dumps(report, indent=2, sort_keys=True) + "\n")
        (out / "bench.md").write_text(md)
    return report


def _f(x: float | None, digits: int) -> str:
    return "n/a" if x is None else f"{x:.{digits}f}"


def render(rep: dict[str, Any]) -> str:
    ref = rep["reference"]
    lines = [
        f"# GLUE methods side by side ({rep['model']}, {rep['threads']} thread(s), median of "
        f"{rep['rounds']} interleaved rounds)",
        "",
        f"Inference on the first {rep['examples']} MRPC dev pairs; training: AdamW steps at batch 16. "
        f"Ratios against {ref}.",
        "",
        "| method | trainable | infer ex/s b1 | x | infer ex/s b32 | x | train tok/s | x | peak RSS MiB |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for v, r in rep["rows"].items():
        tp = "n/a" if r["trainable_params"] is None else f"{r['trainable_params']:,}"
        peak = r.get("peak_rss_mib")
        lines.append(
            f"| {v} | {tp} | {r['infer_b1_ex_per_s']:.1f} | {r[f'infer_b1_ex_per_s_vs_{ref}']:.2f} | "
            f"{r['infer_b32_ex_per_s']:.1f} | {r[f'infer_b32_ex_per_s_vs_{ref}']:.2f} | "
            f"{_f(r['train_tok_per_s'], 0)} | {_f(r[f'train_tok_per_s_vs_{ref}'], 2)} | "
            f"{'n/a' if peak is None else f'{peak:.0f}'} |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
