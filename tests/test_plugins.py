"""Plugins (sim/plugins.py, docs/plugins.md): a user's file or module registers
algorithms, compressors, models, data sets, partitions and topologies through
the built-ins' registries; `run_sim.py check` runs the conformance suite over
what a plugin registered (sim/conformance.py).

Plugins register into global registries: every test here runs inside
``plugins.isolated()`` (registries, loaded plugins and plugin modules restored
afterwards), and the CLI checks that need a clean process run in subprocesses.
"""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml

from sim import plugins

from test_cli import TINY, cli, read_csv

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "docs" / "examples" / "my_plugin.py"
EXAMPLE_SCENARIO = REPO / "docs" / "examples" / "plugin_scenario.yaml"
SHORT = ["--set", "stop.max_rounds=20", "--set", "eval_every=10"]


@pytest.fixture(autouse=True)
def isolated(monkeypatch):
    """No plugin leaks into another test; no COMMSIM_PLUGINS from the caller's shell."""
    monkeypatch.delenv(plugins.ENV_VAR, raising=False)
    with plugins.isolated():
        yield


def run_cli(*args, env: dict | None = None, cwd: Path = REPO, timeout: int = 600) -> subprocess.CompletedProcess:
    """run_sim.py in a fresh process (nothing registered in this one)."""
    full = {k: v for k, v in os.environ.items() if k != plugins.ENV_VAR} | (env or {})
    return subprocess.run([sys.executable, str(REPO / "run_sim.py"), *map(str, args)], cwd=cwd, env=full,
                          capture_output=True, text=True, timeout=timeout)


def one_error(err: str, *needles: str) -> None:
    assert err.startswith("error: ") and "Traceback" not in err, err
    for needle in needles:
        assert needle in err, (needle, err)


def registered_names() -> dict[str, list[str]]:
    return {what: reg.names() for what, reg in plugins.registries().items()}


# A module plugin with one entry in each of the other registries.
MODULE_PLUGIN = '''
from typing import ClassVar, Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from sim.learn.data import DATASETS, PARTITIONS, Dataset
from sim.learn.models import MODELS
from topologies import TOPOLOGIES
from topologies.star import StarTopology


@MODELS.register("wide_logreg")
class WideLogReg(BaseModel):
    model_config = ConfigDict(extra="forbid")
    kind: Literal["wide_logreg"] = "wide_logreg"
    hidden: int = Field(16, ge=1)

    def build(self, input_shape, num_classes):
        return nn.Sequential(nn.Flatten(), nn.Linear(int(np.prod(input_shape)), self.hidden), nn.Tanh(),
                             nn.Linear(self.hidden, num_classes))


@DATASETS.register("blobs")
def blobs(root, seed):
    """Three Gaussian blobs in 8 dimensions, 300 + 90 samples."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(3, 8)) * 3
    def draw(m):
        y = np.arange(m) % 3
        return torch.tensor(centres[y] + rng.normal(size=(m, 8)), dtype=torch.float32), torch.tensor(y)
    xtr, ytr = draw(300)
    xte, yte = draw(90)
    return Dataset("blobs", xtr, ytr, xte, yte, (8,), 3)


@PARTITIONS.register("round_robin")
def round_robin(labels, n, rng, *, offset: int = 0):
    """Sample j goes to worker (j + offset) mod n."""
    idx = np.arange(len(labels))
    return [idx[(idx + offset) % n == i] for i in range(n)]


@TOPOLOGIES.register("my_star")
class MyStar(StarTopology):
    kind: Literal["my_star"] = "my_star"
'''


@pytest.fixture
def module_plugin(tmp_path, monkeypatch) -> str:
    """An importable module `cs_module_plugin` (its folder put on sys.path)."""
    folder = tmp_path / "mods"
    folder.mkdir()
    (folder / "cs_module_plugin.py").write_text(MODULE_PLUGIN)
    monkeypatch.syspath_prepend(str(folder))
    return "cs_module_plugin"


# --------------------------------------------------------------------------- #
# Loading
# --------------------------------------------------------------------------- #

def test_a_file_plugin_registers_through_the_registries_and_isolation_takes_it_back():
    import algorithms
    before = registered_names()
    with plugins.isolated():
        p = plugins.load(str(EXAMPLE))
        assert p.how == "file" and p.module == "my_plugin" and p.file == str(EXAMPLE.resolve())
        assert p.registered == {"algorithm": ["ef21"], "compressor": ["sign_topk"]}
        assert "ef21" in algorithms.ALGORITHMS and "sign_topk" in algorithms.COMPRESSORS
        assert plugins.load(str(EXAMPLE)) is p                      # loaded once
        assert plugins.loaded() == [p] and "my_plugin" in sys.modules
        assert p.sha256 == __import__("hashlib").sha256(EXAMPLE.read_bytes()).hexdigest()
    assert registered_names() == before and "my_plugin" not in sys.modules and plugins.loaded() == []


def test_a_module_plugin_registers_a_model_dataset_partition_and_topology(module_plugin):
    from sim.study.config import validate
    p = plugins.load(module_plugin)
    assert p.how == "module"
    assert p.registered == {"model": ["wide_logreg"], "dataset": ["blobs"], "partition": ["round_robin"],
                            "topology": ["my_star"]}
    data = yaml.safe_load(TINY.read_text())
    data.update(model={"kind": "wide_logreg", "hidden": 8},
                data={"dataset": "blobs", "partition": {"kind": "round_robin", "offset": 1}},
                network={**data["network"], "topology": "my_star"})
    scn = validate(data, "s.yaml")
    assert (scn.model.kind, scn.model.hidden, scn.data.partition.offset, scn.network.topology.kind) == \
        ("wide_logreg", 8, 1, "my_star")
    dumped = scn.dump()                            # the resolved scenario writes the plugin's kinds back
    assert dumped["model"] == {"kind": "wide_logreg", "hidden": 8}
    assert dumped["data"]["partition"] == {"kind": "round_robin", "offset": 1}
    assert validate(dumped, "again.yaml").dump() == dumped
    # the derived partition config is as strict as the built-ins'
    for bad, needle in [({"kind": "round_robin", "offst": 1}, "data.partition.offst: unknown key"),
                        ({"kind": "round_robin", "offset": "x"}, "data.partition.offset")]:
        with pytest.raises(Exception, match=needle):
            validate({**data, "data": {"dataset": "blobs", "partition": bad}}, "s.yaml")


def test_every_check_passes_on_the_module_plugins_entries(module_plugin):
    from sim.conformance import run_checks
    p = plugins.load(module_plugin)
    results = run_checks(p.registered)
    assert [(r.subject, r.check) for r in results if r.status != "PASS"] == [], \
        [(r.subject, r.check, r.detail) for r in results if r.status != "PASS"]
    assert {(r.subject, r.check) for r in results} >= {
        ("model wide_logreg", "schema"), ("model wide_logreg", "shapes"), ("model wide_logreg", "short scenario"),
        ("dataset blobs", "shapes"), ("dataset blobs", "determinism"), ("partition round_robin", "shapes"),
        ("partition round_robin", "short scenario"), ("topology my_star", "schema")}


def test_commsim_plugins_lists_files_and_modules_separated_by_pathsep(module_plugin, monkeypatch):
    monkeypatch.setenv(plugins.ENV_VAR, os.pathsep.join([str(EXAMPLE), module_plugin, ""]))
    rc, out, err = cli("list")
    assert rc == 0, err
    lines = out.splitlines()
    assert any(line.startswith("algorithms: ") and "ef21" in line for line in lines)
    assert any(line.startswith("models: ") and "wide_logreg" in line for line in lines)
    assert f"plugin {EXAMPLE} (COMMSIM_PLUGINS, module my_plugin): algorithm ef21; compressor sign_topk" in lines
    assert ("plugin cs_module_plugin (COMMSIM_PLUGINS, module cs_module_plugin): model wide_logreg; dataset "
            "blobs; partition round_robin; topology my_star") in lines
    # given twice (COMMSIM_PLUGINS and --plugin), loaded once
    rc, out, err = cli("list", "--plugin", EXAMPLE)
    assert rc == 0 and sum("module my_plugin" in line for line in out.splitlines()) == 1


def test_an_installed_package_registers_through_the_entry_point_group(tmp_path):
    """A distribution's entry_points.txt in the commsim.plugins group (a real
    dist-info folder on the path, found by importlib.metadata), in a fresh process."""
    site = tmp_path / "site"
    (site / "cs_ep_plugin").mkdir(parents=True)
    (site / "cs_ep_plugin" / "__init__.py").write_text(EXAMPLE.read_text().replace('"sign_topk"', '"ep_sign_topk"')
                                                       .replace('"ef21"', '"ep_ef21"'))
    info = site / "cs_ep_plugin-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: cs-ep-plugin\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text("[commsim.plugins]\ndemo = cs_ep_plugin\n")
    out = run_cli("list", env={"PYTHONPATH": str(site)})
    assert out.returncode == 0, out.stderr
    assert ("plugin cs_ep_plugin (entry point demo, module cs_ep_plugin): algorithm ep_ef21; compressor "
            "ep_sign_topk") in out.stdout.splitlines()


def test_an_entry_point_naming_a_function_is_called(tmp_path, monkeypatch):
    import importlib.metadata

    import algorithms
    (tmp_path / "cs_ep_func.py").write_text(textwrap.dedent('''
        CALLS = []
        def register():
            from typing import Literal
            from algorithms import ALGORITHMS
            from algorithms.base import AlgorithmConfig
            @ALGORITHMS.register("ep_func_sgd")
            class C(AlgorithmConfig):
                kind: Literal["ep_func_sgd"] = "ep_func_sgd"
                def build(self, ctx):
                    return ALGORITHMS["sgd"](lr=self.lr).build(ctx)
            CALLS.append(1)
    '''))
    monkeypatch.syspath_prepend(str(tmp_path))
    ep = importlib.metadata.EntryPoint("func", "cs_ep_func:register", plugins.ENTRY_POINT_GROUP)
    monkeypatch.setattr(importlib.metadata, "entry_points",
                        lambda **kw: [ep] if kw.get("group") == plugins.ENTRY_POINT_GROUP else [])
    (p,) = plugins.load_all([], env=False)
    assert p.how == "entry point" and p.registered == {"algorithm": ["ep_func_sgd"]}
    assert sys.modules["cs_ep_func"].CALLS == [1] and "ep_func_sgd" in algorithms.ALGORITHMS
    assert plugins.load_all([], env=False) == [p] and sys.modules["cs_ep_func"].CALLS == [1]   # once
    assert plugins.worker_specs() == [{"how": "entry point", "value": "cs_ep_func:register", "name": "func"}]


# --------------------------------------------------------------------------- #
# Scenarios and plugins
# --------------------------------------------------------------------------- #

def test_a_kind_nobody_registered_names_the_kind_the_registered_ones_and_the_plugin_flag():
    rc, _, err = cli("validate", EXAMPLE_SCENARIO)
    assert rc == 2
    one_error(err, str(EXAMPLE_SCENARIO), "algorithms.1.kind: unknown algorithm 'ef21'; allowed: 'ad_psgd'",
              "'topk_ef_sgd'", "algorithms.3.compressor.kind: unknown compressor 'sign_topk'; allowed: 'bf16'",
              "--plugin FILE_OR_MODULE or COMMSIM_PLUGINS", "docs/plugins.md")
    rc, _, err = cli("validate", TINY, "--set", "data.dataset=blobs")
    assert rc == 2
    one_error(err, "data.dataset: unknown dataset 'blobs'; allowed:", "digits", "--plugin FILE_OR_MODULE")
    rc, _, err = cli("validate", TINY, "--set", "network.topology=my_star")
    assert rc == 2
    one_error(err, "unknown topology 'my_star'; allowed: graph, hierarchical, ring, star", "COMMSIM_PLUGINS")
    rc, _, err = cli("validate", TINY, "--set", "data.partition={kind: round_robin}")
    assert rc == 2
    one_error(err, "data.partition.kind: unknown partition 'round_robin'; allowed: 'dirichlet', 'iid', 'natural', 'shards'",
              "--plugin")
    # with the plugin the same file is valid
    rc, out, err = cli("validate", EXAMPLE_SCENARIO, "--plugin", EXAMPLE)
    assert rc == 0, err
    assert "ok (4 algorithms" in out


def test_a_plugins_kinds_are_validated_as_strictly_as_the_built_ins():
    plugins.load(str(EXAMPLE))
    for kind in ("topk", "sign_topk"):                          # built-in and plugin: the same messages
        for value, needle in [({"ratioo": 0.1}, "algorithms.0.compressor.ratioo: unknown key (not allowed here; "
                                                "check the spelling)"),
                              ({"ratio": 2}, "algorithms.0.compressor.ratio: Input should be less than or equal "
                                             "to 1 (got 2)")]:
            entry = {"kind": "comp_ams", "lr": 0.01, "compressor": {"kind": kind, **value}}
            rc, _, err = cli("validate", TINY, "--set", f"algorithms=[{json.dumps(entry)}]")
            assert rc == 2
            one_error(err, needle)
    rc, _, err = cli("validate", TINY, "--set", 'algorithms=[{kind: ef21, lr: 0.1, momentum: 0.9}]')
    assert rc == 2
    one_error(err, "algorithms.0.momentum: unknown key")
    rc, _, err = cli("validate", TINY, "--set", 'algorithms=[{kind: ef21}]')
    assert rc == 2
    one_error(err, "algorithms.0.lr: required field is missing")


def test_a_plugin_config_that_allows_extra_keys_is_still_strict_in_a_scenario(tmp_path):
    from sim.study.config import validate
    (tmp_path / "cs_lax.py").write_text(textwrap.dedent('''
        from typing import Literal
        from pydantic import BaseModel
        from algorithms import COMPRESSORS
        from algorithms.compressors import NoneConfig
        @COMPRESSORS.register("lax")
        class Lax(BaseModel):          # pydantic's default: extra keys ignored
            kind: Literal["lax"] = "lax"
            level: int = 1
            def build(self, ctx):
                return NoneConfig().build(ctx)
    '''))
    plugins.load(str(tmp_path / "cs_lax.py"))
    data = yaml.safe_load(TINY.read_text())
    data["algorithms"] = [{"kind": "comp_ams", "lr": 0.01, "compressor": {"kind": "lax", "levl": 2}}]
    with pytest.raises(Exception, match=r"algorithms\.0\.compressor\.levl: unknown key"):
        validate(data, "s.yaml")


def test_a_scenario_cannot_load_a_plugin(tmp_path, write_scenario):
    data = yaml.safe_load(TINY.read_text())
    data["plugins"] = [str(EXAMPLE)]
    rc, _, err = cli("validate", write_scenario(data))
    assert rc == 2
    one_error(err, "plugins: unknown key")
    assert "my_plugin" not in sys.modules and plugins.loaded() == []


@pytest.mark.parametrize("content, needles", [
    ("def f(:\n    pass\n", ["failed to import (--plugin): SyntaxError:", "line 1"]),
    ("import math\nx = 1 / 0\n", ["failed to import (--plugin): ZeroDivisionError: division by zero", "line 2"]),
    ("import no_such_module_here\n", ["ModuleNotFoundError: No module named 'no_such_module_here'", "line 1"]),
    ("from algorithms import COMPRESSORS\nfrom algorithms.compressors import NoneConfig\n"
     "COMPRESSORS.add('topk', NoneConfig)\n", ["ValueError: compressor 'topk' registered twice", "line 3"]),
])
def test_a_plugin_that_fails_to_import_is_one_message_naming_it(tmp_path, content, needles):
    bad = tmp_path / "cs_bad_plugin.py"
    bad.write_text(content)
    before = registered_names()
    rc, _, err = cli("validate", TINY, "--plugin", bad)
    assert rc == 2
    one_error(err, f"plugin {bad}:", *needles)
    assert len(err.strip().splitlines()) == 1
    assert registered_names() == before and "cs_bad_plugin" not in sys.modules


def test_a_plugin_that_registers_then_fails_is_taken_back(tmp_path):
    import algorithms
    bad = tmp_path / "cs_half.py"
    bad.write_text(EXAMPLE.read_text() + "\nraise RuntimeError('configuration missing')\n")
    with pytest.raises(plugins.PluginError, match="RuntimeError: configuration missing"):
        plugins.load(str(bad))
    assert "ef21" not in algorithms.ALGORITHMS and "sign_topk" not in algorithms.COMPRESSORS
    assert plugins.loaded() == [] and "cs_half" not in sys.modules


@pytest.mark.parametrize("spec, needles", [
    ("nowhere/cs_missing.py", ["plugin nowhere/cs_missing.py: no such file (--plugin)"]),
    ("cs_no_such_module", ["plugin cs_no_such_module: no module named 'cs_no_such_module' (--plugin)"]),
    ("not a module!", ["not a file (no .py, no path) and not a module name"]),
    ("docs/", ["plugin docs/: is a folder (--plugin)"]),
])
def test_a_missing_plugin_is_one_message(spec, needles):
    rc, _, err = cli("list", "--plugin", spec)
    assert rc == 2
    one_error(err, *needles)


def test_a_plugin_file_named_like_an_installed_module_is_refused(tmp_path):
    (tmp_path / "json.py").write_text("x = 1\n")
    rc, _, err = cli("list", "--plugin", tmp_path / "json.py")
    assert rc == 2
    one_error(err, "the file's name 'json' is already the name of the module", "my_json.py")


def test_commsim_plugins_failing_names_where_it_came_from(tmp_path, monkeypatch):
    bad = tmp_path / "cs_env_bad.py"
    bad.write_text("raise KeyError('nope')\n")
    monkeypatch.setenv(plugins.ENV_VAR, str(bad))
    rc, out, err = cli("list")
    assert rc == 2 and out == ""
    one_error(err, f"plugin {bad}: failed to import (COMMSIM_PLUGINS): KeyError: 'nope' (at {bad}, line 1)")


# --------------------------------------------------------------------------- #
# The worked example of docs/plugins.md, end to end
# --------------------------------------------------------------------------- #

@pytest.fixture(scope="module")
def example_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("example") / "run"
    with plugins.isolated():
        rc, _, err = cli("run", EXAMPLE_SCENARIO, "--plugin", EXAMPLE, "--out", out, "--quiet", *SHORT)
    assert rc == 0, err
    return out


def test_the_docs_example_runs_end_to_end(example_run):
    summary = {r["algorithm"]: r for r in read_csv(example_run / "summary.csv")}
    assert list(summary) == ["sgd", "ef21-topk", "ef21-sign-topk", "comp-ams-sign-topk"]
    assert {r["status"] for r in summary.values()} == {"done"} and {r["final_round"] for r in summary.values()} \
        == {"20"}
    d = int(summary["sgd"]["model_params"])
    assert d == 64 * 32 + 32 + 32 * 10 + 10                  # digits, mlp [32]
    k = int(0.05 * d)
    header = 64
    per_upload = {"sgd": 4 * d, "ef21-topk": 8 * k,                         # top-k: value + uint32 index
                  "ef21-sign-topk": math.ceil(k * 33 / 8) + 4,             # the plugin's formula
                  "comp-ams-sign-topk": math.ceil(k * 33 / 8) + 4}
    first, last = {}, {}
    for row in read_csv(example_run / "metrics.csv"):
        first.setdefault(row["algorithm"], row)
        last[row["algorithm"]] = row
    for name, size in per_upload.items():
        row = last[name]
        assert int(row["uploads"]) == 20 * 4
        assert int(row["bytes_up"]) == int(row["uploads"]) * (size + header), name
        # every method learns: at least 20 points of test accuracy in 20 rounds (10 classes)
        assert float(row["test_acc"]) > float(first[name]["test_acc"]) + 0.2, (name, row["test_acc"])
    facts = yaml.safe_load((example_run / "host.yaml").read_text())
    (rec,) = facts["plugins"]
    assert rec["file"] == str(EXAMPLE.resolve()) and rec["module"] == "my_plugin"
    assert rec["registered"] == {"algorithm": ["ef21"], "compressor": ["sign_topk"]}
    assert rec["sha256"] == __import__("hashlib").sha256(EXAMPLE.read_bytes()).hexdigest()


def test_a_replay_of_a_run_that_needed_a_plugin_names_it(example_run, tmp_path):
    rc, _, err = cli("replay", example_run, "--set", "network.uplink.latency=50 ms", "--out", tmp_path / "r")
    assert rc == 2 and not (tmp_path / "r").exists()
    one_error(err, "unknown algorithm 'ef21'", f"{example_run} was run with plugin(s) not loaded now: "
              f"{EXAMPLE.resolve()} (registered algorithm ef21, compressor sign_topk)",
              f"--plugin {EXAMPLE.resolve()}")
    rc, _, err = cli("replay", example_run, "--set", "network.uplink.latency=50 ms", "--out", tmp_path / "r",
                     "--plugin", EXAMPLE)
    assert rc == 0, err
    replayed = {r["algorithm"]: r for r in read_csv(tmp_path / "r" / "summary.csv")}
    original = {r["algorithm"]: r for r in read_csv(example_run / "summary.csv")}
    assert {k: v["final_test_acc"] for k, v in replayed.items()} == \
        {k: v["final_test_acc"] for k, v in original.items()}             # same math, re-timed
    assert all(float(replayed[k]["final_sim_time_s"]) > float(original[k]["final_sim_time_s"]) for k in original)


def test_docs_plugins_md_shows_the_files_the_tests_run():
    doc = (REPO / "docs" / "plugins.md").read_text()
    assert "docs/examples/my_plugin.py" in doc and "docs/examples/plugin_scenario.yaml" in doc
    assert "run_sim.py check docs/examples/my_plugin.py" in doc
    assert EXAMPLE_SCENARIO.read_text().strip() in doc        # the scenario and the plugin are shown as they are
    assert EXAMPLE.read_text().strip() in doc


# --------------------------------------------------------------------------- #
# Sweeps
# --------------------------------------------------------------------------- #

def _plugin_sweep(tmp_path, name: str) -> None:
    """tmp_path/sweep.yaml: two points of the docs example's ef21 + sign_topk on tiny.yaml."""
    base = yaml.safe_load(TINY.read_text())
    base["algorithms"] = [{"name": "ef21", "kind": "ef21", "lr": 0.1, "compressor": {"kind": "sign_topk"}}]
    base["stop"] = {"max_rounds": 6, "on_target": False}
    base["eval_every"] = 3
    (tmp_path / "base.yaml").write_text(yaml.safe_dump(base))
    (tmp_path / "sweep.yaml").write_text(yaml.safe_dump(
        {"name": name, "base": "base.yaml", "axes": {"algorithms.0.compressor.ratio": [0.05, 0.1]}}))


def test_a_sweep_passes_its_plugins_to_worker_processes_and_a_resume_names_a_missing_one(tmp_path):
    _plugin_sweep(tmp_path, "plugin_sweep")
    out = tmp_path / "out"
    res = run_cli("sweep", tmp_path / "sweep.yaml", "--out", out, "--workers", 2, "--quiet", "--plugin", EXAMPLE)
    assert res.returncode == 0, res.stderr
    rows = read_csv(out / "sweep_summary.csv")
    assert [(r["algorithms.0.compressor.ratio"], r["point_status"], r["run_mode"]) for r in rows] == \
        [("0.05", "done", "full"), ("0.1", "done", "full")]
    d = int(rows[0]["model_params"])
    for i, ratio in enumerate((0.05, 0.1)):
        k = int(ratio * d)
        metrics = read_csv(out / "points" / f"{i:03d}" / "metrics.csv")
        assert int(metrics[-1]["bytes_up"]) == 6 * 4 * (math.ceil(k * 33 / 8) + 4 + 64)   # the plugin's formula
        host = yaml.safe_load((out / "points" / f"{i:03d}" / "host.yaml").read_text())
        assert [p["module"] for p in host["plugins"]] == ["my_plugin"]    # loaded in the worker process
        assert host["torch_threads"] == max(1, (os.cpu_count() or 1) // 2)    # a spawned process's share
    # resumed without the plugin: each point names the one its run had
    res = run_cli("sweep", tmp_path / "sweep.yaml", "--out", out, "--workers", 2, "--quiet")
    assert res.returncode == 1
    assert f"was run with plugin(s) not loaded now: {EXAMPLE.resolve()}" in res.stderr
    assert "unknown algorithm 'ef21'" in res.stderr and "Traceback" not in res.stderr


def test_a_worker_loads_the_drivers_plugins(tmp_path):
    """The backend's job wrapper (local processes and Ray tasks alike) loads the
    driver's plugin list before the job; a plugin that fails there fails the job,
    with its message."""
    import algorithms
    from sim.study.backends import _call
    with plugins.isolated():                  # the driver
        plugins.load(str(EXAMPLE))
        specs = plugins.worker_specs()
    assert specs == [{"how": "file", "file": str(EXAMPLE.resolve()), "module": "my_plugin"}]
    assert "ef21" not in algorithms.ALGORITHMS                 # a fresh worker
    seen = _call(lambda out_dir: {"status": "done", "error": str("ef21" in algorithms.ALGORITHMS)}, (),
                 str(tmp_path), tuple(specs))
    assert seen == {"status": "done", "error": "True"}
    # a node without the file at the driver's path imports it by module name (Ray's py_modules ships it)
    shipped = tmp_path / "shipped"
    shipped.mkdir()
    (shipped / "cs_shipped.py").write_text(EXAMPLE.read_text().replace('"sign_topk"', '"shipped_sign_topk"')
                                           .replace('"ef21"', '"shipped_ef21"'))
    sys.path.insert(0, str(shipped))
    try:
        spec = {"how": "file", "file": str(tmp_path / "elsewhere" / "cs_shipped.py"), "module": "cs_shipped"}
        seen = _call(lambda out_dir: {"status": "done", "error": str("shipped_ef21" in algorithms.ALGORITHMS)},
                     (), str(tmp_path), (spec,))
        assert seen == {"status": "done", "error": "True"}
    finally:
        sys.path.remove(str(shipped))
    gone = {"how": "file", "file": str(tmp_path / "cs_gone.py"), "module": "cs_gone"}
    res = _call(lambda out_dir: {"status": "done", "error": ""}, (), str(tmp_path), (gone,))
    assert res["status"] == "failed" and "PluginError: plugin cs_gone: no module named 'cs_gone'" in res["error"]


@pytest.mark.slow
def test_a_ray_sweep_ships_a_file_plugin_to_its_tasks(tmp_path):
    pytest.importorskip("ray")
    _plugin_sweep(tmp_path, "ray_plugin_sweep")
    res = run_cli("sweep", tmp_path / "sweep.yaml", "--out", tmp_path / "out", "--backend", "ray", "--workers", 2,
                  "--quiet", "--plugin", EXAMPLE)
    assert res.returncode == 0, res.stderr
    rows = read_csv(tmp_path / "out" / "sweep_summary.csv")
    assert [r["point_status"] for r in rows] == ["done", "done"]
    for i in range(2):
        host = yaml.safe_load((tmp_path / "out" / "points" / f"{i:03d}" / "host.yaml").read_text())
        assert [p["module"] for p in host["plugins"]] == ["my_plugin"] and host["torch_threads"] == 1   # a Ray task


# --------------------------------------------------------------------------- #
# run_sim.py check
# --------------------------------------------------------------------------- #

def test_check_passes_on_the_docs_example():
    rc, out, err = cli("check", EXAMPLE)
    assert rc == 0, out + err
    lines = out.splitlines()
    for check in ("schema", "shapes", "bytes", "determinism", "error feedback", "row-wise (chunked rounds)",
                  "short scenario"):
        assert f"PASS  compressor sign_topk: {check}" in lines, check
    for check in ("schema", "shapes", "determinism", "convex loss", "short scenario"):
        assert f"PASS  algorithm ef21: {check}" in lines, check
    assert "SKIP  compressor sign_topk: linear: not linear" in lines
    assert lines[-1] == "14 checks: 12 passed, 0 failed, 2 skipped"


BROKEN = '''
import math
from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict

from algorithms import ALGORITHMS, COMPRESSORS
from algorithms.base import AlgorithmConfig, Payload


class Liar:                       # states 2 d bytes, sends 4 d; decodes to float16
    linear = False

    def __init__(self, d):
        self.d = d

    def compress(self, x, *, streams=None, round=0):
        return Payload({"x": x.clone()}, torch.full((x.shape[0],), 4 * self.d, dtype=torch.int64))

    def decompress(self, p):
        return p.tensors["x"].half()


@COMPRESSORS.register("liar")
class LiarConfig(BaseModel):      # no extra="forbid"
    kind: Literal["liar"] = "liar"

    def build(self, ctx):
        return Liar(ctx.d)

    def expected_bytes(self, ctx, x, decoded):
        return 2 * ctx.d


class Noisy(Liar):                # draws from the global RNG
    def compress(self, x, *, streams=None, round=0):
        return Payload({"x": x + torch.rand(x.shape)}, torch.full((x.shape[0],), 4 * self.d, dtype=torch.int64))

    def decompress(self, p):
        return p.tensors["x"]


@COMPRESSORS.register("noisy")
class NoisyConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    kind: Literal["noisy"] = "noisy"

    def build(self, ctx):
        return Noisy(ctx.d)

    def expected_bytes(self, ctx, x, decoded):
        return 4 * ctx.d


class Crash:
    linear = False

    def compress(self, x, *, streams=None, round=0):
        raise RuntimeError("compress is not written yet")

    def decompress(self, p):
        raise RuntimeError("never")


@COMPRESSORS.register("crash")
class CrashConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    kind: Literal["crash"] = "crash"

    def build(self, ctx):
        return Crash()


@ALGORITHMS.register("stuck")
class StuckConfig(AlgorithmConfig):   # steps by 1e-9 of the gradient: never learns
    kind: Literal["stuck"] = "stuck"

    def build(self, ctx):
        return ALGORITHMS["sgd"](lr=1e-9).build(ctx)
'''


def test_check_fails_a_broken_plugin_by_named_checks(tmp_path):
    broken = tmp_path / "cs_broken.py"
    broken.write_text(BROKEN)
    rc, out, err = cli("check", broken)
    assert rc == 1 and err == "" and "Traceback" not in out
    lines = out.splitlines()
    assert lines[0] == (f"checking plugin {broken} (check, module cs_broken): algorithm stuck; compressor crash, "
                        "liar, noisy")
    expected = [
        "FAIL  compressor liar: schema: AssertionError: LiarConfig accepts an unknown key (bogus=1)",
        "FAIL  compressor liar: shapes: AssertionError: decompress gave (4, 103) torch.float16; allowed: the "
        "input's (4, 103) torch.float32",
        "FAIL  compressor liar: bytes: AssertionError: nbytes per worker [412, 412, 412, 412], the formula gives "
        "[206, 206, 206, 206]",
        "PASS  compressor liar: determinism",
        "FAIL  compressor noisy: determinism: AssertionError: the global torch RNG was used",
        "PASS  compressor noisy: bytes",
        "FAIL  compressor crash: shapes: RuntimeError: compress is not written yet",
        "FAIL  compressor crash: bytes: AssertionError: states no wire formula: define expected_bytes",
        "FAIL  compressor crash: short scenario: RuntimeError: compress is not written yet",
        "FAIL  algorithm stuck: convex loss: AssertionError: after 200 rounds the convex loss is",
        "PASS  algorithm stuck: shapes",
        "PASS  algorithm stuck: short scenario",
    ]
    for want in expected:
        assert any(line.startswith(want) for line in lines), (want, out)
    summary = lines[-1]
    n_fail = sum(line.startswith("FAIL") for line in lines)
    n_pass = sum(line.startswith("PASS") for line in lines)
    assert summary.startswith(f"{len(lines) - 2} checks: {n_pass} passed, {n_fail} failed")


def test_check_of_a_plugin_that_does_not_import_or_registers_nothing(tmp_path):
    bad = tmp_path / "cs_syntax.py"
    bad.write_text("def (\n")
    rc, out, err = cli("check", bad)
    assert rc == 2 and out == ""
    one_error(err, f"plugin {bad}: failed to import (check): SyntaxError")
    empty = tmp_path / "cs_empty.py"
    empty.write_text("import math\n")
    rc, out, err = cli("check", empty)
    assert rc == 1
    assert "FAIL  plugin: registers nothing" in out
