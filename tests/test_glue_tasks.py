"""GLUE readers (skipxl.glue.tasks): official-layout quirks on small files, real row counts."""

from __future__ import annotations

import lzma
from pathlib import Path

import pytest

from skipxl.errors import SkipxlError
from skipxl.glue.tasks import DEFAULT_GLUE_DIR, TASKS, get_task, load_hub, load_local, parse_tasks


def write(root: Path, task_dir: str, split: str, text: str, xz: bool = False) -> Path:
    folder = root / task_dir
    folder.mkdir(parents=True, exist_ok=True)
    data = text.encode("utf-8")
    if xz:
        path = folder / f"{split}.tsv.xz"
        path.write_bytes(lzma.compress(data))
    else:
        path = folder / f"{split}.tsv"
        path.write_bytes(data)
    return path


def test_cola_has_no_header_and_four_columns(tmp_path: Path) -> None:
    write(
        tmp_path,
        "CoLA",
        "train",
        "gj04\t1\t\tOur friends won't buy this analysis.\ngj04\t0\t*\tThey drank the pub.\n",
        xz=True,
    )
    split = load_local("cola", "train", tmp_path)
    assert [(e.text_a, e.text_b, e.label) for e in split.examples] == [
        ("Our friends won't buy this analysis.", None, 1),
        ("They drank the pub.", None, 0),
    ]


def test_mrpc_bom_header_and_unbalanced_quotes(tmp_path: Path) -> None:
    write(
        tmp_path,
        "MRPC",
        "train",
        "\ufeffQuality\t#1 ID\t#2 ID\t#1 String\t#2 String\n"
        '1\t702876\t702977\the called " the witness " , of lying .\tReferring to him as " the witness\n'
        "0\t2108705\t2108831\tYucaipa owned \" Dominick 's .\tShe said .\n",
    )
    split = load_local("mrpc", "train", tmp_path)
    assert len(split) == 2
    assert split.examples[0].text_a == 'he called " the witness " , of lying .'
    assert split.examples[0].text_b == 'Referring to him as " the witness'
    assert [e.label for e in split.examples] == [1, 0]


def test_sst2_unquoted_quote_keeps_rows_apart_and_text_verbatim(tmp_path: Path) -> None:
    # With csv quoting, the lone " would swallow the following lines into one field.
    write(
        tmp_path,
        "SST-2",
        "dev",
        "sentence\tlabel\nit 's a \" charming journey . \t1\n"
        "unflinchingly bleak\u2028and desperate \t0\nfine . \t1\n",
    )
    split = load_local("sst2", "dev", tmp_path)
    assert [e.label for e in split.examples] == [1, 0, 1]
    assert split.examples[0].text_a == "it 's a \" charming journey . "  # trailing space kept
    assert split.examples[1].text_a == "unflinchingly bleak\u2028and desperate "  # only \n ends a line


def test_stsb_ten_columns_float_scores(tmp_path: Path) -> None:
    write(
        tmp_path,
        "STS-B",
        "dev",
        "index\tgenre\tfilename\tyear\told_index\tsource1\tsource2\tsentence1\tsentence2\tscore\n"
        "0\tmain-captions\tMSRvid\t2012test\t0000\tnone\tnone\tA man dances.\tA man is dancing.\t5.000\n"
        "1\tmain-news\tnews\t2012test\t0001\tnone\tnone\tOne.\tTwo.\t0.750\n",
        xz=True,
    )
    split = load_local("sts-b", "dev", tmp_path)
    assert [(e.text_a, e.text_b, e.label) for e in split.examples] == [
        ("A man dances.", "A man is dancing.", 5.0),
        ("One.", "Two.", 0.75),
    ]
    assert get_task("stsb").is_regression and get_task("stsb").num_labels == 1


MNLI_TRAIN_HEAD = (
    "index\tpromptID\tpairID\tgenre\tsentence1_binary_parse\tsentence2_binary_parse\t"
    "sentence1_parse\tsentence2_parse\tsentence1\tsentence2\tlabel1\tgold_label\n"
)
MNLI_DEV_HEAD = (
    "index\tpromptID\tpairID\tgenre\tsentence1_binary_parse\tsentence2_binary_parse\t"
    "sentence1_parse\tsentence2_parse\tsentence1\tsentence2\tlabel1\tlabel2\tlabel3\tlabel4\t"
    "label5\tgold_label\n"
)


def test_mnli_train_and_matched_mismatched_dev(tmp_path: Path) -> None:
    p = "\t".join(["( a )", "( b )", "(ROOT a)", "(ROOT b)"])
    write(
        tmp_path,
        "MNLI",
        "train",
        MNLI_TRAIN_HEAD + f"0\t1\t1e\tgov\t{p}\tPrem one.\tHyp one.\tneutral\tneutral\n",
    )
    write(
        tmp_path,
        "MNLI",
        "dev_matched",
        MNLI_DEV_HEAD
        + f"0\t2\t2e\tfiction\t{p}\tPrem m.\tHyp m.\tcontradiction\tcontradiction\tneutral\tcontradiction\t"
        "contradiction\tcontradiction\n",
    )
    write(
        tmp_path,
        "MNLI",
        "dev_mismatched",
        MNLI_DEV_HEAD
        + f"0\t3\t3e\tletters\t{p}\tPrem mm.\tHyp mm.\tentailment\tentailment\tentailment\tneutral\t"
        "entailment\tentailment\n",
        xz=True,
    )
    assert load_local("mnli", "train", tmp_path).examples[0].label == 1  # neutral
    matched = load_local("mnli", "dev", tmp_path)  # "dev" means matched
    assert (
        matched.split == "dev_matched"
        and matched.examples[0].text_a == "Prem m."
        and matched.examples[0].label == 2
    )
    mismatched = load_local("mnli", "dev_mismatched", tmp_path)
    assert (mismatched.examples[0].text_b, mismatched.examples[0].label) == ("Hyp mm.", 0)
    assert [s for s, _ in get_task("mnli").eval_splits] == ["dev_matched", "dev_mismatched"]


def test_qqp_skips_malformed_rows_and_counts_them(tmp_path: Path) -> None:
    write(
        tmp_path,
        "QQP",
        "train",
        "id\tqid1\tqid2\tquestion1\tquestion2\tis_duplicate\n"
        "1\t3\t4\tHow do I learn?\tWhat is learning?\t0\n"
        "2\t5\t6\tbroken row without the rest\n"
        '3\t7\t8\tWhy "so"?\tWhy so?\t1\n',
    )
    split = load_local("qqp", "train", tmp_path)
    assert [(e.text_a, e.label) for e in split.examples] == [("How do I learn?", 0), ('Why "so"?', 1)]
    assert split.skipped == 1


@pytest.mark.parametrize(
    ("task", "head", "row", "expected"),
    [
        (
            "qnli",
            "index\tquestion\tsentence\tlabel",
            "0\tWhat?\tThis.\tnot_entailment",
            ("What?", "This.", 1),
        ),
        ("rte", "index\tsentence1\tsentence2\tlabel", "0\tA b.\tA.\tentailment", ("A b.", "A.", 0)),
        ("wnli", "index\tsentence1\tsentence2\tlabel", "0\tI did.\tHe did.\t1", ("I did.", "He did.", 1)),
    ],
)
def test_pair_tasks_by_header_name(tmp_path: Path, task: str, head: str, row: str, expected: tuple) -> None:
    write(tmp_path, TASKS[task].dir_name, "dev", f"{head}\n{row}\n", xz=task == "rte")
    ex = load_local(task, "dev", tmp_path).examples[0]
    assert (ex.text_a, ex.text_b, ex.label) == expected


def test_crlf_line_endings_are_tolerated(tmp_path: Path) -> None:
    write(tmp_path, "RTE", "dev", "index\tsentence1\tsentence2\tlabel\r\n0\tA.\tB.\tnot_entailment\r\n")
    assert load_local("rte", "dev", tmp_path).examples[0].label == 1


def test_bad_inputs_are_one_clear_error(tmp_path: Path) -> None:
    with pytest.raises(SkipxlError, match="does not exist"):
        load_local("rte", "train", tmp_path / "nowhere")
    with pytest.raises(SkipxlError, match=r"RTE/train\.tsv.*not found"):
        load_local("rte", "train", tmp_path)
    with pytest.raises(SkipxlError, match="unknown GLUE task"):
        get_task("squad")
    with pytest.raises(SkipxlError, match="no split"):
        load_local("rte", "dev_matched", tmp_path)
    write(tmp_path, "RTE", "train", "index\tsentence1\tsentence2\tlabel\n0\tA.\tB.\tmaybe\n")
    with pytest.raises(SkipxlError, match="label 'maybe'"):
        load_local("rte", "train", tmp_path)
    assert [t.name for t in parse_tasks("RTE,mrpc,rte")] == ["rte", "mrpc"]


def test_hub_loader_refuses_offline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(SkipxlError, match="network"):
        load_hub("mrpc", "dev")


REAL_COUNTS = {
    "cola": (8551, 1043),
    "mrpc": (3668, 408),
    "rte": (2490, 277),
    "sst2": (67349, 872),
    "stsb": (5749, 1500),
}


@pytest.mark.shared_data
@pytest.mark.parametrize("task", sorted(REAL_COUNTS))
def test_real_file_row_counts(task: str) -> None:
    folder = DEFAULT_GLUE_DIR / TASKS[task].dir_name
    if not folder.is_dir():
        pytest.skip(f"real GLUE files absent: {folder} does not exist (../shared/data/glue not provided)")
    train, dev = load_local(task, "train", DEFAULT_GLUE_DIR), load_local(task, "dev", DEFAULT_GLUE_DIR)
    assert (len(train), len(dev)) == REAL_COUNTS[task]
    assert train.skipped == 0 and dev.skipped == 0
    if task == "mrpc":  # published label counts (SOURCES.md): train 2474 paraphrase, dev 279
        assert sum(train.labels) == 2474 and sum(dev.labels) == 279
    if task == "stsb":
        assert all(0.0 <= y <= 5.0 for y in train.labels)
