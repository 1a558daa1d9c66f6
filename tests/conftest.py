"""Fixtures shared by every test module (pytest loads this file first)."""

from __future__ import annotations

import os

import pytest
from engine_helpers import LAUNCH_VARS


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models on a shared 2-core machine: one intra-op thread avoids OpenMP oversubscription
    (2 threads under contention are 10-50x slower); restored after each test."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(autouse=True)
def restore_launch_env():
    """An in-process training run fills RANK/WORLD_SIZE/MASTER_PORT (a one-process world) and keeps its
    rendezvous port bound; remove them afterwards so that later tests' child processes (which inherit
    the environment) pick their own ports."""
    saved = {k: os.environ.get(k) for k in LAUNCH_VARS}
    yield
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
