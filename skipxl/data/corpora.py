"""Corpus sources in their official layouts, and the encoders that turn them into ids.

Layouts understood (``data_dir`` is the folder passed in :class:`DataConfig`):

* WikiText-103 / WikiText-2 / any "txt" folder: one file per split, named
  ``wiki.{split}.tokens`` (the official zip) or ``{split}.txt`` (Transformer-XL's
  ``getdata.sh`` renames them so), optionally compressed as ``.xz`` or ``.gz``.
* enwik8: the official ``enwik8.zip`` holding one member ``enwik8`` (10^8 bytes), or that
  file extracted. Split as ``prep_enwik8.py``: first 90M bytes train, next 5M valid,
  last 5M test. Bytes are the symbols.
* text8: ``text8.zip`` holding ``text8`` (10^8 characters), or the file; same split.

Word encoding is the original ``line.split() + ['<eos>']`` per line, with Python's
universal-newline line iteration (what ``open(path, 'r')`` does in the original).
"""

from __future__ import annotations

import gzip
import hashlib
import lzma
import os
import zipfile
import zlib
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import IO, Any, BinaryIO

import numpy as np

from skipxl.data.config import CHAR_CORPORA, HUB_DATASETS, SPLITS, DataConfig
from skipxl.data.vocab import (
    EOS,
    UNK,
    Vocab,
    build_subword_vocab,
    build_symbol_vocab,
    build_word_vocab,
    load_sentencepiece,
)
from skipxl.errors import SkipxlError, require

LineChunks = Callable[[], Iterator[list[str]]]
"""A re-iterable source of text: each call yields the split's lines in chunks."""

_CHUNK_CHARS = 1 << 22  # ~4 MB of text per chunk
_COMPRESSED = {".xz": lzma.open, ".gz": gzip.open}


# -- locating files ------------------------------------------------------------------------
def _split_candidates(split: str) -> list[str]:
    names = [f"wiki.{split}.tokens", f"{split}.txt"]
    return [n + ext for n in names for ext in ("", ".xz", ".gz")]


def find_split_files(data_dir: str | os.PathLike[str], corpus: str) -> dict[str, Path]:
    """The train/valid/test files of a word corpus folder.

    Raises:
        SkipxlError: the folder or a split is missing, or a split file is empty.
    """
    root = Path(data_dir).expanduser()
    require(not root.is_file(), f"data folder {root} is a file; pass the folder with the {corpus} files")
    require(
        root.is_dir(),
        f"data folder {root} does not exist; pass data_dir=<folder with the {corpus} files> "
        "(WikiText: unzip wikitext-103-v1.zip / wikitext-2-v1.zip and point at the folder inside)",
    )
    files: dict[str, Path] = {}
    for split in SPLITS:
        candidates = _split_candidates(split)
        found = [root / n for n in candidates if (root / n).is_file()]
        if not found:
            nested = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
            hint = (
                f"; subfolders here: {nested} - point data_dir at the one holding the files" if nested else ""
            )
            raise SkipxlError(
                f"no {split} split in {root}: expected wiki.{split}.tokens or {split}.txt "
                f"(optionally .xz/.gz compressed){hint}"
            )
        path = found[0]
        require(path.stat().st_size > 0, f"{path} is empty; re-extract the {corpus} {split} file")
        files[split] = path
    return files


def _open_text(path: Path) -> IO[str]:
    opener: Any = _COMPRESSED.get(path.suffix, open)
    return opener(path, "rt", encoding="utf-8")


def file_line_chunks(path: Path) -> LineChunks:
    """Re-iterable chunked line reader (plain, .xz or .gz), with clear read errors."""

    def chunks() -> Iterator[list[str]]:
        n_lines = 0
        try:
            with _open_text(path) as f:
                while True:
                    lines = f.readlines(_CHUNK_CHARS)
                    if not lines:
                        break
                    n_lines += len(lines)
                    yield lines
        except UnicodeDecodeError as exc:
            raise SkipxlError(f"{path} is not UTF-8 text ({exc}); pass the tokenised text files") from exc
        except (lzma.LZMAError, EOFError, OSError, zlib.error) as exc:
            raise SkipxlError(
                f"cannot read {path} ({exc}); the file is corrupt or truncated, re-extract it"
            ) from exc
        require(n_lines > 0, f"{path} holds no text; re-extract it")

    return chunks


def chunk_tokens(lines: Sequence[str]) -> list[str]:
    """``line.split() + ['<eos>']`` for every line, concatenated (one C-level split)."""
    return (" <eos> ".join(lines) + " <eos>").split()


# -- fingerprints --------------------------------------------------------------------------
_FULL_HASH_LIMIT = 8 << 20
_BLOCK = 1 << 16


def file_fingerprint(path: Path) -> dict[str, Any]:
    """Fast but safe identity of a source file: name, size, mtime and a content hash.

    Files up to 8 MiB are hashed in full; larger ones on their first and last MiB plus 32
    evenly spaced 64 KiB blocks (a few MB read even for WikiText-103's 540 MB). Any change
    of size or modification time also changes the key, so an in-place edit is caught.
    """
    st = path.stat()
    h = hashlib.sha256()
    with open(path, "rb") as f:
        if st.st_size <= _FULL_HASH_LIMIT:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
        else:
            offsets = [0, st.st_size - (1 << 20)]
            offsets += [int(st.st_size * k / 33) for k in range(1, 33)]
            for off in offsets:
                f.seek(off)
                h.update(f.read(1 << 20 if off in (0, st.st_size - (1 << 20)) else _BLOCK))
    return {"name": path.name, "size": st.st_size, "mtime_ns": st.st_mtime_ns, "sha256": h.hexdigest()}


# -- word corpora --------------------------------------------------------------------------
def count_words(sources: Sequence[LineChunks]) -> Counter[str]:
    """Token counts over the given splits, in first-occurrence order."""
    counter: Counter[str] = Counter()
    for chunks in sources:
        for lines in chunks():
            counter.update(chunk_tokens(lines))
    return counter


def encode_word_split(
    chunks: LineChunks, vocab: Vocab, out: BinaryIO, dtype: np.dtype[Any], stats: dict[str, int] | None = None
) -> int:
    """Encode one split chunk by chunk into ``out`` (raw ``dtype`` ids); returns the count.

    ``stats["unseen"]`` (when given) counts the tokens the vocabulary does not hold, which
    became ``<unk>`` (a literal ``<unk>`` in the text is not counted).
    """
    lookup = vocab.lookup
    unk = vocab.unk_id
    total = unseen = 0
    for lines in chunks():
        tokens = chunk_tokens(lines)
        try:
            ids = np.fromiter(map(lookup.__getitem__, tokens), dtype=np.int64, count=len(tokens))
        except KeyError:
            require(unk is not None, "an unknown word met a vocabulary without <unk>")
            get = lookup.get
            ids = np.fromiter((get(t, -1) for t in tokens), dtype=np.int64, count=len(tokens))
            unseen += int((ids < 0).sum())
            ids[ids < 0] = unk
        out.write(ids.astype(dtype).tobytes())
        total += len(ids)
    if stats is not None:
        stats["unseen"] = unseen
    return total


def unseen_warning(unseen: dict[str, int], lengths: dict[str, int], counted: Sequence[str]) -> str | None:
    """One line saying how many tokens of each split became ``<unk>`` as unseen words, or ``None``."""
    parts = [f"{n / max(lengths[s], 1):.1%} of {s} ({n} tokens)" for s, n in unseen.items() if n]
    if not parts:
        return None
    return (
        f"warning: {', '.join(parts)} are words the vocabulary (counted on {'+'.join(counted)}) does not "
        "hold; they are scored as <unk>, which lowers the perplexity (set count_splits to include them)"
    )


def count_subwords(sources: Sequence[LineChunks], sp: Any) -> np.ndarray:
    """SentencePiece piece counts over the given splits ([piece_size] int64)."""
    counts = np.zeros(int(sp.get_piece_size()), dtype=np.int64)
    for chunks in sources:
        for lines in chunks():
            for pieces in sp.encode([ln.strip() for ln in lines]):
                counts += np.bincount(np.asarray(pieces, dtype=np.int64), minlength=len(counts))
    return counts


def encode_subword_split(chunks: LineChunks, vocab: Vocab, out: BinaryIO, dtype: np.dtype[Any]) -> int:
    """Encode one split with the vocabulary's SentencePiece model, ``<eos>`` per line."""
    total = 0
    for lines in chunks():
        ids = vocab.encode_lines(lines)
        out.write(ids.astype(dtype).tobytes())
        total += len(ids)
    return total


def build_text_vocab(cfg: DataConfig, sources: dict[str, LineChunks]) -> Vocab:
    """Word or subword vocabulary from the splits ``cfg.vocab_splits``."""
    counted = [sources[s] for s in cfg.vocab_splits]
    if cfg.vocab_kind == "sentencepiece":
        spm_path = Path(str(cfg.spm_model)).expanduser()
        sp = load_sentencepiece(spm_path)
        return build_subword_vocab(spm_path, count_subwords(counted, sp))
    return build_word_vocab(count_words(counted), eos=EOS, unk=UNK)


# -- character corpora ---------------------------------------------------------------------
def find_char_source(data_dir: str | os.PathLike[str], corpus: str) -> Path:
    """``<corpus>.zip`` (official) or the extracted ``<corpus>`` file in ``data_dir``."""
    require(corpus in CHAR_CORPORA, f"{corpus} is not a character corpus")
    root = Path(data_dir).expanduser()
    require(not root.is_file(), f"data folder {root} is a file; pass the folder that holds {corpus}.zip")
    require(
        root.is_dir(),
        f"data folder {root} does not exist; create it and put the official {corpus}.zip "
        f"(http://mattmahoney.net/dc/{corpus}.zip) there",
    )
    for name in (f"{corpus}.zip", corpus):
        if (root / name).is_file():
            return root / name
    raise SkipxlError(
        f"no {corpus}.zip (or extracted {corpus}) in {root}; download "
        f"http://mattmahoney.net/dc/{corpus}.zip into that folder"
    )


def read_char_source(path: Path, corpus: str) -> bytes:
    """The raw bytes of enwik8/text8 from the zip (member ``<corpus>``) or the plain file."""
    if path.suffix != ".zip":
        data = path.read_bytes()
    else:
        try:
            with zipfile.ZipFile(path) as zf:
                names = zf.namelist()
                require(
                    corpus in names,
                    f"{path} has no member {corpus!r} (members: {names[:5]}); "
                    f"use the official http://mattmahoney.net/dc/{corpus}.zip",
                )
                data = zf.read(corpus)
        except (zipfile.BadZipFile, zlib.error, EOFError, OSError) as exc:
            raise SkipxlError(
                f"{path} is not a readable zip ({exc}); the download is corrupt or incomplete - "
                f"delete it and download http://mattmahoney.net/dc/{corpus}.zip again"
            ) from exc
    require(len(data) > 0, f"{path} is empty; download http://mattmahoney.net/dc/{corpus}.zip again")
    return data


def split_char_data(data: bytes, cfg: DataConfig, path: Path) -> dict[str, np.ndarray]:
    """Cut the raw corpus into the three splits, as the original preparation scripts do.

    Returns symbol arrays (enwik8: uint8 byte values; text8: code points) per split, after
    the ``char_convention`` (``transformer_xl``: enwik8 drops newline bytes, text8 strips
    surrounding spaces of each split; ``raw``: untouched).
    """
    sizes = cfg.split_sizes
    if cfg.corpus == "enwik8":
        symbols = np.frombuffer(data, dtype=np.uint8)
        unit = "bytes"
    else:
        symbols = _code_points(data, path)
        unit = "characters"
    official = cfg.char_split is None
    require(
        len(symbols) == sum(sizes),
        f"{path} holds {len(symbols):,} {unit} but the split {sizes[0]:,}/{sizes[1]:,}/{sizes[2]:,} needs "
        f"{sum(sizes):,}; "
        + (
            f"the file is truncated or not the official {cfg.corpus} - download "
            f"http://mattmahoney.net/dc/{cfg.corpus}.zip again"
            if official
            else "pass char_split sizes that sum to the file length"
        ),
    )
    bounds = np.cumsum((0, *sizes))
    parts: dict[str, np.ndarray] = {}
    for i, split in enumerate(SPLITS):
        part = symbols[bounds[i] : bounds[i + 1]]
        if cfg.char_convention == "transformer_xl" and cfg.corpus == "enwik8":
            part = part[part != ord("\n")]  # prep_enwik8 writes "\n" as a line break
        elif cfg.char_convention == "transformer_xl":
            part = _strip_spaces(part)  # prep_text8 writes part.strip()
        parts[split] = part
    return parts


def _code_points(data: bytes, path: Path) -> np.ndarray:
    if data.isascii():
        return np.frombuffer(data, dtype=np.uint8)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise SkipxlError(f"{path} is not UTF-8 text ({exc}); use the official text8.zip") from exc
    return np.frombuffer(text.encode("utf-32-le"), dtype="<u4")


def _strip_spaces(part: np.ndarray) -> np.ndarray:
    """``str.strip()`` on a code-point array (whitespace of text8: space and newline-likes)."""
    ws = np.isin(part, np.array([9, 10, 11, 12, 13, 28, 29, 30, 31, 32, 133, 160]))
    keep = np.flatnonzero(~ws)
    if len(keep) == 0:
        return part[:0]
    return part[keep[0] : keep[-1] + 1]


def _first_seen(values: np.ndarray, wanted: np.ndarray, size: int) -> np.ndarray:
    """First index of each value in ``values`` (scanning chunks until all ``wanted`` are seen)."""
    first = np.full(size, np.iinfo(np.int64).max, dtype=np.int64)
    remaining = set(int(v) for v in wanted)
    step = 1 << 20
    for start in range(0, len(values), step):
        if not remaining:
            break
        uniq, idx = np.unique(values[start : start + step], return_index=True)
        for u, i in zip(uniq.tolist(), idx.tolist(), strict=True):
            if u in remaining:
                first[u] = start + i
                remaining.discard(u)
    return first


def build_char_vocab(cfg: DataConfig, parts: dict[str, np.ndarray]) -> Vocab:
    """Frequency-ranked byte (enwik8) or character (text8) vocabulary.

    Counted over ``cfg.vocab_splits`` concatenated in split order, as the original counts
    ``train.txt``, ``valid.txt`` and ``test.txt`` with one ``Counter``. ``<unk>`` is added
    only when a split holds a symbol the counted splits never show.
    """
    counted = np.concatenate([parts[s] for s in cfg.vocab_splits])
    size = int(max(int(p.max()) if len(p) else 0 for p in parts.values())) + 1
    counts = np.bincount(counted, minlength=size).astype(np.int64)
    first = _first_seen(counted, np.flatnonzero(counts), size)
    level = "byte" if cfg.corpus == "enwik8" else "char"
    names = [str(v) for v in range(size)] if level == "byte" else [chr(v) for v in range(size)]
    vocab = build_symbol_vocab(counts, first, names, level)
    unseen = any(bool(np.any(counts[p] == 0)) for p in parts.values() if len(p))
    if unseen:
        vocab = Vocab([*vocab.symbols, UNK], level, unk=UNK, counts=[*(vocab.counts or ()), 0])
    return vocab


def encode_char_split(part: np.ndarray, vocab: Vocab, out: BinaryIO, dtype: np.dtype[Any]) -> int:
    """Map a split's symbol values to vocabulary ids and write them to ``out``."""
    size = int(part.max()) + 1 if len(part) else 1
    table = np.full(max(size, 1), -1 if vocab.unk_id is None else vocab.unk_id, dtype=np.int64)
    for sym, idx in vocab.lookup.items():
        if sym == vocab.unk:
            continue
        value = int(sym) if vocab.level == "byte" else ord(sym)
        if value < size:
            table[value] = idx
    ids = table[part]
    require(not bool(np.any(ids < 0)), "a symbol is missing from the character vocabulary")
    out.write(ids.astype(dtype).tobytes())
    return len(ids)


# -- Hugging Face hub ----------------------------------------------------------------------
def hub_line_sources(cfg: DataConfig) -> tuple[dict[str, LineChunks], list[dict[str, Any]]]:
    """WikiText lines from the Hugging Face hub (``Salesforce/wikitext``); needs network.

    Each hub row is one line of the official file (blank lines are empty rows), so
    ``line.split() + ['<eos>']`` gives the same tokens as the local files. ``datasets`` is
    imported here only, so the package never needs it otherwise.
    """
    repo, name = HUB_DATASETS[cfg.corpus]
    try:
        import datasets
    except ImportError as exc:  # pragma: no cover - datasets is a dependency
        raise SkipxlError("source='hub' needs the `datasets` package; pip install datasets") from exc
    try:
        ds = datasets.load_dataset(repo, name)
    except Exception as exc:  # network / hub errors come in many types
        raise SkipxlError(
            f"could not load {repo} ({name}) from the Hugging Face hub ({exc}); check the network, "
            "or download the zip and use source='local' with data_dir"
        ) from exc
    hub_split = {"train": "train", "valid": "validation", "test": "test"}
    sources: dict[str, LineChunks] = {}
    fingerprints: list[dict[str, Any]] = []
    for split in SPLITS:
        rows = ds[hub_split[split]]
        lines = [t if t.endswith("\n") else t + "\n" for t in rows["text"]]
        require(len(lines) > 0, f"hub split {repo}/{name}/{hub_split[split]} is empty")

        def chunks(lines: list[str] = lines) -> Iterator[list[str]]:
            step = 100_000
            for i in range(0, len(lines), step):
                yield lines[i : i + step]

        sources[split] = chunks
        fingerprints.append(
            {"name": f"{repo}/{name}/{split}", "fingerprint": getattr(rows, "_fingerprint", "")}
        )
    return sources, fingerprints
