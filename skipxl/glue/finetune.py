"""Fine-tune a BERT-family model on one GLUE task through DeepSpeed: one readable loop.

Standard recipe (Devlin et al. 2019, the defaults here): AdamW lr 2e-5, global batch 32,
3 epochs, max length 128, linear warm-up over the first 10% of steps then linear decay to 0,
weight decay 0.01 (not on biases/LayerNorm), gradient clipping 1.0, dev-set evaluation at the
end of each epoch; the reported score is the one after the last step (no checkpoint picking,
which would hide exactly the seed variance the paper measures).

The paper's GLUE claim (arXiv 2311.08123): stochastic cross-head attention (beta 0.1) during
fine-tuning lowers the spread of dev scores across seeds. Variant ``"cross_head"`` turns it on
(see :mod:`skipxl.glue.cross_head_attention`); ``"baseline"`` is the stock model.

Seeds: ``init_seed`` seeds the classifier-head initialisation, the dropout stream and (offset)
the cross-head generator; ``data_seed`` alone decides the order of training examples.
DeepSpeed gets a torch AdamW client optimizer (hence ``zero_allow_untested_optimizer``) and a
``LambdaLR`` that it steps once per optimizer step; precision (bf16/fp16) and ZeRO stage come
from the ds config (``"auto"``: ``cpu`` on CPU, ``zero2_bf16`` on GPU).
"""

from __future__ import annotations

import functools
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from skipxl.config_io import save_json, to_dict
from skipxl.engine.distributed import (
    all_reduce,
    collective_device,
    ensure_accelerator_env,
    ensure_launch_env,
    seed_everything,
)
from skipxl.engine.ds_config import build_ds_config, precision_of, resolve_batch, zero_stage_of
from skipxl.engine.ds_engine import build_engine, optimizer_step
from skipxl.errors import SkipxlError, require
from skipxl.glue.adapters import AdapterConfig
from skipxl.glue.methods import Settings, apply_method, check_method
from skipxl.glue.metrics import compute_metrics
from skipxl.glue.peft_methods import LoraSettings
from skipxl.glue.runlog import RESULT_FILE, RunLogger, build_meta, write_marker
from skipxl.glue.spartan import SpartanConfig
from skipxl.glue.tasks import GlueSplit, TaskSpec, get_task, load_split
from skipxl.model.heads import CROSS_HEAD_MODES, CrossHeadConfig
from skipxl.progress import progress_bar

VARIANTS = ("baseline", "cross_head")
#: The cross-head generator is seeded with init_seed + this, away from the dropout stream's seed.
CROSS_HEAD_SEED_OFFSET = 1_000_003


class RunDiverged(RuntimeError):
    """The training loss became NaN/inf: the run is recorded as failed."""


@dataclass(frozen=True)
class FinetuneConfig:
    """One fine-tuning run. Defaults are the standard BERT GLUE recipe."""

    task: str = "mrpc"
    model: str = "minilm"
    variant: str = "baseline"
    beta: float = 0.1
    mode: str = "permutation"
    attn_implementation: str = "sdpa"
    init_seed: int = 0
    data_seed: int = 0
    lr: float = 2e-5
    batch_size: int = 32
    epochs: int = 3
    max_length: int = 128
    warmup_ratio: float = 0.1
    weight_decay: float = 0.01
    adam_eps: float = 1e-8
    grad_clip: float = 1.0
    max_steps: int | None = None
    micro_batch: int | None = None
    grad_accum: int | None = None
    ds_config: str = "auto"
    glue_dir: str | None = None
    data_source: str = "local"
    eval_batch_size: int = 64
    eval_each_epoch: bool = True
    log_every: int = 10
    max_train_examples: int | None = None
    max_eval_examples: int | None = None
    dropout: float | None = None
    save_model: bool = False
    # parameter-efficient methods (skipxl.glue.methods): "full" is ordinary fine-tuning
    method: str = "full"
    spartan_parents: int = 16
    spartan_children: int = 48
    spartan_topk: int = 8
    spartan_temperature: float = 1.6
    spartan_version: str = "v1"
    spartan_aux_loss: float = 0.0
    spartan_layernorm: bool = False
    adapter_reduction: int = 16
    lora_rank: int = 8
    lora_alpha: float = 8.0
    lora_dropout: float = 0.0
    lora_targets: tuple[str, ...] = ("query", "value")
    # few-shot: a stratified sample of train_samples examples drawn with sample_seed (None: data_seed)
    train_samples: int | None = None
    sample_seed: int | None = None
    save_method: bool = True
    measure_inference: bool = True

    def __post_init__(self) -> None:
        get_task(self.task)
        check_method(self.method)
        SpartanConfig(**self._spartan_fields())  # every method flag is validated, used or not
        AdapterConfig(reduction=self.adapter_reduction)
        self._lora()
        require(
            self.train_samples is None or self.train_samples > 0,
            f"train_samples must be a positive number of examples, got {self.train_samples}",
        )
        require(
            self.sample_seed is None or self.sample_seed >= 0, "sample_seed must be a non-negative integer"
        )
        require(self.variant in VARIANTS, f"variant {self.variant!r} is unknown; choose one of {VARIANTS}")
        CrossHeadConfig(beta=self.beta, mode=self.mode)  # validates beta and mode
        require(
            self.mode in CROSS_HEAD_MODES, f"mode {self.mode!r} is unknown; choose one of {CROSS_HEAD_MODES}"
        )
        require(
            self.attn_implementation in ("sdpa", "eager"),
            f"attn_implementation {self.attn_implementation!r}: choose 'sdpa' or 'eager'",
        )
        require(self.lr > 0, f"lr must be positive, got {self.lr}")
        require(self.batch_size > 0, f"batch_size must be positive, got {self.batch_size}")
        require(self.epochs > 0, f"epochs must be positive, got {self.epochs}")
        require(2 <= self.max_length <= 512, f"max_length must be in [2, 512], got {self.max_length}")
        require(0.0 <= self.warmup_ratio < 1.0, f"warmup_ratio must be in [0, 1), got {self.warmup_ratio}")
        require(
            self.max_steps is None or self.max_steps > 0, f"max_steps must be positive, got {self.max_steps}"
        )
        require(self.eval_batch_size > 0, "eval_batch_size must be positive")
        require(self.log_every > 0, "log_every must be positive")
        require(
            self.data_source in ("local", "hub"), f"data_source {self.data_source!r}: choose 'local' or 'hub'"
        )
        require(self.init_seed >= 0 and self.data_seed >= 0, "seeds must be non-negative integers")

    @property
    def cross_head(self) -> CrossHeadConfig | None:
        """The cross-head settings of this variant (``None`` for the baseline)."""
        return CrossHeadConfig(beta=self.beta, mode=self.mode) if self.variant == "cross_head" else None

    @property
    def spec(self) -> TaskSpec:
        return get_task(self.task)

    def _spartan_fields(self) -> dict[str, Any]:
        return {
            "parents": self.spartan_parents,
            "children": self.spartan_children,
            "topk": self.spartan_topk,
            "temperature": self.spartan_temperature,
            "version": self.spartan_version,
            "aux_loss": self.spartan_aux_loss,
            "layernorm": self.spartan_layernorm,
        }

    @property
    def method_settings(self) -> Settings:
        """The settings object of ``method`` (``None`` for full fine-tuning)."""
        if self.method == "spartan":
            return SpartanConfig(**self._spartan_fields())
        if self.method.startswith("adapter_"):
            return AdapterConfig(kind=self.method.removeprefix("adapter_"), reduction=self.adapter_reduction)
        return self._lora() if self.method == "lora" else None

    def _lora(self) -> LoraSettings:
        return LoraSettings(self.lora_rank, self.lora_alpha, self.lora_dropout, tuple(self.lora_targets))

    @property
    def resolved_sample_seed(self) -> int:
        return self.data_seed if self.sample_seed is None else self.sample_seed


def linear_warmup_decay(warmup_steps: int, total_steps: int):
    """LR factor: linear 0 -> 1 over ``warmup_steps``, then linear 1 -> 0 at ``total_steps``."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return step / max(1, warmup_steps)
        return max(0.0, (total_steps - step) / max(1, total_steps - warmup_steps))

    return factor


def resolve_ds_name(name: str) -> str:
    """``"auto"`` -> ``cpu`` on CPU, ``zero2_bf16`` on a GPU; anything else unchanged."""
    if name != "auto":
        return name
    return "zero2_bf16" if torch.cuda.is_available() else "cpu"


@dataclass(frozen=True)
class Encoded:
    """Tokenised split: ragged token ids (and segment ids) plus labels."""

    input_ids: list[list[int]]
    token_type_ids: list[list[int]] | None
    labels: list[int | float]

    def __len__(self) -> int:
        return len(self.labels)


def encode(tokenizer: Any, split: GlueSplit, max_length: int, limit: int | None = None) -> Encoded:
    """Tokenise ``[CLS] a [SEP] b [SEP]`` with longest-first truncation to ``max_length``."""
    examples = split.examples[:limit] if limit else split.examples
    if not examples:
        raise SkipxlError(f"{split.task} {split.split} has no examples ({split.source})")
    a = [ex.text_a for ex in examples]
    b = [ex.text_b for ex in examples] if examples[0].text_b is not None else None
    enc = tokenizer(a, b, truncation=True, max_length=max_length)
    return Encoded(
        input_ids=enc["input_ids"],
        token_type_ids=enc.get("token_type_ids"),
        labels=[ex.label for ex in examples],
    )


def collate(data: Encoded, indices: list[int], pad_id: int, regression: bool) -> dict[str, torch.Tensor]:
    """Pad one batch to its longest sequence (dynamic padding: no wasted compute on CPU)."""
    length = max(len(data.input_ids[i]) for i in indices)
    ids = torch.full((len(indices), length), pad_id, dtype=torch.long)  # [b, L]
    mask = torch.zeros((len(indices), length), dtype=torch.long)  # [b, L]
    types = torch.zeros((len(indices), length), dtype=torch.long)  # [b, L]
    for row, i in enumerate(indices):
        n = len(data.input_ids[i])
        ids[row, :n] = torch.tensor(data.input_ids[i])
        mask[row, :n] = 1
        if data.token_type_ids is not None:
            types[row, :n] = torch.tensor(data.token_type_ids[i])
    batch = {"input_ids": ids, "attention_mask": mask}
    if data.token_type_ids is not None:
        batch["token_type_ids"] = types
    label_dtype = torch.float32 if regression else torch.long
    batch["labels"] = torch.tensor([data.labels[i] for i in indices], dtype=label_dtype)  # [b]
    return batch


def loss_of(logits: torch.Tensor, labels: torch.Tensor, regression: bool) -> torch.Tensor:
    """Cross-entropy (or MSE for STS-B) computed in fp32 whatever the model precision."""
    if regression:
        return torch.nn.functional.mse_loss(logits.float().squeeze(-1), labels.float())  # [b] vs [b]
    return torch.nn.functional.cross_entropy(logits.float(), labels)  # [b, C] vs [b]


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """AdamW groups: no weight decay on biases and LayerNorm weights (BERT convention)."""
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        (no_decay if param.ndim < 2 or "LayerNorm" in name or "layer_norm" in name else decay).append(param)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def micro_loss(
    engine: Any, data: Encoded, pad_id: int, spec: TaskSpec, a: int, indices: list[int]
) -> torch.Tensor:
    """The loss of one micro-batch (the rows ``indices`` of ``data``)."""
    batch = {k: v.to(engine.device) for k, v in collate(data, indices, pad_id, spec.is_regression).items()}
    labels = batch.pop("labels")
    loss = loss_of(engine(**batch).logits, labels, spec.is_regression)
    extra = method_loss(engine.module)  # e.g. SPARTAN's load-balancing loss of this forward
    return loss if extra is None else loss + extra


@torch.no_grad()
def predict_logits(engine: Any, data: Encoded, pad_id: int, batch_size: int) -> torch.Tensor:
    """fp32 logits ``[N, C]`` in example order; batches are length-sorted to limit padding."""
    engine.eval()
    order = sorted(range(len(data)), key=lambda i: len(data.input_ids[i]))
    rows: list[torch.Tensor] = [torch.empty(0)] * len(data)
    for start in range(0, len(order), batch_size):
        chunk = order[start : start + batch_size]
        batch = collate(data, chunk, pad_id, regression=False)
        batch.pop("labels")
        logits = engine(**{k: v.to(engine.device) for k, v in batch.items()}).logits.float()  # [b, C]
        for i, row in zip(chunk, logits.cpu(), strict=True):
            rows[i] = row
    engine.train()
    return torch.stack(rows)  # [N, C]


def predictions_of(logits: torch.Tensor, spec: TaskSpec) -> list[int | float]:
    """Class ids (argmax) or regression scores from ``[N, C]`` logits."""
    return logits.squeeze(-1).tolist() if spec.is_regression else logits.argmax(-1).tolist()


def predict(engine: Any, data: Encoded, spec: TaskSpec, pad_id: int, batch_size: int) -> list[int | float]:
    """Predictions in example order."""
    return predictions_of(predict_logits(engine, data, pad_id, batch_size), spec)


def evaluate(
    engine: Any, evals: dict[str, tuple[str, Encoded]], spec: TaskSpec, pad_id: int, bs: int
) -> tuple[dict[str, float], int, torch.Tensor]:
    """Every eval split's metrics, how many distinct classes the first split predicted, and the
    first split's logits ``[N, C]``."""
    metrics: dict[str, float] = {}
    n_classes = 0
    first = torch.empty(0)
    for i, (suffix, data) in enumerate(evals.values()):
        logits = predict_logits(engine, data, pad_id, bs)
        preds = predictions_of(logits, spec)
        metrics.update(compute_metrics(spec, preds, data.labels, suffix))
        if i == 0:
            n_classes = 0 if spec.is_regression else len(set(preds))
            first = logits
    return metrics, n_classes, first


def encode_evals(cfg: FinetuneConfig, tokenizer: Any) -> dict[str, tuple[str, Encoded]]:
    """Every dev split of the task, tokenised: ``{split: (metric suffix, data)}``."""
    return {
        split: (
            suffix,
            encode(
                tokenizer,
                load_split(cfg.spec, split, glue_dir=cfg.glue_dir, source=cfg.data_source),
                cfg.max_length,
                cfg.max_eval_examples,
            ),
        )
        for split, suffix in cfg.spec.eval_splits
    }


def few_shot(split: GlueSplit, cfg: FinetuneConfig) -> GlueSplit:
    """The stratified ``train_samples`` sample of ``split`` (unchanged when not few-shot)."""
    if cfg.train_samples is None:
        return split
    from skipxl.glue.sampling import stratified_indices

    keep = stratified_indices(
        split.labels, cfg.train_samples, cfg.resolved_sample_seed, cfg.spec.is_regression
    )
    return GlueSplit(
        split.task, split.split, tuple(split.examples[i] for i in keep), split.skipped, split.source
    )


def build_model(cfg: FinetuneConfig) -> torch.nn.Module:
    """Backbone + classifier head (seeded by ``init_seed``), then the method's modules and freezing."""
    from skipxl.glue.model import load_classifier

    model = load_classifier(
        cfg.model,
        num_labels=cfg.spec.num_labels,
        init_seed=cfg.init_seed,
        cross_head=cfg.cross_head,
        cross_head_seed=cfg.init_seed + CROSS_HEAD_SEED_OFFSET,
        attn_base=cfg.attn_implementation,
        dropout=cfg.dropout,
    )
    return apply_method(model, cfg.method, cfg.method_settings)


def build_optimizer(model: torch.nn.Module, cfg: FinetuneConfig) -> torch.optim.Optimizer:
    """AdamW over the parameters that require gradients (for a method: only its trained set)."""
    return torch.optim.AdamW(param_groups(model, cfg.weight_decay), lr=cfg.lr, eps=cfg.adam_eps)


def method_loss(model: torch.nn.Module) -> torch.Tensor | None:
    """The method's extra training loss of the latest forward (SPARTAN's load balancing), if any."""
    from skipxl.glue.spartan import spartan_aux_loss

    return spartan_aux_loss(model)


def run_label(method: str, variant: str) -> str:
    """Folder / report name of a (method, variant) pair: ``baseline`` and ``cross_head`` for full
    fine-tuning (the names of earlier sweeps), else ``spartan``, ``lora+cross_head``, ..."""
    if method == "full":
        return variant
    return method if variant == "baseline" else f"{method}+{variant}"


#: Where ``--save_model`` writes the fine-tuned model and its tokenizer inside a run folder.
MODEL_DIR = "model"


def save_pretrained(model: Any, tokenizer: Any, path: Path, attn_implementation: str) -> Path:
    """``save_pretrained`` of the model and tokenizer: ``from_pretrained(path)`` loads them back.

    The attention is switched back to the stock kernel first: cross-head mixing is a training
    regulariser (evaluation is the stock model bit for bit), and a saved model should load in
    a plain ``transformers`` install that knows nothing of the skipxl attention functions.
    """
    model.set_attn_implementation(attn_implementation)
    model.save_pretrained(path, safe_serialization=True)
    tokenizer.save_pretrained(path)
    return path


def finetune(cfg: FinetuneConfig, run_dir: str | Path) -> dict[str, Any]:
    """Train one run into ``run_dir``; return (and write as result.json) its final metrics."""
    t_start = time.time()
    ensure_accelerator_env()
    world = ensure_launch_env()
    from skipxl.glue.model import load_tokenizer
    from skipxl.profiling.peak import PeakTracker

    peak = PeakTracker("cpu")
    peak.reset()
    run_dir = Path(run_dir)
    spec = cfg.spec
    tokenizer = load_tokenizer(cfg.model)
    pad_id = int(tokenizer.pad_token_id or 0)
    train_split = few_shot(load_split(spec, "train", glue_dir=cfg.glue_dir, source=cfg.data_source), cfg)
    train = encode(tokenizer, train_split, cfg.max_length, cfg.max_train_examples)
    evals = encode_evals(cfg, tokenizer)

    micro, accum = resolve_batch(cfg.batch_size, cfg.micro_batch, cfg.grad_accum, world.world_size)
    ds_name = resolve_ds_name(cfg.ds_config)
    ds_cfg = build_ds_config(
        ds_name,
        micro_batch=micro,
        grad_accum=accum,
        world_size=world.world_size,
        clip=cfg.grad_clip,
    )
    steps_per_epoch = len(train) // cfg.batch_size
    if steps_per_epoch == 0:
        raise SkipxlError(
            f"{len(train)} training examples are fewer than one batch of {cfg.batch_size}; "
            "lower --batch_size or use more data"
        )
    total_steps = cfg.epochs * steps_per_epoch
    if cfg.max_steps is not None:
        total_steps = min(total_steps, cfg.max_steps)
    warmup_steps = math.ceil(cfg.warmup_ratio * total_steps)

    seed_everything(cfg.init_seed)
    model = build_model(cfg)
    optimizer = build_optimizer(model, cfg)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, linear_warmup_decay(warmup_steps, total_steps))
    engine = build_engine(model, optimizer, ds_cfg, scheduler)
    torch.manual_seed(cfg.init_seed)  # the dropout stream starts from the init seed, whatever ran before

    main = world.is_main
    logger = RunLogger(run_dir, enabled=main)
    if main:
        save_json(cfg, run_dir / "config.json")
        save_json(ds_cfg, run_dir / "ds_config.json")  # the DeepSpeed JSON actually used
        save_json(
            build_meta(
                seeds={
                    "init_seed": cfg.init_seed,
                    "data_seed": cfg.data_seed,
                    "cross_head_seed": cfg.init_seed + CROSS_HEAD_SEED_OFFSET if cfg.cross_head else None,
                    "sample_seed": cfg.resolved_sample_seed if cfg.train_samples is not None else None,
                },
                method=cfg.method,
                world_size=world.world_size,
                micro_batch=micro,
                grad_accum=accum,
                ds_config_name=ds_name,
                ds_config=ds_cfg,
                precision=precision_of(ds_cfg),
                zero_stage=zero_stage_of(ds_cfg),
                device=str(engine.device),
                torch_threads=torch.get_num_threads(),
                steps_per_epoch=steps_per_epoch,
                total_steps=total_steps,
                warmup_steps=warmup_steps,
                train_examples=len(train),
                eval_examples={k: len(v) for k, (_, v) in evals.items()},
                skipped_rows=train_split.skipped,
                data_source=train_split.source,
            ),
            run_dir / "meta.json",
        )

    order_gen = torch.Generator().manual_seed(cfg.data_seed)
    step, running, n_running = 0, 0.0, 0
    last_loss = math.nan
    t_train = time.time()
    metrics: dict[str, float] = {}
    n_pred_classes = 0
    dev_logits = torch.empty(0)
    train_tokens, step_time = 0, 0.0
    spartan_state = getattr(model, "spartan_state", None)
    engine.train()
    bar = progress_bar(total_steps, f"{spec.name} {cfg.variant} seed {cfg.init_seed}", "step", main)
    for epoch in range(cfg.epochs):
        perm = torch.randperm(len(train), generator=order_gen).tolist()  # same order on every rank
        for s in range(steps_per_epoch):
            chunk = perm[s * cfg.batch_size : (s + 1) * cfg.batch_size]
            # rank r, micro step a: a fixed slice of the global batch
            slices = [chunk[(a * world.world_size + world.rank) * micro :][:micro] for a in range(accum)]
            # DeepSpeed steps optimizer + LambdaLR at the accumulation boundary
            t_step = time.perf_counter()
            losses = optimizer_step(
                engine, slices, functools.partial(micro_loss, engine, train, pad_id, spec)
            )
            step_loss = 0.0
            for loss in losses:
                step_loss += float(loss) / accum
            step_time += time.perf_counter() - t_step
            train_tokens += sum(len(train.input_ids[i]) for sl in slices for i in sl)
            if world.world_size > 1:
                t = all_reduce(torch.tensor([step_loss], device=collective_device(engine.device)))
                step_loss = float(t) / world.world_size
            if not math.isfinite(step_loss):
                bar.close()
                logger.close()
                raise RunDiverged(f"training loss is {step_loss} at step {step + 1}")
            step += 1
            bar.update()
            running, n_running, last_loss = running + step_loss, n_running + 1, step_loss
            if step % cfg.log_every == 0 or step == total_steps:
                logger.log(
                    step,
                    "train",
                    {"loss": running / n_running, "lr": scheduler.get_last_lr()[0]},
                    epoch=epoch,
                    elapsed_s=round(time.time() - t_train, 2),
                )
                running, n_running = 0.0, 0
            if step >= total_steps:
                break
        last = step >= total_steps
        if cfg.eval_each_epoch or last:
            if spartan_state is not None:  # parent usage of the final evaluation only
                spartan_state.recording = last
            metrics, n_pred_classes, dev_logits = evaluate(engine, evals, spec, pad_id, cfg.eval_batch_size)
            if spartan_state is not None:
                spartan_state.recording = False
            logger.log(step, "dev", metrics, epoch=epoch, elapsed_s=round(time.time() - t_train, 2))
        if last:
            break
    train_time = time.time() - t_train
    bar.close()
    logger.close()
    from skipxl.glue.cost import run_cost

    cost = run_cost(
        cfg,
        model,
        run_dir,
        evals,
        pad_id,
        main=main,
        world_size=world.world_size,
        zero_stage=zero_stage_of(ds_cfg),
    )
    cost.update(
        train_time_s=round(train_time, 2),
        train_tokens=train_tokens * world.world_size,
        train_step_time_s=round(step_time, 3),
        train_tokens_per_s=train_tokens * world.world_size / max(step_time, 1e-9),
        peak_rss_mib=peak.read().peak_bytes / 2**20,
    )
    if main:
        first_split = next(iter(evals))
        save_json(
            {"split": first_split, "logits": dev_logits.tolist(), "preds": predictions_of(dev_logits, spec)},
            run_dir / "predictions.json",
        )
        if spartan_state is not None:
            from skipxl.glue.parents import usage_record, write_usage

            write_usage(run_dir, usage_record(spartan_state, cfg.spartan_topk))

    result = {
        "task": spec.name,
        "variant": cfg.variant,
        "method": cfg.method,
        "label": run_label(cfg.method, cfg.variant),
        "init_seed": cfg.init_seed,
        "data_seed": cfg.data_seed,
        "model": cfg.model,
        "metrics": metrics,
        "primary_metric": spec.primary,
        "primary": metrics[spec.primary],
        "steps": step,
        "total_steps": total_steps,
        "final_train_loss": last_loss,
        "pred_classes": n_pred_classes,
        "degenerate": (not spec.is_regression) and n_pred_classes <= 1,
        "train_time_s": round(train_time, 2),
        "wall_time_s": round(time.time() - t_start, 2),
        "world_size": world.world_size,
        "precision": precision_of(ds_cfg),
        "train_examples": len(train),
        "sample_seed": cfg.resolved_sample_seed if cfg.train_samples is not None else None,
        "cost": cost,
    }
    if main and cfg.save_model:
        save_pretrained(engine.module, tokenizer, run_dir / MODEL_DIR, cfg.attn_implementation)
    if main:
        write_marker(run_dir, RESULT_FILE, to_dict(result))
    if hasattr(engine, "destroy"):
        engine.destroy()
    return result
