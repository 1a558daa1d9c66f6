"""Refactors change no number: the engine's losses and the methods' draws, bit for bit, against
``tests/golden/engine_losses.json`` (recorded by ``tools/golden_losses.py`` before the engine
redesign of issue 11)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("golden_losses", REPO / "tools" / "golden_losses.py")
golden = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(golden)
WANT = json.loads(golden.GOLDEN.read_text())


@pytest.mark.slow
@pytest.mark.parametrize("case", sorted(golden.TRAIN_CASES))
def test_training_losses_are_bit_equal(case):
    got = golden.train_case(case)
    want = WANT["train"][case]
    assert len(got["losses"]) == golden.STEPS
    assert got == want  # exact float equality: per-step, validation, final valid and test losses


def test_skip_masks_and_head_indices_are_golden():
    got = golden.draws()
    assert got == WANT["draws"]
    # the draws are not degenerate: some layers skip, some heads mix
    assert any(any(mask) for case in got.values() for mask in case["skip"])
    assert any(row != sorted(row) for case in got.values() for layer in case["head_index"] for row in layer)
