"""Seed sweeps end to end (DeepSpeed on CPU, tiny random BERT), resuming, report, bad inputs."""

from __future__ import annotations

import json
import os
import random
import socket
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from skipxl.errors import SkipxlError
from skipxl.glue import sweep
from skipxl.glue.finetune import FinetuneConfig, linear_warmup_decay
from skipxl.glue.report import bootstrap_std_reduction, equal_spread_p, glue_report, std_reduction_power
from skipxl.glue.sweep import parse_seeds, parse_variants

REPO = Path(__file__).resolve().parents[1]
WORDS = [
    "the",
    "a",
    "cat",
    "dog",
    "sat",
    "ran",
    "on",
    "under",
    "mat",
    "park",
    "red",
    "blue",
    "quickly",
    "slowly",
    "big",
    "small",
]


def make_rte(root: Path, n_train: int = 64, n_dev: int = 24) -> Path:
    rng = random.Random(0)
    for split, n in (("train", n_train), ("dev", n_dev)):
        rows = ["index\tsentence1\tsentence2\tlabel"]
        for i in range(n):
            s1 = " ".join(rng.choice(WORDS) for _ in range(rng.randint(4, 12)))
            s2 = " ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 8)))
            rows.append(f"{i}\t{s1}\t{s2}\t{rng.choice(['entailment', 'not_entailment'])}")
        (root / "RTE").mkdir(parents=True, exist_ok=True)
        (root / "RTE" / f"{split}.tsv").write_text("\n".join(rows) + "\n")
    return root


SWEEP_ARGS = dict(
    task="rte",
    variants="baseline,cross_head",
    seeds="0-1",
    model="tiny-random",
    max_steps=3,
    batch_size=8,
    max_eval_examples=16,
)


@pytest.fixture(scope="module")
def finished_sweep(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A two-seed sweep run through the recipe (a real DeepSpeed engine on CPU, in a subprocess)."""
    root = tmp_path_factory.mktemp("glue_sweep")
    glue, out = make_rte(root / "glue"), root / "out"
    cmd = [sys.executable, str(REPO / "recipes" / "glue.py"), "--glue_dir", str(glue), "--out", str(out)]
    for key, value in SWEEP_ARGS.items():
        cmd += [f"--{key}", str(value)]
    env = {**os.environ, "DS_ACCELERATOR": "cpu", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=900, check=False)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "4 ran, 0 skipped, 0 failed" in proc.stdout
    return out


@pytest.mark.slow
def test_two_seed_sweep_runs_end_to_end_through_deepspeed(finished_sweep: Path) -> None:
    for variant in ("baseline", "cross_head"):
        for seed in (0, 1):
            run = finished_sweep / "rte" / variant / f"seed_{seed}"
            result = json.loads((run / "result.json").read_text())
            assert (result["variant"], result["init_seed"], result["steps"]) == (variant, seed, 3)
            assert 0.0 <= result["metrics"]["accuracy"] <= 1.0
            meta = json.loads((run / "meta.json").read_text())
            assert meta["seeds"]["init_seed"] == seed and meta["seeds"]["data_seed"] == seed
            assert (meta["seeds"]["cross_head_seed"] is None) == (variant == "baseline")
            assert "commit" in meta["git"] and any(line.startswith("torch") for line in meta["pip_freeze"])
            assert meta["cpu"]["cores"] == os.cpu_count() and meta["cpu"]["torch_capability"]
            config = json.loads((run / "config.json").read_text())
            assert config["variant"] == variant and config["max_steps"] == 3
            records = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
            assert records[-1]["split"] == "dev" and any(r["split"] == "train" for r in records)
            assert list((run / "tb").glob("events.out.tfevents.*"))
    for suffix in ("md", "csv", "png"):
        assert (finished_sweep / f"glue_report.{suffix}").stat().st_size > 0


def _report_bytes(out: Path) -> tuple[bytes, bytes]:
    return (out / "glue_report.md").read_bytes(), (out / "glue_report.csv").read_bytes()


def _no_training(cfg: FinetuneConfig, run_dir: Path) -> dict:
    raise AssertionError(f"finished run retrained: {run_dir}")


@pytest.mark.slow
def test_resumed_sweep_skips_finished_runs_and_report_is_unchanged(
    finished_sweep: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    before = _report_bytes(finished_sweep)
    glue = finished_sweep.parent / "glue"
    monkeypatch.setattr(sweep, "finetune", _no_training)
    sweep.main(glue_dir=str(glue), out=str(finished_sweep), **SWEEP_ARGS)
    assert _report_bytes(finished_sweep) == before
    # A config change is not silently mixed into the same folders.
    with pytest.raises(SkipxlError, match=r"different configuration \(fields \['lr'\]\)"):
        sweep.main(glue_dir=str(glue), out=str(finished_sweep), **{**SWEEP_ARGS, "lr": 1e-4})


@pytest.mark.slow
def test_glue_report_command_prints_and_writes_the_report(
    finished_sweep: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from skipxl.cli import main

    assert main(["glue-report", str(finished_sweep), "--out", str(tmp_path)]) == 0
    printed = capsys.readouterr().out
    assert "## RTE" in printed and "| cross_head | **accuracy** | 2 |" in printed
    assert _report_bytes(tmp_path) == _report_bytes(finished_sweep)  # same defaults as the sweep's
    assert (tmp_path / "glue_report.png").stat().st_size > 0


@pytest.mark.slow
def test_killed_run_restarts_cleanly(
    finished_sweep: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    import shutil

    out = tmp_path / "copy"
    shutil.copytree(finished_sweep, out)
    before = _report_bytes(out)
    victim = out / "rte" / "cross_head" / "seed_1"
    saved = json.loads((victim / "result.json").read_text())
    (victim / "result.json").unlink()  # killed before the marker was written
    (victim / "half_written.bin").write_bytes(b"junk")
    calls: list[Path] = []

    def replay(cfg: FinetuneConfig, run_dir: Path) -> dict:
        calls.append(run_dir)
        assert not (run_dir / "half_written.bin").exists()  # folder wiped first
        (run_dir / "config.json").write_text(json.dumps({}))
        (run_dir / "result.json").write_text(json.dumps(saved))
        return saved

    monkeypatch.setattr(sweep, "finetune", replay)
    sweep.main(glue_dir=str(finished_sweep.parent / "glue"), out=str(out), **SWEEP_ARGS)
    assert calls == [victim]
    assert _report_bytes(out) == before


def test_failed_run_is_recorded_and_counted(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    glue = make_rte(tmp_path / "glue")

    def flaky(cfg: FinetuneConfig, run_dir: Path) -> dict:
        if cfg.init_seed == 1 and cfg.variant == "cross_head":
            raise RuntimeError("loss is nan")
        result = {
            "task": "rte",
            "variant": cfg.variant,
            "init_seed": cfg.init_seed,
            "metrics": {"accuracy": 0.5 + 0.1 * cfg.init_seed},
            "primary_metric": "accuracy",
            "primary": 0.5,
            "wall_time_s": 1.0,
        }
        (run_dir / "result.json").write_text(json.dumps(result))
        return result

    monkeypatch.setattr(sweep, "finetune", flaky)
    out = tmp_path / "out"
    with pytest.raises(SkipxlError, match=r"1 of 6 runs failed .*seed_1.*rerun"):  # not exit 0
        sweep.main(glue_dir=str(glue), out=str(out), **{**SWEEP_ARGS, "seeds": "0-2"})
    assert "loss is nan" in (out / "rte" / "cross_head" / "seed_1" / "failed.json").read_text()
    rep = glue_report(out, plot=False)
    cross = next(g for g in rep.groups if g.variant == "cross_head")
    assert (cross.n, cross.failed, cross.seeds) == (2, 1, [0, 2])
    # the cause fixed, a rerun trains the failed run again (and only it)
    calls: list[Path] = []

    def fixed(cfg: FinetuneConfig, run_dir: Path) -> dict:
        calls.append(run_dir)
        return flaky(replace(cfg, init_seed=cfg.init_seed + 10), run_dir)

    monkeypatch.setattr(sweep, "finetune", fixed)
    sweep.main(glue_dir=str(glue), out=str(out), **{**SWEEP_ARGS, "seeds": "0-2"})
    assert calls == [out / "rte" / "cross_head" / "seed_1"]
    assert not (calls[0] / "failed.json").exists() and (calls[0] / "result.json").is_file()


def test_report_statistics(tmp_path: Path) -> None:
    base, cross = [0.60, 0.70, 0.65, 0.55], [0.64, 0.66, 0.65, 0.63]
    for variant, scores in (("baseline", base), ("cross_head", cross)):
        for seed, score in enumerate(scores):
            run = tmp_path / "mrpc" / variant / f"seed_{seed}"
            run.mkdir(parents=True)
            (run / "result.json").write_text(
                json.dumps(
                    {
                        "task": "mrpc",
                        "variant": variant,
                        "init_seed": seed,
                        "degenerate": seed == 0,
                        "metrics": {"f1": score, "accuracy": score - 0.1},
                        "wall_time_s": 10.0 + seed,
                    }
                )
            )
    rep = glue_report(tmp_path, n_boot=2000)
    f1 = {g.variant: g for g in rep.groups if g.metric == "f1"}
    mean_b = sum(base) / 4
    std_b = (sum((x - mean_b) ** 2 for x in base) / 3) ** 0.5
    mean_c = sum(cross) / 4
    std_c = (sum((x - mean_c) ** 2 for x in cross) / 3) ** 0.5
    assert f1["baseline"].mean == pytest.approx(mean_b) and f1["baseline"].std == pytest.approx(std_b)
    assert (f1["baseline"].min, f1["baseline"].max, f1["baseline"].n) == (0.55, 0.70, 4)
    assert f1["baseline"].degenerate == 1 and f1["baseline"].wall_time_s == pytest.approx(11.5)
    assert f1["cross_head"].reduction == pytest.approx(1 - std_c / std_b)
    lo, hi = f1["cross_head"].ci
    assert lo <= f1["cross_head"].reduction <= hi
    assert rep.groups[0].metric == "f1" and rep.groups[0].primary  # primary metric first
    assert "| cross_head | **f1** | 4 | 0 | 1 |" in rep.markdown
    assert f"{std_reduction_power(4, 4):.0%} with 4 + 4 runs" in rep.markdown
    assert f1["cross_head"].mean_diff == pytest.approx(mean_c - mean_b)
    assert f1["cross_head"].spread_p == pytest.approx(_brown_forsythe_p(base, cross))
    assert f1["baseline"].spread_p is None and f1["baseline"].mean_diff is None
    assert rep.csv_path.read_text().splitlines()[0].startswith("task,variant,metric,primary,n,failed")
    assert rep.plot_path is not None and rep.plot_path.stat().st_size > 0
    again = glue_report(tmp_path, n_boot=2000)
    assert again.markdown == rep.markdown  # deterministic bootstrap


def test_report_refuses_to_pool_runs_with_different_settings(tmp_path: Path) -> None:
    for sweep_name, lr in (("a", 2e-5), ("b", 5e-5)):
        for variant in ("baseline", "cross_head"):
            run = tmp_path / sweep_name / "rte" / variant / "seed_0"
            run.mkdir(parents=True)
            cfg = {"task": "rte", "variant": variant, "init_seed": 0, "data_seed": 0, "lr": lr}
            (run / "config.json").write_text(json.dumps(cfg))
            result = {"task": "rte", "variant": variant, "init_seed": 0, "metrics": {"accuracy": 0.5}}
            (run / "result.json").write_text(json.dumps(result))
    assert glue_report(tmp_path / "a", plot=False).groups  # one sweep: variants and seeds may differ
    with pytest.raises(SkipxlError, match=r"different settings \(lr: 2e-05 vs 5e-05\)"):
        glue_report(tmp_path, plot=False)


def _brown_forsythe_p(*groups: list[float]) -> float:
    """By hand: one-way ANOVA F on absolute deviations from each group's median."""
    from scipy.stats import f as f_dist

    def median(xs: list[float]) -> float:
        ys, n = sorted(xs), len(xs)
        return ys[n // 2] if n % 2 else (ys[n // 2 - 1] + ys[n // 2]) / 2

    z = [[abs(x - median(g)) for x in g] for g in groups]
    k, n = len(z), sum(len(g) for g in z)
    means = [sum(g) / len(g) for g in z]
    grand = sum(sum(g) for g in z) / n
    between = sum(len(g) * (m - grand) ** 2 for g, m in zip(z, means, strict=True)) / (k - 1)
    within = sum((x - m) ** 2 for g, m in zip(z, means, strict=True) for x in g) / (n - k)
    return float(f_dist.sf(between / within, k - 1, n - k))


def test_equal_spread_p_value() -> None:
    a, b = [0.81, 0.84, 0.79, 0.86, 0.80], [0.82, 0.83, 0.825, 0.835, 0.828]
    assert equal_spread_p(a, b) == pytest.approx(_brown_forsythe_p(a, b))
    assert equal_spread_p(a, a) == pytest.approx(1.0)
    assert equal_spread_p([0.5], a) is None  # one run: no spread to compare
    assert equal_spread_p([0.5, 0.5], [0.7, 0.7]) is None  # no spread at all


@pytest.mark.parametrize(("n_base", "n_other"), [(5, 5), (20, 12)])
def test_std_reduction_power_matches_simulation(n_base: int, n_other: int) -> None:
    """Simulate sweeps whose true std is 30% lower and count how often the F test rejects."""
    import numpy as np
    from scipy.stats import f as f_dist

    rng = np.random.default_rng(0)
    sims = 20_000
    s_b = rng.normal(0.0, 1.0, size=(sims, n_base)).var(axis=1, ddof=1)  # [sims]
    s_o = rng.normal(0.0, 0.7, size=(sims, n_other)).var(axis=1, ddof=1)  # [sims]
    crit = f_dist.ppf(0.05, n_other - 1, n_base - 1)
    simulated = float(np.mean(s_o / s_b < crit))
    assert std_reduction_power(n_base, n_other, 0.30) == pytest.approx(simulated, abs=0.015)
    assert std_reduction_power(n_base, n_other, 0.0) == pytest.approx(0.05)  # no effect: the level
    assert std_reduction_power(1, 5) != std_reduction_power(1, 5)  # nan: no spread with one run


def test_bootstrap_edge_cases() -> None:
    assert bootstrap_std_reduction([0.5], [0.4, 0.6]) is None  # one run: no spread
    assert bootstrap_std_reduction([0.5, 0.5], [0.4, 0.6]) is None  # zero baseline spread
    same = [0.8122065727699531] * 5  # floating-point std ~1e-17 is still no spread
    assert bootstrap_std_reduction(same, same) is None
    scores = [0.1, 0.4, 0.2, 0.7]
    point, _ = bootstrap_std_reduction(scores, scores, n_boot=500)
    assert point == pytest.approx(0.0)
    half = [0.35 + (s - 0.35) / 2 for s in scores]
    assert bootstrap_std_reduction(scores, half, n_boot=500)[0] == pytest.approx(0.5)


def test_seed_and_variant_parsing() -> None:
    assert parse_seeds("0-4") == (0, 1, 2, 3, 4)
    assert parse_seeds("0-2,7") == (0, 1, 2, 7)
    assert parse_seeds((3, 1)) == (3, 1)
    assert parse_seeds(5) == (5,)
    for bad in ("5-2", "a", "", "-1"):
        with pytest.raises(SkipxlError, match="seed"):
            parse_seeds(bad)
    assert parse_variants(("baseline", "cross_head")) == ("baseline", "cross_head")
    with pytest.raises(SkipxlError, match="variant 'skip'"):
        parse_variants("baseline,skip")


def test_bad_inputs_fail_fast_with_one_error(tmp_path: Path) -> None:
    glue = make_rte(tmp_path / "glue")
    with pytest.raises(SkipxlError, match="does not exist"):
        sweep.main(task="rte", glue_dir=str(tmp_path / "missing"), out=str(tmp_path / "o"))
    with pytest.raises(SkipxlError, match=r"MRPC/train\.tsv"):
        sweep.main(task="mrpc", glue_dir=str(glue), out=str(tmp_path / "o"))
    with pytest.raises(SkipxlError, match="unknown GLUE task"):
        sweep.main(task="squad", glue_dir=str(glue), out=str(tmp_path / "o"))
    with pytest.raises(SkipxlError, match="5-2"):
        sweep.main(task="rte", seeds="5-2", glue_dir=str(glue), out=str(tmp_path / "o"))
    with pytest.raises(SkipxlError, match="warmup_ratio"):
        FinetuneConfig(warmup_ratio=1.5)
    assert not (tmp_path / "o").exists()  # nothing started


def test_recipe_prints_one_line_on_bad_input(tmp_path: Path) -> None:
    proc = subprocess.run(
        [
            sys.executable,
            str(REPO / "recipes" / "glue.py"),
            "--task",
            "rte",
            "--seeds",
            "5-2",
            "--glue_dir",
            str(make_rte(tmp_path)),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "DS_ACCELERATOR": "cpu"},
        check=False,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1].startswith("error: bad seed range '5-2'")
    assert "Traceback" not in proc.stderr


def test_linear_warmup_decay_schedule() -> None:
    f = linear_warmup_decay(warmup_steps=2, total_steps=10)
    assert [f(s) for s in (0, 1, 2, 6, 10, 12)] == [0.0, 0.5, 1.0, 0.5, 0.0, 0.0]


WORKER = """
import json, sys
from dataclasses import replace
from pathlib import Path
from skipxl.engine.distributed import ensure_accelerator_env
ensure_accelerator_env()
from skipxl.glue.finetune import FinetuneConfig, finetune
glue, out, ds_config = [a for a in sys.argv[1:] if not a.startswith("--local_rank")]
cfg = FinetuneConfig(task="rte", model="tiny-random", variant="cross_head", beta=0.5, dropout=0.0,
                     max_steps=3, batch_size=8, glue_dir=glue, log_every=1, lr=1e-3, ds_config=ds_config)
finetune(cfg, Path(out))
"""


@pytest.mark.slow
@pytest.mark.parametrize("ds_config", ["cpu", "cpu_zero2", "cpu_zero3"])
def test_two_ranks_train_like_one(tmp_path: Path, ds_config: str) -> None:
    """Rank r / micro step a read a fixed slice of each global batch and every rank draws the same
    head indices, so (without dropout) two data-parallel ranks reproduce one process's losses,
    with the parameters, gradients and optimizer states sharded by ZeRO-2/3 or not."""
    glue = make_rte(tmp_path / "glue")
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    env = {**os.environ, "DS_ACCELERATOR": "cpu", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    launcher = Path(sys.executable).parent / "deepspeed"
    with socket.socket() as sock:  # a free port: other DeepSpeed jobs may hold the default 29500
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    commands = {
        1: [sys.executable, str(script)],
        2: [str(launcher), "--num_gpus", "2", "--master_port", str(port), str(script)],
    }
    for world, cmd in commands.items():
        cmd = [*cmd, str(glue), str(tmp_path / f"w{world}"), "cpu" if world == 1 else ds_config]
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600, check=False)
        assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    losses = {}
    for world in (1, 2):
        lines = (tmp_path / f"w{world}" / "metrics.jsonl").read_text().splitlines()
        losses[world] = [json.loads(x)["loss"] for x in lines if json.loads(x)["split"] == "train"]
        assert json.loads((tmp_path / f"w{world}" / "result.json").read_text())["world_size"] == world
    stage = json.loads((tmp_path / "w2" / "meta.json").read_text())["zero_stage"]
    assert stage == {"cpu": 0, "cpu_zero2": 2, "cpu_zero3": 3}[ds_config]
    assert len(losses[1]) == 3
    assert losses[2] == pytest.approx(losses[1], rel=1e-5)


@pytest.mark.slow
def test_save_model_writes_a_from_pretrained_folder_and_ds_config(tmp_path: Path) -> None:
    """--save_model: save_pretrained + tokenizer (stock attention), loadable by plain transformers."""
    glue, out = make_rte(tmp_path / "glue"), tmp_path / "out"
    cmd = [sys.executable, str(REPO / "recipes" / "glue.py"), "--glue_dir", str(glue), "--out", str(out)]
    cmd += ["--task", "rte", "--variants", "cross_head", "--seeds", "0", "--model", "tiny-random"]
    cmd += [
        "--max_steps",
        "2",
        "--batch_size",
        "8",
        "--max_eval_examples",
        "16",
        "--save_model",
        "--report",
        "False",
    ]
    cmd += ["--attn_implementation", "eager"]
    env = {**os.environ, "DS_ACCELERATOR": "cpu", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600, check=False)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    run = out / "rte" / "cross_head" / "seed_0"
    assert json.loads((run / "ds_config.json").read_text())["train_batch_size"] == 8
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    model = AutoModelForSequenceClassification.from_pretrained(run / "model")
    tokenizer = AutoTokenizer.from_pretrained(run / "model")
    assert (run / "model" / "model.safetensors").is_file() and model.config.num_labels == 2
    saved = (run / "model" / "config.json").read_text()
    assert "cross_head_sdpa" not in saved and "cross_head_eager" not in saved  # stock attention
    assert tokenizer("a cat sat")["input_ids"][0] == tokenizer.cls_token_id
