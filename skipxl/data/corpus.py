"""Loading a corpus: find its source, encode it once, serve it memory-mapped afterwards.

``load_corpus(DataConfig)`` is the one entry point the engine uses; ``prepare`` does the
same and returns a printable summary (``skipxl data prepare``). The first call for a
given source and vocabulary settings encodes the three splits into the cache (see
:mod:`skipxl.data.cache`); every later call only fingerprints the source files and opens
memory maps.

Multi-process runs: let one process (rank 0) call :func:`prepare` before the others load,
e.g. ``if rank == 0: prepare(cfg)`` then a barrier, then ``load_corpus(cfg)`` everywhere.
Concurrent builders are safe (atomic rename) but would each do the work.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from skipxl.config_io import to_dict
from skipxl.data import corpora
from skipxl.data.builtin import GENERATOR_VERSION, generate_builtin
from skipxl.data.cache import (
    EntryWriter,
    build_entry,
    cache_key,
    commit_entry,
    entry_nbytes,
    entry_path,
    ids_dtype,
    load_entry,
)
from skipxl.data.config import CHAR_CORPORA, SPLITS, DataConfig, resolve_cache_root
from skipxl.data.vocab import Vocab
from skipxl.errors import require
from skipxl.progress import progress_bar

Builder = Callable[[EntryWriter], tuple[Vocab, dict[str, int]]]


@dataclass(frozen=True)
class Corpus:
    """An encoded corpus.

    Attributes:
        config: the settings it was loaded with.
        vocab: its :class:`~skipxl.data.vocab.Vocab`.
        splits: ``"train"``, ``"valid"``, ``"test"`` -> 1-D read-only ``np.memmap`` of ids
            (dtype uint16 when the vocabulary has at most 65,536 symbols, else int32).
        cache_path: the cache entry folder.
        cache_hit: True when nothing had to be encoded.
        meta: the entry's ``meta.json`` (source fingerprints, lengths, build time).
    """

    config: DataConfig
    vocab: Vocab
    splits: dict[str, np.ndarray]
    cache_path: Path
    cache_hit: bool
    meta: dict[str, Any]

    @property
    def n_token(self) -> int:
        """Vocabulary size, the model's ``n_token``."""
        return self.vocab.size

    def split(self, name: str) -> np.ndarray:
        require(name in self.splits, f"unknown split {name!r}; choose one of {tuple(self.splits)}")
        return self.splits[name]

    def summary(self) -> dict[str, Any]:
        """JSON-able description (what ``skipxl data prepare`` prints)."""
        return {
            "corpus": self.config.corpus,
            "source": self.config.source,
            "level": self.vocab.level,
            "vocab_size": self.vocab.size,
            "vocab_head": list(self.vocab.symbols[:10]),
            "splits": {s: len(a) for s, a in self.splits.items()},
            "dtype": str(next(iter(self.splits.values())).dtype),
            "cache_path": str(self.cache_path),
            "cache_hit": self.cache_hit,
            "cache_bytes": entry_nbytes(self.cache_path),
            "build_seconds": self.meta.get("build_seconds"),
            "sources": [f.get("name") for f in self.meta.get("sources", [])],
        }


# -- per-source descriptions: (key payload, source fingerprints, builder) --------------------
def _id_settings(cfg: DataConfig) -> dict[str, Any]:
    """The settings that change the ids (not where files or caches live)."""
    settings: dict[str, Any] = {"corpus": cfg.corpus, "vocab": cfg.vocab_kind, "count": cfg.vocab_splits}
    if cfg.corpus in CHAR_CORPORA:
        settings.update(convention=cfg.char_convention, split=cfg.split_sizes)
    if cfg.vocab_kind == "sentencepiece":
        spm_path = Path(str(cfg.spm_model)).expanduser()
        require(
            spm_path.is_file(),
            f"SentencePiece model {spm_path} does not exist; train one (spm_train) and pass its .model path",
        )
        settings["spm"] = corpora.file_fingerprint(spm_path)
    return settings


def _describe_builtin(cfg: DataConfig) -> tuple[dict[str, Any], list[dict[str, Any]], Builder]:
    options = to_dict(cfg.builtin)
    if not cfg.builtin.probe:  # the probe options do not change the default corpus (nor its cache key)
        options = {k: v for k, v in options.items() if not k.startswith("probe")}
    payload = {"corpus": "builtin", "options": options, "generator": GENERATOR_VERSION}
    if cfg.builtin.probe:
        from skipxl.data.probe import PROBE_VERSION

        payload["probe_generator"] = PROBE_VERSION

    def build(writer: EntryWriter) -> tuple[Vocab, dict[str, int]]:
        vocab, splits = generate_builtin(cfg.builtin)
        dtype = ids_dtype(vocab.size)
        return vocab, {s: writer.write_array(s, splits[s], dtype) for s in SPLITS}

    return payload, [{"name": f"builtin(seed={cfg.builtin.seed})", **options}], build


def _describe_text(cfg: DataConfig) -> tuple[dict[str, Any], list[dict[str, Any]], Builder]:
    if cfg.source == "hub":
        sources, fingerprints = corpora.hub_line_sources(cfg)
    else:
        files = corpora.find_split_files(str(cfg.data_dir), cfg.corpus)
        fingerprints = [corpora.file_fingerprint(files[s]) for s in SPLITS]
        sources = {s: corpora.file_line_chunks(files[s]) for s in SPLITS}
    payload = {**_id_settings(cfg), "source": cfg.source, "files": fingerprints}

    def build(writer: EntryWriter) -> tuple[Vocab, dict[str, int]]:
        vocab = corpora.build_text_vocab(cfg, sources)
        dtype = ids_dtype(vocab.size)
        lengths, unseen = {}, {}
        bar = progress_bar(len(SPLITS), f"encode {cfg.corpus}", "split")
        for split in SPLITS:
            with writer.split(split) as f:
                if vocab.level == "subword":
                    lengths[split] = corpora.encode_subword_split(sources[split], vocab, f, dtype)
                else:
                    stats: dict[str, int] = {}
                    lengths[split] = corpora.encode_word_split(sources[split], vocab, f, dtype, stats)
                    unseen[split] = stats["unseen"]
            bar.update()
        bar.close()
        warning = corpora.unseen_warning(unseen, lengths, cfg.vocab_splits)
        if warning is not None:
            print(warning, file=sys.stderr, flush=True)
        return vocab, lengths

    return payload, fingerprints, build


def _describe_char(cfg: DataConfig) -> tuple[dict[str, Any], list[dict[str, Any]], Builder]:
    path = corpora.find_char_source(str(cfg.data_dir), cfg.corpus)
    fingerprints = [corpora.file_fingerprint(path)]
    payload = {**_id_settings(cfg), "files": fingerprints}

    def build(writer: EntryWriter) -> tuple[Vocab, dict[str, int]]:
        data = corpora.read_char_source(path, cfg.corpus)
        parts = corpora.split_char_data(data, cfg, path)
        del data
        vocab = corpora.build_char_vocab(cfg, parts)
        dtype = ids_dtype(vocab.size)
        lengths = {}
        for split in SPLITS:
            with writer.split(split) as f:
                lengths[split] = corpora.encode_char_split(parts[split], vocab, f, dtype)
        return vocab, lengths

    return payload, fingerprints, build


def _describe(cfg: DataConfig) -> tuple[dict[str, Any], list[dict[str, Any]], Builder]:
    if cfg.corpus == "builtin":
        return _describe_builtin(cfg)
    if cfg.corpus in CHAR_CORPORA:
        return _describe_char(cfg)
    return _describe_text(cfg)


def _build(
    cfg: DataConfig, root: Path, key: str, fingerprints: list[dict[str, Any]], builder: Builder
) -> Path:
    """Encode the corpus into a fresh cache entry (the slow path)."""
    start = time.perf_counter()
    with build_entry(root, cfg.corpus, key) as writer:
        vocab, lengths = builder(writer)
        for split in SPLITS:
            require(
                lengths[split] >= 2,
                f"the {split} split of {cfg.corpus} encodes to {lengths[split]} tokens; "
                "it needs at least 2 (check the source file)",
            )
        meta = {
            "config": to_dict(cfg),
            "id_settings": _id_settings(cfg) if cfg.corpus != "builtin" else {"corpus": "builtin"},
            "sources": fingerprints,
            "splits": lengths,
            "dtype": ids_dtype(vocab.size).str,
            "vocab_size": vocab.size,
            "vocab_fingerprint": vocab.fingerprint,
            "build_seconds": round(time.perf_counter() - start, 3),
            "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
        }
        return commit_entry(writer, root, cfg.corpus, key, vocab, meta)


def load_corpus(cfg: DataConfig, *, rebuild: bool = False) -> Corpus:
    """Load ``cfg``'s corpus from the cache, encoding it first when needed.

    Args:
        cfg: data settings.
        rebuild: re-encode even when a valid cache entry exists.
    Raises:
        SkipxlError: missing/empty/corrupt sources, unwritable cache, bad settings.
    """
    payload, fingerprints, builder = _describe(cfg)
    root = resolve_cache_root(cfg)
    key = cache_key(payload)
    path = entry_path(root, cfg.corpus, key)
    entry = None if rebuild else load_entry(path)
    hit = entry is not None
    if entry is None:
        path = _build(cfg, root, key, fingerprints, builder)
        entry = load_entry(path)
        require(entry is not None, f"the data cache entry {path} could not be read back; delete it and retry")
    assert entry is not None
    return Corpus(cfg, entry.vocab, entry.splits, entry.path, hit, entry.meta)


def plan(cfg: DataConfig) -> dict[str, Any]:
    """What :func:`prepare` would do, without encoding: sources found, cache entry, whether cached.

    Checks the files (missing or empty splits are the usual errors) and computes the cache
    key; ``skipxl data prepare --dry_run`` prints it.
    """
    payload, fingerprints, _ = _describe(cfg)
    root = resolve_cache_root(cfg)
    path = entry_path(root, cfg.corpus, cache_key(payload))
    return {
        "config": to_dict(cfg),
        "sources": fingerprints,
        "cache_entry": str(path),
        "cached": (path / "meta.json").is_file(),
    }


def prepare(cfg: DataConfig, *, rebuild: bool = False) -> dict[str, Any]:
    """Encode and cache ``cfg``'s corpus; return its summary (``skipxl data prepare``)."""
    start = time.perf_counter()
    corpus = load_corpus(cfg, rebuild=rebuild)
    summary = corpus.summary()
    summary["seconds"] = round(time.perf_counter() - start, 3)
    summary["config"] = to_dict(cfg)
    return summary
