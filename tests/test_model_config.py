"""ModelConfig / SkipRetainConfig validation, JSON round trips and presets."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch

from skipxl.config_io import load_json, save_json
from skipxl.errors import SkipxlError
from skipxl.model import (
    PRESETS,
    CrossHeadConfig,
    ModelConfig,
    SkipRetainConfig,
    TransformerXL,
    get_preset,
)

BASE = dict(n_token=100, n_layer=2, n_head=2, d_model=8, d_head=4, d_inner=16)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (dict(n_layer=0), "n_layer must be a positive int"),
        (dict(d_model=7), "d_model must be even"),
        (dict(cutoffs=(50, 20)), "strictly increasing"),
        (dict(cutoffs=(50, 100)), "strictly between 0 and n_token"),
        (dict(div_val=0), "div_val must be an int >= 1"),
        (dict(cutoffs=(10, 20, 30), div_val=4), "shrinks the last cluster"),
        (dict(mem_len=-1), "mem_len must be >= 0"),
        (dict(ext_len=-2), "ext_len must be >= 0"),
        (dict(clamp_len=0), "clamp_len must be -1"),
        (dict(dropout=1.0), "dropout must be in"),
        (dict(positions="absolute"), "positions 'absolute' is unknown"),
        (dict(init="xavier"), "init 'xavier' is unknown"),
        (dict(cutoffs=(10,), tie_projs=(True,)), "tie_projs has 1 entries"),
        (dict(skip=SkipRetainConfig(schedule="list", probs=(0.1,))), "skip probs has 1 entries"),
        (dict(plan_seed=-1), "plan_seed"),
        (dict(same_length=True, mem_len=0), "masks every key"),
    ],
)
def test_model_config_validation(overrides: dict, message: str) -> None:
    with pytest.raises(SkipxlError, match=message):
        ModelConfig(**{**BASE, **overrides})


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(schedule="cosine"), "skip schedule 'cosine' is unknown"),
        (dict(p=1.5), "skip p must be in"),
        (dict(schedule="list"), "needs probs"),
        (dict(probs=(0.1,)), "only used with schedule='list'"),
        (dict(schedule="list", probs=(0.1, 1.2)), "each be in"),
        (dict(retain_positions="fake"), "retain_positions 'fake' is unknown"),
        (dict(skipped_grad="ones"), "skipped_grad 'ones' is unknown"),
    ],
)
def test_skip_config_validation(kwargs: dict, message: str) -> None:
    with pytest.raises(SkipxlError, match=message):
        SkipRetainConfig(**kwargs)


def test_config_json_round_trip(tmp_path: Path) -> None:
    cfg = ModelConfig(
        **BASE,
        cutoffs=(20, 50),
        div_val=2,
        tie_projs=(False, True, False),
        skip=SkipRetainConfig(schedule="list", probs=(0.0, 0.5), skipped_grad="zero"),
        cross_head=CrossHeadConfig(beta=0.2, mode="per_head"),
        positions="segment_end",
    )
    save_json(cfg, tmp_path / "model.json")
    back = ModelConfig.from_dict(load_json(tmp_path / "model.json"))
    assert back == cfg
    assert ModelConfig.from_dict(cfg.to_dict()) == cfg
    bool_cfg = ModelConfig(**BASE, cutoffs=(20,), tie_projs=False)
    assert ModelConfig.from_dict(bool_cfg.to_dict()) == bool_cfg
    with pytest.raises(SkipxlError, match="unknown ModelConfig field"):
        ModelConfig.from_dict({**cfg.to_dict(), "n_layers": 3})


def test_tie_projs_list_form() -> None:
    assert ModelConfig(**BASE, cutoffs=(20, 50)).tie_projs_list == (False, True, True)
    assert ModelConfig(**BASE, cutoffs=(20, 50), tie_projs=False).tie_projs_list == (False,) * 3


def _n_params(cfg: ModelConfig) -> int:
    with torch.device("meta"):
        return TransformerXL(cfg).num_parameters()


def test_preset_parameter_counts() -> None:
    # Published sizes: paper's released model 122M, TXL base 151M, enwik8 12L 41M.
    assert _n_params(get_preset("wt103_sch")) == pytest.approx(122e6, rel=0.01)
    assert _n_params(get_preset("wt103_base")) == pytest.approx(151e6, rel=0.01)
    assert _n_params(get_preset("enwik8_base")) == pytest.approx(41e6, rel=0.01)
    assert _n_params(get_preset("enwik8_large")) == pytest.approx(277e6, rel=0.01)


def test_presets_build_and_override() -> None:
    for name in PRESETS:
        cfg = get_preset(name)
        assert isinstance(cfg, ModelConfig)
    sch = get_preset("wt103_sch")
    assert (sch.n_layer, sch.d_model, sch.n_head, sch.d_head, sch.d_inner) == (15, 624, 16, 39, 2496)
    assert sch.div_val == 4 and not sch.tie_weight and sch.tie_projs is False
    cfg = get_preset("tiny", n_token=77, mem_len=5, skip=SkipRetainConfig())
    assert cfg.n_token == 77 and cfg.mem_len == 5 and cfg.skip is not None
    assert dataclasses.replace(cfg, n_layer=3).n_layer == 3
    with pytest.raises(SkipxlError, match="unknown model preset"):
        get_preset("wt104")
    with pytest.raises(SkipxlError, match="unknown ModelConfig field"):
        get_preset("tiny", n_layers=3)
