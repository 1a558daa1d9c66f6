"""``skipxl claims``: one row per claim of arXiv 2311.08123's abstract, answered from run folders.

Claims (the paper's abstract, Vishnu & Chandra Sekhar 2023):

1. Skip-Retain improves perplexity over Transformer-XL;
2. stochastic cross-head attention improves perplexity;
3. the combined model beats the baseline with similar parameters;
4. ... and, on word level, with about 20% fewer parameters;
5. at no extra memory;
6. BERT + cross-head attention gives similar GLUE scores with about 30% lower std across seeds.

Language-model claims are measured as **paired per-seed differences** to the baseline (the runs
of one seed share data order and initialisation up to the variant), in percent of the
baseline's test perplexity (bits per character on char corpora), with a percentile bootstrap CI
over seeds. The memory claim has two instruments: each run's process peak (RSS on a CPU, paired
like the scores, but an allocator high-water mark that a shared machine moves by a few percent)
and, with ``--memory``, the profiler's exact byte counts (:func:`memory_claims`). The GLUE
claim reuses :mod:`skipxl.glue.report`: the bootstrap CI of the std reduction, the
Brown-Forsythe test, the power of the seed count for the 30% claim, and its
refusal to pool runs trained with different settings (:func:`~skipxl.glue.runlog.config_diff`).

Verdicts: **holds** when the CI lies entirely on the claimed side of zero; **does not hold** when
it lies entirely on the other side (or, for the GLUE spread, when the sweep had 80% power for a
30% reduction and still did not show one); otherwise **cannot tell at this power**.
"""

from __future__ import annotations

import csv
import io
import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from skipxl.config_io import load_json
from skipxl.errors import SkipxlError
from skipxl.glue.runlog import config_diff

HOLDS, FAILS, UNKNOWN = "holds", "does not hold", "cannot tell at this power"
NOT_MEASURED = "not measured"
MEMORY_TOLERANCE = 0.01  # "no extra memory": within +1% of the baseline's peak
MIN_SEEDS = 3  # fewer seeds (per side, or paired) give no verdict: a bootstrap over 2 values is degenerate
SMALLER = 0.9  # a model with under 90% of the baseline's parameters is "fewer parameters"
#: Config fields (flattened) that differ between the seeds of one variant.
PER_SEED = frozenset({"out_dir", "train.seed", "model.plan_seed"})
#: ... and, in addition, between the variants of one comparison.
PER_VARIANT_PREFIXES = ("variant", "model.skip", "model.cross_head", "train.phase1_")


@dataclass(frozen=True)
class Claim:
    """One row of the report."""

    claim: str
    measurement: str
    ci: str
    paper: str
    verdict: str
    n: int
    command: str
    point: float | None = None
    ci_low: float | None = None
    ci_high: float | None = None


# ---------------------------------------------------------------------------------- statistics
def paired_bootstrap(
    diffs: Sequence[float], *, n_boot: int = 10_000, ci: float = 0.95, seed: int = 0
) -> tuple[float, tuple[float, float] | None]:
    """Mean of per-seed differences and its percentile-bootstrap CI (None below 2 seeds)."""
    d = np.asarray(diffs, dtype=np.float64)
    if d.size == 0:
        raise SkipxlError("no paired seeds to compare")
    point = float(d.mean())
    if d.size < 2:
        return point, None
    rng = np.random.default_rng(seed)
    means = d[rng.integers(0, d.size, size=(n_boot, d.size))].mean(axis=1)  # [n_boot]
    alpha = (1.0 - ci) / 2.0
    lo, hi = np.quantile(means, [alpha, 1.0 - alpha])
    return point, (float(lo), float(hi))


def verdict_lower(ci: tuple[float, float] | None, margin: float = 0.0) -> str:
    """Verdict for "the difference is below ``margin``" (lower perplexity, no extra memory)."""
    if ci is None:
        return UNKNOWN
    if ci[1] < margin if margin == 0 else ci[1] <= margin:
        return HOLDS
    if ci[0] > margin:
        return FAILS
    return UNKNOWN


# ---------------------------------------------------------------------------------- LM runs
def _flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v
    return out


def _ignored(keys: set[str], prefixes: tuple[str, ...]) -> frozenset[str]:
    return frozenset(k for k in keys if k in PER_SEED or k.startswith(prefixes))


def find_runs(dirs: Sequence[str | Path]) -> list[Path]:
    """Run folders (with config.json and results.json) in or under ``dirs``."""
    from skipxl.engine import run_dir as rd

    runs: list[Path] = []
    for d in dirs:
        d = Path(d)
        if not d.exists():
            raise SkipxlError(f"{d} does not exist; pass run folders or folders that contain them")
        found = [d] if (d / rd.CONFIG).is_file() else sorted(p.parent for p in d.rglob(rd.CONFIG))
        runs += [r for r in found if (r / rd.RESULTS).is_file()]
    return runs


def load_lm_runs(dirs: Sequence[str | Path]) -> list[dict[str, Any]]:
    """One :func:`~skipxl.engine.compare.summarize` row per finished run, with its flat config."""
    from skipxl.engine import run_dir as rd
    from skipxl.engine.compare import summarize

    rows = []
    for run in find_runs(dirs):
        row = summarize(run)
        row["config"] = _flatten(rd.read_config(run))
        rows.append(row)
    return rows


def _score(row: dict[str, Any]) -> float | None:
    return row["test"] if row["test"] is not None else row["final_val"]


def group_lm_runs(
    rows: list[dict[str, Any]], baseline: str = "baseline"
) -> dict[tuple[str, int], list[dict]]:
    """Runs by (variant, parameters); refuses to pool runs trained with different settings."""
    groups: dict[tuple[str, int], list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault((r["variant"], int(r["params"] or 0)), []).append(r)
    for (variant, _), runs in groups.items():
        ref = runs[0]
        for r in runs[1:]:
            diff = config_diff(
                ref["config"], r["config"], _ignored(set(ref["config"]) | set(r["config"]), ())
            )
            if diff:
                raise _pool_error(ref, r, diff)
            if r["seed"] == ref["seed"]:
                raise SkipxlError(f"{ref['path']} and {r['path']} are two {variant} runs of seed {r['seed']}")
    bases = [k for k in groups if k[0] == baseline]
    if len(bases) > 1:
        raise SkipxlError(
            f"{baseline} runs of {len(bases)} model sizes were given; pass one baseline setting"
        )
    if bases:
        ref = groups[bases[0]][0]
        for (_, params), runs in groups.items():
            r = runs[0]
            diff = config_diff(
                ref["config"],
                r["config"],
                _ignored(set(ref["config"]) | set(r["config"]), PER_VARIANT_PREFIXES),
            )
            if params < SMALLER * bases[0][1]:
                diff = [k for k in diff if not k.startswith("model.")]  # a smaller model: its size differs
            if diff:
                raise _pool_error(ref, r, diff)
    return groups


def _pool_error(a: dict[str, Any], b: dict[str, Any], diff: list[str]) -> SkipxlError:
    shown = ", ".join(f"{k}: {a['config'].get(k)!r} vs {b['config'].get(k)!r}" for k in diff[:3])
    return SkipxlError(
        f"runs {a['path']} and {b['path']} were trained with different settings ({shown}); "
        "compare runs of one sweep (same recipe, preset and budget)"
    )


def _paired(base: list[dict], other: list[dict], key: Any) -> list[float]:
    by_seed = {r["seed"]: key(r) for r in base}
    return [key(r) / by_seed[r["seed"]] - 1.0 for r in other if r["seed"] in by_seed and by_seed[r["seed"]]]


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:+.2f}%"


def _ci_text(ci: tuple[float, float] | None) -> str:
    return "n/a (< 2 paired seeds)" if ci is None else f"[{_pct(ci[0])}, {_pct(ci[1])}]"


def lm_claims(
    groups: dict[tuple[str, int], list[dict]],
    command: str,
    *,
    n_boot: int = 10_000,
    ci: float = 0.95,
    baseline: str = "baseline",
) -> list[Claim]:
    """Claims 1-5 from grouped LM runs (rows "cannot tell" when the runs needed are missing)."""
    base_key = next((k for k in groups if k[0] == baseline), None)
    base = groups.get(base_key, []) if base_key else []
    metric = base[0]["metric"] if base else "ppl"
    level = base[0]["level"] if base else "word"
    same = {k[0]: v for k, v in groups.items() if base_key and k[1] >= SMALLER * base_key[1]}
    smaller = {k[0]: v for k, v in groups.items() if base_key and k[1] < SMALLER * base_key[1]}

    def row(
        claim: str, paper: str, runs: list[dict] | None, key: Any, margin: float = 0.0, extra: str = ""
    ) -> Claim:
        if not base or not runs:
            return Claim(claim, "no runs given", "n/a", paper, NOT_MEASURED, 0, command)
        diffs = _paired(base, runs, key)
        if not diffs:
            return Claim(claim, "no seed shared with the baseline", "n/a", paper, NOT_MEASURED, 0, command)
        point, interval = paired_bootstrap(diffs, n_boot=n_boot, ci=ci)
        lo, hi = (None, None) if interval is None else interval
        text = f"{_pct(point)} vs baseline over {len(diffs)} paired seed(s){extra}"
        verdict = verdict_lower(interval, margin) if len(diffs) >= MIN_SEEDS else UNKNOWN
        return Claim(
            claim,
            text,
            _ci_text(interval),
            paper,
            verdict,
            len(diffs),
            command,
            point,
            lo,
            hi,
        )

    score = _score
    out = [
        row(f"Skip-Retain improves {metric}", "improves (abstract)", same.get("skip_retain"), score),
        row(f"cross-head improves {metric}", "improves (abstract)", same.get("cross_head"), score),
        row(
            f"combined beats baseline, similar parameters ({metric})",
            "beats baseline (abstract)",
            same.get("combined"),
            score,
        ),
    ]
    small = smaller.get("combined")
    if level != "word":
        out.append(
            Claim(
                "combined with ~20% fewer parameters beats baseline",
                "word-level claim; runs are char",
                "n/a",
                "~20% fewer parameters (abstract, word level)",
                UNKNOWN,
                0,
                command,
            )
        )
    else:
        ratio = (
            f", {small[0]['params'] / base_key[1]:.0%} of the baseline's parameters"
            if small and base_key
            else ""
        )
        out.append(
            row(
                "combined with ~20% fewer parameters beats baseline",
                "~20% fewer parameters (abstract)",
                small,
                score,
                extra=ratio,
            )
        )
    for variant in ("skip_retain", "cross_head", "combined"):
        runs = [r for r in same.get(variant, []) if r["peak_bytes"]]
        out.append(
            row(
                f"no extra memory ({variant}, process peak RSS)",
                "no extra memory (abstract)",
                runs,
                lambda r: float(r["peak_bytes"]),
                margin=MEMORY_TOLERANCE,
                extra=f"; holds within +{MEMORY_TOLERANCE:.0%}",
            )
        )
    return out


def budget_note(groups: dict[tuple[str, int], list[dict]], baseline: str = "baseline") -> str:
    """Did the baseline's validation score flatten? Relative change over the last quarter of training."""
    changes = []
    for (variant, _), runs in groups.items():
        if variant != baseline:
            continue
        for r in runs:
            curve = [(s, v) for s, v in r["val_curve"] if v is not None]
            if len(curve) < 3:
                continue
            last_step, last = curve[-1]
            earlier = [v for s, v in curve if s <= 0.75 * last_step]
            if earlier:
                changes.append(last / earlier[-1] - 1.0)
    if not changes:
        return "budget: the baseline runs have too few validations to tell whether their curve flattened."
    worst = max(changes, key=abs)
    state = "flattened" if abs(worst) < 0.02 else "NOT flattened (the budget is too short for the claims)"
    return (
        f"budget: baseline validation score changed by {_pct(statistics.fmean(changes))} (mean over "
        f"{len(changes)} seed(s), worst {_pct(worst)}) over the last quarter of training: {state}."
    )


# ---------------------------------------------------------------------------------- memory profile
def load_memory_profile(path: str | Path) -> dict[str, Any]:
    """A ``memory.json`` written by ``skipxl memory`` (the per-variant ratios to its baseline)."""
    path = Path(path)
    fix = "pass the memory.json that `skipxl memory --out DIR` writes"
    if not path.is_file():
        raise SkipxlError(f"--memory {path} does not exist; {fix}")
    try:
        report = load_json(path)
    except SkipxlError as exc:
        raise SkipxlError(f"--memory: {exc}; {fix}") from None
    ratios = report.get("ratios") if isinstance(report, dict) else None
    needed = ("mems_held_bytes", "saved_max", "saved_mean", "peak")
    if not isinstance(ratios, dict) or not all(
        isinstance(r, dict) and all(k in r for k in needed) for r in ratios.values()
    ):
        raise SkipxlError(f"--memory {path} has no per-variant ratios {needed}; {fix}")
    return report


def memory_claims(paths: Sequence[str | Path], command: str) -> list[Claim]:
    """Claim 5 from the profiler: exact bytes, so a verdict without a CI.

    The paper's "no extra memory" is a statement about what the methods *store*: the segment
    memory each layer holds and the activations autograd keeps for backward. ``skipxl memory``
    counts both byte for byte (identical config, seed and data per variant), which a process's
    peak RSS on a shared CPU cannot resolve at 1%. Holds when both stay within
    ``MEMORY_TOLERANCE`` of the baseline on every profiled step (the maximum over steps).
    """
    out = []
    for path in paths:
        report = load_memory_profile(path)
        title = report.get("title", str(path))
        order = {"skip_retain": 0, "cross_head": 1, "combined": 2}  # the abstract's order, then DLT & co.
        for variant, r in sorted(report["ratios"].items(), key=lambda kv: (order.get(kv[0], 3), kv[0])):
            if variant == "baseline":
                continue
            worst = max(r["mems_held_bytes"], r["saved_max"])
            verdict = HOLDS if worst <= 1.0 + MEMORY_TOLERANCE else FAILS
            text = (
                f"segment memory {r['mems_held_bytes']:.4f}x, peak saved activations {r['saved_max']:.4f}x "
                f"(mean {r['saved_mean']:.3f}x), process peak {r['peak']:.3f}x of the baseline; {title}"
            )
            out.append(
                Claim(
                    f"no extra memory ({variant}, profiler: held memory and saved activations)",
                    text,
                    f"exact byte counts (no CI); holds within +{MEMORY_TOLERANCE:.0%}",
                    "no extra memory (abstract)",
                    verdict,
                    1,
                    command,
                    worst - 1.0,
                )
            )
    return out


# ---------------------------------------------------------------------------------- GLUE
def load_glue(paths: Sequence[str | Path]) -> tuple[list[Any], list[str]]:
    """RunRecords from sweep folders (pooling checked) or glue_report CSV files (primary metric)."""
    from skipxl.glue.report import RunRecord, check_comparable, collect_runs

    records: list[Any] = []
    notes: list[str] = []
    for p in map(Path, paths):
        if p.is_dir():
            recs = collect_runs(p)
            check_comparable(recs)
            records += recs
            notes.append(f"GLUE: {len(recs)} runs read from the sweep folder {p} (settings checked).")
        elif p.suffix == ".csv" and p.is_file():
            n = 0
            with p.open() as f:
                for row in csv.DictReader(f):
                    if row.get("primary") != "1":
                        continue
                    for seed, score in zip(row["seeds"].split(";"), row["scores"].split(";"), strict=True):
                        records.append(
                            RunRecord(row["task"], row["variant"], int(seed), {row["metric"]: float(score)})
                        )
                        n += 1
            notes.append(
                f"GLUE: {n} per-seed scores read from the report CSV {p} (raw run folders not "
                "available: their settings could not be checked)."
            )
        else:
            raise SkipxlError(f"--glue {p} is neither a sweep folder nor a glue_report .csv file")
    return records, notes


def glue_claims(records: list[Any], command: str, *, n_boot: int = 10_000, ci: float = 0.95) -> list[Claim]:
    """Claim 6, one row per task, from the glue report's statistics."""
    from skipxl.glue.report import PAPER_STD_REDUCTION, equal_spread_p, std_reduction_power, summarise

    groups = summarise(records, n_boot=n_boot, ci=ci)
    out = []
    paper = f"similar scores, ~{PAPER_STD_REDUCTION:.0%} lower std (abstract)"
    for g in groups:
        if g.variant != "cross_head" or not g.primary:
            continue
        base = next(
            b for b in groups if b.task == g.task and b.metric == g.metric and b.variant == "baseline"
        )
        power = std_reduction_power(base.n, g.n)
        by_seed = dict(zip(base.seeds, base.scores, strict=True))
        diffs = [s - by_seed[k] for k, s in zip(g.seeds, g.scores, strict=True) if k in by_seed]
        mean_txt = "n/a"
        if diffs:
            m, mci = paired_bootstrap(diffs, n_boot=n_boot, ci=ci)
            mean_txt = f"{100 * m:+.2f}" + (
                "" if mci is None else f" [{100 * mci[0]:+.2f}, {100 * mci[1]:+.2f}]"
            )
        p = equal_spread_p(base.scores, g.scores)
        if g.ci is None or min(base.n, g.n) < MIN_SEEDS:
            verdict = UNKNOWN
        elif g.ci[0] > 0:
            verdict = HOLDS
        elif g.ci[1] < 0 or (not math.isnan(power) and power >= 0.8):
            verdict = FAILS
        else:
            verdict = UNKNOWN
        red = "n/a" if g.reduction is None else f"{g.reduction:+.0%}"
        text = (
            f"{g.task} {g.metric}: std reduction {red} ({base.n}+{g.n} seeds, power {power:.2f} for "
            f"{PAPER_STD_REDUCTION:.0%}); Brown-Forsythe p {'n/a' if p is None else f'{p:.2f}'}; "
            f"mean diff {mean_txt} points"
        )
        ci_txt = "n/a" if g.ci is None else f"[{g.ci[0]:+.0%}, {g.ci[1]:+.0%}]"
        lo, hi = (None, None) if g.ci is None else g.ci
        out.append(
            Claim(
                f"BERT + cross-head: lower std on GLUE ({g.task})",
                text,
                ci_txt,
                paper,
                verdict,
                min(base.n, g.n),
                command,
                g.reduction,
                lo,
                hi,
            )
        )
    return out


# ---------------------------------------------------------------------------------- report
def render_markdown(claims: list[Claim], notes: list[str], ci: float) -> str:
    lines = [
        "# The paper's claims, answered",
        "",
        "Claims of arXiv 2311.08123's abstract, measured on the runs below. Language-model rows:",
        f"paired per-seed differences to the baseline in % of its test score, {ci:.0%} bootstrap CI over",
        f"seeds; profiler rows: exact bytes of skipxl memory (holds within +{MEMORY_TOLERANCE:.0%} of the",
        "baseline). GLUE rows: std reduction with its bootstrap CI (skipxl glue-report). Verdict: holds /",
        "does not hold when the CI excludes zero, otherwise cannot tell at this power. Regenerate with the",
        "command in each row.",
        "",
        "| claim | our measurement | CI | paper | verdict | command |",
        "|---|---|---|---|---|---|",
    ]
    for c in claims:
        lines.append(
            f"| {c.claim} | {c.measurement} | {c.ci} | {c.paper} | **{c.verdict}** | `{c.command}` |"
        )
    lines += ["", "## Inputs and notes", ""] + [f"- {n}" for n in notes] + [""]
    return "\n".join(lines)


CSV_FIELDS = ("claim", "measurement", "ci", "paper", "verdict", "n", "point", "ci_low", "ci_high", "command")


def render_csv(claims: list[Claim]) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=CSV_FIELDS, lineterminator="\n")
    w.writeheader()
    for c in claims:
        w.writerow({k: getattr(c, k) for k in CSV_FIELDS})
    return buf.getvalue()


def claims_report(
    run_dirs: Sequence[str | Path],
    *,
    glue: Sequence[str | Path] = (),
    memory: Sequence[str | Path] = (),
    out: str | Path = "docs/results",
    n_boot: int = 10_000,
    ci: float = 0.95,
    command: str | None = None,
) -> tuple[list[Claim], Path, Path]:
    """Build the claims table; write ``claims.md`` and ``claims.csv`` into ``out``."""
    if not run_dirs and not glue and not memory:
        raise SkipxlError(
            "give LM run folders, --glue SWEEP_DIR_OR_CSV and/or --memory MEMORY_JSON: "
            "skipxl claims RUN_DIRS ..."
        )
    if not 0.0 < ci < 1.0:
        raise SkipxlError(f"--ci must be in (0, 1), got {ci}")
    command = command or "skipxl claims " + " ".join(
        [
            *map(str, run_dirs),
            *(f"--glue {g}" for g in glue),
            *(f"--memory {m}" for m in memory),
            f"--out {out}",
        ]
    )
    rows = load_lm_runs(run_dirs) if run_dirs else []
    if run_dirs and not rows:
        raise SkipxlError(f"no finished runs (results.json) in {list(map(str, run_dirs))}")
    groups = group_lm_runs(rows)
    notes = (
        [
            f"LM: {len(rows)} finished runs: "
            + ", ".join(
                f"{v} ({p / 1e6:.2f}M params) x {len(rs)} seeds" for (v, p), rs in sorted(groups.items())
            )
        ]
        if rows
        else ["LM: no language-model runs given."]
    )
    if rows:
        notes.append(budget_note(groups))
        first = rows[0]
        notes.append(
            f"LM setting: corpus {first['corpus']}, preset {first['preset']}, {first['steps']} steps."
        )
    claims = lm_claims(groups, command, n_boot=n_boot, ci=ci)
    claims += memory_claims(memory, command)
    notes += [
        f"memory: profile {m} (skipxl memory: exact bytes per variant, same seed and data)." for m in memory
    ]
    if glue:
        records, glue_notes = load_glue(glue)
        claims += glue_claims(records, command, n_boot=n_boot, ci=ci)
        notes += glue_notes
    else:
        claims.append(
            Claim(
                "BERT + cross-head: lower std on GLUE",
                "no GLUE sweep given",
                "n/a",
                "similar scores, ~30% lower std (abstract)",
                UNKNOWN,
                0,
                command,
            )
        )
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    md, csv_path = out / "claims.md", out / "claims.csv"
    md.write_text(render_markdown(claims, notes, ci))
    csv_path.write_text(render_csv(claims))
    return claims, md, csv_path


def main(
    *run_dirs: str,
    glue: Any = None,
    memory: Any = None,
    out: str = "docs/results",
    n_boot: int = 10_000,
    ci: float = 0.95,
) -> None:
    """Write claims.md and claims.csv: one row per claim of the paper's abstract.

    Args:
        run_dirs: LM run folders, or folders containing them (e.g. an lm-sweep --out folder).
        glue: GLUE sweep folder(s) or glue_report CSV file(s), comma-separated.
        memory: memory.json file(s) of skipxl memory, comma-separated: the exact-bytes rows of
            the no-extra-memory claim (beside the noisy process-peak rows of the runs).
        out: folder for claims.md / claims.csv.
        n_boot: bootstrap resamples.
        ci: confidence level of the intervals.
    """
    from skipxl.engine.flags import coerce

    glue_paths = () if glue is None else coerce("glue", glue, tuple[str, ...])
    memory_paths = () if memory is None else coerce("memory", memory, tuple[str, ...])
    claims, md, csv_path = claims_report(
        run_dirs,
        glue=glue_paths,
        memory=memory_paths,
        out=out,
        n_boot=coerce("n_boot", n_boot, int),
        ci=coerce("ci", ci, float),
    )
    for c in claims:
        print(f"{c.verdict:>26} | {c.claim}: {c.measurement} CI {c.ci}")
    print(f"wrote {md}, {csv_path}")
