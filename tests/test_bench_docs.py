"""docs/performance.md is generated from bench/results/*.json and cannot drift.

The benchmarks themselves are never run here (speed is measured in bench/,
never asserted in tests); these tests check the generation: the committed
document is what bench/render.py makes of the committed results, verdicts
follow from value, comparison and target, and every benchmark that
``make bench`` runs writes a report under its own name.
"""
from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

import render  # noqa: E402
import run_all  # noqa: E402


def test_performance_md_is_what_the_results_render_to():
    assert (ROOT / "docs" / "performance.md").read_text() == render.render(), \
        "docs/performance.md is stale: run `.venv/bin/python bench/render.py` (or `make bench`)"


def test_every_committed_result_has_a_complete_report():
    files = sorted((ROOT / "bench" / "results").glob("*.json"))
    assert files, "bench/results/ holds the measured figures docs/performance.md is made from"
    for f in files:
        rep = json.loads(f.read_text())["report"]
        assert rep["name"] == f.stem
        for k in render.REQUIRED:
            assert k in rep, (f, k)
        for k in ("cpu", "cores", "python", "torch", "torch_threads", "date", "commit", "load_before",
                  "load_after"):
            assert k in rep["machine"], (f, k)


def _report(goals, notes=()):
    return {"name": "x", "title": "X", "command": "run x", "about": "what x measures",
            "machine": {"cpu": "cpu", "cores": 2, "load_before": [1.0, 0.5, 0.25], "load_after": [2.0, 1.0, 0.5]},
            "tables": [{"caption": "c", "columns": ["a", "b"], "rows": [["1", "2"]]}], "goals": goals,
            "notes": list(notes)}


def test_verdicts_are_computed_from_value_op_and_target():
    text = "\n".join(render.section(_report([
        {"name": "small enough", "value": 1.4, "op": "<=", "target": 1.5, "unit": "x"},
        {"name": "too slow", "value": 1.6, "op": "<=", "target": 1.5, "unit": "x"},
        {"name": "fast enough", "value": 120.0, "op": ">=", "target": 100.0, "unit": "x"},
        {"name": "not cheap enough", "value": 36.0, "op": ">=", "target": 100.0, "unit": "x"}])))
    assert "| small enough | 1.4x | <= 1.5x | met |" in text
    assert "| too slow | 1.6x | <= 1.5x | **not met** |" in text
    assert "| fast enough | 120x | >= 100x | met |" in text
    assert "| not cheap enough | 36x | >= 100x | **not met** |" in text
    assert "load average 1.00, 0.50, 0.25 before, 2.00, 1.00, 0.50 after" in text.replace("\n", " ")
    assert "| a | b |\n| --- | --- |\n| 1 | 2 |" in text


def test_a_report_missing_a_field_is_refused(tmp_path):
    rep = _report([])
    del rep["command"]
    with pytest.raises(ValueError, match="lacks command"):
        render.section(rep)
    (tmp_path / "x.json").write_text(json.dumps({"figures": 1}))
    with pytest.raises(ValueError, match="no report block"):
        render.render(tmp_path)


def test_every_benchmark_make_bench_runs_writes_its_own_report():
    for name, (args, _needs) in run_all.BENCHES.items():
        script = (ROOT / "bench" / args[0]).read_text()
        if "--name" in args:               # one script, several reports: the name it is given (bench_memory.py)
            assert args[args.index("--name") + 1] == name, (name, args)
            assert re.search(r'_report\.write\(\s*a\.name', script), f"{args[0]} does not write the report it is named"
            assert re.search(r'add_argument\("--name", default="(\w+)"', script).group(1) in run_all.BENCHES
            continue
        assert re.search(rf'_report\.write\(\s*"{name}"', script), f"{args[0]} does not write report {name!r}"
        assert '"--json"' in script, args[0]
