"""Shared fixtures: the repository's paths and the tiny scenario (scenarios/tiny.yaml)."""
from __future__ import annotations

from pathlib import Path

import pytest
import yaml

TINY = Path(__file__).resolve().parents[1] / "scenarios" / "tiny.yaml"


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
