"""Keep an optimizer in step with a model whose set of parameters changes (layer tying).

Dynamic Layer Tying (arXiv 2401.12819) removes a layer's parameters when it ties and
creates new ones when it unties (:mod:`skipxl.model.tying`). For the memory saving to be
real the optimizer must follow: a removed parameter loses its state (Adam moments), a new
one joins the parameter group of the same role (``layers.3.pos_ff.CoreNet.0.weight`` joins
the group holding ``layers.0.pos_ff.CoreNet.0.weight``) with fresh state. The groups are
rebuilt in the model's parameter order, so a run that re-applies the same tying state to a
fresh model gets the same group layout and ``optimizer.load_state_dict`` resumes exactly.

DeepSpeed (checked in :func:`require_dynamic_parameters`): only ZeRO stage 0 in fp32 hands
the client ``torch.optim`` optimizer straight to the engine and reads ``module.parameters()``
afresh at every all-reduce and gradient clip. ZeRO 1/2 copy the parameters into flat fp32
partitions at start-up, ZeRO-3 partitions them behind hooks, and bf16/fp16 at stage 0 keep
flat fp32 master copies: there a tie would neither free anything nor stop its layer from
training, and an untied layer would never be optimised. Rebuilding the engine at every
tying change (every 4 optimizer steps in the method) would lose or re-flatten the
optimizer state each time, so skipxl refuses those configurations instead.
"""

from __future__ import annotations

import re

import torch
from torch import nn

from skipxl.errors import SkipxlError

_LAYER_NAME = re.compile(r"^(.*\blayers\.)\d+(\..+)$")


def parameter_role(name: str) -> str:
    """``layers.3.dec_attn.o_net.weight`` -> ``layers.*.dec_attn.o_net.weight`` (others unchanged)."""
    m = _LAYER_NAME.match(name)
    return f"{m.group(1)}*{m.group(2)}" if m else name


def sync_optimizer(optimizer: torch.optim.Optimizer, model: nn.Module) -> None:
    """Make ``optimizer`` hold exactly ``model``'s trainable parameters, in model order.

    Parameters already in a group stay there (with their state); new ones join the group of
    a parameter with the same :func:`parameter_role`; parameters gone from the model (or
    frozen) leave their group and their state is dropped.
    """
    groups = optimizer.param_groups
    where = {id(p): g for g, group in enumerate(groups) for p in group["params"]}
    role_group: dict[str, int] = {}
    for name, p in model.named_parameters():
        if id(p) in where:
            role_group.setdefault(parameter_role(name), where[id(p)])
    lists: list[list[nn.Parameter]] = [[] for _ in groups]
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        g = where.get(id(p), role_group.get(parameter_role(name)))
        if g is None:
            if len(groups) != 1:
                raise SkipxlError(
                    f"new parameter {name} matches no optimizer parameter group by role; "
                    "give the optimizer a group holding layer 0's parameters"
                )
            g = 0
        lists[g].append(p)
    live = {id(p) for ps in lists for p in ps}
    for p in list(optimizer.state):
        if id(p) not in live:
            del optimizer.state[p]
    for group, ps in zip(groups, lists, strict=True):
        group["params"] = ps


def optimizer_state_tensors(optimizer: torch.optim.Optimizer) -> int:
    """Bytes of the tensors in ``optimizer.state`` (Adam moments, steps)."""
    return sum(
        v.numel() * v.element_size()
        for state in optimizer.state.values()
        for v in state.values()
        if isinstance(v, torch.Tensor)
    )


def require_dynamic_parameters(zero_stage: int, precision: str, what: str = "variant 'dlt'") -> None:
    """Refuse DeepSpeed set-ups that fix the parameter set at start-up (see the module docstring)."""
    if zero_stage != 0 or precision != "fp32":
        raise SkipxlError(
            f"{what} adds and removes parameters during training, but DeepSpeed ZeRO stage {zero_stage} "
            f"with {precision} flattens parameters and optimizer state at start-up (a tied layer would "
            "keep its memory and an untied one would never train); use a ZeRO stage 0 fp32 config "
            "(--ds_config cpu or zero0_fp32)"
        )
