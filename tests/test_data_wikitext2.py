"""WikiText-2 from ../shared/data (xz-compressed official files): published counts.

Expected numbers (docs: shared/data/SOURCES.md; Merity et al. 2016): train 2,088,628
tokens including one <eos> per line, valid 217,646, test 245,569, vocabulary 33,278.
"""

from __future__ import annotations

import lzma
from pathlib import Path

import numpy as np
import pytest

from skipxl.data import DataConfig, LMOrderedIterator, load_corpus

WT2 = Path(__file__).resolve().parents[2] / "shared" / "data" / "wikitext-2"
pytestmark = [
    pytest.mark.shared_data,
    pytest.mark.skipif(
        not (WT2 / "train.txt.xz").is_file(),
        reason=f"WikiText-2 not found at {WT2} (../shared/data/wikitext-2/*.txt.xz relative to the repo)",
    ),
]


@pytest.fixture(scope="module")
def wt2(tmp_path_factory):
    # the shared folder is read-only: keep the cache in a temporary folder
    cache = tmp_path_factory.mktemp("wt2cache")
    return load_corpus(DataConfig(corpus="wt2", data_dir=str(WT2), cache_dir=str(cache)))


def test_published_counts(wt2):
    assert wt2.vocab.size == 33_278
    assert {s: len(a) for s, a in wt2.splits.items()} == {
        "train": 2_088_628,
        "valid": 217_646,
        "test": 245_569,
    }
    assert wt2.splits["train"].dtype == np.uint16


def test_vocab_sorted_by_frequency(wt2):
    vocab = wt2.vocab
    assert vocab.symbols[0] == "<eos>" and vocab.unk == "<unk>"
    # WikiText ships its own <unk>: it is a counted word, not an appended extra
    assert vocab.counts[vocab.unk_id] > 0 and vocab.symbols[-1] != "<unk>"
    total = sum(np.bincount(np.asarray(a), minlength=vocab.size) for a in wt2.splits.values())
    np.testing.assert_array_equal(total, vocab.counts)  # wt2 counts all three splits (original)
    assert np.all(np.diff(total[1:]) <= 0)
    assert vocab.symbols[1:4] == ("the", ",", ".")


def test_valid_matches_naive_tokenisation(wt2):
    with lzma.open(WT2 / "valid.txt.xz", "rt", encoding="utf-8") as f:
        tokens = [t for line in f for t in [*line.split(), "<eos>"]]
    ids = np.array([wt2.vocab.lookup[t] for t in tokens])
    np.testing.assert_array_equal(wt2.splits["valid"], ids)


def test_cached_reload_and_iterator(wt2):
    again = load_corpus(wt2.config)
    assert again.cache_hit
    it = LMOrderedIterator(again.splits["valid"], 10, 64, epochs=1)
    assert it.targets_per_epoch == 10 * (217_646 // 10 - 1)
    (_, micro), *_ = it
    assert wt2.vocab.decode(micro[0][0][0, :6].tolist()).split() == ["=", "Homarus", "gammarus", "="]
