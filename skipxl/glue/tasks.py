"""The nine GLUE tasks: readers for the official local layout and the hub loader.

Local layout (what ``download_glue_data.py`` writes): ``<glue_dir>/<TASK>/{train,dev}.tsv``,
MNLI with ``dev_matched.tsv`` / ``dev_mismatched.tsv``; each file may also be stored as
``.tsv.xz``. Quirks handled here, on purpose and in one place:

* tab-separated with **no quoting**: SST-2 and MRPC contain unbalanced ``"`` characters
  (``whom he called " the witness "``), so the csv module's quoting must not be used;
  lines are split on ``\\t`` only, and only ``\\n`` ends a line;
* **CoLA has no header**: columns are ``source, label, original mark, sentence``;
* **MRPC's header starts with a byte-order mark** (``\\ufeffQuality``);
* headers elsewhere name the columns, so fields are found by name (STS-B has 10 columns,
  MNLI 12 in train and 16 in dev with ``gold_label`` last);
* rows with too few fields (known in some QQP copies) are skipped and counted.

Labels follow the ``nyu-mll/glue`` hub dataset's class order, so local and hub data agree.
"""

from __future__ import annotations

import lzma
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from skipxl.errors import SkipxlError

#: Default local GLUE folder: ``../shared/data/glue`` next to the repository, or $SKIPXL_GLUE_DIR.
DEFAULT_GLUE_DIR = Path(__file__).resolve().parents[3] / "shared" / "data" / "glue"


@dataclass(frozen=True)
class TaskSpec:
    """How one GLUE task is stored, labelled and scored.

    ``text_a``/``text_b``/``label`` are header names, or column indices for header-less files.
    ``label_values`` are the raw label strings in class-id order (``None`` for regression).
    ``eval_splits`` pairs each dev split with the suffix its metric names get.
    """

    name: str
    dir_name: str
    hub_config: str
    text_a: str | int
    text_b: str | int | None
    label: str | int
    label_values: tuple[str, ...] | None
    label_names: tuple[str, ...] | None
    header: bool
    metrics: tuple[str, ...]
    primary: str
    eval_splits: tuple[tuple[str, str], ...] = (("dev", ""),)

    @property
    def num_labels(self) -> int:
        """Classifier width: 1 for regression."""
        return 1 if self.label_values is None else len(self.label_values)

    @property
    def is_regression(self) -> bool:
        return self.label_values is None

    @property
    def splits(self) -> tuple[str, ...]:
        return ("train", *(split for split, _ in self.eval_splits))


_BIN = ("0", "1")
TASKS: dict[str, TaskSpec] = {
    "cola": TaskSpec(
        "cola",
        "CoLA",
        "cola",
        3,
        None,
        1,
        _BIN,
        ("unacceptable", "acceptable"),
        False,
        ("mcc", "accuracy"),
        "mcc",
    ),
    "sst2": TaskSpec(
        "sst2",
        "SST-2",
        "sst2",
        "sentence",
        None,
        "label",
        _BIN,
        ("negative", "positive"),
        True,
        ("accuracy",),
        "accuracy",
    ),
    "mrpc": TaskSpec(
        "mrpc",
        "MRPC",
        "mrpc",
        "#1 String",
        "#2 String",
        "Quality",
        _BIN,
        ("not_equivalent", "equivalent"),
        True,
        ("f1", "accuracy"),
        "f1",
    ),
    "qqp": TaskSpec(
        "qqp",
        "QQP",
        "qqp",
        "question1",
        "question2",
        "is_duplicate",
        _BIN,
        ("not_duplicate", "duplicate"),
        True,
        ("f1", "accuracy"),
        "f1",
    ),
    "stsb": TaskSpec(
        "stsb",
        "STS-B",
        "stsb",
        "sentence1",
        "sentence2",
        "score",
        None,
        None,
        True,
        ("pearson", "spearman"),
        "pearson",
    ),
    "mnli": TaskSpec(
        "mnli",
        "MNLI",
        "mnli",
        "sentence1",
        "sentence2",
        "gold_label",
        ("entailment", "neutral", "contradiction"),
        ("entailment", "neutral", "contradiction"),
        True,
        ("accuracy",),
        "accuracy",
        (("dev_matched", ""), ("dev_mismatched", "_mm")),
    ),
    "qnli": TaskSpec(
        "qnli",
        "QNLI",
        "qnli",
        "question",
        "sentence",
        "label",
        ("entailment", "not_entailment"),
        ("entailment", "not_entailment"),
        True,
        ("accuracy",),
        "accuracy",
    ),
    "rte": TaskSpec(
        "rte",
        "RTE",
        "rte",
        "sentence1",
        "sentence2",
        "label",
        ("entailment", "not_entailment"),
        ("entailment", "not_entailment"),
        True,
        ("accuracy",),
        "accuracy",
    ),
    "wnli": TaskSpec(
        "wnli",
        "WNLI",
        "wnli",
        "sentence1",
        "sentence2",
        "label",
        _BIN,
        ("not_entailment", "entailment"),
        True,
        ("accuracy",),
        "accuracy",
    ),
}

_ALIASES = {"sst-2": "sst2", "sts-b": "stsb", "mnli-m": "mnli", "mnli_matched": "mnli"}
#: Local split name -> hub split name.
_HUB_SPLITS = {
    "train": "train",
    "dev": "validation",
    "dev_matched": "validation_matched",
    "dev_mismatched": "validation_mismatched",
}
#: Text columns of each hub config (the hub renames some, e.g. MNLI premise/hypothesis).
_HUB_COLUMNS: dict[str, tuple[str, str | None]] = {
    "cola": ("sentence", None),
    "sst2": ("sentence", None),
    "mrpc": ("sentence1", "sentence2"),
    "qqp": ("question1", "question2"),
    "stsb": ("sentence1", "sentence2"),
    "mnli": ("premise", "hypothesis"),
    "qnli": ("question", "sentence"),
    "rte": ("sentence1", "sentence2"),
    "wnli": ("sentence1", "sentence2"),
}


def get_task(name: str) -> TaskSpec:
    """Look a task up by name (``mrpc``, ``SST-2``, ``sts-b`` ... case-insensitive)."""
    key = str(name).strip().lower()
    key = _ALIASES.get(key, key)
    if key not in TASKS:
        raise SkipxlError(f"unknown GLUE task {name!r}; choose one of {sorted(TASKS)}")
    return TASKS[key]


def parse_tasks(spec: str | list[str] | tuple[str, ...]) -> tuple[TaskSpec, ...]:
    """``"rte,mrpc"`` (or a list) -> task specs, in the given order, without duplicates."""
    names = spec.split(",") if isinstance(spec, str) else [str(s) for s in spec]
    out: list[TaskSpec] = []
    for name in names:
        if name.strip():
            task = get_task(name)
            if task not in out:
                out.append(task)
    if not out:
        raise SkipxlError("no GLUE task given; pass e.g. --task mrpc or --task rte,mrpc")
    return tuple(out)


@dataclass(frozen=True)
class GlueExample:
    """One example: text pair and label (class id, or float score for STS-B)."""

    text_a: str
    text_b: str | None
    label: int | float


@dataclass(frozen=True)
class GlueSplit:
    """The examples of one split, and how many malformed rows were skipped."""

    task: str
    split: str
    examples: tuple[GlueExample, ...]
    skipped: int = 0
    source: str = ""

    def __len__(self) -> int:
        return len(self.examples)

    @property
    def labels(self) -> list[int | float]:
        return [ex.label for ex in self.examples]


def _normalise_split(task: TaskSpec, split: str) -> str:
    if split == "dev" and task.eval_splits[0][0] != "dev":
        return task.eval_splits[0][0]  # MNLI: "dev" means matched
    if split not in task.splits:
        raise SkipxlError(f"GLUE task {task.name} has no split {split!r}; choose one of {task.splits}")
    return split


def task_file(glue_dir: str | Path, task: TaskSpec, split: str) -> Path:
    """The file of one split: ``<glue_dir>/<TASK>/<split>.tsv`` or ``.tsv.xz``."""
    root = Path(glue_dir).expanduser()
    if not root.is_dir():
        raise SkipxlError(
            f"GLUE folder {root} does not exist; pass --glue_dir DIR holding <TASK>/train.tsv "
            "(the download_glue_data.py layout) or set SKIPXL_GLUE_DIR"
        )
    folder = root / task.dir_name
    for name in (f"{split}.tsv", f"{split}.tsv.xz"):
        if (folder / name).is_file():
            return folder / name
    raise SkipxlError(
        f"GLUE file {folder / (split + '.tsv')} (or .tsv.xz) not found; put the {task.dir_name} "
        f"files under {root} or pass the right --glue_dir"
    )


def iter_tsv_rows(path: Path) -> Iterator[list[str]]:
    """Split a GLUE file into fields: tab only, no quoting, ``\\n`` only as line end."""
    opener = lzma.open if path.suffix == ".xz" else open
    with opener(path, "rt", encoding="utf-8", newline="\n") as fh:  # type: ignore[operator]
        for line in fh:
            line = line.rstrip("\n")
            if line.endswith("\r"):
                line = line[:-1]
            if line:
                yield line.split("\t")


def _column(header: list[str] | None, key: str | int, path: Path) -> int:
    if isinstance(key, int):
        return key
    assert header is not None
    if key not in header:
        raise SkipxlError(
            f"{path} has no column {key!r} in its header {header}; is it the official GLUE file?"
        )
    return header.index(key)


def _label(task: TaskSpec, raw: str, path: Path, line_no: int) -> int | float:
    raw = raw.strip()
    if task.label_values is None:
        try:
            return float(raw)
        except ValueError as exc:
            raise SkipxlError(f"{path}:{line_no}: score {raw!r} is not a number") from exc
    if raw not in task.label_values:
        raise SkipxlError(f"{path}:{line_no}: label {raw!r} is not one of {task.label_values}")
    return task.label_values.index(raw)


def read_task_file(task: TaskSpec, path: Path, split: str = "") -> GlueSplit:
    """Read one official GLUE file (plain or ``.xz``) into examples."""
    rows = iter_tsv_rows(Path(path))
    header: list[str] | None = None
    if task.header:
        first = next(rows, None)
        if first is None:
            raise SkipxlError(f"{path} is empty; expected a header row")
        header = [first[0].lstrip("\ufeff"), *first[1:]]  # MRPC: byte-order mark before "Quality"
    cols = [_column(header, k, path) for k in (task.text_a, task.text_b, task.label) if k is not None]
    need = max(cols) + 1
    label_col = cols[-1]
    a_col, b_col = cols[0], (cols[1] if task.text_b is not None else None)
    examples: list[GlueExample] = []
    skipped = 0
    first_line = 2 if task.header else 1
    for line_no, fields in enumerate(rows, start=first_line):
        if len(fields) < need:
            skipped += 1
            continue
        examples.append(
            GlueExample(
                text_a=fields[a_col],
                text_b=fields[b_col] if b_col is not None else None,
                label=_label(task, fields[label_col], Path(path), line_no),
            )
        )
    return GlueSplit(task=task.name, split=split, examples=tuple(examples), skipped=skipped, source=str(path))


def load_local(task: TaskSpec | str, split: str, glue_dir: str | Path | None = None) -> GlueSplit:
    """One split from the local official layout."""
    spec = get_task(task) if isinstance(task, str) else task
    split = _normalise_split(spec, split)
    return read_task_file(spec, task_file(resolve_glue_dir(glue_dir), spec, split), split)


def resolve_glue_dir(glue_dir: str | Path | None) -> Path:
    """``glue_dir``, else ``$SKIPXL_GLUE_DIR``, else ``../shared/data/glue``."""
    import os

    if glue_dir is not None and str(glue_dir) != "":
        return Path(glue_dir).expanduser()
    env = os.environ.get("SKIPXL_GLUE_DIR")
    return Path(env).expanduser() if env else DEFAULT_GLUE_DIR


def load_hub(task: TaskSpec | str, split: str) -> GlueSplit:
    """One split from the ``nyu-mll/glue`` hub dataset (online only; imported lazily)."""
    import os

    spec = get_task(task) if isinstance(task, str) else task
    split = _normalise_split(spec, split)
    if os.environ.get("HF_HUB_OFFLINE", "0") not in ("", "0") or os.environ.get(
        "HF_DATASETS_OFFLINE", "0"
    ) not in ("", "0"):
        raise SkipxlError("the hub loader needs network access (HF_HUB_OFFLINE is set); use --glue_dir DIR")
    try:
        import datasets
    except ImportError as exc:  # pragma: no cover - datasets is a dependency
        raise SkipxlError("the hub loader needs the `datasets` package; pip install datasets") from exc
    try:
        data = datasets.load_dataset("nyu-mll/glue", spec.hub_config, split=_HUB_SPLITS[split])
    except Exception as exc:
        raise SkipxlError(
            f"could not load nyu-mll/glue/{spec.hub_config} ({type(exc).__name__}); check the network "
            "or use local files with --glue_dir DIR"
        ) from exc
    a_name, b_name = _HUB_COLUMNS[spec.name]
    examples = tuple(
        GlueExample(
            text_a=row[a_name],
            text_b=row[b_name] if b_name else None,
            label=float(row["label"]) if spec.is_regression else int(row["label"]),
        )
        for row in data
    )
    return GlueSplit(
        task=spec.name, split=split, examples=examples, source=f"hub:nyu-mll/glue/{spec.hub_config}"
    )


def load_split(
    task: TaskSpec | str, split: str, *, glue_dir: str | Path | None = None, source: str = "local"
) -> GlueSplit:
    """One split from ``source`` ``"local"`` (default) or ``"hub"``."""
    if source == "local":
        return load_local(task, split, glue_dir)
    if source == "hub":
        return load_hub(task, split)
    raise SkipxlError(f"data source {source!r} is unknown; choose 'local' or 'hub'")
