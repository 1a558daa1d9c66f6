"""Which SPARTAN parents are chosen, per layer, on dev: do parents specialise?

The paper (arXiv 2211.16634) reports that parent cells specialise in topics. Every SPARTAN run
records, during its final dev evaluation, how many real (non-padding) tokens selected each
parent among their top ``k`` in every layer (``parents.json`` in the run folder:
``counts [L][E]``, ``tokens [L]``). Here ``share[l][e] = counts / tokens`` is the fraction of
tokens that route through parent ``e`` at layer ``l`` (each row sums to ``k``).

Summaries per run and layer: the normalised entropy of ``share / k`` (1 = every parent equally
used, 0 = always the same ``k``), the share of the most used parent, and the parents never
used. Across tasks, at the same seed (the memory initialisation depends only on the seed, so
parent ``e`` starts identical on every task), the total-variation distance between the tasks'
usage ``share / k``: large values mean the tasks route through different parents.

``parent_report(sweep_dir)`` writes ``parents_report.md`` and ``parents_report.png`` (one
heat map per task and seed: layers x parents).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from skipxl.config_io import save_json
from skipxl.errors import SkipxlError

PARENTS_FILE = "parents.json"
REPORT_STEM = "parents_report"


def usage_record(state: Any, topk: int) -> dict[str, Any]:
    """JSON-able usage of a :class:`~skipxl.glue.spartan.SpartanState` after recording."""
    layers = sorted(state.counts)
    counts = [state.counts[i].tolist() for i in layers]
    tokens = [float(state.tokens[i]) for i in layers]
    return {
        "layers": len(layers),
        "parents": len(counts[0]) if counts else 0,
        "topk": topk,
        "counts": counts,
        "tokens": tokens,
    }


def write_usage(run_dir: Path, record: dict[str, Any]) -> None:
    save_json(record, Path(run_dir) / PARENTS_FILE)


def share_matrix(record: dict[str, Any]) -> np.ndarray:
    """``[L, E]`` fraction of tokens that selected each parent (rows sum to k)."""
    counts = np.asarray(record["counts"], dtype=np.float64)  # [L, E]
    tokens = np.asarray(record["tokens"], dtype=np.float64)[:, None]  # [L, 1]
    return counts / np.maximum(tokens, 1.0)


def normalised_entropy(share: np.ndarray, topk: int) -> np.ndarray:
    """Per layer ``H(share / k) / log E`` in [0, 1] -> ``[L]``."""
    p = share / topk  # [L, E], rows sum to 1
    with np.errstate(divide="ignore", invalid="ignore"):
        h = -np.where(p > 0, p * np.log(p), 0.0).sum(axis=1)  # [L]
    return h / math.log(share.shape[1])


def collect_usage(sweep_dir: str | Path) -> list[dict[str, Any]]:
    """Every ``parents.json`` below ``sweep_dir`` with its task, variant and seed."""
    root = Path(sweep_dir)
    found = []
    for path in sorted(root.rglob(PARENTS_FILE)):
        result = path.parent / "result.json"
        if not result.is_file():
            continue
        meta = json.loads(result.read_text())
        rec = json.loads(path.read_text())
        found.append(
            {
                "task": meta["task"],
                "variant": path.parents[1].name,
                "seed": int(meta["init_seed"]),
                "record": rec,
            }
        )
    return found


def render_markdown(found: list[dict[str, Any]]) -> str:
    lines = [
        "# SPARTAN parent usage on dev",
        "",
        "share = fraction of real dev tokens routed through a parent (its row sums to top-k). "
        "entropy = H(share/k)/log E per layer (1 = uniform). unused = parents no token chose.",
    ]
    for task in dict.fromkeys(f["task"] for f in found):
        lines += ["", f"## {task.upper()}"]
        for f in (f for f in found if f["task"] == task):
            rec = f["record"]
            share = share_matrix(rec)
            ent = normalised_entropy(share, rec["topk"])
            lines += [
                "",
                f"### {f['variant']} seed {f['seed']} (E = {rec['parents']}, k = {rec['topk']})",
                "",
                "| layer | entropy | max share | unused | share per parent x100 |",
                "|---|---|---|---|---|",
            ]
            for layer in range(share.shape[0]):
                row = " ".join(f"{100 * s:.0f}" for s in share[layer])
                unused = int((share[layer] == 0).sum())
                lines.append(f"| {layer} | {ent[layer]:.3f} | {share[layer].max():.2f} | {unused} | {row} |")
    pairs = _cross_task_distances(found)
    if pairs:
        lines += [
            "",
            "## Across tasks (same seed, same initial memory)",
            "",
            "Total-variation distance between two tasks' parent usage (share/k), per layer; 0 = same "
            "routing, 1 = disjoint parents.",
            "",
            "| tasks | variant | seed | TV per layer |",
            "|---|---|---|---|",
        ]
        for (a, b, variant, seed), tv in pairs.items():
            lines.append(f"| {a} vs {b} | {variant} | {seed} | {' '.join(f'{x:.3f}' for x in tv)} |")
    return "\n".join(lines) + "\n"


def _cross_task_distances(found: list[dict[str, Any]]) -> dict[tuple[str, str, str, int], list[float]]:
    out: dict[tuple[str, str, str, int], list[float]] = {}
    for i, a in enumerate(found):
        for b in found[i + 1 :]:
            if a["task"] == b["task"] or a["seed"] != b["seed"] or a["variant"] != b["variant"]:
                continue
            sa, sb = share_matrix(a["record"]), share_matrix(b["record"])
            if sa.shape != sb.shape:
                continue
            k = a["record"]["topk"]
            tv = 0.5 * np.abs(sa / k - sb / k).sum(axis=1)  # [L]
            out[(a["task"], b["task"], a["variant"], a["seed"])] = tv.tolist()
    return out


def render_heatmaps(found: list[dict[str, Any]], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = list(dict.fromkeys(f["task"] for f in found))
    cols = max(sum(1 for f in found if f["task"] == t) for t in tasks)
    fig, axes = plt.subplots(len(tasks), cols, figsize=(3.4 * cols + 0.8, 2.4 * len(tasks)), squeeze=False)
    image = None
    for r, task in enumerate(tasks):
        runs = [f for f in found if f["task"] == task]
        for c in range(cols):
            ax = axes[r][c]
            if c >= len(runs):
                ax.axis("off")
                continue
            share = share_matrix(runs[c]["record"])
            image = ax.imshow(share, aspect="auto", cmap="viridis", vmin=0.0, vmax=1.0)
            ax.set_title(f"{task.upper()} {runs[c]['variant']} s{runs[c]['seed']}", fontsize=9)
            ax.set_xlabel("parent")
            ax.set_ylabel("layer")
    if image is not None:
        fig.colorbar(image, ax=axes.ravel().tolist(), shrink=0.8, label="share of tokens")
    fig.savefig(path, dpi=110, metadata={"Software": None})
    plt.close(fig)
    return path


def parent_report(sweep_dir: str | Path, out_dir: str | Path | None = None) -> tuple[Path, Path]:
    """Write ``parents_report.md`` and ``.png`` for every SPARTAN run below ``sweep_dir``."""
    found = collect_usage(sweep_dir)
    if not found:
        raise SkipxlError(f"no {PARENTS_FILE} under {sweep_dir}; run a sweep with --methods spartan first")
    out = Path(out_dir) if out_dir is not None else Path(sweep_dir)
    out.mkdir(parents=True, exist_ok=True)
    md = out / f"{REPORT_STEM}.md"
    md.write_text(render_markdown(found))
    return md, render_heatmaps(found, out / f"{REPORT_STEM}.png")


def main(sweep_dir: str, out: str | None = None) -> None:
    """``python recipes/glue.py parents SWEEP_DIR``: parent-usage tables and heat maps."""
    md, png = parent_report(sweep_dir, out)
    print(md.read_text())
    print(f"wrote {md}, {png}")
