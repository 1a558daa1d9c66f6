"""Process peak memory, per phase, on GPU and CPU alike.

* **CUDA**: ``torch.cuda.max_memory_allocated`` (tensors) and ``max_memory_reserved``
  (what the caching allocator took from the driver); ``reset_peak_memory_stats`` starts a
  new phase, so per-step peaks are exact.
* **CPU**: the resident-set high-water mark. ``getrusage`` reports it only since the
  process started, so we read ``VmHWM`` from ``/proc/self/status`` and reset it by
  writing ``5`` to ``/proc/self/clear_refs`` (Linux >= 4.0). After a reset the mark
  starts at the *current* RSS, which includes memory the allocator cached for earlier
  phases; comparing variants inside one process is therefore biased by the order they
  ran in. :func:`run_isolated` runs a function in a fresh interpreter instead, which is
  how ``skipxl memory`` measures each variant's CPU peak.

Where ``/proc`` is unavailable (macOS) the CPU peak falls back to ``ru_maxrss`` and is
reported as not resettable.
"""

from __future__ import annotations

import importlib
import json
import os
import re
import resource
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from skipxl.errors import SkipxlError

_STATUS = Path("/proc/self/status")
_CLEAR_REFS = Path("/proc/self/clear_refs")
_peak_before_resets = 0  # the highest VmHWM seen just before any reset in this process


@dataclass(frozen=True)
class PeakReading:
    """One reading of the process peak since the last reset.

    Attributes:
        kind: ``"cuda"`` (allocator statistics) or ``"rss"`` (resident set, CPU).
        peak_bytes: CUDA max allocated, or the RSS high-water mark.
        current_bytes: CUDA allocated now, or the RSS now.
        reserved_peak_bytes: CUDA max reserved (0 on CPU).
        resettable: whether the peak was really reset at the phase start.
    """

    kind: str
    peak_bytes: int
    current_bytes: int
    reserved_peak_bytes: int
    resettable: bool

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _status_kib(field: str) -> int | None:
    try:
        match = re.search(rf"^{field}:\s+(\d+)\s+kB", _STATUS.read_text(), re.MULTILINE)
    except OSError:
        return None
    return int(match.group(1)) if match else None


def rss_bytes() -> int:
    """Resident set size now (bytes)."""
    kib = _status_kib("VmRSS")
    if kib is not None:
        return kib * 1024
    import psutil

    return int(psutil.Process().memory_info().rss)


def rss_peak_bytes() -> int:
    """Resident-set high-water mark (bytes): since the last reset, or since process start."""
    kib = _status_kib("VmHWM")
    if kib is not None:
        return kib * 1024
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak * (1 if sys.platform == "darwin" else 1024))


def lifetime_rss_peak_bytes() -> int:
    """RSS high-water mark of the whole process, resets by :func:`reset_rss_peak` included."""
    return max(_peak_before_resets, rss_peak_bytes())


def reset_rss_peak() -> bool:
    """Reset ``VmHWM`` to the current RSS; False when the kernel does not allow it.

    The mark reached so far is kept for :func:`lifetime_rss_peak_bytes`.
    """
    global _peak_before_resets
    _peak_before_resets = max(_peak_before_resets, rss_peak_bytes())
    try:
        _CLEAR_REFS.write_text("5")
    except OSError:
        return False
    return _status_kib("VmHWM") is not None


class PeakTracker:
    """Per-phase process peak: ``reset()`` at the phase start, ``read()`` at its end.

    ``device`` picks CUDA statistics (a CUDA device) or the RSS high-water mark (anything
    else). Reading never synchronises more than the allocator statistics require.
    """

    def __init__(self, device: torch.device | str | None = None) -> None:
        dev = torch.device(device) if device is not None else torch.device("cpu")
        self.device = dev
        self.cuda = dev.type == "cuda" and torch.cuda.is_available()
        self.resettable = True if self.cuda else _STATUS.exists()

    def reset(self) -> None:
        if self.cuda:
            torch.cuda.reset_peak_memory_stats(self.device)
        else:
            self.resettable = reset_rss_peak()

    def read(self) -> PeakReading:
        if self.cuda:
            return PeakReading(
                kind="cuda",
                peak_bytes=int(torch.cuda.max_memory_allocated(self.device)),
                current_bytes=int(torch.cuda.memory_allocated(self.device)),
                reserved_peak_bytes=int(torch.cuda.max_memory_reserved(self.device)),
                resettable=True,
            )
        return PeakReading(
            kind="rss",
            peak_bytes=rss_peak_bytes(),
            current_bytes=rss_bytes(),
            reserved_peak_bytes=0,
            resettable=self.resettable,
        )


# ----------------------------------------------------------------------------- isolation


def run_isolated(target: str, kwargs: dict[str, Any], timeout: float | None = None) -> dict[str, Any]:
    """Call ``module:function(**kwargs)`` in a fresh Python process; return its JSON result.

    The function must return a JSON-able dict. The child adds ``"process_peak"``: its own
    resident-set high-water mark over the whole call (a fresh interpreter has no memory
    cached by earlier work, so peaks of different calls compare fairly). A failure in
    the child raises :class:`SkipxlError` with the child's last output lines.
    """
    with tempfile.TemporaryDirectory(prefix="skipxl-mem-") as tmp:
        args_path, out_path = Path(tmp) / "args.json", Path(tmp) / "result.json"
        args_path.write_text(json.dumps({"target": target, "kwargs": kwargs}))
        env = dict(os.environ)
        src_root = str(Path(__file__).resolve().parents[2])
        env["PYTHONPATH"] = src_root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        proc = subprocess.run(
            [sys.executable, "-m", "skipxl.profiling.peak", str(args_path), str(out_path)],
            capture_output=True,
            text=True,
            timeout=timeout,
            env=env,
            check=False,
        )
        if proc.returncode != 0 or not out_path.is_file():
            tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-15:])
            raise SkipxlError(f"isolated run of {target} failed (exit {proc.returncode}):\n{tail}")
        return json.loads(out_path.read_text())


def allocation_probe(mib: int) -> dict[str, Any]:
    """Allocate and touch ``mib`` MiB, then free it: a known peak for checking the tooling."""
    block = torch.ones(int(mib) * 1024 * 1024 // 4, dtype=torch.float32)  # [mib MiB / 4 B]
    total = float(block.sum()) if block.numel() else 0.0
    del block
    return {"mib": int(mib), "checksum": total}


def _child_main(args_path: str, out_path: str) -> None:
    spec = json.loads(Path(args_path).read_text())
    module_name, func_name = spec["target"].split(":")
    func = getattr(importlib.import_module(module_name), func_name)
    result = func(**spec["kwargs"])
    result["process_peak"] = {"kind": "rss", "peak_bytes": lifetime_rss_peak_bytes(), "resettable": False}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        result["process_peak"] = {
            "kind": "cuda",
            "peak_bytes": int(torch.cuda.max_memory_allocated()),
            "reserved_peak_bytes": int(torch.cuda.max_memory_reserved()),
            "resettable": True,
        }
    Path(out_path).write_text(json.dumps(result))


if __name__ == "__main__":
    _child_main(sys.argv[1], sys.argv[2])
