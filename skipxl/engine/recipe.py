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
from skipxl.engine.dlt_config import AgentConfig, DLTConfig
from skipxl.engine.flags import coerce, doc_entries, type_name, unknown_flag
from skipxl.engine.run_dir import CONFIG
from skipxl.engine.variants import apply_variant, check_variant, uses_dlt, uses_skip
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
_TYING_FLAGS = {"tying_gradient": "gradient", "tying_untie": "untie", "tying_start": "start"}
#: Dynamic Layer Tying flags -> (config group, field): the schedule or its Q-learning agent.
_DLT_FLAGS = {
    "dlt_steps_per_action": ("dlt", "steps_per_action"),
    "dlt_reward": ("dlt_agent", "reward"),
    "dlt_reward_clip": ("dlt_agent", "reward_clip"),
    "dlt_epsilon_floor": ("dlt_agent", "epsilon_floor"),
    "dlt_epsilon_decay": ("dlt_agent", "epsilon_decay"),
    "dlt_gamma": ("dlt_agent", "gamma"),
    "dlt_lr": ("dlt_agent", "lr"),
    "dlt_seed": ("dlt_agent", "seed"),
}


def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _config_classes() -> dict[str, type]:
    from skipxl.data import BuiltinConfig, DataConfig
    from skipxl.model.config import ModelConfig, SkipRetainConfig
    from skipxl.model.heads import CrossHeadConfig
    from skipxl.model.tying import TyingConfig

    return {
        "model": ModelConfig,
        "train": TrainConfig,
        "data": DataConfig,
        "eval": EvalConfig,
        "builtin": BuiltinConfig,
        "skip": SkipRetainConfig,
        "cross_head": CrossHeadConfig,
        "tying": TyingConfig,
        "dlt": DLTConfig,
        "dlt_agent": AgentConfig,
    }


#: Fields set by the recipe itself (variant, corpus, vocabulary size), never by a config flag.
_NOT_FLAGS = {
    "model": ("skip", "cross_head", "tying", "n_token"),
    "train": ("dlt",),
    "data": ("builtin", "corpus"),
}


def flag_table() -> dict[str, tuple[str, str, Any]]:
    """Every config flag of the recipes: ``flag name -> (config group, field, type)``.

    Generated from the config dataclasses, so a new field is a flag (and listed by ``--help``)
    without further code: model/train/data fields by name, evaluation fields with ``eval_``,
    built-in corpus fields with ``builtin_``, Skip-Retain and cross-head options by their
    recipe names (``pskip_schedule``, ``cross_head_mode``, ...).
    """
    hints = {g: _hints(c) for g, c in _config_classes().items()}
    table: dict[str, tuple[str, str, Any]] = {}
    for group in ("model", "train", "data"):
        for key, tp in hints[group].items():
            if key not in _NOT_FLAGS.get(group, ()):
                table[key] = (group, key, tp)
    for key, tp in hints["eval"].items():
        table[f"eval_{key}"] = ("eval", key, tp)
    for key, tp in hints["builtin"].items():
        table[f"builtin_{key}"] = ("builtin", key, tp)
    for flag, key in _SKIP_FLAGS.items():
        table[flag] = ("skip", key, hints["skip"][key])
    for flag, key in _CROSS_FLAGS.items():
        table[flag] = ("cross_head", key, hints["cross_head"][key])
    for flag, key in _TYING_FLAGS.items():
        table[flag] = ("tying", key, hints["tying"][key])
    for flag, (group, key) in _DLT_FLAGS.items():
        table[flag] = (group, key, hints[group][key])
    table["batch_size"] = ("train", "global_batch", hints["train"]["global_batch"])  # an alias
    return table


def _route(overrides: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Split ``--name value`` overrides into per-config field dicts (typed)."""
    hints = {k: _hints(c) for k, c in _config_classes().items()}
    table = flag_table()
    out: dict[str, dict[str, Any]] = {k: {} for k in hints}
    for name, value in overrides.items():
        if "." in name:
            group, _, key = name.partition(".")
            if group not in hints or key not in hints[group]:
                raise unknown_flag(name, [f"{g}.{k}" for g in hints for k in hints[g]], "this recipe")
            tp = hints[group][key]
        elif name in table:
            group, key, tp = table[name]
        else:
            raise unknown_flag(name, table, "this recipe")
        out[group][key] = coerce(name, value, tp)
    return out


def ds_config_flag(ds_config: Any, overrides: dict[str, Any]) -> str | None:
    """``--ds_config``, or its DeepSpeed spellings ``--deepspeed_config F`` and ``--deepspeed [F]``.

    DeepSpeedExamples pass ``--deepspeed --deepspeed_config F.json``; the Hugging Face Trainer
    passes ``--deepspeed F.json``. Both mean ``--ds_config F.json`` here (the bare
    ``--deepspeed`` switch is accepted: skipxl always trains through DeepSpeed).
    ``overrides`` loses the two keys.
    """
    given = {"ds_config": ds_config}
    given["deepspeed_config"] = overrides.pop("deepspeed_config", None)
    switch = overrides.pop("deepspeed", None)
    if switch is not None and not isinstance(switch, bool):
        given["deepspeed"] = switch
    elif switch is not None and not coerce("deepspeed", switch, bool):
        raise SkipxlError("--deepspeed False is not an option: skipxl always trains through DeepSpeed")
    named = {k: coerce(k, v, str) for k, v in given.items() if v is not None}
    if len(set(named.values())) > 1:
        shown = ", ".join(f"--{k} {v}" for k, v in named.items())
        raise SkipxlError(f"{shown} name different DeepSpeed configs; pass one of them")
    return next(iter(named.values()), None)


def _with_ds_values(train_fields: dict[str, Any], explicit: set[str]) -> dict[str, Any]:
    """Take the DeepSpeed JSON's explicit batch sizes and clipping into the train fields.

    The Hugging Face convention: what the JSON sets stands (replacing a recipe default), only
    ``"auto"`` is filled from the flags, an explicit flag that contradicts it is an error, and
    ``optimizer``/``scheduler`` blocks are refused (skipxl builds its own Adam + schedule).
    """
    from skipxl.engine.ds_config import check_supported, load_ds_config, reconcile, resolve_ds_config_path

    name = train_fields.get("ds_config", TrainConfig.ds_config)
    source = str(resolve_ds_config_path(name))
    ds = load_ds_config(name)
    check_supported(ds, source)
    defaults = TrainConfig()
    keys = ("micro_batch", "grad_accum", "global_batch", "clip")
    values = {k: train_fields.get(k, getattr(defaults, k)) for k in keys}
    merged = reconcile(ds, values, explicit, source, flag_names={"global_batch": "global_batch"})
    return {**train_fields, **{k: v for k, v in merged.items() if v != values[k] or k in train_fields}}


def build_config(
    recipe: str = "builtin",
    *,
    preset: str | None = None,
    variant: str | None = None,
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
    if variant is None:
        variant = "baseline"
    variant = check_variant(variant if not isinstance(variant, (int, float)) else str(variant))
    ds_config = ds_config_flag(ds_config, overrides)
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
    explicit = set(routed["train"]) | {
        k for k, v in (("micro_batch", micro_batch), ("grad_accum", grad_accum)) if v is not None
    }
    train_fields = _with_ds_values(train_fields, explicit)
    if "warmup_steps" in train_fields and "max_steps" in train_fields:
        train_fields["warmup_steps"] = min(train_fields["warmup_steps"], train_fields["max_steps"])
    if uses_dlt(variant):
        agent = {"seed": int(train_fields.get("seed", TrainConfig.seed)), **routed["dlt_agent"]}
        train_fields["dlt"] = DLTConfig(**routed["dlt"], agent=AgentConfig(**agent))
    elif routed["dlt"] or routed["dlt_agent"]:
        raise SkipxlError(
            f"Dynamic Layer Tying flags {sorted(routed['dlt']) + sorted(routed['dlt_agent'])} need a DLT "
            "variant (e.g. --variant dlt)"
        )
    train = TrainConfig(**train_fields)

    eval_fields = {**recipe_for_defaults.eval.get(preset, base.eval.get(preset, {})), **routed["eval"]}
    eval_cfg = EvalConfig(**eval_fields)

    if n_token is None:
        n_token = load_corpus(data).n_token
    model_fields = dict(routed["model"])
    model_fields.setdefault("plan_seed", train.seed)
    preset_name = presets[preset]
    if "cutoffs" not in model_fields:
        # a big-vocabulary preset on a small corpus (e.g. --corpus builtin): keep the cutoffs that fit
        cutoffs = get_preset(preset_name).cutoffs
        model_fields["cutoffs"] = tuple(c for c in cutoffs if c < int(n_token))
    model = get_preset(preset_name, n_token=int(n_token), **model_fields)
    model = apply_variant(
        model,
        variant,
        pskip=pskip,
        beta=beta,
        skip_options=routed["skip"] or None,
        cross_head_options=routed["cross_head"] or None,
        tying_options=routed["tying"] or None,
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

    from skipxl.config_io import load_json
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
        print(json.dumps(resolved_config(cfg, check_out=not resume), indent=2, sort_keys=True))
        return cfg
    return train(cfg, resume=resume, progress=coerce("progress", progress, bool), stop_at_step=stop_at_step)


def resolved_config(cfg: RunConfig, *, check_out: bool = True) -> dict[str, Any]:
    """What ``--dry_run`` prints and a run saves as ``config.json``: the configs + the DeepSpeed JSON.

    Builds the DeepSpeed JSON for the launcher's world size (``WORLD_SIZE``, 1 without a
    launcher), so a wrong config name, a conflicting JSON value or batch arithmetic that does
    not divide fails here, as it would at the start of the run.
    """
    import os

    from skipxl.config_io import to_dict
    from skipxl.engine import run_dir as rd
    from skipxl.engine.ds_config import ds_config_for

    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    ds, _, _ = ds_config_for(cfg.train, world_size)
    if cfg.eval.batch_size % world_size:
        raise SkipxlError(
            f"eval batch_size {cfg.eval.batch_size} is not divisible by the world size {world_size}; "
            "pass --eval_batch_size with a multiple of it"
        )
    if check_out:
        rd.check_run_dir(Path(cfg.out_dir), resume=False)
    return {**to_dict(cfg), "ds_config": ds}


def _apply_overrides(cfg: RunConfig, flags: dict[str, Any]) -> RunConfig:
    """``--config FILE`` plus a few flags: --out, --seed, --max_steps, --ds_config, batch flags."""
    allowed = {"out", "seed", "max_steps", "ds_config", "micro_batch", "grad_accum"}
    flags = dict(flags)
    ds_name = ds_config_flag(flags.pop("ds_config", None), flags)
    if ds_name is not None:
        flags["ds_config"] = ds_name
    bad = sorted(set(flags) - allowed)
    if bad:
        raise SkipxlError(f"with --config only {sorted(allowed)} may be changed; drop {bad}")
    train_changes = {
        k: coerce(k, v, int if k != "ds_config" else str) for k, v in flags.items() if k in allowed - {"out"}
    }
    train = dataclasses.replace(cfg.train, **train_changes)
    out = coerce("out", flags["out"], str) if "out" in flags else cfg.out_dir
    return dataclasses.replace(cfg, train=train, out_dir=out)


def _default_text(cls: type, key: str) -> str:
    f = next(f for f in dataclasses.fields(cls) if f.name == key)
    if f.default is not dataclasses.MISSING:
        value = f.default
    elif f.default_factory is not dataclasses.MISSING:
        return "(a nested config)"
    else:
        return "required"
    return ",".join(map(str, value)) if isinstance(value, tuple) else str(value)


def train_help(prog: str, *, recipe: str | None = None, script: bool = False) -> str:
    """``--help`` of ``skipxl train`` and ``recipes/*.py``: every flag with its type and default.

    Generated from :func:`skipxl.cli.train`'s signature and the config dataclasses (their
    ``Attributes:`` docstrings give the descriptions), so it cannot drift from what is accepted.
    """
    import inspect

    from skipxl import cli

    sig = inspect.signature(cli.train)
    hints = typing.get_type_hints(cli.train)
    docs = doc_entries(cli.train.__doc__, "Args")
    summary = inspect.cleandoc(cli.train.__doc__ or "").splitlines()[0]
    lines = [f"usage: {prog} [--FLAG VALUE ...]", "", summary, "", "run flags:"]

    def row(flag: str, tp: str, default: str, text: str) -> str:
        head = f"  --{flag} {tp.upper() if tp != 'bool' else '[BOOL]'}"
        return f"{head:<36} (default: {default}) {text}".rstrip()

    for name, param in sig.parameters.items():
        if param.kind is inspect.Parameter.VAR_KEYWORD or (script and name == "recipe"):
            continue
        tp = type_name(hints.get(name, Any)).replace("|None", "").replace("Any", "value")
        default = "recipe" if param.default is None else str(param.default)
        lines.append(row(name, tp, default, docs.get(name, "")))
    lines.append(row("deepspeed_config", "file", "-", "the same as --ds_config (DeepSpeed's spelling)"))
    lines.append(row("deepspeed", "[file]", "-", "--deepspeed F.json = --ds_config F.json; bare: accepted"))
    titles = {
        "model": "model (ModelConfig; the preset sets most of them)",
        "train": "training (TrainConfig; the recipe sets batch, steps, lr, cadence)",
        "data": "data (DataConfig)",
        "eval": "final evaluation protocol (EvalConfig, --eval_*)",
        "builtin": "built-in corpus (BuiltinConfig, --builtin_*)",
        "skip": "Skip-Retain (SkipRetainConfig; with --variant skip_retain/combined)",
        "cross_head": "cross-head attention (CrossHeadConfig; with --variant cross_head/combined)",
        "tying": "layer tying (TyingConfig; with a DLT variant, --tying_*)",
        "dlt": "Dynamic Layer Tying schedule (DLTConfig; with a DLT variant, --dlt_*)",
        "dlt_agent": "Dynamic Layer Tying Q-learning agent (AgentConfig; --dlt_*)",
    }
    classes = _config_classes()
    named = set(sig.parameters)
    by_group: dict[str, list[str]] = {g: [] for g in titles}
    for flag, (group, key, tp) in flag_table().items():
        if flag in named or flag == "batch_size":
            continue
        text = doc_entries(classes[group].__doc__).get(key, "")
        by_group[group].append(row(flag, type_name(tp), _default_text(classes[group], key), text))
    for group, rows in by_group.items():
        if rows:
            lines += ["", f"{titles[group]}:", *rows]
    lines += [
        "",
        "Also --model.FIELD / --train.FIELD / --data.FIELD / --eval.FIELD; --batch_size = --global_batch.",
        "The defaults above are the dataclasses'; the recipe's presets set their own:",
        "--dry_run prints the resolved configuration and the DeepSpeed JSON without training.",
    ]
    for name in [recipe] if recipe in RECIPES else ([] if script else sorted(RECIPES)):
        r = RECIPES[name]
        lines.append(f"  {name}: presets {', '.join(r.presets)} (default {r.default_preset})")
        for preset in r.presets:
            train = r.train.get(preset, {})
            lines.append(f"    {preset}: " + ", ".join(f"{k}={v}" for k, v in train.items()))
    return "\n".join(lines)
