"""The synchronous algorithms keep their exact results: short versions of the
quickstart and the paper scenarios give the metrics.csv written before the
event-driven engine existed (tests/golden/cases.py), byte for byte."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent / "golden"))
from cases import CASES, HERE, run_case  # noqa: E402


@pytest.mark.parametrize("name", list(CASES))
def test_metrics_are_byte_identical_to_the_golden_file(name, tmp_path):
    got = run_case(name, tmp_path).read_bytes()
    assert got == (HERE / f"{name}.metrics.csv").read_bytes()
