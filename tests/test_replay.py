"""Exact trace replay: re-timing a recorded run under another network gives the
files a full co-simulation under that network writes, byte for byte; replay is
refused, with the reason, where timing can change the math."""
from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

import run_sim
from sim.study.config import load_scenario
from sim.engine import build_world
from sim.study.replay import refusal, replay_results, replay_run
from sim.study.runner import execute
from sim.study.trace import TRACE_FILE, ReplayUnavailable, read_trace
from sim.study.results import METRICS_COLUMNS
from sim.study import results, yamlfile
import numpy as np

TINY = Path(__file__).resolve().parents[1] / "scenarios" / "tiny.yaml"
FILES = ("metrics.csv", "summary.csv", "phases.csv", "links.csv", "diagnostics.csv")
SHORT = ["stop.max_rounds=12", "eval_every=4", "stop.on_target=false"]

ALGS = {
    "dense+compressed": "[{name: sgd, kind: sgd, lr: 0.1}, {name: topk, kind: topk_ef_sgd, lr: 0.1, ratio: 0.1}]",
    "skip rule": "[{name: lasg, kind: lasg_wk2, lr: 0.1}, {name: sasg, kind: sasg, lr: 0.1}]",
    "second round": "[{name: sk, kind: sketched_sgd, lr: 0.01, rows: 3, cols: 100, k: 20, P: 4}]",
}


def run(tmp: Path, name: str, overrides: list[str]) -> Path:
    scn = load_scenario(TINY, overrides)
    out = tmp / name
    status, _ = execute(scn, {s: build_world(scn, s) for s in scn.run_seeds}, out, quiet=True, plots=False)
    assert status == 0
    return out


def same_files(a: Path, b: Path) -> None:
    for f in FILES:
        assert (a / f).read_bytes() == (b / f).read_bytes(), f


@pytest.mark.parametrize("algs", list(ALGS), ids=list(ALGS))
@pytest.mark.parametrize("base,change", [
    ([], ["network.uplink.bandwidth=20 Mbps", "network.uplink.latency=40 ms"]),
    (["network.sharing=fifo"], ["network.uplink.bandwidth=5 Mbps"]),
    (["network.topology={kind: star, servers: 2}"], ["network.downlink.bandwidth=30 Mbps",
                                                      "network.server.bandwidth=50 Mbps"]),
    (["compute.stragglers={probability: 0.3, slowdown: 50}"],
     ["network.uplink={bandwidth: 1 Gbps, latency: 1 ms, schedule: [{at: 0 s, bandwidth: 8 Mbps}, "
      "{at: 0.2 s, bandwidth: 1 Gbps}], down: [{start: 0.3 s, end: 0.35 s}]}"]),
], ids=["bw+latency", "fifo", "two-servers", "stragglers+schedule"])
def test_replay_equals_full_cosimulation(tmp_path, algs, base, change):
    common = [*SHORT, f"algorithms={ALGS[algs]}", *base]
    recorded = run(tmp_path, "a", common)
    full = run(tmp_path, "b", [*common, *change])
    replay_run(recorded, load_scenario(TINY, [*common, *change]), tmp_path / "r", plots=False)
    same_files(full, tmp_path / "r")
    # the network change mattered: the clock moved, the learning did not
    a = (recorded / "metrics.csv").read_text().splitlines()
    r = (tmp_path / "r" / "metrics.csv").read_text().splitlines()
    assert a != r
    assert [x.split(",")[-3:] for x in a] == [x.split(",")[-3:] for x in r]


def test_replay_on_a_ring_and_with_two_seeds(tmp_path):
    common = [*SHORT, "seeds=[0, 1]", "network.topology=ring", f"algorithms={ALGS['dense+compressed']}"]
    recorded = run(tmp_path, "a", common)
    change = ["network.uplink.latency=0.1 ms", "network.downlink.bandwidth=10 Mbps"]
    full = run(tmp_path, "b", [*common, *change])
    replay_run(recorded, load_scenario(TINY, [*common, *change]), tmp_path / "r", plots=False)
    same_files(full, tmp_path / "r")


def test_trace_records_sizes_skips_and_compute(tmp_path):
    recorded = run(tmp_path, "a", [*SHORT, f"algorithms={ALGS['skip rule']}"])
    segs = read_trace(recorded / TRACE_FILE)
    assert set(segs) == {("lasg", 0), ("sasg", 0)}
    header, events = segs[("lasg", 0)]
    d = header["d"]
    plans = [e for e in events if e["e"] == "plan"]
    assert len(plans) == 12 and [e["t"] for e in plans] == list(range(12))
    # a skipping worker sends a header-only notice (0 payload bytes), others the dense gradient
    for e in plans:
        for size, carries in zip(e["out"]["sizes"], e["out"]["carries"]):
            assert size == ([4 * d] if carries == "1" else [0])
    assert any("0" in e["out"]["carries"] for e in plans)     # some worker skipped
    assert events[-1]["e"] == "stats" and events[-1]["out"]["server_state_bytes"] == 4 * d * 4


@pytest.mark.parametrize("extra,change,reason", [
    (["round_timeout=1 s"], ["network.uplink.bandwidth=10 Mbps"], "round_timeout"),
    (["failures=[{worker: 1, crash_at: 0.05 s}]"], ["network.uplink.bandwidth=10 Mbps"], "failures"),
    ([], ["batch_size=4"], "batch_size differs"),
    ([], ["algorithms.0.lr=0.2"], "algorithms.0.lr differs"),
    ([], ["network.topology=ring"], "protocol changes"),
    ([], ["network.topology={kind: star, servers: 2}"], "protocol changes"),
])
def test_refusals_name_the_reason(extra, change, reason):
    a = load_scenario(TINY, [*SHORT, *extra])
    b = load_scenario(TINY, [*SHORT, *extra, *change])
    assert reason in (refusal(a, b) or "")


def test_network_only_changes_are_replayable():
    a = load_scenario(TINY, SHORT)
    b = load_scenario(TINY, [*SHORT, "network.uplink.bandwidth=3 Mbps", "network.sharing=fifo",
                             "network.header_bytes=40", "network.topology={kind: hierarchical, rack_size: 2}"])
    assert refusal(a, b) is None


def test_max_sim_time_reached_elsewhere_is_refused_at_run_time(tmp_path):
    # recorded: 12 rounds in well under a second; under a 100 kbps uplink the
    # 0.5 s cap ends the run at a round the trace never evaluated
    common = [*SHORT, "stop.max_sim_time=0.5 s", "algorithms=[{name: sgd, kind: sgd, lr: 0.1}]"]
    recorded = run(tmp_path, "a", common)
    with pytest.raises(ReplayUnavailable, match="timing changed the run's course"):
        replay_results(recorded, load_scenario(TINY, [*common, "network.uplink.bandwidth=100 kbps"]))


def test_cli_replay_and_refusal_exit_2_write_nothing(tmp_path, capsys):
    recorded = run(tmp_path, "a", [*SHORT, "algorithms=[{name: sgd, kind: sgd, lr: 0.1}]"])
    out = tmp_path / "r"
    assert run_sim.main(["replay", str(recorded), "--set", "network.uplink.latency=20 ms", "--out", str(out)]) == 0
    assert all((out / f).exists() for f in FILES)
    bad = tmp_path / "bad"
    assert run_sim.main(["replay", str(recorded), "--set", "batch_size=4", "--out", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "cannot replay" in err and "batch_size" in err
    assert not bad.exists()
    # an interrupted run (trace cut in the middle of a segment) cannot be replayed
    lines = (recorded / TRACE_FILE).read_text().splitlines()
    (recorded / TRACE_FILE).write_text("\n".join(lines[:10]) + "\n" + lines[10][:15])
    assert run_sim.main(["replay", str(recorded), "--set", "network.uplink.latency=20 ms",
                         "--out", str(bad)]) == 2
    assert "interrupted" in capsys.readouterr().err and not bad.exists()


def test_trace_lines_are_json_with_exact_floats(tmp_path):
    recorded = run(tmp_path, "a", [*SHORT, "algorithms=[{name: sgd, kind: sgd, lr: 0.1}]"])
    evals = [json.loads(x) for x in (recorded / TRACE_FILE).read_text().splitlines() if '"evaluate"' in x]
    metrics = (recorded / "metrics.csv").read_text().splitlines()[1:]
    col = METRICS_COLUMNS.index("test_acc")
    assert [repr(e["out"]["test_acc"]) for e in evals] == [m.split(",")[col] for m in metrics]


# --------------------------------------------------------------------------- #
# The files a run used: pinned by absolute path and hash in scenario.yaml
# --------------------------------------------------------------------------- #

def _scenario_with_files(tmp_path: Path) -> Path:
    """tiny.yaml in its own folder, naming a bandwidth trace and a GraphML file by relative paths."""
    import networkx as nx
    import yaml
    folder = tmp_path / "scn"
    folder.mkdir()
    (folder / "bw.csv").write_text("time_s,bandwidth_bps\n0,1e9\n0.05,2e7\n")
    g = nx.Graph()
    for i in range(4):
        g.add_edge(f"w{i}", "sw", bandwidth_bps=1e9, latency_s=0.001)
    g.add_edge("sw", "server", bandwidth_bps=1e10, latency_s=0.0)
    nx.write_graphml(g, folder / "net.graphml")
    data = yaml.safe_load(TINY.read_text())
    data["network"]["topology"] = {"kind": "graph", "graphml": "net.graphml",
                                   "edges": [{"src": "sw", "dst": "server", "trace": "bw.csv"}]}
    data["stop"].update(max_rounds=6, on_target=False)
    data["eval_every"] = 3
    data["algorithms"] = [{"name": "sgd", "kind": "sgd", "lr": 0.1}]
    (folder / "s.yaml").write_text(yaml.safe_dump(data))
    return folder


def test_scenario_yaml_pins_trace_and_graphml_files_and_replay_works_from_anywhere(tmp_path, monkeypatch):
    import hashlib
    import yaml
    folder = _scenario_with_files(tmp_path)
    monkeypatch.chdir(folder)
    assert run_sim.main(["run", "s.yaml", "--out", str(tmp_path / "run"), "--quiet"]) == 0
    topo = yaml.safe_load((tmp_path / "run" / "scenario.yaml").read_text())["network"]["topology"]
    assert topo["graphml"] == str(folder / "net.graphml")
    assert topo["graphml_sha256"] == hashlib.sha256((folder / "net.graphml").read_bytes()).hexdigest()
    assert topo["edges"][0]["trace"] == str(folder / "bw.csv")
    assert topo["edges"][0]["trace_sha256"] == hashlib.sha256((folder / "bw.csv").read_bytes()).hexdigest()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    assert run_sim.main(["replay", str(tmp_path / "run"), "--out", "r1",
                         "--set", "network.uplink.latency=20 ms"]) == 0
    assert (elsewhere / "r1" / "metrics.csv").is_file()


@pytest.mark.parametrize("name, field", [("bw.csv", "network.topology.edges.0.trace"),
                                         ("net.graphml", "network.topology.graphml")])
def test_replay_refuses_when_a_pinned_file_changed(tmp_path, monkeypatch, capsys, name, field):
    folder = _scenario_with_files(tmp_path)
    assert run_sim.main(["run", str(folder / "s.yaml"), "--out", str(tmp_path / "run"), "--quiet"]) == 0
    path = folder / name
    path.write_text(path.read_text().replace("1e9", "5e8").replace("0.001", "0.002"))
    capsys.readouterr()
    out = tmp_path / "r"
    assert run_sim.main(["replay", str(tmp_path / "run"), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert f"{field}: {path} changed since this scenario was recorded" in err
    assert not out.exists()


# --------------------------------------------------------------------------- #
# Event-driven runs: a trace that documents the run, keyed by version and time
# --------------------------------------------------------------------------- #

def test_event_driven_trace_has_one_line_per_message_and_replay_refuses_it(tmp_path, capsys):
    """async_sgd (top-k, so the payload is the compressor's size) and FedBuff
    (whose buffered messages are not applied): one ``apply`` line per row of
    updates.csv with the same versions, times, workers and staleness; the
    evaluations are metrics.csv's rows; replay exits 2 naming the reason the
    algorithm declares, and the trace's header records that reason too."""
    import csv
    algs = ("[{name: a, kind: async_sgd, lr: 0.1, compressor: {kind: topk, ratio: 0.1}}, "
            "{name: b, kind: fedbuff, local_lr: 0.1, buffer: 2, concurrency: 2}]")
    recorded = run(tmp_path, "a", [*SHORT, f"algorithms={algs}"])
    segs = read_trace(recorded / TRACE_FILE)
    assert set(segs) == {("a", 0), ("b", 0)}
    updates = list(csv.DictReader((recorded / "updates.csv").open()))
    metrics = list(csv.DictReader((recorded / "metrics.csv").open()))
    for label in ("a", "b"):
        header, events = segs[(label, 0)]
        assert header["event_driven"] is True and "is not timing-independent" in header["replay"]
        applied = [e for e in events if e["e"] == "apply"]
        mine = [u for u in updates if u["algorithm"] == label]
        assert len(applied) == len(mine) == 12 * 4 and events[-1] == {**events[-1], "e": "end", "messages": 48,
                                                                      "status": "done"}
        for e, u in zip(applied, mine):
            assert [e["version"], repr(e["sim_time_s"]), e["worker"], e["computed_at"], e["staleness"]] == \
                [int(u["version"]), u["sim_time_s"], int(u["worker"]), int(u["computed_at"]), int(u["staleness"])]
            assert repr(e["step_size"]) == u["step_size"]
        evals = [e for e in events if e["e"] == "evaluate"]
        rows = [m for m in metrics if m["algorithm"] == label]
        assert [(e["t"], repr(e["out"]["test_acc"])) for e in evals] == [(int(m["round"]), m["test_acc"])
                                                                          for m in rows]
        last = rows[-1]
        hdr = load_scenario(TINY, SHORT).network.header_bytes
        assert sum(e["payload_bytes"] + hdr for e in applied) == int(last["bytes_up"])
    b_applied = [e["applied"] for e in segs[("b", 0)][1] if e["e"] == "apply"]
    assert b_applied == [False, True] * 24                           # K = 2: every second message steps
    a_bytes = {e["payload_bytes"] for e in segs[("a", 0)][1] if e["e"] == "apply"}
    assert len(a_bytes) == 1 and a_bytes.pop() < 4 * segs[("a", 0)][0]["d"]   # top-k, not dense
    out = tmp_path / "r"
    capsys.readouterr()
    assert run_sim.main(["replay", str(recorded), "--set", "network.uplink.latency=20 ms", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "cannot replay" in err and "algorithm 'a' is not timing-independent" in err and not out.exists()


def test_an_edited_event_driven_trace_is_detected(tmp_path):
    from sim.study.trace import TraceError
    recorded = run(tmp_path, "a", [*SHORT, "algorithms=[{name: a, kind: async_sgd, lr: 0.1}]"])
    path = recorded / TRACE_FILE
    lines = path.read_text().splitlines()
    k = next(i for i, x in enumerate(lines) if '"apply"' in x)
    path.write_text("\n".join([*lines[:k], lines[k].replace('"worker":0', '"worker":9'), *lines[k + 1:]]) + "\n")
    with pytest.raises(TraceError, match=f"{k + 1}: worker: 9; allowed: a worker index 0 .. 3"):
        read_trace(path)
    path.write_text("\n".join([*lines[:k], lines[k].replace('"worker":0', '"worker":1'), *lines[k + 1:]]) + "\n")
    with pytest.raises(TraceError, match="do not match the checksum"):
        read_trace(path)


def test_replays_share_one_parse_of_the_trace_and_an_edit_is_read_again(tmp_path):
    """A sweep replays many points from one trace: replay parses it once per content
    (sim/study/replay.py _segments).  The shared parse is not modified by a replay
    (a second replay writes the same files, and the parse equals a fresh read), and a
    trace edited after it was parsed is read again and refused."""
    from sim.study import replay as replay_mod
    from sim.study.trace import TraceError
    common = [*SHORT, f"algorithms={ALGS['dense+compressed']}"]
    recorded = run(tmp_path, "a", common)
    scn = load_scenario(TINY, [*common, "network.uplink.bandwidth=20 Mbps"])
    replay_run(recorded, scn, tmp_path / "r1", plots=False)
    parsed = replay_mod._segments(recorded / TRACE_FILE)
    assert replay_mod._segments(recorded / TRACE_FILE) is parsed        # one parse, shared
    replay_run(recorded, scn, tmp_path / "r2", plots=False)
    same_files(tmp_path / "r1", tmp_path / "r2")
    assert parsed == read_trace(recorded / TRACE_FILE)                  # replays left it as it was
    path = recorded / TRACE_FILE
    lines = path.read_text().splitlines()
    k = next(i for i, x in enumerate(lines) if '"plan"' in x)
    path.write_text("\n".join([*lines[:k], lines[k].replace('"sizes":[[', '"sizes":[[1', 1), *lines[k + 1:]]) + "\n")
    with pytest.raises(TraceError, match="do not match the checksum"):
        replay_run(recorded, scn, tmp_path / "r3", plots=False)
    assert not (tmp_path / "r3").exists()


def test_frozen_heap_freezes_what_exists_and_unfreezes_after_an_error():
    import gc
    from sim.study.replay import frozen_heap
    assert gc.get_freeze_count() == 0
    with pytest.raises(KeyError):
        with frozen_heap():
            assert gc.get_freeze_count() > 0
            assert gc.isenabled()                # replays' own garbage is still collected
            raise KeyError("boom")
    assert gc.get_freeze_count() == 0


_SCALARS = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=120))
_KEYS = st.one_of(st.text(max_size=150), st.integers(), st.booleans(), st.none(), st.floats(allow_nan=False))
_DATA = st.recursive(_SCALARS, lambda c: st.one_of(st.lists(c, max_size=4), st.dictionaries(_KEYS, c, max_size=4)),
                     max_leaves=20)


@settings(max_examples=400, deadline=None)
@given(st.dictionaries(_KEYS, _DATA, min_size=1, max_size=5), st.data())
def test_scenario_yaml_written_by_sections_is_safe_dump_bitwise(data, more):
    """scenario.yaml is written section by section with each section's text remembered
    (yamlfile.dump_sections); the bytes are yaml.safe_dump's, for any data, also when a
    section changes between two dumps, and when a list is shared (anchors and aliases)."""
    assert yamlfile.dump_sections(data) == yaml.safe_dump(data, sort_keys=False)
    key = more.draw(st.sampled_from(list(data)))
    changed = {**data, key: more.draw(_DATA)}
    assert yamlfile.dump_sections(changed) == yaml.safe_dump(changed, sort_keys=False)
    shared = [1, [2]]
    aliased = {**data, "a": shared, "b": {"c": shared}}
    assert yamlfile.dump_sections(aliased) == yaml.safe_dump(aliased, sort_keys=False)
    assert "&id001" in yamlfile.dump_sections(aliased)


def _shipped_scenarios() -> list[str]:
    """The scenario files under scenarios/ (the sweep specs there have no top-level algorithms)."""
    root = Path(__file__).resolve().parents[1] / "scenarios"
    return sorted(str(p) for p in root.rglob("*.yaml") if "algorithms" in (yaml.safe_load(p.read_text()) or {}))


@pytest.mark.parametrize("path", _shipped_scenarios())
def test_every_shipped_scenario_dumps_by_sections_as_safe_dump(path):
    d = load_scenario(path, []).dump()
    assert yamlfile.dump_sections(d) == yaml.safe_dump(d, sort_keys=False)
    assert yamlfile.dump_sections(d) == yaml.safe_dump(d, sort_keys=False)     # from the remembered text


_CELLS = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=20),
                   st.floats().map(np.float64), st.floats(width=32).map(np.float32), st.integers(-9, 9).map(np.int64))


@settings(max_examples=400, deadline=None)
@given(st.lists(st.lists(_CELLS, max_size=6), max_size=5))
def test_csv_text_words_every_value_as_fmt(rows):
    """csv_text hands plain values to csv.writer directly; the bytes are those of formatting
    every value with _fmt first (None, numpy scalars and all)."""
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerows([[results._fmt(v) for v in r] for r in rows])
    assert results.csv_text(rows) == buf.getvalue()
