"""Checkpoints that resume exactly and never corrupt the last good one; fp32 export.

Layout under ``RUN_DIR/checkpoints/``::

    latest                    text file naming the newest *complete* tag (replaced atomically)
    step_00001000/            one DeepSpeed checkpoint (model, optimizer, lr scheduler)
        mp_rank_00_model_states.pt ...        written by ``engine.save_checkpoint`` on every rank
        skipxl_rank_00000.pt ...              our per-rank state: RNGs, memories, data position,
                                              the training policies' state

Why per-rank files: DeepSpeed stores ``client_state`` only in the data-parallel rank-0 model
file, but resuming Transformer-XL exactly needs each rank's own state: its dropout RNG, the
memory of each of its streams (one :class:`~skipxl.model.memory.Memory` per micro-step) and
its iterator position.

Crash safety: every rank writes into ``tmp_step_N/``; after a barrier the finalising process
hashes every file into ``manifest.json`` (:mod:`skipxl.engine.integrity`), renames the folder
to ``step_N/`` and only then replaces ``latest`` (write a temporary file, ``os.replace``).
A crash at any point leaves ``latest`` naming a complete checkpoint.

Content integrity: :func:`choose_tag` verifies the folder it picks against its manifest; a
damaged checkpoint (a flipped bit, a truncated, zeroed or deleted file, a bad ``latest``) is
named in a warning and the newest older checkpoint that verifies is loaded instead, or, when
none does, one error names the damage.

Format versions (``client_state["format_version"]``): 1 (no field) was written before the
engine's training policies (issue 11): the Skip-Retain phase in the client state and the model's
plan generator in the rank file; :func:`upgrade` turns it into version 2, so those runs resume.
"""

from __future__ import annotations

import contextlib
import os
import random
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

from skipxl.engine import integrity
from skipxl.engine import run_dir as rd
from skipxl.engine.distributed import barrier as _barrier
from skipxl.errors import SkipxlError

#: The layout of our checkpoint state (see the module docstring); bump it when it changes.
FORMAT_VERSION = 2
LATEST = "latest"
TAG_RE = re.compile(r"^step_(\d+)$")
RANK_FILE = "skipxl_rank_{rank:05d}.pt"


def tag_for(step: int) -> str:
    return f"step_{step:08d}"


# ----------------------------------------------------------------------------- RNG state


def rng_state() -> dict[str, Any]:
    """Every RNG a training step may consume (python, numpy, torch CPU, CUDA when present)."""
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# ----------------------------------------------------------------------------- pointer helpers


def read_latest(ckpt_dir: Path) -> str | None:
    """The tag ``latest`` names, or None when there is none (no file, or not a step tag)."""
    path = Path(ckpt_dir) / LATEST
    if not path.is_file():
        return None
    try:
        tag = path.read_bytes().decode("ascii").strip()
    except (OSError, UnicodeDecodeError):
        return None
    return tag if TAG_RE.match(tag) else None


def step_tags(ckpt_dir: Path) -> list[str]:
    """The ``step_N`` folders of ``ckpt_dir``, newest first."""
    ckpt_dir = Path(ckpt_dir)
    if not ckpt_dir.is_dir():
        return []
    tags = [p.name for p in ckpt_dir.iterdir() if p.is_dir() and TAG_RE.match(p.name)]
    return sorted(tags, key=lambda t: int(TAG_RE.match(t).group(1)), reverse=True)  # type: ignore[union-attr]


def choose_tag(ckpt_dir: Path, tag: str | None = None) -> tuple[str, list[str]]:
    """The checkpoint to load and the warnings about damaged ones skipped on the way.

    An explicit ``tag`` must verify. Otherwise ``latest`` is tried first, then every older
    ``step_N`` folder, newest first; the first one whose files match their manifest wins. When
    ``latest`` is unreadable or names a missing folder, the newest verifying folder wins.
    """
    ckpt_dir = Path(ckpt_dir)
    if tag is not None:
        if not (ckpt_dir / tag).is_dir():
            have = step_tags(ckpt_dir)
            raise SkipxlError(
                f"--tag {tag}: no such checkpoint in {ckpt_dir}; "
                + (f"choose one of {have}" if have else "the run has no checkpoint yet")
            )
        verdict = integrity.verify(ckpt_dir / tag)
        if not verdict.ok:
            raise SkipxlError(f"checkpoint {tag} is damaged: {verdict.problems[0]}; choose another --tag")
        return tag, []
    warnings: list[str] = []
    latest = read_latest(ckpt_dir)
    candidates = step_tags(ckpt_dir)
    if latest is None or latest not in candidates:
        if (ckpt_dir / LATEST).exists():
            warnings.append(
                f"{ckpt_dir / LATEST} does not name an existing checkpoint folder; "
                "using the newest checkpoint that verifies"
            )
    else:
        newer = int(TAG_RE.match(latest).group(1))  # type: ignore[union-attr]
        candidates = [latest] + [t for t in candidates if int(TAG_RE.match(t).group(1)) < newer]  # type: ignore[union-attr]
    if not candidates:
        raise SkipxlError(f"no checkpoint in {ckpt_dir}; train first (a run saves at --save_interval)")
    problems = []
    for candidate in candidates:
        verdict = integrity.verify(ckpt_dir / candidate)
        if verdict.ok:
            if problems:
                warnings.append(f"damaged checkpoint(s) skipped: {'; '.join(problems)}; loading {candidate}")
            return candidate, warnings
        problems.append(f"{candidate}: {verdict.problems[0]}")
    raise SkipxlError(
        f"no intact checkpoint in {ckpt_dir} ({'; '.join(problems)}); restore the files or start a new run"
    )


def _write_latest(ckpt_dir: Path, tag: str) -> None:
    path = Path(ckpt_dir) / LATEST
    tmp = path.with_name(f".{LATEST}.tmp")
    with tmp.open("w") as fh:
        fh.write(tag)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def _prune(ckpt_dir: Path, keep: int, protect: str) -> None:
    tags = sorted(p.name for p in Path(ckpt_dir).iterdir() if p.is_dir() and TAG_RE.match(p.name))
    for tag in tags[:-keep] if keep > 0 else []:
        if tag != protect:
            shutil.rmtree(Path(ckpt_dir) / tag, ignore_errors=True)
    for stale in [*Path(ckpt_dir).glob("tmp_step_*"), *Path(ckpt_dir).glob("trash_step_*")]:
        if stale.is_dir() and stale.name != f"tmp_{protect}":
            shutil.rmtree(stale, ignore_errors=True)


# ----------------------------------------------------------------------------- save / load


def save(
    engine: Any,
    ckpt_dir: Path,
    *,
    step: int,
    client_state: dict[str, Any],
    rank_state: dict[str, Any],
    rank: int,
    local_rank: int,
    world_size: int = 1,
    keep: int = 2,
) -> str:
    """Save a checkpoint on every rank (collective); return its tag.

    ``client_state`` (global: step, phase, configs) goes into DeepSpeed's model file;
    ``rank_state`` (this rank's RNGs, memories, iterator) into our per-rank file.
    """
    ckpt_dir = Path(ckpt_dir)
    tag = tag_for(step)
    tmp_tag = f"tmp_{tag}"
    if local_rank == 0:
        ckpt_dir.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(ckpt_dir / tmp_tag, ignore_errors=True)
    _barrier()
    engine.save_checkpoint(str(ckpt_dir), tag=tmp_tag, client_state=client_state, save_latest=False)
    rank_path = ckpt_dir / tmp_tag / RANK_FILE.format(rank=rank)
    torch.save(rank_state, rank_path.with_suffix(".pt.tmp"))
    os.replace(rank_path.with_suffix(".pt.tmp"), rank_path)
    _barrier()
    # One process per node finalises (on a shared file system the first one wins; the rename of
    # a folder that is already gone is harmless).
    if local_rank == 0 and (ckpt_dir / tmp_tag).is_dir():
        integrity.write_manifest(ckpt_dir / tmp_tag, {"step": step, "world_size": world_size})
        final = ckpt_dir / tag
        if final.exists():  # from an earlier process (a resume that fell back past it): replace it
            trash = ckpt_dir / f"trash_{tag}"
            shutil.rmtree(trash, ignore_errors=True)
            os.replace(final, trash)
        with contextlib.suppress(FileNotFoundError):
            os.replace(ckpt_dir / tmp_tag, final)
        _write_latest(ckpt_dir, tag)
        _prune(ckpt_dir, keep, protect=tag)
    _barrier()
    return tag


def _check_readable(path: Path) -> None:
    """Cheap integrity check before a collective load: ``torch.save`` files are zip archives."""
    import zipfile

    if not zipfile.is_zipfile(path):
        raise SkipxlError(
            f"checkpoint file {path} is unreadable (not a torch.save archive: truncated or damaged); "
            "delete that checkpoint folder and point 'latest' at an older one"
        )


def resolve_tag(ckpt_dir: Path, tag: str | None = None) -> str:
    """The tag to read (:func:`choose_tag`; its warnings go to stderr)."""
    import sys

    tag, warnings = choose_tag(ckpt_dir, tag)
    for warning in warnings:
        print(f"warning: {warning}", file=sys.stderr)
    return tag


def saved_world_size(folder: Path) -> int:
    """How many ranks wrote checkpoint ``folder``: its manifest's per-rank files (the files on
    disk for a checkpoint written before manifests)."""
    verdict = integrity.verify(folder, hash_content=False)
    if verdict.has_manifest:
        return verdict.rank_files()
    return len(list(Path(folder).glob(RANK_FILE.replace("{rank:05d}", "*"))))


def _load_rank_file(folder: Path, rank: int, map_location: Any) -> dict[str, Any]:
    path = folder / RANK_FILE.format(rank=rank)
    if not path.is_file():
        raise SkipxlError(
            f"checkpoint {folder} has no state for rank {rank} ({path.name} is missing); "
            "restore the file or resume from an older checkpoint"
        )
    try:
        return torch.load(path, map_location=map_location, weights_only=False)
    except Exception as exc:
        raise SkipxlError(
            f"checkpoint file {path} is unreadable ({type(exc).__name__}: {exc}); "
            "delete that checkpoint folder and point 'latest' at an older one"
        ) from exc


def load(
    engine: Any,
    ckpt_dir: Path,
    *,
    tag: str,
    rank: int,
    world_size: int,
    accum: int,
    map_location: Any = "cpu",
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Load checkpoint ``tag`` (chosen and verified by :func:`choose_tag`) into ``engine``
    (collective); return ``(client_state, rank_state)``.

    A checkpoint saved by another number of ranks, or with another number of micro-steps per
    rank, is resharded (:mod:`skipxl.engine.reshard`): every rank reads all per-rank files and
    takes its own streams' memories. Under ZeRO 1-3 the engine must then have been built to read
    the universal form that :func:`~skipxl.engine.reshard.to_universal` wrote.
    """
    from skipxl.engine import reshard

    folder = Path(ckpt_dir) / tag
    saved_by = saved_world_size(folder)
    if saved_by == 0:
        raise SkipxlError(f"checkpoint {folder} has no per-rank state files; resume from an older checkpoint")
    for model_file in sorted(folder.glob("*model_states.pt")):
        _check_readable(model_file)
    load_dir = Path(ckpt_dir)
    if saved_by != world_size and engine.zero_optimization():
        if not engine.load_universal_checkpoint():
            raise SkipxlError(
                f"internal: checkpoint {folder} comes from {saved_by} ranks but the engine was not "
                "built to load a universal checkpoint (ds_config checkpoint.load_universal)"
            )
        load_dir = load_dir / reshard.UNIVERSAL
    try:
        load_path, client_state = engine.load_checkpoint(str(load_dir), tag=tag)
    except SkipxlError:
        raise
    except Exception as exc:
        raise SkipxlError(
            f"DeepSpeed could not load checkpoint {folder} "
            f"({type(exc).__name__}: {exc}); the files are damaged or from another "
            "configuration (ZeRO stage)"
        ) from exc
    if load_path is None:
        raise SkipxlError(f"DeepSpeed found no checkpoint at {folder}")
    client_state = client_state or {}
    if client_state.get("world_size", saved_by) != saved_by:
        raise SkipxlError(
            f"checkpoint {folder} was saved by {client_state['world_size']} ranks but holds "
            f"{saved_by} per-rank files; restore the missing files or resume from an older checkpoint"
        )
    if saved_by == world_size and client_state.get("grad_accum", accum) == accum:
        return client_state, _load_rank_file(folder, rank, map_location)
    states = [_load_rank_file(folder, r, map_location) for r in range(saved_by)]
    return client_state, reshard.reshard(states, world_size, accum)[rank]


def upgrade(
    client: dict[str, Any], rank: dict[str, Any], tag: str, policy_names: list[str]
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Bring a loaded ``(client_state, rank_state)`` to :data:`FORMAT_VERSION`, or fail clearly.

    Version 1 (before the training policies): ``client["phase"]`` and ``rank["plan_generator"]``
    become the state of the ``skip_retain`` / ``cross_head`` policies (which share that generator),
    ``rank["mems"]`` and ``client["step"]`` the trainer's state.
    """
    version = int(client.get("format_version", 1))
    if version == FORMAT_VERSION:
        return client, rank
    if version > FORMAT_VERSION:
        raise SkipxlError(
            f"checkpoint {tag} has format version {version}, newer than this skipxl reads "
            f"({FORMAT_VERSION}); resume it with the skipxl version that wrote it"
        )
    missing = [k for k in ("step", "phase") if k not in client] + [
        k for k in ("plan_generator", "mems") if k not in rank
    ]
    if missing:
        raise SkipxlError(
            f"checkpoint {tag} is a format version 1 checkpoint (written before skipxl's training "
            f"policies) but lacks {missing}; it cannot be resumed, start a new run"
        )
    policies: dict[str, Any] = {}
    for name in policy_names:
        if name == "skip_retain":
            policies[name] = {"phase": client["phase"], "generator": rank["plan_generator"]}
        elif name == "cross_head":
            policies[name] = {"generator": rank["plan_generator"]}
        else:
            raise SkipxlError(
                f"checkpoint {tag} is a format version 1 checkpoint (written before skipxl's training "
                f"policies) and has no state for policy {name!r}; resume without it or start a new run"
            )
    client = {**client, "format_version": FORMAT_VERSION, "policies": policy_names}
    rank = {
        "rng": rank["rng"],
        "iterator": rank["iterator"],
        "train_state": {"step": int(client["step"]), "mems": rank["mems"]},
        "policies": policies,
    }
    return client, rank


# ----------------------------------------------------------------------------- fp32 export


def fp32_state_dict(ckpt_dir: Path, tag: str | None = None) -> dict[str, torch.Tensor]:
    """A plain fp32 ``state_dict`` from a DeepSpeed checkpoint of any ZeRO stage.

    ZeRO 1-3 (and bf16 master weights) are consolidated from the optimizer partitions with
    DeepSpeed's ``zero_to_fp32``; a stage-0 fp32 checkpoint already holds the full module.
    """
    ckpt_dir = Path(ckpt_dir)
    tag = resolve_tag(ckpt_dir, tag)
    folder = ckpt_dir / tag
    has_zero = any(folder.glob("*zero_pp_rank_*optim_states.pt"))
    try:
        if has_zero:
            from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

            state = get_fp32_state_dict_from_zero_checkpoint(str(ckpt_dir), tag=tag)
        else:
            model_file = folder / "mp_rank_00_model_states.pt"
            if not model_file.is_file():
                raise SkipxlError(
                    f"{folder} has no mp_rank_00_model_states.pt; is it a DeepSpeed checkpoint?"
                )
            state = torch.load(model_file, map_location="cpu", weights_only=False)["module"]
    except SkipxlError:
        raise
    except Exception as exc:
        raise SkipxlError(
            f"checkpoint {folder} is unreadable ({type(exc).__name__}: {exc}); "
            "delete it and point 'latest' at an older one"
        ) from exc
    # Non-tensor entries (a tied layer stack's structure, ``layers._extra_state``) pass through.
    return {
        k: (v.float() if v.is_floating_point() else v).contiguous() if torch.is_tensor(v) else v
        for k, v in state.items()
    }


#: Export formats: ``safetensors`` (skipxl's own names, loads with :func:`load_exported`) and
#: ``original`` (the original Transformer-XL ``MemTransformerLM`` state dict + its constructor
#: arguments, through :mod:`skipxl.convert`).
EXPORT_FORMATS = ("safetensors", "original")
SAFETENSORS_FILE = "model.safetensors"
ORIGINAL_FILE = "model_original.pt"
VOCAB_FILE = "vocab.json"


def _save_safetensors(state: dict[str, torch.Tensor], path: Path) -> None:
    """Atomic ``safetensors`` write; tied weights are stored once per name (no shared storage)."""
    from safetensors.torch import save_file

    tmp = path.with_name(path.name + ".tmp")
    save_file(
        {k: v.detach().clone().contiguous() for k, v in state.items()}, str(tmp), metadata={"format": "pt"}
    )
    os.replace(tmp, path)


def export(
    run_dir: Path,
    *,
    tag: str | None = None,
    out: Path | None = None,
    format: str = "safetensors",
    vocab: bool = True,
) -> Path:
    """Write an inference export of a run: weights, ``config.json`` and the vocabulary.

    ``format="safetensors"``: ``model.safetensors`` (plain fp32, no pickle), which
    :func:`load_exported` rebuilds without DeepSpeed. ``format="original"``:
    ``model_original.pt`` = ``{"state_dict", "hparams"}`` for the original implementation's
    ``MemTransformerLM(**hparams).load_state_dict(state_dict)`` (``skipxl import-original``
    reads it back). ``vocab.json`` is the run's vocabulary (``Vocab.load``), so ids decode to
    words; ``vocab=False`` skips it when the corpus is not at hand.
    """
    from skipxl.config_io import load_json, save_json

    if format not in EXPORT_FORMATS:
        raise SkipxlError(f"unknown export --format {format!r}; choose one of {EXPORT_FORMATS}")
    run_dir = Path(run_dir)
    config = load_json(run_dir / rd.CONFIG)
    tag = resolve_tag(run_dir / rd.CHECKPOINTS, tag)
    state = fp32_state_dict(run_dir / rd.CHECKPOINTS, tag)
    out = Path(out) if out is not None else run_dir / rd.EXPORT
    out.mkdir(parents=True, exist_ok=True)
    # Non-tensor entries (a tied layer stack's structure) go into config.json, not the weights file.
    extra_state = {k: v for k, v in state.items() if not torch.is_tensor(v)}
    if format == "safetensors":
        _save_safetensors({k: v for k, v in state.items() if torch.is_tensor(v)}, out / SAFETENSORS_FILE)
    else:
        from skipxl.convert import original_hparams, to_original
        from skipxl.model import ModelConfig, TransformerXL

        cfg = ModelConfig.from_dict(config["model"])
        model = TransformerXL(cfg)
        model.load_state_dict(state)
        tmp = out / (ORIGINAL_FILE + ".tmp")
        torch.save({"state_dict": to_original(model), "hparams": original_hparams(cfg)}, tmp)
        os.replace(tmp, out / ORIGINAL_FILE)
    if vocab:
        _export_vocab(config, out / VOCAB_FILE)
    save_json(
        {
            "model": config["model"],
            "data": config.get("data"),
            "variant": config.get("variant"),
            "preset": config.get("preset"),
            "format": format,
            "source_run": str(run_dir.resolve()),
            "checkpoint": tag,
            "extra_state": extra_state,
        },
        out / "config.json",
    )
    return out


def _export_vocab(config: dict[str, Any], path: Path) -> None:
    from skipxl.config_io import from_dict
    from skipxl.data import DataConfig, load_corpus

    try:
        corpus = load_corpus(from_dict(DataConfig, config["data"]))
    except SkipxlError as exc:
        raise SkipxlError(
            f"the run's vocabulary cannot be loaded ({exc}); pass --vocab False to export without it"
        ) from None
    corpus.vocab.save(path)


def import_original(path: Path, out: Path, *, hparams: dict[str, Any] | None = None) -> Path:
    """An export folder (``model.safetensors`` + ``config.json``) from an original-format file.

    ``path`` holds ``{"state_dict", "hparams"}`` (what ``skipxl export --format original``
    writes) or a bare original ``state_dict``, whose constructor arguments ``hparams`` gives.
    """
    from skipxl.config_io import save_json, to_dict
    from skipxl.convert import from_original

    path = Path(path)
    if not path.is_file():
        raise SkipxlError(f"{path} does not exist; pass an original Transformer-XL state dict file")
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise SkipxlError(
            f"{path} is unreadable ({type(exc).__name__}: {exc}); pass a torch.save file"
        ) from exc
    if isinstance(blob, dict) and "state_dict" in blob:
        state, stored = blob["state_dict"], blob.get("hparams")
    else:
        state, stored = blob, None
    params = hparams if hparams is not None else stored
    if params is None:
        raise SkipxlError(
            f"{path} is a bare state dict; pass --hparams with the original constructor's arguments "
            '(e.g. \'{"n_token": 267735, "n_layer": 16, ...}\')'
        )
    model = from_original(state, **params)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    _save_safetensors(model.state_dict(), out / SAFETENSORS_FILE)
    save_json(
        {"model": to_dict(model.cfg), "format": "safetensors", "source": str(path.resolve())},
        out / "config.json",
    )
    return out


def load_exported(path: Path) -> torch.nn.Module:
    """Rebuild a :class:`~skipxl.model.TransformerXL` from an ``export`` folder (eval mode).

    Reads ``model.safetensors`` (or ``model.pt`` from exports of earlier versions).
    """
    from skipxl.config_io import load_json
    from skipxl.model import ModelConfig, TransformerXL

    path = Path(path)
    exported = load_json(path / "config.json")
    cfg = ModelConfig.from_dict(exported["model"])
    model = TransformerXL(cfg)
    weights = path / SAFETENSORS_FILE
    if not weights.is_file() and (path / "model.pt").is_file():
        weights = path / "model.pt"
    try:
        if weights.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(weights))
        else:
            state = torch.load(weights, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise SkipxlError(f"{weights} does not exist; run `skipxl export RUN_DIR` first") from None
    except Exception as exc:
        raise SkipxlError(f"{weights} is unreadable ({type(exc).__name__}: {exc}); re-export it") from exc
    state.setdefault("pos_emb.inv_freq", model.state_dict()["pos_emb.inv_freq"])
    state.update(exported.get("extra_state") or {})  # e.g. the tying structure, restored before the weights
    model.load_state_dict(state)
    return model.eval()
