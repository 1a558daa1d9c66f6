"""What each fine-tuning method costs: parameters, bytes per task, speed and peak memory.

Measured inside every run (``result.json`` -> ``cost``) and summarised by ``glue-report``:

* ``trainable_params``: parameters the optimizer updates; ``total_params``: the whole model;
* ``bytes_per_task``: what must be stored per task beside the frozen backbone -- the size of
  ``method/weights.safetensors`` for the parameter-efficient methods, the whole fp32/bf16
  parameter set for full fine-tuning (computed, not written);
* ``train_tokens_per_s``: real (non-padding) training tokens over the time spent in training
  steps (forward, backward, optimizer; evaluation excluded);
* ``infer``: inference throughput of the trained model on the first dev examples (file order)
  at batch 1 and 32 -- examples/s and real tokens/s, after one warm-up batch;
* ``peak_rss_mib``: the process resident-set high-water mark during the run (reset at the
  start of the run, :class:`skipxl.profiling.peak.PeakTracker`; in a multi-run sweep process
  it includes memory cached by earlier runs, so compare methods with ``tools/bench_glue_methods.py``,
  which runs them side by side).

Timings on a shared CPU are noisy; ratios between methods belong to one benchmark run.
"""

from __future__ import annotations

import contextlib
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

#: (batch size, examples timed) for the per-run inference measurement.
INFER_PLAN: tuple[tuple[int, int], ...] = ((1, 32), (32, 128))


@torch.inference_mode()
def measure_inference(
    model: torch.nn.Module, data: Any, pad_id: int, plan: tuple[tuple[int, int], ...] = INFER_PLAN
) -> dict[str, dict[str, float]]:
    """Examples/s and tokens/s of ``model`` at each batch size of ``plan`` on ``data``'s first examples."""
    from skipxl.glue.finetune import collate

    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    out: dict[str, dict[str, float]] = {}
    for bs, n in plan:
        n = min(n, len(data))
        chunks = [list(range(i, min(i + bs, n))) for i in range(0, n, bs)]
        batches = []
        for chunk in chunks:
            batch = collate(data, chunk, pad_id, regression=False)
            batch.pop("labels")
            batches.append({k: v.to(device) for k, v in batch.items()})
        model(**batches[0])  # warm-up
        tokens = sum(int(b["attention_mask"].sum()) for b in batches)
        t0 = time.perf_counter()
        for b in batches:
            model(**b).logits.float().sum().item()  # forces completion on any device
        dt = time.perf_counter() - t0
        out[str(bs)] = {"examples_per_s": n / dt, "tokens_per_s": tokens / dt, "examples": n}
    model.train(was_training)
    return out


def _mean(values: list[float]) -> float | None:
    vals = [v for v in values if v is not None and math.isfinite(v)]
    return float(np.mean(vals)) if vals else None


def _human_bytes(n: float | None) -> str:
    if n is None:
        return "n/a"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"


def _num(x: float | None, digits: int = 0) -> str:
    return "n/a" if x is None else f"{x:,.{digits}f}"


def cost_table(records: list[Any]) -> str:
    """Markdown: one table per task, one row per variant, means over its finished runs."""
    with_cost = [r for r in records if not r.failed and r.cost]
    if not with_cost:
        return ""
    lines = [
        "",
        "## Cost per method",
        "",
        "Means over finished runs. bytes/task = what is stored per task beside the frozen backbone "
        "(the whole model for full fine-tuning). train tok/s = real tokens per second of training "
        "steps; infer ex/s at batch 1 and 32 on the first dev examples; peak RSS = process "
        "high-water mark during the run; train step s = time in training steps (forward, backward, "
        "optimizer), train s = the training loop including per-epoch evaluation. "
        "Timings from a shared CPU are noisy; see "
        "tools/bench_glue_methods.py for side-by-side ratios.",
    ]
    for task in dict.fromkeys(r.task for r in with_cost):
        lines += [
            "",
            f"### {task.upper()}",
            "",
            "| variant | n | trainable params | % of model | bytes/task | train tok/s | infer ex/s b1 "
            "| infer ex/s b32 | peak RSS MiB | train step s/run | train s/run |",
            "|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        runs = [r for r in with_cost if r.task == task]
        for variant in sorted({r.variant for r in runs}, key=lambda v: (v != "baseline", v)):
            rs = [r for r in runs if r.variant == variant]
            c = [r.cost for r in rs]
            trainable = _mean([x.get("trainable_params") for x in c])
            total = _mean([x.get("total_params") for x in c])
            share = None if not trainable or not total else 100.0 * trainable / total
            infer = [x.get("infer") or {} for x in c]
            lines.append(
                f"| {variant} | {len(rs)} | {_num(trainable)} | {_num(share, 2)} | "
                f"{_human_bytes(_mean([x.get('bytes_per_task') for x in c]))} | "
                f"{_num(_mean([x.get('train_tokens_per_s') for x in c]))} | "
                f"{_num(_mean([i.get('1', {}).get('examples_per_s') for i in infer]), 1)} | "
                f"{_num(_mean([i.get('32', {}).get('examples_per_s') for i in infer]), 1)} | "
                f"{_num(_mean([x.get('peak_rss_mib') for x in c]))} | "
                f"{_num(_mean([x.get('train_step_time_s') for x in c]), 1)} | "
                f"{_num(_mean([x.get('train_time_s') for x in c]))} |"
            )
    return "\n".join(lines) + "\n"


COST_CSV_FIELDS = (
    "trainable_params",
    "total_params",
    "bytes_per_task",
    "train_tokens_per_s",
    "infer_b1_ex_per_s",
    "infer_b32_ex_per_s",
    "peak_rss_mib",
)


def cost_means(records: list[Any], task: str, variant: str) -> dict[str, float | None]:
    """Per-(task, variant) means of the cost fields, for the CSV."""
    c = [r.cost for r in records if r.task == task and r.variant == variant and not r.failed and r.cost]
    infer = [x.get("infer") or {} for x in c]
    return {
        "trainable_params": _mean([x.get("trainable_params") for x in c]),
        "total_params": _mean([x.get("total_params") for x in c]),
        "bytes_per_task": _mean([x.get("bytes_per_task") for x in c]),
        "train_tokens_per_s": _mean([x.get("train_tokens_per_s") for x in c]),
        "infer_b1_ex_per_s": _mean([i.get("1", {}).get("examples_per_s") for i in infer]),
        "infer_b32_ex_per_s": _mean([i.get("32", {}).get("examples_per_s") for i in infer]),
        "peak_rss_mib": _mean([x.get("peak_rss_mib") for x in c]),
    }


def run_cost(
    cfg: Any,
    model: torch.nn.Module,
    run_dir: Path,
    evals: dict[str, Any],
    pad_id: int,
    *,
    main: bool,
    world_size: int,
    zero_stage: int,
) -> dict[str, Any]:
    """Parameters, bytes stored per task (saving the method's file), inference throughput."""
    from skipxl.glue.method_io import METHOD_DIR, save_method, tensor_bytes, trained_tensors
    from skipxl.glue.methods import count_total, count_trainable

    cost: dict[str, Any] = {"trainable_params": count_trainable(model), "total_params": count_total(model)}
    with _gathered(model, zero_stage == 3):
        if cfg.method == "full":
            cost["bytes_per_task"] = sum(p.numel() * p.element_size() for p in model.parameters())
        elif cfg.save_method and main:
            cost["bytes_per_task"] = save_method(model, cfg, run_dir / METHOD_DIR)["file_bytes"]
        else:
            cost["bytes_per_task"] = tensor_bytes(trained_tensors(model))
        if cfg.measure_inference and main and world_size == 1:
            cost["infer"] = measure_inference(model, next(iter(evals.values()))[1], pad_id)
    return cost


def _gathered(model: torch.nn.Module, gather: bool):
    """ZeRO-3 partitions parameters: gather them for saving/measuring; otherwise a no-op."""
    if not gather:
        return contextlib.nullcontext()
    import deepspeed

    return deepspeed.zero.GatheredParameters(list(model.parameters()), modifier_rank=None)
