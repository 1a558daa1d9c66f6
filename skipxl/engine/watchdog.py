"""A multi-rank job never hangs silently: heartbeat files per rank and a watchdog that names the
rank that stopped answering.

Why: when one rank freezes (SIGSTOP, a stuck file system, a deadlocked kernel), every other rank
blocks in its next collective; gloo and NCCL only give up after the process group's timeout (10
minutes by default) and then name no culprit. Each rank's watchdog thread therefore writes
``RUN_DIR/heartbeats/rank_R.json`` (pid, step, time) every ``interval`` seconds, also while its
main thread waits in a collective, and reads its peers' files. A peer whose heartbeat is older
than ``timeout_s`` is frozen or dead: the watchdog prints one ``error:`` line naming it (rank,
pid, last step) and ends this process with :data:`EXIT_HUNG`. A rank that fails writes
``failed`` into its heartbeat, so its peers stop at once instead of waiting in a barrier; a
rank that finished writes ``done`` and is no longer watched.

A one-process world has no peer to wait for; the watchdog is off there.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from pathlib import Path
from typing import Any

HEARTBEATS = "heartbeats"
#: Exit status of a rank whose watchdog found a frozen, dead or failed peer (as timeout(1)).
EXIT_HUNG = 124


class Watchdog:
    """Heartbeat writer and peer checker for one rank (see the module docstring)."""

    def __init__(self, run_dir: Path, *, rank: int, world_size: int, timeout_s: float) -> None:
        self.folder = Path(run_dir) / HEARTBEATS
        self.rank, self.world_size, self.timeout_s = rank, world_size, float(timeout_s)
        self.interval = max(0.05, min(1.0, self.timeout_s / 10))
        self.step = 0
        self.started = time.time()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def enabled(self) -> bool:
        return self.world_size > 1 and self.timeout_s > 0

    def start(self) -> Watchdog:
        if self.enabled:
            self.folder.mkdir(parents=True, exist_ok=True)
            self._write("running")
            self._thread = threading.Thread(target=self._run, name="skipxl-watchdog", daemon=True)
            self._thread.start()
        return self

    def beat(self, step: int) -> None:
        """Called by the loop after each step (the thread writes it with the next heartbeat)."""
        self.step = step

    def close(self, failed: bool = False) -> None:
        if self._thread is None:
            return
        self._stop.set()
        self._thread.join()
        self._thread = None
        self._write("failed" if failed else "done")

    # ------------------------------------------------------------------ the thread
    def _path(self, rank: int) -> Path:
        return self.folder / f"rank_{rank:05d}.json"

    def _write(self, status: str) -> None:
        beat = {
            "rank": self.rank,
            "pid": os.getpid(),
            "step": self.step,
            "time": time.time(),
            "status": status,
        }
        tmp = self.folder / f".rank_{self.rank:05d}.{os.getpid()}.tmp"
        try:
            tmp.write_text(json.dumps(beat))
            os.replace(tmp, self._path(self.rank))
        except OSError:  # a full disk must not kill training; the peers then see a stale heartbeat
            pass

    def _read(self, rank: int) -> dict[str, Any] | None:
        try:
            return json.loads(self._path(rank).read_text())
        except (OSError, ValueError):
            return None

    def problem(self) -> str | None:
        """The first peer that is failed, frozen or dead, as one sentence (None when all answer)."""
        now = time.time()
        for rank in range(self.world_size):
            if rank == self.rank:
                continue
            beat = self._read(rank)
            fresh = beat is not None and beat.get("time", 0) >= self.started
            if fresh and beat["status"] == "done":
                continue
            if fresh and beat["status"] == "failed":
                return f"rank {rank} (pid {beat['pid']}) failed at step {beat['step']}; see its error above"
            last = beat["time"] if fresh else self.started
            if now - last > self.timeout_s:
                who = (
                    f"rank {rank} (pid {beat['pid']}, last at step {beat['step']})"
                    if fresh
                    else f"rank {rank}"
                )
                return (
                    f"{who} has not answered for {now - last:.0f} s (> --collective_timeout_s "
                    f"{self.timeout_s:g}); it is frozen or dead. Stopping this rank; resume with --resume"
                )
        return None

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self._write("running")
            problem = self.problem()
            if problem is not None:
                print(f"error: rank {self.rank}: {problem}", file=sys.stderr, flush=True)
                os._exit(EXIT_HUNG)
