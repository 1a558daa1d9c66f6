"""Layer tying as real weight sharing: a tied layer owns nothing and runs its source's weights.

Dynamic Layer Tying (Hay & Wolf, ICLR 2024, arXiv 2401.12819) describes the model by a
*state vector* ``s`` of length ``N`` (layers): ``s[i] = i`` means layer ``i`` trains its own
weights, ``s[i] = j < i`` means layer ``i`` uses layer ``j``'s weights. This module turns such
a vector into module surgery on an ``nn.ModuleList`` of identical layers, so the saving is
real: a tied layer is a :class:`TiedLayer` that holds *no* parameter, hence no gradient and
no optimizer state, and whose forward runs the weights of the layer that owns them.

The vector is the whole truth: layer ``i`` uses the weights of ``root(i)``, found by
following ``s`` until an owner (``s[k] = k``). If ``i`` is tied to ``j`` and ``j`` later
unties, ``i`` follows ``j``'s new weights; if ``j`` ties elsewhere, ``i`` follows that.

Options (:class:`TyingConfig`), the released code's behaviour available but never the
default:

* ``gradient``: ``"shared"`` (default; true sharing, every use of a weight contributes to
  its gradient, as in ALBERT) or ``"detached"`` (the released code: a copy passes no
  gradient to its source; its forward uses ``source.detach()``).
* ``untie``: ``"copy"`` (default; an untied layer gets its own copy of its source's current
  weights, fresh optimizer state) or ``"alias"`` (the released code: the new parameters
  keep sharing the source's storage, so training either changes both).
* ``start``: ``"tied"`` (default; every layer but the first starts as a real tie to layer
  0, so it owns nothing) or ``"frozen"`` (the released code: the state says "tied to 0"
  but the layers keep their own random weights, merely frozen; an untie unfreezes them).

The module knows nothing of optimizers or engines: :meth:`LayerTying.set_source` returns
a :class:`TyingChange` (parameters that stopped / started existing) for whoever keeps an
optimizer (see ``skipxl.engine.tying_optim``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from skipxl.errors import SkipxlError, require

TYING_GRADIENTS = ("shared", "detached")
UNTIE_MODES = ("copy", "alias")
TYING_STARTS = ("tied", "frozen")


@dataclass(frozen=True)
class TyingConfig:
    """How tying behaves (see the module docstring for each option and its source)."""

    gradient: str = "shared"
    untie: str = "copy"
    start: str = "tied"

    def __post_init__(self) -> None:
        require(
            self.gradient in TYING_GRADIENTS,
            f"tying gradient {self.gradient!r} is unknown; choose one of {TYING_GRADIENTS}",
        )
        require(
            self.untie in UNTIE_MODES, f"untie mode {self.untie!r} is unknown; choose one of {UNTIE_MODES}"
        )
        require(
            self.start in TYING_STARTS, f"tying start {self.start!r} is unknown; choose one of {TYING_STARTS}"
        )


class TiedLayer(nn.Module):
    """Stands in for a tied layer: owns no parameter; forwards through its source module.

    The source is kept in a plain tuple, not registered as a submodule, so
    ``parameters()``, ``state_dict()`` and optimizers never see it through this layer.
    """

    def __init__(self, source: nn.Module, gradient: str) -> None:
        super().__init__()
        self._source = (source,)
        self.gradient = gradient

    @property
    def source(self) -> nn.Module:
        return self._source[0]

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        src = self._source[0]
        if self.gradient == "shared":
            return src(*args, **kwargs)
        # detached: the source's weights as constants (the released code's requires_grad=False copy)
        weights = {name: p.detach() for name, p in src.named_parameters()}
        return torch.func.functional_call(src, weights, args, kwargs)

    def extra_repr(self) -> str:
        return f"gradient={self.gradient}"


@dataclass
class TyingChange:
    """What one tying change did to the set of trainable parameters.

    Attributes:
        removed: parameters that no longer exist in the model (free their optimizer state).
        added: ``(name, parameter)`` of new trainable parameters (give them optimizer state).
    """

    removed: list[nn.Parameter] = field(default_factory=list)
    added: list[tuple[str, nn.Parameter]] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.removed or self.added)

    def extend(self, other: TyingChange) -> None:
        self.removed.extend(other.removed)
        self.added.extend(other.added)


def check_sources(sources: Sequence[int], n_layer: int) -> tuple[int, ...]:
    """Validate a state vector: length ``n_layer``, ``s[0] = 0``, ``0 <= s[i] <= i``."""
    s = tuple(int(x) for x in sources)
    require(len(s) == n_layer, f"tying state has {len(s)} entries for {n_layer} layers")
    require(s[0] == 0, f"layer 0 cannot be tied (state[0] = {s[0]}); it always trains its own weights")
    bad = [i for i, j in enumerate(s) if not 0 <= j <= i]
    require(not bad, f"tying state {s}: layers {bad} point to a later layer; state[i] must be in 0..i")
    return s


def resolve_roots(sources: Sequence[int], owners: Sequence[bool]) -> tuple[int, ...]:
    """``root[i]``: the layer whose weights layer ``i`` runs (follow ``sources`` to an owner)."""
    roots: list[int] = []
    for i, j in enumerate(sources):
        roots.append(i if owners[i] else roots[j])  # j < i, already resolved
    return tuple(roots)


class LayerTying:
    """The tying state of a stack of identical layers, applied by module surgery.

    Args:
        layers: the model's ``nn.ModuleList`` (changed in place).
        make_layer: builds one fresh layer (its weights are overwritten; built on the
            ``meta`` device, so no RNG is consumed).
        cfg: :class:`TyingConfig`.
        prefix: the name of ``layers`` in its model (for :attr:`TyingChange.added` names).
    """

    def __init__(
        self,
        layers: nn.ModuleList,
        make_layer: Callable[[], nn.Module],
        cfg: TyingConfig | None = None,
        prefix: str = "layers",
    ) -> None:
        self.layers, self.make_layer = layers, make_layer
        self.cfg = cfg or TyingConfig()
        self.prefix = prefix
        self.n_layer = len(layers)
        self.sources: tuple[int, ...] = tuple(range(self.n_layer))
        self.frozen: set[int] = set()  # start="frozen": state says tied, weights own and frozen
        self.alias_groups: list[list[int]] = []  # untie="alias": layers whose weights share storage
        self.listeners: list[Callable[[TyingChange], None]] = []  # e.g. an optimizer to keep in step

    def _notify(self, change: TyingChange) -> TyingChange:
        for listener in self.listeners:
            listener(change)
        return change

    # ------------------------------------------------------------------ queries
    def owns(self, i: int) -> bool:
        """Whether layer ``i`` holds weights of its own (trainable or frozen)."""
        return self.sources[i] == i or i in self.frozen

    @property
    def roots(self) -> tuple[int, ...]:
        return resolve_roots(self.sources, [self.owns(i) for i in range(self.n_layer)])

    @property
    def n_independent(self) -> int:
        """Layers that train their own weights (``s[i] = i``)."""
        return sum(1 for i, j in enumerate(self.sources) if i == j)

    def trainable_parameters(self) -> int:
        """Trainable elements held by the layer stack (distinct storages counted once)."""
        seen, total = set(), 0
        for p in self.layers.parameters():
            key = (p.untyped_storage().data_ptr(), p.storage_offset())
            if p.requires_grad and key not in seen:
                seen.add(key)
                total += p.numel()
        return total

    # ------------------------------------------------------------------ changes
    def start(self) -> TyingChange:
        """The method's initial state: every layer but the first tied to layer 0."""
        change = TyingChange()
        for i in range(1, self.n_layer):
            if self.cfg.start == "frozen":
                self.layers[i].requires_grad_(False)
                self.frozen.add(i)
                change.removed.extend(self.layers[i].parameters())
                self.sources = (*self.sources[:i], 0, *self.sources[i + 1 :])
            else:
                change.extend(self._set_source(i, 0))
        self._rewire()
        return self._notify(change)

    def set_source(self, i: int, j: int) -> TyingChange:
        """Layer ``i`` trains its own weights (``j == i``) or uses layer ``j``'s (``j < i``)."""
        return self._notify(self._set_source(i, j))

    def _set_source(self, i: int, j: int) -> TyingChange:
        require(0 <= i < self.n_layer, f"layer {i} does not exist ({self.n_layer} layers)")
        require(0 <= j <= i, f"layer {i} can only be tied to an earlier layer or itself, got {j}")
        change = TyingChange()
        if j == i:
            change = self._untie(i)
        elif self.owns(i):  # an owner (trainable or frozen) becomes a tie: its weights go
            change.removed.extend(self.layers[i].parameters())
            self.frozen.discard(i)
            self._leave_alias_group(i)
            self.layers[i] = TiedLayer(self.layers[0], self.cfg.gradient)  # rewired below
        self.sources = (*self.sources[:i], j, *self.sources[i + 1 :])
        self._rewire()
        return change

    def apply(self, sources: Sequence[int]) -> TyingChange:
        """Move to the state vector ``sources`` (layer by layer, lowest first)."""
        s = check_sources(sources, self.n_layer)
        change = TyingChange()
        for i in range(1, self.n_layer):
            if s[i] != self.sources[i] or (s[i] == i and i in self.frozen):
                change.extend(self._set_source(i, s[i]))
        return self._notify(change)

    def _untie(self, i: int) -> TyingChange:
        change = TyingChange()
        if self.sources[i] == i:
            return change
        if i in self.frozen:  # the released start: the layer had its own frozen weights all along
            self.frozen.discard(i)
            self.layers[i].requires_grad_(True)
        else:
            root = self.roots[i]
            self.layers[i] = self._copy_of(self.layers[root])
            if self.cfg.untie == "alias":
                self._join_alias_group(i, root)
        change.added.extend((f"{self.prefix}.{i}.{n}", p) for n, p in self.layers[i].named_parameters())
        return change

    def _copy_of(self, root: nn.Module) -> nn.Module:
        """A new layer with the root's current weights: copied, or aliased (``untie="alias"``)."""
        with torch.device("meta"):
            new = self.make_layer()
        ref = next(root.parameters())
        new = new.to_empty(device=ref.device).to(ref.dtype)
        with torch.no_grad():
            for (_, p_new), (_, p_root) in zip(new.named_parameters(), root.named_parameters(), strict=True):
                if self.cfg.untie == "alias":
                    p_new.data = p_root.data  # the released code: storage stays shared
                else:
                    p_new.copy_(p_root)
            for (_, b_new), (_, b_root) in zip(new.named_buffers(), root.named_buffers(), strict=True):
                b_new.copy_(b_root)
        new.requires_grad_(True)
        new.train(root.training)
        return new

    def _join_alias_group(self, i: int, root: int) -> None:
        for g in self.alias_groups:
            if root in g:
                g.append(i)
                return
        self.alias_groups.append([root, i])

    def _leave_alias_group(self, i: int) -> None:
        for g in self.alias_groups:
            if i in g:
                g.remove(i)
        self.alias_groups = [g for g in self.alias_groups if len(g) > 1]

    def _rewire(self) -> None:
        """Point every tied layer at the module that owns its weights."""
        roots = self.roots
        for i in range(self.n_layer):
            if not self.owns(i):
                layer = self.layers[i]
                assert isinstance(layer, TiedLayer), f"layer {i} is tied but holds {type(layer).__name__}"
                layer._source = (self.layers[roots[i]],)

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        return {
            "sources": list(self.sources),
            "frozen": sorted(self.frozen),
            "alias_groups": [list(g) for g in self.alias_groups],
            "cfg": {"gradient": self.cfg.gradient, "untie": self.cfg.untie, "start": self.cfg.start},
        }

    def load_state_dict(self, state: dict[str, Any]) -> TyingChange:
        """Rebuild the structure of ``state`` on a freshly built stack (weights are loaded after).

        Owners get (uninitialised) weights of their own; the model's ``load_state_dict`` then
        fills them. Alias groups are restored by sharing storage again.
        """
        saved = state.get("cfg", {})
        mine = {"gradient": self.cfg.gradient, "untie": self.cfg.untie, "start": self.cfg.start}
        if saved and saved != mine:
            raise SkipxlError(
                f"the checkpoint's tying options {saved} differ from this run's {mine}; resume with the same"
            )
        s = check_sources(state["sources"], self.n_layer)
        frozen = {int(i) for i in state.get("frozen", ())}
        change = TyingChange()
        for i in range(1, self.n_layer):
            owner = s[i] == i or i in frozen
            if owner and not self.owns(i):
                self.layers[i] = self._fresh_like(0)
                change.added.extend(
                    (f"{self.prefix}.{i}.{n}", p) for n, p in self.layers[i].named_parameters()
                )
            elif not owner and self.owns(i):
                change.removed.extend(self.layers[i].parameters())
                self.layers[i] = TiedLayer(self.layers[0], self.cfg.gradient)
            if owner:
                self.layers[i].requires_grad_(i not in frozen)
        self.sources, self.frozen = s, frozen
        self.alias_groups = [[int(x) for x in g] for g in state.get("alias_groups", ())]
        for g in self.alias_groups:
            first = self.layers[g[0]]
            for k in g[1:]:
                for p_k, p_0 in zip(self.layers[k].parameters(), first.parameters(), strict=True):
                    p_k.data = p_0.data
        self._rewire()
        return self._notify(change)

    def _fresh_like(self, k: int) -> nn.Module:
        """A new layer with private storage shaped like layer ``k`` (contents loaded later)."""
        with torch.device("meta"):
            new = self.make_layer()
        ref: Tensor = next(self.layers[k].parameters())
        new = new.to_empty(device=ref.device).to(ref.dtype)
        new.train(self.layers[k].training)
        return new


class TiedStack(nn.ModuleList):
    """The layer list of a model with tying: its structure is part of its ``state_dict``.

    ``state_dict()`` holds ``layers._extra_state`` (the :meth:`LayerTying.state_dict`). On
    ``load_state_dict`` PyTorch restores a module's extra state before it visits the
    module's children, so the stack is rebuilt into the saved structure first and the
    owners' weights then load into it (a plain ``strict=True`` load resumes any tying state).
    """

    def __init__(
        self, layers: Sequence[nn.Module], make_layer: Callable[[], nn.Module], cfg: TyingConfig
    ) -> None:
        super().__init__(layers)
        self.tying = LayerTying(self, make_layer, cfg)

    def get_extra_state(self) -> dict[str, Any]:
        return self.tying.state_dict()

    def set_extra_state(self, state: dict[str, Any]) -> None:
        self.tying.load_state_dict(state)
