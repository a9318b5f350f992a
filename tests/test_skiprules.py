"""The skip-rule registry (algorithms/skiprules.py SKIP_RULES) and the generic
algorithm kind ``lazy``: a scenario names any registered rule, a plugin adds
one, ``run_sim.py check`` tests it (sim/conformance.py).

The existing kinds (lasg_wk2, lasg_wk1, lasg_ps, lag, sasg) are the generic kind
with fixed choices: the same rows, bit for bit.
"""
from __future__ import annotations

import textwrap
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import pytest
import torch
import yaml
from pydantic import BaseModel, ConfigDict

import algorithms
from algorithms.skiprules import SKIP_RULES, Decision, SkipRule
from sim import conformance, plugins
from sim.registry import PLUGIN_HINT

from test_cli import TINY, cli, read_csv

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "docs" / "examples" / "my_skip_rule.py"
EXAMPLE_SCENARIO = REPO / "docs" / "examples" / "skip_rule_scenario.yaml"


@pytest.fixture(autouse=True)
def isolated(monkeypatch):
    monkeypatch.delenv(plugins.ENV_VAR, raising=False)
    with plugins.isolated():
        yield


@pytest.fixture(scope="module")
def tiny():
    from sim.engine import build_world
    from sim.study.config import load_scenario
    return build_world(load_scenario(TINY, ["stop.max_rounds=30", "eval_every=10", "stop.on_target=false"]), 0)


def entry(data: dict):
    """An algorithm entry validated as a scenario's (the registry unions, plugins' kinds included)."""
    from pydantic import TypeAdapter
    return TypeAdapter(algorithms.AlgorithmEntry).validate_python(data)


def run(world, data: dict):
    from sim.engine import run_algorithm
    return run_algorithm(world, entry({"name": "x", **data}))


# --------------------------------------------------------------------------- #
# The existing kinds are the generic kind with fixed choices
# --------------------------------------------------------------------------- #

SASG_SETTINGS = {"xi": [1.0] * 9 + [0.0], "threshold_scaling": "sasg", "strict": True, "aggregate": "sum",
                 "max_delay": 10, "warmup_all": True, "error_feedback": True}


@pytest.mark.parametrize("kind, generic", [
    ({"kind": "lasg_wk2", "lr": 0.1}, {"kind": "lazy", "lr": 0.1, "rule": {"kind": "lasg_wk2"}}),
    ({"kind": "lasg_wk2", "lr": 0.1, "stale_at": "previous", "D": 3},
     {"kind": "lazy", "lr": 0.1, "rule": "lasg_wk2", "stale_at": "previous", "D": 3}),
    ({"kind": "lasg_wk1", "lr": 0.1, "max_delay": 7}, {"kind": "lazy", "lr": 0.1, "rule": "lasg_wk1", "max_delay": 7}),
    ({"kind": "lasg_ps", "lr": 0.1, "smoothness": 0.05},
     {"kind": "lazy", "lr": 0.1, "rule": {"kind": "lasg_ps", "smoothness": 0.05}}),
    ({"kind": "lag", "lr": 0.1}, {"kind": "lazy", "lr": 0.1, "rule": "lag"}),
    ({"kind": "sasg", "lr": 0.1, "ratio": 0.05},
     {"kind": "lazy", "lr": 0.1, "rule": "sasg", "compressor": {"kind": "topk", "ratio": 0.05, "scope": "layer"},
      **SASG_SETTINGS}),
], ids=["lasg_wk2", "lasg_wk2-previous", "lasg_wk1", "lasg_ps", "lag", "sasg"])
def test_the_generic_kind_gives_the_rows_of_the_existing_kind(tiny, kind, generic):
    a, b = run(tiny, kind), run(tiny, generic)
    assert a.rows == b.rows                                   # every metric of every evaluation, exactly
    assert a.skipped_fraction == b.skipped_fraction and a.server_state_bytes == b.server_state_bytes
    assert a.rows[-1]["uploads"] == round(tiny.n * 30 * (1 - a.skipped_fraction))
    if kind["kind"] != "lag":           # LAG on minibatch gradients never skips here (below: the convex task)
        assert 0 < a.skipped_fraction < 1
    # and on the least-squares task of the conformance suite, where every rule skips: the same
    # uploads every round and the same iterates, bit for bit
    ta, tb = quadratic_trace(kind), quadratic_trace(generic)
    assert ta == tb and 0 < sum(not u for ups, _ in ta for u in ups)


def quadratic_trace(data: dict, rounds: int = 40) -> list[tuple[list[bool], list[float]]]:
    from sim.learn.rng import WorkerStreams
    alg = entry({**data, "lr": 0.5}).build(conformance.context())
    grads, _ = conformance.quadratic_problem()
    theta = torch.zeros(conformance.D)
    state, out = alg.init(theta), []
    for t in range(rounds):
        up, state = alg.worker_encode(state, grads(theta), t, WorkerStreams(0, conformance.N), aux_grad=grads)
        theta, _, state = alg.server_update(state, theta, up, torch.ones(conformance.N, dtype=torch.bool), t)
        out.append((up.carries_gradient.tolist(), theta.tolist()))
    return out


def test_the_sasg_rule_is_the_lasg_wk2_test(tiny):
    """What makes SASG is around its rule: with the same settings and compressor
    the rules sasg and lasg_wk2 give identical runs."""
    common = {"kind": "lazy", "lr": 0.1, "compressor": {"kind": "topk", "ratio": 0.05, "scope": "layer"},
              **SASG_SETTINGS}
    assert run(tiny, {**common, "rule": "sasg"}).rows == run(tiny, {**common, "rule": "lasg_wk2"}).rows


def test_stored_messages_are_counted_by_what_the_wrapped_algorithm_sends(tiny):
    """server_state_bytes: dense gradients 4 d per worker; compressed messages the
    cheaper of dense and value + index per stored nonzero (sasg.txt Table III)."""
    d, n = tiny.model.d, tiny.n
    dense = run(tiny, {"kind": "lazy", "lr": 0.1, "rule": "lasg_wk2"})
    assert dense.server_state_bytes == 4 * d * n
    sparse = run(tiny, {"kind": "lazy", "lr": 0.1, "rule": "lasg_wk2", "error_feedback": True,
                        "compressor": {"kind": "topk", "k": 10}})
    assert sparse.server_state_bytes == n * 10 * 8            # each stored message: 10 (value, uint32 index)


@dataclass(frozen=True)
class Always(SkipRule):
    """Every worker wants to upload every round."""

    def decide(self, v):
        return Decision(torch.ones(v.n, dtype=torch.bool))


class AlwaysConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    kind: Literal["always"] = "always"

    def build(self, ctx):
        return Always()


def test_a_rule_that_always_uploads_is_sgd(tiny):
    SKIP_RULES.add("always", AlwaysConfig)
    lazy = run(tiny, {"kind": "lazy", "lr": 0.1, "rule": "always"})
    sgd = run(tiny, {"kind": "sgd", "lr": 0.1})
    assert lazy.rows == sgd.rows                   # the same math, bytes and simulated times
    assert lazy.skipped_fraction == 0.0 and lazy.server_state_bytes == 4 * tiny.model.d * tiny.n


def test_the_rule_field_accepts_a_name_and_writes_back_the_mapping():
    from sim.study.config import validate
    data = yaml.safe_load(TINY.read_text())
    data["algorithms"] = [{"kind": "lazy", "lr": 0.1, "rule": "lasg_ps"}]
    scn = validate(data, "s.yaml")
    assert scn.algorithms[0].rule.smoothness == 0.1
    dumped = scn.dump()
    assert dumped["algorithms"][0]["rule"] == {"kind": "lasg_ps", "smoothness": 0.1}
    assert validate(dumped, "again.yaml").dump() == dumped


@pytest.mark.parametrize("rule, needle", [
    ("nope", "algorithms.0.rule.kind: unknown skip rule 'nope'; allowed: 'lag', 'lasg_ps', 'lasg_wk1', 'lasg_wk2', "
             f"'sasg'; {PLUGIN_HINT}"),
    ("{kind: nope, c: 1}", "algorithms.0.rule.kind: unknown skip rule 'nope'; allowed: 'lag',"),
    ("{kind: lasg_ps, smoothnes: 1}", "algorithms.0.rule.smoothnes: unknown key (not allowed here; check the "
                                      "spelling)"),
    ("{kind: lasg_ps, smoothness: 0}", "algorithms.0.rule.smoothness: Input should be greater than 0"),
    ("3", "algorithms.0.rule: 3 is not a skip rule; allowed: a rule's name or {kind: NAME, ...}"),
])
def test_a_bad_rule_is_one_message_and_exit_2(rule, needle):
    rc, out, err = cli("validate", TINY, "--set", f"algorithms=[{{kind: lazy, lr: 0.1, rule: {rule}}}]")
    assert rc == 2 and out == ""
    assert err.startswith(f"error: {TINY}") and "Traceback" not in err and needle in err, err
    assert err.count("\n") == 1                                   # one line


def test_a_missing_rule_is_named():
    rc, _, err = cli("validate", TINY, "--set", "algorithms=[{kind: lazy, lr: 0.1}]")
    assert rc == 2 and "algorithms.0.rule: required field is missing" in err


# --------------------------------------------------------------------------- #
# Conformance: every registered rule
# --------------------------------------------------------------------------- #

@pytest.mark.parametrize("kind", SKIP_RULES.names())
def test_every_skip_rule_passes_the_conformance_checks(kind):
    """The checks `run_sim.py check` runs on a plugin's rule (sim/conformance.py)."""
    checks = conformance.checks_for("skip rule", kind, SKIP_RULES[kind])
    assert [name for name, _ in checks] == ["schema", "interface", "invariants", "determinism", "convex loss",
                                            "short scenario"]
    for name, thunk in checks:
        assert thunk() is None, name


@dataclass(frozen=True)
class Sneaky(SkipRule):
    """Computes a second gradient but declares none (its compute would go uncharged)."""

    def decide(self, v):
        return Decision(((v.grads - v.aux_grad(v.theta_hat)) ** 2).sum(1) >= v.threshold)


class SneakyConfig(AlwaysConfig):
    kind: Literal["sneaky"] = "sneaky"

    def build(self, ctx):
        return Sneaky()


@dataclass(frozen=True)
class Fuzzy(SkipRule):
    """A float verdict."""

    def decide(self, v):
        return Decision(torch.ones(v.n))


class FuzzyConfig(AlwaysConfig):
    kind: Literal["fuzzy"] = "fuzzy"

    def build(self, ctx):
        return Fuzzy()


def test_the_invariants_check_catches_an_uncharged_auxiliary_gradient_and_a_bad_verdict():
    SKIP_RULES.add("sneaky", SneakyConfig)
    SKIP_RULES.add("fuzzy", FuzzyConfig)
    with pytest.raises(AssertionError, match="round 0: the rule computed an auxiliary gradient .* needs_aux_gradient "
                                             "is False, so its compute would not be charged"):
        conformance.skip_rule_invariants(conformance.lazy_config("sneaky", max_delay=5))
    with pytest.raises(ValueError, match=r"Decision.wants is torch.float32 \(4,\); allowed: a bool tensor of "
                                         r"shape \(4,\)"):
        conformance.skip_rule_invariants(conformance.lazy_config("fuzzy"))
    conformance.skip_rule_invariants(conformance.lazy_config("lasg_wk2", max_delay=5))     # an honest one passes


# --------------------------------------------------------------------------- #
# Plugins
# --------------------------------------------------------------------------- #

def test_a_plugin_registers_a_skip_rule_and_list_shows_it():
    p = plugins.load(str(EXAMPLE))
    assert p.registered == {"skip rule": ["relative_lag"]} and "relative_lag" in SKIP_RULES
    assert plugins.registries()["skip rule"] is SKIP_RULES
    rc, out, _ = cli("list", "--plugin", EXAMPLE)
    lines = out.splitlines()
    assert "skip rules: lag, lasg_ps, lasg_wk1, lasg_wk2, relative_lag, sasg" in lines
    assert f"plugin {EXAMPLE} (--plugin, module my_skip_rule): skip rule relative_lag" in lines


def test_a_plugin_that_fails_after_registering_a_rule_is_taken_back(tmp_path):
    bad = tmp_path / "cs_bad_rule.py"
    bad.write_text(textwrap.dedent('''
        from typing import Literal
        from pydantic import BaseModel
        from algorithms.skiprules import SKIP_RULES, LagRule
        @SKIP_RULES.register("half_done")
        class C(BaseModel):
            kind: Literal["half_done"] = "half_done"
            def build(self, ctx):
                return LagRule()
        raise RuntimeError("not finished")
    '''))
    rc, out, err = cli("list", "--plugin", bad)
    assert rc == 2 and out == ""
    assert f"plugin {bad}: failed to import (--plugin): RuntimeError: not finished (at {bad}, line 10)" in err
    assert "half_done" not in SKIP_RULES and plugins.loaded() == []


def test_the_docs_example_scenario_needs_the_plugin():
    rc, _, err = cli("validate", EXAMPLE_SCENARIO)
    assert rc == 2
    assert ("algorithms.2.rule.kind: unknown skip rule 'relative_lag'; allowed: 'lag', 'lasg_ps', 'lasg_wk1', "
            "'lasg_wk2', 'sasg'; a kind from a plugin needs the plugin loaded: --plugin FILE_OR_MODULE") in err
    rc, out, err = cli("validate", EXAMPLE_SCENARIO, "--plugin", EXAMPLE)
    assert rc == 0, err
    assert "ok (4 algorithms" in out


def test_the_docs_example_runs_and_its_rule_skips_with_reuse(tmp_path):
    out = tmp_path / "run"
    rc, _, err = cli("run", EXAMPLE_SCENARIO, "--plugin", EXAMPLE, "--out", out, "--quiet",
                     "--set", "stop.max_rounds=30", "--set", "eval_every=10")
    assert rc == 0, err
    summary = {r["algorithm"]: r for r in read_csv(out / "summary.csv")}
    assert list(summary) == ["sgd", "lasg-wk2", "relative-lag", "relative-lag-topk"]
    d, n, header, rounds = int(summary["sgd"]["model_params"]), 4, 64, 30
    k = int(0.05 * d)
    last = {}
    for row in read_csv(out / "metrics.csv"):
        last[row["algorithm"]] = row
    for name, payload in {"lasg-wk2": 4 * d, "relative-lag": 4 * d, "relative-lag-topk": 8 * k}.items():
        skipped = float(summary[name]["skipped_fraction"])
        skips = round(skipped * n * rounds)
        assert 0 < skips < n * rounds, name                           # the rule skips, and not always
        row = last[name]
        assert int(row["uploads"]) == n * rounds - skips
        assert int(row["bytes_up"]) == int(row["uploads"]) * (payload + header) + skips * header, name
    assert int(summary["relative-lag"]["server_state_bytes"]) == 4 * d * n
    facts = yaml.safe_load((out / "host.yaml").read_text())
    (rec,) = facts["plugins"]
    assert rec["module"] == "my_skip_rule" and rec["registered"] == {"skip rule": ["relative_lag"]}


def test_check_passes_on_the_docs_skip_rule_example():
    rc, out, err = cli("check", EXAMPLE)
    assert rc == 0, out + err
    lines = out.splitlines()
    assert lines[0] == f"checking plugin {EXAMPLE} (check, module my_skip_rule): skip rule relative_lag"
    assert lines[1:] == [f"PASS  skip rule relative_lag: {c}" for c in
                         ("schema", "interface", "invariants", "determinism", "convex loss", "short scenario")] + \
        ["6 checks: 6 passed, 0 failed, 0 skipped"]


def test_docs_plugins_md_shows_the_skip_rule_example_as_it_is():
    doc = (REPO / "docs" / "plugins.md").read_text()
    assert EXAMPLE.read_text().strip() in doc and EXAMPLE_SCENARIO.read_text().strip() in doc
    assert "run_sim.py check docs/examples/my_skip_rule.py" in doc


BROKEN = '''
from dataclasses import dataclass
from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict

from algorithms.skiprules import SKIP_RULES, Decision, SkipRule


@dataclass(frozen=True)
class Sneaky(SkipRule):           # a second gradient it does not declare (its compute would go uncharged)
    def decide(self, v):
        return Decision(((v.grads - v.aux_grad(v.theta_hat)) ** 2).sum(1) >= v.threshold)


@SKIP_RULES.register("sneaky")
class SneakyConfig(BaseModel):    # no extra="forbid"
    kind: Literal["sneaky"] = "sneaky"

    def build(self, ctx):
        return Sneaky()


@dataclass(frozen=True)
class Coin(SkipRule):             # draws from the global RNG
    def decide(self, v):
        return Decision(torch.rand(v.n) < 0.5)


@SKIP_RULES.register("coin")
class CoinConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    kind: Literal["coin"] = "coin"

    def build(self, ctx):
        return Coin()


@dataclass(frozen=True)
class Scalar(SkipRule):           # one verdict for everybody
    def decide(self, v):
        return Decision(torch.tensor(True))


@SKIP_RULES.register("scalar")
class ScalarConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    kind: Literal["scalar"] = "scalar"

    def build(self, ctx):
        return Scalar()


class NotARule:                   # no interface at all
    def decide(self, v):
        raise RuntimeError("decide is not written yet")


@SKIP_RULES.register("crash")
class CrashConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    kind: Literal["crash"] = "crash"

    def build(self, ctx):
        return NotARule()
'''


def test_check_fails_a_broken_rule_plugin_by_named_checks(tmp_path):
    broken = tmp_path / "cs_broken_rules.py"
    broken.write_text(BROKEN)
    rc, out, err = cli("check", broken)
    assert rc == 1 and err == "" and "Traceback" not in out
    lines = out.splitlines()
    assert lines[0] == (f"checking plugin {broken} (check, module cs_broken_rules): skip rule coin, crash, scalar, "
                        "sneaky")
    expected = [
        "FAIL  skip rule sneaky: schema: AssertionError: SneakyConfig accepts an unknown key (bogus=1)",
        "PASS  skip rule sneaky: interface",
        "FAIL  skip rule sneaky: invariants: AssertionError: round 0: the rule computed an auxiliary gradient "
        "(aux_grad) but needs_aux_gradient is False, so its compute would not be charged",
        "FAIL  skip rule coin: determinism: AssertionError: the global torch RNG was used",
        "FAIL  skip rule scalar: invariants: ValueError: a skip rule's Decision.wants is torch.bool (); allowed: "
        "a bool tensor of shape (4,), one verdict per worker",
        "FAIL  skip rule scalar: short scenario: ValueError: a skip rule's Decision.wants is torch.bool ()",
        "FAIL  skip rule crash: interface: AssertionError: needs_aux_gradient must be a bool, got None",
        "FAIL  skip rule crash: invariants: AttributeError:",
    ]
    for want in expected:
        assert any(line.startswith(want) for line in lines), (want, out)
    n_fail = sum(line.startswith("FAIL") for line in lines)
    n_pass = sum(line.startswith("PASS") for line in lines)
    assert lines[-1].startswith(f"{len(lines) - 2} checks: {n_pass} passed, {n_fail} failed")


def test_the_skip_rule_examples_of_docs_scenarios_md_validate():
    """The algorithms shown in docs/scenarios.md (Skip rules) are valid, and its
    `sasg` written out through `lazy` is the sasg kind."""
    from sim.study.config import validate
    doc = (REPO / "docs" / "scenarios.md").read_text()
    section = doc[doc.index("## Skip rules (lazy aggregation)"):]
    block = section[section.index("```yaml\n") + 8:section.index("```\n", section.index("```yaml\n") + 8)]
    shown = yaml.safe_load(block)["algorithms"]
    data = yaml.safe_load(TINY.read_text())
    scn = validate({**data, "algorithms": shown}, "docs/scenarios.md")
    assert [a.kind for a in scn.algorithms] == ["lazy"] * 4
    sasg = scn.algorithms[3].model_dump(exclude={"name"})
    spelled = {**SASG_SETTINGS, "rule": {"kind": "sasg"}, "compressor": {"kind": "topk", "ratio": 0.01,
                                                                        "scope": "layer"}}
    assert entry({"kind": "lazy", "lr": 0.1, **spelled}).model_dump(exclude={"name"}) == sasg
