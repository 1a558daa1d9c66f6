"""Engine configs, lr schedule, phase switch, variants and flag coercion (pure, fast)."""

from __future__ import annotations

import math

import pytest
import torch

from skipxl.config_io import from_dict, to_dict
from skipxl.engine.config import EvalConfig, RunConfig, TrainConfig, run_config_from_dict, run_config_to_dict
from skipxl.engine.ds_config import build_ds_config
from skipxl.engine.flags import coerce
from skipxl.engine.phases import PHASE_SKIP, PHASE_VANILLA, PhaseController
from skipxl.engine.schedule import lr_at, make_scheduler
from skipxl.engine.variants import VARIANTS, apply_variant
from skipxl.errors import SkipxlError
from skipxl.model import CrossHeadConfig, SkipRetainConfig, get_preset


def test_train_config_json_round_trip():
    cfg = TrainConfig(
        global_batch=12,
        micro_batch=3,
        max_steps=50,
        warmup_steps=5,
        adam_betas=(0.8, 0.99),
        phase1_patience=2,
        val_tgt_len=7,
    )
    again = from_dict(TrainConfig, to_dict(cfg))
    assert again == cfg and isinstance(again.adam_betas, tuple)


def test_run_config_round_trip_with_model_and_data():
    from skipxl.data import DataConfig

    model = apply_variant(get_preset("tiny", n_token=50), "combined", pskip=[0, 0.1, 0.2, 0], beta=0.3)
    cfg = RunConfig(
        model=model,
        data=DataConfig(),
        train=TrainConfig(),
        eval=EvalConfig(same_length=True),
        variant="combined",
        preset="tiny",
        out_dir="runs/x",
    )
    data = run_config_to_dict(cfg)
    data["ds_config"] = {"zero_optimization": {"stage": 0}}  # stored for the record, ignored on load
    again = run_config_from_dict(data)
    assert again == cfg
    assert again.model.skip.probs == (0.0, 0.1, 0.2, 0.0)


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [
        (dict(global_batch=0), "global_batch"),
        (dict(lr=0), "lr"),
        (dict(eta_min=1.0), "eta_min"),
        (dict(warmup_steps=10, max_steps=5), "warmup_steps"),
        (dict(scheduler="step"), "scheduler"),
        (dict(phase1_fraction=1.5), "phase1_fraction"),
        (dict(adam_betas=(0.9, 1.0)), "adam_betas"),
    ],
)
def test_train_config_rejects_bad_values(kwargs, needle):
    with pytest.raises(SkipxlError, match=needle):
        TrainConfig(**kwargs)


def test_run_config_refuses_variant_model_mismatch():
    from skipxl.data import DataConfig

    with pytest.raises(SkipxlError, match="apply_variant"):
        RunConfig(
            model=get_preset("tiny"),
            data=DataConfig(),
            train=TrainConfig(),
            eval=EvalConfig(),
            variant="skip_retain",
        )
    with pytest.raises(SkipxlError, match="unknown variant"):
        RunConfig(
            model=get_preset("tiny"), data=DataConfig(), train=TrainConfig(), eval=EvalConfig(), variant="x"
        )


def test_lr_schedule_matches_original_formula():
    lr, total, warm, eta = 2.5e-4, 100, 10, 1e-5
    for step in (0, 1, 5, 9):
        assert lr_at(step, lr=lr, max_steps=total, warmup_steps=warm, eta_min=eta) == pytest.approx(
            lr * step / warm
        )
    for step in (
        10,
        50,
        99,
        100,
    ):  # cosine over max_steps counted from step 0, as CosineAnnealingLR(max_step)
        want = eta + 0.5 * (lr - eta) * (1 + math.cos(math.pi * step / total))
        assert lr_at(step, lr=lr, max_steps=total, warmup_steps=warm, eta_min=eta) == pytest.approx(want)
    assert lr_at(100, lr=lr, max_steps=total, eta_min=eta) == pytest.approx(eta)
    assert lr_at(70, lr=lr, max_steps=total, scheduler="constant") == lr


def test_lambda_scheduler_follows_lr_at_and_round_trips():
    cfg = TrainConfig(lr=1e-3, max_steps=20, warmup_steps=4, eta_min=1e-4)
    opt = torch.optim.Adam([torch.nn.Parameter(torch.zeros(1))], lr=cfg.lr)
    sched = make_scheduler(opt, cfg)
    seen = []
    for _ in range(8):
        seen.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    want = [lr_at(s, lr=1e-3, max_steps=20, warmup_steps=4, eta_min=1e-4) for s in range(8)]
    assert seen == pytest.approx(want)
    opt2 = torch.optim.Adam([torch.nn.Parameter(torch.zeros(1))], lr=cfg.lr)
    sched2 = make_scheduler(opt2, cfg)
    sched2.load_state_dict(sched.state_dict())
    assert sched2.get_last_lr() == sched.get_last_lr()


def test_ds_config_gets_clip_and_batch():
    ds = build_ds_config(
        "cpu", micro_batch=3, grad_accum=2, world_size=2, overrides={"gradient_clipping": 0.5}
    )
    assert (
        ds["train_batch_size"],
        ds["train_micro_batch_size_per_gpu"],
        ds["gradient_accumulation_steps"],
    ) == (12, 3, 2)
    assert ds["gradient_clipping"] == 0.5


def test_phase_switch_by_step_and_fraction():
    ctl = PhaseController.from_config(TrainConfig(max_steps=100, phase1_steps=30, phase1_fraction=0.2), True)
    assert ctl.skipping
    assert not ctl.after_step(19)
    assert ctl.after_step(20) and ctl.phase == PHASE_VANILLA and ctl.switch_step == 20  # min(30, 0.2*100)
    assert not ctl.after_step(30)  # switches once


def test_phase_switch_by_plateau_fires_and_restores():
    cfg = TrainConfig(max_steps=1000, phase1_patience=2, phase1_min_delta=0.01)
    ctl = PhaseController.from_config(cfg, True)
    assert not ctl.after_validation(10, 5.0)
    assert not ctl.after_validation(20, 4.0)
    assert not ctl.after_validation(30, 3.995)  # improvement below min_delta: 1 bad
    state = ctl.state_dict()
    restored = PhaseController.from_config(cfg, True)
    restored.load_state_dict(state)
    assert restored.bad_validations == 1 and restored.skipping
    assert restored.after_validation(40, 4.1)  # 2nd bad validation: plateau
    assert (
        restored.phase == PHASE_VANILLA and restored.switch_step == 40 and "plateau" in restored.switch_reason
    )


def test_phase_disabled_for_variants_without_skip():
    ctl = PhaseController.from_config(TrainConfig(phase1_steps=5), enabled=False)
    assert not ctl.skipping and ctl.phase == PHASE_VANILLA
    assert not ctl.after_step(5) and not ctl.after_validation(5, 1.0)
    on = PhaseController.from_config(TrainConfig(), enabled=True)
    assert on.phase == PHASE_SKIP and on.switch_at_step is None  # no rule: phase 1 all the way


def test_variants_set_exactly_their_methods():
    base = get_preset("tiny", n_token=30)
    for name, (skip_on, cross_on, dlt_on) in VARIANTS.items():
        cfg = apply_variant(base, name)
        assert (cfg.skip is not None, cfg.cross_head is not None) == (skip_on, cross_on)
        assert (cfg.tying is not None) == dlt_on
    combined = apply_variant(base, "combined")
    assert combined.skip == SkipRetainConfig() and combined.cross_head == CrossHeadConfig()


def test_pskip_and_beta_overrides():
    base = get_preset("tiny", n_token=30)
    cfg = apply_variant(base, "skip_retain", pskip=0.3)
    assert cfg.skip.schedule == "linear" and cfg.skip.p == 0.3
    cfg = apply_variant(base, "skip_retain", pskip="0,0.5,0.5,0")
    assert cfg.skip.schedule == "list" and cfg.skip.probs == (0.0, 0.5, 0.5, 0.0)
    cfg = apply_variant(base, "cross_head", beta=0.4, cross_head_options={"mode": "per_head"})
    assert cfg.cross_head == CrossHeadConfig(beta=0.4, mode="per_head")
    with pytest.raises(SkipxlError, match="--pskip"):
        apply_variant(base, "baseline", pskip=0.2)
    with pytest.raises(SkipxlError, match="--beta"):
        apply_variant(base, "skip_retain", beta=0.2)
    with pytest.raises(SkipxlError, match="unknown --variant"):
        apply_variant(base, "skip")
    with pytest.raises(SkipxlError, match="one probability per layer"):
        apply_variant(base, "skip_retain", pskip=[0.1, 0.2])


@pytest.mark.parametrize(
    ("value", "tp", "want"),
    [
        (123, str, "123"),
        ("7", int, 7),
        (1e3, int, 1000),
        ("false", bool, False),
        (1, bool, True),
        ("2000,10000", tuple[int, ...], (2000, 10000)),
        ((1, 2), tuple[int, ...], (1, 2)),
        (5, tuple[int, ...], (5,)),
        ("none", int | None, None),
        ("0.9,0.98", tuple[float, float], (0.9, 0.98)),
    ],
)
def test_coerce_handles_fire_values(value, tp, want):
    assert coerce("x", value, tp) == want


@pytest.mark.parametrize(
    ("value", "tp", "needle"),
    [
        ("abc", int, "expects an integer"),
        (1.5, int, "expects an integer"),
        (True, int, "bare flag"),
        (True, str, "needs a value"),
        ("maybe", bool, "true/false"),
        ("a,b", tuple[int, ...], "expects an integer"),
    ],
)
def test_coerce_rejects_with_flag_name(value, tp, needle):
    with pytest.raises(SkipxlError, match=needle) as info:
        coerce("max_steps", value, tp)
    assert "--max_steps" in str(info.value)


def test_character_corpora_are_scored_in_bits_per_character(tmp_path):
    """enwik8 (byte vocabulary) and text8 (char vocabulary) report bpc; word corpora report ppl."""
    import zipfile

    from skipxl.data import DataConfig, load_corpus
    from skipxl.engine.metrics import loss_metrics, metric_level

    data = bytes(range(32, 127)) * 40  # 3,800 printable bytes
    text = b"ab cd ef " * 400  # 3,600 characters
    for corpus, member in (("enwik8", "enwik8"), ("text8", "text8")):
        folder = tmp_path / corpus
        folder.mkdir()
        payload = data if corpus == "enwik8" else text
        split = (len(payload) - 600, 300, 300)
        with zipfile.ZipFile(folder / f"{corpus}.zip", "w") as zf:
            zf.writestr(member, payload)
        cfg = DataConfig(corpus=corpus, data_dir=str(folder), char_split=split, cache_dir=str(tmp_path / "c"))
        level = metric_level(load_corpus(cfg).vocab.level)
        assert level == "char", corpus
        assert loss_metrics(math.log(2.0), level, "val") == {"val/loss": math.log(2.0), "val/bpc": 1.0}
    assert metric_level("word") == "word" and metric_level("subword") == "word"
    assert set(loss_metrics(1.0, "word", "val")) == {"val/loss", "val/ppl"}
