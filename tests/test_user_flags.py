"""A DeepSpeed / Hugging Face user's hands: flags checked before any work, their DeepSpeed JSON
honoured, ``--config`` reruns, generated ``--help``, strict JSON (issue 16). Fast: dry runs only."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from engine_helpers import REPO, clean_env

from skipxl.cli import main
from skipxl.config_io import dumps, save_json
from skipxl.engine.ds_config import DS_CONFIG_DIR, FLAG_KEYS, build_ds_config
from skipxl.engine.recipe import RECIPES, flag_table


def _strict(text: str):
    def refuse(name):
        raise ValueError(f"non-JSON constant {name}")

    return json.loads(text, parse_constant=refuse)


def _run(capsys, argv):
    code = main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def _error(capsys, argv) -> str:
    code, _, err = _run(capsys, argv)
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]


def _dry(capsys, *argv) -> dict:
    code, out, err = _run(capsys, ["train", *argv, "--dry_run"])
    assert code == 0, err
    return _strict(out)


def _glue(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(REPO / "recipes" / "glue.py"), *args],
        capture_output=True,
        text=True,
        env=clean_env(PYTHONPATH=str(REPO)),
        cwd=cwd,
        timeout=300,
        check=False,
    )


# ----------------------------------------------------------------------------- item 1: fail before work


def test_misspelt_glue_flag_exits_2_before_any_run_folder(tmp_path):
    out = tmp_path / "sweep"
    res = _glue("--attn_implementaton", "eager", "--model", "tiny-random", "--out", str(out), cwd=tmp_path)
    assert res.returncode == 2, res.stdout + res.stderr
    assert res.stderr.strip().splitlines() == [
        "error: unknown flag --attn_implementaton for recipes/glue.py; did you mean --attn_implementation?"
    ]
    assert not out.exists() and not (tmp_path / "runs").exists()


@pytest.mark.shared_data
@pytest.mark.skipif(
    not (REPO.parent / "shared" / "data" / "glue" / "MRPC").is_dir(),
    reason="needs ../shared/data/glue (the dry run checks that the GLUE files exist)",
)
def test_glue_dry_run_prints_the_sweep_and_its_deepspeed_json(tmp_path):
    res = _glue(
        "--model", "tiny-random", "--seeds", "0-2", "--dry_run", "--out", str(tmp_path / "s"), cwd=tmp_path
    )
    assert res.returncode == 0, res.stderr
    plan = _strict(res.stdout)
    assert plan["runs"] == 3 * 2 and plan["sweep"]["base"]["attn_implementation"] == "sdpa"
    assert plan["ds_config"]["train_batch_size"] == 32 and plan["ds_config"]["gradient_clipping"] == 1.0
    assert not (tmp_path / "s").exists()
    # the old spelling still works, with a deprecation line; a bad batch split is refused up front
    res = _glue("--attn_base", "eager", "--dry_run", "--micro_batch", "5", cwd=tmp_path)
    assert res.returncode == 2 and "deprecated" in res.stderr and "not divisible" in res.stderr


def test_glue_flags_are_the_finetune_config_fields():
    import dataclasses

    from skipxl.glue.finetune import FinetuneConfig
    from skipxl.glue.sweep import PER_RUN_FIELDS, finetune_fields

    every = {f.name: f.default for f in dataclasses.fields(FinetuneConfig) if f.name not in PER_RUN_FIELDS}
    fields, given = finetune_fields({k: str(v) if v is not None else "None" for k, v in every.items()})
    assert fields == every and given == set(every)  # every field (a new one too) is a flag, typed


def test_fire_errors_are_one_error_line(capsys, tmp_path):
    assert _error(capsys, ["trian"]).startswith("error: Cannot find key: trian")
    # a flag the command does not take is refused before the command runs (here: before the
    # missing run folder would be noticed)
    assert "unknown flag --bogus for `skipxl eval`" in _error(
        capsys, ["eval", str(tmp_path / "x"), "--bogus", "1"]
    )


def test_recipe_scripts_refuse_recipe_flag():
    res = subprocess.run(
        [sys.executable, str(REPO / "recipes" / "wt2.py"), "--recipe", "wt103", "--dry_run"],
        capture_output=True,
        text=True,
        env=clean_env(PYTHONPATH=str(REPO)),
        timeout=120,
        check=False,
    )
    assert res.returncode == 2 and res.stderr.startswith(
        "error: recipes/wt2.py is the wt2 recipe; drop --recipe"
    )


# ----------------------------------------------------------------------------- item 2: DeepSpeed JSON


def test_shipped_configs_leave_batch_and_clipping_to_the_recipe(capsys, tmp_path):
    for path in sorted(DS_CONFIG_DIR.glob("*.json")):
        ds = json.loads(path.read_text())
        assert all(ds.get(k, "auto") == "auto" for k in FLAG_KEYS), path.name
    cfg = _dry(capsys, "--out", str(tmp_path / "r"))
    assert cfg["ds_config"]["gradient_clipping"] == 0.25 == cfg["train"]["clip"]  # the recipe's clipping
    assert cfg["ds_config"]["train_batch_size"] == cfg["train"]["global_batch"] == 8


def test_user_json_values_stand_and_conflicts_name_both(capsys, tmp_path):
    user = tmp_path / "ds.json"
    save_json(
        {"train_micro_batch_size_per_gpu": 2, "gradient_clipping": 1.0, "zero_optimization": {"stage": 0}},
        user,
    )
    out = str(tmp_path / "r")
    cfg = _dry(capsys, "--ds_config", str(user), "--out", out)
    ds = cfg["ds_config"]
    assert (
        ds["train_micro_batch_size_per_gpu"],
        ds["gradient_accumulation_steps"],
        ds["gradient_clipping"],
    ) == (
        2,
        4,
        1.0,
    )
    assert (cfg["train"]["micro_batch"], cfg["train"]["clip"]) == (2, 1.0)  # the saved config says so too
    # DeepSpeed's and the HF Trainer's spellings
    assert _dry(capsys, "--deepspeed", "--deepspeed_config", str(user), "--out", out)["ds_config"] == ds
    assert _dry(capsys, "--deepspeed", str(user), "--out", out)["ds_config"] == ds
    line = _error(
        capsys, ["train", "--ds_config", str(user), "--micro_batch", "4", "--dry_run", "--out", out]
    )
    assert "train_micro_batch_size_per_gpu 2" in line and "--micro_batch 4" in line
    line = _error(
        capsys, ["train", "--deepspeed_config", str(user), "--clip", "0.5", "--dry_run", "--out", out]
    )
    assert "gradient_clipping 1.0" in line and "--clip 0.5" in line
    line = _error(capsys, ["train", "--ds_config", "cpu", "--deepspeed_config", str(user), "--dry_run"])
    assert "different DeepSpeed configs" in line


@pytest.mark.parametrize("block", ["optimizer", "scheduler"])
def test_optimizer_and_scheduler_blocks_are_refused_not_ignored(capsys, tmp_path, block):
    user = tmp_path / "ds.json"
    save_json({block: {"type": "AdamW", "params": {"lr": 3e-4}}}, user)
    line = _error(capsys, ["train", "--ds_config", str(user), "--dry_run", "--out", str(tmp_path / "r")])
    assert f"'{block}' block (AdamW: lr=0.0003)" in line and "remove the block and pass --" in line
    with pytest.raises(Exception, match="block"):
        build_ds_config(user, micro_batch=1, grad_accum=1, world_size=1)


def test_dry_run_checks_the_config_name_and_the_batch_arithmetic(capsys):
    assert "not found" in _error(capsys, ["train", "--ds_config", "zero9", "--dry_run"])
    assert "not divisible" in _error(capsys, ["train", "--micro_batch", "3", "--dry_run"])


# ----------------------------------------------------------------------------- item 3: --config


def test_config_rerun_gives_the_same_resolved_config(capsys, tmp_path):
    out = str(tmp_path / "r")
    first = _dry(capsys, "--variant", "combined", "--lr", "3e-3", "--pskip", "0.3", "--out", out)
    saved = tmp_path / "config.json"
    saved.write_text(json.dumps(first))
    assert _dry(capsys, "--config", str(saved)) == first
    again = _dry(capsys, "--config", str(saved), "--out", str(tmp_path / "r2"), "--seed", "7")
    assert again["train"]["seed"] == 7 and again["model"] == first["model"]


# ----------------------------------------------------------------------------- item 4: --help


def test_train_help_lists_every_flag_with_type_and_default(capsys):
    code, out, _ = _run(capsys, ["train", "--help"])
    assert code == 0
    lines = {line.split()[0]: line for line in out.splitlines() if line.startswith("  --")}
    for flag in flag_table():
        if flag != "batch_size":
            assert f"--{flag}" in lines, flag
            assert "(default: " in lines[f"--{flag}"], flag
    assert "FLOAT" in lines["--lr"] and "(default: 0.00025)" in lines["--lr"]
    assert "--recipe" in lines and "--deepspeed_config" in lines
    for name in RECIPES:
        assert f"  {name}: presets" in out


def test_recipe_help_has_no_recipe_flag():
    res = subprocess.run(
        [sys.executable, str(REPO / "recipes" / "enwik8.py"), "--help"],
        capture_output=True,
        text=True,
        env=clean_env(PYTHONPATH=str(REPO)),
        timeout=120,
        check=False,
    )
    assert res.returncode == 0 and "--eval_mem_len" in res.stdout and "--recipe " not in res.stdout
    assert "enwik8: presets base, large, tiny" in res.stdout


@pytest.mark.parametrize(
    ("args", "flag", "text"),
    [
        (["memory", "--help"], "--beta", "cross-head mixing"),
        (["glue-report", "--help"], "--n_boot", "resamples"),
    ],
)
def test_multi_name_args_get_their_own_description(capsys, args, flag, text):
    code, out, err = _run(capsys, args)
    lines = (out + err).splitlines()
    assert code == 0
    at = next(i for i, line in enumerate(lines) if flag in line)
    assert text in " ".join(lines[at : at + 4])  # its own description, not merged into another flag's


# ----------------------------------------------------------------------------- item 5: strict JSON


def test_strict_json_writes_null_for_infinity(tmp_path):
    path = tmp_path / "x.json"
    save_json({"best_val": float("inf"), "loss": float("nan"), "ok": [1.5, float("-inf")]}, path)
    assert _strict(path.read_text()) == {"best_val": None, "loss": None, "ok": [1.5, None]}
    assert _strict(dumps({"a": float("inf")})) == {"a": None}


# ----------------------------------------------------------------------------- item 6: builtin corpus


@pytest.mark.parametrize(
    ("recipe", "preset"), [(r, p) for r, spec in RECIPES.items() if r != "builtin" for p in spec.presets]
)
def test_builtin_corpus_works_with_every_preset(capsys, tmp_path, recipe, preset):
    cfg = _dry(
        capsys, "--recipe", recipe, "--preset", preset, "--corpus", "builtin", "--out", str(tmp_path / "r")
    )
    assert all(c < cfg["model"]["n_token"] for c in cfg["model"]["cutoffs"])


# ----------------------------------------------------------------------------- item 8: console and logs


def test_metrics_logger_prints_one_line_per_validation_and_writes_train_log(tmp_path, capsys):
    from skipxl.engine.metrics import TRAIN_LOG, MetricsLogger

    logger = MetricsLogger(tmp_path, enabled=True, total_steps=100, progress=False, tensorboard=False)
    logger.log(50, {"train/loss": 5.0, "train/ppl": 148.4, "lr": 1e-3, "tokens_per_s": 4321.0})
    logger.log(50, {"val/loss": 5.2, "val/ppl": 181.27})
    logger.log(100, {"final_val/ppl": 170.0, "test/ppl": 180.0, "final_val/loss": 5.1})
    logger.write("stopped at step 100 (SIGTERM)")
    logger.close()
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        "step 50/100 | val ppl 181.3 | lr 0.001 | 4321 tok/s",
        "step 100/100 | final val ppl 170 | test ppl 180",
        "stopped at step 100 (SIGTERM)",
    ]
    log = (tmp_path / TRAIN_LOG).read_text().splitlines()
    assert len(log) == 4 and log[0].endswith(
        "step 50/100 | loss 5 | ppl 148.4 | lr 0.001 | tokens_per_s 4321"
    )
    assert log[1].endswith(err[0]) and log[3].endswith(err[2])


def test_glue_sweep_prints_an_eta(tmp_path):
    from skipxl.glue.sweep import SweepConfig, run_sweep

    lines: list[str] = []
    cfg = SweepConfig(tasks=("rte",), variants=("baseline",), seeds=(0, 1, 2), out=str(tmp_path))
    run_sweep(cfg, runner=lambda c, d: {"primary_metric": "accuracy", "primary": 0.5}, log=lines.append)
    assert [line.split("; ")[1].split(",")[0] for line in lines] == ["2 to go", "1 to go", "0 to go"]
    assert all("ETA " in line for line in lines)


# ----------------------------------------------------------------------------- item 7: unseen words


def test_unseen_word_rate_is_reported_and_missing_split_names_train_txt(tmp_path, capsys):
    from skipxl.data import DataConfig, load_corpus
    from skipxl.errors import SkipxlError

    data = tmp_path / "txt"
    data.mkdir()
    (data / "train.txt").write_text("a b c a b\n" * 20)
    (data / "valid.txt").write_text("a b zz yy\n")  # 2 unseen of 5 tokens (with <eos>)
    (data / "test.txt").write_text("a b c\n")
    cfg = DataConfig(corpus="txt", data_dir=str(data), cache_dir=str(tmp_path / "cache"))
    load_corpus(cfg)
    err = capsys.readouterr().err
    assert "warning: 40.0% of valid (2 tokens) are words the vocabulary (counted on train)" in err
    assert "test" not in err.split("are words")[0]
    (data / "train.txt").unlink()
    with pytest.raises(SkipxlError, match=r"expected wiki\.train\.tokens or train\.txt"):
        load_corpus(cfg)


# ----------------------------------------------------------------------------- item 9: compare


def _fake_run(root: Path, name: str, variant: str, seed: int, offset: float) -> Path:
    run = root / name
    run.mkdir(parents=True)
    save_json(
        {
            "variant": variant,
            "preset": "tiny",
            "data": {"corpus": "builtin"},
            "train": {"seed": seed, "val_max_batches": 40},
        },
        run / "config.json",
    )
    rows = [{"step": s, "train/loss": 6.0 - s / 10 + offset, "tokens_per_s": 1000.0} for s in (1, 2, 3, 4)]
    rows += [{"step": 2, "val/loss": 5.5 + offset}, {"step": 4, "val/loss": 5.0 + offset}]
    if variant == "skip_retain":
        rows.append({"step": 2, "phase": 2, "phase/switch_step": 2})
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    save_json(
        {"n_params": 1000, "step": 4, "level": "word", "final_val/loss": 4.9 + offset, "test/loss": 5.1},
        run / "results.json",
    )
    return run


def test_compare_labels_its_columns_writes_csv_and_a_separate_group_plot(tmp_path):
    from skipxl.engine.compare import _mean_band, compare

    for seed in (1, 2):
        _fake_run(tmp_path / "runs", f"base-{seed}", "baseline", seed, 0.1 * seed)
        _fake_run(tmp_path / "runs", f"skip-{seed}", "skip_retain", seed, 0.2 * seed)
    text = compare([tmp_path / "runs"])
    head = text.splitlines()[0]
    assert "best in-train val ppl" in head and "final val ppl" in head and "final test ppl" in head
    assert "capped at 40 segments per stream" in text and "full splits" in text
    assert (tmp_path / "runs" / "compare.png").stat().st_size > 1000
    rows = (tmp_path / "runs" / "compare.csv").read_text().splitlines()
    assert rows[0].startswith("run,path,corpus") and len(rows) == 1 + 4
    before = (tmp_path / "runs" / "compare.png").read_bytes()
    grouped = compare([tmp_path / "runs"], group=True)
    assert "| seeds |" in grouped and (tmp_path / "runs" / "compare_group.png").stat().st_size > 1000
    assert (tmp_path / "runs" / "compare.png").read_bytes() == before  # the ungrouped plot is not overwritten
    steps, mean, std = _mean_band([[(2, 1.0), (4, 3.0)], [(2, 3.0), (4, 5.0), (6, 9.0)]])
    assert steps == [2, 4] and mean == [2.0, 4.0] and std == pytest.approx([2**0.5, 2**0.5])


def test_compare_plot_styles_are_fixed_per_variant(tmp_path, monkeypatch):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from skipxl.engine import compare as cmp

    runs = [_fake_run(tmp_path, n, v, 1, 0.0) for n, v in (("a", "baseline"), ("b", "skip_retain"))]
    figures = []
    monkeypatch.setattr(plt, "close", figures.append)
    for order in (runs, runs[::-1]):
        cmp.plot([cmp.summarize(r) for r in order], tmp_path / "p.png")
    styles = []
    for fig in figures:
        ax_val = fig.axes[0]
        lines = {
            ln.get_label(): (ln.get_color(), ln.get_linestyle())
            for ln in ax_val.get_lines()
            if not ln.get_label().startswith("_")
        }
        styles.append(lines)
        assert any(ln.get_marker() == "*" for ln in ax_val.get_lines())  # the final full validation
        assert any(list(ln.get_xdata()) == [2, 2] for ln in ax_val.get_lines())  # the phase switch
        assert all(float(t).is_integer() for t in ax_val.get_xticks())
        assert fig.axes[1].get_lines()  # the training-loss panel
    assert styles[0] == styles[1] and styles[0]["a (baseline)"] != styles[0]["b (skip_retain)"]


# ----------------------------------------------------------------------------- item 10: GLUE model


def test_offline_hub_name_fails_fast(monkeypatch, tmp_path):
    import socket
    import time

    from skipxl.errors import SkipxlError
    from skipxl.glue.model import check_available

    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))  # an empty cache
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(SkipxlError, match="HF_HUB_OFFLINE is set"):
        check_available("someone/not-cached-model")
    monkeypatch.delenv("HF_HUB_OFFLINE")

    def no_network(*args, **kwargs):
        raise OSError("network is unreachable")

    monkeypatch.setattr(socket, "create_connection", no_network)
    start = time.perf_counter()
    with pytest.raises(SkipxlError, match="cannot be reached"):
        check_available("someone/not-cached-model")
    assert time.perf_counter() - start < 5
    check_available("tiny-random")  # local backbones need nothing


def test_progress_bars_only_on_a_terminal_of_rank_0(monkeypatch):
    from skipxl.progress import _NoBar, progress_bar

    monkeypatch.delenv("SKIPXL_NO_PROGRESS", raising=False)
    monkeypatch.setattr(sys.stderr, "isatty", lambda: False)
    assert isinstance(progress_bar(10, "eval"), _NoBar)  # a log file gets no bar
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    bar = progress_bar(10, "eval")
    assert not isinstance(bar, _NoBar) and bar.total == 10
    bar.close()
    monkeypatch.setenv("RANK", "1")
    assert isinstance(progress_bar(10, "eval"), _NoBar)


def test_json_train_batch_size_replaces_the_recipe_default(capsys, tmp_path):
    user = tmp_path / "ds.json"
    save_json({"train_batch_size": 16, "gradient_accumulation_steps": 2}, user)
    cfg = _dry(capsys, "--ds_config", str(user), "--out", str(tmp_path / "r"))
    assert cfg["train"]["global_batch"] == 16 and cfg["ds_config"]["train_micro_batch_size_per_gpu"] == 8
    line = _error(capsys, ["train", "--ds_config", str(user), "--global_batch", "8", "--dry_run"])
    assert "train_batch_size 16" in line and "--global_batch 8" in line


def test_eval_and_data_prepare_dry_runs_do_no_work(capsys, tmp_path):
    run = tmp_path / "run"
    cfg = _dry(capsys, "--out", str(run))
    save_json(cfg, run / "config.json")
    (run / "checkpoints" / "step_00000004").mkdir(parents=True)
    (run / "checkpoints" / "latest").write_text("step_00000004")
    code, out, err = _run(capsys, ["eval", str(run), "--split", "valid", "--mem_len", "99", "--dry_run"])
    assert code == 0, err
    plan = _strict(out)
    assert (
        plan["protocol"]["mem_len"] == 99
        and plan["checkpoint"] == "step_00000004"
        and plan["split"] == "valid"
    )
    cache = tmp_path / "cache"
    argv = ["data", "prepare", "--corpus", "builtin", "--cache_dir", str(cache), "--dry_run"]
    code, out, err = _run(capsys, argv)
    assert code == 0, err
    assert _strict(out)["cached"] is False and not any(cache.glob("*/meta.json"))


def test_glue_honours_the_users_deepspeed_json(tmp_path):
    from skipxl.errors import SkipxlError
    from skipxl.glue.sweep import resolve_sweep

    glue = tmp_path / "glue" / "RTE"
    glue.mkdir(parents=True)
    for split in ("train", "dev"):
        (glue / f"{split}.tsv").write_text("index\tsentence1\tsentence2\tlabel\n0\ta b\tc d\tentailment\n")
    user = tmp_path / "ds.json"
    save_json({"train_micro_batch_size_per_gpu": 4, "gradient_clipping": 0.5}, user)
    common = dict(
        task="rte", glue_dir=str(tmp_path / "glue"), model="tiny-random", deepspeed_config=str(user)
    )
    cfg, ds, micro, accum = resolve_sweep(**common)
    assert (micro, accum, ds["gradient_clipping"], cfg.base.grad_clip) == (4, 8, 0.5, 0.5)
    with pytest.raises(SkipxlError, match=r"train_micro_batch_size_per_gpu 4 .* --micro_batch 2"):
        resolve_sweep(**common, micro_batch="2")
    with pytest.raises(SkipxlError, match=r"gradient_clipping 0.5 .* --grad_clip 1.0"):
        resolve_sweep(**common, grad_clip="1.0")
    save_json({"scheduler": {"type": "WarmupLR"}}, user)
    with pytest.raises(SkipxlError, match="--warmup_ratio"):
        resolve_sweep(**common)
