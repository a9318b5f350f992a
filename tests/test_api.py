"""The Python API (sim/api.py), analysis.load and the shipped scenarios by name (issue 16).

api.run and ``run_sim.py run`` share one core: the same files, the same frames with
and without ``out``, the same messages (one ScenarioError, whose str() is the CLI's
line after "error: "); nothing is written without ``out`` or on bad input.
"""
from __future__ import annotations

import copy

import pandas as pd
import pytest
import torch
import yaml

import analysis
from analysis.frames import TABLES
from sim import api
from sim.errors import ConfigError, ScenarioError
from sim.study import shipped
from sim.study.results import RESULT_COLUMNS
from test_cli import REPO, SCENARIOS, TINY, cli, read_csv

SHORT = {"stop.max_rounds": 8, "eval_every": 4}          # tiny.yaml, shortened
SHORT_SET = [f"{k}={v}" for k, v in SHORT.items()]


def assert_same_frames(a, b) -> None:
    for name in TABLES:
        pd.testing.assert_frame_equal(getattr(a, name), getattr(b, name), obj=name)


@pytest.fixture(scope="module")
def tiny_api(tmp_path_factory):
    """(frames in memory, frames of out=, out folder, CLI folder) of the shortened tiny.yaml."""
    base = tmp_path_factory.mktemp("api")
    mem = api.run(TINY, overrides=SHORT)
    out = base / "api"
    on_disk = api.run(TINY, overrides=SHORT, out=out)
    rc, _, err = cli("run", TINY, "--out", base / "cli", "--quiet", *[x for s in SHORT_SET for x in ("--set", s)])
    assert rc == 0, err
    return mem, on_disk, out, base / "cli"


def test_run_returns_every_table_as_a_dataframe_with_its_columns(tiny_api):
    mem = tiny_api[0]
    assert mem.folder is None and mem.kind == "run"
    for name in TABLES:
        df = getattr(mem, name)
        assert isinstance(df, pd.DataFrame)
        assert list(df.columns) == RESULT_COLUMNS[name], name
    algs = [a["name"] for a in yaml.safe_load(TINY.read_text())["algorithms"]]
    assert mem.summary["algorithm"].tolist() == algs
    assert (mem.summary["final_round"] == 8).all()
    assert mem.metrics["round"].max() == 8 and set(mem.metrics["round"]) == {0, 4, 8}
    assert len(mem.updates) == 0 and len(mem.diagnostics) == 0     # synchronous: header only
    assert mem.scenario["stop"]["max_rounds"] == 8


def test_frames_are_the_same_with_and_without_out_and_as_analysis_load_reads_them(tiny_api):
    mem, on_disk, out, _ = tiny_api
    assert on_disk.folder == out
    assert_same_frames(mem, on_disk)
    assert_same_frames(mem, analysis.load(out))
    assert mem.scenario == on_disk.scenario


def test_out_gets_exactly_the_files_run_sim_run_writes(tiny_api):
    _, _, out, cli_out = tiny_api
    names = sorted(p.name for p in out.iterdir())
    assert names == sorted(p.name for p in cli_out.iterdir())
    assert {"scenario.yaml", "trace.jsonl", "host.yaml", "time_to_accuracy.png", *(f"{n}.csv" for n in TABLES)} \
        <= set(names)
    for name in ["scenario.yaml", "trace.jsonl", *(f"{n}.csv" for n in TABLES)]:
        assert (out / name).read_bytes() == (cli_out / name).read_bytes(), name


def test_without_out_nothing_is_written(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    res = api.run("tiny", overrides=SHORT_SET)
    assert len(res.metrics) == 3 * len(res.summary)       # rounds 0, 4, 8 of every algorithm
    assert list(tmp_path.iterdir()) == []


def test_a_path_a_shipped_name_yaml_text_and_a_dict_give_the_same_run(tiny_api, tiny_dict, tmp_path, monkeypatch):
    mem = tiny_api[0]
    monkeypatch.chdir(tmp_path)                    # "tiny" is no file here: the shipped one
    text = TINY.read_text()
    for given in ["tiny", str(TINY), text, tiny_dict]:
        assert_same_frames(mem, api.run(given, overrides=SHORT))
    assert tiny_dict == yaml.safe_load(text)       # the caller's dict is not changed by the overrides


def test_torch_deterministic_mode_of_the_caller_comes_back(tiny_dict):
    before = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(False)
    try:
        api.run(tiny_dict, overrides={"stop.max_rounds": 1, "eval_every": 1})
        assert not torch.are_deterministic_algorithms_enabled()
    finally:
        torch.use_deterministic_algorithms(before)


# ----------------------------------------------------------------- bad input

def test_scenario_error_is_the_config_error_the_cli_prints():
    assert ScenarioError is ConfigError and api.ScenarioError is ScenarioError


@pytest.mark.parametrize("change, overrides, field", [
    pytest.param(lambda d: d["network"]["uplink"].update(bandwith="1 Gbps"), None, "network.uplink.bandwith",
                 id="unknown-key"),
    pytest.param(lambda d: d.update(workers="ten"), None, "workers", id="wrong-type"),
    pytest.param(lambda d: None, {"network.uplink.bandwidth": "1 Gbbps"}, "network.uplink.bandwidth",
                 id="bad-override"),
    pytest.param(lambda d: d.update(batch_size=5000), None, "batch_size", id="batch-larger-than-shard"),
])
def test_bad_input_raises_one_scenario_error_with_the_cli_message(change, overrides, field, tiny_dict,
                                                                 write_scenario, tmp_path):
    data = copy.deepcopy(tiny_dict)
    change(data)
    path = write_scenario(data, "bad.yaml")
    out = tmp_path / "out"
    with pytest.raises(ScenarioError) as info:
        api.run(path, overrides=overrides, out=out)
    exc = info.value
    assert not out.exists()
    sets = [x for k, v in (overrides or {}).items() for x in ("--set", f"{k}={v}")]
    rc, stdout, err = cli("run", path, "--out", out, "--quiet", *sets)
    assert rc == 2 and stdout == ""
    assert err == f"error: {exc}\n"                               # the same line, word for word
    assert exc.field == field and exc.file.startswith(str(path))
    assert str(exc) == f"{exc.file}: {exc.field}: {exc.message}"
    with pytest.raises(ScenarioError) as from_dict:                # the same check on a dict
        api.run(data, overrides=overrides)
    assert (from_dict.value.field, from_dict.value.message) == (exc.field, exc.message)
    assert from_dict.value.file.startswith("<dict>")


def test_out_that_holds_results_is_refused_before_anything_runs(tiny_api):
    out = tiny_api[2]
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    with pytest.raises(ScenarioError) as info:
        api.run(TINY, overrides=SHORT, out=out)
    assert info.value.field == "--out" and "already holds results" in info.value.message
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


def test_what_is_neither_a_scenario_nor_a_name_is_refused(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ScenarioError, match="no shipped scenario of that name.*quickstart"):
        api.run("quickstrat")
    with pytest.raises(ScenarioError, match="is a shipped sweep, not a scenario"):
        api.run("uplink_bandwidth")
    with pytest.raises(ScenarioError, match="not int"):
        api.run(42)
    with pytest.raises(ScenarioError) as info:
        api.run("tiny", overrides="stop.max_rounds=3")
    assert info.value.field == "overrides"
    with pytest.raises(ScenarioError, match="malformed YAML"):
        api.run("name: x\n  workers: [")
    assert list(tmp_path.iterdir()) == []


def test_load_refuses_what_is_not_a_results_folder(tmp_path):
    with pytest.raises(ScenarioError, match="not a folder"):
        analysis.load(tmp_path / "missing")
    with pytest.raises(ScenarioError, match="no metrics.csv or sweep_summary.csv"):
        analysis.load(tmp_path)


# ----------------------------------------------------------------- sweeps

SWEEP = {"name": "api_bw", "base": str(TINY), "axes": {"network.uplink.bandwidth": ["10 Mbps", "1 Gbps"]}}


def test_sweep_returns_the_points_tables_led_by_point_and_axes(tmp_path):
    out = tmp_path / "sw"
    sw = api.sweep(SWEEP, overrides=SHORT, out=out)
    assert sw.kind == "sweep" and sw.axes == ["network.uplink.bandwidth"] and sw.folder == out
    assert sw.points["point"].tolist() == ["000", "001"]
    assert sw.points["point_status"].tolist() == ["done", "done"]
    assert sw.points["run_mode"].tolist() == ["full", "replay"]      # only the network differs: re-timed
    n_algs = len(yaml.safe_load(TINY.read_text())["algorithms"])
    for name in ("metrics", "summary", "phases", "links"):
        df = getattr(sw, name)
        assert list(df.columns[:2]) == ["point", "network.uplink.bandwidth"], name
        assert list(df.columns[2:]) == RESULT_COLUMNS[name], name
    assert len(sw.summary) == 2 * n_algs and (sw.summary["final_round"] == 8).all()
    by_point = sw.summary.groupby("network.uplink.bandwidth")["final_sim_time_s"].sum()
    assert by_point["10 Mbps"] > by_point["1 Gbps"]                  # the same rounds take longer
    # the rows are the points' own summary.csv files, and sweep_summary.csv agrees
    table = read_csv(out / "sweep_summary.csv")
    assert [r["final_sim_time_s"] for r in table] == [repr(x) for x in sw.summary["final_sim_time_s"]]
    point0 = pd.read_csv(out / "points" / "000" / "summary.csv", dtype={"algorithm": str})
    pd.testing.assert_frame_equal(sw.summary[sw.summary["point"] == "000"].drop(
        columns=["point", "network.uplink.bandwidth"]).reset_index(drop=True), point0)
    assert_same_frames(sw, analysis.load(out))


def test_sweep_without_out_leaves_nothing_and_shows_failed_points(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    sw = api.sweep(SWEEP, overrides=SHORT, axes={"network.uplink.bandwidth": ["1 Gbps", "1 Gbbps"]})
    assert sw.folder is None
    assert sw.points["point_status"].tolist() == ["done", "failed"]
    assert "network.uplink.bandwidth" in sw.points["error"].iloc[1] and "Gbbps" in sw.points["error"].iloc[1]
    assert set(sw.summary["point"]) == {"000"}                       # a failed point has no rows
    assert list(tmp_path.iterdir()) == []


def test_bad_sweep_input_raises_before_anything_runs(tmp_path):
    with pytest.raises(ScenarioError) as info:
        api.sweep({**SWEEP, "axes": {"network.uplink.bandwith": ["1 Gbps"]}}, out=tmp_path / "sw")
    assert info.value.field == "axes.network.uplink.bandwith" and info.value.file == "<dict>"
    assert not (tmp_path / "sw").exists()


# ----------------------------------------------------------------- shipped scenarios by name

def test_every_shipped_file_has_a_name_of_its_kind():
    cat = shipped.catalogue()
    files = sorted(SCENARIOS.rglob("*.yaml"))
    named = {p for kind in cat.values() for p in kind.values()}
    assert named == set(files)
    for kind, names in cat.items():
        for name, path in names.items():
            assert ("axes" in yaml.safe_load(path.read_text())) == (kind == "sweep"), name
    assert cat["scenario"]["quickstart"] == SCENARIOS / "quickstart.yaml"
    assert cat["sweep"]["uplink_bandwidth"] == cat["sweep"]["studies/uplink_bandwidth"]
    assert cat["scenario"]["sasg_mnist"] == SCENARIOS / "papers" / "sasg_mnist.yaml"   # same stem, other kind
    assert cat["sweep"]["sasg_mnist"] == SCENARIOS / "papers" / "reproduce" / "sasg_mnist.yaml"


def test_an_existing_path_wins_over_a_shipped_name(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert shipped.resolve("quickstart", "scenario") == str(SCENARIOS / "quickstart.yaml")
    (tmp_path / "quickstart").write_text("name: mine\n")
    assert shipped.resolve("quickstart", "scenario") == "quickstart"
    assert shipped.resolve("missing.yaml", "scenario") == "missing.yaml"   # a path: "no such file" as before


def test_cli_lists_and_runs_shipped_names(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    rc, out, err = cli("list", "scenarios")
    assert rc == 0, err
    lines = dict(line.split(": ", 1) for line in out.strip().splitlines())
    assert {"quickstart", "tiny"} <= set(lines["scenarios (run, validate)"].split(", "))
    assert {"uplink_bandwidth", "latency"} <= set(lines["sweeps (sweep)"].split(", "))
    assert lines["folder"] == str(SCENARIOS)
    rc, out, err = cli("validate", "tiny")
    assert rc == 0 and out.startswith(f"{SCENARIOS / 'tiny.yaml'}: ok"), err
    rc, out, err = cli("run", "tinyy", "--quiet")
    assert rc == 2 and out == "" and err.startswith("error: tinyy: no such file, and no shipped scenario")
    assert "tiny" in err.split("allowed:")[1].split(", ")
    rc, _, err = cli("sweep", "quickstart")
    assert rc == 2 and "is a shipped scenario, not a sweep" in err
    assert list(tmp_path.iterdir()) == []
    rc, _, _ = cli("list", "bogus")
    assert rc == 2


def test_the_checkout_reads_its_own_scenarios_folder():
    assert shipped.folder() == REPO / "scenarios"
