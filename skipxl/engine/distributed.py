"""Process-group set-up that works the same under ``deepspeed`` and plain ``python``, and the
few collective helpers the engine uses (each a no-op in a one-process world).

The ``deepspeed`` launcher exports RANK / WORLD_SIZE / LOCAL_RANK / MASTER_ADDR /
MASTER_PORT for every process. A plain ``python recipes/wt103.py`` has none of them, so
we fill in a one-process world on a free local port; DeepSpeed then initialises the
process group itself (gloo on CPU with ``DS_ACCELERATOR=cpu``, NCCL on GPUs).
"""

from __future__ import annotations

import os
import random
import socket
from dataclasses import dataclass

import numpy as np
import torch


@dataclass(frozen=True)
class WorldInfo:
    """Where this process sits in the data-parallel world."""

    rank: int
    local_rank: int
    world_size: int

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def ensure_launch_env() -> WorldInfo:
    """Fill in a single-process world when no launcher set one up; return this rank's place."""
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        os.environ.setdefault("RANK", "0")
        os.environ.setdefault("LOCAL_RANK", "0")
        os.environ.setdefault("WORLD_SIZE", "1")
        os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
        os.environ.setdefault("MASTER_PORT", str(_free_port()))
    os.environ.setdefault("LOCAL_RANK", "0")
    return WorldInfo(
        rank=int(os.environ["RANK"]),
        local_rank=int(os.environ["LOCAL_RANK"]),
        world_size=int(os.environ["WORLD_SIZE"]),
    )


def is_distributed() -> bool:
    """Whether a process group is up (DeepSpeed initialises it; tests may run without one)."""
    return torch.distributed.is_available() and torch.distributed.is_initialized()


def barrier() -> None:
    """Wait for every rank (no-op without a process group)."""
    if is_distributed():
        torch.distributed.barrier()


def all_reduce(t: torch.Tensor, op: str = "sum") -> torch.Tensor:
    """In-place ``sum`` or ``max`` over ranks; returns ``t``. Under NCCL ``t`` must be on the GPU,
    under gloo on the CPU (see :func:`collective_device`)."""
    if is_distributed():
        ops = {"sum": torch.distributed.ReduceOp.SUM, "max": torch.distributed.ReduceOp.MAX}
        torch.distributed.all_reduce(t, op=ops[op])
    return t


def collective_device(device: torch.device | str) -> torch.device:
    """Where a tensor must live for a collective: ``device`` under NCCL, the CPU under gloo."""
    if is_distributed() and torch.distributed.get_backend() == "nccl":
        return torch.device(device)
    return torch.device("cpu")


def agree(local: bool, device: torch.device | str = "cpu") -> bool:
    """True on every rank if it is true on any (e.g. a signal that reached ranks one step apart)."""
    if not is_distributed() or torch.distributed.get_world_size() == 1:
        return local
    flag = torch.tensor([1.0 if local else 0.0], device=collective_device(device))
    return bool(all_reduce(flag, "max").item() > 0)


def agree_max(local: int, device: torch.device | str = "cpu") -> int:
    """The largest of every rank's ``local`` (e.g. the stop reason: a signal number, 0 = none)."""
    if not is_distributed() or torch.distributed.get_world_size() == 1:
        return local
    value = torch.tensor([float(local)], device=collective_device(device))
    return int(all_reduce(value, "max").item())


def seed_everything(seed: int, deterministic: bool = False) -> None:
    """Seed python, numpy and torch; optionally ask PyTorch for deterministic kernels."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.deterministic = True
        torch.backends.cudnn.benchmark = False


def ensure_accelerator_env() -> str:
    """Pick DeepSpeed's accelerator before it is imported: CPU unless CUDA is usable.

    DeepSpeed decides its accelerator on import; on a machine without a GPU we set
    ``DS_ACCELERATOR=cpu`` explicitly so that it uses gloo and never probes for CUDA ops.
    """
    if "DS_ACCELERATOR" not in os.environ:
        os.environ["DS_ACCELERATOR"] = "cuda" if torch.cuda.is_available() else "cpu"
    return os.environ["DS_ACCELERATOR"]


def shutdown_multi_rank() -> None:
    """Leave a multi-rank process group cleanly at the end of a launched job: barrier, destroy.

    Ranks finish together and no rank exits while a peer still talks to it. This does not stop
    an occasional abort later in interpreter teardown on CPU ("terminate called without an
    active exception", exit -6, most likely DeepSpeed's shared-memory comm op); see
    tests/ds_worker.py. One-process worlds are left alone.
    """
    if is_distributed() and torch.distributed.get_world_size() > 1:
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()
