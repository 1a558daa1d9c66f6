"""The built-in corpus: determinism, Zipfian word vocabulary, and long-range structure.

The long-range test checks the property the corpus exists for: at every dependency point
(the token after a cue word) the answer is recoverable from context further back than
``min_gap`` tokens (copy the most recent entity of the cue's class: always right), while
a predictor restricted to the last ``min_gap - 1`` tokens can do no better than guessing.
"""

from __future__ import annotations

import numpy as np
import pytest

from skipxl.data import CUES, BuiltinConfig, DataConfig, dependency_targets, generate_builtin, load_corpus
from skipxl.errors import SkipxlError

SMALL = BuiltinConfig(seed=0, train_tokens=150_000, eval_tokens=20_000, min_gap=64)


@pytest.fixture(scope="module")
def small():
    return generate_builtin(SMALL)


def test_same_seed_same_corpus_other_seed_differs(small):
    vocab, splits = small
    vocab2, splits2 = generate_builtin(SMALL)
    assert vocab == vocab2
    for split in splits:
        np.testing.assert_array_equal(splits[split], splits2[split])
    _, other = generate_builtin(BuiltinConfig(seed=1, train_tokens=150_000, eval_tokens=20_000, min_gap=64))
    assert not np.array_equal(other["train"], splits["train"])
    assert not np.array_equal(splits["valid"], splits["test"])


def test_sizes_and_zipfian_vocabulary(small):
    vocab, splits = small
    assert {s: len(a) for s, a in splits.items()} == {"train": 150_000, "valid": 20_000, "test": 20_000}
    assert 3_000 <= vocab.size <= 6_000
    assert vocab.symbols[0] == "<eos>" and vocab.symbols[-1] == "<unk>"
    counts = np.bincount(splits["train"], minlength=vocab.size)
    assert counts[0] == vocab.counts[0]
    assert np.all(np.diff(counts[1:-1]) <= 0)  # ranked by train frequency
    # heavy head, long tail: the top 1% of words cover a large share of the tokens
    top = counts[1 : 1 + vocab.size // 100].sum() / counts.sum()
    assert top > 0.4
    assert (counts[1:] > 0).sum() > 2_000


def test_text_is_wikitext_like(small):
    vocab, splits = small
    text = vocab.decode(splits["train"][:400])
    assert text.startswith("\n= ") and " of " in text.split("\n")[1]
    assert "<unk>" not in text


def entity_classes(tokens: np.ndarray, vocab) -> dict[int, set[int]]:
    """cue id -> the set of ids that ever follow it."""
    return {
        vocab.lookup[c]: set(tokens[np.flatnonzero(tokens[:-1] == vocab.lookup[c]) + 1].tolist())
        for c in CUES
    }


def test_dependency_needs_context_beyond_min_gap(small):
    vocab, splits = small
    tokens = np.asarray(splits["train"])
    targets = dependency_targets(tokens, vocab)
    assert len(targets) / len(tokens) > 0.005  # enough dependency points to move the loss
    classes = entity_classes(tokens, vocab)
    assert all(len(ids) > 50 for ids in classes.values())
    window = SMALL.min_gap - 1
    long_right = short_right = 0
    fallback = {cue: max(ids, key=lambda t: (tokens == t).sum()) for cue, ids in classes.items()}
    for j in targets:
        cue = int(tokens[j - 1])
        answer = int(tokens[j])
        members = classes[cue]
        # the answer never occurs in the last `window` tokens: a segment this long cannot copy it
        assert answer not in set(tokens[max(0, j - 1 - window) : j - 1].tolist())
        # long context: the most recent entity of the cue's class is always the answer
        past = tokens[: j - 1]
        recent = next((int(t) for t in past[::-1] if int(t) in members), None)
        long_right += recent == answer
        # short context: the most recent class member inside the window, else the most frequent one
        local = [int(t) for t in tokens[max(0, j - 1 - window) : j - 1] if int(t) in members]
        guess = local[-1] if local else fallback[cue]
        short_right += guess == answer
    assert long_right == len(targets)
    assert short_right / len(targets) < 0.05


def test_load_through_cache(tmp_path, monkeypatch):
    cfg = DataConfig(corpus="builtin", builtin=SMALL, cache_dir=str(tmp_path))
    first = load_corpus(cfg)
    _, splits = generate_builtin(SMALL)
    np.testing.assert_array_equal(first.splits["train"], splits["train"])
    import skipxl.data.corpus as corpus_mod

    monkeypatch.setattr(corpus_mod, "generate_builtin", lambda *_: pytest.fail("regenerated"))
    assert load_corpus(cfg).cache_hit
    monkeypatch.undo()
    tiny = BuiltinConfig(seed=5, train_tokens=5_000, eval_tokens=500)
    other = load_corpus(DataConfig(corpus="builtin", builtin=tiny, cache_dir=str(tmp_path)))
    assert other.cache_path != first.cache_path


def test_builtin_config_validation():
    with pytest.raises(SkipxlError, match="min_gap"):
        BuiltinConfig(min_gap=2)
    with pytest.raises(SkipxlError, match="train_tokens"):
        BuiltinConfig(train_tokens=10)
    with pytest.raises(SkipxlError, match=r"use vocab=.word."):
        DataConfig(corpus="builtin", vocab="sentencepiece", spm_model="x.model")
