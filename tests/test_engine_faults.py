"""Faults and bad state in one process: damaged checkpoints are detected (SHA-256 manifests) and
skipped for the previous good one, `skipxl runs check` reports damage without changing anything,
a run killed before its first checkpoint restarts, edited settings and full disks fail clearly."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest
import torch
from engine_helpers import tiny_config

from skipxl.cli import main
from skipxl.engine import checkpoint as ckpt
from skipxl.engine import integrity
from skipxl.engine.train import train
from skipxl.errors import SkipxlError

pytestmark = pytest.mark.slow

STEPS = 4
KW = dict(steps=STEPS, save_interval=2, eval_interval=0)


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """A finished 4-step run with checkpoints at steps 2 and 4 (the uninterrupted reference)."""
    run = tmp_path_factory.mktemp("faults") / "base"
    result = train(tiny_config(run, **KW), progress=False)
    return run, result


def _copy(base, tmp_path, name="run"):
    run = tmp_path / name
    shutil.copytree(base[0], run)
    return run


def damage(path, kind, seed=0):
    """Bit flip (64 bytes in the middle), truncation, zeroing or deletion of one file."""
    data = bytearray(path.read_bytes())
    if kind == "bitflip":
        mid = len(data) // 2 + seed
        data[mid : mid + 64] = bytes(b ^ 0xFF for b in data[mid : mid + 64])
        path.write_bytes(bytes(data))
    elif kind == "truncate":
        path.write_bytes(bytes(data[: len(data) // 2]))
    elif kind == "zero":
        path.write_bytes(bytes(len(data)))
    elif kind == "delete":
        path.unlink()
    else:
        raise ValueError(kind)


def _tree_digest(folder):
    h = hashlib.sha256()
    for p in sorted(folder.rglob("*")):
        h.update(str(p.relative_to(folder)).encode())
        if p.is_file():
            h.update(p.read_bytes())
    return h.hexdigest()


def test_manifest_lists_every_file_and_verifies(base):
    folder = base[0] / "checkpoints" / "step_00000004"
    verdict = integrity.verify(folder)
    assert verdict.ok and verdict.has_manifest
    assert set(verdict.files) == {p.name for p in folder.iterdir() if p.name != integrity.MANIFEST}
    assert verdict.rank_files() == 1


@pytest.mark.parametrize(
    ("kind", "name"),
    [
        ("bitflip", "mp_rank_00_model_states.pt"),
        ("bitflip", "skipxl_rank_00000.pt"),
        ("truncate", "skipxl_rank_00000.pt"),
        ("zero", "mp_rank_00_model_states.pt"),
        ("delete", "mp_rank_00_model_states.pt"),
    ],
)
def test_damaged_checkpoint_falls_back_and_continues_bitwise(base, tmp_path, capsys, kind, name):
    run = _copy(base, tmp_path)
    damage(run / "checkpoints" / "step_00000004" / name, kind)
    resumed = train(tiny_config(run, **KW), progress=False, resume=True)
    err = capsys.readouterr().err
    assert "step_00000004" in err and name in err and "loading step_00000002" in err
    # steps 3 and 4 trained again from step 2 give exactly the reference numbers
    assert resumed.finished and resumed.losses == base[1].losses[2:]
    assert resumed.final["test/loss"] == base[1].final["test/loss"]
    assert integrity.verify(run / "checkpoints" / "step_00000004").ok  # re-saved intact


def test_no_intact_checkpoint_is_one_error_naming_the_files(base, tmp_path):
    run = _copy(base, tmp_path)
    damage(run / "checkpoints" / "step_00000004" / "skipxl_rank_00000.pt", "bitflip")
    damage(run / "checkpoints" / "step_00000002" / "mp_rank_00_model_states.pt", "truncate")
    with pytest.raises(SkipxlError, match="no intact checkpoint") as info:
        train(tiny_config(run, **KW), progress=False, resume=True)
    assert "skipxl_rank_00000.pt" in str(info.value) and "mp_rank_00_model_states.pt" in str(info.value)


@pytest.mark.parametrize("content", [b"\xff\xfe\x00garbage", b"step_00000099", b""])
def test_bad_latest_uses_the_newest_intact_checkpoint(base, tmp_path, capsys, content):
    run = _copy(base, tmp_path)
    (run / "checkpoints" / "latest").write_bytes(content)
    resumed = train(tiny_config(run, **KW), progress=False, resume=True)
    assert "does not name an existing checkpoint" in capsys.readouterr().err
    assert resumed.finished and resumed.step == STEPS and resumed.losses == []


def test_runs_check_reports_damage_without_changing_the_folder(base, tmp_path, capsys):
    run = _copy(base, tmp_path)
    assert main(["runs", "check", str(run)]) == 0
    assert "intact" in capsys.readouterr().out
    damage(run / "checkpoints" / "step_00000002" / "skipxl_rank_00000.pt", "bitflip", seed=7)
    (run / "meta.json").write_bytes(b"\xff\xfe not utf-8")
    config = json.loads((run / "config.json").read_text())
    config["train"]["max_steps"] = "abc"
    (run / "config.json").write_text(json.dumps(config))
    with (run / "metrics.jsonl").open("ab") as fh:
        fh.write(b'{"step": 1, "x": "\xff"}\n{"step": 2}\n')
    before = _tree_digest(run)
    assert main(["runs", "check", str(run)]) == 1
    out = capsys.readouterr().out
    damaged = [line for line in out.splitlines() if line.startswith("DAMAGED")]
    assert any("step_00000002" in x and "skipxl_rank_00000.pt" in x and "SHA-256" in x for x in damaged)
    assert any("meta.json" in x and "UTF-8" in x for x in damaged)
    assert any("max_steps" in x and "'abc'" in x for x in damaged)
    assert any("metrics.jsonl" in x for x in damaged)
    assert any(x.startswith("ok") and "step_00000004" in x for x in out.splitlines())
    assert _tree_digest(run) == before  # read-only
    assert main(["runs", "check", str(tmp_path / "none")]) == 2


def test_a_resume_keeps_damaged_metrics_lines_aside_and_says_so(base, tmp_path, capsys):
    run = _copy(base, tmp_path)
    lines = (run / "metrics.jsonl").read_bytes().splitlines(keepends=True)
    bad = b'{"step": 1, "x": "\xff"}\n'
    (run / "metrics.jsonl").write_bytes(b"".join([*lines[:1], bad, *lines[1:]]) + b'{"step": 9, "torn')
    shutil.rmtree(run / "checkpoints" / "step_00000004")
    (run / "checkpoints" / "latest").write_text("step_00000002")
    train(tiny_config(run, **KW), progress=False, resume=True)
    err = capsys.readouterr().err
    assert "warning: 1 damaged line(s)" in err and "metrics.jsonl.damaged" in err
    assert (run / "metrics.jsonl.damaged").read_bytes() == bad  # kept byte for byte; the torn tail is dropped
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "train/loss" in r] == [1, 2, 3, 4]


def test_missing_rank_file_of_a_manifest_checkpoint_is_named(base, tmp_path, capsys):
    run = _copy(base, tmp_path)
    (run / "checkpoints" / "step_00000004" / "skipxl_rank_00000.pt").unlink()
    (run / "checkpoints" / "step_00000002" / "skipxl_rank_00000.pt").unlink()
    with pytest.raises(SkipxlError, match=r"skipxl_rank_00000.pt is missing"):
        train(tiny_config(run, **KW), progress=False, resume=True)


def test_run_killed_before_its_first_checkpoint_restarts(base, tmp_path, capsys):
    run = _copy(base, tmp_path)
    shutil.rmtree(run / "checkpoints")  # as if killed at step 3 of a run that saves every 200 steps
    (run / "results.json").unlink()
    restarted = train(tiny_config(run, **KW), progress=False, resume=True)
    assert "no checkpoint yet; restarting it from step 0" in capsys.readouterr().err
    assert restarted.losses == base[1].losses
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "train/loss" in r] == [1, 2, 3, 4]


@pytest.mark.parametrize(("field", "value"), [("max_steps", 8), ("lr", 1e-2)])
def test_settings_edited_since_the_checkpoint_are_refused(base, tmp_path, field, value):
    run = _copy(base, tmp_path)
    cfg = tiny_config(run, **{**KW, "steps": value if field == "max_steps" else STEPS})
    if field == "lr":
        import dataclasses

        cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, lr=value))
    with pytest.raises(SkipxlError, match=rf"{field} .* -> .*was config.json edited"):
        train(cfg, progress=False, resume=True)


def test_full_disk_during_a_save_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    import errno

    real_save = torch.save

    def full(obj, path, *args, **kwargs):
        if "step_00000004" in str(path):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(obj, path, *args, **kwargs)

    monkeypatch.setattr(ckpt.torch, "save", full)
    with pytest.raises(SkipxlError, match=r"No space left on device.*step_00000002\) is kept"):
        train(tiny_config(tmp_path / "run", **KW), progress=False)
    assert ckpt.read_latest(tmp_path / "run" / "checkpoints") == "step_00000002"


@pytest.mark.parametrize("stop", [0, -1, 2, 9])
def test_stop_at_step_outside_the_run_is_refused(base, tmp_path, stop):
    run = _copy(base, tmp_path)
    shutil.rmtree(run / "checkpoints" / "step_00000004")
    (run / "checkpoints" / "latest").write_text("step_00000002")
    with pytest.raises(SkipxlError, match="--stop_at_step"):  # resumed at step 2, max_steps 4
        train(tiny_config(run, **KW), progress=False, resume=True, stop_at_step=stop)


def test_evaluations_that_differ_never_overwrite_each_other(base):
    from skipxl.engine.evaluate import evaluate_run

    run = base[0]
    rows = [
        evaluate_run(run, split="valid"),
        evaluate_run(run, split="valid", max_batches=1),
        evaluate_run(run, split="valid", tag="step_00000002"),
    ]
    names = {row["saved_to"] for row in rows}
    assert len(names) == 3
    for row in rows:  # each file still holds its own number
        assert json.loads(Path(row["saved_to"]).read_text())["val/loss"] == row["val/loss"]
    assert rows[0]["val/loss"] != rows[2]["val/loss"]


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_eval_on_cuda_without_a_gpu_is_one_error(base, capsys):
    assert main(["eval", str(base[0]), "--device", "cuda"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no usable CUDA GPU" in err[0] and err[0].startswith("error: ")


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["train", "--recipe", "wt103", "--data_dir", "{file}"], "is a file; pass the folder"),
        (["train", "--resume", "--out", "{run}"], "TrainConfig.max_steps must be int, got 'abc'"),
        (["train", "--resume", "--out", "{binary}"], "is not UTF-8 text"),
        (["eval", "{empty}"], "no checkpoint in"),
    ],
)
def test_bad_state_is_one_error_line(tmp_path, capsys, base, argv, needle):
    (tmp_path / "file.txt").write_text("x")
    run = _copy(base, tmp_path, "run")
    config = json.loads((run / "config.json").read_text())
    config["train"]["max_steps"] = "abc"
    (run / "config.json").write_text(json.dumps(config))
    binary = _copy(base, tmp_path, "binary")
    (binary / "config.json").write_bytes(b"\xff\xfe{}")
    empty = _copy(base, tmp_path, "empty")
    shutil.rmtree(empty / "checkpoints")
    paths = {"file": tmp_path / "file.txt", "run": run, "binary": binary, "empty": empty}
    code = main([a.format(**paths) for a in argv])
    err = capsys.readouterr().err.strip().splitlines()
    errors = [line for line in err if line.startswith("error: ")]
    assert code == 2 and len(errors) == 1 and "Traceback" not in "\n".join(err), err
    assert needle in errors[0] and "drop --resume" not in errors[0]


def test_missing_zero_optimizer_shard_falls_back(tmp_path, capsys):
    kw = {**KW, "ds_config": "cpu_zero2"}
    full = train(tiny_config(tmp_path / "full", **kw), progress=False)
    shards = sorted((tmp_path / "full" / "checkpoints" / "step_00000004").glob("*optim_states.pt"))
    assert shards, "a ZeRO checkpoint has optimizer shards"
    shards[0].unlink()
    resumed = train(tiny_config(tmp_path / "full", **kw), progress=False, resume=True)
    assert f"{shards[0].name} is missing" in capsys.readouterr().err
    assert resumed.losses == full.losses[2:]
