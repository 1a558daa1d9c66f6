"""The training loop: one DeepSpeed engine, Transformer-XL memories, pluggable training policies.

:class:`Trainer` holds a run: set-up (world, run folder, data, model, Adam + cosine schedule, the
DeepSpeed engine, the training policies), one optimizer step (:meth:`Trainer.train_step`),
validation, the final evaluation and checkpoints. :meth:`Trainer.fit` is the whole algorithm:

1. loop over optimizer steps; each step asks the policies for one
   :class:`~skipxl.model.StepPlan` (which layers skip, which heads mix; shared by its
   micro-steps and identical on every rank), then runs ``grad_accum`` micro-steps. Micro-step
   ``a`` of rank ``r`` always reads the same streams, so it keeps its own Transformer-XL memory
   from one step to the next (Dai et al. 2019, Sec. 3.2);
2. log, validate, checkpoint; on SIGTERM/SIGINT checkpoint and stop;
3. at the end: checkpoint, score valid and test with the evaluation protocol, write
   ``results.json``.

What a method does around a step (Skip-Retain's skips, phases and skipped gradients, the
cross-head draws) is a :class:`~skipxl.engine.policies.TrainingPolicy`; the loop never looks
inside one. The logged training loss is the mean of the micro-batch losses averaged over ranks
(what the optimizer step actually minimised), not DeepSpeed's last-micro-batch value.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import os
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from skipxl.config_io import save_json
from skipxl.engine import checkpoint as ckpt
from skipxl.engine import run_dir as rd
from skipxl.engine.config import RunConfig, run_config_to_dict
from skipxl.engine.distributed import (
    agree_max,
    barrier,
    ensure_accelerator_env,
    ensure_launch_env,
    seed_everything,
)
from skipxl.engine.ds_config import build_ds_config, precision_of, resolve_batch, zero_stage_of
from skipxl.engine.ds_engine import build_engine, optimizer_step
from skipxl.engine.evaluate import check_split, evaluate_split
from skipxl.engine.metrics import (
    DAMAGED_METRICS,
    MetricsLogger,
    StepWindow,
    engine_stats,
    memory_stats,
    metric_level,
    peak_memory_bytes,
    throughput_summary,
    truncate_metrics,
)
from skipxl.engine.phases import PhaseController
from skipxl.engine.policies import Policies, PolicyEvent, StepMetrics, TrainView, paper_policies
from skipxl.engine.schedule import make_optimizer
from skipxl.engine.variants import uses_dlt, uses_skip
from skipxl.engine.watchdog import Watchdog
from skipxl.errors import SkipxlError
from skipxl.model import Memory, StepPlan
from skipxl.profiling import MemoryProfiler

__all__ = ["TrainResult", "TrainState", "Trainer", "lm_loss", "seed_everything", "train", "training_policies"]


@dataclass
class TrainResult:
    """What :func:`train` returns (on every rank)."""

    run_dir: Path
    step: int
    finished: bool
    interrupted_by: str | None
    losses: list[float]
    final: dict[str, float]


@dataclass
class TrainState:
    """What the loop changes besides the weights and the optimizer (DeepSpeed checkpoints those):
    the optimizer steps done and each micro-step's Transformer-XL memory (this rank's)."""

    step: int = 0
    mems: list[Memory | None] = field(default_factory=list)

    def state_dict(self) -> dict[str, Any]:
        return {"step": self.step, "mems": list(self.mems)}

    def load_state_dict(self, state: dict[str, Any], device: torch.device) -> None:
        self.step = int(state["step"])
        self.mems = [None if m is None else m.to(device) for m in state["mems"]]


class StopFlag:
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

    @property
    def signum(self) -> int:
        return int(signal.Signals[self.signal]) if self.signal else 0

    def restore(self) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)


def training_policies(cfg: RunConfig) -> Policies:
    """The run's training policies: the paper's methods its model config switches on, with the
    Skip-Retain phase rule of its TrainConfig, then Dynamic Layer Tying for the DLT variants."""
    phase = PhaseController.from_config(cfg.train, enabled=uses_skip(cfg.variant))
    policies = paper_policies(cfg.model, phase)
    if uses_dlt(cfg.variant):
        from skipxl.engine.dlt import DynamicLayerTyingPolicy

        policies.policies.append(DynamicLayerTyingPolicy(cfg.model.n_layer, cfg.train.dlt))
    return policies


def _init_deepspeed(out_dir: Path, is_main: bool, timeout_s: float) -> None:
    from datetime import timedelta

    import deepspeed

    if os.environ.get("SKIPXL_DS_LOG", "warning") != "info":
        import logging

        deepspeed.utils.logger.setLevel(logging.WARNING)
    # twice the watchdog's timeout: the watchdog names the stuck rank first; this is the backstop
    deepspeed.init_distributed(verbose=False, timeout=timedelta(seconds=2 * timeout_s))
    barrier()
    if is_main:
        out_dir.mkdir(parents=True, exist_ok=True)
    barrier()


class Trainer:
    """One training run of a :class:`~skipxl.engine.config.RunConfig`; see the module docstring.

    Args:
        resume: continue the run in ``cfg.out_dir`` from its latest checkpoint.
        progress: show a progress bar on rank 0.
        policies: the training policies (default: :func:`training_policies` of ``cfg``).
    """

    def __init__(
        self, cfg: RunConfig, *, resume: bool = False, progress: bool = True, policies: Policies | None = None
    ) -> None:
        self.cfg, tc = cfg, cfg.train
        self.world = ensure_launch_env()
        ensure_accelerator_env()
        self.micro, self.accum = resolve_batch(
            tc.global_batch, tc.micro_batch, tc.grad_accum, self.world.world_size
        )
        self.ds_config = build_ds_config(
            tc.ds_config,
            micro_batch=self.micro,
            grad_accum=self.accum,
            world_size=self.world.world_size,
            overrides={"gradient_clipping": tc.clip},
        )
        self.out_dir = Path(cfg.out_dir)
        rd.check_run_dir(self.out_dir, resume=resume)
        self.val_eval = cfg.validation_eval  # validated with the final protocol, before any work
        if cfg.eval.batch_size % self.world.world_size:
            raise SkipxlError(
                f"eval batch_size {cfg.eval.batch_size} is not divisible by the world size "
                f"{self.world.world_size}; pass --eval_batch_size with a multiple of it"
            )
        _init_deepspeed(self.out_dir, self.world.is_main, tc.collective_timeout_s)
        self.watchdog = Watchdog(
            self.out_dir,
            rank=self.world.rank,
            world_size=self.world.world_size,
            timeout_s=tc.collective_timeout_s,
        ).start()
        try:
            self._set_up(resume, progress, policies)
        except BaseException:
            self.watchdog.close(failed=True)  # the peers stop now instead of waiting for this rank
            raise

    def _set_up(self, resume: bool, progress: bool, policies: Policies | None) -> None:
        cfg, tc, mc = self.cfg, self.cfg.train, self.cfg.model
        self.corpus = self._load_data()
        self.level = metric_level(self.corpus.vocab.level)
        for split, protocol in (("valid", self.val_eval), ("valid", cfg.eval), ("test", cfg.eval)):
            check_split(len(self.corpus.splits[split]), protocol, self.world.world_size)
        if uses_dlt(cfg.variant):  # refuse before DeepSpeed patches anything (ZeRO-3 wraps F.linear)
            from skipxl.engine.tying_optim import require_dynamic_parameters

            require_dynamic_parameters(zero_stage_of(self.ds_config), precision_of(self.ds_config))
        self.universal, self.resharded_from = False, None  # set by a resume on another world size
        self.resume_tag = self._choose_checkpoint() if resume else None
        self._build_engine()
        self.policies = policies if policies is not None else training_policies(cfg)
        self.policies.bind(
            TrainView(self.module, self.engine.optimizer, self.world, self.zero_stage, self.precision)
        )
        from skipxl.data import LMOrderedIterator

        self.train_iter = LMOrderedIterator(
            self.corpus.splits["train"],
            global_batch=tc.global_batch,
            tgt_len=mc.tgt_len,
            ext_len=mc.ext_len,
            rank=self.world.rank,
            world_size=self.world.world_size,
            micro_steps=self.accum,
            epochs=None,
        )
        self.batches = iter(self.train_iter)
        self.state = TrainState(mems=[None] * self.accum)
        self.last_saved = -1
        if self.resume_tag is not None:
            self.load()
        elif resume and self.world.is_main:  # killed before its first checkpoint: start again
            print(
                f"warning: {self.out_dir} has no checkpoint yet; restarting it from step 0",
                file=sys.stderr,
            )
            truncate_metrics(self.out_dir, 0)
        self._write_run_files()
        self.logger = MetricsLogger(
            self.out_dir,
            enabled=self.world.is_main,
            total_steps=tc.max_steps,
            start_step=self.state.step,
            progress=progress,
        )
        # Off by default: when off no hook is registered and nothing is measured.
        self.profiler = MemoryProfiler(
            enabled=tc.profile_memory and self.world.is_main, sink=self.logger.log, step_fn=self._next_step
        ).attach(self.engine)
        self.window = StepWindow(mc.n_layer)
        self.losses: list[float] = []
        self.t_last = time.perf_counter()

    # ------------------------------------------------------------------ set-up
    def _choose_checkpoint(self) -> str | None:
        """The checkpoint a resume loads (verified; warnings about damaged ones on rank 0), or
        None when the run has none yet. Before the engine exists: a ZeRO checkpoint from another
        world size is converted to DeepSpeed's universal form here (by rank 0), and the engine is
        then built to read it (:mod:`skipxl.engine.reshard`)."""
        ckpt_dir = self.out_dir / rd.CHECKPOINTS
        if not ckpt.step_tags(ckpt_dir):
            return None
        tag, warnings = ckpt.choose_tag(ckpt_dir)
        for warning in warnings if self.world.is_main else []:
            print(f"warning: {warning}", file=sys.stderr)
        saved_by = ckpt.saved_world_size(ckpt_dir / tag)
        if saved_by not in (0, self.world.world_size):
            self.resharded_from = {"checkpoint": tag, "world_size": saved_by}
            self.universal = zero_stage_of(self.ds_config) > 0
            if self.world.is_main:
                print(
                    f"warning: checkpoint {tag} was saved by {saved_by} ranks; resuming on "
                    f"{self.world.world_size}: every stream keeps its memory and data position "
                    "(losses continue to float rounding, see skipxl.engine.reshard)",
                    file=sys.stderr,
                )
        if self.universal:
            from skipxl.engine import reshard

            if self.world.is_main:
                reshard.to_universal(ckpt_dir, tag)
            barrier()
        return tag

    def _load_data(self) -> Any:
        """Load (and on first use encode) the corpus; local rank 0 first so the cache is built once."""
        from skipxl.data import load_corpus

        corpus = load_corpus(self.cfg.data) if self.world.local_rank == 0 else None
        barrier()
        corpus = corpus if corpus is not None else load_corpus(self.cfg.data)
        if corpus.n_token != self.cfg.model.n_token:
            raise SkipxlError(
                f"the model has n_token={self.cfg.model.n_token} but the {self.cfg.data.corpus} "
                f"vocabulary has {corpus.n_token} symbols; set --n_token {corpus.n_token} (recipes do this)"
            )
        return corpus

    def _build_engine(self) -> None:
        """Same initial weights on every rank (ZeRO-3 partitions each rank's own copy), then a
        per-rank stream for dropout; Adam + the lr schedule inside DeepSpeed."""
        from skipxl.model import TransformerXL
        from skipxl.model.compile import compile_model

        tc = self.cfg.train
        seed_everything(tc.seed, tc.deterministic)
        model = TransformerXL(self.cfg.model)
        model = compile_model(model, tc.compile)  # torch.compile in place (skipxl.model.compile)
        self.n_params = model.num_parameters()
        seed_everything(tc.seed + tc.rank_seed_offset * self.world.rank, tc.deterministic)
        optimizer, self.scheduler = make_optimizer(model.parameters(), tc)
        ds_config = self.ds_config
        if self.universal:  # the resumed ZeRO checkpoint comes from another world size
            checkpoint = {**ds_config.get("checkpoint", {}), "load_universal": True}
            ds_config = {**ds_config, "checkpoint": checkpoint}
        self.engine = build_engine(
            model, optimizer, ds_config, self.scheduler, skip_single_process_allreduce=True
        )
        self.module, self.device = self.engine.module, self.engine.device
        self.precision, self.zero_stage = precision_of(self.ds_config), zero_stage_of(self.ds_config)

    def _write_run_files(self) -> None:
        if not self.world.is_main:
            return
        tc, mc = self.cfg.train, self.cfg.model
        run_dict = run_config_to_dict(self.cfg)
        run_dict["ds_config"] = self.ds_config
        rd.write_config(self.out_dir, run_dict)
        rd.write_ds_config(self.out_dir, self.ds_config)
        seeds = {"seed": tc.seed, "rank_seed_offset": tc.rank_seed_offset, "plan_seed": mc.plan_seed}
        extra = {
            "micro_batch": self.micro,
            "grad_accum": self.accum,
            "n_params": self.n_params,
            "precision": self.precision,
            "zero_stage": self.zero_stage,
            "vocab_size": self.corpus.n_token,
            "level": self.level,
            "policies": [p.name for p in self.policies],
        }
        if self.resharded_from is not None:
            extra["resharded_from"] = self.resharded_from
        meta = rd.collect_meta(world_size=self.world.world_size, seeds=seeds, extra=extra)
        rd.write_meta(self.out_dir, meta)

    # ------------------------------------------------------------------ one step
    def _next_step(self) -> int:
        return self.state.step + 1

    def _lr(self) -> float:
        opt = self.engine.optimizer
        return opt.param_groups[0]["lr"] if hasattr(opt, "param_groups") else self.scheduler.get_last_lr()[0]

    def next_batches(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """The micro-batches of the next step; memories restart when the streams do (new epoch)."""
        _, micro_batches = next(self.batches)
        if self.train_iter.last.new_epoch:
            self.state.mems = [None] * self.accum
        return micro_batches

    def _before_optimizer_step(self, plan: StepPlan, want_grad_norm: bool) -> None:
        self.policies.before_optimizer_step(self.state.step, plan)
        if want_grad_norm:  # DeepSpeed does not keep it at stage 0 fp32
            self.window.grad_norm = _grad_norm(self.module)

    def train_step(self, micro_batches: list[tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
        """One optimizer step (every micro-step with its own memory); the mean micro-batch loss."""
        tc, step = self.cfg.train, self.state.step
        plan = self.policies.plan(step, StepPlan())
        lr = self._lr()
        want_norm = self.zero_stage == 0 and self.precision == "fp32" and _log_due(step + 1, tc)
        losses = optimizer_step(
            self.engine,
            micro_batches,
            functools.partial(lm_loss, self.engine, self.state.mems, plan, device=self.device),
            functools.partial(self._before_optimizer_step, plan, want_norm),
        )
        step_loss = torch.zeros((), device=self.device, dtype=torch.float32)
        for loss in losses:
            step_loss += loss.float()
        step_loss = step_loss / len(losses)
        self.state.step += 1
        self.window.add(step_loss, plan, lr)
        for event in self.policies.after_step_events(StepMetrics(self.state.step, step_loss, plan, lr)):
            self.log_event(event)
        return step_loss

    # ------------------------------------------------------------------ logging and evaluation
    def log_event(self, event: PolicyEvent) -> None:
        self.logger.log(self.state.step, event.metrics)
        self.logger.write(event.message)

    def log_window(self) -> None:
        """Log the steps since the last row (collective: the losses are averaged over ranks)."""
        mc, tc = self.cfg.model, self.cfg.train
        seconds = time.perf_counter() - self.t_last
        row = self.window.flush(self.world.world_size, seconds, tc.global_batch * mc.tgt_len, self.level)
        self.t_last = time.perf_counter()
        row = {**engine_stats(self.engine), **row, **self.policies.log_metrics()}
        row["memory/peak_bytes"] = peak_memory_bytes()
        mems = self.state.mems[0]
        if mems is not None and (mc.skip is not None or mc.cross_head is not None):
            row.update(memory_stats(mems))
        self.losses.extend(self.window.last_losses)
        self.logger.log(self.state.step, row)
        self.logger.progress(self.state.step, {"loss": row["train/loss"], "lr": row["lr"]})

    def _evaluate(
        self, split: str, protocol: Any, max_batches: int | None = None, progress: str | None = None
    ) -> Any:
        return evaluate_split(
            self.module,
            self.corpus.splits[split],
            protocol,
            rank=self.world.rank,
            world_size=self.world.world_size,
            device=self.device,
            max_batches=max_batches,
            progress=progress,
        )

    def validate(self) -> dict[str, float]:
        """A quick validation with the training context; the policies see its metrics."""
        metrics = self._evaluate("valid", self.val_eval, self.cfg.train.val_max_batches).metrics(
            self.level, "val"
        )
        self.logger.log(self.state.step, metrics)
        for event in self.policies.after_validation_events(self.state.step, metrics):
            self.log_event(event)
        self.t_last = time.perf_counter()
        return metrics

    def final_evaluation(self) -> dict[str, Any]:
        """Valid and test scores with the run's evaluation protocol (``cfg.eval``)."""
        out: dict[str, Any] = {}
        for split, prefix in (("valid", "final_val"), ("test", "test")):
            res = self._evaluate(split, self.cfg.eval, progress=f"final {split}")
            out.update(res.metrics(self.level, prefix))
        out["eval_protocol"] = dataclasses.asdict(self.cfg.eval)
        return out

    # ------------------------------------------------------------------ checkpoints
    def state_dict(self) -> tuple[dict[str, Any], dict[str, Any]]:
        """``(client_state, rank_state)``: the run's global state (in DeepSpeed's model file) and
        this rank's (RNGs, memories, data position, policies) in our per-rank file."""
        client = {
            "format_version": ckpt.FORMAT_VERSION,
            "step": self.state.step,
            "world_size": self.world.world_size,
            "grad_accum": self.accum,
            "micro_batch": self.micro,
            "variant": self.cfg.variant,
            "policies": [p.name for p in self.policies],
            "schedule": _schedule_fields(self.cfg.train),
        }
        rank = {
            "rng": ckpt.rng_state(),
            "train_state": self.state.state_dict(),
            "iterator": self.train_iter.state_dict(),
            "policies": self.policies.state_dict(),
        }
        return client, rank

    def load_state_dict(self, client: dict[str, Any], rank: dict[str, Any]) -> None:
        """Continue from a ``(client_state, rank_state)`` pair; the rank state has this rank's
        layout (:func:`~skipxl.engine.checkpoint.load` reshards one from another world size)."""
        saved = client.get("schedule")  # absent before issue 17
        changed = {
            k: (v, saved[k])
            for k, v in _schedule_fields(self.cfg.train).items()
            if saved and saved.get(k) != v
        }
        if changed:
            what = ", ".join(f"{k} {old!r} -> {new!r}" for k, (new, old) in changed.items())
            raise SkipxlError(
                f"the training settings differ from the checkpoint's ({what}; was config.json edited?); "
                "a resume continues the saved schedule exactly, so restore those values or start a new run "
                "(--config RUN_DIR/config.json --out NEW)"
            )
        self.state.load_state_dict(rank["train_state"], self.device)
        self.policies.load_state_dict(rank["policies"])
        if rank["rng"] is not None:
            ckpt.set_rng_state(rank["rng"])
        else:  # a rank the saved world did not have: its own dropout stream from (seed, rank, step)
            seed = np.random.SeedSequence([self.cfg.train.seed, self.world.rank, self.state.step])
            seed_everything(int(seed.generate_state(1)[0]), self.cfg.train.deterministic)
        self.train_iter.load_state_dict(rank["iterator"])

    def save(self) -> None:
        """Checkpoint the current step (collective; once per step)."""
        if self.last_saved == self.state.step:
            return
        client, rank = self.state_dict()
        try:
            ckpt.save(
                self.engine,
                self.out_dir / rd.CHECKPOINTS,
                step=self.state.step,
                client_state=client,
                rank_state=rank,
                rank=self.world.rank,
                local_rank=self.world.local_rank,
                world_size=self.world.world_size,
                keep=self.cfg.train.keep_checkpoints,
            )
        except (OSError, RuntimeError) as exc:  # disk full, quota: the previous checkpoint is untouched
            # torch.save reports a failed write as a RuntimeError of its zip writer
            if isinstance(exc, RuntimeError) and not any(w in str(exc) for w in ("write", "unexpected pos")):
                raise
            kept = ckpt.read_latest(self.out_dir / rd.CHECKPOINTS) or "none"
            reason = getattr(exc, "strerror", None) or str(exc).splitlines()[0][:200]
            raise SkipxlError(
                f"could not write the checkpoint of step {self.state.step} ({reason}); "
                f"the previous checkpoint ({kept}) is kept; free space and continue with --resume"
            ) from exc
        self.last_saved = self.state.step

    def load(self) -> None:
        """Resume from the latest checkpoint (collective); metrics logged after it are dropped."""
        assert self.resume_tag is not None
        tag, ckpt_dir = self.resume_tag, self.out_dir / rd.CHECKPOINTS
        world = self.world
        client, rank = ckpt.load(
            self.engine, ckpt_dir, tag=tag, rank=world.rank, world_size=world.world_size, accum=self.accum
        )
        client, rank = ckpt.upgrade(client, rank, tag, [p.name for p in self.policies])
        self.load_state_dict(client, rank)
        if self.universal:
            from skipxl.engine import reshard

            barrier()
            if self.world.is_main:
                reshard.remove_universal(ckpt_dir)
        self.last_saved = self.state.step
        if self.world.is_main:
            damaged = truncate_metrics(self.out_dir, self.state.step)
            if damaged:
                print(
                    f"warning: {damaged} damaged line(s) of {self.out_dir / rd.METRICS} moved to "
                    f"{self.out_dir / DAMAGED_METRICS}; the other rows are kept",
                    file=sys.stderr,
                )

    # ------------------------------------------------------------------ the loop
    def fit(self, stop_at_step: int | None = None) -> TrainResult:
        """Train to ``max_steps`` (or until a signal / ``stop_at_step``: checkpoint and stop)."""
        tc = self.cfg.train
        if stop_at_step is not None and not self.state.step < stop_at_step <= tc.max_steps:
            raise SkipxlError(
                f"--stop_at_step {stop_at_step} must be after the current step {self.state.step} "
                f"and at most max_steps={tc.max_steps}"
            )
        stop = StopFlag()
        stop.install()
        self.engine.train()
        self.t_last = time.perf_counter()
        try:
            while self.state.step < tc.max_steps:
                self.train_step(self.next_batches())
                step = self.state.step
                self.watchdog.beat(step)
                # every rank learns the same reason (the highest signal number wins), so all stop here
                local = stop.signum or (1 if step == stop_at_step else 0)
                reason = agree_max(local, self.device)
                stop_now = reason > 0
                if _log_due(step, tc) or stop_now:
                    self.log_window()
                if tc.eval_interval and step % tc.eval_interval == 0 and step < tc.max_steps:
                    self.validate()
                if tc.save_interval and step % tc.save_interval == 0:
                    self.save()
                if stop_now:
                    self.save()
                    who = signal.Signals(reason).name if reason > 1 else f"stop_at_step={stop_at_step}"
                    self.logger.write(
                        f"stopped at step {step} ({who}); resume with --resume --out {self.out_dir}"
                    )
                    return TrainResult(self.out_dir, step, False, who, self.losses, {})
            self.save()
            final = self.final_evaluation()
            self._write_results(final)
            return TrainResult(self.out_dir, self.state.step, True, None, self.losses, final)
        finally:
            stop.restore()

    def _write_results(self, final: dict[str, Any]) -> None:
        if not self.world.is_main:
            return
        self.logger.log(self.state.step, final)
        results = {
            "variant": self.cfg.variant,
            "preset": self.cfg.preset,
            "n_params": self.n_params,
            "step": self.state.step,
            "level": self.level,
            **self.policies.summary(),
            **final,
            **throughput_summary(self.out_dir),
        }
        save_json(results, self.out_dir / rd.RESULTS)

    def close(self, failed: bool = False) -> None:
        self.watchdog.close(failed)
        self.profiler.close()
        self.logger.close()


def train(
    cfg: RunConfig, *, resume: bool = False, progress: bool = True, stop_at_step: int | None = None
) -> TrainResult:
    """Train ``cfg`` through DeepSpeed (see :class:`Trainer`).

    Args:
        resume: continue the run in ``cfg.out_dir`` from its latest checkpoint.
        progress: show a progress bar on rank 0.
        stop_at_step: checkpoint and stop (as if pre-empted) once this step is reached.
    """
    trainer = Trainer(cfg, resume=resume, progress=progress)
    try:
        result = trainer.fit(stop_at_step)
    except BaseException as exc:
        trainer.close(failed=not isinstance(exc, KeyboardInterrupt))
        if _is_peer_failure(exc):
            raise SkipxlError(
                f"rank {trainer.world.rank}: a collective failed ({str(exc).splitlines()[0][:200]}); "
                "a peer process died or did not answer within --collective_timeout_s; resume with --resume"
            ) from None
        raise
    trainer.close()
    return result


def _is_peer_failure(exc: BaseException) -> bool:
    """A gloo/NCCL error of a multi-rank job (a peer died, a collective timed out), not a bug of ours."""
    backend_error = getattr(torch.distributed, "DistBackendError", ())
    return torch.distributed.is_available() and (
        isinstance(exc, backend_error)
        or (
            isinstance(exc, RuntimeError)
            and any(w in str(exc) for w in ("gloo", "Connection closed", "Timed out"))
        )
    )


def lm_loss(
    model: Any,
    mems: list[Memory | None],
    plan: StepPlan | None,
    a: int,
    batch: tuple[torch.Tensor, torch.Tensor],
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """The loss of micro-step ``a`` (``batch = (input [b, T], target [b, T])``); the memory of its
    streams moves on in place (``mems[a]``). The step function of LM training, the memory
    profiler and the benchmarks (with :func:`~skipxl.engine.ds_engine.optimizer_step`)."""
    inputs, targets = batch
    if device is not None:
        inputs, targets = inputs.to(device), targets.to(device)
    out = model(inputs, targets=targets, mems=mems[a], plan=plan)
    mems[a] = out.mems
    return out.loss


def _schedule_fields(tc: Any) -> dict[str, Any]:
    """The TrainConfig fields a checkpoint's optimizer and lr schedule were built from; a resume
    with other values would continue neither the old run nor a new one."""
    names = ("lr", "max_steps", "eta_min", "warmup_steps", "scheduler", "global_batch", "seed")
    return {name: getattr(tc, name) for name in names}


def _log_due(step: int, tc: Any) -> bool:
    return step % tc.log_interval == 0 or step == tc.max_steps


def _grad_norm(module: torch.nn.Module) -> float:
    """Global 2-norm of the (already all-reduced) gradients, before clipping."""
    norms = [p.grad.detach().float().norm() for p in module.parameters() if p.grad is not None]
    return float(torch.stack(norms).norm()) if norms else 0.0
