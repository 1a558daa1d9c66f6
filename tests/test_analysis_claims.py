"""The claims report on small synthetic run folders made here."""

from __future__ import annotations

import json
import math

import pytest

from skipxl.analysis.claims import (
    FAILS,
    HOLDS,
    NOT_MEASURED,
    UNKNOWN,
    claims_report,
    paired_bootstrap,
    verdict_lower,
)
from skipxl.errors import SkipxlError

BASE_PPL = {0: 100.0, 1: 104.0, 2: 98.0, 3: 101.0}


def make_run(root, variant, seed, ppl, *, params=1_000_000, peak=1000, lr=1e-3, d_model=64, steps=400):
    run = root / f"{variant}_p{params}_s{seed}"
    run.mkdir(parents=True)
    config = {
        "variant": variant,
        "preset": "tiny",
        "out_dir": str(run),
        "data": {"corpus": "builtin"},
        "model": {"d_model": d_model, "plan_seed": seed, "skip": {"p": 0.5} if "skip" in variant else None},
        "train": {"seed": seed, "lr": lr, "max_steps": steps},
    }
    (run / "config.json").write_text(json.dumps(config))
    (run / "results.json").write_text(
        json.dumps({"test/loss": math.log(ppl), "n_params": params, "level": "word", "step": steps})
    )
    rows = [{"step": s, "val/loss": math.log(ppl * (1 + 0.5 / s))} for s in (100, 200, 300, 400)]
    rows.append({"step": steps, "memory/peak_bytes": peak})
    (run / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return run


def sweep(root, delta_by_seed, **kw):
    for seed, ppl in BASE_PPL.items():
        make_run(root, "baseline", seed, ppl)
        make_run(root, "skip_retain", seed, ppl * (1 + delta_by_seed[seed]), **kw)
    return root


def skip_row(claims):
    return next(c for c in claims if c.claim.startswith("Skip-Retain"))


def test_verdict_flips_when_the_ci_crosses_zero(tmp_path):
    better = sweep(tmp_path / "a", {0: -0.05, 1: -0.04, 2: -0.06, 3: -0.05})
    row = skip_row(claims_report([better], out=tmp_path / "out_a", n_boot=2000)[0])
    assert row.verdict == HOLDS and row.ci_high < 0 and row.n == 4
    assert row.point == pytest.approx(-0.05)
    mixed = sweep(tmp_path / "b", {0: -0.05, 1: +0.05, 2: -0.03, 3: +0.04})
    row = skip_row(claims_report([mixed], out=tmp_path / "out_b", n_boot=2000)[0])
    assert row.ci_low < 0 < row.ci_high and row.verdict == UNKNOWN
    worse = sweep(tmp_path / "c", {0: 0.05, 1: 0.04, 2: 0.06, 3: 0.05})
    row = skip_row(claims_report([worse], out=tmp_path / "out_c", n_boot=2000)[0])
    assert row.verdict == FAILS and row.ci_low > 0


def test_report_files_and_rows(tmp_path):
    sweep(tmp_path / "runs", {0: -0.05, 1: -0.04, 2: -0.06, 3: -0.05}, peak=1500)
    claims, md, csv_path = claims_report([tmp_path / "runs"], out=tmp_path / "out", n_boot=500)
    text = md.read_text()
    assert "| Skip-Retain improves ppl |" in text and "skipxl claims" in text
    assert len(csv_path.read_text().splitlines()) == len(claims) + 1
    mem = next(c for c in claims if c.claim.startswith("no extra memory (skip_retain"))
    assert mem.verdict == FAILS and mem.point == pytest.approx(0.5)  # 50% more peak memory
    cross = next(c for c in claims if c.claim.startswith("cross-head"))
    assert cross.verdict == NOT_MEASURED and cross.measurement == "no runs given"
    assert "budget:" in text


def test_pooling_refuses_runs_with_different_settings(tmp_path):
    root = sweep(tmp_path / "runs", {0: -0.05, 1: -0.04, 2: -0.06, 3: -0.05})
    make_run(root, "baseline", 7, 100.0, lr=3e-4)  # same variant, another learning rate
    with pytest.raises(SkipxlError, match=r"different settings.*lr"):
        claims_report([root], out=tmp_path / "out")
    root2 = tmp_path / "runs2"
    make_run(root2, "baseline", 0, 100.0)
    make_run(root2, "skip_retain", 0, 95.0, steps=800)  # another budget across variants
    with pytest.raises(SkipxlError, match="different settings"):
        claims_report([root2], out=tmp_path / "out")


def test_smaller_combined_model_is_the_fewer_parameters_claim(tmp_path):
    root = tmp_path / "runs"
    for seed, ppl in BASE_PPL.items():
        make_run(root, "baseline", seed, ppl)
        make_run(root, "combined", seed, ppl * 0.97, params=800_000, d_model=48)
    claims, _, _ = claims_report([root], out=tmp_path / "out", n_boot=500)
    row = next(c for c in claims if "20% fewer" in c.claim)
    assert row.verdict == HOLDS and "80% of the baseline's parameters" in row.measurement
    assert next(c for c in claims if c.claim.startswith("combined beats")).measurement == "no runs given"


def test_glue_rows_from_the_committed_report_csv(tmp_path):
    claims, md, _ = claims_report(
        [], glue=["docs/results/glue_minilm_mrpc_rte.csv"], out=tmp_path, n_boot=500
    )
    rows = [c for c in claims if c.claim.startswith("BERT")]
    assert {r.claim for r in rows} == {
        "BERT + cross-head: lower std on GLUE (mrpc)",
        "BERT + cross-head: lower std on GLUE (rte)",
    }
    assert all(r.verdict == UNKNOWN for r in rows)  # 5 + 5 seeds: power ~0.15
    assert "power 0.1" in rows[0].measurement and "report CSV" in md.read_text()


def test_glue_sweep_folders_refuse_pooling(tmp_path):
    for variant, lr in (("baseline", 2e-5), ("cross_head", 3e-5)):
        for seed in range(3):
            d = tmp_path / "sweep" / "mrpc" / variant / f"seed_{seed}"
            d.mkdir(parents=True)
            (d / "result.json").write_text(
                json.dumps(
                    {
                        "task": "mrpc",
                        "variant": variant,
                        "init_seed": seed,
                        "metrics": {"f1": 0.8 + 0.01 * seed},
                    }
                )
            )
            (d / "config.json").write_text(json.dumps({"variant": variant, "init_seed": seed, "lr": lr}))
    with pytest.raises(SkipxlError, match="different settings"):
        claims_report([], glue=[tmp_path / "sweep"], out=tmp_path / "out")


def test_paired_bootstrap_and_verdict_helpers():
    point, ci = paired_bootstrap([1.0, 1.0, 1.0])
    assert point == 1.0 and ci == (1.0, 1.0)
    assert paired_bootstrap([0.5])[1] is None
    assert verdict_lower(None) == UNKNOWN
    assert verdict_lower((-0.2, -0.1)) == HOLDS and verdict_lower((-0.1, 0.1)) == UNKNOWN
    assert (
        verdict_lower((0.0, 0.01), margin=0.01) == HOLDS and verdict_lower((0.02, 0.03), margin=0.01) == FAILS
    )


def test_cli_one_error_line(tmp_path, capsys):
    from skipxl.cli import main

    assert main(["claims", str(tmp_path / "missing"), "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ")


def test_no_verdict_below_three_seeds(tmp_path):
    root = tmp_path / "runs"
    for seed in (0, 1):  # a clear but two-seed improvement
        make_run(root, "baseline", seed, BASE_PPL[seed])
        make_run(root, "skip_retain", seed, BASE_PPL[seed] * 0.9)
    row = skip_row(claims_report([root], out=tmp_path / "out", n_boot=500)[0])
    assert row.ci_high < 0 and row.n == 2 and row.verdict == UNKNOWN


def write_profile(path, ratios):
    """A memory.json as skipxl memory writes it (only the fields the claims read)."""
    full = {
        v: {"mems_held_bytes": 1.0, "saved_max": 1.0, "saved_mean": 1.0, "peak": 1.0, **r}
        for v, r in ratios.items()
    }
    path.write_text(json.dumps({"title": "skipxl memory: tiny", "ratios": full}))
    return path


def test_memory_profile_rows_hold_within_one_percent_and_fail_above(tmp_path):
    root = sweep(tmp_path / "runs", {0: -0.05, 1: -0.04, 2: -0.06, 3: -0.05})
    prof = write_profile(
        tmp_path / "memory.json",
        {"baseline": {}, "skip_retain": {"saved_max": 1.0099}, "cross_head": {"mems_held_bytes": 1.02}},
    )
    claims, md, _ = claims_report([root], memory=[prof], out=tmp_path / "out", n_boot=200)
    rows = {c.claim: c for c in claims if "profiler" in c.claim}
    skip = rows["no extra memory (skip_retain, profiler: held memory and saved activations)"]
    cross = rows["no extra memory (cross_head, profiler: held memory and saved activations)"]
    assert skip.verdict == HOLDS and skip.point == pytest.approx(0.0099)
    assert cross.verdict == FAILS and cross.point == pytest.approx(0.02)  # the held memory grew 2%
    assert len(rows) == 2  # no row for the baseline itself
    assert str(prof) in skip.command
    assert any(c.claim == "no extra memory (skip_retain, process peak RSS)" for c in claims)
    assert f"--memory {prof}" in md.read_text()


def test_memory_profile_bad_file_is_one_clear_error(tmp_path):
    bad = tmp_path / "memory.json"
    bad.write_text("{not json")
    with pytest.raises(SkipxlError, match=r"not valid JSON.*skipxl memory"):
        claims_report([], memory=[bad], out=tmp_path / "out")
    bad.write_text(json.dumps({"ratios": {"skip_retain": {"peak": 1.0}}}))
    with pytest.raises(SkipxlError, match="no per-variant ratios"):
        claims_report([], memory=[bad], out=tmp_path / "out")
    with pytest.raises(SkipxlError, match="does not exist"):
        claims_report([], memory=[tmp_path / "missing.json"], out=tmp_path / "out")
