"""Content integrity of checkpoints and run folders: SHA-256 manifests and the run checker.

Why: a checkpoint that unpickles is not necessarily the checkpoint that was written. A flipped
bit inside a tensor's bytes loads without complaint and silently changes the weights, the
optimizer moments or a Transformer-XL memory, so a resumed run diverges with exit status 0.
Every checkpoint folder therefore carries ``manifest.json``: the size and SHA-256 of each of its
files, written (atomically) by the process that finalises the save, after every rank has
written its files and *before* ``latest`` moves. A resume verifies the folder it is about to
load and falls back to the newest older checkpoint that verifies (``keep_checkpoints`` keeps
one); ``skipxl runs check RUN_DIR`` verifies a whole run folder without changing it.

Checkpoints written before manifests existed have none; they load as *unverified* (a warning),
so old runs keep resuming.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

MANIFEST = "manifest.json"
_CHUNK = 1 << 20


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with Path(path).open("rb") as fh:
        while chunk := fh.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _files(folder: Path) -> list[Path]:
    return sorted(p for p in Path(folder).rglob("*") if p.is_file() and p.name != MANIFEST)


def write_manifest(folder: Path, extra: dict[str, Any] | None = None) -> Path:
    """Hash every file of ``folder`` into ``folder/manifest.json`` (written atomically, fsynced)."""
    folder = Path(folder)
    files = {
        p.relative_to(folder).as_posix(): {"bytes": p.stat().st_size, "sha256": sha256_file(p)}
        for p in _files(folder)
    }
    manifest = {"algorithm": "sha256", "files": files, **(extra or {})}
    path = folder / MANIFEST
    tmp = folder / f".{MANIFEST}.tmp"
    with tmp.open("w", encoding="utf-8") as fh:
        json.dump(manifest, fh, indent=1, sort_keys=True)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    return path


@dataclass
class Verdict:
    """What :func:`verify` found in one checkpoint folder."""

    folder: Path
    has_manifest: bool = True
    problems: list[str] = field(default_factory=list)
    files: dict[str, Any] = field(default_factory=dict)
    #: the world size the manifest records (None before resumes on other world sizes existed)
    world_size: int | None = None

    @property
    def ok(self) -> bool:
        return not self.problems

    def rank_files(self) -> int:
        return sum(1 for name in self.files if name.startswith("skipxl_rank_"))


def verify(folder: Path, *, hash_content: bool = True) -> Verdict:
    """Check ``folder`` against its manifest: every listed file present, same size, same SHA-256.

    A folder without a manifest (written before manifests existed) is ``has_manifest=False``
    with no problems: it cannot be verified, only loaded.
    """
    folder = Path(folder)
    verdict = Verdict(folder)
    if not folder.is_dir():
        verdict.problems.append(f"{folder} is missing")
        return verdict
    path = folder / MANIFEST
    if not path.is_file():
        verdict.has_manifest = False
        return verdict
    try:
        manifest = json.loads(path.read_bytes().decode("utf-8"))
        files = manifest["files"]
        assert isinstance(files, dict)
    except Exception:
        verdict.problems.append(f"{path} is unreadable (not the JSON manifest skipxl writes)")
        return verdict
    verdict.files = files
    verdict.world_size = manifest.get("world_size") if isinstance(manifest.get("world_size"), int) else None
    for name, entry in sorted(files.items()):
        target = folder / name
        if not target.is_file():
            verdict.problems.append(f"{target} is missing (listed in {MANIFEST})")
        elif target.stat().st_size != entry.get("bytes"):
            verdict.problems.append(
                f"{target} has {target.stat().st_size} bytes, {entry.get('bytes')} were written (truncated?)"
            )
        elif hash_content and sha256_file(target) != entry.get("sha256"):
            verdict.problems.append(f"{target} does not match its SHA-256 in {MANIFEST} (content changed)")
    return verdict
