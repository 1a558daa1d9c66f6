#!/usr/bin/env python
"""Table of a DLT-vs-baseline experiment (tools/dlt_wt2_experiment.sh): per run and per variant
(mean ± std over seeds): validation/test perplexity, final layers owning weights, trainable
parameters, the parameter+gradient+optimizer bytes DLT measured in its run and the process
peak. Usage: python tools/dlt_summary.py OUT_DIR [--memory MEMORY_JSON]

``--memory`` adds the measured states of ``skipxl memory --variants baseline,dlt`` (the
baseline's parameter/gradient/optimizer bytes are measured there, once: they do not depend
on the seed).
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path


def _peak(run: Path) -> float:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]
    return max((r["memory/peak_bytes"] for r in rows if "memory/peak_bytes" in r), default=float("nan"))


def collect(out: Path) -> list[dict]:
    runs = []
    for run in sorted(p for p in out.iterdir() if (p / "results.json").is_file()):
        res = json.loads((run / "results.json").read_text())
        n_layer = json.loads((run / "config.json").read_text())["model"]["n_layer"]
        dlt = res.get("dlt", {})
        b = dlt.get("bytes", {})
        runs.append(
            {
                "run": run.name,
                "variant": res["variant"],
                "val_ppl": res["final_val/ppl"],
                "test_ppl": res["test/ppl"],
                "own_layers": dlt.get("independent_layers", n_layer),
                "trainable": dlt.get("trainable_params", res["n_params"]),
                "states_mib": (b["params"] + b["grads"] + b["optimizer"]) / 2**20 if b else float("nan"),
                "peak_mib": _peak(run) / 2**20,
                "sources": dlt.get("sources"),
            }
        )
    return runs


def _ms(xs: list[float]) -> str:
    if any(x != x for x in xs):  # NaN: not measured for this variant
        return "-"
    if len(xs) == 1:
        return f"{xs[0]:.2f}"
    return f"{statistics.mean(xs):.2f} ± {statistics.stdev(xs):.2f}"


def main(argv: list[str]) -> None:
    out = Path(argv[0])
    runs = collect(out)
    keys = ["val_ppl", "test_ppl", "own_layers", "trainable", "states_mib", "peak_mib"]
    print(
        "| run | variant | val ppl | test ppl | own layers | trainable params "
        "| DLT-measured states MiB | peak RSS MiB | final state |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for r in runs:
        cells = [f"{r[k]:.2f}" if isinstance(r[k], float) else str(r[k]) for k in keys]
        print(f"| {r['run']} | {r['variant']} | " + " | ".join(cells) + f" | {r['sources'] or '-'} |")
    print()
    print("| variant | seeds | " + " | ".join(keys) + " |")
    print("|---|---|" + "---|" * len(keys))
    for variant in dict.fromkeys(r["variant"] for r in runs):
        group = [r for r in runs if r["variant"] == variant]
        print(
            f"| {variant} | {len(group)} | "
            + " | ".join(_ms([float(r[k]) for r in group]) for k in keys)
            + " |"
        )
    if "--memory" in argv:
        mem = json.loads(Path(argv[argv.index("--memory") + 1]).read_text())
        print()
        print("| variant (skipxl memory) | params MiB | grads MiB | optimizer MiB | total MiB | own layers |")
        print("|---|---|---|---|---|---|")
        for name, s in mem["summaries"].items():
            st = s["states"]
            src = s.get("tying_sources")
            own = sum(1 for i, j in enumerate(src) if i == j) if src else "all"
            cells = [f"{st[k] / 2**20:.2f}" for k in ("params", "grads", "optimizer", "total")]
            print(f"| {name} | " + " | ".join(cells) + f" | {own} |")


if __name__ == "__main__":
    main(sys.argv[1:])
