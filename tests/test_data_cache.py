"""The encoded-corpus cache: hit without re-encoding, invalidation, atomicity, location."""

from __future__ import annotations

import os
import stat

import numpy as np
import pytest

import skipxl.data.corpus as corpus_mod
from skipxl.data import BuiltinConfig, DataConfig, load_corpus, prepare, resolve_cache_root
from skipxl.errors import SkipxlError


def make_txt(folder, train="a b c\nb c\nc\n", valid="a c\n", test="b\n"):
    folder.mkdir(parents=True, exist_ok=True)
    for name, text in (("train", train), ("valid", valid), ("test", test)):
        (folder / f"{name}.txt").write_text(text)
    return folder


def forbid_encoding(monkeypatch):
    def boom(*args, **kwargs):
        raise AssertionError("the corpus was re-encoded although the cache is valid")

    monkeypatch.setattr(corpus_mod, "_build", boom)


def test_second_load_is_a_memmap_cache_hit(tmp_path, monkeypatch):
    cfg = DataConfig(corpus="txt", data_dir=str(make_txt(tmp_path / "d")), cache_dir=str(tmp_path / "c"))
    first = load_corpus(cfg)
    assert not first.cache_hit
    forbid_encoding(monkeypatch)
    second = load_corpus(cfg)
    assert second.cache_hit and second.cache_path == first.cache_path
    assert second.vocab == first.vocab
    for split in ("train", "valid", "test"):
        assert isinstance(second.splits[split], np.memmap)
        assert second.splits[split].dtype == np.uint16
        np.testing.assert_array_equal(second.splits[split], first.splits[split])
    assert not any(p.name.startswith(".tmp-") for p in (tmp_path / "c").iterdir())


def test_source_change_invalidates(tmp_path, monkeypatch):
    folder = make_txt(tmp_path / "d")
    cfg = DataConfig(corpus="txt", data_dir=str(folder), cache_dir=str(tmp_path / "c"))
    first = load_corpus(cfg)
    # same size, different content, different mtime
    (folder / "train.txt").write_text("a b d\nb c\nc\n")
    st = (folder / "train.txt").stat()
    os.utime(folder / "train.txt", ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    second = load_corpus(cfg)
    assert not second.cache_hit and second.cache_path != first.cache_path
    assert "d" in second.vocab.lookup
    # longer file
    (folder / "valid.txt").write_text("a c\nc c c\n")
    third = load_corpus(cfg)
    assert not third.cache_hit and len(third.splits["valid"]) == 7
    # touching only the mtime is treated as a change too (safe side)
    os.utime(folder / "test.txt", ns=(st.st_atime_ns, st.st_mtime_ns + 5 * 10**9))
    assert not load_corpus(cfg).cache_hit
    forbid_encoding(monkeypatch)
    assert load_corpus(cfg).cache_hit


def test_vocab_settings_are_part_of_the_key(tmp_path):
    folder = str(make_txt(tmp_path / "d"))
    a = load_corpus(DataConfig(corpus="txt", data_dir=folder, cache_dir=str(tmp_path / "c")))
    b = load_corpus(
        DataConfig(
            corpus="txt", data_dir=folder, cache_dir=str(tmp_path / "c"), count_splits=("train", "test")
        )
    )
    assert a.cache_path != b.cache_path and not b.cache_hit


def test_broken_entry_is_rebuilt(tmp_path):
    cfg = DataConfig(corpus="txt", data_dir=str(make_txt(tmp_path / "d")), cache_dir=str(tmp_path / "c"))
    first = load_corpus(cfg)
    want = np.array(first.splits["train"])
    (first.cache_path / "train.bin").write_bytes(b"\x00\x01\x02")
    again = load_corpus(cfg)
    assert not again.cache_hit
    np.testing.assert_array_equal(again.splits["train"], want)


def test_failed_build_leaves_nothing(tmp_path):
    folder = make_txt(tmp_path / "d", valid="\n")  # valid encodes to 1 token: too short
    cfg = DataConfig(corpus="txt", data_dir=str(folder), cache_dir=str(tmp_path / "c"))
    with pytest.raises(SkipxlError, match="valid split"):
        load_corpus(cfg)
    assert list((tmp_path / "c").iterdir()) == []


def test_default_cache_location(tmp_path, monkeypatch):
    monkeypatch.setenv("SKIPXL_CACHE", str(tmp_path / "user"))
    folder = make_txt(tmp_path / "d")
    cfg = DataConfig(corpus="txt", data_dir=str(folder))
    assert resolve_cache_root(cfg) == folder / ".skipxl_cache"
    corpus = load_corpus(cfg)
    assert corpus.cache_path.parent == folder / ".skipxl_cache"
    assert resolve_cache_root(DataConfig()) == tmp_path / "user"
    folder.chmod(stat.S_IRUSR | stat.S_IXUSR | stat.S_IRGRP | stat.S_IXGRP)  # read-only data folder
    try:
        assert resolve_cache_root(cfg) == tmp_path / "user"
    finally:
        folder.chmod(0o755)


def test_prepare_summary_for_builtin(tmp_path, monkeypatch):
    cfg = DataConfig(
        corpus="builtin",
        builtin=BuiltinConfig(seed=3, train_tokens=20_000, eval_tokens=2_000),
        cache_dir=str(tmp_path / "c"),
    )
    summary = prepare(cfg)
    assert summary["splits"] == {"train": 20_000, "valid": 2_000, "test": 2_000}
    assert summary["cache_hit"] is False and summary["level"] == "word"
    assert summary["vocab_head"][0] == "<eos>"
    forbid_encoding(monkeypatch)
    assert prepare(cfg)["cache_hit"] is True
