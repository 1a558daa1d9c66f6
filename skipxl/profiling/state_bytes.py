"""Bytes of persistent state: Transformer-XL memory, parameters, gradients, optimizer.

Two kinds of memory are not activations and so are invisible to
:mod:`skipxl.profiling.saved_tensors`:

* the **recurrent memory** of Transformer-XL (Dai et al. 2019, Sec. 3.2): per layer, the
  cached inputs of the last ``mem_len`` positions, carried from step to step. Skip-Retain
  (arXiv 2311.08123) keeps a skipped layer's memory instead of refreshing it, so the
  footprint should be exactly the baseline's. We report both the *logical* bytes
  (``numel * element_size`` of the ``[B, M, D]`` states) and the bytes *held*, i.e. the
  distinct storages behind them: a memory sliced out of a larger ``cat([mem, h])``
  without a copy keeps the whole ``[B, M+T, D]`` buffer alive.
* the **model states** a DeepSpeed engine keeps per rank: parameters, gradients,
  optimizer state (Adam moments and fp32 master copies), and ZeRO's own flat buffers.
  We walk the objects the engine actually holds and add up distinct storages, then put
  DeepSpeed's own estimator next to it (its estimator assumes mixed precision on GPU, so
  on a CPU fp32 run the two differ by design; both are shown, neither is "corrected").
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from skipxl.profiling.saved_tensors import StorageKey, storage_key_and_bytes

# ----------------------------------------------------------------------------- mems


@dataclass(frozen=True)
class MemsBytes:
    """Bytes of a Transformer-XL memory.

    Attributes:
        per_layer: logical bytes of each layer's states (``B * M_l * D * element_size``).
        per_layer_held: bytes of the distinct storages first reached through each layer.
        positions: bytes of the per-slot position vectors (CPU int64).
        slots: ``M_l`` per layer.
    """

    per_layer: tuple[int, ...]
    per_layer_held: tuple[int, ...]
    positions: int
    slots: tuple[int, ...]

    @property
    def total(self) -> int:
        return sum(self.per_layer)

    @property
    def total_held(self) -> int:
        return sum(self.per_layer_held)


def _mems_states(mems: Any) -> tuple[Sequence[Tensor], Sequence[Tensor]]:
    """``(states, positions)`` of a :class:`~skipxl.model.memory.Memory` or a tensor list."""
    if mems is None:
        return (), ()
    states = getattr(mems, "states", None)
    if states is not None:
        return tuple(states), tuple(getattr(mems, "positions", ()))
    return tuple(mems), ()


def mems_bytes(mems: Any) -> MemsBytes:
    """Bytes of a memory: logical per layer, held per layer (distinct storages), positions.

    ``mems`` is a ``Memory`` (``states`` / ``positions``), a sequence of ``[B, M, D]``
    tensors (the original Transformer-XL list), or ``None`` (nothing).
    """
    states, positions = _mems_states(mems)
    seen: set[StorageKey] = set()
    logical, held, slots = [], [], []
    for s in states:
        logical.append(s.numel() * s.element_size())
        slots.append(int(s.size(1)) if s.dim() >= 2 else int(s.numel()))
        key, nbytes = storage_key_and_bytes(s)
        if key is None:
            held.append(s.numel() * s.element_size())
        elif key in seen:
            held.append(0)
        else:
            seen.add(key)
            held.append(nbytes)
    pos_bytes = sum(p.numel() * p.element_size() for p in positions)
    return MemsBytes(tuple(logical), tuple(held), pos_bytes, tuple(slots))


# ----------------------------------------------------------------------------- model states


@dataclass(frozen=True)
class ModelStateBytes:
    """What one rank holds for the model, by category (distinct storages, bytes).

    Attributes:
        zero_stage: the engine's ZeRO stage (0 for a plain module/optimizer).
        world_size: data-parallel ranks the states are partitioned over.
        n_params: parameter count of the full (unpartitioned) model.
        params: parameter storages (the module's tensors; ZeRO-3: this rank's partitions).
        grads: gradient storages (``p.grad``, ZeRO's gradient partitions and buffers).
        optimizer: optimizer state (Adam moments, step counters, fp32 master copies).
        buffers: module buffers (non-learned tensors such as position tables).
        other: any other tensor the ZeRO optimizer holds (communication buffers...).
    """

    zero_stage: int
    world_size: int
    n_params: int
    params: int
    grads: int
    optimizer: int
    buffers: int
    other: int

    @property
    def total(self) -> int:
        return self.params + self.grads + self.optimizer + self.buffers + self.other


def _tensors_in(obj: Any, depth: int, path: str) -> Iterator[tuple[str, Tensor]]:
    """Tensors reachable from ``obj`` through lists, tuples and dicts (not through objects)."""
    if isinstance(obj, Tensor):
        yield path, obj
        return
    if depth <= 0 or isinstance(obj, (str, bytes, nn.Module)):
        return
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from _tensors_in(v, depth - 1, f"{path}[{k!r}]" if isinstance(k, str) else path)
    elif isinstance(obj, (list, tuple, set)):
        for v in obj:
            yield from _tensors_in(v, depth - 1, path)


def unwrap_optimizer(optimizer: Any) -> torch.optim.Optimizer | None:
    """The innermost ``torch.optim.Optimizer`` behind DeepSpeed's wrappers (or ``None``)."""
    seen = 0
    while optimizer is not None and seen < 8:
        if isinstance(optimizer, torch.optim.Optimizer) and type(optimizer).__module__.startswith(
            "torch.optim"
        ):
            return optimizer
        inner = getattr(optimizer, "optimizer", None)
        if inner is None or inner is optimizer:
            return optimizer if isinstance(optimizer, torch.optim.Optimizer) else None
        optimizer, seen = inner, seen + 1
    return None


def _engine_parts(engine_or_model: Any, optimizer: Any) -> tuple[nn.Module, Any, int, int]:
    """``(module, optimizer, zero_stage, world_size)`` for an engine or a plain module."""
    module = getattr(engine_or_model, "module", engine_or_model)
    if not isinstance(module, nn.Module):
        raise TypeError(f"expected an nn.Module or a DeepSpeed engine, got {type(engine_or_model).__name__}")
    opt = optimizer if optimizer is not None else getattr(engine_or_model, "optimizer", None)
    stage = 0
    if hasattr(engine_or_model, "zero_optimization_stage"):
        stage = int(engine_or_model.zero_optimization_stage())
    world = 1
    if hasattr(engine_or_model, "dp_world_size"):
        world = int(engine_or_model.dp_world_size)
    elif torch.distributed.is_available() and torch.distributed.is_initialized():
        world = torch.distributed.get_world_size()
    return module, opt, stage, world


def model_state_bytes(engine_or_model: Any, optimizer: Any = None) -> ModelStateBytes:
    """Add up the distinct storages one rank holds for parameters, gradients and optimizer.

    Works on a DeepSpeed engine (any ZeRO stage; the optimizer is found as
    ``engine.optimizer``) or a plain ``nn.Module`` plus ``optimizer``. Call it after
    backward and before ``step()`` to see gradients at their peak; after ``step()``
    ZeRO frees or zeroes some gradient buffers. Each storage is counted once, in the first
    category that reaches it, in the order params, grads, optimizer, buffers, other.
    """
    module, opt, stage, world = _engine_parts(engine_or_model, optimizer)
    seen: set[StorageKey] = set()
    totals = {"params": 0, "grads": 0, "optimizer": 0, "buffers": 0, "other": 0}

    def add(category: str, tensors: Iterable[Tensor]) -> None:
        for t in tensors:
            if t is None or not isinstance(t, Tensor):
                continue
            key, nbytes = storage_key_and_bytes(t)
            if key is None:
                totals[category] += nbytes
                continue
            if key in seen:
                continue
            seen.add(key)
            totals[category] += nbytes

    params = list(module.parameters())
    n_params = sum(int(getattr(p, "ds_numel", p.numel())) for p in params)
    add("params", (p.data for p in params))
    add("params", (getattr(p, "ds_tensor", None) for p in params))
    add("grads", (p.grad for p in params))
    inner = unwrap_optimizer(opt)
    group_params = [p for g in (inner.param_groups if inner else []) for p in g["params"]]
    add("grads", (p.grad for p in group_params))
    wrapper_tensors: list[tuple[str, Tensor]] = []
    if opt is not None and opt is not inner:
        for name, value in vars(opt).items():
            wrapper_tensors.extend(_tensors_in(value, depth=4, path=name))
    add("grads", (t for name, t in wrapper_tensors if "grad" in name.lower()))
    if inner is not None:
        add("optimizer", (t for state in inner.state.values() for _, t in _tensors_in(state, 2, "")))
    add("optimizer", group_params)
    add("optimizer", (t for name, t in wrapper_tensors if "fp32" in name.lower()))
    add("buffers", module.buffers())
    add("other", (t for _, t in wrapper_tensors))
    return ModelStateBytes(
        zero_stage=stage,
        world_size=world,
        n_params=n_params,
        **totals,
    )


def largest_layer_params(module: nn.Module) -> int:
    """Parameters of the largest single module (its own, not its children's): ZeRO-3's unit."""

    def own(m: nn.Module) -> int:
        return sum(int(getattr(p, "ds_numel", p.numel())) for p in m.parameters(recurse=False))

    return max((own(m) for m in module.modules()), default=0)


@dataclass(frozen=True)
class StateEstimate:
    """An estimate of per-rank model-state bytes: where it comes from and what it says."""

    source: str
    accelerator_bytes: int
    cpu_bytes: int
    note: str = ""


def deepspeed_state_estimate(
    n_params: int,
    zero_stage: int,
    world_size: int = 1,
    largest_layer: int = 0,
    offload_optimizer: bool = False,
    offload_params: bool = False,
) -> StateEstimate:
    """DeepSpeed's own model-state estimator for the stage, with the buffer factor set to 1.

    Stages 1 and 2 use ``estimate_zero2_model_states_mem_needs`` (DeepSpeed has no
    separate stage-1 estimator; stage 1 keeps full gradients, so it under-estimates it),
    stage 3 ``estimate_zero3_model_states_mem_needs``. Both assume mixed precision with
    Adam: 2 bytes of 16-bit parameters per rank plus 18 bytes/param (16-bit and fp32
    gradients, fp32 master weights, two fp32 moments) divided over the ranks. Stage 0 has
    no DeepSpeed estimator; we give the plain fp32 Adam rule, 16 bytes/param
    (4 parameter + 4 gradient + 8 moments).
    """
    if zero_stage == 0:
        return StateEstimate("fp32 Adam rule (no DeepSpeed stage-0 estimator)", 16 * n_params, 0)
    if zero_stage in (1, 2):
        from deepspeed.runtime.zero.stage_1_and_2 import estimate_zero2_model_states_mem_needs

        cpu, acc = estimate_zero2_model_states_mem_needs(
            n_params,
            num_gpus_per_node=world_size,
            num_nodes=1,
            cpu_offload=offload_optimizer,
            additional_buffer_factor=1.0,
        )
        note = "stage-2 formula; stage 1 also keeps full gradients" if zero_stage == 1 else ""
        return StateEstimate("deepspeed estimate_zero2_model_states_mem_needs", int(acc), int(cpu), note)
    from deepspeed.runtime.zero.stage3 import estimate_zero3_model_states_mem_needs

    cpu, acc, _ = estimate_zero3_model_states_mem_needs(
        n_params,
        largest_layer,
        num_gpus_per_node=world_size,
        num_nodes=1,
        cpu_offload=offload_optimizer,
        cpu_offload_params=offload_params,
        zero_init=True,
        additional_buffer_factor=1.0,
    )
    return StateEstimate("deepspeed estimate_zero3_model_states_mem_needs", int(acc), int(cpu))
