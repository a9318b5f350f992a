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


def _rows(out):
    return list(csv.DictReader((out / "sweep_summary.csv").open()))


def test_network_axes_are_replayed_and_match_full_training(tmp_path):
    axes = {"network.uplink.bandwidth": ["5 Mbps", "1 Gbps"], "network.uplink.latency": ["1 ms", "50 ms"],
            "seed": [0, 1]}
    algs = [{"name": "sgd", "kind": "sgd", "lr": 0.1}, {"name": "lasg", "kind": "lasg_wk2", "lr": 0.1}]
    base = {"stop.max_rounds": 6, "eval_every": 2, "stop.on_target": False, "algorithms": algs}
    auto, off = tmp_path / "auto", tmp_path / "off"
    assert run_sim.main(["sweep", str(sweep_file(tmp_path, axes=axes, set=base)), "--out", str(auto),
                         "--quiet"]) == 0
    assert run_sim.main(["sweep", str(sweep_file(tmp_path, axes=axes, set=base, replay="off")),
                         "--out", str(off), "--quiet"]) == 0
    rows = [r for r in _rows(auto) if r["algorithm"] == "sgd"]
    # one source per seed (the first point with that seed) trains; the rest are replayed from it
    modes = {(r["network.uplink.bandwidth"], r["network.uplink.latency"], r["seed"]): (r["run_mode"], r["replay_note"])
             for r in rows}
    assert modes[("5 Mbps", "1 ms", "0")] == ("full", "source of replays")
    assert modes[("5 Mbps", "1 ms", "1")] == ("full", "source of replays")
    assert modes[("1 Gbps", "50 ms", "1")] == ("replay", "replayed from point 001")
    assert sum(m == "replay" for m, _ in modes.values()) == 6
    assert {r["run_mode"] for r in _rows(off)} == {"full"}
    for i in range(8):
        for f in ("metrics.csv", "summary.csv", "phases.csv", "links.csv"):
            assert (auto / "points" / f"{i:03d}" / f).read_bytes() == (off / "points" / f"{i:03d}" / f).read_bytes()
    # resume: the replayed points stay replayed (their done markers keep the mode)
    assert run_sim.main(["sweep", str(sweep_file(tmp_path, axes=axes, set=base)), "--out", str(auto),
                         "--quiet"]) == 0
    again = [r for r in _rows(auto) if r["algorithm"] == "sgd"]
    assert [(r["run_mode"], r["replay_note"]) for r in again] == [(r["run_mode"], r["replay_note"]) for r in rows]


def test_replay_refused_with_the_reason_when_timing_changes_the_math(tmp_path):
    base = {"stop.max_rounds": 4, "eval_every": 2, "stop.on_target": False, "round_timeout": "1 s",
            "algorithms": [{"name": "sgd", "kind": "sgd", "lr": 0.1}]}
    out = tmp_path / "o"
    assert run_sim.main(["sweep", str(sweep_file(tmp_path, set=base)), "--out", str(out), "--quiet"]) == 0
    rows = _rows(out)
    assert {r["run_mode"] for r in rows} == {"full"}
    refused = [r for r in rows if r["network.uplink.bandwidth"] == "1 Gbps"]
    assert all("replay refused: round_timeout" in r["replay_note"] for r in refused)
    assert all(r["point_status"] == "done" for r in rows)


def test_max_sim_time_elsewhere_falls_back_to_full_training(tmp_path):
    # under 100 kbps the 0.3 s cap ends the run at a round the fast point's trace did not evaluate
    base = {"stop.max_rounds": 8, "eval_every": 4, "stop.on_target": False, "stop.max_sim_time": "0.3 s",
            "algorithms": [{"name": "sgd", "kind": "sgd", "lr": 0.1}]}
    out = tmp_path / "o"
    p = sweep_file(tmp_path, axes={"network.uplink.bandwidth": ["1 Gbps", "100 kbps"]}, set=base)
    assert run_sim.main(["sweep", str(p), "--out", str(out), "--quiet"]) == 0
    slow = [r for r in _rows(out) if r["network.uplink.bandwidth"] == "100 kbps"][0]
    assert slow["run_mode"] == "full" and "timing changed the run's course" in slow["replay_note"]
    assert slow["point_status"] == "done" and int(slow["final_round"]) < 8
