#!/usr/bin/env python
"""Train the paper's four variants x several seeds with one recipe, then print `skipxl compare --group`.

Regenerates the variant table of arXiv 2311.08123-style comparisons at equal budget::

    python tools/sweep_variants.py --recipe builtin --seeds 1,2,3 --out runs/sweep-builtin
    python tools/sweep_variants.py --recipe wt2 --preset small --seeds 1,2,3 \\
        --out runs/sweep-wt2 -- --data_dir ../shared/data/wikitext-2 --max_steps 2000

Arguments after ``--`` go to every training run unchanged. Finished runs are skipped, so an
interrupted sweep continues where it stopped (an unfinished run is resumed).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
VARIANTS = ("baseline", "skip_retain", "cross_head", "combined")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipe", default="builtin")
    parser.add_argument("--preset", default=None)
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--seeds", default="1,2,3")
    parser.add_argument("--out", default=None, help="sweep folder (default runs/sweep-<recipe>)")
    parser.add_argument("extra", nargs=argparse.REMAINDER, help="-- then flags for every run")
    args = parser.parse_args()
    extra = [a for a in args.extra if a != "--"]
    out = Path(args.out or f"runs/sweep-{args.recipe}")
    out.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    env.setdefault("DS_ACCELERATOR", "cpu")
    env.setdefault("SKIPXL_NO_PROGRESS", "1")
    skipxl = [sys.executable, "-m", "skipxl.cli"]
    for seed in args.seeds.split(","):
        for variant in args.variants.split(","):
            run = out / f"{variant}-seed{seed}"
            if (run / "results.json").is_file():
                print(f"== {run}: done, skipped", flush=True)
                continue
            cmd = [*skipxl, "train", "--recipe", args.recipe, "--out", str(run)]
            if (run / "config.json").is_file():
                cmd.append("--resume")
            else:
                cmd += ["--variant", variant, "--seed", seed, *extra]
                if args.preset:
                    cmd += ["--preset", args.preset]
            print(f"== {run}", flush=True)
            code = subprocess.call(cmd, env=env, cwd=REPO)
            if code:
                print(f"run {run} failed with exit status {code}", file=sys.stderr)
                return code
    return subprocess.call(
        [*skipxl, "compare", str(out), "--group", "--png", str(out / "compare.png")], env=env, cwd=REPO
    )


if __name__ == "__main__":
    raise SystemExit(main())
