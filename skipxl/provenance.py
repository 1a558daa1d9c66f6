"""Where a run's code and environment came from: git commit, local changes, packages.

Both run folders (Transformer-XL training and GLUE sweeps) record this in ``meta.json`` so
that a number can be traced back to the exact code and library versions that produced it.
"""

from __future__ import annotations

import functools
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
