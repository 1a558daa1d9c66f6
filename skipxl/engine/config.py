"""Engine configs: how to train (:class:`TrainConfig`), how to evaluate (:class:`EvalConfig`)
and the whole run (:class:`RunConfig`).

The defaults are the original Transformer-XL recipes (Dai et al. 2019, ``pytorch/run_*.sh``):
Adam, lr 2.5e-4, cosine annealing to ``eta_min`` over ``max_steps`` with an optional linear
warm-up, gradient clipping 0.25. Evaluation is its own config because Transformer-XL scores
the test set with a *different* context than it trains with (shorter segments, longer
memory, clamped distances, ``same_length``), e.g. WikiText-103 base trains with
``tgt_len = mem_len = 150`` and is evaluated with ``tgt_len 64, mem_len 640, clamp_len 400``.

The Skip-Retain phase switch (arXiv 2311.08123: phase 1 trains with stochastic layer
skipping, phase 2 continues without it) is configured here too; see
:mod:`skipxl.engine.phases` for the rule.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from skipxl.engine.dlt_config import DLTConfig
from skipxl.errors import require

SCHEDULERS = ("cosine", "constant")


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation, batch arithmetic, logging and checkpoint cadence.

    Attributes:
        global_batch: streams per optimizer step over all ranks (the original ``batch_size``).
        micro_batch / grad_accum: per-rank micro-batch and accumulation; ``None`` = derived so
            that ``micro_batch x grad_accum x world_size == global_batch``.
        max_steps: optimizer steps (the cosine period).
        lr, eta_min, warmup_steps, scheduler: learning rate schedule (see ``schedule.py``).
        clip: gradient-norm clipping, written into the DeepSpeed config (``gradient_clipping``).
        ds_config: name of a JSON in ``ds_configs/`` or a path.
        seed: global seed; rank r seeds its dropout stream with ``seed + rank_seed_offset * r``.
        deterministic: ask PyTorch for deterministic kernels (slower on GPU).
        log_interval / eval_interval / save_interval: cadence in optimizer steps
            (0 disables periodic validation / checkpoints; the end of training always does both).
        val_max_batches: cap on validation segments per stream during training (None = all).
        collective_timeout_s: how long a rank waits for its peers (a collective, a heartbeat)
            before it stops with an error naming the rank that does not answer (multi-rank only;
            see :mod:`skipxl.engine.watchdog`).
        profile_memory: attach :class:`skipxl.profiling.MemoryProfiler` on rank 0: per-step
            saved-activation / mems / model-state bytes under ``memory/`` in JSONL and TensorBoard.
        keep_checkpoints: how many step checkpoints to keep (the newest ones).
        phase1_steps / phase1_fraction / phase1_patience: Skip-Retain phase 1 ends at the first
            of: this step, this fraction of ``max_steps``, or ``phase1_patience`` validations
            without an improvement of at least ``phase1_min_delta`` (a plateau). All ``None``
            means phase 1 lasts the whole run. Ignored by variants without Skip-Retain.
        compile: ``torch.compile`` of the model right after it is built: ``"none"`` or
            ``"layers"`` (see :mod:`skipxl.model.compile`; no recompilation per step).
        val_tgt_len: segment length of the validations *during* training (the original's
            ``eval_tgt_len``; memory and clamp as in training); None = the training tgt_len.
            The final valid/test scores use :class:`EvalConfig` instead.
        dlt: Dynamic Layer Tying schedule and agent (:class:`~skipxl.engine.dlt_config.DLTConfig`)
            for the DLT variants; None = its defaults there, and must be None for other variants.
    """

    global_batch: int = 60
    micro_batch: int | None = None
    grad_accum: int | None = None
    max_steps: int = 200_000
    lr: float = 2.5e-4
    eta_min: float = 0.0
    warmup_steps: int = 0
    scheduler: str = "cosine"
    clip: float = 0.25
    adam_betas: tuple[float, float] = (0.9, 0.999)
    adam_eps: float = 1e-8
    weight_decay: float = 0.0
    ds_config: str = "cpu"
    seed: int = 1111
    rank_seed_offset: int = 1000
    deterministic: bool = False
    log_interval: int = 200
    eval_interval: int = 4000
    save_interval: int = 4000
    val_max_batches: int | None = None
    keep_checkpoints: int = 2
    phase1_steps: int | None = None
    phase1_fraction: float | None = None
    phase1_patience: int | None = None
    phase1_min_delta: float = 0.0
    val_tgt_len: int | None = None
    profile_memory: bool = False
    dlt: DLTConfig | None = None
    compile: str = "none"
    collective_timeout_s: float = 600.0

    def __post_init__(self) -> None:
        require(self.global_batch >= 1, f"global_batch must be >= 1, got {self.global_batch}")
        require(
            self.micro_batch is None or self.micro_batch >= 1,
            f"micro_batch must be >= 1 (or unset), got {self.micro_batch}",
        )
        require(
            self.grad_accum is None or self.grad_accum >= 1,
            f"grad_accum must be >= 1 (or unset), got {self.grad_accum}",
        )
        require(self.max_steps >= 1, f"max_steps must be >= 1, got {self.max_steps}")
        require(self.lr > 0, f"lr must be > 0, got {self.lr}")
        require(0 <= self.eta_min <= self.lr, f"eta_min must be in [0, lr={self.lr}], got {self.eta_min}")
        require(
            0 <= self.warmup_steps <= self.max_steps,
            f"warmup_steps must be in [0, max_steps={self.max_steps}], got {self.warmup_steps}",
        )
        require(self.scheduler in SCHEDULERS, f"scheduler {self.scheduler!r} unknown; choose {SCHEDULERS}")
        require(self.clip >= 0, f"clip must be >= 0 (0 disables clipping), got {self.clip}")
        require(
            len(self.adam_betas) == 2 and all(0 <= b < 1 for b in self.adam_betas),
            f"adam_betas must be two numbers in [0, 1), got {self.adam_betas}",
        )
        require(self.adam_eps > 0, f"adam_eps must be > 0, got {self.adam_eps}")
        require(self.weight_decay >= 0, f"weight_decay must be >= 0, got {self.weight_decay}")
        require(bool(self.ds_config), "ds_config must name a JSON in ds_configs/ or a file path")
        for name in ("log_interval",):
            require(getattr(self, name) >= 1, f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("eval_interval", "save_interval"):
            require(getattr(self, name) >= 0, f"{name} must be >= 0 (0 = off), got {getattr(self, name)}")
        require(
            self.val_max_batches is None or self.val_max_batches >= 1,
            f"val_max_batches must be >= 1 or unset, got {self.val_max_batches}",
        )
        require(
            self.collective_timeout_s > 0,
            f"collective_timeout_s must be > 0 seconds, got {self.collective_timeout_s}",
        )
        require(self.keep_checkpoints >= 1, f"keep_checkpoints must be >= 1, got {self.keep_checkpoints}")
        require(
            self.phase1_steps is None or self.phase1_steps >= 0,
            f"phase1_steps must be >= 0 or unset, got {self.phase1_steps}",
        )
        require(
            self.phase1_fraction is None or 0.0 <= self.phase1_fraction <= 1.0,
            f"phase1_fraction must be in [0, 1] or unset, got {self.phase1_fraction}",
        )
        require(
            self.phase1_patience is None or self.phase1_patience >= 1,
            f"phase1_patience must be >= 1 or unset, got {self.phase1_patience}",
        )
        require(self.phase1_min_delta >= 0, f"phase1_min_delta must be >= 0, got {self.phase1_min_delta}")
        require(
            self.val_tgt_len is None or self.val_tgt_len >= 1,
            f"val_tgt_len must be >= 1 or unset, got {self.val_tgt_len}",
        )
        from skipxl.model.compile import COMPILE_MODES

        require(
            self.compile in COMPILE_MODES,
            f"compile {self.compile!r} is unknown; choose one of {COMPILE_MODES}",
        )


@dataclass(frozen=True)
class EvalConfig:
    """The Transformer-XL evaluation protocol (``eval.py`` of Dai et al. 2019): the one type of
    evaluation context, used by the validations during training, the final scores and
    ``skipxl eval``. Validated on construction by the model's own rules
    (:class:`~skipxl.model.context.Context`), so a bad value fails before a run starts.

    Attributes:
        tgt_len: segment length scored per forward pass.
        mem_len: memory length carried between segments (longer = more context).
        ext_len: extended context (kept for completeness; the recipes use 0).
        clamp_len: relative distances beyond this are clamped (-1 = no clamp).
        same_length: every query attends to the same number of positions.
        batch_size: number of parallel streams the split is cut into (10 in the original);
            must be divisible by the world size.
    """

    tgt_len: int = 128
    mem_len: int = 640
    ext_len: int = 0
    clamp_len: int = -1
    same_length: bool = False
    batch_size: int = 10

    def __post_init__(self) -> None:
        from skipxl.errors import SkipxlError

        try:
            self.context  # noqa: B018 (validates: the rules the model's forward relies on)
        except SkipxlError as exc:
            raise SkipxlError(f"evaluation context: {exc}") from None
        require(self.batch_size >= 1, f"eval batch_size must be >= 1, got {self.batch_size}")

    @property
    def context(self) -> Any:
        """The model-side :class:`~skipxl.model.context.Context` of this protocol."""
        from skipxl.model.context import Context

        return Context.of(self)

    @classmethod
    def for_validation(cls, model_cfg: Any, train_cfg: TrainConfig, batch_size: int) -> EvalConfig:
        """The validations *during* training: the training context (memory, clamp, same_length)
        with segments of ``val_tgt_len`` (the original's ``eval_tgt_len``)."""
        return cls(
            tgt_len=train_cfg.val_tgt_len or model_cfg.tgt_len,
            mem_len=model_cfg.mem_len,
            ext_len=model_cfg.ext_len,
            clamp_len=model_cfg.clamp_len,
            same_length=model_cfg.same_length,
            batch_size=batch_size,
        )


@dataclass(frozen=True)
class RunConfig:
    """Everything one training run needs; saved as the run folder's ``config.json``.

    ``model`` is a :class:`skipxl.model.config.ModelConfig` and ``data`` a
    :class:`skipxl.data.DataConfig`; they are typed loosely here so that this module
    imports without the model and data packages (the run loader rebuilds them).
    """

    model: Any
    data: Any
    train: TrainConfig
    eval: EvalConfig
    variant: str = "baseline"
    preset: str = ""
    out_dir: str = "runs/run"

    def __post_init__(self) -> None:
        from skipxl.engine.variants import VARIANTS

        require(
            self.variant in VARIANTS,
            f"unknown variant {self.variant!r}; choose one of {tuple(VARIANTS)}",
        )
        require(bool(self.out_dir), "out_dir must be a folder path (pass --out RUN_DIR)")
        skip_on, cross_on, dlt_on = VARIANTS[self.variant]
        has_skip = getattr(self.model, "skip", None) is not None
        has_cross = getattr(self.model, "cross_head", None) is not None
        has_tying = getattr(self.model, "tying", None) is not None
        require(
            (skip_on, cross_on, dlt_on) == (has_skip, has_cross, has_tying),
            f"variant {self.variant!r} needs model.skip {'set' if skip_on else 'None'}, model.cross_head "
            f"{'set' if cross_on else 'None'} and model.tying {'set' if dlt_on else 'None'} (got "
            f"skip={has_skip}, cross_head={has_cross}, tying={has_tying}); build the model config with "
            "skipxl.engine.variants.apply_variant",
        )
        require(
            dlt_on or self.train.dlt is None,
            f"train.dlt (Dynamic Layer Tying) is set but variant {self.variant!r} does not tie layers",
        )
        if hasattr(self.model, "mem_len"):
            self.validation_eval  # noqa: B018 (validates the context of the validations during training)

    @property
    def validation_eval(self) -> EvalConfig:
        """The protocol of the validations during training (see :meth:`EvalConfig.for_validation`)."""
        return EvalConfig.for_validation(self.model, self.train, self.eval.batch_size)


def run_config_to_dict(cfg: RunConfig) -> dict[str, Any]:
    """Plain JSON-able data for ``config.json``."""
    from skipxl.config_io import to_dict

    return to_dict(cfg)


def run_config_from_dict(data: dict[str, Any]) -> RunConfig:
    """Rebuild a :class:`RunConfig` (with its model and data configs) from ``config.json``."""
    from skipxl.config_io import from_dict
    from skipxl.data import DataConfig
    from skipxl.model.config import ModelConfig

    require(isinstance(data, dict), "config.json must hold a JSON object")
    data = dict(data)
    data.pop("ds_config", None)  # the resolved DeepSpeed JSON is stored for the record only
    missing = [k for k in ("model", "data", "train", "eval") if k not in data]
    require(not missing, f"config.json lacks {missing}; is this a skipxl run folder?")
    return RunConfig(
        model=from_dict(ModelConfig, data["model"]),
        data=from_dict(DataConfig, data["data"]),
        train=from_dict(TrainConfig, data["train"]),
        eval=from_dict(EvalConfig, data["eval"]),
        variant=data.get("variant", "baseline"),
        preset=data.get("preset", ""),
        out_dir=data.get("out_dir", "runs/run"),
    )
