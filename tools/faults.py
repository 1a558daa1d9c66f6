"""Fault-injection campaign (issue 17): inject faults into tiny training runs, resume, and count
what happened per fault kind.

    python tools/faults.py --trials 100 --seed 0 --out /tmp/faults            # all kinds
    python tools/faults.py --kinds bitflip,sigterm_rank1 --trials 4 --seed 1  # a subset

Every trial is judged against an uninterrupted reference run of the same configuration (one
rank or two): a *clean resume* ends with exit 0 after ``--resume``; a *bitwise continuation*
also ends with the reference's exact final weights (every tensor ``torch.equal``) and test loss;
a *clear error* is one ``error:`` line (or, for the fault itself, the documented exit status:
143/130 for a signal, 124 for the watchdog, 2 for an error) with no traceback; a *hang* is a
process that outlived its deadline; *silent* counts runs that finished with other numbers and
no word of warning (the failure this campaign exists to find); *lost work* sums the steps
trained again after the resume.

Fault kinds: checkpoint files damaged in place (``bitflip``, ``truncate``, ``zero``, ``delete``,
``bad_latest``; the resume runs in this process), and process faults (``kill9_step``,
``kill9_save``, ``kill9_final_eval``, ``sigterm_rank0``, ``sigint_rank0``, ``sigterm_rank1``,
``sigterm_group``, ``sigkill_rank1``, ``sigstop_rank1``, ``disk_full``; real processes, two ranks
for the ``rank``/``group`` kinds), and requeues on another world size (``requeue_2to1``: kill -9
of rank 1 of a two-rank job, resumed on one rank; ``requeue_1to2``: SIGTERM to a one-rank job,
resumed on two). A requeue cannot continue bit for bit (the gradient's sum runs in another
order, see ``skipxl.engine.reshard``): it is judged *within rounding* (every weight within 5e-5
and the test loss within 1e-4 of the uninterrupted run; dropout off, so the random masks do not
differ), which a resume that gave streams the wrong memories misses by ~30x. ``disk_full``
trains on a small tmpfs when this process may mount one (root), else under a file-size limit
(RLIMIT_FSIZE), and resumes after moving the run to a roomy disk. Seeded: the same ``--seed``
injects the same faults at the same moments (up to the timing of real processes). Tiny preset,
built-in corpus, one thread.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import resource
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))
os.environ.setdefault("DS_ACCELERATOR", "cpu")
os.environ.setdefault("SKIPXL_NO_PROGRESS", "1")

FILE_KINDS = ("bitflip", "truncate", "zero", "delete", "bad_latest")
PROC_KINDS = (
    "kill9_step",
    "kill9_save",
    "kill9_final_eval",
    "sigterm_rank0",
    "sigint_rank0",
    "sigterm_rank1",
    "sigterm_group",
    "sigkill_rank1",
    "sigstop_rank1",
    "disk_full",
)
REQUEUE_KINDS = ("requeue_2to1", "requeue_1to2")
PROC_KINDS += REQUEUE_KINDS
TWO_RANK = {"sigterm_rank1", "sigterm_group", "sigkill_rank1", "sigstop_rank1", "requeue_2to1"}
#: Closeness of a requeued run to its reference (see the module docstring).
WEIGHT_ATOL, LOSS_ATOL = 5e-5, 1e-4
STEPS = 8  # the in-process runs of the file kinds
PROC_STEPS = 24  # the process kinds: long enough that a fault lands before the job ends
FLAGS = {
    "builtin_train_tokens": 20000,
    "builtin_eval_tokens": 2000,
    "eval_batch_size": 2,
    "eval_mem_len": 32,
    "global_batch": 4,
    "log_interval": 1,
    "eval_interval": 0,
    "val_max_batches": 2,
    "max_steps": PROC_STEPS,
}
DEADLINE_S = 400.0


@dataclass
class Outcome:
    kind: str
    clean_resume: bool = False
    bitwise: bool = False
    within_rounding: bool = False
    missed: bool = False  # the job ended before the fault could interrupt it (no fault injected)
    clear_error: bool = False
    hang: bool = False
    silent: bool = False
    lost_steps: int = 0
    note: str = ""


# ----------------------------------------------------------------------------- helpers


def cli_args(out: Path, **extra: Any) -> list[str]:
    flags = {**FLAGS, **extra}
    return ["train", "--out", str(out), *[f"--{k}={v}" for k, v in flags.items()], "--progress=False"]


def launch(world: int, args: list[str], preexec: Any = None) -> list[subprocess.Popen[str]]:
    from engine_helpers import launch_cli

    return launch_cli(world, *args, preexec=preexec)


def finish(procs: list[subprocess.Popen[str]], deadline: float) -> tuple[list[int], list[str], bool]:
    outs, hung = [], False
    for p in procs:
        try:
            outs.append(p.communicate(timeout=max(1.0, deadline - time.time()))[0])
        except subprocess.TimeoutExpired:
            hung = True
            for q in procs:
                q.kill()
            outs.append(p.communicate()[0])
    return [p.returncode for p in procs], outs, hung


def logged_steps(run: Path) -> list[int]:
    path = run / "metrics.jsonl"
    if not path.is_file():
        return []
    steps = []
    for line in path.read_bytes().decode("utf-8", "replace").splitlines():
        if '"train/loss"' in line:
            with contextlib.suppress(ValueError, KeyError):
                steps.append(int(json.loads(line)["step"]))
    return steps


def wait_until(pred: Any, procs: list[subprocess.Popen[str]], timeout: float = DEADLINE_S) -> bool:
    end = time.time() + timeout
    while time.time() < end:
        if pred():
            return True
        if any(p.poll() is not None for p in procs):
            return False
        time.sleep(0.05)
    return False


def weights(run: Path) -> dict[str, Any]:
    from skipxl.engine.checkpoint import fp32_state_dict

    return fp32_state_dict(run / "checkpoints")


def same_as(reference: Path, run: Path) -> bool:
    import torch

    a, b = weights(reference), weights(run)
    if a.keys() != b.keys() or not all(torch.equal(a[k], b[k]) for k in a):
        return False
    ra = json.loads((reference / "results.json").read_text())
    rb = json.loads((run / "results.json").read_text())
    return ra["test/loss"] == rb["test/loss"]


def close_to(reference: Path, run: Path) -> bool:
    """Every weight within WEIGHT_ATOL and the test loss within LOSS_ATOL (a requeue's verdict)."""
    a, b = weights(reference), weights(run)
    if a.keys() != b.keys():
        return False
    if any(float((a[k] - b[k]).abs().max()) > WEIGHT_ATOL for k in a if hasattr(a[k], "abs")):
        return False
    ra = json.loads((reference / "results.json").read_text())
    rb = json.loads((run / "results.json").read_text())
    return abs(ra["test/loss"] - rb["test/loss"]) <= LOSS_ATOL


def clear(codes: list[int], outs: list[str], allowed: set[int]) -> bool:
    return all(c in allowed for c in codes) and not any("Traceback" in o for o in outs)


# ----------------------------------------------------------------------------- file faults


def damage(path: Path, kind: str, rng: random.Random) -> None:
    data = bytearray(path.read_bytes())
    if kind == "bitflip" and data:
        n = rng.randint(1, 64)
        at = rng.randrange(0, max(1, len(data) - n))
        bit = 1 << rng.randrange(8)
        for i in range(at, min(len(data), at + n)):
            data[i] ^= bit
        path.write_bytes(bytes(data))
    elif kind == "truncate":
        path.write_bytes(bytes(data[: rng.randrange(0, max(1, len(data)))]))
    elif kind == "zero":
        path.write_bytes(bytes(len(data)))
    elif kind == "delete":
        path.unlink()


def file_trial(kind: str, rng: random.Random, stopped: Path, reference: Path, work: Path) -> Outcome:
    """Damage a copy of a run stopped at step 4 (checkpoints 2 and 4), resume it in-process."""
    from engine_helpers import tiny_config

    from skipxl.engine.train import train
    from skipxl.errors import SkipxlError

    run = work / "run"
    shutil.rmtree(run, ignore_errors=True)
    shutil.copytree(stopped, run)
    ckpt_dir = run / "checkpoints"
    if kind == "bad_latest":
        choice = rng.choice(["garbage", "missing_tag", "empty", "deleted"])
        latest = ckpt_dir / "latest"
        if choice == "deleted":
            latest.unlink()
        else:
            latest.write_bytes({"garbage": bytes(rng.randrange(256) for _ in range(12)),
                                "missing_tag": b"step_00000099", "empty": b""}[choice])  # fmt: skip
        note = choice
    else:
        tags = sorted(p.name for p in ckpt_dir.iterdir() if p.name.startswith("step_"))
        hit = [tags[-1]] if rng.random() < 0.75 else tags  # now and then both checkpoints
        note = ""
        for tag in hit:
            files = sorted(p for p in (ckpt_dir / tag).iterdir() if p.is_file())
            target = rng.choice(files)
            damage(target, kind, rng)
            note += f"{tag}/{target.name} "
    outcome = Outcome(kind, note=note.strip())
    import io

    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err):
            result = train(
                tiny_config(run, steps=STEPS, save_interval=2, eval_interval=0), progress=False, resume=True
            )
    except SkipxlError as exc:
        outcome.clear_error = True
        outcome.note += f" -> error: {str(exc)[:120]}"
        return outcome
    outcome.clean_resume = result.finished
    outcome.bitwise = outcome.within_rounding = result.finished and same_as(reference, run)
    warned = "warning:" in err.getvalue()
    outcome.silent = result.finished and not outcome.bitwise and not warned
    outcome.lost_steps = max(0, 4 - (STEPS - len(result.losses)))
    return outcome


# ----------------------------------------------------------------------------- process faults


def _fsize_limit() -> None:
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG
    resource.setrlimit(resource.RLIMIT_FSIZE, (3_000_000, 3_000_000))


def proc_trial(kind: str, rng: random.Random, refs: dict[int, Path], work: Path) -> Outcome:
    world = 2 if kind in TWO_RANK else 1
    run = work / "run"
    shutil.rmtree(run, ignore_errors=True)
    outcome = Outcome(kind)
    extra: dict[str, Any] = {"save_interval": 1 if kind == "kill9_save" else 2}
    if kind in ("sigstop_rank1", "sigkill_rank1", "requeue_2to1"):
        extra["collective_timeout_s"] = 20
    requeue = kind in REQUEUE_KINDS
    if requeue:
        extra["dropout"] = 0.0
    resume_world = 3 - world if requeue else world
    mount = None
    preexec = None
    if kind == "disk_full":
        mount = work / "tmpfs"
        mount.mkdir(exist_ok=True)
        ok = (
            os.geteuid() == 0
            and subprocess.run(
                ["mount", "-t", "tmpfs", "-o", "size=12m", "tmpfs", str(mount)], capture_output=True
            ).returncode
            == 0
        )
        if ok:
            run = mount / "run"
            outcome.note = "tmpfs 12 MiB"
        else:
            mount, preexec = None, _fsize_limit
            outcome.note = "RLIMIT_FSIZE 3 MB (no tmpfs)"
    deadline = time.time() + DEADLINE_S
    procs = launch(world, cli_args(run, **extra), preexec)
    expected = {0}
    started = wait_until(lambda: len(logged_steps(run)) >= 1, procs)
    if kind == "disk_full":
        expected = {2}
    elif not started:
        outcome.note += " (run ended before the fault)"
    else:  # a random step of the run, then a random moment inside the next one
        at_step = rng.randint(1, PROC_STEPS - 4)
        wait_until(lambda: max(logged_steps(run), default=0) >= at_step, procs)
        time.sleep(rng.uniform(0.0, 0.2))
        target = procs[1] if kind.endswith("rank1") or kind == "requeue_2to1" else procs[0]
        if kind.startswith("kill9") or kind in ("sigkill_rank1", "requeue_2to1"):
            if kind == "kill9_final_eval":
                wait_until(lambda: PROC_STEPS in logged_steps(run), procs)
                time.sleep(rng.uniform(0.0, 0.3))
            target.send_signal(signal.SIGKILL)
            expected = {-9, 2, 124}  # the killed rank, and its peer stopping on the lost peer
        elif kind == "sigstop_rank1":
            target.send_signal(signal.SIGSTOP)
            expected = {124}
        elif kind == "sigterm_group":
            for p in procs:
                p.send_signal(signal.SIGTERM)
            expected = {143}
        else:
            sig = signal.SIGINT if kind.startswith("sigint") else signal.SIGTERM
            target.send_signal(sig)
            expected = {128 + int(sig)}
    if kind == "sigstop_rank1":
        codes0, outs0, hung = finish(procs[:1], deadline)
        procs[1].kill()
        _, outs1, _ = finish(procs[1:], deadline)
        codes, outs = [codes0[0], -9], outs0 + outs1
        outcome.clear_error = codes0[0] == 124 and "rank 1 (pid" in outs0[0]
        outcome.missed = codes0[0] == 0
    else:
        codes, outs, hung = finish(procs, deadline)
        finished_anyway = codes == [0] * world
        outcome.missed = finished_anyway
        if not outcome.missed and not clear([c for c in codes if c != -9], outs, expected):
            outcome.note += f" fault exit {codes}: " + (outs[0].strip().splitlines() or [""])[-1][:150]
        expected_here = expected | ({0} if finished_anyway else set())
        outcome.clear_error = clear([c for c in codes if c != -9], outs, expected_here) and not (
            kind == "disk_full"
            and "could not write the checkpoint" not in "".join(outs)
            and not finished_anyway
        )
    outcome.hang = hung
    before = logged_steps(run)
    if mount is not None:  # free space: move the run to a roomy disk, then resume there
        roomy = work / "roomy"
        shutil.rmtree(roomy, ignore_errors=True)
        shutil.copytree(run, roomy)
        subprocess.run(["umount", str(mount)], check=False)
        run = roomy
    if hung:
        return outcome
    done_before = max(before, default=0)
    outcome.lost_steps = max(0, done_before - saved_step(run))
    if not (run / "results.json").is_file() or codes != [0] * world:
        codes, outs, hung = finish(
            launch(resume_world, ["train", "--resume", "--out", str(run), "--progress=False"]),
            time.time() + DEADLINE_S,
        )
        outcome.hang = outcome.hang or hung
        if any(c != 0 for c in codes):
            outcome.note += f" resume exit {codes}: " + (outs[0].strip().splitlines() or [""])[-1][:150]
            return outcome
        if requeue and "resuming on" not in "".join(outs):
            outcome.note += " (the requeue did not say it changed the world size)"
    outcome.clean_resume = True
    reference = refs[-world] if requeue else refs[world]
    outcome.bitwise = same_as(reference, run)
    outcome.within_rounding = outcome.bitwise or close_to(reference, run)
    outcome.silent = not (outcome.bitwise if not requeue else outcome.within_rounding)
    return outcome


def saved_step(run: Path) -> int:
    """The step a resume of ``run`` starts from (0 without an intact checkpoint)."""
    from skipxl.engine.checkpoint import choose_tag
    from skipxl.errors import SkipxlError

    try:
        tag, _ = choose_tag(run / "checkpoints")
    except SkipxlError:
        return 0
    return int(tag.split("_")[1])


# ----------------------------------------------------------------------------- campaign


def references(work: Path, kinds: list[str]) -> tuple[dict[int, Path], Path | None, Path | None]:
    """Uninterrupted runs: 1 and 2 ranks through the command (process kinds); in-process ones for
    the file kinds (a full run and the same run stopped at step 4)."""
    refs: dict[int, Path] = {}  # world -> run; -world -> the same without dropout (requeues)
    wanted = {
        (2 if k in TWO_RANK else 1) * (-1 if k in REQUEUE_KINDS else 1) for k in kinds if k in PROC_KINDS
    }
    for key in sorted(wanted):
        world, extra = abs(key), ({"dropout": 0.0} if key < 0 else {})
        run = work / f"reference_{world}rank{'_nodropout' if key < 0 else ''}"
        if not (run / "results.json").is_file():
            shutil.rmtree(run, ignore_errors=True)
            args = cli_args(run, save_interval=2, **extra)
            codes, outs, _ = finish(launch(world, args), time.time() + DEADLINE_S)
            assert codes == [0] * world, outs
        refs[key] = run
    full = stopped = None
    if any(k in FILE_KINDS for k in kinds):
        from engine_helpers import tiny_config

        from skipxl.engine.train import train

        full, stopped = work / "inproc_full", work / "inproc_stopped"
        for path in (full, stopped):
            shutil.rmtree(path, ignore_errors=True)
        cfg = dict(steps=STEPS, save_interval=2, eval_interval=0)
        train(tiny_config(full, **cfg), progress=False)
        train(tiny_config(stopped, **cfg), progress=False, stop_at_step=4)
    return refs, full, stopped


def campaign(kinds: list[str], trials: int, seed: int, work: Path, budget_s: float = 0.0) -> list[Outcome]:
    started = time.time()
    rng = random.Random(seed)
    work.mkdir(parents=True, exist_ok=True)
    refs, full, stopped = references(work, kinds)
    plan = [kinds[i % len(kinds)] for i in range(trials)]
    rng.shuffle(plan)
    outcomes = []
    for i, kind in enumerate(plan):
        if budget_s and time.time() - started > budget_s:
            print(f"time budget of {budget_s:.0f} s spent: {i} of {len(plan)} trials run", flush=True)
            break
        t0 = time.time()
        trial_dir = work / "trial"
        shutil.rmtree(trial_dir, ignore_errors=True)
        trial_dir.mkdir()
        trial_rng = random.Random(rng.randrange(2**32))
        if kind in FILE_KINDS:
            outcome = file_trial(kind, trial_rng, stopped, full, trial_dir)  # type: ignore[arg-type]
        else:
            outcome = proc_trial(kind, trial_rng, refs, trial_dir)
        outcomes.append(outcome)
        print(
            f"[{i + 1}/{len(plan)}] {kind:17s} clean={outcome.clean_resume:d} bitwise={outcome.bitwise:d} "
            f"rounding={outcome.within_rounding:d} missed={outcome.missed:d} "
            f"error={outcome.clear_error:d} hang={outcome.hang:d} silent={outcome.silent:d} "
            f"({time.time() - t0:.0f}s) {outcome.note}",
            flush=True,
        )
    return outcomes


COUNTED = ("missed", "clean_resume", "bitwise", "within_rounding", "clear_error", "hang", "silent")


def table(outcomes: list[Outcome]) -> str:
    cols = (
        "trials",
        "missed (job ended first)",
        "clean resumes",
        "bitwise continuations",
        "within rounding",
        "clear errors",
        "hangs",
        "silent",
        "lost steps",
    )
    lines = ["| fault | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|"]
    kinds = list(dict.fromkeys(o.kind for o in outcomes))
    for kind in [*kinds, "total"]:
        rows = outcomes if kind == "total" else [o for o in outcomes if o.kind == kind]
        counts = [len(rows)] + [sum(getattr(o, f) for o in rows) for f in (*COUNTED, "lost_steps")]
        lines.append(f"| {kind} | " + " | ".join(map(str, counts)) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kinds", default=",".join(FILE_KINDS + PROC_KINDS))
    parser.add_argument("--trials", type=int, default=len(FILE_KINDS + PROC_KINDS))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="/tmp/skipxl_faults")
    parser.add_argument("--json", default=None, help="also write the outcomes here")
    parser.add_argument(
        "--time_budget_s", type=float, default=0.0, help="start no trial after this (0 = none)"
    )
    args = parser.parse_args(argv)
    kinds = [k for k in args.kinds.split(",") if k]
    unknown = sorted(set(kinds) - set(FILE_KINDS + PROC_KINDS))
    if unknown:
        parser.error(f"unknown fault kinds {unknown}; choose from {FILE_KINDS + PROC_KINDS}")
    import torch

    torch.set_num_threads(1)
    outcomes = campaign(kinds, args.trials, args.seed, Path(args.out), args.time_budget_s)
    print(table(outcomes))
    if args.json:
        Path(args.json).write_text(json.dumps([o.__dict__ for o in outcomes], indent=1))
    bad = sum(o.silent or o.hang for o in outcomes)
    return 1 if bad else 0


if __name__ == "__main__":
    raise SystemExit(main())
