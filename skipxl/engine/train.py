"""The training loop: one DeepSpeed engine, Transformer-XL memories, two Skip-Retain phases.

Read top to bottom, :func:`train` is the whole algorithm:

1. set up the world, seeds, data, model, Adam + cosine schedule, ``deepspeed.initialize``;
2. resume the exact state (weights, optimizer, scheduler, RNGs, memories, data position,
   phase) when asked;
3. loop over optimizer steps; each step draws one :class:`~skipxl.model.StepPlan` (which
   layers skip, which heads mix; shared by its micro-steps and identical on every rank),
   then runs ``grad_accum`` micro-steps. Micro-step ``a`` of rank ``r`` always reads the
   same streams, so it keeps its own Transformer-XL memory from one step to the next
   (Dai et al. 2019, Sec. 3.2);
4. log, validate, switch phase, checkpoint; on SIGTERM/SIGINT checkpoint and stop;
5. at the end: checkpoint, score valid and test with the evaluation protocol, write
   ``results.json``.

The logged training loss is the mean of the micro-batch losses averaged over ranks (what
the optimizer step actually minimised), not DeepSpeed's last-micro-batch value.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import signal
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from skipxl.config_io import save_json
from skipxl.engine import checkpoint as ckpt
from skipxl.engine import run_dir as rd
from skipxl.engine.config import RunConfig, run_config_to_dict
from skipxl.engine.distributed import ensure_accelerator_env, ensure_launch_env
from skipxl.engine.ds_config import build_ds_config, precision_of, resolve_batch, zero_stage_of
from skipxl.engine.evaluate import Protocol, evaluate_split
from skipxl.engine.metrics import (
    MetricsLogger,
    loss_metrics,
    metric_level,
    peak_memory_bytes,
    truncate_metrics,
)
from skipxl.engine.phases import PhaseController
from skipxl.engine.schedule import make_scheduler
from skipxl.engine.variants import uses_skip
from skipxl.errors import SkipxlError
from skipxl.profiling import MemoryProfiler


@dataclass
class TrainResult:
    """What :func:`train` returns (on every rank)."""

    run_dir: Path
    step: int
    finished: bool
    interrupted_by: str | None
    losses: list[float]
    final: dict[str, float]


# ----------------------------------------------------------------------------- set-up helpers


def seed_everything(seed: int, deterministic: bool = False) -> None:
    """Seed python, numpy and torch; optionally ask PyTorch for deterministic kernels."""
    import random

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.deterministic = True
        torch.backends.cudnn.benchmark = False


def _barrier() -> None:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.barrier()


def _all_reduce(t: torch.Tensor, op: str = "sum") -> torch.Tensor:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        ops = {"sum": torch.distributed.ReduceOp.SUM, "max": torch.distributed.ReduceOp.MAX}
        torch.distributed.all_reduce(t, op=ops[op])
    return t


class _StopFlag:
    """SIGTERM/SIGINT set a flag; the loop checkpoints and stops at the next step boundary."""

    def __init__(self) -> None:
        self.signal: str | None = None
        self._old: dict[int, Any] = {}

    def install(self) -> None:
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(ValueError):  # not the main thread (e.g. some test runners)
                self._old[sig] = signal.signal(sig, self._handle)

    def _handle(self, signum: int, frame: Any) -> None:
        self.signal = signal.Signals(signum).name

    def restore(self) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)


def _load_data(cfg: RunConfig, local_rank: int) -> Any:
    """Load (and on first use encode) the corpus; local rank 0 first so the cache is built once."""
    from skipxl.data import load_corpus

    corpus = None
    if local_rank == 0:
        corpus = load_corpus(cfg.data)
    _barrier()
    if corpus is None:
        corpus = load_corpus(cfg.data)
    return corpus


class TraversableOutput(dict):
    """The model's :class:`~skipxl.model.LMOutput` as a dict with attribute access.

    DeepSpeed ZeRO-3 re-gathers a module's partitioned parameters for the backward pass
    through hooks it attaches to the module's *outputs*, and it only finds tensors inside
    tensors, tuples, lists and dicts. ``LMOutput`` is a dataclass, so without this the
    root-level parameters (the shared u/v biases ``r_w_bias``/``r_r_bias``) stay
    partitioned during backward and autograd fails with a size-0 mismatch.
    """

    __getattr__ = dict.__getitem__


def _traversable_output(module: torch.nn.Module, args: Any, output: Any) -> Any:
    if dataclasses.is_dataclass(output) and not isinstance(output, dict):
        return TraversableOutput({f.name: getattr(output, f.name) for f in dataclasses.fields(output)})
    return output


def _skip_param_ids(model: torch.nn.Module, skip: tuple[bool, ...] | None) -> list[torch.nn.Parameter]:
    if not skip:
        return []
    return [p for layer, s in zip(model.layers, skip, strict=True) if s for p in layer.parameters()]


# ----------------------------------------------------------------------------- engine and step


def build_engine(model: torch.nn.Module, tc: Any, ds_config: dict[str, Any]) -> tuple[Any, Any]:
    """``deepspeed.initialize`` with a plain ``torch.optim.Adam`` and the cosine ``LambdaLR``.

    A client torch optimizer (``zero_allow_untested_optimizer`` in the shipped configs) needs
    no compiled op, so this runs on a CPU-only machine as well as on GPUs.
    """
    import deepspeed

    model.register_forward_hook(_traversable_output)  # before DeepSpeed's own hooks; see TraversableOutput
    optimizer = torch.optim.Adam(
        model.parameters(),
        lr=tc.lr,
        betas=tuple(tc.adam_betas),
        eps=tc.adam_eps,
        weight_decay=tc.weight_decay,
    )
    scheduler = make_scheduler(optimizer, tc)
    engine, _, _, _ = deepspeed.initialize(
        model=model, optimizer=optimizer, lr_scheduler=scheduler, config=ds_config
    )
    if engine.world_size == 1 and zero_stage_of(ds_config) == 0 and precision_of(ds_config) == "fp32":
        # One process, no ZeRO, fp32: the gradient all-reduce averages over a world of one, yet it
        # flattens and copies every gradient (~20% of a CPU step for wt103_base); skip it.
        engine.enable_backward_allreduce = False
    return engine, scheduler


def engine_step(
    engine: Any,
    micro_batches: list[tuple[torch.Tensor, torch.Tensor]],
    mems: list[Any],
    plan: Any,
    *,
    device: torch.device,
    honour_no_grad: bool = False,
    want_grad_norm: bool = False,
) -> tuple[torch.Tensor, float | None]:
    """One optimizer step: every micro-step with its own memory (``mems`` is updated in place).

    Returns the mean micro-batch loss (a device tensor, no host sync) and, when asked, the
    gradient norm before clipping.
    """
    module = engine.module
    step_loss = torch.zeros((), device=device, dtype=torch.float32)
    norm = None
    for a, (inputs, targets) in enumerate(micro_batches):
        out = engine(inputs.to(device), targets=targets.to(device), mems=mems[a], plan=plan)
        engine.backward(out.loss)
        if a == len(micro_batches) - 1:
            if honour_no_grad:
                for p in _skip_param_ids(module, plan.skip):
                    p.grad = None  # DeepSpeed zero-filled it for the all-reduce; Adam must see none
            if want_grad_norm:
                norm = _grad_norm(module)  # DeepSpeed does not keep it at stage 0 fp32
        engine.step()
        mems[a] = out.mems
        step_loss += out.loss.detach().float()
    return step_loss / len(micro_batches), norm


# ----------------------------------------------------------------------------- the loop


def train(
    cfg: RunConfig, *, resume: bool = False, progress: bool = True, stop_at_step: int | None = None
) -> TrainResult:
    """Train ``cfg`` through DeepSpeed; see the module docstring.

    Args:
        resume: continue the run in ``cfg.out_dir`` from its latest checkpoint.
        progress: show a progress bar on rank 0.
        stop_at_step: checkpoint and stop (as if pre-empted) once this step is reached.
    """
    world = ensure_launch_env()
    ensure_accelerator_env()
    tc, model_cfg = cfg.train, cfg.model
    micro, accum = resolve_batch(tc.global_batch, tc.micro_batch, tc.grad_accum, world.world_size)
    ds_config = build_ds_config(
        tc.ds_config,
        micro_batch=micro,
        grad_accum=accum,
        world_size=world.world_size,
        overrides={"gradient_clipping": tc.clip},
    )
    out_dir = Path(cfg.out_dir)
    rd.check_run_dir(out_dir, resume=resume)
    if cfg.eval.batch_size % world.world_size:
        raise SkipxlError(
            f"eval batch_size {cfg.eval.batch_size} is not divisible by the world size {world.world_size}; "
            "pass --eval_batch_size with a multiple of it"
        )

    import deepspeed

    if os.environ.get("SKIPXL_DS_LOG", "warning") != "info":
        import logging

        deepspeed.utils.logger.setLevel(logging.WARNING)
    deepspeed.init_distributed(verbose=False)
    _barrier()
    if world.is_main:
        out_dir.mkdir(parents=True, exist_ok=True)
    _barrier()

    corpus = _load_data(cfg, world.local_rank)
    if corpus.n_token != model_cfg.n_token:
        raise SkipxlError(
            f"the model has n_token={model_cfg.n_token} but the {cfg.data.corpus} vocabulary "
            f"has {corpus.n_token} symbols; set --n_token {corpus.n_token} (recipes do this)"
        )
    level = metric_level(corpus.vocab.level)

    # Same initial weights on every rank (ZeRO-3 partitions each rank's own copy), then a
    # per-rank stream for dropout.
    seed_everything(tc.seed, tc.deterministic)
    from skipxl.model import TransformerXL

    model = TransformerXL(model_cfg)
    n_params = model.num_parameters()
    rank_seed = tc.seed + tc.rank_seed_offset * world.rank
    seed_everything(rank_seed, tc.deterministic)

    engine, scheduler = build_engine(model, tc, ds_config)
    device = engine.device
    module = engine.module
    precision, stage = precision_of(ds_config), zero_stage_of(ds_config)

    skip_cfg = model_cfg.skip
    plain_fp32 = stage == 0 and precision == "fp32"
    honour_no_grad = skip_cfg is not None and skip_cfg.skipped_grad == "none"
    if honour_no_grad and (stage > 0 or precision != "fp32"):
        honour_no_grad = False
        if world.is_main:
            warnings.warn(
                f"skipped_grad='none' cannot be honoured with ZeRO stage {stage} / {precision}: the flat "
                "gradient buffers give a skipped layer a zero gradient, so Adam's momentum still moves "
                "it (use ZeRO stage 0 in fp32 for the paper's no-gradient behaviour)",
                stacklevel=1,
            )

    from skipxl.data import LMOrderedIterator

    train_iter = LMOrderedIterator(
        corpus.splits["train"],
        global_batch=tc.global_batch,
        tgt_len=model_cfg.tgt_len,
        ext_len=model_cfg.ext_len,
        rank=world.rank,
        world_size=world.world_size,
        micro_steps=accum,
        epochs=None,
    )
    phase = PhaseController.from_config(tc, enabled=uses_skip(cfg.variant))
    mems: list[Any] = [None] * accum
    step = 0

    ckpt_dir = out_dir / rd.CHECKPOINTS
    if resume:
        client, rank_state, tag = ckpt.load(engine, ckpt_dir, rank=world.rank, map_location="cpu")
        if client.get("world_size") != world.world_size or client.get("grad_accum") != accum:
            raise SkipxlError(
                f"checkpoint {tag} was saved with world size {client.get('world_size')} and "
                f"grad_accum {client.get('grad_accum')}; resume with the same (now {world.world_size}"
                f" and {accum}) so every stream meets its own memory"
            )
        step = int(client["step"])
        phase.load_state_dict(client["phase"])
        ckpt.set_rng_state(rank_state["rng"])
        module.plan_generator.set_state(rank_state["plan_generator"])
        train_iter.load_state_dict(rank_state["iterator"])
        mems = [None if m is None else m.to(device) for m in rank_state["mems"]]
        if world.is_main:
            truncate_metrics(out_dir, step)
    module.skip_enabled = phase.skipping

    run_dict = run_config_to_dict(cfg)
    run_dict["ds_config"] = ds_config
    if world.is_main:
        rd.write_config(out_dir, run_dict)
        rd.write_ds_config(out_dir, ds_config)
        rd.write_meta(
            out_dir,
            rd.collect_meta(
                world_size=world.world_size,
                seeds={
                    "seed": tc.seed,
                    "rank_seed_offset": tc.rank_seed_offset,
                    "plan_seed": model_cfg.plan_seed,
                },
                extra={
                    "micro_batch": micro,
                    "grad_accum": accum,
                    "n_params": n_params,
                    "precision": precision,
                    "zero_stage": stage,
                    "vocab_size": corpus.n_token,
                    "level": level,
                },
            ),
        )
    logger = MetricsLogger(
        out_dir, enabled=world.is_main, total_steps=tc.max_steps, start_step=step, progress=progress
    )
    # Off by default: when off no hook is registered and nothing is measured.
    profiler = MemoryProfiler(
        enabled=tc.profile_memory and world.is_main, sink=logger.log, step_fn=lambda: step + 1
    ).attach(engine)

    def client_state() -> dict[str, Any]:
        return {
            "step": step,
            "phase": phase.state_dict(),
            "world_size": world.world_size,
            "grad_accum": accum,
            "micro_batch": micro,
            "variant": cfg.variant,
        }

    def rank_state() -> dict[str, Any]:
        return {
            "rng": ckpt.rng_state(),
            "plan_generator": module.plan_generator.get_state(),
            "iterator": train_iter.state_dict(),
            "mems": mems,
        }

    last_saved = step if resume else -1

    def save() -> None:
        nonlocal last_saved
        if last_saved == step:
            return
        ckpt.save(
            engine,
            ckpt_dir,
            step=step,
            client_state=client_state(),
            rank_state=rank_state(),
            rank=world.rank,
            local_rank=world.local_rank,
            keep=tc.keep_checkpoints,
        )
        last_saved = step

    val_protocol = Protocol(
        tgt_len=tc.val_tgt_len or model_cfg.tgt_len,
        mem_len=model_cfg.mem_len,
        ext_len=model_cfg.ext_len,
        clamp_len=model_cfg.clamp_len,
        same_length=model_cfg.same_length,
        batch_size=cfg.eval.batch_size,
    )

    def validate() -> float:
        res = evaluate_split(
            module,
            corpus.splits["valid"],
            val_protocol,
            rank=world.rank,
            world_size=world.world_size,
            device=device,
            max_batches=tc.val_max_batches,
        )
        logger.log(step, res.metrics(level, "val"))
        return res.loss

    stop = _StopFlag()
    stop.install()
    tokens_per_step = tc.global_batch * model_cfg.tgt_len
    losses: list[float] = []
    window = _Window(model_cfg.n_layer)
    batches = iter(train_iter)
    engine.train()
    t_last = time.perf_counter()
    try:
        while step < tc.max_steps:
            _, micro_batches = next(batches)
            if train_iter.last.new_epoch:  # the streams restart from their beginnings
                mems = [None] * accum
            plan = module.draw_plan()
            lr = (
                engine.optimizer.param_groups[0]["lr"]
                if hasattr(engine.optimizer, "param_groups")
                else scheduler.get_last_lr()[0]
            )
            step_loss, norm = engine_step(
                engine,
                micro_batches,
                mems,
                plan,
                device=device,
                honour_no_grad=honour_no_grad,
                want_grad_norm=plain_fp32 and _log_due(step + 1, tc),
            )
            if norm is not None:
                window.grad_norm = norm
            step += 1
            window.add(step_loss, plan, lr)
            if phase.after_step(step):
                module.skip_enabled = False
                logger.log(step, {"phase": phase.phase, "phase/switch_step": step})
                logger.write(f"step {step}: phase 2 (no skipping) - {phase.switch_reason}")

            stop_now = _agree_to_stop(stop.signal is not None or step == stop_at_step, device)
            if step % tc.log_interval == 0 or step == tc.max_steps or stop_now:
                row = window.flush(world.world_size, time.perf_counter() - t_last, tokens_per_step, level)
                t_last = time.perf_counter()
                row = {**_engine_stats(engine), **row}
                row.update(phase=phase.phase, **{"memory/peak_bytes": peak_memory_bytes()})
                if mems[0] is not None and (skip_cfg is not None or model_cfg.cross_head is not None):
                    row.update(_memory_stats(mems[0]))
                losses.extend(window.last_losses)
                logger.log(step, row)
                logger.progress(step, {"loss": row["train/loss"], "lr": row["lr"]})
            if tc.eval_interval and step % tc.eval_interval == 0 and step < tc.max_steps:
                val_loss = validate()
                if phase.after_validation(step, val_loss):
                    module.skip_enabled = False
                    logger.log(step, {"phase": phase.phase, "phase/switch_step": step})
                    logger.write(f"step {step}: phase 2 (no skipping) - {phase.switch_reason}")
                t_last = time.perf_counter()
            if tc.save_interval and step % tc.save_interval == 0:
                save()
            if stop_now:
                save()
                who = stop.signal or f"stop_at_step={stop_at_step}"
                logger.write(f"stopped at step {step} ({who}); resume with --resume --out {out_dir}")
                return TrainResult(out_dir, step, False, who, losses, {})

        save()
        final = _final_eval(cfg, module, corpus, world, device, level)
        if world.is_main:
            logger.log(step, final)
            results = {
                "variant": cfg.variant,
                "preset": cfg.preset,
                "n_params": n_params,
                "step": step,
                "level": level,
                "phase": phase.state_dict(),
                **final,
                **_throughput_summary(out_dir),
            }
            save_json(results, out_dir / rd.RESULTS)
        return TrainResult(out_dir, step, True, None, losses, final)
    finally:
        profiler.close()
        stop.restore()
        logger.close()


def _log_due(step: int, tc: Any) -> bool:
    return step % tc.log_interval == 0 or step == tc.max_steps


def _grad_norm(module: torch.nn.Module) -> float:
    """Global 2-norm of the (already all-reduced) gradients, before clipping."""
    norms = [p.grad.detach().float().norm() for p in module.parameters() if p.grad is not None]
    return float(torch.stack(norms).norm()) if norms else 0.0


def _agree_to_stop(local: bool, device: torch.device) -> bool:
    """All ranks stop at the same step (a signal may reach them one step apart)."""
    if (
        not (torch.distributed.is_available() and torch.distributed.is_initialized())
        or torch.distributed.get_world_size() == 1
    ):
        return local
    flag = torch.tensor(
        [1.0 if local else 0.0], device=device if torch.distributed.get_backend() == "nccl" else "cpu"
    )
    return bool(_all_reduce(flag, "max").item() > 0)


class _Window:
    """Sums over one logging interval (kept as tensors: no host sync per step)."""

    def __init__(self, n_layer: int) -> None:
        self.n_layer = n_layer
        self.reset()
        self.last_losses: list[float] = []

    def reset(self) -> None:
        self.loss_sum: torch.Tensor | None = None
        self.step_losses: list[torch.Tensor] = []
        self.steps = 0
        self.skips = [0] * self.n_layer
        self.swaps = 0.0
        self.swap_steps = 0
        self.lr = 0.0
        self.grad_norm: float | None = None

    def add(self, loss: torch.Tensor, plan: Any, lr: float) -> None:
        self.step_losses.append(loss)
        self.steps += 1
        self.lr = lr
        if plan.skip is not None:
            self.skips = [c + int(s) for c, s in zip(self.skips, plan.skip, strict=True)]
        if plan.head_index is not None:
            idx = plan.head_index
            ident = torch.arange(idx.size(1)).expand_as(idx)  # [n_layer, H]
            self.swaps += float((idx != ident).float().mean())
            self.swap_steps += 1

    def flush(self, world_size: int, seconds: float, tokens_per_step: int, level: str) -> dict[str, Any]:
        losses = torch.stack(self.step_losses).float()  # [steps]
        losses = _all_reduce(losses.clone() if losses.device.type != "cpu" else losses, "sum") / world_size
        values = losses.cpu().tolist()
        self.last_losses = values
        mean = sum(values) / len(values)
        row: dict[str, Any] = loss_metrics(mean, level, "train")
        row["lr"] = self.lr
        row["tokens_per_s"] = tokens_per_step * self.steps / max(seconds, 1e-9)
        row["step_time_s"] = seconds / self.steps
        if self.grad_norm is not None:
            row["grad_norm"] = self.grad_norm
        if any(self.skips) or self.swap_steps:
            for layer, c in enumerate(self.skips):
                row[f"skip/fraction/layer_{layer:02d}"] = c / self.steps
            row["skip/fraction/mean"] = sum(self.skips) / (self.steps * self.n_layer)
        if self.swap_steps:
            row["cross_head/swap_rate"] = self.swaps / self.swap_steps
        self.reset()
        self.last_losses = values
        return row


def _engine_stats(engine: Any) -> dict[str, float]:
    row: dict[str, float] = {}
    norm = engine.get_global_grad_norm()
    if norm is not None:
        row["grad_norm"] = float(norm)
    opt = engine.optimizer
    scale = getattr(opt, "cur_scale", None)
    if scale is None:
        scale = getattr(opt, "loss_scale", None)
    row["loss_scale"] = float(scale) if isinstance(scale, (int, float)) else 1.0
    return row


def _memory_stats(mem: Any) -> dict[str, float]:
    """Per-layer memory age and the effective context of the first stream group."""
    row: dict[str, float] = {}
    spans = []
    for layer, (ages, stale) in enumerate(zip(mem.ages(), mem.staleness(), strict=True)):
        mean_age = float(ages.float().mean()) if ages.numel() else 0.0
        row[f"memory/age/layer_{layer:02d}"] = mean_age
        row[f"memory/staleness/layer_{layer:02d}"] = float(stale)
        spans.append(float(ages.max()) if ages.numel() else 0.0)
    row["context/effective_len"] = sum(spans) / max(len(spans), 1)
    return row


def _final_eval(
    cfg: RunConfig, module: Any, corpus: Any, world: Any, device: torch.device, level: str
) -> dict[str, float]:
    protocol = Protocol.from_eval_config(cfg.eval)
    out: dict[str, float] = {}
    for split, prefix in (("valid", "final_val"), ("test", "test")):
        res = evaluate_split(
            module,
            corpus.splits[split],
            protocol,
            rank=world.rank,
            world_size=world.world_size,
            device=device,
            progress=f"final {split}",
        )
        out.update(res.metrics(level, prefix))
    out["eval_protocol"] = dataclasses.asdict(protocol)  # type: ignore[assignment]
    return out


def _throughput_summary(out_dir: Path) -> dict[str, float]:
    rows = rd.read_metrics(out_dir)
    tps = [r["tokens_per_s"] for r in rows if "tokens_per_s" in r]
    peak = [r["memory/peak_bytes"] for r in rows if "memory/peak_bytes" in r]
    vals = [r["val/loss"] for r in rows if "val/loss" in r]
    summary: dict[str, float] = {}
    if tps:
        summary["tokens_per_s"] = float(np.median(tps))
    if peak:
        summary["peak_memory_bytes"] = float(max(peak))
    if vals:
        summary["best_val_loss"] = float(min(vals))
    if not math.isfinite(summary.get("best_val_loss", 0.0)):
        summary.pop("best_val_loss")
    return summary
