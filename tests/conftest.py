"""Shared fixtures: the repository's paths and the tiny scenario (scenarios/tiny.yaml).

The start-up cache (sim/learn/cache.py) of the whole session is a temporary
folder, never the user's: ``COMMSIM_CACHE`` is set before any test runs (and
inherited by the subprocesses tests start); tests of the cache itself set
their own folder with ``monkeypatch.setenv``.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

# MKL's conditional numerical reproducibility, before torch is imported (and
# inherited by the subprocesses tests start): float32 GEMMs take the AVX2 code
# path on every x86 CPU that has it, so the golden files (tests/golden) and the
# other bit-for-bit comparisons give the same bits on Intel and AMD machines.
# Without it, MKL takes its AVX-512 path on an Intel Xeon and its AVX2 path on
# an AMD EPYC, and the golden files written on one failed on the other.
os.environ.setdefault("MKL_CBWR", "AVX2")

import pytest
import yaml

TINY = Path(__file__).resolve().parents[1] / "scenarios" / "tiny.yaml"


@pytest.fixture(scope="session", autouse=True)
def session_cache_dir():
    """A fresh cache folder for the session (removed at the end)."""
    before = os.environ.get("COMMSIM_CACHE")
    with tempfile.TemporaryDirectory(prefix="commsim-test-cache-") as folder:
        os.environ["COMMSIM_CACHE"] = folder
        try:
            yield Path(folder)
        finally:
            if before is None:
                os.environ.pop("COMMSIM_CACHE", None)
            else:
                os.environ["COMMSIM_CACHE"] = before


@pytest.fixture
def tiny_dict() -> dict:
    """scenarios/tiny.yaml as a fresh dict, free to mutate."""
    return yaml.safe_load(TINY.read_text())


@pytest.fixture
def write_scenario(tmp_path):
    """write_scenario(data, name="scenario.yaml") -> path of ``data`` dumped as YAML
    (or written as is when ``data`` is a str) under tmp_path."""
    def write(data, name: str = "scenario.yaml") -> Path:
        path = tmp_path / name
        path.write_text(data if isinstance(data, str) else yaml.safe_dump(data, sort_keys=False))
        return path
    return write
