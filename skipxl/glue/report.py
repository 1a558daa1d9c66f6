"""Seed-sweep report: spread of GLUE dev scores per task and variant, and its reduction.

The paper (arXiv 2311.08123) claims stochastic cross-head attention cuts the standard
deviation of BERT's GLUE scores across fine-tuning seeds by about 30%. With a handful of
seeds a standard deviation is itself very uncertain, so the reduction

    reduction = 1 - std(variant) / std(baseline)        (sample std, ddof = 1)

is reported with a percentile bootstrap confidence interval: seeds are resampled with
replacement within each variant independently (Efron & Tibshirani 1993). A positive value
means the variant is *less* spread out. Next to it, the p-value of the Brown-Forsythe test
(Levene's test about the median, ``scipy.stats.levene``; robust to non-normal scores) for
"the two variants have the same spread", and the mean difference to the baseline. Runs that
crashed or diverged (``failed.json``) are counted and excluded from the statistics;
"degenerate" runs (a single predicted class on dev, the usual failure of small-data
fine-tuning) are counted and kept.

Runs of other fine-tuning methods (``--methods spartan,adapter_houlsby,lora``) are variants
named after the method (``baseline`` = full fine-tuning); their cost -- trainable parameters,
bytes stored per task, training tokens/s, inference throughput at batch 1 and 32, peak memory --
gets its own table (:mod:`skipxl.glue.cost`).

Outputs in the report folder: ``glue_report.md``, ``glue_report.csv``, ``glue_report.png``
(per-seed scores: box + jittered strip per variant, one panel per task). Everything is
deterministic for a given sweep folder (the bootstrap uses a fixed seed).
"""

from __future__ import annotations

import csv
import io
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from skipxl.errors import SkipxlError
from skipxl.glue.cost import COST_CSV_FIELDS, cost_means, cost_table
from skipxl.glue.runlog import FAILED_FILE, RESULT_FILE, config_diff
from skipxl.glue.tasks import TASKS, get_task

REPORT_STEM = "glue_report"
#: Standard deviations below this (relative to the score scale) count as zero spread.
ZERO_STD = 1e-9


@dataclass(frozen=True)
class RunRecord:
    """One run of a sweep as read back from its folder."""

    task: str
    variant: str
    seed: int
    metrics: dict[str, float]
    failed: bool = False
    degenerate: bool = False
    wall_time_s: float | None = None
    path: str = ""
    config: dict[str, Any] = field(default_factory=dict)
    method: str = "full"
    cost: dict[str, Any] = field(default_factory=dict)


@dataclass
class GroupStats:
    """Statistics of one (task, variant, metric) group."""

    task: str
    variant: str
    metric: str
    primary: bool
    scores: list[float]
    seeds: list[int]
    failed: int
    degenerate: int
    wall_time_s: float | None
    reduction: float | None = None
    ci: tuple[float, float] | None = None
    spread_p: float | None = None
    mean_diff: float | None = None

    @property
    def n(self) -> int:
        return len(self.scores)

    @property
    def mean(self) -> float:
        return float(np.mean(self.scores)) if self.scores else math.nan

    @property
    def std(self) -> float:
        return float(np.std(self.scores, ddof=1)) if len(self.scores) > 1 else math.nan

    @property
    def min(self) -> float:
        return float(np.min(self.scores)) if self.scores else math.nan

    @property
    def max(self) -> float:
        return float(np.max(self.scores)) if self.scores else math.nan


@dataclass
class GlueReport:
    """What :func:`glue_report` produced."""

    groups: list[GroupStats]
    markdown: str
    markdown_path: Path
    csv_path: Path
    plot_path: Path | None
    records: list[RunRecord] = field(default_factory=list)


def _seed_from(path: Path, payload: dict[str, Any]) -> int:
    if "init_seed" in payload:
        return int(payload["init_seed"])
    name = path.parent.name
    return int(name.split("_", 1)[1]) if name.startswith("seed_") else -1


def collect_runs(sweep_dir: str | Path) -> list[RunRecord]:
    """Read every run folder (``result.json`` or ``failed.json``) under ``sweep_dir``."""
    root = Path(sweep_dir)
    if not root.is_dir():
        raise SkipxlError(f"sweep folder {root} does not exist; pass the --out folder of a GLUE sweep")
    records: list[RunRecord] = []
    for path in sorted(root.rglob(RESULT_FILE)) + sorted(root.rglob(FAILED_FILE)):
        if path.name == FAILED_FILE and (path.parent / RESULT_FILE).is_file():
            continue
        try:
            payload = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise SkipxlError(f"{path} is not valid JSON ({exc}); delete the run folder to rerun it") from exc
        failed = path.name == FAILED_FILE
        records.append(
            RunRecord(
                task=str(payload.get("task", path.parents[2].name)),
                variant=str(payload.get("label", payload.get("variant", path.parents[1].name))),
                seed=_seed_from(path, payload),
                metrics={}
                if failed
                else {
                    k: (math.nan if v is None else float(v)) for k, v in payload.get("metrics", {}).items()
                },
                failed=failed,
                degenerate=bool(payload.get("degenerate", False)),
                wall_time_s=payload.get("wall_time_s"),
                path=str(path.parent.relative_to(root)),
                config=_read_config(path.parent / "config.json"),
                method=str(payload.get("method", "full")),
                cost=dict(payload.get("cost") or {}),
            )
        )
    if not records:
        raise SkipxlError(f"no finished runs (result.json) under {root}; run a sweep into it first")
    return records


#: Config fields that legitimately differ between the runs of one task's comparison.
PER_RUN_FIELDS = frozenset({"variant", "init_seed", "data_seed"})
#: Fields that legitimately differ between methods of one task (each method keeps its own recipe),
#: besides every method option (``spartan_*``, ``adapter_*``, ``lora_*``).
METHOD_FIELDS = frozenset({"method", "lr", "batch_size", "save_method", "measure_inference"})
METHOD_OPTION_PREFIXES = ("spartan_", "adapter_", "lora_")


def _method_fields(a: dict[str, Any], b: dict[str, Any]) -> frozenset[str]:
    return METHOD_FIELDS | {k for k in set(a) | set(b) if k.startswith(METHOD_OPTION_PREFIXES)}


def _read_config(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    try:
        payload = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise SkipxlError(f"{path} is not valid JSON ({exc}); delete the run folder to rerun it") from exc
    return payload if isinstance(payload, dict) else {}


def check_comparable(records: list[RunRecord]) -> None:
    """Refuse to pool runs of one task trained with different settings (e.g. two sweeps in one
    parent folder): their spread would mix seeds with recipes. Runs of one method must agree on
    everything but variant and seeds; different methods may differ only in their own options,
    lr and batch size. Runs without config.json pass."""
    from skipxl.glue.sweep import with_defaults

    by_task: dict[str, list[RunRecord]] = {}
    for r in records:
        if r.config:
            by_task.setdefault(r.task, []).append(r)
    for task, runs in by_task.items():
        first: dict[str, RunRecord] = {}
        for r in runs:
            first.setdefault(str(r.config.get("method", "full")), r)
        anchor = next(iter(first.values()))
        for r in runs:
            same_method = first[str(r.config.get("method", "full"))]
            new = with_defaults(r.config)
            diff = config_diff(with_defaults(same_method.config), new, PER_RUN_FIELDS)
            ref = same_method
            if not diff:
                old = with_defaults(anchor.config)
                diff = config_diff(old, new, PER_RUN_FIELDS | _method_fields(old, new))
                ref = anchor
            if diff:
                shown = ", ".join(f"{k}: {ref.config.get(k)!r} vs {r.config.get(k)!r}" for k in diff[:3])
                raise SkipxlError(
                    f"{task}: runs {ref.path} and {r.path} were trained with different settings ({shown}); "
                    "report each sweep's own --out folder"
                )


def bootstrap_std_reduction(
    baseline: list[float], other: list[float], *, n_boot: int = 10_000, ci: float = 0.95, seed: int = 0
) -> tuple[float, tuple[float, float]] | None:
    """Point estimate and percentile-bootstrap CI of ``1 - std(other) / std(baseline)``.

    Needs at least two runs on each side and a non-zero baseline spread; resamples whose
    baseline std is zero are dropped (they have no defined ratio). "Zero" allows for rounding:
    five copies of 0.8122 have a floating-point std of ~1e-17, not 0.
    """
    b, o = np.asarray(baseline, dtype=np.float64), np.asarray(other, dtype=np.float64)
    tol = ZERO_STD * max(1.0, float(np.abs(b).max()))
    if b.size < 2 or o.size < 2 or b.std(ddof=1) <= tol:
        return None
    point = 1.0 - o.std(ddof=1) / b.std(ddof=1)
    rng = np.random.default_rng(seed)
    bi = rng.integers(0, b.size, size=(n_boot, b.size))  # [n_boot, n_b] resampled seed indices
    oi = rng.integers(0, o.size, size=(n_boot, o.size))  # [n_boot, n_o]
    sb = b[bi].std(axis=1, ddof=1)  # [n_boot]
    so = o[oi].std(axis=1, ddof=1)  # [n_boot]
    keep = sb > tol
    if not keep.any():
        return None
    ratios = 1.0 - so[keep] / sb[keep]
    alpha = (1.0 - ci) / 2.0
    lo, hi = np.quantile(ratios, [alpha, 1.0 - alpha])
    return float(point), (float(lo), float(hi))


#: The paper's claim (arXiv 2311.08123): about 30% lower std across seeds with cross-head attention.
PAPER_STD_REDUCTION = 0.30


def std_reduction_power(
    n_base: int, n_other: int, reduction: float = PAPER_STD_REDUCTION, alpha: float = 0.05
) -> float:
    """Power of the one-sided F test of ``std(other) < std(baseline)`` at level ``alpha`` when the
    true std is lower by ``reduction`` (normal scores): how likely a sweep of this size is to
    show a real effect of that size at all. 5 + 5 seeds detect 30% with power ~0.15."""
    from scipy.stats import f as f_dist

    if n_base < 2 or n_other < 2:
        return math.nan
    d_o, d_b = n_other - 1, n_base - 1
    crit = f_dist.ppf(alpha, d_o, d_b)  # reject when s_o^2 / s_b^2 < crit
    ratio = (1.0 - reduction) ** 2  # true variance ratio
    return float(f_dist.cdf(crit / ratio, d_o, d_b))


def equal_spread_p(baseline: list[float], other: list[float]) -> float | None:
    """Brown-Forsythe p-value for "same spread" (``None`` below 2 runs a side or no spread at all)."""
    from scipy.stats import levene

    b, o = np.asarray(baseline, dtype=np.float64), np.asarray(other, dtype=np.float64)
    if b.size < 2 or o.size < 2:
        return None
    dev = np.concatenate([np.abs(b - np.median(b)), np.abs(o - np.median(o))])
    if float(dev.max()) <= ZERO_STD * max(1.0, float(np.abs(np.concatenate([b, o])).max())):
        return None  # both constant: the statistic is 0/0
    return float(levene(b, o, center="median").pvalue)


def _variant_order(variants: set[str], baseline: str) -> list[str]:
    return sorted(variants, key=lambda v: (v != baseline, v))


def summarise(
    records: list[RunRecord],
    *,
    baseline: str = "baseline",
    metric: str | None = None,
    n_boot: int = 10_000,
    ci: float = 0.95,
    seed: int = 0,
) -> list[GroupStats]:
    """Group runs by task, variant and metric (every metric the runs recorded, or ``metric``)."""
    groups: list[GroupStats] = []
    for task in sorted({r.task for r in records}, key=lambda t: list(TASKS).index(t) if t in TASKS else 99):
        task_runs = [r for r in records if r.task == task]
        primary = get_task(task).primary if task in TASKS else None
        names: list[str] = []
        for r in task_runs:
            names += [k for k in r.metrics if k not in names]
        if primary in names:
            names.remove(primary)
            names.insert(0, primary)
        if metric is not None:
            if metric not in names:
                raise SkipxlError(f"metric {metric!r} was not recorded for {task}; recorded: {names}")
            names = [metric]
        variants = _variant_order({r.variant for r in task_runs}, baseline)
        for name in names:
            by_variant: dict[str, GroupStats] = {}
            for variant in variants:
                runs = sorted((r for r in task_runs if r.variant == variant), key=lambda r: r.seed)
                ok = [r for r in runs if not r.failed and math.isfinite(r.metrics.get(name, math.nan))]
                walls = [float(r.wall_time_s) for r in runs if not r.failed and r.wall_time_s is not None]
                by_variant[variant] = GroupStats(
                    task=task,
                    variant=variant,
                    metric=name,
                    primary=name == primary,
                    scores=[r.metrics[name] for r in ok],
                    seeds=[r.seed for r in ok],
                    failed=sum(r.failed for r in runs) + sum(1 for r in runs if not r.failed and r not in ok),
                    degenerate=sum(r.degenerate for r in ok),
                    wall_time_s=float(np.mean(walls)) if walls else None,
                )
            base = by_variant.get(baseline)
            for variant, stats in by_variant.items():
                if base is not None and variant != baseline:
                    res = bootstrap_std_reduction(base.scores, stats.scores, n_boot=n_boot, ci=ci, seed=seed)
                    if res is not None:
                        stats.reduction, stats.ci = res
                    stats.spread_p = equal_spread_p(base.scores, stats.scores)
                    if stats.scores and base.scores:
                        stats.mean_diff = stats.mean - base.mean
                groups.append(stats)
    return groups


def _fmt(x: float | None, scale: float = 100.0, digits: int = 2) -> str:
    return "n/a" if x is None or not math.isfinite(x) else f"{x * scale:.{digits}f}"


def _is_pair(base: GroupStats, other: GroupStats, baseline: str) -> bool:
    """``other`` is compared with ``base``: same task and primary metric, base is the baseline."""
    return (
        base.variant == baseline
        and other.variant != baseline
        and base.primary
        and other.primary
        and base.task == other.task
    )


def _signed(x: float | None) -> str:
    return "n/a" if x is None or not math.isfinite(x) else f"{x * 100:+.2f}"


def _pct(x: float | None) -> str:
    return "n/a" if x is None or not math.isfinite(x) else f"{x * 100:+.0f}%"


def render_markdown(groups: list[GroupStats], *, baseline: str, ci: float, n_boot: int) -> str:
    """One table per task: scores x100, mean ± sample std, min, max, n, failed, degenerate."""
    lines = [
        "# GLUE seed sweep",
        "",
        f"Dev scores x100 after the last step. std = sample std (ddof 1). std reduction = "
        f"1 - std(variant)/std({baseline}); positive = less spread; [{ci:.0%} percentile bootstrap CI over "
        f"seeds, {n_boot} resamples]. p = Brown-Forsythe test of equal spread. Δ mean = mean(variant) - "
        f"mean({baseline}). failed = crashed/diverged runs (excluded); degenerate = one predicted class on "
        "dev (kept).",
    ]
    sizes = sorted({(b.n, g.n) for b in groups for g in groups if _is_pair(b, g, baseline)})
    if sizes:
        power = ", ".join(f"{std_reduction_power(nb, ng):.0%} with {nb} + {ng} runs" for nb, ng in sizes)
        lines += [
            "",
            f"Power to see the paper's {PAPER_STD_REDUCTION:.0%} std reduction (one-sided F test, α = 0.05, "
            f"normal scores): {power}.",
        ]
    for task in dict.fromkeys(g.task for g in groups):
        lines += [
            "",
            f"## {task.upper()}",
            "",
            "| variant | metric | n | failed | degenerate | mean ± std | min | max | std reduction [CI] "
            "| p | Δ mean | wall s/run |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for g in (g for g in groups if g.task == task):
            red = (
                "—"
                if g.variant == baseline
                else (
                    "n/a"
                    if g.reduction is None
                    else f"{_pct(g.reduction)} [{_pct(g.ci[0])}, {_pct(g.ci[1])}]"
                    if g.ci
                    else _pct(g.reduction)
                )
            )
            metric = f"**{g.metric}**" if g.primary else g.metric
            wall = "n/a" if g.wall_time_s is None else f"{g.wall_time_s:.0f}"
            p_val = "—" if g.variant == baseline else _fmt(g.spread_p, scale=1.0, digits=3)
            diff = "—" if g.variant == baseline else _signed(g.mean_diff)
            lines.append(
                f"| {g.variant} | {metric} | {g.n} | {g.failed} | {g.degenerate} | "
                f"{_fmt(g.mean)} ± {_fmt(g.std)} | {_fmt(g.min)} | {_fmt(g.max)} | {red} | {p_val} | {diff} "
                f"| {wall} |"
            )
    return "\n".join(lines) + "\n"


CSV_FIELDS = (
    "task",
    "variant",
    "metric",
    "primary",
    "n",
    "failed",
    "degenerate",
    "mean",
    "std",
    "min",
    "max",
    "std_reduction",
    "ci_low",
    "ci_high",
    "spread_p",
    "mean_diff",
    "wall_time_s",
    "seeds",
    "scores",
    *COST_CSV_FIELDS,
)


def render_csv(groups: list[GroupStats], records: list[RunRecord] | None = None) -> str:
    """Machine-readable version of the tables (raw scores in [0, 1], not x100)."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(CSV_FIELDS)
    for g in groups:
        writer.writerow(
            [
                g.task,
                g.variant,
                g.metric,
                int(g.primary),
                g.n,
                g.failed,
                g.degenerate,
                *(
                    f"{v:.6f}" if v is not None and math.isfinite(v) else ""
                    for v in (g.mean, g.std, g.min, g.max)
                ),
                *(
                    f"{v:.6f}" if v is not None else ""
                    for v in (g.reduction, *(g.ci or (None, None)), g.spread_p, g.mean_diff)
                ),
                "" if g.wall_time_s is None else f"{g.wall_time_s:.2f}",
                ";".join(str(s) for s in g.seeds),
                ";".join(f"{s:.6f}" for s in g.scores),
                *(
                    "" if v is None else f"{v:.6g}"
                    for v in cost_means(records or [], g.task, g.variant).values()
                ),
            ]
        )
    return buf.getvalue()


def render_plot(groups: list[GroupStats], path: Path) -> Path | None:
    """Box + jittered strip plot of per-seed primary scores, one panel per task."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = list(dict.fromkeys(g.task for g in groups))
    if not panels:
        return None
    fig, axes = plt.subplots(1, len(panels), figsize=(3.2 * len(panels) + 0.6, 3.4), squeeze=False)
    rng = np.random.default_rng(0)
    for ax, task in zip(axes[0], panels, strict=True):
        of_task = [g for g in groups if g.task == task]
        task_groups = [g for g in of_task if g.metric == of_task[0].metric]  # primary (or chosen) metric
        data = [np.asarray(g.scores) * 100 for g in task_groups]
        ax.boxplot(data, showfliers=False, widths=0.5)
        for i, scores in enumerate(data, start=1):
            ax.scatter(i + rng.uniform(-0.12, 0.12, size=len(scores)), scores, s=14, alpha=0.8, zorder=3)
        ax.set_xticks(range(1, len(task_groups) + 1), [g.variant for g in task_groups], rotation=15)
        ax.set_title(f"{task.upper()} ({task_groups[0].metric if task_groups else ''})")
        ax.grid(axis="y", alpha=0.3)
    axes[0][0].set_ylabel("dev score x100")
    fig.tight_layout()
    fig.savefig(path, dpi=120, metadata={"Software": None})
    plt.close(fig)
    return path


def glue_report(
    sweep_dir: str | Path,
    out_dir: str | Path | None = None,
    *,
    baseline: str = "baseline",
    metric: str | None = None,
    n_boot: int = 10_000,
    ci: float = 0.95,
    seed: int = 0,
    plot: bool = True,
) -> GlueReport:
    """Summarise a sweep folder; write markdown, CSV and PNG into ``out_dir`` (default: the sweep)."""
    if not 0.0 < ci < 1.0:
        raise SkipxlError(f"ci must be in (0, 1), got {ci}")
    if n_boot < 100:
        raise SkipxlError(f"n_boot must be at least 100, got {n_boot}")
    records = collect_runs(sweep_dir)
    check_comparable(records)
    groups = summarise(records, baseline=baseline, metric=metric, n_boot=n_boot, ci=ci, seed=seed)
    out = Path(out_dir) if out_dir is not None else Path(sweep_dir)
    out.mkdir(parents=True, exist_ok=True)
    markdown = render_markdown(groups, baseline=baseline, ci=ci, n_boot=n_boot) + cost_table(records)
    md_path, csv_path = out / f"{REPORT_STEM}.md", out / f"{REPORT_STEM}.csv"
    md_path.write_text(markdown)
    csv_path.write_text(render_csv(groups, records))
    plot_path = render_plot(groups, out / f"{REPORT_STEM}.png") if plot else None
    return GlueReport(
        groups=groups,
        markdown=markdown,
        markdown_path=md_path,
        csv_path=csv_path,
        plot_path=plot_path,
        records=records,
    )


def main(
    sweep_dir: str,
    out: str | None = None,
    baseline: str = "baseline",
    metric: str | None = None,
    n_boot: int = 10_000,
    ci: float = 0.95,
    seed: int = 0,
    plot: bool = True,
) -> None:
    """Print the report of a GLUE seed sweep and write glue_report.{md,csv,png}.

    Args:
        sweep_dir: the sweep's --out folder (every result.json / failed.json below it counts).
        out: where to write the files (default: ``sweep_dir``).
        baseline: the variant the std reduction is measured against.
        metric: the metric to compare (default: each task's primary metric).
        n_boot: bootstrap resamples of the confidence interval.
        ci: confidence level of the interval (0.95).
        seed: seed of the bootstrap resampling.
        plot: also draw the per-seed strip/box plot (PNG).

    Bad input raises :class:`SkipxlError`; the command-line entry points print it as one line.
    """
    rep = glue_report(
        sweep_dir, out, baseline=baseline, metric=metric, n_boot=n_boot, ci=ci, seed=seed, plot=plot
    )
    print(rep.markdown)
    print(f"wrote {rep.markdown_path}, {rep.csv_path}" + (f", {rep.plot_path}" if rep.plot_path else ""))
