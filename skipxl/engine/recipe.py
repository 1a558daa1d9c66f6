"""Recipes: the original training settings per corpus and model size, turned into a RunConfig.

``recipes/wt103.py`` and friends are one-line python-fire wrappers around :func:`run`. A
recipe picks the model preset (``--preset base`` -> ``wt103_base``), the optimisation and
evaluation protocol of the original scripts (Transformer-XL, Dai et al. 2019,
``run_*.sh``; the Skip-Retain paper's ``run_wt15_phase_*.sh``, arXiv 2311.08123), applies
the ``--variant`` and then any flag that names a config field::

    python recipes/wt103.py --preset base --variant combined --data_dir data/wikitext-103 \\
        --out runs/wt103-base-combined --lr 5e-4 --eval_mem_len 1600 --dropout 0.2

Flag routing: a model field (``--dropout``, ``--mem_len``), a training field (``--lr``,
``--warmup_steps``), a data field (``--data_dir``, ``--cache_dir``), an evaluation field
with the ``eval_`` prefix (``--eval_tgt_len``, ``--eval_same_length``), a built-in corpus
option with ``builtin_`` (``--builtin_train_tokens``), Skip-Retain options
(``--pskip``, ``--pskip_schedule``, ``--retain_positions``, ``--skipped_grad``,
``--protect_ends``) and cross-head options (``--beta``, ``--cross_head_mode``). Dotted
names (``--model.dropout``, ``--train.lr``) are accepted too.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from skipxl.engine.config import EvalConfig, RunConfig, TrainConfig
from skipxl.engine.flags import coerce, unknown_flag
from skipxl.engine.run_dir import CONFIG
from skipxl.engine.variants import apply_variant, check_variant, uses_skip
from skipxl.errors import SkipxlError

# Built-in corpus with the tiny model: seconds per hundred steps on a laptop CPU.
_TINY_TRAIN = dict(
    global_batch=8,
    max_steps=400,
    lr=1e-3,
    log_interval=10,
    eval_interval=50,
    save_interval=200,
    val_max_batches=40,
)
_TINY_EVAL = dict(tgt_len=16, mem_len=64, clamp_len=-1, same_length=True, batch_size=10)
#: The built-in corpus's valid/test splits, shortened so that a full CPU evaluation takes seconds.
BUILTIN_DEFAULTS = dict(eval_tokens=20_000)


@dataclass(frozen=True)
class Recipe:
    """Defaults of one recipe: which presets, and the original train/eval settings of each."""

    corpus: str
    presets: dict[str, str]
    default_preset: str
    train: dict[str, dict[str, Any]] = field(default_factory=dict)
    eval: dict[str, dict[str, Any]] = field(default_factory=dict)


RECIPES: dict[str, Recipe] = {
    "wt103": Recipe(
        corpus="wt103",
        presets={"base": "wt103_base", "large": "wt103_large", "sch": "wt103_sch", "tiny": "tiny"},
        default_preset="base",
        train={
            "base": dict(global_batch=60, max_steps=200_000, warmup_steps=0, val_tgt_len=150),
            "large": dict(global_batch=128, max_steps=4_000_000, warmup_steps=16_000, val_tgt_len=128),
            # the paper's released script: 2 GPUs x 16, cosine with 16k warm-up, 1.2M steps
            "sch": dict(
                global_batch=32, max_steps=1_200_000, warmup_steps=16_000, val_tgt_len=128, log_interval=1000
            ),
            "tiny": _TINY_TRAIN,
        },
        eval={
            "base": dict(tgt_len=64, mem_len=640, clamp_len=400, same_length=True),
            "large": dict(tgt_len=128, mem_len=1600, clamp_len=1000, same_length=True),
            "sch": dict(tgt_len=128, mem_len=640, clamp_len=800, same_length=True),
            "tiny": _TINY_EVAL,
        },
    ),
    "enwik8": Recipe(
        corpus="enwik8",
        presets={"base": "enwik8_base", "large": "enwik8_large", "tiny": "tiny"},
        default_preset="base",
        train={
            "base": dict(global_batch=22, max_steps=400_000, warmup_steps=0, val_tgt_len=128),
            "large": dict(global_batch=22, max_steps=400_000, warmup_steps=0, val_tgt_len=128),
            "tiny": _TINY_TRAIN,
        },
        eval={
            "base": dict(tgt_len=80, mem_len=2100, clamp_len=820, same_length=True),
            "large": dict(tgt_len=128, mem_len=3800, clamp_len=1000, same_length=True),
            "tiny": _TINY_EVAL,
        },
    ),
    "text8": Recipe(
        corpus="text8",
        presets={"base": "text8_base", "large": "text8_large", "tiny": "tiny"},
        default_preset="base",
        train={
            "base": dict(global_batch=22, max_steps=400_000, warmup_steps=0, val_tgt_len=128),
            "large": dict(global_batch=22, max_steps=400_000, warmup_steps=0, val_tgt_len=128),
            "tiny": _TINY_TRAIN,
        },
        eval={
            "base": dict(tgt_len=80, mem_len=2100, clamp_len=820, same_length=True),
            "large": dict(tgt_len=128, mem_len=3800, clamp_len=1000, same_length=True),
            "tiny": _TINY_EVAL,
        },
    ),
    "wt2": Recipe(
        corpus="wt2",
        presets={"small": "wt2_small", "tiny": "tiny"},
        default_preset="small",
        train={
            # a CPU-sized budget; not from a published script (Transformer-XL has no WT2 recipe)
            "small": dict(
                global_batch=16,
                max_steps=3000,
                lr=5e-4,
                warmup_steps=100,
                val_tgt_len=64,
                log_interval=50,
                eval_interval=500,
                save_interval=1000,
            ),
            "tiny": _TINY_TRAIN,
        },
        eval={
            "small": dict(tgt_len=64, mem_len=192, clamp_len=-1, same_length=True),
            "tiny": _TINY_EVAL,
        },
    ),
    "builtin": Recipe(
        corpus="builtin",
        presets={"tiny": "tiny"},
        default_preset="tiny",
        train={"tiny": _TINY_TRAIN},
        eval={"tiny": _TINY_EVAL},
    ),
}

#: Phase-1 rule for Skip-Retain variants unless flags say otherwise: until the validation loss
#: plateaus (3 validations without improvement, "until convergence") but at most half the budget.
SKIP_PHASE_DEFAULTS = dict(phase1_fraction=0.5, phase1_patience=3)

_SKIP_FLAGS = {
    "pskip_schedule": "schedule",
    "retain_positions": "retain_positions",
    "skipped_grad": "skipped_grad",
    "protect_ends": "protect_ends",
}
_CROSS_FLAGS = {"cross_head_mode": "mode"}


def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _route(overrides: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Split ``--name value`` overrides into per-config field dicts (typed)."""
    from skipxl.data import BuiltinConfig, DataConfig
    from skipxl.model.config import ModelConfig, SkipRetainConfig
    from skipxl.model.heads import CrossHeadConfig

    classes = {
        "model": ModelConfig,
        "train": TrainConfig,
        "data": DataConfig,
        "eval": EvalConfig,
        "builtin": BuiltinConfig,
        "skip": SkipRetainConfig,
        "cross_head": CrossHeadConfig,
    }
    hints = {k: _hints(c) for k, c in classes.items()}
    hints["model"] = {k: v for k, v in hints["model"].items() if k not in ("skip", "cross_head", "n_token")}
    hints["data"] = {k: v for k, v in hints["data"].items() if k not in ("builtin", "corpus")}
    out: dict[str, dict[str, Any]] = {k: {} for k in classes}
    aliases = {"batch_size": ("train", "global_batch")}
    valid_names: set[str] = set(aliases) | set(_SKIP_FLAGS) | set(_CROSS_FLAGS)
    for group in ("model", "train", "data"):
        valid_names |= set(hints[group])
    valid_names |= {f"eval_{k}" for k in hints["eval"]} | {f"builtin_{k}" for k in hints["builtin"]}

    for name, value in overrides.items():
        group = key = None
        if "." in name:
            group, _, key = name.partition(".")
            if group not in hints or key not in hints[group]:
                raise unknown_flag(name, [f"{g}.{k}" for g in hints for k in hints[g]], "this recipe")
        elif name in aliases:
            group, key = aliases[name]
        elif name in _SKIP_FLAGS:
            group, key = "skip", _SKIP_FLAGS[name]
        elif name in _CROSS_FLAGS:
            group, key = "cross_head", _CROSS_FLAGS[name]
        elif name.startswith("eval_") and name[5:] in hints["eval"]:
            group, key = "eval", name[5:]
        elif name.startswith("builtin_") and name[8:] in hints["builtin"]:
            group, key = "builtin", name[8:]
        else:
            for g in ("model", "train", "data"):
                if name in hints[g]:
                    group, key = g, name
                    break
        if group is None or key is None:
            raise unknown_flag(name, valid_names, "this recipe")
        out[group][key] = coerce(name, value, hints[group][key])
    return out


def build_config(
    recipe: str = "builtin",
    *,
    preset: str | None = None,
    variant: str = "baseline",
    corpus: str | None = None,
    data_dir: str | None = None,
    ds_config: str | None = None,
    max_steps: int | None = None,
    out: str | None = None,
    seed: int | None = None,
    micro_batch: int | None = None,
    grad_accum: int | None = None,
    pskip: Any = None,
    beta: Any = None,
    n_token: int | None = None,
    **overrides: Any,
) -> RunConfig:
    """Resolve a recipe and flags into a :class:`RunConfig` (loads the vocabulary for n_token)."""
    from skipxl.data import BuiltinConfig, DataConfig, load_corpus
    from skipxl.model import get_preset

    if recipe not in RECIPES:
        raise SkipxlError(f"unknown recipe {recipe!r}; choose one of {sorted(RECIPES)}")
    variant = check_variant(variant if not isinstance(variant, (int, float)) else str(variant))
    base = RECIPES[recipe]
    corpus = coerce("corpus", corpus, str | None) or base.corpus
    if corpus != base.corpus and corpus not in ("builtin", "txt"):
        raise SkipxlError(
            f"--corpus {corpus!r} does not fit recipe {recipe}; use --corpus builtin (smoke test) "
            f"or recipes/{corpus}.py"
        )
    recipe_for_defaults = RECIPES["builtin"] if corpus == "builtin" and preset in (None, "tiny") else base
    preset = coerce("preset", preset, str | None) or recipe_for_defaults.default_preset
    presets = {**recipe_for_defaults.presets, **base.presets}
    if preset not in presets:
        raise SkipxlError(f"unknown --preset {preset!r} for recipe {recipe}; choose one of {sorted(presets)}")
    routed = _route(overrides)

    data_fields = dict(routed["data"])
    if data_dir is not None:
        data_fields["data_dir"] = coerce("data_dir", data_dir, str)
    if corpus != "builtin" and data_fields.get("source", "local") == "local":
        path = data_fields.get("data_dir")
        if path is None:
            raise SkipxlError(
                f"recipe {recipe} needs --data_dir <folder with the {corpus} files> "
                "(see README: getting the datasets), or --corpus builtin for a smoke test"
            )
        if Path(path).expanduser().is_file():
            raise SkipxlError(f"--data_dir {path} is a file; pass the folder that holds the {corpus} files")
        if not Path(path).expanduser().is_dir():
            raise SkipxlError(
                f"--data_dir {path} does not exist; download the {corpus} files there first "
                "(see README: getting the datasets)"
            )
    builtin = BuiltinConfig(**{**BUILTIN_DEFAULTS, **routed["builtin"]})
    data = DataConfig(corpus=corpus, builtin=builtin, **data_fields)

    train_fields = {**recipe_for_defaults.train.get(preset, base.train.get(preset, {}))}
    if uses_skip(variant):
        train_fields.update(SKIP_PHASE_DEFAULTS)
    train_fields.update(routed["train"])
    for name, value, tp in (
        ("max_steps", max_steps, int),
        ("seed", seed, int),
        ("micro_batch", micro_batch, int),
        ("grad_accum", grad_accum, int),
        ("ds_config", ds_config, str),
    ):
        if value is not None:
            train_fields[name] = coerce(name, value, tp)
    if "warmup_steps" in train_fields and "max_steps" in train_fields:
        train_fields["warmup_steps"] = min(train_fields["warmup_steps"], train_fields["max_steps"])
    train = TrainConfig(**train_fields)

    eval_fields = {**recipe_for_defaults.eval.get(preset, base.eval.get(preset, {})), **routed["eval"]}
    eval_cfg = EvalConfig(**eval_fields)

    if n_token is None:
        n_token = load_corpus(data).n_token
    model_fields = dict(routed["model"])
    model_fields.setdefault("plan_seed", train.seed)
    preset_name = presets[preset]
    model = get_preset(preset_name, n_token=int(n_token), **model_fields)
    if model.cutoffs and max(model.cutoffs) >= model.n_token and "cutoffs" not in model_fields:
        # a big-vocabulary preset on a small corpus (e.g. --corpus builtin): keep the cutoffs that fit
        model = dataclasses.replace(model, cutoffs=tuple(c for c in model.cutoffs if c < model.n_token))
    model = apply_variant(
        model,
        variant,
        pskip=pskip,
        beta=beta,
        skip_options=routed["skip"] or None,
        cross_head_options=routed["cross_head"] or None,
    )
    out_dir = coerce("out", out, str | None) or f"runs/{corpus}-{preset}-{variant}-seed{train.seed}"
    return RunConfig(
        model=model,
        data=data,
        train=train,
        eval=eval_cfg,
        variant=variant,
        preset=preset_name,
        out_dir=out_dir,
    )


def run(
    recipe: str = "builtin",
    *,
    resume: bool = False,
    stop_at_step: int | None = None,
    progress: bool = True,
    dry_run: bool = False,
    config: str | None = None,
    local_rank: int | None = None,
    **flags: Any,
) -> Any:
    """Train a recipe (see the module docstring); returns the :class:`TrainResult`.

    ``--resume`` continues the run in ``--out`` from its latest checkpoint with the
    configuration stored there (other config flags are refused). ``--config FILE`` starts a
    new run from a saved ``config.json``. ``--dry_run`` prints the resolved config and stops.
    """
    import json

    from skipxl.config_io import load_json, to_dict
    from skipxl.engine.config import run_config_from_dict
    from skipxl.engine.train import train

    del local_rank  # set by the deepspeed launcher; the engine reads LOCAL_RANK from the environment
    resume = coerce("resume", resume, bool)
    stop_at_step = coerce("stop_at_step", stop_at_step, int | None)
    if resume:
        out = flags.pop("out", None)
        if out is None:
            raise SkipxlError("--resume needs --out RUN_DIR (the run to continue)")
        extra = sorted(k for k, v in flags.items() if v is not None and k != "recipe")
        if extra:
            raise SkipxlError(f"--resume continues the run with its stored configuration; drop {extra}")
        cfg_path = Path(str(out)) / CONFIG
        cfg = run_config_from_dict(load_json(cfg_path))
        cfg = dataclasses.replace(cfg, out_dir=str(out))
    elif config is not None:
        cfg = run_config_from_dict(load_json(Path(str(config))))
        if flags:
            cfg = _apply_overrides(cfg, flags)
    else:
        cfg = build_config(recipe, **flags)
    if dry_run:
        print(json.dumps(to_dict(cfg), indent=2, sort_keys=True))
        return cfg
    return train(cfg, resume=resume, progress=coerce("progress", progress, bool), stop_at_step=stop_at_step)


def _apply_overrides(cfg: RunConfig, flags: dict[str, Any]) -> RunConfig:
    """``--config FILE`` plus a few flags: --out, --seed, --max_steps, --ds_config, batch flags."""
    allowed = {"out", "seed", "max_steps", "ds_config", "micro_batch", "grad_accum"}
    bad = sorted(set(flags) - allowed)
    if bad:
        raise SkipxlError(f"with --config only {sorted(allowed)} may be changed; drop {bad}")
    train_changes = {
        k: coerce(k, v, int if k != "ds_config" else str) for k, v in flags.items() if k in allowed - {"out"}
    }
    train = dataclasses.replace(cfg.train, **train_changes)
    out = coerce("out", flags["out"], str) if "out" in flags else cfg.out_dir
    return dataclasses.replace(cfg, train=train, out_dir=out)
