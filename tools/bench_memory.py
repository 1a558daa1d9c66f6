"""Regenerate the memory tables of the report: `skipxl memory` on tiny and wt103_base shapes.

Usage::

    python tools/bench_memory.py --out runs/memory_bench            # CPU defaults below
    python tools/bench_memory.py --only tiny --steps 8

Each configuration runs the four variants (fresh process per variant) and records whether
the no-extra-memory check passed; ``<out>/memory_tables.md`` collects the printed tables.
A failed check is a result, not an error of this script.
"""

from __future__ import annotations

import contextlib
import io
from pathlib import Path
from typing import Any

import fire

CONFIGS: dict[str, dict[str, Any]] = {
    "tiny": dict(preset="tiny", batch=2, steps=8),
    "tiny_contiguous": dict(preset="tiny", batch=2, steps=8, retain_positions="contiguous"),
    "wt103_base": dict(preset="wt103_base", batch=2, steps=6),
}


def main(
    out: str = "runs/memory_bench", only: str = "", steps: int | None = None, engine: str = "deepspeed"
) -> None:
    from skipxl.engine.memory import run_memory

    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    names = [n for n in CONFIGS if not only or n in only.split(",")]
    sections = []
    for name in names:
        kwargs = dict(CONFIGS[name], engine=engine, per_layer=True, out=str(out_dir / name))
        if steps is not None:
            kwargs["steps"] = steps
        buf = io.StringIO()
        status = "passed"
        with contextlib.redirect_stdout(buf):
            try:
                run_memory(**kwargs)
            except SystemExit as exc:
                status = f"FAILED (exit {exc.code})"
        text = "\n".join(line for line in buf.getvalue().splitlines() if not line.startswith("[memory]"))
        print(text)
        sections.append(f"### {name}: {status}\n\n`{kwargs}`\n\n```\n{text}\n```\n")
    (out_dir / "memory_tables.md").write_text("\n".join(sections))
    print(f"wrote {out_dir / 'memory_tables.md'}")


if __name__ == "__main__":
    fire.Fire(main)
