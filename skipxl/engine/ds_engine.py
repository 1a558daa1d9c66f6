"""The one DeepSpeed engine builder and the one optimizer-step function.

Language-model training (:mod:`skipxl.engine.train`), GLUE fine-tuning
(:mod:`skipxl.glue.finetune`) and the memory profiler (``skipxl memory``) all build their engine
with :func:`build_engine` and run a step with :func:`optimizer_step`, so a DeepSpeed detail
(ZeRO-3 hooks, the single-process all-reduce) is handled once.

A client torch optimizer (``zero_allow_untested_optimizer`` in the shipped configs) needs no
compiled op, so all of this runs on a CPU-only machine as well as on GPUs.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import torch

from skipxl.engine.ds_config import precision_of, zero_stage_of

Batch = TypeVar("Batch")


class TraversableOutput(dict):
    """A dataclass model output (e.g. :class:`~skipxl.model.LMOutput`) as a dict with attribute access.

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


def _register_shared_parameters(engine: Any) -> None:
    """ZeRO-3: the u/v biases belong to the Transformer-XL root but are used inside every layer,
    so each layer's forward and backward must gather them (not only the root's)."""
    import deepspeed

    module = engine.module
    for layer in getattr(module, "layers", ()):
        for name in ("r_w_bias", "r_r_bias"):
            if isinstance(getattr(module, name, None), torch.nn.Parameter):
                deepspeed.zero.register_external_parameter(layer, getattr(module, name))


def build_engine(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    ds_config: dict[str, Any],
    scheduler: Any = None,
    *,
    skip_single_process_allreduce: bool = False,
) -> Any:
    """``deepspeed.initialize`` with a client optimizer (and lr scheduler, stepped by DeepSpeed
    once per optimizer step); returns the engine.

    Args:
        skip_single_process_allreduce: in a one-process world at ZeRO stage 0 in fp32, turn off
            the gradient all-reduce: it averages over a world of one, yet it flattens and copies
            every gradient (~20% of a CPU step for wt103_base). It also zero-fills missing
            gradients, so a caller whose parameters may get none (GLUE's unused pooler) keeps it.
    """
    import deepspeed

    model.register_forward_hook(_traversable_output)  # before DeepSpeed's own hooks; see TraversableOutput
    engine, _, _, _ = deepspeed.initialize(
        model=model, optimizer=optimizer, lr_scheduler=scheduler, config=ds_config
    )
    stage, precision = zero_stage_of(ds_config), precision_of(ds_config)
    if stage == 3:
        _register_shared_parameters(engine)
    if skip_single_process_allreduce and engine.world_size == 1 and stage == 0 and precision == "fp32":
        engine.enable_backward_allreduce = False
    return engine


def optimizer_step(
    engine: Any,
    micro_batches: Sequence[Batch],
    loss_of: Callable[[int, Batch], torch.Tensor],
    before_step: Callable[[], None] | None = None,
) -> list[torch.Tensor]:
    """One optimizer step over ``micro_batches``: forward, backward and ``engine.step()`` for each
    (DeepSpeed accumulates and steps the optimizer and scheduler at the last one).

    Args:
        loss_of: ``(micro_step, batch) -> scalar loss`` (the forward pass).
        before_step: called after the last backward, before the optimizer acts (edit gradients).

    Returns:
        the detached micro-batch losses (device tensors: no host sync here).
    """
    losses = []
    for a, batch in enumerate(micro_batches):
        loss = loss_of(a, batch)
        engine.backward(loss)
        if before_step is not None and a == len(micro_batches) - 1:
            before_step()
        engine.step()
        losses.append(loss.detach())
    return losses
