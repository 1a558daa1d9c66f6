"""MemoryProfiler: per-step memory records of a training run, off by default.

Attaches from the outside to a :class:`~skipxl.model.TransformerXL` or a DeepSpeed engine
wrapping one, so the training loop needs two lines::

    profiler = MemoryProfiler(enabled=cfg.profile_memory, writer=tb_writer,
                              jsonl_path=run_dir / "memory.jsonl", step_fn=lambda: step)
    profiler.attach(engine)          # no-op when disabled: no hook is registered
    ...                              # train as usual
    profiler.close()

When disabled, :meth:`attach` returns at once: no module hook, no saved-tensor hook, no
wrapper; the run is byte-for-byte the run without a profiler. When enabled, every
``every``-th training forward (``module.training`` and grad enabled; evaluation is never
profiled) produces one record with:

* ``saved/*``: activations saved for backward (:mod:`skipxl.profiling.saved_tensors`),
  total peak and, with ``per_layer``, per layer (``layer_00`` ...), ``embedding``,
  ``softmax`` and ``other``; ``saved/retained_bytes`` is what autograd still held when the
  next step began (non-zero means a graph leaked across steps, e.g. an undetached memory);
* ``mems/*``: the Transformer-XL memory returned by the step, logical and held bytes;
* ``estimate/*``: the analytic figure (:mod:`skipxl.profiling.estimate`) for the same
  shapes, memory lengths, skip decisions and softmax clusters;
* ``plan/*``: skipped layers and computed layers whose heads were mixed;
* ``peak/*``: the process peak over the step (CUDA allocator or RSS high-water mark);
* ``states/*``: parameter / gradient / optimizer bytes of this rank, measured right after
  ``engine.backward`` (when attached to an engine) or by :meth:`measure_states`.

Records go to ``jsonl_path`` (one JSON object per line), to the TensorBoard ``writer``
(scalars under ``memory/``), to ``sink(step, values)`` and to :attr:`records`. A record
is completed when the next step starts (its peak then covers forward, backward and the
optimizer step) or on :meth:`close`.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, TextIO

import torch
from torch import nn

from skipxl.config_io import dumps
from skipxl.profiling.estimate import DTypeRule, cluster_counts, estimate_step, memory_geometry
from skipxl.profiling.peak import PeakTracker
from skipxl.profiling.saved_tensors import SavedTensorAccountant
from skipxl.profiling.state_bytes import mems_bytes, model_state_bytes


def layer_scope_name(index: int) -> str:
    """Scope / record key of layer ``index``: ``layer_00``, ``layer_01``, ..."""
    return f"layer_{index:02d}"


def model_scopes(module: nn.Module) -> dict[str, nn.Module]:
    """The attribution scopes of a Transformer-XL: its layers, embedding and softmax."""
    scopes: dict[str, nn.Module] = {}
    layers = getattr(module, "layers", None)
    if isinstance(layers, nn.ModuleList):
        scopes.update({layer_scope_name(i): layer for i, layer in enumerate(layers)})
    for name, attr in (("embedding", "word_emb"), ("softmax", "crit")):
        sub = getattr(module, attr, None)
        if isinstance(sub, nn.Module):
            scopes[name] = sub
    return scopes


def _arg(args: tuple[Any, ...], kwargs: dict[str, Any], index: int, name: str) -> Any:
    if name in kwargs:
        return kwargs[name]
    return args[index] if len(args) > index else None


class MemoryProfiler:
    """Per-step memory accounting; see the module docstring.

    Args:
        enabled: off by default; when False every method is a cheap no-op.
        writer: a TensorBoard ``SummaryWriter`` (or anything with ``add_scalar``).
        jsonl_path: file to append one JSON record per profiled step to.
        per_layer: attribute saved bytes to layers (module hooks on each layer).
        every: profile one training forward in ``every``.
        estimate: add the analytic estimate to each record.
        states: measure parameter / gradient / optimizer bytes after backward.
        step_fn: returns the step number to log (default: the count of training forwards).
        sink: called as ``sink(step, values)`` with each record's numbers under ``memory/``
            (e.g. the engine's ``MetricsLogger.log``, which writes JSONL and TensorBoard).
    """

    def __init__(
        self,
        enabled: bool = False,
        *,
        writer: Any = None,
        jsonl_path: str | Path | None = None,
        per_layer: bool = True,
        every: int = 1,
        estimate: bool = True,
        states: bool = True,
        step_fn: Callable[[], int] | None = None,
        sink: Callable[[int, dict[str, Any]], None] | None = None,
    ) -> None:
        self.enabled = bool(enabled)
        self.writer = writer
        self.jsonl_path = Path(jsonl_path) if jsonl_path is not None else None
        self.per_layer = per_layer
        self.every = max(1, int(every))
        self.estimate = estimate
        self.states = states
        self.step_fn = step_fn
        self.sink = sink
        self.records: list[dict[str, Any]] = []
        self._module: nn.Module | None = None
        self._engine: Any = None
        self._handles: list[Any] = []
        self._remove_scopes: Callable[[], None] | None = None
        self._acct: SavedTensorAccountant | None = None
        self._peak: PeakTracker | None = None
        self._file: TextIO | None = None
        self._forwards = 0
        self._active = False
        self._pending: dict[str, Any] | None = None
        self._inputs: dict[str, Any] = {}
        self._orig_backward: Any = None

    # ------------------------------------------------------------------ lifecycle
    def attach(self, target: Any) -> MemoryProfiler:
        """Hook onto a model or a DeepSpeed engine (``engine.module`` is the model)."""
        if not self.enabled:
            return self
        if self._module is not None:
            raise RuntimeError("MemoryProfiler is already attached; call detach() first")
        module = getattr(target, "module", target)
        if not isinstance(module, nn.Module):
            raise TypeError(f"attach() needs an nn.Module or a DeepSpeed engine, got {type(target).__name__}")
        self._module = module
        self._acct = SavedTensorAccountant(params=module.parameters())
        device = next((p.device for p in module.parameters()), torch.device("cpu"))
        self._peak = PeakTracker(device)
        if self.per_layer:
            self._remove_scopes = self._acct.attach_scopes(model_scopes(module))
        self._handles.append(module.register_forward_pre_hook(self._pre_forward, with_kwargs=True))
        self._handles.append(module.register_forward_hook(self._post_forward, always_call=True))
        if target is not module and hasattr(target, "backward"):
            self._engine = target
            self._orig_backward = target.backward

            def backward(*args: Any, **kwargs: Any) -> Any:
                result = self._orig_backward(*args, **kwargs)
                if self.states and self._pending is not None and "states/total" not in self._pending:
                    self.measure_states(target)
                return result

            target.backward = backward
        if self.jsonl_path is not None:
            self.jsonl_path.parent.mkdir(parents=True, exist_ok=True)
            self._file = self.jsonl_path.open("a")
        return self

    def detach(self) -> None:
        """Finish the pending record and remove every hook and wrapper."""
        if self._module is None:
            return
        self._finish_pending()
        if self._active and self._acct is not None:
            self._acct.__exit__(None, None, None)
            self._active = False
        for h in self._handles:
            h.remove()
        self._handles.clear()
        if self._remove_scopes is not None:
            self._remove_scopes()
            self._remove_scopes = None
        if self._engine is not None:
            if "backward" in vars(self._engine):
                del self._engine.backward
            self._engine = None
        self._module = None

    def close(self) -> None:
        """Detach and close the JSON file (the writer belongs to the caller)."""
        self.detach()
        if self._file is not None:
            self._file.close()
            self._file = None

    def __enter__(self) -> MemoryProfiler:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ manual hooks
    def measure_states(self, engine_or_model: Any, optimizer: Any = None) -> None:
        """Add parameter / gradient / optimizer bytes to the current record (after backward)."""
        if not self.enabled or self._pending is None:
            return
        s = model_state_bytes(engine_or_model, optimizer)
        self._pending.update(
            {
                "states/zero_stage": s.zero_stage,
                "states/params": s.params,
                "states/grads": s.grads,
                "states/optimizer": s.optimizer,
                "states/buffers": s.buffers,
                "states/other": s.other,
                "states/total": s.total,
            }
        )

    # ------------------------------------------------------------------ module hooks
    def _pre_forward(self, module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        self._finish_pending()
        if not (module.training and torch.is_grad_enabled()):
            return
        self._forwards += 1
        if (self._forwards - 1) % self.every:
            return
        assert self._acct is not None and self._peak is not None
        self._inputs = {
            "input_ids": _arg(args, kwargs, 0, "input_ids"),
            "targets": _arg(args, kwargs, 1, "targets"),
            "mems": _arg(args, kwargs, 2, "mems"),
        }
        self._peak.reset()
        self._acct.reset()
        self._acct.__enter__()
        self._active = True

    def _post_forward(self, module: nn.Module, args: Any, output: Any) -> None:
        if not self._active:
            return
        assert self._acct is not None
        self._acct.__exit__(None, None, None)
        self._active = False
        step = self.step_fn() if self.step_fn is not None else self._forwards
        record: dict[str, Any] = {"step": int(step)}
        plan = getattr(output, "plan", None)
        skip = getattr(plan, "skip", None)
        head_index = getattr(plan, "head_index", None)
        n_layer = len(getattr(module, "layers", ()))
        mixed = 0
        if head_index is not None:
            ident = torch.arange(head_index.size(-1))  # [H]
            mixed_rows = (head_index.cpu() != ident).any(dim=-1).tolist()  # [n_layer] bool
            computed = [not s for s in skip] if skip is not None else [True] * len(mixed_rows)
            mixed = sum(1 for m, c in zip(mixed_rows, computed, strict=True) if m and c)
        record["plan/n_skipped"] = int(sum(skip)) if skip is not None else 0
        record["plan/skip"] = [int(s) for s in skip] if skip is not None else [0] * n_layer
        record["plan/mixed_layers"] = mixed
        new_mems = getattr(output, "mems", None)
        if new_mems is not None:
            mb = mems_bytes(new_mems)
            record["mems/bytes"] = mb.total
            record["mems/held_bytes"] = mb.total_held
            record["mems/positions_bytes"] = mb.positions
            if self.per_layer:
                for i, (lb, hb) in enumerate(zip(mb.per_layer, mb.per_layer_held, strict=True)):
                    record[f"mems/{layer_scope_name(i)}"] = lb
                    record[f"mems_held/{layer_scope_name(i)}"] = hb
        if self.estimate and hasattr(module, "cfg") and self._inputs.get("input_ids") is not None:
            record.update(self._estimate(module, skip, mixed, getattr(output, "hidden", None)))
        self._pending = record
        self._inputs = {}

    def _estimate(self, module: nn.Module, skip: Any, mixed: int, hidden: Any) -> dict[str, Any]:
        cfg = module.cfg  # type: ignore[attr-defined]
        ids, targets, mems = self._inputs["input_ids"], self._inputs["targets"], self._inputs["mems"]
        batch, tgt_len = int(ids.size(0)), int(ids.size(1))
        mlens, rlens, gather = memory_geometry(cfg, mems, tgt_len, skip)
        counts = cluster_counts(targets, cfg) if targets is not None else None
        act = hidden.element_size() if isinstance(hidden, torch.Tensor) else 4
        device = str(hidden.device) if isinstance(hidden, torch.Tensor) else "cpu"
        est = estimate_step(
            cfg,
            batch,
            mlens=mlens,
            rlens=rlens,
            gather=gather,
            skip=skip,
            cross_head=mixed > 0,
            cluster_tokens=counts,
            tgt_len=tgt_len,
            rule=DTypeRule.for_device(device, act=act),
        )
        out: dict[str, Any] = {
            "estimate/bytes": est.total,
            "estimate/layers": est.layers,
            "estimate/shared": est.shared,
        }
        if self.per_layer:
            # Shared tensors (position table, masks, head index) are first saved, hence
            # attributed, by the first computed layer: put them there, as measured.
            per_layer = list(est.per_layer)
            first = next((i for i, b in enumerate(per_layer) if b > 0), None)
            if first is not None:
                per_layer[first] += est.shared
            out.update({f"estimate/{layer_scope_name(i)}": b for i, b in enumerate(per_layer)})
        return out

    # ------------------------------------------------------------------ records
    def _finish_pending(self) -> None:
        record, self._pending = self._pending, None
        if record is None:
            return
        assert self._acct is not None and self._peak is not None
        snap = self._acct.snapshot()
        record["saved/bytes"] = snap.peak_live_bytes
        record["saved/packed_bytes"] = snap.packed_bytes
        record["saved/param_bytes"] = snap.param_bytes
        record["saved/retained_bytes"] = snap.live_bytes
        record["saved/n_tensors"] = snap.n_saved
        if self.per_layer:
            for scope, nbytes in sorted(snap.per_scope.items()):
                record[f"saved/{scope}"] = nbytes
        peak = self._peak.read()
        record["peak/kind"] = peak.kind
        record["peak/bytes"] = peak.peak_bytes
        record["peak/reserved_bytes"] = peak.reserved_peak_bytes
        record["peak/resettable"] = peak.resettable
        self._emit(record)

    def _emit(self, record: dict[str, Any]) -> None:
        self.records.append(record)
        if self._file is not None:
            self._file.write(dumps(record, sort_keys=True) + "\n")
            self._file.flush()
        step = record["step"]
        numbers = {
            f"memory/{k}": v
            for k, v in record.items()
            if k != "step" and isinstance(v, (int, float)) and not isinstance(v, bool)
        }
        if self.writer is not None:
            for key, value in numbers.items():
                self.writer.add_scalar(key, value, step)
        if self.sink is not None:
            self.sink(step, numbers)

    def flush(self) -> None:
        """Complete the pending record now (e.g. before reading :attr:`records`)."""
        if self.enabled and self._module is not None:
            self._finish_pending()
