"""Evaluation with the Transformer-XL protocol (Dai et al. 2019, ``eval.py``).

A split is cut into ``batch_size`` parallel streams, each read left to right in segments
of ``tgt_len`` tokens while the memory (``mem_len``) carries the context forward; the
score is the token-weighted mean negative log-likelihood (``total nll / total tokens``),
reported as perplexity for word-level corpora and bits per character for char-level ones.
The protocol is an :class:`~skipxl.engine.config.EvalConfig` (validated when it is built) and
its context is passed to every forward call, so the same function serves the validations during
training (training context, the original's ``eval_tgt_len``), the final scores with the
published protocol (e.g. WikiText-103 base: tgt 64, mem 640, clamp 400, same_length) and
``skipxl eval``.

Streams are split across data-parallel ranks (rank-major); every rank runs the same number
of segments (needed under ZeRO-3, whose forward gathers parameters collectively) and the
sums are all-reduced, so the result does not depend on the world size.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from skipxl.config_io import save_json
from skipxl.engine.config import EvalConfig
from skipxl.engine.distributed import all_reduce, collective_device
from skipxl.engine.metrics import loss_metrics, metric_level
from skipxl.errors import SkipxlError


@dataclass(frozen=True)
class EvalResult:
    loss: float
    tokens: int

    def metrics(self, level: str, prefix: str) -> dict[str, float]:
        return {**loss_metrics(self.loss, level, prefix), f"{prefix}/tokens": self.tokens}


def check_split(n_tokens: int, protocol: EvalConfig, world_size: int = 1) -> None:
    """Refuse a protocol that cannot score a split of ``n_tokens`` on ``world_size`` ranks (the
    trainer calls this at start-up for its validations and final scores)."""
    if protocol.batch_size % world_size:
        raise SkipxlError(
            f"eval batch_size {protocol.batch_size} is not divisible by the world size {world_size}; "
            f"pass --eval_batch_size {protocol.batch_size + world_size - protocol.batch_size % world_size}"
        )
    if n_tokens < protocol.batch_size + 1:
        raise SkipxlError(
            f"the split has {n_tokens} tokens, too few for {protocol.batch_size} "
            "evaluation streams; lower --eval_batch_size"
        )


@torch.no_grad()
def evaluate_split(
    model: torch.nn.Module,
    tokens: np.ndarray,
    protocol: EvalConfig,
    *,
    rank: int = 0,
    world_size: int = 1,
    device: torch.device | str = "cpu",
    max_batches: int | None = None,
    progress: str | None = None,
) -> EvalResult:
    """Score ``tokens`` (a 1-D id array) with ``protocol``; collective when distributed.

    Args:
        model: a :class:`~skipxl.model.TransformerXL` (``engine.module`` under DeepSpeed).
        max_batches: stop after this many segments per stream (quick validations).
        progress: a progress-bar title (on a terminal, rank 0); None = no bar.
    """
    from skipxl.data import eval_batches
    from skipxl.progress import progress_bar

    check_split(len(tokens), protocol, world_size)
    was_training = model.training
    context = protocol.context
    model.eval()
    segments = eval_batches(
        tokens, protocol.batch_size, protocol.tgt_len, protocol.ext_len, rank=rank, world_size=world_size
    )
    total = torch.zeros(2, dtype=torch.float64)  # [nll sum, token count]
    nll_sum = torch.zeros((), dtype=torch.float64, device=device)
    count = 0
    per_stream = -(-(len(tokens) // protocol.batch_size - 1) // protocol.tgt_len)  # segments per stream
    bar = progress_bar(
        min(per_stream, max_batches or per_stream), progress or "", "seg", progress is not None
    )
    try:
        mems = None
        for n_batches, (inputs, targets) in enumerate(segments, start=1):
            out = model(inputs.to(device), targets=targets.to(device), mems=mems, context=context)
            mems = out.mems
            nll_sum += out.nll.double().sum()
            count += out.nll.numel()
            bar.update()
            if max_batches is not None and n_batches >= max_batches:
                break
    finally:
        bar.close()
        model.train(was_training)
    total[0] = nll_sum.cpu()
    total[1] = count
    total = all_reduce(total.to(collective_device(device)), "sum").cpu()
    if total[1] <= 0:
        raise SkipxlError("evaluation scored no tokens; the split is shorter than one segment")
    return EvalResult(loss=float(total[0] / total[1]), tokens=int(total[1]))


SPLIT_ALIASES = {"valid": "valid", "val": "valid", "validation": "valid", "test": "test", "train": "train"}


def evaluate_run(
    run_dir: str | Any,
    *,
    split: str = "test",
    overrides: dict[str, Any] | None = None,
    max_batches: int | None = None,
    tag: str | None = None,
    device: str | None = None,
    save: bool = True,
) -> dict[str, Any]:
    """Score a run folder's latest checkpoint on ``split`` with its EvalConfig plus ``overrides``.

    One process, no DeepSpeed: the weights are consolidated to fp32 (any ZeRO stage).
    Saves ``RUN_DIR/eval_<split>_<tag>_tgt<T>_mem<M>_clamp<C>_same<0|1>_ext<E>_bs<B>[_batches<N>].json``
    (named by everything that defines the number, so no evaluation overwrites another) and
    returns the row.
    """
    import dataclasses as dc
    from pathlib import Path

    from skipxl.config_io import load_json
    from skipxl.data import load_corpus
    from skipxl.engine.checkpoint import fp32_state_dict, resolve_tag
    from skipxl.engine.config import run_config_from_dict
    from skipxl.engine.run_dir import CHECKPOINTS, CONFIG
    from skipxl.model import TransformerXL

    run_dir = Path(run_dir)
    if split not in SPLIT_ALIASES:
        raise SkipxlError(f"unknown --split {split!r}; choose valid or test (or train)")
    split = SPLIT_ALIASES[split]
    if not (run_dir / CONFIG).is_file():
        raise SkipxlError(
            f"{run_dir} is not a run folder (no config.json); pass the --out folder of a training run"
        )
    dev = _device(device)
    cfg = run_config_from_dict(load_json(run_dir / CONFIG))
    protocol = dc.replace(cfg.eval, **(overrides or {}))  # validated here, before any work
    ckpt_dir = run_dir / CHECKPOINTS
    tag = resolve_tag(ckpt_dir, tag)
    corpus = load_corpus(cfg.data)
    model = TransformerXL(cfg.model)
    model.load_state_dict(fp32_state_dict(ckpt_dir, tag))
    model.to(dev)
    level = metric_level(corpus.vocab.level)
    result = evaluate_split(
        model, corpus.splits[split], protocol, device=dev, max_batches=max_batches, progress=f"eval {split}"
    )
    prefix = "val" if split == "valid" else split
    row: dict[str, Any] = {
        "run": str(run_dir),
        "checkpoint": tag,
        "split": split,
        "protocol": dc.asdict(protocol),
        **result.metrics(level, prefix),
    }
    if max_batches is not None:
        row["max_batches"] = max_batches
    if save:
        name = (
            f"eval_{split}_{tag}_tgt{protocol.tgt_len}_mem{protocol.mem_len}_clamp{protocol.clamp_len}"
            f"_same{int(protocol.same_length)}_ext{protocol.ext_len}_bs{protocol.batch_size}"
            + ("" if max_batches is None else f"_batches{max_batches}")
            + ".json"
        )
        save_json(row, run_dir / name)
        row["saved_to"] = str(run_dir / name)
    return row


def _device(device: str | None) -> torch.device:
    """``--device`` checked before any work: a known device that this machine has."""
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError):
        raise SkipxlError(f"unknown --device {device!r}; choose cpu or cuda (or cuda:N)") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise SkipxlError(f"--device {device}: this machine has no usable CUDA GPU; pass --device cpu")
    if dev.type not in ("cpu", "cuda"):
        raise SkipxlError(f"--device {device}: choose cpu or cuda")
    return dev
