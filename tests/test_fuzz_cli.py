"""Property test: no mutation of a valid scenario makes the CLI print a traceback.

Mutations of scenarios/tiny.yaml and scenarios/quickstart.yaml: drop a key,
change a value's type (or make it absurd), duplicate a key, insert garbage
bytes.  ``validate`` (which also builds the world for each seed: data, shards,
the model on the meta device for the memory estimate) must end with exit 0 or
one ``error:`` message with exit 2, never an exception.

``derandomize=True``: CI sees the same examples every time (a failure is a
real bug, not luck); run with ``--hypothesis-seed=N`` after removing it to
explore further.
"""
from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from test_cli import cli

REPO = Path(__file__).resolve().parents[1]
BASES = {name: yaml.safe_load((REPO / "scenarios" / name).read_text()) for name in ("tiny.yaml", "quickstart.yaml")}

ODD_VALUES = [None, -1, 0, 1.5, -2.5, 10 ** 30, 2 ** 63, float("nan"), float("inf"), "", "garbage", "1e999 Gbps",
              "-5 ms", "10 parsecs", True, False, "off", [], [1, "a"], {}, {"kind": "nope"}, {"dist": "lognormal"},
              "é🚀", "../../etc", "\x00"]


def paths(node, prefix=()):
    """Every (path) into a nested dict/list, leaves and inner nodes."""
    out = []
    if isinstance(node, dict):
        for k, v in node.items():
            out.append(prefix + (k,))
            out += paths(v, prefix + (k,))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            out.append(prefix + (i,))
            out += paths(v, prefix + (i,))
    return out


def _parent(data, path):
    node = data
    for k in path[:-1]:
        node = node[k]
    return node


@st.composite
def mutated(draw) -> bytes:
    name = draw(st.sampled_from(sorted(BASES)))
    data = yaml.safe_load(yaml.safe_dump(BASES[name]))
    for _ in range(draw(st.integers(1, 3))):
        ps = paths(data)
        if not ps:
            break
        path = draw(st.sampled_from(ps))
        parent = _parent(data, path)
        op = draw(st.sampled_from(["drop", "retype", "retype"]))
        if op == "drop":
            del parent[path[-1]]
        else:
            parent[path[-1]] = copy.deepcopy(draw(st.sampled_from(ODD_VALUES)))   # fresh: [] and {} are mutated later
    text = yaml.safe_dump(data, sort_keys=False, allow_unicode=True).encode()
    how = draw(st.sampled_from(["as is", "duplicate a line", "garbage bytes"]))
    lines = text.split(b"\n")
    if how == "duplicate a line" and len(lines) > 1:
        i = draw(st.integers(0, len(lines) - 1))
        lines.insert(i, lines[i])
        text = b"\n".join(lines)
    elif how == "garbage bytes":
        pos = draw(st.integers(0, len(text)))
        text = text[:pos] + draw(st.binary(min_size=1, max_size=8)) + text[pos:]
    return text


@settings(max_examples=int(__import__("os").environ.get("FUZZ_EXAMPLES", 120)), deadline=None,
          derandomize=not __import__("os").environ.get("FUZZ_EXAMPLES"), database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(content=mutated())
def test_the_cli_never_prints_a_traceback(tmp_path, content):
    p = tmp_path / "s.yaml"
    p.write_bytes(content)
    rc, out, err = cli("validate", p)
    assert "Traceback" not in err
    assert rc in (0, 2), err
    if rc == 2:
        assert err.startswith("error: ") or err.startswith("note: "), err
        assert str(p) in err
    else:
        assert "ok" in out


@pytest.mark.parametrize("value", ODD_VALUES, ids=[repr(v)[:20] for v in ODD_VALUES])
def test_every_odd_value_in_every_top_level_field(tmp_path, value):
    """The exhaustive corner of the property: each odd value in each top-level field of tiny.yaml."""
    for key in BASES["tiny.yaml"]:
        data = yaml.safe_load(yaml.safe_dump(BASES["tiny.yaml"]))
        data[key] = value
        p = tmp_path / "s.yaml"
        p.write_text(yaml.safe_dump(data, allow_unicode=True))
        rc, _, err = cli("validate", p)
        assert "Traceback" not in err and rc in (0, 2), (key, value, err)
