"""Progress bars that behave: tqdm on a terminal, nothing in a log file or on other ranks."""

from __future__ import annotations

import os
import sys
from typing import Any


class _NoBar:
    """What :func:`progress_bar` returns when no bar is wanted: every call does nothing."""

    def update(self, n: int = 1) -> None:
        pass

    def close(self) -> None:
        pass


def progress_bar(total: int | None, desc: str, unit: str = "it", enabled: bool = True) -> Any:
    """A tqdm bar on stderr for a terminal, else a no-op (a cluster log gets no bar soup).

    Off as well with ``SKIPXL_NO_PROGRESS=1``, on ranks other than 0 and when ``enabled`` is
    false. Used by the evaluations, data preparation and GLUE fine-tuning.
    """
    if (
        not enabled
        or os.environ.get("SKIPXL_NO_PROGRESS") == "1"
        or os.environ.get("RANK", "0") != "0"
        or not sys.stderr.isatty()
    ):
        return _NoBar()
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit=unit, dynamic_ncols=True, leave=False, file=sys.stderr)
