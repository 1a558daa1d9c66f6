"""``skipxl runs check RUN_DIR``: verify a run folder without changing it.

Reads every file a resume, ``skipxl eval`` or ``skipxl compare`` would read and reports, one line
each, what is damaged: ``config.json`` (UTF-8, JSON, a valid RunConfig), ``meta.json``,
``metrics.jsonl`` (a torn *last* line from a crash is only a note), ``checkpoints/latest`` and every
``step_N`` folder against its SHA-256 manifest (:mod:`skipxl.engine.integrity`), including the
number of per-rank files against the world size that wrote it (a resume may change it). Nothing is
written.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from skipxl.engine import checkpoint as ckpt
from skipxl.engine import integrity
from skipxl.engine import run_dir as rd
from skipxl.errors import SkipxlError


@dataclass
class RunReport:
    run_dir: Path
    damage: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    intact: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.damage

    def lines(self) -> list[str]:
        out = [f"ok       {x}" for x in self.intact]
        out += [f"note     {x}" for x in self.notes]
        out += [f"DAMAGED  {x}" for x in self.damage]
        verdict = "intact" if self.ok else f"{len(self.damage)} problem(s)"
        return [*out, f"{self.run_dir}: {verdict}"]


def _json_file(path: Path, report: RunReport) -> object | None:
    from skipxl.config_io import load_json

    try:
        data = load_json(path)
    except SkipxlError as exc:
        report.damage.append(str(exc))
        return None
    return data


def _check_metrics(run_dir: Path, report: RunReport) -> None:
    path = run_dir / rd.METRICS
    if not path.is_file():
        report.notes.append(f"{rd.METRICS} is absent (nothing logged yet)")
        return
    lines = path.read_bytes().split(b"\n")
    if lines and lines[-1] == b"":
        lines = lines[:-1]
    bad = []
    for i, raw in enumerate(lines, 1):
        try:
            row = json.loads(raw.decode("utf-8"))
            int(row["step"])
        except (ValueError, KeyError, TypeError):
            bad.append(i)
    if bad == [len(lines)]:
        report.notes.append(f"{rd.METRICS}: the last line is torn (a crash while logging; dropped on resume)")
    elif bad:
        report.damage.append(f"{path}: line(s) {bad[:5]} are not UTF-8 JSON rows with a step")
    else:
        report.intact.append(f"{rd.METRICS} ({len(lines)} rows)")


def _check_checkpoints(run_dir: Path, world_size: int | None, report: RunReport) -> None:
    ckpt_dir = run_dir / rd.CHECKPOINTS
    tags = ckpt.step_tags(ckpt_dir)
    if not tags:
        report.notes.append("no checkpoint yet (a --resume restarts the run from step 0)")
        return
    latest = ckpt.read_latest(ckpt_dir)
    if latest is None or latest not in tags:
        report.damage.append(f"{ckpt_dir / ckpt.LATEST} does not name one of {tags}")
    for tag in tags:
        verdict = integrity.verify(ckpt_dir / tag)
        if not verdict.has_manifest:
            report.notes.append(
                f"{tag} has no {integrity.MANIFEST} (written before integrity checks): unverified"
            )
            continue
        problems = list(verdict.problems)
        saved_by = verdict.world_size or world_size  # a resume may change the world (reshard)
        if saved_by and not problems and verdict.rank_files() != saved_by:
            problems.append(f"{verdict.rank_files()} per-rank files for a world of {saved_by}")
        if problems:
            report.damage.extend(f"{tag}: {p}" for p in problems)
        else:
            report.intact.append(f"{tag} ({len(verdict.files)} files match their SHA-256)")
    for stale in sorted(ckpt_dir.glob("tmp_step_*")):
        report.notes.append(f"{stale.name}: an interrupted save (never loaded; removed by the next save)")


def check_run(run_dir: Path) -> RunReport:
    """Verify ``run_dir`` (read-only); see the module docstring."""
    from skipxl.engine.config import run_config_from_dict

    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise SkipxlError(f"run folder {run_dir} does not exist; pass the --out folder of a training run")
    report = RunReport(run_dir)
    config = _json_file(run_dir / rd.CONFIG, report)
    if config is not None:
        try:
            run_config_from_dict(config)  # type: ignore[arg-type]
            report.intact.append(rd.CONFIG)
        except SkipxlError as exc:
            report.damage.append(f"{run_dir / rd.CONFIG}: {exc}")
    meta = _json_file(run_dir / rd.META, report) if (run_dir / rd.META).is_file() else None
    world_size = meta.get("world_size") if isinstance(meta, dict) else None
    if meta is not None:
        report.intact.append(rd.META)
    _check_metrics(run_dir, report)
    _check_checkpoints(run_dir, world_size if isinstance(world_size, int) else None, report)
    return report
