"""``skipxl memory``: measure that the paper's variants use no more memory than the baseline.

arXiv 2311.08123 promises that Skip-Retain and stochastic cross-head attention "use no
additional memory". This command checks it, variant by variant, with identical model
config, seed and data:

1. each variant trains ``steps`` steps on a synthetic Zipf-distributed token stream
   (memory depends on shapes and, through the adaptive softmax, on how many targets fall
   in each cluster; the stream is the same for every variant) under a
   :class:`~skipxl.profiling.profiler.MemoryProfiler`, through DeepSpeed
   (``engine="deepspeed"``, the default) or a plain PyTorch Adam loop (``"torch"``);
2. by default each variant runs in a fresh Python process, so its process peak (RSS
   high-water mark on CPU, CUDA max allocated on GPU) is not biased by what the previous
   variant left in the allocator;
3. a table compares, per variant: Transformer-XL memory bytes (logical and held),
   activations saved for backward (mean and max over steps), the analytic estimate, the
   process peak and the ratios to the baseline; ``per_layer=True`` adds a per-layer table;
4. ``memory.json`` and ``memory.png`` go to ``out``;
5. the command exits with status 1 when a variant exceeds the baseline by more than
   ``tolerance`` (relative) in held memory bytes or in peak saved activations, or by more
   than ``peak_tolerance`` in process peak (only compared when measured fairly: isolated
   processes or CUDA).

The plans come from the same training policies as in training (:mod:`skipxl.engine.policies`)
and the DeepSpeed engine from the same builder and step function (:mod:`skipxl.engine.ds_engine`);
the memory accounting itself is :mod:`skipxl.profiling` (below the engine: it knows no DeepSpeed).

Dynamic Layer Tying (arXiv 2401.12819; ``--variants baseline,dlt``) saves model states, not
activations: a tied layer owns no parameter, gradient or optimizer state, so the states table
shows the saving per rank next to the baseline (``x total``). The tying state profiled is the
method's start (every layer tied to layer 0) or ``--tying_state 0,1,1,3,...`` (e.g. the
``dlt.sources`` a training run wrote to its ``results.json``); it stays fixed while profiling,
so the DLT training policy (which changes it) is not run here.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from skipxl.config_io import save_json
from skipxl.engine.distributed import ensure_accelerator_env, ensure_launch_env
from skipxl.engine.ds_config import build_ds_config, zero_stage_of
from skipxl.engine.ds_engine import build_engine, optimizer_step
from skipxl.engine.policies import paper_policies
from skipxl.engine.train import lm_loss
from skipxl.engine.variants import apply_variant, check_variant, uses_cross_head, uses_dlt, uses_skip
from skipxl.errors import SkipxlError
from skipxl.model import Memory, StepPlan
from skipxl.profiling.peak import run_isolated
from skipxl.profiling.profiler import MemoryProfiler, layer_scope_name

DEFAULT_VARIANTS = "baseline,skip_retain,cross_head,combined"
MIB = 1024.0**2


# ----------------------------------------------------------------------------- one variant


def synthetic_stream(n_token: int, batch: int, length: int, seed: int, exponent: float = 1.1) -> torch.Tensor:
    """``[batch, length]`` int64 tokens drawn from a Zipf law (``p(rank r) ~ 1/(r+1)^exponent``).

    Word-level corpora are Zipfian, so the adaptive softmax's tail clusters get a
    realistic share of the targets (their activation memory depends on it).
    """
    g = torch.Generator().manual_seed(seed)
    probs = 1.0 / torch.arange(1, n_token + 1, dtype=torch.float64) ** exponent  # [V]
    flat = torch.multinomial(probs, batch * length, replacement=True, generator=g)  # [B*L]
    return flat.view(batch, length)  # [B, L]


def build_model(cfg: Any) -> torch.nn.Module:
    """The model of one variant's config (a seam for tests that inject extra memory)."""
    from skipxl.model import TransformerXL

    return TransformerXL(cfg)


def variant_config(
    preset: str,
    variant: str,
    overrides: dict[str, Any] | None = None,
    pskip: Any = None,
    beta: float | None = None,
    skip_options: dict[str, Any] | None = None,
) -> Any:
    """The preset with ``overrides`` and the variant's methods switched on."""
    from skipxl.model import get_preset

    base = get_preset(preset, **(overrides or {}))
    return apply_variant(
        base,
        variant,
        pskip=pskip if uses_skip(variant) else None,
        beta=beta if uses_cross_head(variant) else None,
        skip_options=skip_options if uses_skip(variant) and skip_options else None,
    )


def profile_variant(
    preset: str,
    variant: str,
    steps: int,
    batch: int,
    seed: int = 0,
    overrides: dict[str, Any] | None = None,
    pskip: Any = None,
    beta: float | None = None,
    skip_options: dict[str, Any] | None = None,
    engine: str = "deepspeed",
    ds_config: str = "cpu",
    device: str = "auto",
    per_layer: bool = True,
    tying_state: Sequence[int] | None = None,
) -> dict[str, Any]:
    """Train one variant for ``steps`` steps under a profiler; return a JSON-able summary.

    ``tying_state``: for the DLT variants, the state vector to profile (default: the start).
    """
    cfg = variant_config(preset, variant, overrides, pskip, beta, skip_options)
    dev = torch.device(
        "cuda" if device == "auto" and torch.cuda.is_available() else ("cpu" if device == "auto" else device)
    )
    tokens = synthetic_stream(cfg.n_token, batch, steps * cfg.tgt_len + 1, seed)  # [B, S*T+1]
    torch.manual_seed(seed)
    model = build_model(cfg).to(dev)
    tying = getattr(model.layers, "tying", None)
    if tying is not None and tying_state is not None:
        tying.apply(tying_state)  # a fixed state: every ZeRO stage flattens what exists now
    n_params = sum(p.numel() for p in model.parameters())
    optimizer = torch.optim.Adam(model.parameters(), lr=2.5e-4)
    state_estimate = None
    if engine == "deepspeed":
        runner, stage, world = _deepspeed_engine(model, optimizer, ds_config, batch)
        module = runner.module
        from skipxl.profiling.state_bytes import deepspeed_state_estimate, largest_layer_params

        estimate = deepspeed_state_estimate(n_params, stage, world, largest_layer_params(module))
        state_estimate = dict(estimate.__dict__)
    elif engine == "torch":
        runner, module = model, model
    else:
        raise SkipxlError(f"engine must be 'deepspeed' or 'torch', got {engine!r}")
    module.train()
    policies = paper_policies(cfg)  # the variant's draws (phase 1 throughout), as in training
    prof = MemoryProfiler(enabled=True, per_layer=per_layer).attach(runner)
    mems: list[Memory | None] = [None]
    t = cfg.tgt_len
    for s in range(steps):
        # Own storages, as a data loader delivers them (a view would keep the whole stream alive
        # in the saved-tensor count).
        inputs = tokens[:, s * t : (s + 1) * t].clone().to(dev)  # [B, T]
        targets = tokens[:, s * t + 1 : (s + 1) * t + 1].clone().to(dev)  # [B, T]
        step_loss = functools.partial(lm_loss, runner, mems, policies.plan(s, StepPlan()))
        if engine == "deepspeed":
            optimizer_step(runner, [(inputs, targets)], step_loss)
        else:
            step_loss(0, (inputs, targets)).backward()
            prof.measure_states(model, optimizer)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        prof.flush()
    prof.close()
    return {
        "variant": variant,
        "config": cfg.to_dict(),
        "n_params": n_params,
        "batch": batch,
        "steps": steps,
        "engine": engine,
        "device": str(dev),
        "state_estimate": state_estimate,
        "records": prof.records,
        "tying_sources": list(tying.sources) if tying is not None else None,
    }


def _deepspeed_engine(
    model: torch.nn.Module, optimizer: Any, ds_config: str, batch: int
) -> tuple[Any, int, int]:
    world = ensure_launch_env()
    ensure_accelerator_env()
    cfg = build_ds_config(ds_config, micro_batch=batch, grad_accum=1, world_size=world.world_size, clip=0.25)
    return build_engine(model, optimizer, cfg), zero_stage_of(cfg), world.world_size


# ----------------------------------------------------------------------------- summaries


def _mean(xs: Sequence[float]) -> float:
    return float(sum(xs) / len(xs)) if xs else 0.0


def summarize(result: dict[str, Any]) -> dict[str, Any]:
    """Per-variant figures over its steps (means and maxima of the per-step records)."""
    recs = result["records"]
    saved = [r["saved/bytes"] for r in recs]
    est = [r.get("estimate/bytes", 0) for r in recs]
    n_layer = result["config"]["n_layer"]
    per_layer = {}
    for i in range(n_layer):
        key = layer_scope_name(i)
        per_layer[key] = {
            "saved_mean": _mean([r.get(f"saved/{key}", 0) for r in recs]),
            "estimate_mean": _mean([r.get(f"estimate/{key}", 0) for r in recs]),
            "mems_max": max((r.get(f"mems/{key}", 0) for r in recs), default=0),
            "skipped_steps": sum(r["plan/skip"][i] for r in recs),
        }
    states = next((r for r in reversed(recs) if "states/total" in r), {})
    peak = result.get("process_peak") or {}
    step_peak = max((r["peak/bytes"] for r in recs), default=0)
    return {
        "variant": result["variant"],
        "steps": len(recs),
        "mems_bytes": max((r.get("mems/bytes", 0) for r in recs), default=0),
        "mems_held_bytes": max((r.get("mems/held_bytes", 0) for r in recs), default=0),
        "saved_mean": _mean(saved),
        "saved_max": max(saved, default=0),
        "saved_per_step": saved,
        "estimate_mean": _mean(est),
        "estimate_max": max(est, default=0),
        "skip_steps": [r["step"] for r in recs if r["plan/n_skipped"] > 0],
        "mixed_steps": [r["step"] for r in recs if r["plan/mixed_layers"] > 0],
        "step_peak_bytes": step_peak,
        # The child's final reading covers the time since the last per-step reset on CUDA:
        # the whole run's peak is the larger of it and every step's peak.
        "process_peak_bytes": max(int(peak.get("peak_bytes", 0)), step_peak) if peak else 0,
        "peak_kind": peak.get("kind", recs[-1]["peak/kind"] if recs else ""),
        "states": {k.split("/", 1)[1]: v for k, v in states.items() if k.startswith("states/")},
        "state_estimate": result.get("state_estimate"),
        "n_params": result["n_params"],
        "per_layer": per_layer,
        "tying_sources": result.get("tying_sources"),
    }


def compare(
    summaries: dict[str, dict[str, Any]], tolerance: float, peak_tolerance: float, fair_peak: bool
) -> tuple[dict[str, dict[str, float]], list[str]]:
    """Ratios of every variant to the baseline and the list of tolerance violations."""
    base = summaries["baseline"]
    ratios: dict[str, dict[str, float]] = {}
    violations: list[str] = []
    checks = [
        ("mems_held_bytes", tolerance, "held memory (mems) bytes"),
        ("saved_max", tolerance, "peak saved activations"),
    ]
    if fair_peak:
        checks.append(("peak", peak_tolerance, "process peak"))
    for name, s in summaries.items():
        r = {}
        for key in ("mems_bytes", "mems_held_bytes", "saved_mean", "saved_max"):
            r[key] = s[key] / base[key] if base[key] else math.nan
        bp, vp = _peak_of(base), _peak_of(s)
        r["peak"] = vp / bp if bp else math.nan
        above = [
            i
            for i, (a, b) in enumerate(zip(s["saved_per_step"], base["saved_per_step"], strict=False))
            if a > b
        ]
        r["steps_above_baseline"] = len(above)
        ratios[name] = r
        if name == "baseline":
            continue
        for key, tol, label in checks:
            value = r[key]
            if not math.isnan(value) and value > 1.0 + tol:
                violations.append(
                    f"{name}: {label} is {value:.4f}x the baseline's (tolerance {1 + tol:.4f}x)"
                )
    return ratios, violations


def _peak_of(s: dict[str, Any]) -> int:
    return int(s["process_peak_bytes"] or s["step_peak_bytes"])


def _mib(x: float) -> str:
    return f"{x / MIB:.3f}"


def format_table(summaries: dict[str, dict[str, Any]], ratios: dict[str, dict[str, float]]) -> str:
    """The main table (MiB; ratios to the baseline)."""
    head = [
        "variant",
        "mems",
        "mems held",
        "saved mean",
        "saved max",
        "estimate max",
        "peak",
        "x mems held",
        "x saved mean",
        "x saved max",
        "x peak",
        "steps>base",
        "skip steps",
    ]
    rows = [head]
    for name, s in summaries.items():
        r = ratios[name]
        sizes = [
            s["mems_bytes"],
            s["mems_held_bytes"],
            s["saved_mean"],
            s["saved_max"],
            s["estimate_max"],
            _peak_of(s),
        ]
        rel = [r["mems_held_bytes"], r["saved_mean"], r["saved_max"], r["peak"]]
        rows.append(
            [
                name,
                *(_mib(x) for x in sizes),
                *(f"{x:.4f}" for x in rel),
                str(r["steps_above_baseline"]),
                str(len(s["skip_steps"])),
            ]
        )
    return _render(rows)


def format_layer_table(summaries: dict[str, dict[str, Any]]) -> str:
    """Per layer: mean saved bytes (measured / estimated, MiB) and skipped steps per variant."""
    names = list(summaries)
    head = ["layer"] + [f"{n} saved/est (skips)" for n in names]
    rows = [head]
    for key in summaries[names[0]]["per_layer"]:
        row = [key]
        for n in names:
            pl = summaries[n]["per_layer"][key]
            row.append(f"{_mib(pl['saved_mean'])}/{_mib(pl['estimate_mean'])} ({pl['skipped_steps']})")
        rows.append(row)
    return _render(rows)


def format_states(summaries: dict[str, dict[str, Any]]) -> str:
    """Parameter / gradient / optimizer bytes per rank (MiB), the ratio of their total to the
    baseline's, the layers holding weights of their own, and DeepSpeed's estimator."""
    head = ["variant", "params", "grads", "optimizer", "total", "x total", "own layers", "zero stage"]
    head += ["estimator", "source"]
    rows = [head]
    base_total = summaries["baseline"]["states"].get("total", 0) if "baseline" in summaries else 0
    for name, s in summaries.items():
        st, est = s["states"], s.get("state_estimate") or {}
        measured = [_mib(st.get(k, 0)) for k in ("params", "grads", "optimizer", "total")]
        ratio = f"{st.get('total', 0) / base_total:.4f}" if base_total else "-"
        sources = s.get("tying_sources")
        own = str(sum(1 for i, j in enumerate(sources) if i == j)) if sources else "all"
        estimator = [_mib(est["accelerator_bytes"]), est["source"]] if est else ["-", "-"]
        rows.append([name, *measured, ratio, own, str(st.get("zero_stage", "-")), *estimator])
    return _render(rows)


def _render(rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = [
        "  ".join(c.rjust(w) if j else c.ljust(w) for j, (c, w) in enumerate(zip(r, widths, strict=True)))
        for r in rows
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def plot(
    summaries: dict[str, dict[str, Any]],
    ratios: dict[str, dict[str, float]],
    path: Path,
    tolerance: float,
    title: str,
) -> None:
    """Grouped bars: each metric's ratio to the baseline, with the tolerance line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metrics = [
        ("mems_held_bytes", "mems held"),
        ("saved_mean", "saved mean"),
        ("saved_max", "saved max"),
        ("peak", "process peak"),
    ]
    names = list(summaries)
    fig, ax = plt.subplots(figsize=(8, 4))
    width = 0.8 / len(names)
    for j, name in enumerate(names):
        values = [ratios[name][k] for k, _ in metrics]
        bars = ax.bar([i + j * width for i in range(len(metrics))], values, width, label=name)
        for bar, (k, _) in zip(bars, metrics, strict=True):
            absolute = summaries[name][k] if k != "peak" else _peak_of(summaries[name])
            ax.annotate(
                f"{absolute / MIB:.2f}",
                (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                ha="center",
                va="bottom",
                fontsize=6,
                rotation=90,
            )
    ax.axhline(
        1.0 + tolerance, color="red", linestyle="--", linewidth=0.8, label=f"1 + tolerance ({tolerance})"
    )
    ax.set_xticks([i + width * (len(names) - 1) / 2 for i in range(len(metrics))], [m for _, m in metrics])
    finite = [ratios[n][k] for n in names for k, _ in metrics if not math.isnan(ratios[n][k])]
    ax.set_ylim(max(0.0, min(finite, default=1.0) - 0.1), max([*finite, 1.0 + tolerance]) + 0.05)
    ax.set_ylabel("ratio to baseline (labels: MiB)")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# ----------------------------------------------------------------------------- the command


def _parse_variants(variants: str | Sequence[str]) -> list[str]:

    if isinstance(variants, str):
        names = [v.strip() for v in variants.split(",")]
    else:
        names = [str(v) for v in variants]
    names = [check_variant(v) for v in names if v]
    if "baseline" not in names:
        names.insert(0, "baseline")
    return ["baseline"] + [n for n in dict.fromkeys(names) if n != "baseline"]


def _parse_tying_state(value: Any) -> list[int] | None:
    """``"0,0,2,2"`` / ``(0, 0, 2, 2)`` -> ``[0, 0, 2, 2]`` (checked against the model later)."""
    if value is None:
        return None
    parts = value.split(",") if isinstance(value, str) else list(value)
    try:
        return [int(str(v).strip()) for v in parts if str(v).strip()]
    except ValueError:
        raise SkipxlError(
            f"--tying_state {value!r} must be comma-separated layer indices, e.g. 0,0,2,2"
        ) from None


def run_memory(
    preset: str = "tiny",
    variants: str | Sequence[str] = DEFAULT_VARIANTS,
    steps: int = 8,
    batch: int = 2,
    tgt_len: int | None = None,
    mem_len: int | None = None,
    n_token: int | None = None,
    n_layer: int | None = None,
    per_layer: bool = False,
    tolerance: float = 0.01,
    peak_tolerance: float = 0.05,
    out: str = "runs/memory",
    seed: int = 0,
    pskip: Any = None,
    beta: float | None = None,
    retain_positions: str | None = None,
    positions: str | None = None,
    engine: str = "deepspeed",
    ds_config: str = "cpu",
    device: str = "auto",
    isolate: bool = True,
    plot_png: bool = True,
    tying_state: Any = None,
) -> dict[str, Any]:
    """Profile each variant with identical config, seed and data; gate on the baseline.

    Args:
        preset: model preset (``skipxl.model.PRESETS``); ``tgt_len``, ``mem_len``,
            ``n_token`` and ``n_layer`` override its shapes (e.g. a reduced vocabulary).
        variants: comma-separated subset of baseline, skip_retain, cross_head, combined, dlt (and
            the other DLT compositions; the baseline is always run: it is the reference).
        steps: training steps per variant (memory fills after ``mem_len / tgt_len`` steps).
        batch: sequences per step.
        per_layer: also print the per-layer table.
        tolerance: allowed relative excess over the baseline in held mems bytes and in
            peak saved activations (0.01 = 1%).
        peak_tolerance: allowed relative excess in process peak (noisier: allocator).
        out: folder for ``memory.json`` and ``memory.png``.
        pskip: Skip-Retain probability, as in the recipes (a number or a per-layer list).
        beta: cross-head mixing probability, as in the recipes.
        retain_positions: ``"true"`` (default) or ``"contiguous"`` (the ablation).
        positions: position scoring of every variant (``relative``, the Transformer-XL
            default, or ``segment_end``, the paper's released code; default: the preset's).
        engine: ``"deepspeed"`` (model states as DeepSpeed holds them; ``ds_config`` picks
            the JSON) or ``"torch"`` (plain Adam, faster).
        isolate: run each variant in a fresh process (fair process peaks on CPU).
        tying_state: the Dynamic Layer Tying state vector the DLT variants are profiled in
            (comma-separated, e.g. ``0,0,2,2``; default: the method's start, all tied to 0).
    Returns:
        the report dict (also written to ``out/memory.json``). Raises ``SystemExit(1)``
        when a variant exceeds the tolerance.
    """
    names = _parse_variants(variants)
    if steps < 1 or batch < 1:
        raise SkipxlError(f"steps and batch must be >= 1 (got steps={steps}, batch={batch})")
    if tolerance < 0 or peak_tolerance < 0:
        raise SkipxlError("tolerance and peak_tolerance are relative excesses and must be >= 0")
    overrides = {
        k: v
        for k, v in (
            ("tgt_len", tgt_len),
            ("mem_len", mem_len),
            ("n_token", n_token),
            ("n_layer", n_layer),
            ("positions", positions),
        )
        if v is not None
    }
    skip_options = {"retain_positions": retain_positions} if retain_positions else None
    sources = _parse_tying_state(tying_state)
    if sources is not None and not any(uses_dlt(n) for n in names):
        raise SkipxlError(
            "--tying_state needs a Dynamic Layer Tying variant in --variants (e.g. baseline,dlt)"
        )
    results: dict[str, dict[str, Any]] = {}
    for name in names:
        kwargs = dict(
            preset=preset,
            variant=name,
            steps=steps,
            batch=batch,
            seed=seed,
            overrides=overrides,
            pskip=pskip,
            beta=beta,
            skip_options=skip_options,
            engine=engine,
            ds_config=ds_config,
            device=device,
            per_layer=True,
            tying_state=sources if uses_dlt(name) else None,
        )
        if isolate:
            results[name] = run_isolated("skipxl.engine.memory:profile_variant", kwargs)
        else:
            results[name] = profile_variant(**kwargs)
        print(f"[memory] {name}: {steps} steps done", flush=True)
    summaries = {n: summarize(r) for n, r in results.items()}
    fair_peak = isolate or results["baseline"]["device"].startswith("cuda")
    ratios, violations = compare(summaries, tolerance, peak_tolerance, fair_peak)

    cfg = results["baseline"]["config"]
    title = (
        f"skipxl memory: {preset} (L={cfg['n_layer']}, d={cfg['d_model']}, V={cfg['n_token']}), "
        f"B={batch}, T={cfg['tgt_len']}, M={cfg['mem_len']}, {steps} steps, {engine}"
    )
    print(title)
    print(format_table(summaries, ratios))
    if per_layer:
        print()
        print(format_layer_table(summaries))
    print()
    print(format_states(summaries))
    report = {
        "title": title,
        "preset": preset,
        "variants": names,
        "tolerance": tolerance,
        "peak_tolerance": peak_tolerance,
        "fair_peak": fair_peak,
        "isolate": isolate,
        "summaries": summaries,
        "ratios": ratios,
        "violations": violations,
        "results": results,
    }
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    save_json(_finite(report), out_dir / "memory.json")
    if plot_png:
        plot(summaries, ratios, out_dir / "memory.png", tolerance, title)
    print(f"wrote {out_dir / 'memory.json'}" + (f" and {out_dir / 'memory.png'}" if plot_png else ""))
    if violations:
        print("MEMORY CHECK FAILED:\n  " + "\n  ".join(violations))
        raise SystemExit(1)
    peak_note = f" (peak {peak_tolerance})" if fair_peak else " (process peak not compared: isolate=False)"
    print(f"memory check passed: no variant above the baseline beyond tolerance {tolerance}{peak_note}")
    return report


@functools.wraps(run_memory)
def memory(*args: Any, **kwargs: Any) -> None:
    """``skipxl memory``: :func:`run_memory` without a return value (nothing for fire to print)."""
    run_memory(*args, **kwargs)


def _finite(obj: Any) -> Any:
    """NaN ratios (a zero baseline) become null so ``memory.json`` is strict JSON."""
    if isinstance(obj, float) and math.isnan(obj):
        return None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_finite(v) for v in obj]
    return obj


def main() -> None:
    """``python -m skipxl.engine.memory --preset tiny ...``"""
    import fire

    try:
        fire.Fire(memory)
    except SkipxlError as exc:
        raise SystemExit(f"error: {exc}") from None


if __name__ == "__main__":
    main()
