"""Vocabularies: frequency-ranked word, character/byte and SentencePiece symbol tables.

A :class:`Vocab` is an immutable table of symbols; the id of a symbol is its position.
Ordering follows Transformer-XL (Dai et al. 2019, ``utils/vocabulary.py``): special symbols
first (``<eos>`` for word corpora), then symbols by descending count, ties broken by first
occurrence (what ``Counter.most_common`` does). Frequency ranking is what makes the
adaptive input/softmax cutoffs (e.g. 20000/40000/200000 on WikiText-103) meaningful.

Levels:

* ``"word"``   - whitespace tokens, ``<eos>`` closes every line, ``<unk>`` for unseen words;
* ``"char"``   - characters (text8), no ``<eos>``;
* ``"byte"``   - bytes (enwik8), symbols are decimal byte values as in ``prep_enwik8.py``;
* ``"subword"``- SentencePiece pieces, re-ranked by training frequency, ``<eos>`` per line.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from skipxl.errors import SkipxlError, require

EOS = "<eos>"
UNK = "<unk>"
LEVELS = ("word", "char", "byte", "subword")
_FORMAT = 1


def frequency_order(counts: np.ndarray, first_seen: np.ndarray) -> np.ndarray:
    """Indices sorted by descending count, ties by ascending first occurrence.

    Args:
        counts: [N] occurrence counts.
        first_seen: [N] position of each item's first occurrence (unseen items: any large
            value; they sort last among equal counts).
    Returns:
        [N] int64 permutation: ``order[rank] = item``.
    """
    counts = np.asarray(counts, dtype=np.int64)
    first_seen = np.asarray(first_seen, dtype=np.int64)
    # lexsort sorts by the last key first: primary -count, secondary first occurrence
    return np.lexsort((first_seen, -counts)).astype(np.int64)


class Vocab:
    """An immutable symbol table. ``vocab.symbols[i]`` is the symbol of id ``i``.

    Args:
        symbols: the symbols in id order (unique).
        level: one of :data:`LEVELS`.
        eos: end-of-line symbol (must be in ``symbols``) or None.
        unk: unknown-word symbol (must be in ``symbols``) or None.
        counts: optional per-id counts on the counted splits (kept for reports).
        spm_model: for ``"subword"``: path of the SentencePiece model.
        spm_ids: for ``"subword"``: the SentencePiece id of each of our ids.
    """

    def __init__(
        self,
        symbols: Sequence[str],
        level: str,
        *,
        eos: str | None = None,
        unk: str | None = None,
        counts: Sequence[int] | None = None,
        spm_model: str | None = None,
        spm_ids: Sequence[int] | None = None,
    ) -> None:
        require(level in LEVELS, f"unknown vocabulary level {level!r}; choose one of {LEVELS}")
        self._symbols = tuple(str(s) for s in symbols)
        require(len(self._symbols) > 0, "a vocabulary needs at least one symbol")
        self._index = {s: i for i, s in enumerate(self._symbols)}
        require(len(self._index) == len(self._symbols), "vocabulary symbols must be unique")
        self.level = level
        self.eos = eos
        self.unk = unk
        for name, sym in (("eos", eos), ("unk", unk)):
            require(sym is None or sym in self._index, f"{name} symbol {sym!r} is not in the vocabulary")
        self.counts = None if counts is None else tuple(int(c) for c in counts)
        require(
            self.counts is None or len(self.counts) == len(self._symbols),
            "counts must have one entry per symbol",
        )
        self.spm_model = spm_model
        self.spm_ids = None if spm_ids is None else np.asarray(spm_ids, dtype=np.int64)
        self._spm: Any = None
        self._spm_to_ours: np.ndarray | None = None
        if level == "subword":
            require(
                spm_model is not None
                and self.spm_ids is not None
                and len(self.spm_ids) == len(self._symbols),
                "a subword vocabulary needs spm_model and one spm id per symbol",
            )

    # -- table ---------------------------------------------------------------------------
    @property
    def symbols(self) -> tuple[str, ...]:
        return self._symbols

    @property
    def size(self) -> int:
        return len(self._symbols)

    def __len__(self) -> int:
        return len(self._symbols)

    @property
    def eos_id(self) -> int | None:
        return None if self.eos is None else self._index[self.eos]

    @property
    def unk_id(self) -> int | None:
        return None if self.unk is None else self._index[self.unk]

    def index(self, symbol: str) -> int:
        """Id of ``symbol``; unknown symbols map to ``<unk>`` (error if there is none)."""
        idx = self._index.get(symbol)
        if idx is not None:
            return idx
        if self.unk is not None:
            return self._index[self.unk]
        raise SkipxlError(
            f"symbol {symbol!r} is not in this {self.level} vocabulary of {self.size} symbols "
            "and it has no <unk>; encode text from the same corpus the vocabulary was built on"
        )

    def symbol(self, idx: int) -> str:
        require(0 <= int(idx) < self.size, f"token id {idx} is out of range for a vocabulary of {self.size}")
        return self._symbols[int(idx)]

    @property
    def lookup(self) -> dict[str, int]:
        """Symbol -> id mapping (read-only use)."""
        return self._index

    @property
    def fingerprint(self) -> str:
        """sha256 of the level and the symbols in order: equal fingerprints, equal ids."""
        h = hashlib.sha256(self.level.encode())
        for s in self._symbols:
            h.update(b"\x00" + s.encode("utf-8", "surrogatepass"))
        return h.hexdigest()

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Vocab):
            return NotImplemented
        return self.level == other.level and self._symbols == other._symbols

    def __hash__(self) -> int:
        return hash((self.level, self._symbols))

    def __repr__(self) -> str:
        head = ", ".join(repr(s) for s in self._symbols[:5])
        return f"Vocab(level={self.level!r}, size={self.size}, symbols=[{head}, ...])"

    # -- encoding ------------------------------------------------------------------------
    def _sentencepiece(self) -> Any:
        if self._spm is None:
            self._spm = load_sentencepiece(Path(str(self.spm_model)))
            assert self.spm_ids is not None
            inverse = np.full(int(self._spm.get_piece_size()) + 1, -1, dtype=np.int64)
            inverse[self.spm_ids] = np.arange(len(self.spm_ids))
            self._spm_to_ours = inverse
        return self._spm

    def encode_lines(self, lines: Iterable[str]) -> np.ndarray:
        """Encode text lines the way the corpus was encoded. Returns [N] int64 ids.

        Word/subword: each line's tokens followed by ``<eos>``. Char: the characters of
        the lines concatenated. Byte: the UTF-8 bytes of the lines concatenated.
        """
        lines = list(lines)
        if self.level == "word":
            ids: list[int] = []
            for line in lines:
                ids.extend(self.index(w) for w in line.split())
                if self.eos is not None:
                    ids.append(self._index[self.eos])
            return np.asarray(ids, dtype=np.int64)
        if self.level == "subword":
            sp = self._sentencepiece()
            assert self._spm_to_ours is not None
            out: list[np.ndarray] = []
            for pieces in sp.encode([ln.strip() for ln in lines]):
                arr = self._spm_to_ours[np.asarray(pieces, dtype=np.int64)]
                out.append(arr)
                if self.eos is not None:
                    out.append(np.asarray([self._index[self.eos]], dtype=np.int64))
            return np.concatenate(out) if out else np.zeros(0, dtype=np.int64)
        text = "".join(lines)
        if self.level == "byte":
            return np.asarray([self.index(str(b)) for b in text.encode("utf-8")], dtype=np.int64)
        return np.asarray([self.index(c) for c in text], dtype=np.int64)

    def encode(self, text: str) -> np.ndarray:
        """Encode a string (split into lines for word/subword vocabularies). [N] int64."""
        if self.level in ("word", "subword"):
            return self.encode_lines(text.splitlines())
        return self.encode_lines([text])

    def decode(self, ids: Iterable[int]) -> str:
        """Turn ids back into text (``<eos>`` becomes a newline for word/subword levels)."""
        syms = [self.symbol(int(i)) for i in ids]
        if self.level == "word":
            words: list[str] = []
            for s in syms:
                words.append("\n" if s == self.eos else s + " ")
            return "".join(words)
        if self.level == "subword":
            text = "".join("\n" if s == self.eos else s for s in syms)
            return text.replace("\u2581", " ")
        if self.level == "byte":
            raw = bytes(int(s) if s.isdigit() else ord("?") for s in syms)  # "<unk>" -> "?"
            return raw.decode("utf-8", errors="replace")
        return "".join(syms)

    # -- persistence ---------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {
            "format": _FORMAT,
            "level": self.level,
            "eos": self.eos,
            "unk": self.unk,
            "symbols": list(self._symbols),
            "counts": None if self.counts is None else list(self.counts),
            "spm_model": self.spm_model,
            "spm_ids": None if self.spm_ids is None else self.spm_ids.tolist(),
            "size": self.size,
            "fingerprint": self.fingerprint,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Vocab:
        require(
            isinstance(data, dict) and data.get("format") == _FORMAT and "symbols" in data,
            "not a skipxl vocabulary file (missing 'format'/'symbols'); rebuild it with "
            "`skipxl data prepare`",
        )
        return cls(
            data["symbols"],
            data["level"],
            eos=data.get("eos"),
            unk=data.get("unk"),
            counts=data.get("counts"),
            spm_model=data.get("spm_model"),
            spm_ids=data.get("spm_ids"),
        )

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the vocabulary as JSON, atomically (tmp file then rename)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(self.to_dict(), ensure_ascii=False), encoding="utf-8")
        tmp.replace(path)
        return path

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Vocab:
        path = Path(path)
        require(
            path.is_file(), f"vocabulary file {path} does not exist; pass the vocab.json saved with the run"
        )
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise SkipxlError(
                f"vocabulary file {path} is corrupt ({exc}); restore it or re-prepare the data"
            ) from exc
        return cls.from_dict(data)


def build_word_vocab(counts: dict[str, int], *, eos: str = EOS, unk: str = UNK) -> Vocab:
    """Word vocabulary: ``eos`` first, then ``counts``' keys by descending count.

    ``counts`` must iterate in first-occurrence order (a ``Counter`` filled in text order
    does), which breaks ties exactly like the original's ``Counter.most_common``. ``unk``
    is appended last when the text never contains it (WikiText already has ``<unk>``).
    """
    words = [w for w in counts if w != eos]
    freq = np.fromiter((counts[w] for w in words), dtype=np.int64, count=len(words))
    order = frequency_order(freq, np.arange(len(words)))
    symbols = [eos] + [words[i] for i in order]
    sym_counts = [int(counts.get(eos, 0))] + [int(freq[i]) for i in order]
    if unk not in counts:
        symbols.append(unk)
        sym_counts.append(0)
    return Vocab(symbols, "word", eos=eos, unk=unk, counts=sym_counts)


def build_symbol_vocab(counts: np.ndarray, first_seen: np.ndarray, names: Sequence[str], level: str) -> Vocab:
    """Char/byte vocabulary over the symbols that occur (count > 0), frequency ranked.

    Args:
        counts: [K] count of each candidate symbol (e.g. K = 256 bytes).
        first_seen: [K] first occurrence position of each candidate.
        names: [K] symbol string of each candidate.
        level: ``"char"`` or ``"byte"``.
    """
    order = [int(i) for i in frequency_order(counts, first_seen) if counts[i] > 0]
    return Vocab([names[i] for i in order], level, counts=[int(counts[i]) for i in order])


def load_sentencepiece(path: Path) -> Any:
    """Load a SentencePiece model with a clear error when it is missing or unreadable."""
    require(
        path.is_file(),
        f"SentencePiece model {path} does not exist; train one (spm_train) and pass its .model path",
    )
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor()
    try:
        ok = sp.Load(str(path))
    except (OSError, RuntimeError) as exc:
        raise SkipxlError(f"{path} is not a valid SentencePiece model ({exc}); pass a .model file") from exc
    require(bool(ok), f"{path} is not a valid SentencePiece model; pass a .model file")
    return sp


def build_subword_vocab(spm_path: Path, piece_counts: np.ndarray) -> Vocab:
    """SentencePiece pieces re-ranked by training frequency; ``<eos>`` first.

    The model's own ``</s>`` is used as end of line when it has one, else ``<eos>`` is
    added as an extra symbol. Pieces never seen in training keep the model's order at
    the end, so any text still encodes.
    """
    sp = load_sentencepiece(spm_path)
    n = int(sp.get_piece_size())
    pieces = [sp.id_to_piece(i) for i in range(n)]
    counts = np.zeros(n, dtype=np.int64)
    counts[: len(piece_counts)] = piece_counts[:n]
    eos_sp = int(sp.eos_id())
    unk_sp = int(sp.unk_id())
    if eos_sp >= 0:
        eos_name = pieces[eos_sp]
        rest = [i for i in frequency_order(counts, np.arange(n)) if i != eos_sp]
        spm_ids = [eos_sp, *(int(i) for i in rest)]
        symbols = [pieces[i] for i in spm_ids]
    else:
        eos_name = EOS
        require(
            EOS not in pieces, f"{spm_path} has a piece named {EOS} but no eos id; retrain with eos_id set"
        )
        rest = [int(i) for i in frequency_order(counts, np.arange(n))]
        spm_ids = [n, *rest]  # id n stands for the added <eos>
        symbols = [EOS] + [pieces[i] for i in rest]
    sym_counts = [int(counts[i]) if i < n else 0 for i in spm_ids]
    return Vocab(
        symbols,
        "subword",
        eos=eos_name,
        unk=pieces[unk_sp] if unk_sp >= 0 else None,
        counts=sym_counts,
        spm_model=str(Path(spm_path).resolve()),
        spm_ids=spm_ids,
    )


def check_vocab(
    vocab: Vocab, expected: int | Vocab | str | os.PathLike[str], *, what: str = "checkpoint"
) -> None:
    """Refuse a vocabulary that does not match what a checkpoint was trained with.

    Args:
        vocab: the vocabulary of the data about to be used.
        expected: the checkpoint's vocabulary size (``n_token``), its :class:`Vocab`, or
            the path of its saved ``vocab.json``.
        what: name of the other side, for the message.
    Raises:
        SkipxlError: naming the size or the first differing symbol and the fix.
    """
    if isinstance(expected, (int, np.integer)):
        require(
            vocab.size == int(expected),
            f"vocabulary mismatch: the data has {vocab.size} symbols but the {what} expects "
            f"n_token={int(expected)}; load the corpus (and vocab settings) the {what} was trained on",
        )
        return
    source = ""
    if not isinstance(expected, Vocab):
        source = f" ({expected})"
        expected = Vocab.load(expected)
    if vocab == expected:
        return
    if vocab.level != expected.level:
        raise SkipxlError(
            f"vocabulary mismatch: the data is {vocab.level}-level but the {what}{source} is "
            f"{expected.level}-level; use the same corpus and vocab kind as the {what}"
        )
    if vocab.size != expected.size:
        raise SkipxlError(
            f"vocabulary mismatch: the data has {vocab.size} symbols but the {what}{source} has "
            f"{expected.size}; use the same corpus, count_splits and vocab settings as the {what}"
        )
    first = next(i for i, (a, b) in enumerate(zip(vocab.symbols, expected.symbols, strict=True)) if a != b)
    raise SkipxlError(
        f"vocabulary mismatch: id {first} is {vocab.symbols[first]!r} in the data but "
        f"{expected.symbols[first]!r} in the {what}{source} (same size {vocab.size}, different order); "
        f"rebuild the data with the {what}'s settings or encode with its vocab.json"
    )
