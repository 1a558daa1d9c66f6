"""Language-modelling data: corpora, vocabularies, the memmap cache, ordered iterators.

Public API (see docs/DESIGN.md, "Data")::

    corpus = load_corpus(DataConfig(corpus="wt103", data_dir="data/wikitext-103"))
    corpus.vocab, corpus.splits["train"]          # Vocab, 1-D memmap of ids
    it = LMOrderedIterator(corpus.splits["train"], global_batch=60, tgt_len=150,
                           rank=r, world_size=W, micro_steps=A, epochs=None)
    for step, micro_batches in it: ...

Nothing here imports DeepSpeed; ``datasets`` is imported only by the hub loader.
"""

from skipxl.data.builtin import CUES, dependency_targets, generate_builtin
from skipxl.data.config import (
    CHAR_CONVENTIONS,
    CORPORA,
    HUB_DATASETS,
    OFFICIAL_CHAR_SPLIT,
    SPLITS,
    VOCAB_KINDS,
    BuiltinConfig,
    DataConfig,
    resolve_cache_root,
    user_cache_dir,
)
from skipxl.data.corpus import Corpus, load_corpus, prepare
from skipxl.data.iterator import BatchInfo, LMOrderedIterator, MicroBatch, eval_batches
from skipxl.data.vocab import EOS, UNK, Vocab, check_vocab

__all__ = [
    "CHAR_CONVENTIONS",
    "CORPORA",
    "CUES",
    "EOS",
    "HUB_DATASETS",
    "OFFICIAL_CHAR_SPLIT",
    "SPLITS",
    "UNK",
    "VOCAB_KINDS",
    "BatchInfo",
    "BuiltinConfig",
    "Corpus",
    "DataConfig",
    "LMOrderedIterator",
    "MicroBatch",
    "Vocab",
    "check_vocab",
    "dependency_targets",
    "eval_batches",
    "generate_builtin",
    "load_corpus",
    "prepare",
    "resolve_cache_root",
    "user_cache_dir",
]
