#!/usr/bin/env python
"""Recipe: Transformer-XL and the paper's variants (arXiv 2311.08123) on
enwik8 (byte level, bits per character).

One process (CPU or one GPU)::

    python recipes/enwik8.py --preset base --variant combined \\
        --data_dir data/enwik8 --out runs/enwik8-base-combined

Several GPUs / nodes (DeepSpeed launcher; --hostfile for several nodes)::

    deepspeed --num_gpus 8 recipes/enwik8.py --preset base --variant combined \\
        --data_dir data/enwik8 --out runs/enwik8-base-combined --ds_config zero2_bf16

Smoke test on the embedded corpus:
``python recipes/enwik8.py --corpus builtin --preset tiny --max_steps 20``.
All flags: ``python recipes/enwik8.py --help`` (see skipxl.engine.recipe for the defaults).
"""

import sys
from pathlib import Path

try:
    import skipxl  # noqa: F401
except ModuleNotFoundError:  # running from a checkout without `pip install -e .`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from skipxl.cli import recipe_main

if __name__ == "__main__":
    sys.exit(recipe_main("enwik8"))
