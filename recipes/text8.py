#!/usr/bin/env python
"""Recipe: Transformer-XL and the paper's variants (arXiv 2311.08123) on
text8 (character level, bits per character).

One process (CPU or one GPU)::

    python recipes/text8.py --preset base --variant baseline \\
        --data_dir data/text8 --out runs/text8-base

Several GPUs / nodes (DeepSpeed launcher; --hostfile for several nodes)::

    deepspeed --num_gpus 8 recipes/text8.py --preset base --variant baseline \\
        --data_dir data/text8 --out runs/text8-base --ds_config zero2_bf16

Smoke test on the embedded corpus:
``python recipes/text8.py --corpus builtin --preset tiny --max_steps 20``.
All flags: ``python recipes/text8.py --help`` (see skipxl.engine.recipe for the defaults).
"""

import sys
from pathlib import Path

try:
    import skipxl  # noqa: F401
except ModuleNotFoundError:  # running from a checkout without `pip install -e .`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from skipxl.cli import recipe_main

if __name__ == "__main__":
    sys.exit(recipe_main("text8"))
