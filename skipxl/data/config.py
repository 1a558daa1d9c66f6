"""Data settings: which corpus, where it lives, how it is tokenised and cached.

One frozen :class:`DataConfig` names everything that determines the token ids a model
sees, so that a run folder's ``config.json`` rebuilds the exact same data (the cache key
is derived from it together with the source files). Validation happens here, once, with
messages that say what to change.

Conventions follow the original Transformer-XL data pipeline (Dai et al. 2019,
``kimiyoung/transformer-xl``, ``pytorch/data_utils.py``), which the paper under
reproduction (arXiv 2311.08123) also builds on:

* word corpora: ``line.split() + ['<eos>']`` per line; ``<eos>`` is id 0, then the words by
  descending frequency (ties: first occurrence), so adaptive-softmax cutoffs cut the
  frequency-ranked vocabulary as intended;
* the vocabulary is counted on the splits the original counts: train, valid and test for
  WikiText-2, enwik8 and text8; train only for WikiText-103 (``count_splits`` overrides);
* enwik8 / text8: the last 2 x 5M symbols are valid and test, the first 90M are train.
"""

from __future__ import annotations

import itertools
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path

from skipxl.errors import require

CORPORA = ("builtin", "wt103", "wt2", "enwik8", "text8", "txt")
"""Registered corpus names."""

WORD_CORPORA = ("builtin", "wt103", "wt2", "txt")
CHAR_CORPORA = ("enwik8", "text8")
SPLITS = ("train", "valid", "test")
SOURCES = ("local", "hub")
VOCAB_KINDS = ("auto", "word", "char", "sentencepiece")
CHAR_CONVENTIONS = ("transformer_xl", "raw")

HUB_DATASETS: dict[str, tuple[str, str]] = {
    "wt103": ("Salesforce/wikitext", "wikitext-103-v1"),
    "wt2": ("Salesforce/wikitext", "wikitext-2-v1"),
}
"""Hugging Face hub (repository, configuration) per corpus that has a loadable copy there."""

OFFICIAL_CHAR_SPLIT = (90_000_000, 5_000_000, 5_000_000)
"""enwik8 / text8 split sizes (train, valid, test) of the original preparation scripts."""

DEFAULT_COUNT_SPLITS: dict[str, tuple[str, ...]] = {
    "wt103": ("train",),
    "wt2": SPLITS,
    "enwik8": SPLITS,
    "text8": SPLITS,
    "txt": ("train",),
    "builtin": ("train",),
}
"""Splits whose symbols the vocabulary counts, as the original ``Corpus`` does."""


@dataclass(frozen=True)
class BuiltinConfig:
    """Options of the built-in synthetic corpus (see :mod:`skipxl.data.builtin`).

    Attributes:
        seed: generator seed; same seed, same tokens.
        train_tokens: length of the train split in tokens (``<eos>`` included).
        eval_tokens: length of each of the valid and test splits.
        min_gap: smallest distance in tokens between an entity's mention and its previous
            occurrence; keep it above the ``tgt_len`` you train with, so that the mention is
            predictable only through memory (Transformer-XL's recurrence).
        probe: generate the long-range probe corpus instead (:mod:`skipxl.data.probe`): answers
            that copy a value exactly ``d`` tokens back, ``d`` spread over ``probe_bins``.
        probe_bins: distance bin edges ``(lo_0, lo_1, ..., hi)``; ``d`` is uniform in a bin drawn
            uniformly. Span from inside the segment to several times ``mem_len``.
        probe_values: number of value words (chance loss ``log(probe_values)``).
        probe_channels: marker pairs, i.e. probes open at the same time.
    """

    seed: int = 0
    train_tokens: int = 2_000_000
    eval_tokens: int = 200_000
    min_gap: int = 128
    probe: bool = False
    probe_bins: tuple[int, ...] = (2, 16, 32, 64, 128, 256)
    probe_values: int = 32
    probe_channels: int = 8

    def __post_init__(self) -> None:
        require(
            isinstance(self.seed, int) and self.seed >= 0,
            f"builtin seed must be a non-negative integer, got {self.seed!r}",
        )
        require(
            self.train_tokens >= 1_000,
            f"builtin train_tokens={self.train_tokens} is too small; use at least 1000",
        )
        require(
            self.eval_tokens >= 100,
            f"builtin eval_tokens={self.eval_tokens} is too small; use at least 100",
        )
        require(
            8 <= self.min_gap <= 4096,
            f"builtin min_gap={self.min_gap} must be in [8, 4096] tokens "
            "(set it above the training tgt_len so that memory is needed)",
        )
        if isinstance(self.probe_bins, list):
            object.__setattr__(self, "probe_bins", tuple(self.probe_bins))
        bins = self.probe_bins
        require(
            len(bins) >= 2 and all(isinstance(b, int) for b in bins) and bins[0] >= 2,
            f"builtin probe_bins={bins!r} must be at least two integer edges, the first >= 2",
        )
        require(
            all(a < b for a, b in itertools.pairwise(bins)),
            f"builtin probe_bins={bins!r} must be strictly increasing",
        )
        require(
            2 <= self.probe_values <= 4096 and 1 <= self.probe_channels <= 256,
            f"builtin probe_values={self.probe_values} must be in [2, 4096] and probe_channels="
            f"{self.probe_channels} in [1, 256]",
        )
        if self.probe:
            require(
                bins[-1] * 4 <= self.eval_tokens,
                f"builtin eval_tokens={self.eval_tokens} is too short for probes up to {bins[-1]} tokens; "
                f"use --builtin_eval_tokens {bins[-1] * 40} or more",
            )


@dataclass(frozen=True)
class DataConfig:
    """Which corpus to load and how.

    Attributes:
        corpus: one of :data:`CORPORA`.
        data_dir: folder holding the corpus files (not used by ``builtin``, nor by ``hub``).
        source: ``"local"`` (files in ``data_dir``) or ``"hub"`` (download WikiText from the
            Hugging Face hub with ``datasets``; explicit opt-in, needs network).
        vocab: ``"auto"`` (word for word corpora, char/byte for enwik8/text8), ``"word"``,
            ``"char"`` or ``"sentencepiece"`` (needs ``spm_model``).
        spm_model: path to a trained SentencePiece ``.model`` file.
        char_convention: for enwik8/text8. ``"transformer_xl"`` reproduces the original
            preparation exactly (enwik8: newline bytes are dropped, as ``prep_enwik8.py``
            followed by ``encode_file(add_eos=False)`` does; text8: each split is stripped of
            surrounding spaces); ``"raw"`` keeps every byte/character.
        char_split: (train, valid, test) sizes for enwik8/text8; they must sum to the file
            length. Default: the official 90M/5M/5M.
        count_splits: splits counted for the vocabulary; default per corpus, as the original.
        builtin: options of the built-in corpus.
        cache_dir: where encoded splits are cached. Default: ``<data_dir>/.skipxl_cache``
            (or the user cache when ``data_dir`` is read-only, and always for builtin/hub):
            ``$SKIPXL_CACHE``, else ``$XDG_CACHE_HOME/skipxl``, else ``~/.cache/skipxl``.
    """

    corpus: str = "builtin"
    data_dir: str | None = None
    source: str = "local"
    vocab: str = "auto"
    spm_model: str | None = None
    char_convention: str = "transformer_xl"
    char_split: tuple[int, ...] | None = None
    count_splits: tuple[str, ...] | None = None
    builtin: BuiltinConfig = field(default_factory=BuiltinConfig)
    cache_dir: str | None = None

    def __post_init__(self) -> None:
        for name in ("data_dir", "spm_model", "cache_dir"):
            value = getattr(self, name)
            if isinstance(value, os.PathLike):
                object.__setattr__(self, name, os.fspath(value))
        if isinstance(self.builtin, dict):
            object.__setattr__(self, "builtin", BuiltinConfig(**self.builtin))
        for name in ("char_split", "count_splits"):
            value = getattr(self, name)
            if isinstance(value, list):
                object.__setattr__(self, name, tuple(value))

        require(
            self.corpus in CORPORA,
            f"unknown corpus {self.corpus!r}; choose one of {CORPORA}",
        )
        require(self.source in SOURCES, f"unknown data source {self.source!r}; choose one of {SOURCES}")
        require(self.vocab in VOCAB_KINDS, f"unknown vocab kind {self.vocab!r}; choose one of {VOCAB_KINDS}")
        require(
            self.char_convention in CHAR_CONVENTIONS,
            f"unknown char_convention {self.char_convention!r}; choose one of {CHAR_CONVENTIONS}",
        )
        if self.source == "hub":
            require(
                self.corpus in HUB_DATASETS,
                f"corpus {self.corpus!r} has no hub source (the hub copies of enwik8/text8 are "
                "loading scripts that current `datasets` no longer runs); download "
                f"http://mattmahoney.net/dc/{self.corpus}.zip into a folder and pass "
                "data_dir=<that folder> with source='local'",
            )
        elif self.corpus != "builtin":
            require(
                self.data_dir is not None,
                f"corpus {self.corpus!r} needs data_dir=<folder with its files> "
                "(or source='hub' for WikiText, or corpus='builtin' for the embedded corpus)",
            )
        kind = self.vocab_kind
        if self.corpus in CHAR_CORPORA:
            require(
                kind == "char",
                f"corpus {self.corpus!r} is character-level; use vocab='auto' or 'char' (got {self.vocab!r})",
            )
        else:
            require(
                kind != "char",
                f"vocab='char' is only for enwik8/text8; corpus {self.corpus!r} takes 'word' or "
                "'sentencepiece'",
            )
        if kind == "sentencepiece":
            require(
                self.corpus != "builtin",
                "the builtin corpus is generated as word ids; use vocab='word' (or 'auto') with it",
            )
            require(
                self.spm_model is not None,
                "vocab='sentencepiece' needs spm_model=<path to a trained SentencePiece .model file>",
            )
        else:
            require(
                self.spm_model is None,
                f"spm_model is only used with vocab='sentencepiece' (vocab is {self.vocab!r}); "
                "drop spm_model or set vocab='sentencepiece'",
            )
        if self.char_split is not None:
            require(
                self.corpus in CHAR_CORPORA,
                "char_split only applies to enwik8/text8; remove it for corpus " + repr(self.corpus),
            )
            require(
                len(self.char_split) == 3 and all(isinstance(n, int) and n > 0 for n in self.char_split),
                f"char_split must be three positive integers (train, valid, test), got {self.char_split!r}",
            )
        if self.count_splits is not None:
            require(
                len(self.count_splits) > 0 and all(s in SPLITS for s in self.count_splits),
                f"count_splits must be a non-empty subset of {SPLITS}, got {self.count_splits!r}",
            )
            require(
                "train" in self.count_splits,
                "count_splits must include 'train' (the vocabulary is always built from training data)",
            )

    @property
    def vocab_kind(self) -> str:
        """The resolved vocabulary kind: ``"word"``, ``"char"`` or ``"sentencepiece"``."""
        if self.vocab != "auto":
            return self.vocab
        return "char" if self.corpus in CHAR_CORPORA else "word"

    @property
    def split_sizes(self) -> tuple[int, int, int]:
        """(train, valid, test) sizes for enwik8/text8."""
        sizes = self.char_split if self.char_split is not None else OFFICIAL_CHAR_SPLIT
        return (int(sizes[0]), int(sizes[1]), int(sizes[2]))

    @property
    def vocab_splits(self) -> tuple[str, ...]:
        """Splits the vocabulary is counted on."""
        if self.count_splits is not None:
            return tuple(s for s in SPLITS if s in self.count_splits)
        return DEFAULT_COUNT_SPLITS[self.corpus]


def user_cache_dir() -> Path:
    """``$SKIPXL_CACHE``, else ``$XDG_CACHE_HOME/skipxl``, else ``~/.cache/skipxl``."""
    env = os.environ.get("SKIPXL_CACHE")
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    if xdg:
        return Path(xdg).expanduser() / "skipxl"
    return Path.home() / ".cache" / "skipxl"


def resolve_cache_root(cfg: DataConfig) -> Path:
    """Folder under which this config's encoded splits are cached.

    Next to the data when possible (``<data_dir>/.skipxl_cache``) so that the cache travels
    with it; the user cache when the data folder is read-only (e.g. a shared mount), and for
    the builtin and hub sources which have no data folder.
    """
    if cfg.cache_dir is not None:
        return Path(cfg.cache_dir).expanduser()
    if cfg.corpus == "builtin" or cfg.source == "hub" or cfg.data_dir is None:
        return user_cache_dir()
    data_dir = Path(cfg.data_dir).expanduser()
    if _writable(data_dir):
        return data_dir / ".skipxl_cache"
    return user_cache_dir()


def _writable(folder: Path) -> bool:
    """Writable for us *and* not marked read-only (root passes ``os.access`` regardless)."""
    try:
        mode = folder.stat().st_mode
    except OSError:
        return False
    return os.access(folder, os.W_OK) and bool(stat.S_IMODE(mode) & 0o222)
