"""A fast seeded subset of the fault campaign (tools/faults.py): every checkpoint-damage kind, a
kill -9 of a real training process, each resumed and compared bit for bit with the reference, and
a two-rank job that loses a rank and is requeued on one (compared to float rounding).
The two-rank kinds (SIGTERM to one rank, a frozen rank) are tests/test_engine_multirank_faults.py."""

from __future__ import annotations

import importlib.util
import sys

import pytest
from engine_helpers import REPO

pytestmark = pytest.mark.slow


def _faults():
    spec = importlib.util.spec_from_file_location("faults", REPO / "tools" / "faults.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["faults"] = module  # its dataclass needs its module registered
    spec.loader.exec_module(module)
    return module


def test_seeded_campaign_subset_has_no_silent_corruption_and_no_hang(tmp_path, capsys):
    faults = _faults()
    kinds = [*faults.FILE_KINDS, "kill9_step", "requeue_2to1"]
    outcomes = faults.campaign(kinds, trials=len(kinds), seed=3, work=tmp_path)
    assert sorted(o.kind for o in outcomes) == sorted(kinds)
    for o in outcomes:
        assert not o.silent and not o.hang, o
        assert not o.missed, o  # every fault landed while the job ran
        if o.kind == "requeue_2to1":  # resumed on one rank: the same run to float rounding
            assert o.clean_resume and o.within_rounding, o
        else:  # a resume ends exactly where the reference does, or says why
            assert o.bitwise or o.clear_error, o
    assert "| total | 7 | 0 |" in faults.table(outcomes)
