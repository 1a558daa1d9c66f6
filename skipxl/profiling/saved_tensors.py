"""Bytes that autograd keeps alive for the backward pass, attributed per layer.

The activations a training step holds are exactly the tensors autograd *saves* for
backward. :func:`torch.autograd.graph.saved_tensors_hooks` lets us see every one of them
as it is saved (the "pack" hook) and notice when autograd lets go of it (our packed
object is destroyed when the graph node releases its saved variables). This works the
same on CPU and GPU, needs no allocator statistics, and is exact down to the byte, which
is what the paper's claim needs (arXiv 2311.08123: Skip-Retain and stochastic cross-head
attention "use no additional memory").

Counting rule (what makes the number honest):

* A saved tensor costs the bytes of its whole **storage** (``untyped_storage().nbytes()``):
  keeping a view alive keeps its entire base allocation alive.
* Each storage is counted **once** while autograd holds it, however many views of it are
  saved (e.g. ``q``, ``k`` and ``v`` sliced from one projection, or a tensor saved by two
  ops). A per-storage reference count tracks this; the bytes leave the live total when
  the last saved view of the storage is released.
* Storages that belong to **parameters** (an ``nn.Parameter``, a view of one, or a
  storage listed via ``params=``) are reported separately (``param_bytes``): they exist
  whether or not autograd saves them, so they are not activation memory.
* A storage is attributed to the **scope that first saved it** (the innermost active
  :meth:`SavedTensorAccountant.scope`, or the module scopes installed by
  :meth:`SavedTensorAccountant.attach_scopes`); saves outside any scope go to
  ``default_scope``.
* Meta tensors count 0; a tensor whose storage cannot be named (some subclasses without
  ``untyped_storage``) counts ``numel * element_size`` and is never de-duplicated.

Limits: an inner ``saved_tensors_hooks`` context opened by the model itself (activation
checkpointing, CPU offload of activations) takes precedence over ours, so what it saves
is not seen; recomputation during backward is not counted.
"""

from __future__ import annotations

import contextlib
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

StorageKey = tuple[str, int, int]  # (device type, device index, storage data pointer)


@dataclass(frozen=True)
class SavedBytes:
    """A snapshot of saved-for-backward accounting for one window (usually one step).

    Attributes:
        packed_bytes: activation bytes of the distinct storages first saved in this window.
        peak_live_bytes: highest activation bytes held by autograd at any time in the window
            (this is the activation memory of the step: it rises during forward and falls
            during backward).
        live_bytes: activation bytes held right now.
        param_bytes: bytes of parameter storages saved in the window (not activation memory).
        n_saved: number of pack calls (views/duplicates included).
        per_scope: activation bytes first saved in the window, by scope.
        per_scope_peak: highest live activation bytes of each scope in the window.
    """

    packed_bytes: int
    peak_live_bytes: int
    live_bytes: int
    param_bytes: int
    n_saved: int
    per_scope: dict[str, int] = field(default_factory=dict)
    per_scope_peak: dict[str, int] = field(default_factory=dict)


class _Packed:
    """What autograd stores instead of the tensor while our hooks are active.

    Holds the tensor or a detached alias of it (same storage: nothing is copied or moved,
    see :func:`_keepable`); its destruction tells the accountant that autograd released it.
    """

    __slots__ = ("__weakref__", "_acct", "key", "tensor")

    def __init__(self, tensor: Tensor, key: StorageKey | None, acct: SavedTensorAccountant) -> None:
        self.tensor = tensor
        self.key = key
        self._acct = acct

    def __del__(self) -> None:
        if self.key is not None:
            with contextlib.suppress(Exception):  # interpreter shutdown
                self._acct._release(self.key)


def storage_key_and_bytes(t: Tensor) -> tuple[StorageKey | None, int]:
    """``(key, bytes)`` of the storage behind ``t``; key ``None`` when it has none we can name."""
    if t.device.type == "meta":
        return None, 0  # shape-only tensors hold no memory
    try:
        storage = t.untyped_storage()
        ptr = int(storage.data_ptr())
        nbytes = int(storage.nbytes())
    except (RuntimeError, NotImplementedError, AttributeError):
        return None, t.numel() * t.element_size()
    if ptr == 0:
        return None, nbytes
    return (t.device.type, -1 if t.device.index is None else int(t.device.index), ptr), nbytes


def _keepable(t: Tensor) -> Tensor:
    """What the pack hook keeps for ``t``.

    A non-leaf is kept as a detached alias (same storage, no ``grad_fn``): holding ``t``
    itself would make a reference cycle for tensors saved as outputs
    (``t -> grad_fn -> saved -> t``) and keep the graph alive until the garbage collector
    runs. A leaf (a parameter, an input) cannot form such a cycle and is kept as the object
    itself, exactly as autograd would keep it (a parameter whose ``.data`` ZeRO-3 swaps
    between forward and backward stays the same object).
    """
    return t if t.grad_fn is None and t.is_leaf else t.detach()


def _is_param_like(t: Tensor) -> bool:
    """A parameter or a view of one (autograd saves ``weight.t()`` for a Linear)."""
    return isinstance(t, nn.Parameter) or isinstance(t._base, nn.Parameter)


class SavedTensorAccountant:
    """Counts the bytes autograd saves for backward; optionally per layer.

    Use it as a context manager around the forward pass (packing happens there); the
    release of saved tensors is tracked whenever it happens (in backward or when the
    graph is dropped), also after the context has exited::

        acct = SavedTensorAccountant(params=model.parameters())
        acct.attach_scopes({"layer0": model.layers[0]})   # optional attribution
        acct.reset()
        with acct:
            loss = model(x).sum()
        loss.backward()
        acct.snapshot().peak_live_bytes
    """

    def __init__(self, params: Iterable[Tensor] = (), default_scope: str = "other") -> None:
        self.default_scope = default_scope
        self._param_keys: set[StorageKey] = set()
        self.add_params(params)
        self._refs: dict[StorageKey, int] = {}
        self._key_bytes: dict[StorageKey, int] = {}
        self._key_scope: dict[StorageKey, str] = {}
        self._key_param: dict[StorageKey, bool] = {}
        self._live = 0
        self._scope_live: dict[str, int] = defaultdict(int)
        self._scope_stack: list[str] = []
        self._hooks_cm: contextlib.AbstractContextManager[Any] | None = None
        self._handles: list[Any] = []
        self.reset()

    # ------------------------------------------------------------------ configuration
    def add_params(self, params: Iterable[Tensor]) -> None:
        """Declare storages that are parameters (counted in ``param_bytes``, not activations)."""
        for p in params:
            key, _ = storage_key_and_bytes(p.detach())
            if key is not None:
                self._param_keys.add(key)

    def attach_scopes(self, modules: Mapping[str, nn.Module]) -> Callable[[], None]:
        """Attribute what each module saves during its forward to its name.

        Registers a forward pre-hook (enter the scope) and a forward hook (leave it) per
        module; returns a function that removes them. Nested modules: innermost wins. A
        module that is not called (a skipped layer) gets nothing attributed.
        """
        handles = []
        for name, module in modules.items():

            def pre(_m: nn.Module, _args: Any, _name: str = name) -> None:
                self._scope_stack.append(_name)

            def post(_m: nn.Module, _args: Any, _out: Any, _name: str = name) -> None:
                if self._scope_stack and self._scope_stack[-1] == _name:
                    self._scope_stack.pop()

            handles.append(module.register_forward_pre_hook(pre))
            handles.append(module.register_forward_hook(post, always_call=True))
        self._handles.extend(handles)

        def remove() -> None:
            for h in handles:
                h.remove()
                if h in self._handles:
                    self._handles.remove(h)

        return remove

    def detach_scopes(self) -> None:
        """Remove every module hook installed by :meth:`attach_scopes`."""
        for h in self._handles:
            h.remove()
        self._handles.clear()
        self._scope_stack.clear()

    @contextlib.contextmanager
    def scope(self, name: str) -> Iterator[None]:
        """Attribute what is saved inside the block to ``name``."""
        self._scope_stack.append(name)
        try:
            yield
        finally:
            if self._scope_stack and self._scope_stack[-1] == name:
                self._scope_stack.pop()

    # ------------------------------------------------------------------ windows
    def reset(self) -> None:
        """Start a new window: zero the per-window counters; the peak restarts at the live level."""
        self._packed = 0
        self._param_packed = 0
        self._n_saved = 0
        self._peak = self._live
        self._scope_packed: dict[str, int] = defaultdict(int)
        self._scope_peak: dict[str, int] = dict(self._scope_live)

    def snapshot(self) -> SavedBytes:
        """The current window's figures (a frozen copy)."""
        return SavedBytes(
            packed_bytes=self._packed,
            peak_live_bytes=self._peak,
            live_bytes=self._live,
            param_bytes=self._param_packed,
            n_saved=self._n_saved,
            per_scope=dict(self._scope_packed),
            per_scope_peak={k: v for k, v in self._scope_peak.items() if v},
        )

    @property
    def live_bytes(self) -> int:
        return self._live

    def __enter__(self) -> SavedTensorAccountant:
        if self._hooks_cm is not None:
            raise RuntimeError("SavedTensorAccountant is already active; it does not nest")
        self._hooks_cm = torch.autograd.graph.saved_tensors_hooks(self._pack, self._unpack)
        self._hooks_cm.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        cm, self._hooks_cm = self._hooks_cm, None
        if cm is not None:
            cm.__exit__(*exc)

    # ------------------------------------------------------------------ hooks
    def _pack(self, t: Tensor) -> Any:
        self._n_saved += 1
        key, nbytes = storage_key_and_bytes(t)
        is_param = (key in self._param_keys) if key is not None else False
        is_param = is_param or _is_param_like(t)
        if key is None:
            # No nameable storage: count it as its own allocation, never de-duplicated.
            if is_param:
                self._param_packed += nbytes
            else:
                self._packed += nbytes
                self._scope_packed[self._current_scope()] += nbytes
            return _keepable(t)
        refs = self._refs.get(key, 0)
        self._refs[key] = refs + 1
        if refs == 0:
            scope = self._current_scope()
            self._key_bytes[key] = nbytes
            self._key_param[key] = is_param
            self._key_scope[key] = scope
            if is_param:
                self._param_packed += nbytes
            else:
                self._packed += nbytes
                self._scope_packed[scope] += nbytes
                self._live += nbytes
                self._scope_live[scope] += nbytes
                self._peak = max(self._peak, self._live)
                if self._scope_live[scope] > self._scope_peak.get(scope, 0):
                    self._scope_peak[scope] = self._scope_live[scope]
        return _Packed(_keepable(t), key, self)

    @staticmethod
    def _unpack(packed: Any) -> Tensor:
        return packed.tensor if isinstance(packed, _Packed) else packed

    def _release(self, key: StorageKey) -> None:
        refs = self._refs.get(key, 0) - 1
        if refs > 0:
            self._refs[key] = refs
            return
        self._refs.pop(key, None)
        nbytes = self._key_bytes.pop(key, 0)
        scope = self._key_scope.pop(key, self.default_scope)
        if not self._key_param.pop(key, False):
            self._live -= nbytes
            self._scope_live[scope] -= nbytes

    def _current_scope(self) -> str:
        return self._scope_stack[-1] if self._scope_stack else self.default_scope


def measure_saved(fn: Callable[[], Any], params: Iterable[Tensor] = ()) -> tuple[Any, SavedBytes]:
    """Run ``fn()`` under a fresh accountant; return its result and the window's figures.

    Convenience for tests and one-off checks: ``out, saved = measure_saved(lambda: m(x))``.
    """
    acct = SavedTensorAccountant(params=params)
    with acct:
        out = fn()
    return out, acct.snapshot()
