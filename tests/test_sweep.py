"""Sweeps: grid and zip points, the tidy sweep summary, failures recorded, resume."""
from __future__ import annotations

import csv
from pathlib import Path

import pytest
import yaml

import run_sim
from sim.errors import ConfigError
from sim.sweep import load_sweep

TINY = Path(__file__).resolve().parents[1] / "scenarios" / "tiny.yaml"


def sweep_file(tmp_path, **kw):
    spec = {"name": "s", "base": str(TINY), "mode": "grid",
            "axes": {"network.uplink.bandwidth": ["100 Mbps", "1 Gbps"], "seed": [0, 1]},
            "set": {"stop.max_rounds": 4, "eval_every": 2, "stop.on_target": False,
                    "algorithms": [{"name": "sgd", "kind": "sgd", "lr": 0.1}]}}
    spec.update(kw)
    p = tmp_path / "sweep.yaml"
    p.write_text(yaml.safe_dump(spec))
    return p


def test_grid_and_zip_points(tmp_path):
    _, _, points = load_sweep(sweep_file(tmp_path))
    assert points == [{"network.uplink.bandwidth": b, "seed": s} for b in ("100 Mbps", "1 Gbps") for s in (0, 1)]
    _, _, points = load_sweep(sweep_file(tmp_path, mode="zip"))
    assert points == [{"network.uplink.bandwidth": "100 Mbps", "seed": 0},
                      {"network.uplink.bandwidth": "1 Gbps", "seed": 1}]
    with pytest.raises(ConfigError, match="equal length"):
        load_sweep(sweep_file(tmp_path, mode="zip", axes={"seed": [0, 1], "workers": [2]}))
    with pytest.raises(ConfigError):
        load_sweep(sweep_file(tmp_path, axes={}))


def test_sweep_writes_tidy_summary_records_failures_and_resumes(tmp_path):
    p = sweep_file(tmp_path, axes={"network.uplink.bandwidth": ["100 Mbps", "1 Gbps", "0 Gbps"]})
    out = tmp_path / "out"
    assert run_sim.main(["sweep", str(p), "--out", str(out), "--quiet"]) == 0
    rows = list(csv.DictReader((out / "sweep_summary.csv").open()))
    assert [r["point_status"] for r in rows] == ["done", "done", "failed"]
    assert [r["network.uplink.bandwidth"] for r in rows] == ["100 Mbps", "1 Gbps", "0 Gbps"]
    assert "greater than 0" in rows[2]["error"]
    # the slower uplink takes longer in simulated time, the learning is the same
    assert float(rows[0]["final_sim_time_s"]) > float(rows[1]["final_sim_time_s"])
    assert rows[0]["final_test_acc"] == rows[1]["final_test_acc"]
    # a second run skips the finished points and leaves their files alone
    metrics = out / "points" / "000" / "metrics.csv"
    before = metrics.stat().st_mtime_ns
    assert run_sim.main(["sweep", str(p), "--out", str(out), "--quiet"]) == 0
    assert metrics.stat().st_mtime_ns == before
    assert [r["point_status"] for r in csv.DictReader((out / "sweep_summary.csv").open())] == \
        ["done", "done", "failed"]


def test_parallel_points_match_sequential(tmp_path):
    p = sweep_file(tmp_path)
    a, b = tmp_path / "a", tmp_path / "b"
    assert run_sim.main(["sweep", str(p), "--out", str(a), "--quiet"]) == 0
    assert run_sim.main(["sweep", str(p), "--out", str(b), "--quiet", "--workers", "2"]) == 0
    for i in range(4):
        assert (a / "points" / f"{i:03d}" / "metrics.csv").read_bytes() == \
            (b / "points" / f"{i:03d}" / "metrics.csv").read_bytes()


def test_bad_sweep_file_exits_2(tmp_path, capsys):
    p = sweep_file(tmp_path, axis={"seed": [0]})
    assert run_sim.main(["sweep", str(p), "--out", str(tmp_path / "o")]) == 2
    assert "sweep.yaml" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()
