"""Record (or check) the engine's golden numbers: per-step training losses, validation and final
losses of `tiny` on the built-in corpus, and the Skip-Retain / cross-head draws for a seed.

Refactors change no number: this file was run on the code *before* the engine redesign
(issue 11) and its output committed as ``tests/golden/engine_losses.json``;
``tests/test_golden_losses.py`` re-runs every case and compares bit for bit (float equality).

Float kernels differ by instruction set, so the training numbers are kept per CPU capability
(``train/AVX512``, ``train/AVX2``, ...; ``torch.backends.cpu.get_cpu_capability()``): a machine is
held bit-equal to its own capability's numbers and close to every other's. ``--write`` adds (or
replaces) only this machine's group, and only on code whose numbers already match another
capability's group bit for bit (check that first on such a machine, or by CI there); the draws are
integers, the same everywhere, and ``--write`` refuses to change them.

    PYTHONPATH=$PWD DS_ACCELERATOR=cpu OMP_NUM_THREADS=1 .venv/bin/python tools/golden_losses.py --write
    PYTHONPATH=$PWD DS_ACCELERATOR=cpu OMP_NUM_THREADS=1 .venv/bin/python tools/golden_losses.py  # check
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
GOLDEN = REPO / "tests" / "golden" / "engine_losses.json"

# The four variants, then Skip-Retain across a phase switch (step 10 of 20) with gradient
# accumulation 2, the explicit zero gradient for skipped layers (weight decay makes it visible), and
# the plateau rule ending phase 1.
TRAIN_CASES: dict[str, dict[str, Any]] = {
    "baseline": dict(variant="baseline"),
    "skip_retain": dict(variant="skip_retain", pskip=0.5),
    "cross_head": dict(variant="cross_head", beta=0.5),
    "combined": dict(variant="combined", pskip=0.5, beta=0.5),
    "skip_retain_phase_switch_accum2": dict(
        variant="skip_retain", pskip=0.5, grad_accum=2, phase1_steps=10, phase1_patience=None
    ),
    "skip_retain_zero_grad": dict(variant="skip_retain", pskip=0.5, skipped_grad="zero", weight_decay=0.1),
    # min_delta 100: the second validation (step 10) is no improvement, patience 1 ends phase 1 there
    "combined_plateau_switch": dict(
        variant="combined",
        pskip=0.5,
        beta=0.5,
        phase1_fraction=None,
        phase1_patience=1,
        phase1_min_delta=100.0,
    ),
}
STEPS = 20


def run_config(out: Path, case: dict[str, Any]) -> Any:
    """The RunConfig of one case: tiny, 20 steps, small validations and a small final evaluation."""
    from skipxl.engine.recipe import build_config

    flags: dict[str, Any] = dict(
        log_interval=1,
        eval_interval=5,
        save_interval=0,
        val_max_batches=2,
        builtin_train_tokens=20_000,
        builtin_eval_tokens=2_000,
        eval_batch_size=2,
        eval_mem_len=32,
        global_batch=4,
    )
    flags.update(case)
    return build_config("builtin", max_steps=STEPS, out=str(out), **flags)


def train_case(name: str) -> dict[str, Any]:
    """Train one case in a temporary folder; its per-step losses, validation losses and final scores."""
    import torch

    from skipxl.engine.train import train

    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / name
        res = train(run_config(out, TRAIN_CASES[name]), progress=False)
        rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return {
        "losses": res.losses,
        "val_losses": [[r["step"], r["val/loss"]] for r in rows if "val/loss" in r],
        "final_val_loss": res.final["final_val/loss"],
        "test_loss": res.final["test/loss"],
        "switch_steps": [r["step"] for r in rows if "phase/switch_step" in r],
    }


def draws(n_steps: int = 12) -> dict[str, Any]:
    """The skip masks and head indices drawn for plan seeds 0 and 7 (tiny, combined: p = 0.5,
    beta = 0.5, both cross-head modes), ``n_steps`` steps each."""
    from skipxl.engine.variants import apply_variant
    from skipxl.model import get_preset

    out: dict[str, Any] = {}
    for seed in (0, 7):
        for mode in ("permutation", "per_head"):
            cfg = apply_variant(
                get_preset("tiny", plan_seed=seed),
                "combined",
                pskip=0.5,
                beta=0.5,
                cross_head_options={"mode": mode},
            )
            plans = draw_plans(cfg, n_steps)
            out[f"seed{seed}_{mode}"] = {
                "skip": [list(p.skip) for p in plans],
                "head_index": [p.head_index.tolist() for p in plans],
            }
    return out


def draw_plans(cfg: Any, n_steps: int) -> list[Any]:
    """``n_steps`` training-step plans for a model config, from the engine's training policies
    (before issue 11 these came from ``TransformerXL.draw_plan``; the numbers are the same)."""
    from skipxl.engine.policies import paper_policies
    from skipxl.model import StepPlan

    policies = paper_policies(cfg)
    return [policies.plan(step, StepPlan()) for step in range(n_steps)]


TRAIN_PREFIX = "train/"


def train_group() -> str:
    """The golden file's group of training numbers for this machine's CPU capability (the
    instruction set PyTorch's float kernels were chosen for: ``train/AVX2``, ``train/AVX512``, ...)."""
    from skipxl.provenance import cpu_info

    return TRAIN_PREFIX + cpu_info()["torch_capability"]


def train_groups(numbers: dict[str, Any]) -> list[str]:
    """The training groups a golden file holds, sorted."""
    return sorted(key for key in numbers if key.startswith(TRAIN_PREFIX))


def machine_note() -> str:
    """One line naming the machine a group was recorded on (``machines`` in the golden file)."""
    from skipxl.provenance import cpu_info

    cpu = cpu_info()
    return f"{cpu['model']} ({cpu['machine']}, {cpu['cores']} cores), recorded {time.strftime('%Y-%m-%d')}"


def record() -> dict[str, Any]:
    """This machine's numbers: its training group and the (capability-free) draws."""
    return {train_group(): {name: train_case(name) for name in TRAIN_CASES}, "draws": draws()}


def merge(old: dict[str, Any], new: dict[str, Any]) -> dict[str, Any]:
    """``old`` with this machine's training group added or replaced; the draws must not change."""
    if old.get("draws", new["draws"]) != new["draws"]:
        raise SystemExit(
            "error: the skip masks / head indices differ from the golden file's, and they do not "
            "depend on the CPU: the code changed a number; fix the code instead of re-recording"
        )
    group = train_group()
    machines = {**old.get("machines", {}), group.removeprefix(TRAIN_PREFIX): machine_note()}
    out = {key: value for key, value in old.items() if key not in ("machines", "draws")}
    out[group] = new[group]
    return {**dict(sorted(out.items())), "draws": new["draws"], "machines": machines}


def dump(numbers: dict[str, Any]) -> str:
    """JSON with one line per case (floats as Python's repr: they load back bit for bit)."""
    groups = []
    for group, cases in numbers.items():
        rows = ",\n".join(f"  {json.dumps(name)}: {json.dumps(case)}" for name, case in cases.items())
        groups.append(f"{json.dumps(group)}: {{\n{rows}\n }}")
    return "{\n " + ",\n ".join(groups) + "\n}\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write", action="store_true", help=f"write {GOLDEN.relative_to(REPO)}")
    args = parser.parse_args()
    old = json.loads(GOLDEN.read_text()) if GOLDEN.is_file() else {}
    group = train_group()
    if not args.write and group not in old:  # before training: nothing to compare with
        recorded = ", ".join(train_groups(old)) or "none"
        print(f"no golden numbers for this CPU ({group}; recorded: {recorded}); see --write")
        return 2
    got = record()
    if args.write:
        GOLDEN.parent.mkdir(parents=True, exist_ok=True)
        GOLDEN.write_text(dump(merge(old, got)))
        print(f"wrote {group} and the draws to {GOLDEN}")
        return 0
    same = got[group] == old[group] and got["draws"] == old["draws"]
    print(f"golden numbers ({group}): " + ("bit-equal" if same else "DIFFER"))
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
