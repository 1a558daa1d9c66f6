"""The encoded-corpus cache: one folder per (source, vocabulary settings), memory-mapped.

Layout of an entry ``<cache root>/<corpus>-<key>/``::

    meta.json      what was encoded: config, source fingerprints, split lengths, dtype
    vocab.json     the vocabulary (skipxl.data.vocab.Vocab)
    train.bin      raw little-endian token ids (uint16 when the vocabulary fits, else int32)
    valid.bin
    test.bin

``key`` is a sha256 over the cache format, the settings that change the ids and the
fingerprints of the source files (size, mtime, content hash; see
:func:`skipxl.data.corpora.file_fingerprint`), so an edited source or a different vocab
setting gets a new entry. An entry is built in a temporary folder and renamed into place
in one step, so readers never see a half-written entry; when two processes race, the
first rename wins and the other discards its copy. Loading is ``np.memmap``: no
re-tokenisation, no copy, a fraction of a second even for WikiText-103.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from skipxl.data.config import SPLITS
from skipxl.data.vocab import Vocab
from skipxl.errors import SkipxlError

CACHE_FORMAT = 1
_STALE_TMP_SECONDS = 24 * 3600


def ids_dtype(vocab_size: int) -> np.dtype[Any]:
    """Smallest dtype for the ids: uint16 up to 65,536 symbols, else int32."""
    return np.dtype("<u2") if vocab_size <= 1 << 16 else np.dtype("<i4")


def cache_key(payload: dict[str, Any]) -> str:
    """sha256 (hex, 16 chars) of the JSON-serialised ``payload`` plus the cache format."""
    blob = json.dumps({"format": CACHE_FORMAT, **payload}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class CacheEntry:
    """A loaded cache entry: vocabulary, memory-mapped splits and metadata."""

    path: Path
    vocab: Vocab
    splits: dict[str, np.ndarray]
    meta: dict[str, Any]


def entry_path(root: Path, corpus: str, key: str) -> Path:
    return Path(root) / f"{corpus}-{key}"


def load_entry(path: Path) -> CacheEntry | None:
    """Open a complete entry, or return None when it is absent or unusable."""
    meta_file = path / "meta.json"
    if not meta_file.is_file():
        return None
    try:
        meta = json.loads(meta_file.read_text())
        if meta.get("format") != CACHE_FORMAT:
            return None
        vocab = Vocab.load(path / "vocab.json")
        dtype = np.dtype(meta["dtype"])
        splits: dict[str, np.ndarray] = {}
        for split in SPLITS:
            n = int(meta["splits"][split])
            file = path / f"{split}.bin"
            if file.stat().st_size != n * dtype.itemsize:
                return None
            splits[split] = np.memmap(file, dtype=dtype, mode="r", shape=(n,))
    except (OSError, KeyError, ValueError, TypeError, SkipxlError):
        return None
    return CacheEntry(path, vocab, splits, meta)


class EntryWriter:
    """Files of an entry being built in a private temporary folder."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.lengths: dict[str, int] = {}

    @contextmanager
    def split(self, name: str) -> Iterator[Any]:
        """Binary file to stream ``name``'s raw ids into."""
        with open(self.tmp / f"{name}.bin", "wb") as f:
            yield f

    def write_array(self, name: str, ids: np.ndarray, dtype: np.dtype[Any]) -> int:
        with self.split(name) as f:
            f.write(np.ascontiguousarray(ids, dtype=dtype).tobytes())
        return len(ids)


def _clean_stale_tmp(root: Path) -> None:
    now = time.time()
    for p in root.glob(".tmp-*"):
        try:
            if now - p.stat().st_mtime > _STALE_TMP_SECONDS:
                shutil.rmtree(p, ignore_errors=True)
        except OSError:
            pass


@contextmanager
def build_entry(root: Path, corpus: str, key: str) -> Iterator[EntryWriter]:
    """Build an entry atomically: write into ``.tmp-*``, then rename to its final name.

    The caller writes the split files with the writer and then calls :func:`commit_entry`
    inside the ``with`` block; on any exception the temporary folder is removed.
    """
    root = Path(root)
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise SkipxlError(
            f"cannot create the data cache folder {root} ({exc}); pass cache_dir=<a writable folder>"
        ) from exc
    if not os.access(root, os.W_OK):
        raise SkipxlError(f"the data cache folder {root} is not writable; pass cache_dir=<a writable folder>")
    _clean_stale_tmp(root)
    tmp = root / f".tmp-{corpus}-{key}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        yield EntryWriter(tmp)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def commit_entry(
    writer: EntryWriter, root: Path, corpus: str, key: str, vocab: Vocab, meta: dict[str, Any]
) -> Path:
    """Write vocab and meta (last: its presence marks a complete entry), then rename."""
    vocab.save(writer.tmp / "vocab.json")
    full_meta = {"format": CACHE_FORMAT, "key": key, "corpus": corpus, **meta}
    (writer.tmp / "meta.json").write_text(json.dumps(full_meta, indent=2, sort_keys=True, default=str))
    final = entry_path(root, corpus, key)
    if final.exists() and load_entry(final) is None:
        shutil.rmtree(final, ignore_errors=True)  # a broken entry left by an older crash
    try:
        os.rename(writer.tmp, final)
    except OSError:
        if load_entry(final) is None:  # lost a race to a writer whose result is unusable
            raise
    return final


def entry_nbytes(path: Path) -> int:
    return sum(p.stat().st_size for p in Path(path).iterdir() if p.is_file())
