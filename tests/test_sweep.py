"""Sweeps: grid and zip points, the tidy sweep summary, failures recorded, resume."""
from __future__ import annotations

import csv
from pathlib import Path

import pytest
import yaml

import run_sim
from sim.errors import ConfigError
from sim.study.sweep import load_sweep

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
    assert run_sim.main(["sweep", str(p), "--out", str(out), "--quiet"]) == 1     # a point failed
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
    assert run_sim.main(["sweep", str(p), "--out", str(out), "--quiet"]) == 1
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


# --- resume keyed by what a point is ----------------------------------------------
def _mtimes(out, n):
    return [(out / "points" / f"{i:03d}" / "metrics.csv").stat().st_mtime_ns for i in range(n)]


def _rows_match_their_folders(out):
    """Every summary row's axis values are those of the scenario.yaml in its point folder."""
    from sim.units import parse
    for r in _rows(out):
        if r["point_status"] != "done":
            continue
        scn = yaml.safe_load((out / "points" / r["point"] / "scenario.yaml").read_text())
        assert parse(scn["network"]["uplink"]["bandwidth"], "bandwidth") == \
            parse(r["network.uplink.bandwidth"], "bandwidth"), r["point"]
        assert str(scn["seed"]) == r["seed"], r["point"]


def test_changed_axis_value_reruns_exactly_the_points_it_changed(tmp_path, capsys):
    out = tmp_path / "out"
    first = sweep_file(tmp_path)                  # 100 Mbps, 1 Gbps x seeds 0, 1; the 1 Gbps points replay
    assert run_sim.main(["sweep", str(first), "--out", str(out), "--quiet"]) == 0
    before = _mtimes(out, 4)
    marker = yaml.safe_load((out / "points" / "002" / "done").read_text())
    assert marker["mode"] == "replay" and marker["source"] == 0 and len(marker["hash"]) == 64
    capsys.readouterr()
    changed = sweep_file(tmp_path, axes={"network.uplink.bandwidth": ["100 Mbps", "10 Gbps"], "seed": [0, 1]})
    assert run_sim.main(["sweep", str(changed), "--out", str(out), "--quiet"]) == 0
    err = capsys.readouterr().err
    assert "point 002: its scenario changed since the last run (network.uplink.bandwidth: 1 Gbps -> 10 Gbps)" in err
    assert "point 003: its scenario changed" in err and "point 000" not in err and "point 001" not in err
    after = _mtimes(out, 4)
    assert after[:2] == before[:2]                # unchanged points: not re-run
    assert after[2] != before[2] and after[3] != before[3]
    assert [r["network.uplink.bandwidth"] for r in _rows(out)] == ["100 Mbps", "100 Mbps", "10 Gbps", "10 Gbps"]
    assert {r["point_status"] for r in _rows(out)} == {"done"}
    _rows_match_their_folders(out)
    # the same sweep once more: nothing runs
    capsys.readouterr()
    assert run_sim.main(["sweep", str(changed), "--out", str(out), "--quiet"]) == 0
    assert _mtimes(out, 4) == after and "re-run" not in capsys.readouterr().err


def test_a_changed_set_or_base_reruns_every_point(tmp_path, capsys):
    out = tmp_path / "out"
    p = sweep_file(tmp_path, axes={"network.uplink.bandwidth": ["100 Mbps", "1 Gbps"]})
    assert run_sim.main(["sweep", str(p), "--out", str(out), "--quiet"]) == 0
    before = _mtimes(out, 2)
    spec = yaml.safe_load(p.read_text())
    spec["set"]["stop.max_rounds"] = 6
    p.write_text(yaml.safe_dump(spec))
    capsys.readouterr()
    assert run_sim.main(["sweep", str(p), "--out", str(out), "--quiet"]) == 0
    err = capsys.readouterr().err
    assert "point 000: its scenario changed since the last run (stop.max_rounds: 4 -> 6)" in err
    assert "point 001: its scenario changed" in err
    assert all(a != b for a, b in zip(_mtimes(out, 2), before))
    assert {r["final_round"] for r in _rows(out)} == {"6"}
    _rows_match_their_folders(out)


def test_replays_are_stale_when_their_source_is_rerun_and_old_markers_count_as_stale(tmp_path, capsys):
    out = tmp_path / "out"
    p = sweep_file(tmp_path)
    assert run_sim.main(["sweep", str(p), "--out", str(out), "--quiet"]) == 0
    before = _mtimes(out, 4)
    (out / "points" / "000" / "done").unlink()                       # as if the source was interrupted
    (out / "points" / "001" / "stray.txt").write_text("old\n")
    (out / "points" / "001" / "done").write_text(yaml.safe_dump({"mode": "full", "note": ""}))   # no hash
    capsys.readouterr()
    assert run_sim.main(["sweep", str(p), "--out", str(out), "--quiet"]) == 0
    err = capsys.readouterr().err
    assert "point 000: it did not finish in an earlier run" in err
    assert "point 001: its done marker records no scenario hash" in err
    assert "point 002: its replay source, point 000, is re-run" in err
    assert "point 003: its replay source, point 001, is re-run" in err
    assert all(a != b for a, b in zip(_mtimes(out, 4), before))
    assert not (out / "points" / "001" / "stray.txt").exists()      # the folder was emptied first
    assert [(r["run_mode"], r["point_status"]) for r in _rows(out)] == [("full", "done")] * 2 + [("replay", "done")] * 2


def test_summary_shows_results_only_under_the_point_they_belong_to(tmp_path):
    from sim.study.sweep import write_sweep_summary
    out = tmp_path / "out"
    p = sweep_file(tmp_path, axes={"network.uplink.bandwidth": ["100 Mbps", "1 Gbps"]})
    assert run_sim.main(["sweep", str(p), "--out", str(out), "--quiet"]) == 0
    hashes = {i: yaml.safe_load((out / "points" / f"{i:03d}" / "done").read_text())["hash"] for i in range(2)}
    points = [{"network.uplink.bandwidth": b} for b in ("100 Mbps", "1 Gbps")]
    done = {i: {"status": "done", "error": "", "mode": "full", "note": ""} for i in range(2)}
    write_sweep_summary(out, points, done, {0: hashes[1], 1: hashes[1]})   # point 0's folder holds another scenario
    rows = _rows(out)
    assert [r["point_status"] for r in rows] == ["pending", "done"]
    assert rows[0]["final_test_acc"] == "" and rows[1]["final_test_acc"] != ""


def test_fewer_points_leave_old_folders_unlisted(tmp_path, capsys):
    out = tmp_path / "out"
    assert run_sim.main(["sweep", str(sweep_file(tmp_path)), "--out", str(out), "--quiet"]) == 0
    capsys.readouterr()
    fewer = sweep_file(tmp_path, axes={"network.uplink.bandwidth": ["100 Mbps"], "seed": [0, 1]})
    assert run_sim.main(["sweep", str(fewer), "--out", str(out), "--quiet"]) == 0
    assert "2 point folder(s)" in capsys.readouterr().err
    assert [r["point"] for r in _rows(out)] == ["000", "001"]
    _rows_match_their_folders(out)


# --- bad input: exit 2 before anything is written ---------------------------------
@pytest.mark.parametrize("kw, field, near", [
    ({"axes": {"network.uplink.bandwith": ["1 Gbps"]}}, "axes.network.uplink.bandwith", "network.uplink.bandwidth"),
    ({"axes": {"algorithms.0.lrr": [0.1]}}, "axes.algorithms.0.lrr", "algorithms.0.lr"),
    ({"set": {"stop.max_round": 4}}, "set.stop.max_round", "stop.max_rounds"),
])
def test_unknown_axis_or_set_key_exits_2_naming_the_nearest_fields(tmp_path, capsys, kw, field, near):
    out = tmp_path / "o"
    assert run_sim.main(["sweep", str(sweep_file(tmp_path, **kw)), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert field in err and "is not a field of the scenario" in err and f"nearest valid: {near}" in err
    assert not out.exists()


def test_valid_field_paths():
    from sim.study.fields import check_key, is_valid
    for key in ["seed", "seeds", "seeds.1", "algorithms", "algorithms.0", "algorithms.0.lr",
                "algorithms.2.compressor.ratio", "network.uplink.bandwidth", "network.uplink.bandwidth.median",
                "network.topology", "network.topology.servers", "stop.max_rounds", "stop", "model.hidden.0",
                "data.partition.alpha", "failures.0.crash_at", "compute.speed"]:
        assert is_valid(key), key
    for key in ["sed", "network.uplink.bandwith", "algorithms.x", "stop.max_rounds.x", "", "a..b"]:
        assert not is_valid(key) and check_key(key), key


def test_too_many_points_exit_2_before_the_grid_is_built(tmp_path, capsys):
    axes = {"seed": list(range(1000)), "eval_every": list(range(1, 1001)), "batch_size": list(range(1, 1001))}
    assert run_sim.main(["sweep", str(sweep_file(tmp_path, axes=axes)), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "1,000,000,000 points" in err and "10,000" in err
    assert not (tmp_path / "o").exists()


def test_replay_accepts_yaml_booleans_and_says_what_is_allowed(tmp_path):
    p = tmp_path / "sweep.yaml"
    for text, want in [("off", "off"), ("no", "off"), ("false", "off"), ("on", "auto"), ("yes", "auto"),
                       ("auto", "auto"), ("'off'", "off")]:
        p.write_text(f"name: s\nbase: {TINY}\naxes: {{seed: [0]}}\nreplay: {text}\n")
        assert load_sweep(p)[0].replay == want, text
    p.write_text(f"name: s\nbase: {TINY}\naxes: {{seed: [0]}}\nreplay: sometimes\n")
    with pytest.raises(ConfigError) as err:
        load_sweep(p)
    assert "Value error" not in str(err.value) and "allowed: auto" in str(err.value) and err.value.field == "replay"
    p.write_text(f"name: s\nbase: {TINY}\naxes: {{seed: []}}\n")
    with pytest.raises(ConfigError) as err:
        load_sweep(p)
    assert "Value error" not in str(err.value) and "has no values" in str(err.value)


@pytest.mark.parametrize("name", ["..", ".", "../up", "a/b", ".hidden"])
def test_a_sweep_name_cannot_leave_the_results_folder(tmp_path, monkeypatch, capsys, name):
    """The default folder is results/<name>/: a name that would climb out of it is bad input."""
    p = sweep_file(tmp_path, name=name)
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    assert run_sim.main(["sweep", str(p), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "name" in err and "Traceback" not in err
    assert list(work.iterdir()) == [] and sorted(x.name for x in tmp_path.iterdir()) == ["sweep.yaml", "work"]


def test_a_sweep_name_sets_the_default_folder_inside_results(tmp_path, monkeypatch):
    p = sweep_file(tmp_path, name="my.sweep-1", axes={"seed": [0]})
    monkeypatch.chdir(tmp_path)
    assert run_sim.main(["sweep", str(p), "--quiet"]) == 0
    assert (tmp_path / "results" / "my.sweep-1" / "sweep_summary.csv").is_file()
