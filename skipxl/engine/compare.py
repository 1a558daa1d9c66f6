"""``skipxl compare``: one markdown table and one plot for several run folders.

Per run: variant, parameters, best validation score seen during training (the periodic,
capped validations: ``val_max_batches`` segments per stream, the training context), the final
validation and test scores (the full splits, the evaluation protocol), median training
throughput and peak memory; the footnote says which is which. The plot (``compare.png``, or
``compare_group.png`` with ``group``) shows validation and training-loss curves with a fixed
colour and style per variant, the final full validation as a star and the Skip-Retain phase
switch; ``compare.csv`` holds the table's numbers. Scores are perplexity for word-level
corpora and bits per character for char-level ones (lower is better for both).
``group=True`` averages runs that differ only in their seed (mean ± sample std over seeds),
which is how the paper's variants should be compared.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from skipxl.config_io import load_json
from skipxl.engine import run_dir as rd
from skipxl.engine.metrics import LN2
from skipxl.errors import SkipxlError


def _score(loss: float | None, level: str) -> float | None:
    if loss is None or not math.isfinite(loss):
        return None
    return loss / LN2 if level == "char" else math.exp(min(loss, 700.0))


def summarize(run: Path) -> dict[str, Any]:
    """One row of the table for run folder ``run``."""
    run = Path(run)
    cfg = rd.read_config(run)
    meta = load_json(run / rd.META) if (run / rd.META).is_file() else {}
    results = load_json(run / rd.RESULTS) if (run / rd.RESULTS).is_file() else {}
    rows = rd.read_metrics(run)
    level = results.get("level") or meta.get("level") or "word"
    val_losses = [r["val/loss"] for r in rows if "val/loss" in r]
    tps = sorted(r["tokens_per_s"] for r in rows if "tokens_per_s" in r)
    peak = [r["memory/peak_bytes"] for r in rows if "memory/peak_bytes" in r]
    best_val = min(val_losses) if val_losses else None
    final_val = results.get("final_val/loss")
    if best_val is None:
        best_val = final_val
    return {
        "run": run.name,
        "path": str(run),
        "variant": cfg.get("variant", "?"),
        "preset": cfg.get("preset", "?"),
        "corpus": cfg.get("data", {}).get("corpus", "?"),
        "seed": cfg.get("train", {}).get("seed"),
        "level": level,
        "metric": "bpc" if level == "char" else "ppl",
        "params": results.get("n_params", meta.get("n_params")),
        "steps": results.get("step", rows[-1]["step"] if rows else 0),
        "best_val": _score(best_val, level),
        "final_val": _score(final_val, level),
        "test": _score(results.get("test/loss"), level),
        "tokens_per_s": statistics.median(tps) if tps else None,
        "peak_bytes": max(peak) if peak else None,
        "finished": bool(results),
        "val_curve": [(r["step"], _score(r["val/loss"], level)) for r in rows if "val/loss" in r],
        "train_curve": [(r["step"], r["train/loss"]) for r in rows if "train/loss" in r],
        "switch_step": next((r["phase/switch_step"] for r in rows if "phase/switch_step" in r), None),
        "val_max_batches": cfg.get("train", {}).get("val_max_batches"),
    }


def _params(n: Any) -> str:
    return "-" if not isinstance(n, (int, float)) else f"{n / 1e6:.2f}M"


def _fmt(value: Any, digits: int = 3) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def _mean_std(values: Sequence[float | None]) -> tuple[float | None, float | None, int]:
    vals = [v for v in values if v is not None]
    if not vals:
        return None, None, 0
    return statistics.fmean(vals), (statistics.stdev(vals) if len(vals) > 1 else 0.0), len(vals)


def _pm(values: Sequence[float | None], digits: int = 3, scale: float = 1.0) -> str:
    mean, std, n = _mean_std([None if v is None else v / scale for v in values])
    if mean is None:
        return "-"
    return f"{mean:.{digits}f} ± {std:.{digits}f}" if n > 1 else f"{mean:.{digits}f}"


def _markdown_table(head: list[str], body: list[list[str]]) -> str:
    """A markdown table: the header row, its ``---`` rule, then one line per row of cells."""
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines.extend("| " + " | ".join(cells) + " |" for cells in body)
    return "\n".join(lines)


def table(rows: list[dict[str, Any]], group: bool = False) -> str:
    """Markdown table of :func:`summarize` rows (grouped over seeds when ``group``)."""
    metric = rows[0]["metric"] if rows and len({r["metric"] for r in rows}) == 1 else "score"
    if not group:
        head = [
            "run",
            "variant",
            "params",
            "steps",
            f"best in-train val {metric}",
            f"final val {metric}",
            f"final test {metric}",
            "tokens/s",
            "peak MiB",
        ]
        body: list[list[str]] = []
        for r in rows:
            cells = [
                r["run"],
                r["variant"],
                _params(r["params"]),
                _fmt(r["steps"]),
                _fmt(r["best_val"]),
                _fmt(r["final_val"]),
                _fmt(r["test"]),
                _fmt(r["tokens_per_s"], 0),
                _fmt(None if r["peak_bytes"] is None else r["peak_bytes"] / 2**20, 0),
            ]
            body.append(cells)
        return _markdown_table(head, body) + _footnote(rows)
    groups: dict[tuple[str, str, str], list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault((r["corpus"], r["preset"], r["variant"]), []).append(r)
    head = [
        "corpus",
        "preset",
        "variant",
        "seeds",
        "params",
        f"best in-train val {metric}",
        f"final val {metric}",
        f"final test {metric}",
        "tokens/s",
        "peak MiB",
    ]
    body: list[list[str]] = []
    for (corpus, preset, variant), rs in groups.items():
        cells = [
            corpus,
            preset,
            variant,
            str(len(rs)),
            _params(rs[0]["params"]),
            _pm([r["best_val"] for r in rs]),
            _pm([r["final_val"] for r in rs]),
            _pm([r["test"] for r in rs]),
            _pm([r["tokens_per_s"] for r in rs], 0),
            _pm([r["peak_bytes"] for r in rs], 0, 2**20),
        ]
        body.append(cells)
    return _markdown_table(head, body) + _footnote(rows)


def _footnote(rows: list[dict[str, Any]]) -> str:
    """Which validation each column is: they are not the same measurement."""
    caps = sorted({str(r.get("val_max_batches")) for r in rows})
    cap = "all" if caps == ["None"] else "/".join(caps)
    return (
        "\n\nbest in-train val: the lowest of the periodic validations during training (capped at "
        f"{cap} segments per stream, training context); final val / test: the full splits scored once "
        "at the end with the evaluation protocol. Compare final with final."
    )


#: Fixed colour and line style per variant, so a variant looks the same in every plot.
VARIANT_STYLE = {
    "baseline": ("tab:blue", "-"),
    "skip_retain": ("tab:orange", "--"),
    "cross_head": ("tab:green", "-."),
    "combined": ("tab:red", ":"),
}
_MARKERS = ("o", "s", "^", "v", "D", "P", "X", "*")


def _style(variant: str) -> tuple[str, str]:
    return VARIANT_STYLE.get(variant, ("tab:gray", "-"))


def _curve_groups(rows: list[dict[str, Any]], group: bool) -> list[tuple[str, str, list[dict[str, Any]]]]:
    """``(label, variant, runs)``: one per run, or one per (corpus, preset, variant) with ``group``."""
    if not group:
        return [
            (r["run"] if r["run"] == r["variant"] else f"{r['run']} ({r['variant']})", r["variant"], [r])
            for r in rows
        ]
    groups: dict[tuple[str, str, str], list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault((r["corpus"], r["preset"], r["variant"]), []).append(r)
    return [(f"{v} (n={len(rs)})", v, rs) for (_, _, v), rs in groups.items()]


def _mean_band(curves: list[list[tuple[int, float | None]]]) -> tuple[list[int], list[float], list[float]]:
    """Mean and sample std over runs at the steps every run has (seeds of one variant)."""
    common = set.intersection(*[{s for s, v in c if v is not None} for c in curves]) if curves else set()
    steps = sorted(common)
    means, stds = [], []
    for step in steps:
        vals = [v for c in curves for s, v in c if s == step and v is not None]
        means.append(statistics.fmean(vals))
        stds.append(statistics.stdev(vals) if len(vals) > 1 else 0.0)
    return steps, means, stds


def plot(rows: list[dict[str, Any]], path: Path, *, group: bool = False) -> Path | None:
    """PNG: validation curves (with the final full validation and the phase switch) and training loss.

    Each variant has a fixed colour and line style (:data:`VARIANT_STYLE`); runs of the same
    variant differ by marker. The in-training validations are capped (``val_max_batches``);
    the final point (a star) is the full validation split with the evaluation protocol.
    ``group`` draws the mean over seeds with a +-1 std band. None when no run has a curve.
    """
    if not any(r["val_curve"] or r["train_curve"] for r in rows):
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    fig, (ax_val, ax_train) = plt.subplots(1, 2, figsize=(12, 4.5))
    metric = rows[0]["metric"]
    for i, (label, variant, runs) in enumerate(_curve_groups(rows, group)):
        colour, line = _style(variant)
        marker = _MARKERS[i % len(_MARKERS)] if not group else "o"
        for ax, key in ((ax_val, "val_curve"), (ax_train, "train_curve")):
            curves = [r[key] for r in runs if r[key]]
            if not curves:
                continue
            steps, mean, std = _mean_band(curves)
            ax.plot(steps, mean, color=colour, linestyle=line, marker=marker, markersize=3, label=label)
            if group and len(curves) > 1:
                lo = [m - s for m, s in zip(mean, std, strict=True)]
                hi = [m + s for m, s in zip(mean, std, strict=True)]
                ax.fill_between(steps, lo, hi, color=colour, alpha=0.2, linewidth=0)
        finals = [(r["steps"], r["final_val"]) for r in runs if r["final_val"] is not None]
        if finals:
            step = max(s for s, _ in finals)
            ax_val.plot(
                [step], [statistics.fmean(v for _, v in finals)], color=colour, marker="*", markersize=12
            )
        for r in runs:
            if r["switch_step"] is not None:
                ax_val.axvline(r["switch_step"], color=colour, linestyle=line, alpha=0.5, linewidth=1)
    ax_val.set_title(f"validation {metric} (in training, capped; star: final, full split)", fontsize=9)
    ax_val.set_ylabel(f"validation {metric}")
    ax_val.set_yscale("log")
    ax_train.set_title("training loss (nats/token); vertical lines: Skip-Retain phase switch", fontsize=9)
    ax_train.set_ylabel("train loss")
    for ax in (ax_val, ax_train):
        ax.set_xlabel("step")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


#: Columns of ``compare.csv`` (one row per run; the grouped table is derived from them).
CSV_COLUMNS = (
    "run",
    "path",
    "corpus",
    "preset",
    "variant",
    "seed",
    "metric",
    "params",
    "steps",
    "best_val",
    "final_val",
    "test",
    "tokens_per_s",
    "peak_bytes",
    "switch_step",
    "val_max_batches",
    "finished",
)


def write_csv(rows: list[dict[str, Any]], path: Path) -> Path:
    """One row per run with the numbers of the table (unrounded), for spreadsheets and scripts."""
    import csv

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=CSV_COLUMNS, extrasaction="ignore")
        writer.writeheader()
        for r in rows:
            writer.writerow({k: ("" if r.get(k) is None else r.get(k)) for k in CSV_COLUMNS})
    return path


def compare(run_dirs: Sequence[str | Path], *, png: str | Path | None = None, group: bool = False) -> str:
    """Table (returned) and plot (written) for ``run_dirs``; folders holding runs are expanded."""
    runs: list[Path] = []
    for d in run_dirs:
        d = Path(d)
        if (d / rd.CONFIG).is_file():
            runs.append(d)
        elif d.is_dir() and any((c / rd.CONFIG).is_file() for c in d.iterdir()):
            runs.extend(sorted(c for c in d.iterdir() if (c / rd.CONFIG).is_file()))
        else:
            raise SkipxlError(f"{d} is not a run folder (no config.json) nor a folder of runs")
    if not runs:
        raise SkipxlError("give at least one run folder: skipxl compare RUN_DIR [RUN_DIR ...]")
    rows = [summarize(r) for r in runs]
    text = table(rows, group=group)
    stem = "compare_group" if group else "compare"
    png_path = Path(png) if png is not None else runs[0].parent / f"{stem}.png"
    written = plot(rows, png_path, group=group)
    csv_path = write_csv(rows, png_path.with_suffix(".csv"))
    if written is not None:
        text += f"\n\ncurves: {written}"
    text += f"\ntable: {csv_path}"
    return text
