"""Recipes and `skipxl` commands end to end on the built-in corpus, and bad inputs -> one clear line."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from engine_helpers import REPO, run_cli, run_recipe

from skipxl.cli import main

pytestmark = pytest.mark.slow

SMALL = [
    "--builtin_train_tokens",
    "20000",
    "--builtin_eval_tokens",
    "2000",
    "--eval_batch_size",
    "2",
    "--val_max_batches",
    "2",
    "--log_interval",
    "1",
    "--eval_interval",
    "2",
    "--progress",
    "False",
]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    base = tmp_path_factory.mktemp("cli")
    first = run_recipe(
        "wt103",
        "--corpus",
        "builtin",
        "--preset",
        "tiny",
        "--max_steps",
        "4",
        "--out",
        str(base / "baseline"),
        *SMALL,
    )
    assert first.returncode == 0, first.stderr[-3000:]
    second = run_cli(
        "train",
        "--recipe",
        "builtin",
        "--variant",
        "combined",
        "--max_steps",
        "4",
        "--pskip",
        "0.3",
        "--beta",
        "0.5",
        "--out",
        str(base / "combined"),
        *SMALL,
    )
    assert second.returncode == 0, second.stderr[-3000:]
    return base, json.loads(first.stdout.strip().splitlines()[-1])


def test_recipe_trains_evaluates_and_writes_the_run_folder(runs):
    base, summary = runs
    assert summary["step"] == 4 and summary["test/ppl"] > 1
    for name in ("config.json", "meta.json", "metrics.jsonl", "results.json", "tb", "checkpoints"):
        assert (base / "baseline" / name).exists(), name
    combined = json.loads((base / "combined" / "config.json").read_text())
    assert combined["variant"] == "combined" and combined["model"]["skip"]["p"] == 0.3
    assert combined["model"]["cross_head"]["beta"] == 0.5


def _strict(text):
    def refuse(name):
        raise ValueError(f"non-JSON constant {name}")

    return json.loads(text, parse_constant=refuse)


def test_run_folder_is_strict_json_and_its_config_reruns(runs, tmp_path, capsys):
    base, _ = runs
    run = base / "baseline"
    _strict((run / "results.json").read_text())
    # no validation ran in phase 1 of the 4-step Skip-Retain run: its best phase-1 val is null, not Infinity
    results = _strict((base / "combined" / "results.json").read_text())
    assert results["phase"]["best_val"] is None
    for line in (run / "metrics.jsonl").read_text().splitlines():
        _strict(line)
    saved = _strict((run / "config.json").read_text())
    assert _strict((run / "ds_config.json").read_text()) == saved["ds_config"]  # the JSON actually used
    assert (
        main(["train", "--config", str(run / "config.json"), "--out", str(tmp_path / "again"), "--dry_run"])
        == 0
    )
    again = _strict(capsys.readouterr().out)
    assert again == {**saved, "out_dir": str(tmp_path / "again")}


def test_eval_command_passes_the_protocol_and_saves(runs):
    base, _ = runs
    res = run_cli(
        "eval",
        str(base / "baseline"),
        "--split",
        "valid",
        "--tgt_len",
        "8",
        "--mem_len",
        "48",
        "--clamp_len",
        "10",
        "--same_length",
        "--max_batches",
        "5",
    )
    assert res.returncode == 0, res.stderr[-2000:]
    row = json.loads(res.stdout)
    assert Path(row["saved_to"]).name.startswith("eval_valid_step_")
    assert Path(row["saved_to"]).name.endswith("_tgt8_mem48_clamp10_same1_ext0_bs2_batches5.json")
    assert row["protocol"] == {
        "tgt_len": 8,
        "mem_len": 48,
        "ext_len": 0,
        "clamp_len": 10,
        "same_length": True,
        "batch_size": 2,
    }
    assert row["val/ppl"] > 1 and row["val/tokens"] == 2 * 5 * 8
    assert json.loads((Path(row["saved_to"])).read_text())["val/loss"] == row["val/loss"]


def test_compare_prints_a_table_and_saves_a_plot(runs, tmp_path):
    base, _ = runs
    png = tmp_path / "curves.png"
    res = run_cli("compare", str(base / "baseline"), str(base / "combined"), "--png", str(png))
    assert res.returncode == 0, res.stderr[-2000:]
    lines = res.stdout.splitlines()
    assert lines[0].startswith("| run | variant | params |") and "test ppl" in lines[0]
    assert any("| baseline |" in line for line in lines) and any("| combined |" in line for line in lines)
    assert png.stat().st_size > 1000
    grouped = run_cli("compare", str(base), "--group")  # a folder of runs, mean ± std per variant
    assert grouped.returncode == 0 and "| seeds |" in grouped.stdout


def test_export_gives_a_plain_fp32_model(runs, tmp_path):
    base, _ = runs
    res = run_cli("export", str(base / "combined"), "--out", str(tmp_path / "exp"))
    assert res.returncode == 0, res.stderr[-2000:]
    from skipxl.engine.checkpoint import fp32_state_dict, load_exported

    model = load_exported(tmp_path / "exp")
    ref = fp32_state_dict(base / "combined" / "checkpoints")
    for key, value in model.state_dict().items():
        assert value.dtype != torch.bfloat16 and torch.equal(value, ref[key]), key
    assert json.loads((tmp_path / "exp" / "config.json").read_text())["variant"] == "combined"
    assert (tmp_path / "exp" / "model.safetensors").is_file() and not (tmp_path / "exp" / "model.pt").exists()
    from skipxl.data import Vocab

    assert Vocab.load(tmp_path / "exp" / "vocab.json").size == model.cfg.n_token
    # the original implementation's format, and back through the CLI
    res = run_cli("export", str(base / "baseline"), "--format", "original", "--out", str(tmp_path / "orig"))
    assert res.returncode == 0, res.stderr[-2000:]
    blob = torch.load(tmp_path / "orig" / "model_original.pt", weights_only=True)
    assert (
        blob["hparams"]["n_layer"] == model.cfg.n_layer
        and "word_emb.emb_layers.0.weight" in blob["state_dict"]
    )
    res = run_cli(
        "import-original", str(tmp_path / "orig" / "model_original.pt"), "--out", str(tmp_path / "back")
    )
    assert res.returncode == 0, res.stderr[-2000:]
    back = load_exported(tmp_path / "back")
    ref = fp32_state_dict(base / "baseline" / "checkpoints")
    assert all(torch.equal(v, ref[k]) for k, v in back.state_dict().items())
    assert "--format" in run_cli("export", str(base / "baseline"), "--format", "onnx").stderr


def test_data_prepare_command():
    res = run_cli(
        "data", "prepare", "--corpus", "builtin", "--builtin", '{"train_tokens": 5000, "eval_tokens": 500}'
    )
    assert res.returncode == 0, res.stderr[-2000:]
    assert json.loads(res.stdout)["splits"] == {"train": 5000, "valid": 500, "test": 500}


@pytest.mark.parametrize(
    "args",
    [
        ["--help"],
        ["train", "--help"],
        ["eval", "--help"],
        ["compare", "--help"],
        ["export", "-h"],
        ["memory", "--help"],
        ["glue-report", "--help"],
    ],
)
def test_help_is_useful(args):
    res = run_cli(*args)
    assert res.returncode == 0 and "Traceback" not in res.stderr
    text = res.stdout + res.stderr  # fire writes help to stderr
    assert "NAME" in text or "COMMAND" in text or text.startswith("usage: skipxl train")
    if args[0] == "train":
        assert "--variant" in text and "--resume" in text
    if args[0] == "eval":
        assert "--mem_len" in text and "--same_length" in text
    if args[0] == "memory":  # lazily imported: its own flags, not the stand-in's *args
        assert "--retain_positions" in text and "--positions" in text
    if args[0] == "glue-report":
        assert "SWEEP_DIR" in text and "--n_boot" in text


def test_recipe_help_and_bad_variant_through_the_script():
    res = run_recipe("enwik8", "--help")
    assert res.returncode == 0 and "--preset" in res.stdout + res.stderr
    res = run_recipe("text8", "--corpus", "builtin", "--variant", "skip")
    assert res.returncode == 2
    assert res.stderr.strip().splitlines() == [
        "error: unknown --variant 'skip'; choose one of baseline, skip_retain, cross_head, combined, "
        "dlt, skip_retain_dlt, cross_head_dlt, combined_dlt"
    ]


def _one_error_line(capsys, argv):
    code = main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2, err
    errors = [line for line in err if line.startswith("error: ")]
    assert len(errors) == 1 and "Traceback" not in "\n".join(err), err
    return errors[0]


def test_bad_inputs_give_one_clear_line(capsys, tmp_path):
    assert "does not exist" in _one_error_line(
        capsys, ["train", "--recipe", "wt103", "--data_dir", str(tmp_path / "missing")]
    )
    assert "needs --data_dir" in _one_error_line(capsys, ["train", "--recipe", "enwik8"])
    assert "unknown --variant" in _one_error_line(capsys, ["train", "--variant", "nope"])
    line = _one_error_line(
        capsys, ["train", "--global_batch", "6", "--micro_batch", "4", "--out", str(tmp_path / "b")]
    )
    assert "not divisible" in line
    line = _one_error_line(
        capsys,
        [
            "train",
            "--global_batch",
            "8",
            "--micro_batch",
            "2",
            "--grad_accum",
            "3",
            "--out",
            str(tmp_path / "c"),
        ],
    )
    assert "make the product equal" in line
    assert "expects an integer" in _one_error_line(capsys, ["train", "--max_steps", "abc"])
    assert "did you mean --lr" in _one_error_line(capsys, ["train", "--lrr", "0.1"])
    assert "needs a value" in _one_error_line(capsys, ["train", "--ds_config"])
    assert "not found" in _one_error_line(
        capsys, ["train", "--ds_config", "zero9", "--out", str(tmp_path / "d")]
    )
    assert "not a run folder" in _one_error_line(capsys, ["eval", str(tmp_path)])
    assert "not a run folder" in _one_error_line(capsys, ["compare", str(tmp_path / "none")])
    # lazily imported commands: a misspelt flag is one line, not a TypeError from inside
    line = _one_error_line(capsys, ["memory", "--positons", "segment_end"])
    assert "'positons'" in line and "skipxl memory --help" in line
    line = _one_error_line(capsys, ["glue-report", str(tmp_path), "--bogus", "1"])
    assert "skipxl glue-report --help" in line
    assert "does not exist" in _one_error_line(capsys, ["glue-report", str(tmp_path / "no_sweep")])


def test_unreadable_checkpoint_is_one_line(runs, tmp_path, capsys):
    base, _ = runs
    broken = tmp_path / "broken"
    shutil.copytree(base / "baseline", broken)
    tag = (broken / "checkpoints" / "latest").read_text().strip()
    (broken / "checkpoints" / tag / "mp_rank_00_model_states.pt").write_bytes(b"\x00garbage")
    assert "no intact checkpoint" in _one_error_line(capsys, ["eval", str(broken)])
    assert "no intact checkpoint" in _one_error_line(capsys, ["export", str(broken)])
    line = _one_error_line(capsys, ["eval", str(broken), "--tag", tag])
    assert f"checkpoint {tag} is damaged" in line and "mp_rank_00_model_states.pt" in line
    line = _one_error_line(capsys, ["eval", str(broken), "--tag", "step_99"])
    assert "--tag step_99: no such checkpoint" in line and "latest" not in line


def test_missing_optional_command_module_is_a_clear_error():
    from skipxl.cli import _lazy
    from skipxl.errors import SkipxlError

    with pytest.raises(SkipxlError, match="not installed"):
        _lazy("skipxl.nonexistent_module", "f", "nothing")


def test_stop_and_resume_through_the_command(tmp_path, capsys):
    out = str(tmp_path / "run")
    assert main(["train", "--max_steps", "4", "--stop_at_step", "2", "--out", out, *SMALL]) == 0
    err = capsys.readouterr().err
    assert err.count("resume with --resume") == 1, err  # the stop message is printed once
    assert "stopped at step 2" in (tmp_path / "run" / "train.log").read_text()
    line = _one_error_line(capsys, ["train", "--resume", "--out", out, "--lr", "0.1"])
    assert "stored configuration" in line
    assert main(["train", "--resume", "--out", out, "--progress", "False"]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["step"] == 4
    rows = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "train/loss" in r] == [1, 2, 3, 4]


@pytest.mark.shared_data
def test_wt2_recipe_on_the_shared_data(tmp_path):
    data = REPO.parent / "shared" / "data" / "wikitext-2"
    if not data.is_dir():
        pytest.skip(f"{data} is absent (WikiText-2 from ../shared/data)")
    res = run_recipe(
        "wt2",
        "--preset",
        "small",
        "--data_dir",
        str(data),
        "--max_steps",
        "2",
        "--out",
        str(tmp_path / "wt2"),
        "--val_max_batches",
        "1",
        "--eval_tgt_len",
        "128",
        "--eval_mem_len",
        "128",
        "--progress",
        "False",
        timeout=600,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    summary = json.loads(res.stdout.strip().splitlines()[-1])
    config = json.loads((tmp_path / "wt2" / "config.json").read_text())
    assert config["model"]["n_token"] == 33278 and summary["test/tokens"] > 200_000
    assert 1 < summary["test/ppl"] < 40_000
