"""The long-range probe: a synthetic corpus whose answers sit at a controlled distance.

Skip-Retain (arXiv 2311.08123) claims that a skipped layer's retained memory holds older
activations, so "the layer sees a longer context at no extra memory". The paper never measures
how far back a model actually reads. This corpus makes that measurable: every *probe* is

    ... key_c  v ...(filler)... ask_c  v ...
            ^ source s                 ^ answer a = s + d

with ``c`` one of ``channels`` marker pairs and ``v`` one of ``values`` value words drawn
uniformly. The answer ``v`` after ``ask_c`` can only be predicted by reading the value after the
most recent ``key_c``, exactly ``d`` tokens back (a channel holds one open probe at a time, so
the most recent ``key_c`` is always the right one). Distances are drawn per probe: a bin of
``bins`` uniformly, then ``d`` uniformly inside ``[lo, hi)``, so that every bin - from inside the
training segment to several times ``mem_len`` - gets about the same number of probes. Filler
words are uniform, so nothing else in the stream carries information about ``v``: without the
source in context, the best guess among the values is chance (``log(values)`` nats).

Enabled with ``--builtin_probe true`` (an option of the built-in corpus, see
:class:`~skipxl.data.config.BuiltinConfig`); :func:`probe_records` regenerates where the probes
of a split are, which ``skipxl probe`` scores per distance bin.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from skipxl.data.vocab import EOS, UNK, Vocab, frequency_order

PROBE_VERSION = 1
"""Bumped whenever the generated probe text changes (part of the cache key)."""

N_FILLER = 256
_MAX_GAP = 32  # filler tokens between two probes of one channel: uniform in [0, _MAX_GAP)
_LINE = 64  # an <eos> every _LINE tokens where no probe token sits (WikiText-like lines)


@dataclass(frozen=True)
class ProbeRecords:
    """Where the probes of one split are (indices into the split's token array).

    Attributes:
        answer: ``[N]`` int64 index of each answer token (predicted from ``answer - 1``, ``ask_c``).
        source: ``[N]`` int64 index of the value token it copies (``source = answer - distance``).
        distance: ``[N]`` int64 ``answer - source``.
        channel: ``[N]`` int64 marker pair of the probe.
    """

    answer: np.ndarray
    source: np.ndarray
    distance: np.ndarray
    channel: np.ndarray


def probe_symbols(n_values: int, n_channels: int) -> list[str]:
    """The raw word table: ``<eos>``, fillers, values, key markers, ask markers."""
    return (
        [EOS]
        + [f"w{i}" for i in range(N_FILLER)]
        + [f"v{i}" for i in range(n_values)]
        + [f"key{c}" for c in range(n_channels)]
        + [f"ask{c}" for c in range(n_channels)]
    )


def value_symbols(n_values: int) -> list[str]:
    return [f"v{i}" for i in range(n_values)]


def generate_probe_split(
    seed: int, split_index: int, n_tokens: int, bins: tuple[int, ...], n_values: int, n_channels: int
) -> tuple[np.ndarray, ProbeRecords]:
    """One split in raw symbol ids (indices into :func:`probe_symbols`) and its probes."""
    rng = np.random.default_rng([seed, split_index, PROBE_VERSION, 7])
    value0 = 1 + N_FILLER
    key0, ask0 = value0 + n_values, value0 + n_values + n_channels
    tokens = rng.integers(1, 1 + N_FILLER, size=n_tokens)  # [N] uniform fillers
    taken = np.zeros(n_tokens, dtype=bool)
    edges = np.asarray(bins, dtype=np.int64)
    rows: list[tuple[int, int, int, int]] = []
    for c in range(n_channels):
        t = int(rng.integers(0, _MAX_GAP))  # position of key_c
        while True:
            b = int(rng.integers(len(edges) - 1))
            d = int(rng.integers(edges[b], edges[b + 1]))
            while t + d + 1 < n_tokens and taken[[t, t + 1, t + d, t + d + 1]].any():
                t += 1  # shift the whole probe: its distance stays exact
            if t + d + 1 >= n_tokens:
                break
            s, a = t + 1, t + d + 1
            v = value0 + int(rng.integers(n_values))
            tokens[[t, s, a - 1, a]] = [key0 + c, v, ask0 + c, v]
            taken[[t, s, a - 1, a]] = True
            rows.append((a, s, d, c))
            t = a + 1 + int(rng.integers(0, _MAX_GAP))
    lines = np.arange(_LINE - 1, n_tokens, _LINE)
    tokens[lines[~taken[lines]]] = 0  # line breaks only where no probe token sits
    arr = np.array(sorted(rows), dtype=np.int64).reshape(-1, 4)  # [N, 4] sorted by answer
    return tokens, ProbeRecords(arr[:, 0], arr[:, 1], arr[:, 2], arr[:, 3])


def generate_probe(cfg: object) -> tuple[Vocab, dict[str, np.ndarray], dict[str, ProbeRecords]]:
    """The probe corpus for a :class:`~skipxl.data.config.BuiltinConfig` with ``probe=True``.

    Ids are ranked like every word corpus (``<eos>`` first, then by train frequency), so the
    records' positions are valid for the returned splits, whose values equal the raw ones remapped.
    """
    from skipxl.data.config import SPLITS

    symbols = probe_symbols(cfg.probe_values, cfg.probe_channels)
    sizes = {"train": cfg.train_tokens, "valid": cfg.eval_tokens, "test": cfg.eval_tokens}
    raw, records = {}, {}
    for i, s in enumerate(SPLITS):
        raw[s], records[s] = generate_probe_split(
            cfg.seed, i, sizes[s], cfg.probe_bins, cfg.probe_values, cfg.probe_channels
        )
    n = len(symbols)
    counts = np.bincount(raw["train"], minlength=n)
    first = np.full(n, np.iinfo(np.int64).max, dtype=np.int64)
    uniq, idx = np.unique(raw["train"], return_index=True)
    first[uniq] = idx
    order = [0, *[int(i) for i in frequency_order(counts, first) if i != 0]]
    vocab = Vocab(
        [symbols[i] for i in order] + [UNK],
        "word",
        eos=EOS,
        unk=UNK,
        counts=[int(counts[i]) for i in order] + [0],
    )
    remap = np.empty(n, dtype=np.int64)
    remap[np.array(order)] = np.arange(n)
    return vocab, {s: remap[raw[s]] for s in SPLITS}, records


def probe_records(cfg: object, split: str) -> ProbeRecords:
    """The probes of ``split`` for a probe :class:`~skipxl.data.config.BuiltinConfig` (regenerated:
    each split has its own random stream, so only that split is generated)."""
    from skipxl.data.config import SPLITS

    n = cfg.train_tokens if split == "train" else cfg.eval_tokens
    _, rec = generate_probe_split(
        cfg.seed, SPLITS.index(split), n, cfg.probe_bins, cfg.probe_values, cfg.probe_channels
    )
    return rec
