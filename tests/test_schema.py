"""The JSON Schema of scenarios and sweeps, and docs/reference.md, cannot drift.

They are generated from the pydantic models that validate the files
(sim/study/schema.py); the committed copies must equal a fresh generation,
every shipped YAML names its schema on its first line and validates against
it, and the schema refuses what the loader refuses for the usual slips.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

jsonschema = pytest.importorskip("jsonschema")

from sim.study import schema  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = sorted((ROOT / "scenarios").rglob("*.yaml"))


@pytest.mark.parametrize("path", sorted(schema.outputs()), ids=lambda p: p.name)
def test_committed_file_is_a_fresh_generation(path):
    assert path.read_text(encoding="utf-8") == schema.outputs()[path], \
        f"{path.relative_to(ROOT)} is stale: run `python run_sim.py schema --write`"


@pytest.mark.parametrize("kind", schema.KINDS)
def test_schema_is_valid_draft_2020_12(kind):
    jsonschema.Draft202012Validator.check_schema(schema.schema(kind))


def _kind(data: dict) -> str:
    return "sweep" if "axes" in data else "scenario"


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: str(p.relative_to(ROOT / "scenarios")))
def test_shipped_file_names_its_schema_and_validates(path):
    text = path.read_text(encoding="utf-8")
    first = text.splitlines()[0]
    prefix = "# yaml-language-server: $schema="
    assert first.startswith(prefix), f"{path}: the first line names the schema for editors"
    data = yaml.safe_load(text)
    target = (path.parent / first[len(prefix):]).resolve()
    assert target == (schema.SCHEMA_DIR / f"{_kind(data)}.schema.json").resolve()
    jsonschema.Draft202012Validator(json.loads(target.read_text())).validate(data)


def _errors(data: dict) -> list[str]:
    v = jsonschema.Draft202012Validator(schema.schema("scenario"))
    return [e.message for e in v.iter_errors(data)]


def _quickstart() -> dict:
    return yaml.safe_load((ROOT / "scenarios" / "quickstart.yaml").read_text())


def test_schema_refuses_what_the_loader_refuses():
    ok = _quickstart()
    assert _errors(ok) == []
    for change, needle in [
        (lambda d: d.update(wokers=10), "wokers"),                                        # unknown key
        (lambda d: d["network"]["uplink"].update(bandwidth="1 Gbsp"), "1 Gbsp"),          # unknown unit
        (lambda d: d["network"]["uplink"].update(latency="-5 ms"), "-5 ms"),              # negative time
        (lambda d: d.update(workers=0), "0"),                                             # below the range
        (lambda d: d["algorithms"].append({"name": "x", "kind": "no_such_kind"}), "kind"),  # unknown kind
    ]:
        d = _quickstart()
        change(d)
        errs = _errors(d)
        assert errs, f"the schema accepted a file the loader refuses ({needle})"
    d = _quickstart()
    d["network"]["uplink"].update(bandwidth=1e9, latency="0.5 ms")     # a bare number is in the base unit
    assert _errors(d) == []


def test_units_ranges_defaults_and_allowed_values_are_in_the_schema():
    s = schema.schema("scenario")
    link = s["$defs"]["LinkSpec"]["properties"]
    one = link["latency"]["oneOf"][0]
    assert one["x-unit"] == "s" and one["examples"] == ["5 ms", "10 min"]
    assert link["latency"]["default"] == 0.0 and "one-way" in link["latency"]["description"]
    assert s["properties"]["workers"]["minimum"] == 1
    assert s["properties"]["device"]["enum"] == ["auto", "cpu", "cuda"]
    assert "mnist5k" in s["$defs"]["DataSpec"]["properties"]["dataset"]["examples"]
    import algorithms
    kinds = set(s["properties"]["algorithms"]["items"]["discriminator"]["mapping"])
    assert kinds == set(algorithms.ALGORITHMS.names())


def test_reference_documents_every_field():
    from sim.study.config import Scenario
    from sim.study.sweep import SweepSpec
    text = schema.reference()
    for model in (Scenario, SweepSpec):
        for field in model.model_fields:
            assert f"| `{field}` |" in text, field
    assert "### LinkSpec" in text and "quantity in bit/s" in text


def test_cli_prints_the_schema():
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    for kind in schema.KINDS:
        out = subprocess.run([sys.executable, str(ROOT / "run_sim.py"), "schema", kind], capture_output=True,
                             text=True, check=True, env=env).stdout
        assert json.loads(out) == schema.schema(kind)
