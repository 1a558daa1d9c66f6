"""Metrics: one logger writes the same keys to JSONL, TensorBoard and a tqdm progress bar.

Only rank 0 writes; the other ranks get a logger whose methods do nothing, so the training
loop calls it unconditionally. Keys follow TensorBoard's ``group/name`` convention
(``train/loss``, ``val/ppl``, ``skip/fraction/layer_03``); every JSONL line carries
``step``. On a resumed run, ``metrics.jsonl`` rows beyond the checkpoint's step are dropped
first, so the file reads as one uninterrupted run.

:class:`StepWindow` sums one logging interval of training steps (as tensors, no host sync per
step) and turns it into the logged row; :func:`engine_stats`, :func:`memory_stats` and
:func:`throughput_summary` are the other rows and summaries the trainer logs.
"""

from __future__ import annotations

import json
import logging
import math
import os
import resource
import sys
from pathlib import Path
from typing import Any

from skipxl.config_io import dumps
from skipxl.engine.distributed import all_reduce
from skipxl.engine.run_dir import METRICS, TB, read_metrics
from skipxl.progress import progress_bar  # noqa: F401 (re-exported for the engine)

LN2 = math.log(2.0)


#: Vocabulary levels scored in bits per character (enwik8 bytes, text8 characters); the rest in ppl.
CHARACTER_LEVELS = ("char", "byte")


def metric_level(vocab_level: str) -> str:
    """``"char"`` (report bpc) for character/byte vocabularies, ``"word"`` (report ppl) otherwise."""
    return "char" if vocab_level in CHARACTER_LEVELS else "word"


def loss_metrics(loss: float, level: str, prefix: str) -> dict[str, float]:
    """``{prefix}/loss`` plus ``{prefix}/ppl`` (word level) or ``{prefix}/bpc`` (char level)."""
    out = {f"{prefix}/loss": float(loss)}
    if level == "char":
        out[f"{prefix}/bpc"] = float(loss) / LN2
    else:
        out[f"{prefix}/ppl"] = math.exp(min(float(loss), 700.0))
    return out


def peak_memory_bytes() -> int:
    """Peak accelerator memory of this process (CUDA), else the peak resident set size (CPU)."""
    import torch

    if torch.cuda.is_available() and torch.cuda.is_initialized():
        return int(torch.cuda.max_memory_allocated())
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak_kib * (1 if sys.platform == "darwin" else 1024))


#: Where :func:`truncate_metrics` keeps the lines of ``metrics.jsonl`` it could not read.
DAMAGED_METRICS = "metrics.jsonl.damaged"


def truncate_metrics(run_dir: Path, step: int) -> int:
    """Drop ``metrics.jsonl`` rows logged after ``step`` (work lost since the last checkpoint).

    A line that is not a JSON row with a step (damaged bytes, a hand edit) is moved, bytes
    unchanged, to ``metrics.jsonl.damaged`` instead of being lost; returns how many such lines
    there were, not counting a torn *last* line (what a crash during a write leaves).
    """
    path = Path(run_dir) / METRICS
    if not path.is_file():
        return 0
    keep, damaged = [], []
    lines = path.read_bytes().splitlines()
    for number, raw in enumerate(lines, start=1):
        try:
            row = json.loads(raw.decode("utf-8"))
            row_step = int(row.get("step", 0))
        except (ValueError, TypeError, AttributeError):
            if number < len(lines):
                damaged.append(raw)
            continue
        if row_step <= step:
            keep.append(dumps(row, sort_keys=True))
    if damaged:
        with (Path(run_dir) / DAMAGED_METRICS).open("ab") as fh:
            fh.write(b"".join(line + b"\n" for line in damaged))
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(k + "\n" for k in keep))
    tmp.replace(path)
    return len(damaged)


#: The run's text log (rank 0), next to ``metrics.jsonl``.
TRAIN_LOG = "train.log"


def summary_line(step: int, total: int, row: dict[str, Any], last_train: dict[str, Any]) -> str | None:
    """One console line for a validation or final-evaluation row, ``None`` for other rows.

    ``step 400/400 | val ppl 157.6 | lr 1.00e-03 | 5321 tok/s``: what a user wants to see per
    validation (the training loss is in the progress bar and in ``train.log``).
    """
    parts = []
    for prefix, label in (("val", "val"), ("final_val", "final val"), ("test", "test")):
        for unit in ("ppl", "bpc"):
            if f"{prefix}/{unit}" in row:
                parts.append(f"{label} {unit} {row[f'{prefix}/{unit}']:.4g}")
    if not parts:
        return None
    if "val/loss" in row and last_train:
        if "lr" in last_train:
            parts.append(f"lr {last_train['lr']:.3g}")
        if "tokens_per_s" in last_train:
            parts.append(f"{last_train['tokens_per_s']:.0f} tok/s")
    return " | ".join([f"step {step}/{total}", *parts])


def train_line(step: int, total: int, row: dict[str, Any]) -> str:
    """The ``train.log`` line of a training-log row (loss, ppl/bpc, lr, tokens/s)."""
    parts = [f"step {step}/{total}"]
    for key in ("train/loss", "train/ppl", "train/bpc", "lr", "grad_norm", "tokens_per_s"):
        if key in row and isinstance(row[key], (int, float)):
            parts.append(f"{key.split('/')[-1]} {row[key]:.4g}")
    return " | ".join(parts)


class MetricsLogger:
    """Writes metrics on rank 0; a no-op elsewhere.

    Every row goes to ``metrics.jsonl`` and TensorBoard; a line per training-log row and per
    validation goes to ``RUN_DIR/train.log`` through :mod:`logging` (logger ``skipxl.train``),
    and each validation / final evaluation is also printed as one line on stderr. On a
    terminal a tqdm bar shows the steps; when stderr is not a terminal (a cluster log file)
    there is no bar and the training-log lines are printed instead, so the log stays readable.

    Args:
        run_dir: the run folder (JSONL, ``train.log`` and ``tb/`` go there).
        enabled: True on rank 0.
        total_steps / start_step: for the progress bar's ETA.
        progress: show a tqdm bar (off in tests and when stderr is not wanted).
    """

    def __init__(
        self,
        run_dir: Path,
        *,
        enabled: bool,
        total_steps: int,
        start_step: int = 0,
        progress: bool = True,
        tensorboard: bool = True,
    ) -> None:
        self.enabled = enabled
        self.run_dir = Path(run_dir)
        self.total_steps = total_steps
        self._jsonl = None
        self._tb = None
        self._bar = None
        self._last_train: dict[str, Any] = {}
        self._log: logging.Logger | None = None
        self._handler: logging.Handler | None = None
        if not enabled:
            return
        self._jsonl = (self.run_dir / METRICS).open("a")
        self._log = logging.getLogger(f"skipxl.train.{id(self)}")
        self._log.setLevel(logging.INFO)
        self._log.propagate = False
        self._handler = logging.FileHandler(self.run_dir / TRAIN_LOG, encoding="utf-8")
        self._handler.setFormatter(logging.Formatter("%(asctime)s %(message)s", "%Y-%m-%d %H:%M:%S"))
        self._log.addHandler(self._handler)
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(log_dir=str(self.run_dir / TB), purge_step=start_step + 1)
        self._interactive = sys.stderr.isatty()
        self._echo_train = progress and not self._interactive and os.environ.get("SKIPXL_NO_PROGRESS") != "1"
        if progress and self._interactive and os.environ.get("SKIPXL_NO_PROGRESS") != "1":
            from tqdm.auto import tqdm

            self._bar = tqdm(
                total=total_steps,
                initial=start_step,
                desc="train",
                unit="step",
                dynamic_ncols=True,
                file=sys.stderr,
            )

    def log(self, step: int, values: dict[str, Any]) -> None:
        """Record ``values`` at ``step`` in JSONL and TensorBoard (numbers only go to TensorBoard).

        A training row is a ``train.log`` line; a validation or final-evaluation row is one
        line in ``train.log`` and on the console.
        """
        if not self.enabled:
            return
        row = {"step": int(step), **{k: _plain(v) for k, v in values.items()}}
        assert self._jsonl is not None
        self._jsonl.write(dumps(row, sort_keys=True) + "\n")
        self._jsonl.flush()
        if self._tb is not None:
            for key, value in row.items():
                if key != "step" and isinstance(value, (int, float)) and not isinstance(value, bool):
                    self._tb.add_scalar(key, value, global_step=step)
            self._tb.flush()
        if "train/loss" in row:
            self._last_train = row
            line = train_line(step, self.total_steps, row)
            if self._echo_train:
                self.write(line)
            elif self._log is not None:
                self._log.info(line)
        else:
            line = summary_line(step, self.total_steps, row, self._last_train)
            if line is not None:
                self.write(line)

    def progress(self, step: int, postfix: dict[str, Any] | None = None) -> None:
        """Advance the bar to ``step`` and show ``postfix`` (e.g. loss, lr)."""
        if self._bar is None:
            return
        self._bar.update(step - self._bar.n)
        if postfix:
            self._bar.set_postfix(
                {k: (f"{v:.4g}" if isinstance(v, float) else v) for k, v in postfix.items()}, refresh=False
            )

    def write(self, message: str) -> None:
        """Print a line on rank 0 (without breaking the progress bar) and add it to ``train.log``."""
        if not self.enabled:
            return
        if self._log is not None:
            self._log.info(message)
        if self._bar is not None:
            self._bar.write(message, file=sys.stderr)
        else:
            print(message, file=sys.stderr, flush=True)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        if self._tb is not None:
            self._tb.close()
            self._tb = None
        if self._jsonl is not None:
            self._jsonl.close()
            self._jsonl = None
        if self._log is not None and self._handler is not None:
            self._log.removeHandler(self._handler)
            self._handler.close()
            self._handler = None


def _plain(value: Any) -> Any:
    """JSON-able scalar (tensors and numpy numbers become floats; NaN/inf stay as floats)."""
    if hasattr(value, "item") and callable(value.item):
        return value.item()
    return value


class StepWindow:
    """Sums over one logging interval (kept as tensors: no host sync per step)."""

    def __init__(self, n_layer: int) -> None:
        self.n_layer = n_layer
        self.reset()
        self.last_losses: list[float] = []

    def reset(self) -> None:
        self.step_losses: list[Any] = []
        self.steps = 0
        self.skips = [0] * self.n_layer
        self.swaps = 0.0
        self.swap_steps = 0
        self.lr = 0.0
        self.grad_norm: float | None = None

    def add(self, loss: Any, plan: Any, lr: float) -> None:
        """One step: its mean loss (a 0-d tensor), its :class:`~skipxl.model.StepPlan`, its lr."""
        from skipxl.model.heads import identity_index

        self.step_losses.append(loss)
        self.steps += 1
        self.lr = lr
        if plan.skip is not None:
            self.skips = [c + int(s) for c, s in zip(self.skips, plan.skip, strict=True)]
        if plan.head_index is not None:
            idx = plan.head_index
            ident = identity_index(idx.size(1)).expand_as(idx)  # [n_layer, H]
            self.swaps += float((idx != ident).float().mean())
            self.swap_steps += 1

    def flush(self, world_size: int, seconds: float, tokens_per_step: int, level: str) -> dict[str, Any]:
        """The row of the interval (losses averaged over ranks: collective); starts a new one."""
        import torch

        losses = torch.stack(self.step_losses).float()  # [steps]
        losses = all_reduce(losses.clone() if losses.device.type != "cpu" else losses, "sum") / world_size
        values = losses.cpu().tolist()
        mean = sum(values) / len(values)
        row: dict[str, Any] = loss_metrics(mean, level, "train")
        row["lr"] = self.lr
        row["tokens_per_s"] = tokens_per_step * self.steps / max(seconds, 1e-9)
        row["step_time_s"] = seconds / self.steps
        if self.grad_norm is not None:
            row["grad_norm"] = self.grad_norm
        if any(self.skips) or self.swap_steps:
            for layer, c in enumerate(self.skips):
                row[f"skip/fraction/layer_{layer:02d}"] = c / self.steps
            row["skip/fraction/mean"] = sum(self.skips) / (self.steps * self.n_layer)
        if self.swap_steps:
            row["cross_head/swap_rate"] = self.swaps / self.swap_steps
        self.reset()
        self.last_losses = values
        return row


def engine_stats(engine: Any) -> dict[str, float]:
    """DeepSpeed's gradient norm (when it keeps one) and loss scale (1.0 without fp16)."""
    row: dict[str, float] = {}
    norm = engine.get_global_grad_norm()
    if norm is not None:
        row["grad_norm"] = float(norm)
    opt = engine.optimizer
    scale = getattr(opt, "cur_scale", None)
    if scale is None:
        scale = getattr(opt, "loss_scale", None)
    row["loss_scale"] = float(scale) if isinstance(scale, (int, float)) else 1.0
    return row


def memory_stats(mem: Any) -> dict[str, float]:
    """Per-layer memory age and the effective context of the first stream group."""
    row: dict[str, float] = {}
    spans = []
    for layer, (ages, stale) in enumerate(zip(mem.ages(), mem.staleness(), strict=True)):
        mean_age = float(ages.float().mean()) if ages.numel() else 0.0
        row[f"memory/age/layer_{layer:02d}"] = mean_age
        row[f"memory/staleness/layer_{layer:02d}"] = float(stale)
        spans.append(float(ages.max()) if ages.numel() else 0.0)
    row["context/effective_len"] = sum(spans) / max(len(spans), 1)
    return row


def throughput_summary(out_dir: Path) -> dict[str, float]:
    """Median tokens/s, peak memory and best validation loss of a run folder's metrics."""
    import numpy as np

    rows = read_metrics(out_dir)
    tps = [r["tokens_per_s"] for r in rows if "tokens_per_s" in r]
    peak = [r["memory/peak_bytes"] for r in rows if "memory/peak_bytes" in r]
    vals = [r["val/loss"] for r in rows if "val/loss" in r]
    summary: dict[str, float] = {}
    if tps:
        summary["tokens_per_s"] = float(np.median(tps))
    if peak:
        summary["peak_memory_bytes"] = float(max(peak))
    if vals:
        summary["best_val_loss"] = float(min(vals))
    if not math.isfinite(summary.get("best_val_loss", 0.0)):
        summary.pop("best_val_loss")
    return summary
