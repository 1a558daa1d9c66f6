"""Vocabularies: frequency ranking, encode/decode, persistence, check_vocab, SentencePiece."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from skipxl.data import DataConfig, Vocab, check_vocab, load_corpus
from skipxl.data.vocab import build_word_vocab, frequency_order
from skipxl.errors import SkipxlError


def test_frequency_order_ties_by_first_occurrence():
    counts = np.array([3, 5, 3, 0, 5])
    first = np.array([4, 2, 1, 9, 7])
    assert frequency_order(counts, first).tolist() == [1, 4, 2, 0, 3]


def test_word_vocab_matches_counter_most_common():
    text = ["x", "y", "z", "y", "z", "z", "<unk>", "w", "w", "w", "q"]
    counter = Counter(text)
    vocab = build_word_vocab(counter)
    assert list(vocab.symbols) == ["<eos>"] + [w for w, _ in counter.most_common()]
    assert vocab.unk == "<unk>" and vocab.unk_id == vocab.symbols.index("<unk>")  # already present
    no_unk = build_word_vocab(Counter(["b", "a", "b"]))
    assert no_unk.symbols == ("<eos>", "b", "a", "<unk>")
    assert no_unk.counts == (0, 2, 1, 0)


def test_encode_decode_roundtrip_and_unknowns():
    vocab = build_word_vocab(Counter(["the", "cat", "sat", "on", "the", "mat"]))
    ids = vocab.encode("the cat\nsat on the dog")
    assert vocab.decode(ids) == "the cat \nsat on the <unk> \n"
    assert ids[2] == vocab.eos_id
    char = Vocab(["a", " ", "b"], "char")
    np.testing.assert_array_equal(char.encode("ab a"), [0, 2, 1, 0])
    assert char.decode([2, 1, 0]) == "b a"
    with pytest.raises(SkipxlError, match="no <unk>"):
        char.encode("c")
    byte = Vocab(["104", "105", "195", "169"], "byte")
    assert byte.decode(byte.encode("hié")) == "hié"


def test_save_load_and_fingerprint(tmp_path):
    vocab = build_word_vocab(Counter(["a", "b", "b", "c", "c", "c"]))
    path = vocab.save(tmp_path / "v" / "vocab.json")
    loaded = Vocab.load(path)
    assert loaded == vocab and loaded.fingerprint == vocab.fingerprint
    assert loaded.counts == vocab.counts and loaded.eos_id == 0
    other = Vocab(list(reversed(vocab.symbols)), "word", eos="<eos>", unk="<unk>")
    assert other.fingerprint != vocab.fingerprint
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(SkipxlError, match="corrupt"):
        Vocab.load(tmp_path / "bad.json")
    with pytest.raises(SkipxlError, match="does not exist"):
        Vocab.load(tmp_path / "missing.json")


def test_check_vocab(tmp_path):
    vocab = build_word_vocab(Counter(["a", "b", "b", "c", "c", "c"]))
    check_vocab(vocab, vocab.size)
    check_vocab(vocab, vocab.save(tmp_path / "vocab.json"))
    with pytest.raises(SkipxlError, match="n_token=99"):
        check_vocab(vocab, 99)
    swapped = list(vocab.symbols)
    swapped[1], swapped[2] = swapped[2], swapped[1]
    with pytest.raises(SkipxlError, match="id 1 is 'c' in the data but 'b'"):
        check_vocab(vocab, Vocab(swapped, "word", eos="<eos>", unk="<unk>"))
    with pytest.raises(SkipxlError, match=r"5 symbols .* has 3"):
        check_vocab(vocab, Vocab(["<eos>", "a", "<unk>"], "word", eos="<eos>", unk="<unk>"))
    with pytest.raises(SkipxlError, match="char-level"):
        check_vocab(vocab, Vocab(list(vocab.symbols), "char"))


def test_sentencepiece_vocab(tmp_path):
    spm = pytest.importorskip("sentencepiece")
    rng = np.random.default_rng(0)
    words = ["alpha", "beta", "gamma", "delta", "epsilon", "zeta", "eta", "theta"]
    lines = [" ".join(rng.choice(words, size=rng.integers(3, 9))) for _ in range(300)]
    data = tmp_path / "d"
    data.mkdir()
    (data / "train.txt").write_text("\n".join(lines[:200]) + "\n")
    (data / "valid.txt").write_text("\n".join(lines[200:250]) + "\n")
    (data / "test.txt").write_text("\n".join(lines[250:]) + "\n")
    spm.SentencePieceTrainer.train(
        input=str(data / "train.txt"),
        model_prefix=str(tmp_path / "sp"),
        vocab_size=40,
        model_type="bpe",
        num_threads=1,
        minloglevel=2,
    )
    cfg = DataConfig(
        corpus="txt",
        data_dir=str(data),
        vocab="sentencepiece",
        spm_model=str(tmp_path / "sp.model"),
        cache_dir=str(tmp_path / "c"),
    )
    corpus = load_corpus(cfg)
    vocab = corpus.vocab
    assert vocab.level == "subword" and vocab.eos_id == 0
    train = np.asarray(corpus.splits["train"])
    counts = np.bincount(train, minlength=vocab.size)
    assert counts[0] == 200  # one end of line per line
    seen = counts[1:][counts[1:] > 0]
    assert np.all(np.diff(seen) <= 0) and np.flatnonzero(counts[1:] > 0).max() == len(seen) - 1
    assert vocab.decode(corpus.splits["valid"][:60]).split("\n")[0].strip() == lines[200]
    sp = spm.SentencePieceProcessor(model_file=str(tmp_path / "sp.model"))
    ours = vocab.encode(lines[5])
    assert [vocab.spm_ids[i] for i in ours[:-1]] == sp.encode(lines[5])
    with pytest.raises(SkipxlError, match="does not exist"):
        load_corpus(
            DataConfig(
                corpus="txt",
                data_dir=str(data),
                vocab="sentencepiece",
                spm_model=str(tmp_path / "none.model"),
                cache_dir=str(tmp_path / "c"),
            )
        )
