"""Process-group set-up that works the same under ``deepspeed`` and plain ``python``.

The ``deepspeed`` launcher exports RANK / WORLD_SIZE / LOCAL_RANK / MASTER_ADDR /
MASTER_PORT for every process. A plain ``python recipes/wt103.py`` has none of them, so
we fill in a one-process world on a free local port; DeepSpeed then initialises the
process group itself (gloo on CPU with ``DS_ACCELERATOR=cpu``, NCCL on GPUs).
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass


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


def ensure_accelerator_env() -> str:
    """Pick DeepSpeed's accelerator before it is imported: CPU unless CUDA is usable.

    DeepSpeed decides its accelerator on import; on a machine without a GPU we set
    ``DS_ACCELERATOR=cpu`` explicitly so that it uses gloo and never probes for CUDA ops.
    """
    if "DS_ACCELERATOR" not in os.environ:
        import torch

        os.environ["DS_ACCELERATOR"] = "cuda" if torch.cuda.is_available() else "cpu"
    return os.environ["DS_ACCELERATOR"]


def shutdown_multi_rank() -> None:
    """Leave a multi-rank process group cleanly at the end of a launched job: barrier, destroy.

    Ranks finish together and no rank exits while a peer still talks to it. This does not stop
    an occasional abort later in interpreter teardown on CPU ("terminate called without an
    active exception", exit -6, most likely DeepSpeed's shared-memory comm op); see
    tests/ds_worker.py. One-process worlds are left alone.
    """
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.barrier()
        dist.destroy_process_group()
