"""Save a trained method alone (memory / adapters / LoRA + head) and evaluate from it.

What a user keeps per task beside the frozen backbone is one folder::

    method/weights.safetensors   every trained parameter (name -> tensor), nothing else
    method/method.json           the FinetuneConfig that trained it, tensor count, bytes, sha256

:func:`load_method_model` rebuilds the model from the backbone named in the config (the same
``--model``; ``tiny-random`` backbones are rebuilt from the recorded ``init_seed``), attaches
the method's modules exactly as training did and loads the file over them; every tensor in
the file must land on a parameter and every trainable parameter must come from the file.
:func:`evaluate_method_dir` then scores the dev split(s) with the very prediction code the
training run used, so its logits equal the run's ``predictions.json`` bit for bit.

Both files are written atomically (temporary file, then rename).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import torch

from skipxl.config_io import from_dict, save_json, to_dict
from skipxl.errors import SkipxlError

METHOD_DIR = "method"
WEIGHTS_FILE = "weights.safetensors"
CONFIG_FILE = "method.json"
FORMAT_VERSION = 1


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def trained_tensors(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Every parameter that requires a gradient, detached, on the CPU, contiguous."""
    return {n: p.detach().cpu().contiguous() for n, p in model.named_parameters() if p.requires_grad}


def tensor_bytes(tensors: dict[str, torch.Tensor]) -> int:
    return sum(t.numel() * t.element_size() for t in tensors.values())


def save_method(model: torch.nn.Module, cfg: Any, out_dir: str | Path) -> dict[str, Any]:
    """Write ``weights.safetensors`` + ``method.json`` into ``out_dir``; return the JSON record."""
    from safetensors.torch import save_file

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tensors = trained_tensors(model)
    path = out / WEIGHTS_FILE
    tmp = path.with_name(path.name + ".tmp")
    save_file(tensors, str(tmp), metadata={"method": cfg.method, "format": str(FORMAT_VERSION)})
    os.replace(tmp, path)
    record = {
        "format": FORMAT_VERSION,
        "method": cfg.method,
        "tensors": len(tensors),
        "parameters": sum(t.numel() for t in tensors.values()),
        "tensor_bytes": tensor_bytes(tensors),
        "file_bytes": path.stat().st_size,
        "sha256": _sha256(path),
        "finetune_config": to_dict(cfg),
    }
    save_json(record, out / CONFIG_FILE)
    return record


def read_method_config(method_dir: str | Path) -> tuple[dict[str, Any], Any]:
    """``(record, FinetuneConfig)`` of a saved method folder; one clear error if it is not one."""
    from skipxl.glue.finetune import FinetuneConfig

    folder = Path(method_dir)
    cfg_path, weights = folder / CONFIG_FILE, folder / WEIGHTS_FILE
    if not cfg_path.is_file() or not weights.is_file():
        raise SkipxlError(
            f"{folder} holds no {CONFIG_FILE} + {WEIGHTS_FILE}; pass the method/ folder of a finished "
            "run trained with --method spartan|adapter_houlsby|adapter_pfeiffer|lora"
        )
    try:
        record = json.loads(cfg_path.read_text())
    except json.JSONDecodeError as exc:
        raise SkipxlError(f"{cfg_path} is not valid JSON ({exc}); retrain the run") from exc
    if record.get("format") != FORMAT_VERSION:
        raise SkipxlError(f"{cfg_path} has format {record.get('format')!r}, expected {FORMAT_VERSION}")
    if record.get("sha256") != _sha256(weights):
        raise SkipxlError(f"{weights} does not match the sha256 in {cfg_path} (corrupt or replaced)")
    return record, from_dict(FinetuneConfig, record["finetune_config"])


def load_method_model(method_dir: str | Path) -> tuple[torch.nn.Module, Any]:
    """Frozen backbone + the method's modules + the saved tensors -> ``(model in eval mode, cfg)``."""
    from safetensors.torch import load_file

    from skipxl.glue.finetune import build_model

    _, cfg = read_method_config(method_dir)
    model = build_model(cfg)
    tensors = load_file(str(Path(method_dir) / WEIGHTS_FILE))
    params = dict(model.named_parameters())
    unknown = sorted(set(tensors) - set(params))
    trainable = {n for n, p in params.items() if p.requires_grad}
    absent = sorted(trainable - set(tensors))
    if unknown or absent:
        raise SkipxlError(
            f"{method_dir}: the file does not fit the rebuilt model (unknown tensors {unknown[:3]}, "
            f"missing {absent[:3]}); was it trained with another backbone or skipxl version?"
        )
    with torch.no_grad():
        for name, tensor in tensors.items():
            if params[name].shape != tensor.shape:
                raise SkipxlError(
                    f"{method_dir}: tensor {name} has shape {tuple(tensor.shape)}, "
                    f"the model expects {tuple(params[name].shape)}"
                )
            params[name].copy_(tensor)
    return model.eval(), cfg


def evaluate_method_dir(
    method_dir: str | Path, glue_dir: str | None = None, batch_size: int | None = None
) -> dict[str, Any]:
    """Dev metrics and logits of a saved method (the first dev split's logits, example order)."""
    from skipxl.glue.finetune import encode_evals, evaluate
    from skipxl.glue.model import load_tokenizer

    model, cfg = load_method_model(method_dir)
    if glue_dir is not None:
        from dataclasses import replace

        cfg = replace(cfg, glue_dir=str(glue_dir))
    tokenizer = load_tokenizer(cfg.model)
    evals = encode_evals(cfg, tokenizer)
    pad_id = int(tokenizer.pad_token_id or 0)
    metrics, _, logits = evaluate(model, evals, cfg.spec, pad_id, batch_size or cfg.eval_batch_size)
    return {"metrics": metrics, "logits": logits.tolist(), "task": cfg.task, "method": cfg.method}


def main(method_dir: str, glue_dir: str | None = None, batch_size: int | None = None) -> None:
    """``python recipes/glue.py eval RUN/method``: dev metrics from the backbone + the saved file."""
    out = evaluate_method_dir(method_dir, glue_dir, batch_size)
    print(json.dumps({"task": out["task"], "method": out["method"], **out["metrics"]}, sort_keys=True))
