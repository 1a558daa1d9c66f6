"""``torch.compile`` for the Transformer-XL without a recompilation per step.

Why it would recompile: the memory grows over the first steps (``M = 0, T, 2T, ... mem_len``),
a Skip-Retain memory switches a layer to the gather path (a ``pos_index`` argument appears)
whose position table length changes with the memory's age, cross-head mixing passes a head
index or ``None``, and the evaluation protocol changes the batch, the segment and the memory
length (``tgt_len 64, mem_len 640`` after training with ``150/150``) and turns gradients
off. Dynamo specialises on every shape by default, so each of those would be a new graph,
and after ``recompile_limit`` graphs it gives up and runs the frame eagerly.

``"layers"`` (the one compile mode besides ``"none"``) compiles each
:class:`~skipxl.model.transformer_xl.DecoderLayer` forward with dynamic shapes: before each
call the sequence dimensions (segment, memory, position rows, mask, gather index) are marked
dynamic *outside* the graph, and a position table that is a slice of the model's table gets
its own storage (Dynamo would otherwise guard on the base's size and the slice's offset).
What still makes a new graph is structural and does not depend on the step: memory empty
vs present (a size-0 dimension is always specialised), rel-shift vs gather, a head index vs
none, gradients on vs off (training vs evaluation), and whether ``K`` is a multiple of
``T`` (the rel-shift's reshape is a view or a copy). That is at most a few dozen graphs
whatever the number of steps; every layer runs the same code with its parameters as graph
inputs, so the layers share them. ``tests/test_model_compile.py`` counts them.

Not offered: compiling the whole :class:`TransformerXL` forward. Its host-side memory
bookkeeping (absolute positions as Python ints, the contiguity test, the adaptive softmax's
``nonzero``) breaks it into many graphs that re-specialise as the stream advances: measured
29 graphs after 8 training steps and 39 after another 8 (unbounded), against 8 and 8 here.

Pure torch (no DeepSpeed): the engine calls :func:`compile_model` right after building the model.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from skipxl.errors import require

COMPILE_MODES = ("none", "layers")
"""``"none"``: eager PyTorch; ``"layers"``: each decoder layer compiled (see the module docstring)."""

RECOMPILE_LIMIT = 64
"""Dynamo's per-code-object graph limit while compiled layers are in use (default 8): the
structural variants above can exceed 8 in a run that uses every feature."""


def compile_model(model: nn.Module, mode: str, *, backend: Any = "inductor") -> nn.Module:
    """Compile ``model`` in place according to ``mode`` (one of :data:`COMPILE_MODES`); returns it.

    Parameter names, ``state_dict`` and checkpoints are unchanged (only ``forward`` of each
    layer is replaced). ``backend`` is the ``torch.compile`` backend (tests pass a counter).
    """
    require(mode in COMPILE_MODES, f"compile mode {mode!r} is unknown; choose one of {COMPILE_MODES}")
    if mode == "none":
        return model
    require(hasattr(model, "layers"), "compile='layers' needs a model with .layers (a TransformerXL)")
    dynamo_config = torch._dynamo.config
    dynamo_config.recompile_limit = max(dynamo_config.recompile_limit, RECOMPILE_LIMIT)
    for layer in model.layers:
        _compile_layer(layer, backend)
    return model


def _compile_layer(layer: nn.Module, backend: Any) -> None:
    """Replace ``layer.forward`` by: mark the sequence dims dynamic (outside the graph), then
    call the compiled forward ``(x, mem, r, r_w_bias, r_r_bias, attn_mask, pos_index, head_index)``."""
    compiled = torch.compile(layer.forward, backend=backend, dynamic=True)

    def forward(x: Tensor, mem: Tensor | None, r: Tensor, *rest: Any) -> Tensor:
        if r._base is not None:
            r = r.clone()  # [R, D] own storage (values unchanged)
        attn_mask = rest[2] if len(rest) > 2 else None  # [T, K]
        pos_index = rest[3] if len(rest) > 3 else None  # [T or 1, K]
        for t, dims in ((x, (1,)), (mem, (1,)), (r, (0,)), (attn_mask, (0, 1)), (pos_index, (1,))):
            if t is not None:
                for d in dims:
                    torch._dynamo.maybe_mark_dynamic(t, d)
        return compiled(x, mem, r, *rest)

    layer.forward = forward
