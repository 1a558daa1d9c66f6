"""Corpus sources: word folders (plain/xz/gz, both naming schemes), enwik8/text8 zips,
and the one clear error per kind of bad input.

The character corpora are checked against a naive re-implementation of the original
preparation (prep_enwik8.py / prep_text8.py writing train/valid/test.txt, then
Transformer-XL's Vocab counting and encoding them line by line) on small files made here,
with the split sizes scaled down.
"""

from __future__ import annotations

import gzip
import io
import lzma
import zipfile
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from skipxl.data import DataConfig, load_corpus
from skipxl.errors import SkipxlError

TRAIN = "b a c a\n\n  d\ta  b \r\nc a\n= x =\n"
VALID = "a b\nzz a\n"
TEST = "c\u3000a   b\nlast line without newline"


def write_folder(root: Path, names: str = "{}.txt", opener=open, texts=(TRAIN, VALID, TEST)) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for split, text in zip(("train", "valid", "test"), texts, strict=True):
        with opener(root / names.format(split), "wt", encoding="utf-8", newline="") as f:
            f.write(text)
    return root


def naive_word_tokens(text: str) -> list[str]:
    """Original convention: file iteration with universal newlines, line.split() + <eos>."""
    out = []
    for line in io.StringIO(text, newline=None):
        out += [*line.split(), "<eos>"]
    return out


def load(tmp_path, **kw):
    return load_corpus(DataConfig(cache_dir=str(tmp_path / "cache"), **kw))


def test_txt_folder_word_convention(tmp_path):
    corpus = load(tmp_path, corpus="txt", data_dir=str(write_folder(tmp_path / "d")))
    vocab = corpus.vocab
    train_tokens = naive_word_tokens(TRAIN)
    counts = Counter(t for t in train_tokens if t != "<eos>")
    # <eos> first, then by count, ties by first occurrence; <unk> appended (absent from text)
    want = ["<eos>"] + [w for w, _ in counts.most_common()] + ["<unk>"]
    assert list(vocab.symbols) == want
    assert vocab.level == "word" and vocab.eos_id == 0 and vocab.unk_id == len(want) - 1
    for split, text in (("train", TRAIN), ("valid", VALID), ("test", TEST)):
        ids = [vocab.index(t) for t in naive_word_tokens(text)]
        np.testing.assert_array_equal(np.asarray(corpus.splits[split]), ids)
    assert vocab.symbol(int(corpus.splits["valid"][3])) == "<unk>"  # "zz" never seen in train


@pytest.mark.parametrize(
    ("names", "opener"),
    [("wiki.{}.tokens", open), ("{}.txt.xz", lzma.open), ("wiki.{}.tokens.gz", gzip.open)],
)
def test_layouts_and_compression_give_same_ids(tmp_path, names, opener):
    plain = load(tmp_path / "p", corpus="txt", data_dir=str(write_folder(tmp_path / "plain")))
    other = load(tmp_path / "o", corpus="wt103", data_dir=str(write_folder(tmp_path / "x", names, opener)))
    assert other.vocab == plain.vocab
    for split in plain.splits:
        np.testing.assert_array_equal(other.splits[split], plain.splits[split])


def test_wt2_counts_all_splits_wt103_train_only(tmp_path):
    folder = str(write_folder(tmp_path / "d"))
    wt2 = load(tmp_path, corpus="wt2", data_dir=folder)
    wt103 = load(tmp_path, corpus="wt103", data_dir=folder)
    assert "zz" in wt2.vocab.lookup and "zz" not in wt103.vocab.lookup
    custom = load(tmp_path, corpus="wt2", data_dir=folder, count_splits=("train",))
    assert custom.vocab == wt103.vocab


def test_missing_folder_split_and_empty_file(tmp_path):
    with pytest.raises(SkipxlError, match="does not exist"):
        load(tmp_path, corpus="wt103", data_dir=str(tmp_path / "nope"))
    folder = write_folder(tmp_path / "d")
    (folder / "valid.txt").unlink()
    with pytest.raises(SkipxlError, match=r"no valid split .*wiki\.valid\.tokens"):
        load(tmp_path, corpus="wt103", data_dir=str(folder))
    (folder / "valid.txt").write_text("")
    with pytest.raises(SkipxlError, match=r"valid\.txt is empty"):
        load(tmp_path, corpus="wt103", data_dir=str(folder))
    with pytest.raises(SkipxlError, match="needs data_dir"):
        DataConfig(corpus="wt103")


def test_corrupt_xz_is_reported(tmp_path):
    folder = write_folder(tmp_path / "d", "{}.txt.xz", lzma.open)
    data = (folder / "train.txt.xz").read_bytes()
    (folder / "train.txt.xz").write_bytes(data[: len(data) // 2])
    with pytest.raises(SkipxlError, match=r"train\.txt\.xz"):
        load(tmp_path, corpus="wt2", data_dir=str(folder))


def test_nested_folder_hint(tmp_path):
    write_folder(tmp_path / "outer" / "wikitext-2")
    with pytest.raises(SkipxlError, match="wikitext-2"):
        load(tmp_path, corpus="wt2", data_dir=str(tmp_path / "outer"))


# -- enwik8 / text8 ------------------------------------------------------------------------
def make_zip(path: Path, member: str, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr(member, data)
    return path


def fake_enwik8(n: int, seed: int = 0) -> bytes:
    rng = np.random.default_rng(seed)
    # skewed byte distribution with newlines, tabs and high bytes (UTF-8 fragments)
    alphabet = np.array([*b"<page> abcdefghij\n\t\r", 195, 169, 226, 130, 172], dtype=np.uint8)
    p = np.linspace(3, 1, len(alphabet))
    return rng.choice(alphabet, size=n, p=p / p.sum()).tobytes()


def naive_original(parts: list[str], add_eos: bool = False) -> tuple[list[str], list[list[int]]]:
    """Transformer-XL's Vocab over train/valid/test.txt: count all, most_common, encode."""
    counter: Counter[str] = Counter()
    tokenized = []
    for text in parts:
        syms = []
        for line in io.StringIO(text, newline=None):
            syms += line.strip().split() + (["<eos>"] if add_eos else [])
        counter.update(syms)
        tokenized.append(syms)
    idx2sym = [s for s, _ in counter.most_common()]
    sym2idx = {s: i for i, s in enumerate(idx2sym)}
    return idx2sym, [[sym2idx[s] for s in syms] for syms in tokenized]


def test_enwik8_matches_original_preparation(tmp_path):
    data = fake_enwik8(3000)
    make_zip(tmp_path / "e" / "enwik8.zip", "enwik8", data)
    corpus = load(tmp_path, corpus="enwik8", data_dir=str(tmp_path / "e"), char_split=(2400, 300, 300))
    # prep_enwik8.py: last 2 x n_test bytes are valid/test, bytes written as decimal symbols
    parts = [data[:-600], data[-600:-300], data[-300:]]
    texts = [" ".join(str(c) if c != 10 else "\n" for c in part) for part in parts]
    symbols, ids = naive_original(texts)
    assert list(corpus.vocab.symbols) == symbols
    assert corpus.vocab.level == "byte"
    for split, want in zip(("train", "valid", "test"), ids, strict=True):
        np.testing.assert_array_equal(corpus.splits[split], want)
    assert len(corpus.splits["train"]) == 2400 - data[:2400].count(b"\n")


def test_enwik8_raw_keeps_every_byte_and_extracted_file(tmp_path):
    data = fake_enwik8(1000, seed=1)
    (tmp_path / "e").mkdir()
    (tmp_path / "e" / "enwik8").write_bytes(data)  # the extracted file works too
    corpus = load(
        tmp_path,
        corpus="enwik8",
        data_dir=str(tmp_path / "e"),
        char_split=(800, 100, 100),
        char_convention="raw",
    )
    decoded = b"".join(bytes([int(corpus.vocab.symbol(int(i)))]) for i in corpus.splits["valid"])
    assert decoded == data[800:900]
    assert sum(len(s) for s in corpus.splits.values()) == 1000


def test_text8_matches_original_preparation(tmp_path):
    rng = np.random.default_rng(0)
    words = ["the", "of", "and", "anarchism", "zebra", "q"]
    text = " " + " ".join(rng.choice(words, size=400)) + " "
    make_zip(tmp_path / "t" / "text8.zip", "text8", text.encode())
    n = len(text)
    sizes = (n - 400, 200, 200)
    corpus = load(tmp_path, corpus="text8", data_dir=str(tmp_path / "t"), char_split=sizes)
    parts = [text[:-400], text[-400:-200], text[-200:]]
    texts = [" ".join("_" if c == " " else c for c in part.strip()) for part in parts]  # prep_text8.py
    symbols, ids = naive_original(texts)
    assert [("_" if s == " " else s) for s in corpus.vocab.symbols] == symbols
    assert corpus.vocab.level == "char"
    for split, want in zip(("train", "valid", "test"), ids, strict=True):
        np.testing.assert_array_equal(corpus.splits[split], want)
    assert corpus.vocab.decode(corpus.splits["test"]) == parts[2].strip()


def test_official_split_rule_needs_1e8_symbols(tmp_path):
    make_zip(tmp_path / "e" / "enwik8.zip", "enwik8", fake_enwik8(5000))
    with pytest.raises(SkipxlError, match=r"5,000 bytes .*100,000,000.*truncated"):
        load(tmp_path, corpus="enwik8", data_dir=str(tmp_path / "e"))
    with pytest.raises(SkipxlError, match="sum to the file length"):
        load(tmp_path, corpus="enwik8", data_dir=str(tmp_path / "e"), char_split=(10, 10, 10))


def test_corrupt_and_wrong_zips(tmp_path):
    folder = tmp_path / "e"
    good = make_zip(folder / "enwik8.zip", "enwik8", fake_enwik8(2000)).read_bytes()
    cfg = dict(corpus="enwik8", data_dir=str(folder), char_split=(1800, 100, 100))
    (folder / "enwik8.zip").write_bytes(good[: len(good) // 2])  # truncated download
    with pytest.raises(SkipxlError, match=r"enwik8\.zip is not a readable zip"):
        load(tmp_path, **cfg)
    (folder / "enwik8.zip").write_bytes(b"PK\x03\x04 certainly not a zip" * 10)
    with pytest.raises(SkipxlError, match="not a readable zip"):
        load(tmp_path, **cfg)
    make_zip(folder / "enwik8.zip", "something_else", b"x" * 2000)
    with pytest.raises(SkipxlError, match="no member 'enwik8'"):
        load(tmp_path, **cfg)
    (folder / "enwik8.zip").unlink()
    with pytest.raises(SkipxlError, match=r"mattmahoney\.net/dc/enwik8\.zip"):
        load(tmp_path, **cfg)


def test_config_validation_messages():
    with pytest.raises(SkipxlError, match="unknown corpus"):
        DataConfig(corpus="ptb")
    with pytest.raises(SkipxlError, match="character-level"):
        DataConfig(corpus="enwik8", data_dir="x", vocab="word")
    with pytest.raises(SkipxlError, match="spm_model"):
        DataConfig(corpus="txt", data_dir="x", vocab="sentencepiece")
    with pytest.raises(SkipxlError, match="no hub source"):
        DataConfig(corpus="enwik8", source="hub")
    with pytest.raises(SkipxlError, match="char_split only applies"):
        DataConfig(corpus="wt2", data_dir="x", char_split=(1, 2, 3))
    with pytest.raises(SkipxlError, match="include 'train'"):
        DataConfig(corpus="wt2", data_dir="x", count_splits=("valid",))
    DataConfig(corpus="wt103", source="hub")  # no data_dir needed for the hub


def test_hub_source_offline_equals_local(tmp_path, monkeypatch):
    """The hub path with ``datasets.load_dataset`` replaced by local rows (nothing downloads)."""
    datasets = pytest.importorskip("datasets")
    texts = {"train": TRAIN, "validation": VALID, "test": TEST}
    # hub rows: one per line of the official file, blank lines as empty strings
    rows = {k: [ln if ln.strip() else "" for ln in io.StringIO(v, newline=None)] for k, v in texts.items()}
    calls = []

    def fake_load_dataset(repo, name):
        calls.append((repo, name))
        return datasets.DatasetDict({k: datasets.Dataset.from_dict({"text": v}) for k, v in rows.items()})

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    hub = load_corpus(DataConfig(corpus="wt103", source="hub", cache_dir=str(tmp_path / "c")))
    assert calls == [("Salesforce/wikitext", "wikitext-103-v1")]
    local = load(tmp_path / "l", corpus="wt103", data_dir=str(write_folder(tmp_path / "d")))
    assert hub.vocab == local.vocab
    for split in local.splits:
        np.testing.assert_array_equal(hub.splits[split], local.splits[split])


def test_config_json_roundtrip():
    from skipxl.config_io import from_dict, to_dict
    from skipxl.data import BuiltinConfig

    cfg = DataConfig(
        corpus="enwik8",
        data_dir=Path("/x"),
        char_split=(8, 1, 1),
        count_splits=("train",),
        builtin=BuiltinConfig(seed=4),
    )
    back = from_dict(DataConfig, to_dict(cfg))
    assert back == cfg and back.data_dir == "/x" and back.char_split == (8, 1, 1)
    assert back.vocab_kind == "char" and back.split_sizes == (8, 1, 1)
