"""Where a run's code and environment came from: git commit, local changes, packages.

Both run folders (Transformer-XL training and GLUE sweeps) record this in ``meta.json`` so
that a number can be traced back to the exact code and library versions that produced it.
"""

from __future__ import annotations

import functools
import os
import platform
import subprocess
from pathlib import Path
from typing import Any

#: The repository root (the package lives in ``<root>/skipxl``).
REPO_ROOT = Path(__file__).resolve().parents[1]


def _git(*args: str) -> str | None:
    """Output of a read-only git command in the repository, or ``None`` when git fails."""
    try:
        out = subprocess.run(
            ["git", *args], cwd=REPO_ROOT, capture_output=True, text=True, timeout=60, check=False
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout if out.returncode == 0 else None


@functools.lru_cache(maxsize=1)
def git_info() -> dict[str, Any]:
    """``{"commit": sha | None, "dirty": bool | None}`` for the code that is running.

    ``--no-optional-locks``: never take ``.git/index.lock``, so a concurrent commit cannot
    fail because a run is reading the status.
    """
    commit = _git("rev-parse", "HEAD")
    status = _git("--no-optional-locks", "status", "--porcelain", "--untracked-files=no")
    return {
        "commit": commit.strip() if commit else None,
        "dirty": bool(status.strip()) if status is not None else None,
    }


@functools.lru_cache(maxsize=1)
def installed_packages() -> list[str]:
    """``name==version`` of every installed distribution, sorted (a ``pip freeze`` without pip)."""
    from importlib import metadata

    names = (f"{d.metadata['Name']}=={d.version}" for d in metadata.distributions() if d.metadata["Name"])
    return sorted(names)


@functools.lru_cache(maxsize=1)
def cpu_info() -> dict[str, Any]:
    """The CPU that produced a run's numbers.

    PyTorch picks its float kernels by instruction set (``torch_capability``: AVX2, AVX512, ...),
    so the same code, seed and libraries round differently on an AVX2 and an AVX-512 machine and
    two such runs drift apart like two noise draws. ``meta.json`` records it so that a bit-level
    comparison is only made between runs that could agree (``tests/golden`` keys on it too).
    """
    import torch

    model = None
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        names = (
            line.split(":", 1)[1].strip()
            for line in cpuinfo.read_text().splitlines()
            if line.startswith("model name")
        )
        model = next(names, None)
    return {
        "model": model or platform.processor() or None,
        "machine": platform.machine(),
        "cores": os.cpu_count(),
        "torch_capability": torch.backends.cpu.get_cpu_capability(),
    }
