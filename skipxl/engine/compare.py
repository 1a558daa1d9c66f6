"""``skipxl compare``: one markdown table and one plot for several run folders.

Per run: variant, parameters, best validation score seen during training, the final
validation and test scores with the evaluation protocol, median training throughput and
peak memory. Scores are perplexity for word-level corpora and bits per character for
char-level ones (lower is better for both). ``group=True`` averages runs that differ only
in their seed (mean ± sample std over seeds), which is how the paper's variants should be
compared.
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
            f"best val {metric}",
            f"val {metric}",
            f"test {metric}",
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
        return _markdown_table(head, body)
    groups: dict[tuple[str, str, str], list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault((r["corpus"], r["preset"], r["variant"]), []).append(r)
    head = [
        "corpus",
        "preset",
        "variant",
        "seeds",
        "params",
        f"best val {metric}",
        f"val {metric}",
        f"test {metric}",
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
    return _markdown_table(head, body)


def plot(rows: list[dict[str, Any]], path: Path) -> Path | None:
    """PNG of the validation curves (matplotlib, Agg backend); None when no run has any."""
    curves = [r for r in rows if r["val_curve"]]
    if not curves:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for r in curves:
        steps, scores = zip(*r["val_curve"], strict=True)
        label = r["run"] if r["run"] == r["variant"] else f"{r['run']} ({r['variant']})"
        ax.plot(steps, scores, marker="o", markersize=3, label=label)
    ax.set_xlabel("step")
    ax.set_ylabel(f"validation {curves[0]['metric']}")
    ax.set_yscale("log")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
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
    png_path = Path(png) if png is not None else runs[0].parent / "compare.png"
    written = plot(rows, png_path)
    if written is not None:
        text += f"\n\nvalidation curves: {written}"
    return text
