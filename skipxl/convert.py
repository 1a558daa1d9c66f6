"""Load checkpoints of the original Transformer-XL PyTorch code (and write them back).

The original (Dai et al. 2019, ``kimiyoung/transformer-xl``, ``pytorch/mem_transformer.py``)
builds ``MemTransformerLM(n_token, n_layer, n_head, d_model, d_head, d_inner, dropout,
dropatt, tie_weight=True, d_embed=None, div_val=1, tie_projs=[False], pre_lnorm=False,
tgt_len=None, ext_len=None, mem_len=None, cutoffs=[], adapt_inp=False, same_length=False,
attn_type=0, clamp_len=-1, sample_softmax=-1)``. :func:`from_original` takes a state dict
of that model plus the same keyword arguments and returns an equivalent
:class:`~skipxl.model.TransformerXL` (same parameter names, so the mapping is by name; the
layout change time-major -> batch-major is in the activations, not the weights).

Only ``attn_type=0`` (relative partial-learnable attention, the released models) and the
(projected adaptive) full softmax are supported; sampled softmax is refused.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from skipxl.errors import SkipxlError, require
from skipxl.model.config import ModelConfig
from skipxl.model.transformer_xl import TransformerXL

REQUIRED = ("n_token", "n_layer", "n_head", "d_model", "d_head", "d_inner", "dropout", "dropatt")
DEFAULTS: dict[str, Any] = {
    "tie_weight": True,
    "d_embed": None,
    "div_val": 1,
    "tie_projs": [False],
    "pre_lnorm": False,
    "tgt_len": None,
    "ext_len": None,
    "mem_len": None,
    "cutoffs": [],
    "adapt_inp": False,
    "same_length": False,
    "attn_type": 0,
    "clamp_len": -1,
    "sample_softmax": -1,
}


def config_from_original(extra: Mapping[str, Any] | None = None, **hparams: Any) -> ModelConfig:
    """The :class:`ModelConfig` for the original constructor's keyword arguments.

    ``extra`` holds skipxl-only fields (``positions``, ``skip``, ``cross_head``, ``init*``,
    ``plan_seed``) to set on top.
    """
    unknown = sorted(set(hparams) - set(REQUIRED) - set(DEFAULTS))
    require(
        not unknown,
        f"unknown Transformer-XL hyper-parameter(s) {unknown}; the original constructor takes "
        f"{list(REQUIRED) + list(DEFAULTS)}",
    )
    missing = [k for k in REQUIRED if k not in hparams]
    require(not missing, f"missing Transformer-XL hyper-parameter(s) {missing}; pass them as keywords")
    hp = {**DEFAULTS, **hparams}
    require(
        hp["attn_type"] == 0,
        f"attn_type={hp['attn_type']} is not supported; skipxl implements the relative "
        "partial-learnable attention (attn_type=0) of the released Transformer-XL models",
    )
    require(
        hp["sample_softmax"] is None or hp["sample_softmax"] <= 0,
        f"sample_softmax={hp['sample_softmax']} (sampled softmax) is not supported; convert a "
        "model trained with the adaptive/full softmax (sample_softmax=-1)",
    )
    require(
        hp["tgt_len"] is not None and hp["mem_len"] is not None,
        "tgt_len and mem_len are required (the original cannot be built without them); pass the "
        "values the checkpoint was trained or will be evaluated with",
    )
    cutoffs = tuple(int(c) for c in hp["cutoffs"])
    tie_list = [bool(t) for t in hp["tie_projs"]]
    require(
        len(tie_list) <= len(cutoffs) + 1,
        f"tie_projs has {len(tie_list)} entries for {len(cutoffs) + 1} clusters",
    )
    tie_list += [False] * (len(cutoffs) + 1 - len(tie_list))
    canonical = [False] + [True] * len(cutoffs)
    tie_projs: bool | tuple[bool, ...]
    if tie_list == canonical and cutoffs:
        tie_projs = True
    elif not any(tie_list):
        tie_projs = False
    else:
        tie_projs = tuple(tie_list)
    clamp = int(hp["clamp_len"])
    fields = dict(
        n_token=int(hp["n_token"]),
        n_layer=int(hp["n_layer"]),
        n_head=int(hp["n_head"]),
        d_model=int(hp["d_model"]),
        d_head=int(hp["d_head"]),
        d_inner=int(hp["d_inner"]),
        dropout=float(hp["dropout"]),
        dropatt=float(hp["dropatt"]),
        tie_weight=bool(hp["tie_weight"]),
        d_embed=None
        if hp["d_embed"] is None or hp["d_embed"] < 0 or hp["d_embed"] == hp["d_model"]
        else int(hp["d_embed"]),
        div_val=int(hp["div_val"]),
        tie_projs=tie_projs,
        pre_lnorm=bool(hp["pre_lnorm"]),
        tgt_len=int(hp["tgt_len"]),
        ext_len=0 if hp["ext_len"] is None else int(hp["ext_len"]),
        mem_len=int(hp["mem_len"]),
        cutoffs=cutoffs,
        same_length=bool(hp["same_length"]),
        clamp_len=clamp if clamp > 0 else -1,
    )
    fields.update(dict(extra or {}))
    return ModelConfig(**fields)


def original_hparams(cfg: ModelConfig) -> dict[str, Any]:
    """The original constructor's keyword arguments for ``cfg`` (inverse of the above)."""
    return {
        "n_token": cfg.n_token,
        "n_layer": cfg.n_layer,
        "n_head": cfg.n_head,
        "d_model": cfg.d_model,
        "d_head": cfg.d_head,
        "d_inner": cfg.d_inner,
        "dropout": cfg.dropout,
        "dropatt": cfg.dropatt,
        "tie_weight": cfg.tie_weight,
        "d_embed": cfg.d_embed_resolved,
        "div_val": cfg.div_val,
        "tie_projs": list(cfg.tie_projs_list),
        "pre_lnorm": cfg.pre_lnorm,
        "tgt_len": cfg.tgt_len,
        "ext_len": cfg.ext_len,
        "mem_len": cfg.mem_len,
        "cutoffs": list(cfg.cutoffs),
        "same_length": cfg.same_length,
        "attn_type": 0,
        "clamp_len": cfg.clamp_len,
        "sample_softmax": -1,
    }


def _strip_prefix(state_dict: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Drop a ``module.`` prefix (DataParallel / DDP checkpoints) present on every key."""
    keys = list(state_dict)
    if keys and all(k.startswith("module.") for k in keys):
        return {k[len("module.") :]: v for k, v in state_dict.items()}
    return dict(state_dict)


def _alias_groups(model: TransformerXL) -> list[list[str]]:
    """State-dict names grouped by shared storage (tied weights share one group)."""
    groups: dict[tuple[int, tuple[int, ...]], list[str]] = {}
    for name, tensor in model.state_dict(keep_vars=True).items():
        key = (tensor.data_ptr(), tuple(tensor.shape)) if tensor.numel() > 0 else (id(tensor), ())
        groups.setdefault(key, []).append(name)
    return list(groups.values())


def from_original(
    state_dict: Mapping[str, Tensor], extra: Mapping[str, Any] | None = None, **hparams: Any
) -> TransformerXL:
    """Build a :class:`TransformerXL` from an original ``MemTransformerLM`` state dict.

    Args:
        state_dict: the original model's ``state_dict()`` (a ``module.`` prefix is dropped).
        extra: skipxl-only :class:`ModelConfig` fields to set (e.g. ``skip``, ``positions``).
        **hparams: the original constructor's keyword arguments.
    Raises:
        SkipxlError: unsupported options, or one message listing every missing,
            unexpected and shape-mismatched key (and tied weights that differ).
    """
    cfg = config_from_original(extra, **hparams)
    model = TransformerXL(cfg)
    sd = _strip_prefix(state_dict)
    expected = model.state_dict()
    problems: list[str] = []
    unexpected = sorted(set(sd) - set(expected))
    if unexpected:
        problems.append(f"unexpected keys {unexpected}")
    mismatched = [
        f"{k}: checkpoint {tuple(sd[k].shape)} vs model {tuple(v.shape)}"
        for k, v in expected.items()
        if k in sd and tuple(sd[k].shape) != tuple(v.shape)
    ]
    if mismatched:
        problems.append(f"shape mismatches {mismatched}")
    missing: list[str] = []
    loaded: dict[str, Tensor] = {}
    for group in _alias_groups(model):
        present = [k for k in group if k in sd]
        if not present:
            if group != ["pos_emb.inv_freq"]:  # a fixed buffer: rebuilt from d_model
                missing.extend(group)
            continue
        first = sd[present[0]]
        for other in present[1:]:
            if tuple(sd[other].shape) == tuple(first.shape) and not torch.equal(sd[other], first):
                problems.append(
                    f"{present[0]} and {other} are tied in this configuration but differ in the "
                    "checkpoint; pass tie_weight=False / tie_projs=[False, ...] as it was trained"
                )
        for k in group:
            loaded[k] = first
    if missing:
        problems.append(f"missing keys {sorted(missing)}")
    if problems:
        raise SkipxlError(
            "the checkpoint does not match the Transformer-XL built from these hyper-parameters: "
            + "; ".join(problems)
            + ". Check n_layer / d_model / cutoffs / div_val / d_embed / tie_* against the training script."
        )
    loaded.setdefault("pos_emb.inv_freq", expected["pos_emb.inv_freq"])
    model.load_state_dict(loaded, strict=True)
    return model


def to_original(model: TransformerXL) -> dict[str, Tensor]:
    """The original ``MemTransformerLM`` state dict of ``model`` (tied weights appear
    under every name, as the original's own ``state_dict()`` lists them)."""
    return {k: v.detach().clone() for k, v in model.state_dict().items()}
