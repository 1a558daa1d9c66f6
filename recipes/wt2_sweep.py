#!/usr/bin/env python
"""Sweep: the four variants of arXiv 2311.08123 x 3 seeds on WikiText-2, resumable.

    python recipes/wt2_sweep.py --data_dir ../shared/data/wikitext-2 --out runs/wt2_sweep
    python recipes/wt2_sweep.py ... --dry_run           # the planned skipxl train commands
    skipxl claims runs/wt2_sweep --glue docs/results/glue_minilm_mrpc_rte.csv

Calling it again skips finished runs and resumes unfinished ones (``skipxl lm-sweep``; the
budget and its wall time are documented in skipxl/engine/lm_sweep.py).
"""

import sys
from pathlib import Path

try:
    import skipxl  # noqa: F401
except ModuleNotFoundError:  # running from a checkout without `pip install -e .`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from skipxl.cli import main

if __name__ == "__main__":
    raise SystemExit(main(["lm-sweep", "--recipe=wt2", *sys.argv[1:]], name=Path(sys.argv[0]).name))
