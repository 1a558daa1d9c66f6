"""``skipxl tying RUN_DIR ...``: the Dynamic Layer Tying state over training as a heat-map.

Rows are layers, columns optimizer steps; a cell's colour is the layer whose weights that layer
ran at that step (its ``state[i]``, arXiv 2401.12819), and a dot marks a layer that trained its
own weights. Below it, the number of such independent layers. The data is the per-action
history a DLT run writes to ``results.json`` (``dlt.history``: step, layer, action, state).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from skipxl.config_io import load_json
from skipxl.errors import SkipxlError


def tying_history(run_dir: Path) -> tuple[list[int], list[list[int]], int]:
    """``(steps, states, last_step)``: the state after each action and the run's final step."""
    path = Path(run_dir) / "results.json"
    if not path.is_file():
        raise SkipxlError(
            f"{path} does not exist; the heat-map needs a finished DLT run (train it to the end)"
        )
    results = load_json(path)
    dlt = results.get("dlt")
    if not isinstance(dlt, dict) or not dlt.get("history"):
        raise SkipxlError(
            f"{path} holds no Dynamic Layer Tying history; was {run_dir} trained with --variant dlt?"
        )
    steps = [int(h[0]) for h in dlt["history"]]
    states = [[int(x) for x in h[3:]] for h in dlt["history"]]
    return steps, states, int(results.get("step", steps[-1] + 1))


def state_matrix(steps: list[int], states: list[list[int]], last_step: int) -> Any:
    """``[n_layer, last_step]`` array: the source of layer ``i`` during optimizer step ``t + 1``."""
    import numpy as np

    n_layer = len(states[0])
    grid = np.zeros((n_layer, last_step), dtype=np.int64)
    bounds = [*steps[1:], last_step]
    for start, end, state in zip(steps, bounds, states, strict=True):
        grid[:, start:end] = np.asarray(state, dtype=np.int64)[:, None]  # [L, steps of this action]
    return grid


def plot_tying(run_dirs: list[str], png: str | None = None) -> Path:
    """Write the heat-map of every run (one panel each) to ``png``; return its path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    if not run_dirs:
        raise SkipxlError("give at least one run folder: skipxl tying RUN_DIR [RUN_DIR ...]")
    data = [(Path(d), *tying_history(Path(d))) for d in run_dirs]
    n_layer = len(data[0][2][0])
    fig, axes = plt.subplots(
        2 * len(data),
        1,
        figsize=(9, 3.2 * len(data)),
        squeeze=False,
        gridspec_kw={"height_ratios": [3, 1] * len(data)},
    )
    for k, (run_dir, steps, states, last) in enumerate(data):
        grid = state_matrix(steps, states, last)  # [L, S]
        ax, ax_n = axes[2 * k, 0], axes[2 * k + 1, 0]
        image = ax.imshow(
            grid, aspect="auto", interpolation="nearest", cmap="viridis", vmin=0, vmax=n_layer - 1
        )
        own = grid == np.arange(grid.shape[0])[:, None]  # [L, S]
        cols = np.unique(np.linspace(0, grid.shape[1] - 1, min(grid.shape[1], 120)).astype(int))
        ys, xs = np.nonzero(own[:, cols])
        ax.scatter(cols[xs], ys, s=4, c="white", marker="o", linewidths=0)
        ax.set_ylabel("layer")
        ax.set_title(f"{run_dir.name}: source layer of each layer (dot = trains its own weights)", fontsize=9)
        fig.colorbar(image, ax=ax, label="source layer")
        ax_n.step(range(1, last + 1), own.sum(axis=0), where="post")
        ax_n.set_ylim(0, n_layer + 0.5)
        ax_n.set_xlim(0, last)
        ax_n.set_ylabel("own layers")
        ax_n.set_xlabel("optimizer step")
    fig.tight_layout()
    out = Path(png) if png else Path(run_dirs[0]) / "tying.png"
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out
