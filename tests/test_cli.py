"""The command line end to end: run / validate / list, results files and their
invariants, determinism, and bad input (exit 2, one message, nothing written).

Runs go through ``run_sim.main([...])`` in-process (fast); two subprocess calls
check the real exit codes.
"""
from __future__ import annotations

import contextlib
import copy
import csv
import io
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

import run_sim
from sim.study.config import load_scenario

REPO = Path(__file__).resolve().parents[1]
SCENARIOS = REPO / "scenarios"
TINY = SCENARIOS / "tiny.yaml"

METRICS_REQUIRED = ["algorithm", "seed", "round", "sim_time_s", "uploads", "bytes_up", "bytes_down",
                    "train_loss", "test_loss", "test_acc"]
SUMMARY_REQUIRED = ["algorithm", "seed", "model_params", "target_acc", "reached", "time_to_target_s",
                    "rounds_to_target", "uploads_to_target", "bytes_up_to_target", "final_test_acc",
                    "final_sim_time_s", "diverged"]
PLOTS = ["time_to_accuracy.png", "accuracy_vs_bytes.png"]
# The shared run overrides two fields so that the resolved scenario can be checked for them.
SETS = ["--set", "network.uplink.bandwidth=100 Mbps", "--set", "network.downlink.latency=2 ms"]


def cli(*argv) -> tuple[int, str, str]:
    """run_sim.main(argv) in-process -> (exit code, stdout, stderr).

    Restores torch's deterministic-algorithms flag, which ``run`` sets globally,
    so other test files are not affected.
    """
    det = torch.are_deterministic_algorithms_enabled()
    warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    out, err = io.StringIO(), io.StringIO()
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                rc = run_sim.main([str(a) for a in argv])
            except SystemExit as exc:  # argparse
                rc = exc.code
    finally:
        torch.use_deterministic_algorithms(det, warn_only=warn_only)
    return rc, out.getvalue(), err.getvalue()


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def snapshot(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> Path:
    """One in-process run of scenarios/tiny.yaml (with SETS) shared by the read-only checks."""
    out = tmp_path_factory.mktemp("tiny") / "run"
    rc, stdout, stderr = cli("run", TINY, "--out", out, "--quiet", *SETS)
    assert rc == 0, stderr
    return out


# --------------------------------------------------------------------------- #
# tiny.yaml, validate, list
# --------------------------------------------------------------------------- #

@pytest.mark.parametrize("name", ["quickstart.yaml", "tiny.yaml"])
def test_validate_accepts_the_shipped_scenarios(name):
    rc, out, err = cli("validate", SCENARIOS / name)
    assert rc == 0, err
    assert "ok" in out and name in out
    assert err == ""


def test_tiny_is_small():
    scn = load_scenario(TINY)
    assert scn.workers == 4 and scn.batch_size <= 16 and scn.stop.max_rounds <= 50
    assert {a.kind for a in scn.algorithms} >= {"sgd", "topk_ef_sgd"}
    assert scn.data.dataset in ("digits", "synthetic")


def test_list_prints_every_registry():
    rc, out, err = cli("list")
    assert rc == 0, err
    lines = dict(line.split(": ", 1) for line in out.strip().splitlines())
    expected = {"datasets": "digits", "models": "mlp", "algorithms": "topk_ef_sgd",
                "compressors": "topk", "topologies": "star"}
    for title, example in expected.items():
        assert title in lines, out
        assert example in lines[title].split(", "), lines[title]


# --------------------------------------------------------------------------- #
# A run: files, resolved scenario, invariants
# --------------------------------------------------------------------------- #

def test_run_writes_every_result_file(tiny_run):
    for name in ["scenario.yaml", "metrics.csv", "summary.csv", *PLOTS]:
        assert (tiny_run / name).is_file(), name
    for name in PLOTS:
        assert (tiny_run / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
    with open(tiny_run / "metrics.csv") as fh:
        assert set(METRICS_REQUIRED) <= set(next(csv.reader(fh)))
    with open(tiny_run / "summary.csv") as fh:
        assert set(SUMMARY_REQUIRED) <= set(next(csv.reader(fh)))


def test_resolved_scenario_reloads_with_defaults_overrides_and_units(tiny_run):
    path = tiny_run / "scenario.yaml"
    raw = yaml.safe_load(path.read_text())
    assert raw["network"]["header_bytes"] == 64                # a default, written out
    assert raw["network"]["sharing"] == "fair"
    assert raw["stop"]["on_target"] is True
    assert raw["network"]["uplink"]["bandwidth"] == "100 Mbps"  # --set, in units
    assert raw["network"]["downlink"]["latency"] == "2 ms"
    assert raw["network"]["downlink"]["bandwidth"] == "1 Gbps"
    resolved = load_scenario(path)
    assert resolved.dump() == load_scenario(TINY, [s for s in SETS if s != "--set"]).dump()
    assert resolved.network.uplink.bandwidth == 100e6


def test_metrics_invariants(tiny_run):
    scn = load_scenario(tiny_run / "scenario.yaml")
    rows = read_csv(tiny_run / "metrics.csv")
    summary = {r["algorithm"]: r for r in read_csv(tiny_run / "summary.csv")}
    labels = [a.label for a in scn.algorithms]
    assert [r["algorithm"] for r in read_csv(tiny_run / "summary.csv")] == labels
    assert {r["algorithm"] for r in rows} == set(labels)
    header = scn.network.header_bytes
    for label in labels:
        mine = [r for r in rows if r["algorithm"] == label]
        assert len(mine) >= 2, label
        first = mine[0]
        assert (first["round"], first["uploads"], first["bytes_up"], first["bytes_down"]) == ("0",) * 4
        assert float(first["sim_time_s"]) == 0.0
        d = int(summary[label]["model_params"])
        for prev, row in zip(mine, mine[1:]):
            assert int(row["round"]) > int(prev["round"])
            assert float(row["sim_time_s"]) > float(prev["sim_time_s"])
            for col in ("uploads", "bytes_up", "bytes_down"):
                assert int(row[col]) >= int(prev[col]), (label, col)
        for row in mine:
            rnd = int(row["round"])
            assert row["seed"] == str(scn.seed)
            assert int(row["uploads"]) == scn.workers * rnd
            assert rnd % scn.eval_every == 0 or rnd == scn.stop.max_rounds
            assert all(math.isfinite(float(row[c])) for c in ("train_loss", "test_loss"))
            assert 0.0 <= float(row["test_acc"]) <= 1.0
            if scn.algorithms[labels.index(label)].kind == "sgd":
                assert int(row["bytes_up"]) == rnd * scn.workers * (4 * d + header)


def test_summary_agrees_with_metrics(tiny_run):
    scn = load_scenario(tiny_run / "scenario.yaml")
    rows = read_csv(tiny_run / "metrics.csv")
    target = scn.stop.target_accuracy
    for s in read_csv(tiny_run / "summary.csv"):
        mine = [r for r in rows if r["algorithm"] == s["algorithm"] and r["seed"] == s["seed"]]
        hit = next(r for r in mine if float(r["test_acc"]) >= target)   # tiny reaches its target
        assert float(s["target_acc"]) == target
        assert (s["reached"], s["diverged"]) == ("True", "False")
        assert s["time_to_target_s"] == hit["sim_time_s"]
        assert s["rounds_to_target"] == hit["round"]
        assert s["uploads_to_target"] == hit["uploads"]
        assert s["bytes_up_to_target"] == hit["bytes_up"]
        assert s["final_test_acc"] == mine[-1]["test_acc"]
        assert s["final_sim_time_s"] == mine[-1]["sim_time_s"]
        # on_target: the run stops at the first evaluation that reaches the target
        assert mine[-1] is hit


def test_same_scenario_and_seed_give_identical_bytes_in_a_fresh_process(tiny_run, tmp_path):
    out = tmp_path / "again"
    proc = subprocess.run([sys.executable, str(REPO / "run_sim.py"), "run", str(TINY), "--out", str(out),
                           "--quiet", *SETS], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    for name in ["metrics.csv", "summary.csv", "scenario.yaml"]:
        assert (out / name).read_bytes() == (tiny_run / name).read_bytes(), name


# --------------------------------------------------------------------------- #
# Existing results, divergence
# --------------------------------------------------------------------------- #

def test_existing_results_are_kept_without_overwrite(tiny_run, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    for name, data in snapshot(tiny_run).items():
        (out / name).write_bytes(data)
    (out / "metrics.csv").write_text("algorithm\nmine, do not touch\n")
    before = snapshot(out)
    mtimes = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    rc, stdout, err = cli("run", TINY, "--out", out, "--quiet", *SETS)
    assert rc == 2
    assert err.count("error:") == 1 and "--overwrite" in err and str(out) in err
    assert snapshot(out) == before
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == mtimes
    # ... and --overwrite replaces them, with the same bytes as the first run
    rc, stdout, err = cli("run", TINY, "--out", out, "--quiet", "--overwrite", *SETS)
    assert rc == 0, err
    assert (out / "metrics.csv").read_bytes() == (tiny_run / "metrics.csv").read_bytes()


# lr 1e8: the evaluation after round 10 has a NaN train loss; lr 1e12: the
# worker losses of an early round are already non-finite (checked by hand).
@pytest.mark.parametrize("lr", ["1e8", "1e12"])
def test_a_diverging_algorithm_is_flagged_and_the_others_still_run(tmp_path, lr):
    out = tmp_path / "out"
    rc, _, err = cli("run", TINY, "--out", out, "--quiet", "--set", f"algorithms.0.lr={lr}")
    assert rc == 0, err
    scn = load_scenario(out / "scenario.yaml")
    assert scn.algorithms[0].kind == "sgd" and scn.algorithms[0].lr == float(lr)
    summary = {r["algorithm"]: r for r in read_csv(out / "summary.csv")}
    rows = read_csv(out / "metrics.csv")
    labels = [a.label for a in scn.algorithms]
    assert list(summary) == labels
    bad, *others = labels
    assert summary[bad]["diverged"] == "True" and summary[bad]["reached"] == "False"
    assert summary[bad]["time_to_target_s"] == ""
    # it stops at the round it diverged (here the first rounds), not at max_rounds, and says why
    mine = [r for r in rows if r["algorithm"] == bad]
    assert int(summary[bad]["final_round"]) == int(mine[-1]["round"]) <= 2 < scn.stop.max_rounds
    assert f"{bad} (seed 0) stopped: diverged in round" in err
    for label in labels:
        assert any(r["algorithm"] == label for r in rows), label
    for label in others:
        assert summary[label]["diverged"] == "False" and summary[label]["reached"] == "True"
    for name in PLOTS:
        assert (out / name).is_file()


# --------------------------------------------------------------------------- #
# Bad input: exit 2, one message naming the file and field, nothing written
# --------------------------------------------------------------------------- #

def _set(path: str, value):
    def mutate(d: dict) -> None:
        *parents, last = path.split(".")
        node = d
        for key in parents:
            node = node[int(key)] if isinstance(node, list) else node.setdefault(key, {})
        node[int(last) if isinstance(node, list) else last] = value
    return mutate


def _dup_names(d: dict) -> None:
    d["algorithms"][1]["name"] = d["algorithms"][0]["name"]


RATIO = "greater than 0|less than or equal to 1|(0, 1]"
# id -> (scenario: a mutation of tiny.yaml, raw text, or None for a missing file;
#        extra CLI args; substrings every message must contain; "a|b" = either)
BAD = {
    "malformed-yaml": ("name: tiny\nworkers: [4, 8\n", [], ["malformed YAML", "line"]),
    "malformed-indent": ("name: tiny\n  workers: 4\n bad: 1\n", [], ["malformed YAML", "line"]),
    "top-level-list": ("- name: tiny\n- workers: 4\n", [], ["mapping"]),
    "top-level-scalar": ("just a string\n", [], ["mapping"]),
    "unknown-key-top": (_set("wrokers", 4), [], ["wrokers", "unknown key"]),
    "unknown-key-nested": (_set("network.uplink.bandwith", "1 Gbps"), [],
                           ["network.uplink.bandwith", "unknown key"]),
    "unknown-key-algorithm": (_set("algorithms.0.momentum", 0.9), [], ["algorithms.0.momentum", "unknown key"]),
    "wrong-type-workers": (_set("workers", "ten"), [], ["workers", "integer", "ten"]),
    "unknown-algorithm": (_set("algorithms.0.kind", "sgdd"), [],
                          ["algorithms.0.kind", "sgdd", "topk_ef_sgd", "comp_ams"]),
    "missing-algorithm-kind": (lambda d: d["algorithms"][0].pop("kind"), [], ["algorithms.0.kind"]),
    "unknown-dataset": (_set("data.dataset", "mnist6k"), [], ["data.dataset", "mnist6k", "digits"]),
    "unknown-model": (_set("model", {"kind": "resnet"}), [], ["model.kind", "resnet", "mlp", "logreg"]),
    "bandwidth-zero": (_set("network.uplink.bandwidth", "0 Gbps"), [],
                       ["network.uplink.bandwidth", "0 Gbps", "greater than 0|> 0"]),
    "bandwidth-negative": (_set("network.uplink.bandwidth", "-1 Gbps"), [],
                           ["network.uplink.bandwidth", "-1 Gbps", "greater than 0|> 0"]),
    "bandwidth-unknown-unit": (_set("network.uplink.bandwidth", "1 Gbbps"), [],
                               ["network.uplink.bandwidth", "Gbbps", "Gbps", "Mbps"]),
    "topk-ratio-zero": (_set("algorithms.1.ratio", 0), [], ["algorithms.1.ratio", RATIO]),
    "topk-ratio-above-one": (_set("algorithms.1.ratio", 1.5), [], ["algorithms.1.ratio", "1.5", RATIO]),
    "compressor-ratio-zero": (_set("algorithms.2.compressor.ratio", 0), [],
                              ["algorithms.2.compressor", "ratio", RATIO]),
    "compressor-ratio-above-one": (_set("algorithms.2.compressor.ratio", 1.5), [],
                                   ["algorithms.2.compressor", "ratio", "1.5", RATIO]),
    "workers-zero": (_set("workers", 0), [], ["workers", "greater than or equal to 1|>= 1"]),
    "dirichlet-alpha-zero": (_set("data.partition", {"kind": "dirichlet", "alpha": 0}), [],
                             ["data.partition", "alpha", "greater than 0|> 0"]),
    "dirichlet-alpha-negative": (_set("data.partition", {"kind": "dirichlet", "alpha": -0.5}), [],
                                 ["data.partition", "alpha", "greater than 0|> 0"]),
    "batch-larger-than-shard": (_set("batch_size", 5000), [], ["batch_size", "5000", "shard", "allowed"]),
    "duplicate-algorithm-names": (_dup_names, [], ["algorithm", "unique", "sgd"]),
    "missing-file": (None, [], ["no such file"]),
    "set-not-a-mapping": (_set("seed", 0), ["--set", "workers.count=3"], ["--set", "workers"]),
    "set-index-out-of-range": (_set("seed", 0), ["--set", "algorithms.7.lr=0.1"], ["--set", "algorithms.7"]),
    "set-not-an-index": (_set("seed", 0), ["--set", "algorithms.first.lr=0.1"], ["--set", "algorithms.first"]),
    "set-unknown-key": (_set("seed", 0), ["--set", "network.uplink.bandwith=1 Gbps"],
                        ["network.uplink.bandwith", "unknown key"]),
    "set-no-equals": (_set("seed", 0), ["--set", "workers"], ["--set", "workers", "key=value"]),
    "set-bad-value": (_set("seed", 0), ["--set", "network.uplink.bandwidth=1 Gbbps"],
                      ["network.uplink.bandwidth", "Gbbps"]),
}


def _bad_params():
    for case in BAD:
        for command in ("run-new", "run-existing", "validate"):
            yield pytest.param(case, command, id=f"{case}-{command}")


def _make_bad(case: str, tiny: dict, write) -> Path:
    scenario = BAD[case][0]
    if scenario is None:
        return write("unused", "present.yaml").parent / "no_such_scenario.yaml"
    if isinstance(scenario, str):
        return write(scenario, "bad.yaml")
    data = copy.deepcopy(tiny)
    scenario(data)
    return write(data, "bad.yaml")


def _assert_one_message(err: str, file: Path, needles: list[str]) -> None:
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert file.name in err, err
    for needle in needles:
        assert any(alt in err for alt in needle.split("|")), f"{needle!r} not in {err!r}"


@pytest.mark.parametrize("case, command", list(_bad_params()))
def test_bad_input_exits_2_with_one_message_and_writes_nothing(case, command, tiny_dict, write_scenario,
                                                              tmp_path):
    path = _make_bad(case, tiny_dict, write_scenario)
    extra, needles = BAD[case][1], BAD[case][2]
    out = tmp_path / "out"
    if command == "validate":
        rc, stdout, err = cli("validate", path, *extra)
    elif command == "run-new":
        rc, stdout, err = cli("run", path, "--out", out, "--quiet", *extra)
        assert not out.exists()
    else:  # an --out that already holds results, even with --overwrite, is left alone
        out.mkdir()
        for name in ["scenario.yaml", "metrics.csv", "summary.csv"]:
            (out / name).write_text(f"earlier {name}\n")
        before = snapshot(out)
        rc, stdout, err = cli("run", path, "--out", out, "--quiet", "--overwrite", *extra)
        assert snapshot(out) == before
    assert rc == 2, (stdout, err)
    assert stdout == ""
    _assert_one_message(err, path, needles)


def test_bad_input_real_exit_code(tiny_dict, write_scenario, tmp_path):
    tiny_dict["network"]["uplink"]["bandwith"] = "1 Gbps"
    path = write_scenario(tiny_dict, "typo.yaml")
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, str(REPO / "run_sim.py"), "run", str(path), "--out", str(out)],
                          cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stdout == ""
    _assert_one_message(proc.stderr, path, ["network.uplink.bandwith", "unknown key"])
    assert not out.exists()




@pytest.mark.parametrize("mutate, path", [
    pytest.param(_set("workers", "ten"), "workers", id="workers"),
    pytest.param(_set("network.uplink.bandwith", "1 Gbps"), "network.uplink.bandwith", id="nested-key"),
    pytest.param(_set("network.uplink.bandwidth", "0 Gbps"), "network.uplink.bandwidth", id="bandwidth"),
    pytest.param(_set("algorithms.2.compressor.ratio", 1.5), "algorithms.2.compressor.ratio",
                 id="compressor-ratio"),
    pytest.param(_set("algorithms.2.compressor.kind", "randk"), "algorithms.2.compressor.kind",
                 id="compressor-kind"),
    pytest.param(_set("network.uplink.bandwidth", {"dist": "gamma"}), "network.uplink.bandwidth.dist",
                 id="bandwidth-dist-unknown"),
    pytest.param(_set("network.uplink.bandwidth", {"median": "1 Gbps"}), "network.uplink.bandwidth.dist",
                 id="bandwidth-dist-missing"),
    pytest.param(_set("data.partition", {"kind": "dirichlet", "alpha": 0}), "data.partition.alpha",
                 id="dirichlet-alpha"),
    pytest.param(_set("model", {"kind": "mlp", "hidden": 32}), "model.hidden", id="mlp-hidden"),
    pytest.param(_dup_names, "algorithms", id="duplicate-names"),
])
def test_message_names_the_field_path_once_as_written_in_the_file(mutate, path, tiny_dict, write_scenario):
    """'error: FILE: PATH: what is wrong': the path once, as the user wrote it (no union tags
    such as 'topk' or 'dirichlet', no pydantic type names)."""
    mutate(tiny_dict)
    file = write_scenario(tiny_dict, "bad.yaml")
    rc, _, err = cli("validate", file)
    assert rc == 2
    prefix = f"error: {file}: "
    assert err.startswith(prefix), err
    rest = err[len(prefix):]
    assert rest.startswith(f"{path}: "), err
    assert rest.count(path) == 1, err
    assert len(err.strip().splitlines()) == 1, err


def test_out_that_is_a_file_is_bad_input(tmp_path):
    out = tmp_path / "taken"
    out.write_text("not a folder\n")
    rc, _, err = cli("run", TINY, "--out", out, "--quiet")
    assert rc == 2 and "taken" in err
    assert out.read_text() == "not a folder\n"
