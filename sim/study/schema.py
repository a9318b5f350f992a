"""The JSON Schema of scenarios and sweeps, and docs/reference.md, from the pydantic models.

    python run_sim.py schema scenario        # JSON Schema (draft 2020-12) of a scenario file
    python run_sim.py schema sweep           # ... of a sweep file
    python run_sim.py schema --write         # refresh scenarios/schema/*.json and docs/reference.md

One source: the models that validate a file (sim/study/config.py Scenario,
sim/study/sweep.py SweepSpec) give the schema, with units (``x-unit``, and
the string form "<number> <unit>" as a pattern: sim/unitfields.py), defaults,
ranges, allowed values and descriptions; docs/reference.md is rendered from
that schema, not from a second description.  The shipped files
(scenarios/schema/scenario.schema.json, sweep.schema.json, which the
scenarios name in their ``# yaml-language-server: $schema=...`` first line so
that editors complete and check them) and docs/reference.md are checked
against a fresh generation by tests/test_schema.py, so none can drift.

Algorithms, compressors, models, topologies... appear as the kinds registered
when the schema is generated (a plugin's kinds too, when it is loaded first).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
SCHEMA_DIR = ROOT / "scenarios" / "schema"
REFERENCE = ROOT / "docs" / "reference.md"
DIALECT = "https://json-schema.org/draft/2020-12/schema"
KINDS = ("scenario", "sweep")


def schema(kind: str) -> dict:
    """The JSON Schema of a ``kind`` ("scenario" or "sweep") file."""
    if kind == "scenario":
        from sim.study.config import Scenario
        body = Scenario.model_json_schema()
        title, about = "commsim scenario", "A commsim scenario: python run_sim.py run FILE (docs/reference.md)."
    elif kind == "sweep":
        from sim.study.sweep import SweepSpec
        body = SweepSpec.model_json_schema()
        title, about = "commsim sweep", "A commsim sweep: python run_sim.py sweep FILE (docs/reference.md)."
    else:
        raise ValueError(f"unknown schema {kind!r}; allowed: {', '.join(KINDS)}")
    body.pop("title", None)
    _shorthands(kind, body)
    return {"$schema": DIALECT, "$id": f"https://commsim.invalid/schema/{kind}.schema.json", "title": title,
            "description": about, **body}


def _shorthands(kind: str, body: dict) -> None:
    """What the models' before-validators accept besides their type, and the
    names a registry checks at load time (as examples: a plugin may add more)."""
    if kind == "sweep":
        replay = body["properties"]["replay"]
        body["properties"]["replay"] = {
            "anyOf": [{"enum": ["auto", "off", "on", "yes", "true", "y", "no", "false", "n"], "type": "string"},
                      {"type": "boolean"}], **{k: v for k, v in replay.items() if k not in ("enum", "type")}}
        return
    from sim.learn.data import DATASETS
    from topologies import TOPOLOGIES
    field = body["$defs"]["DataSpec"]["properties"]["dataset"]
    field["examples"] = DATASETS.names()
    field["description"] = "a registered data set (run_sim.py list): " + ", ".join(DATASETS.names())
    topo = body["$defs"]["NetworkSpec"]["properties"]["topology"]
    shorthand = {"type": "string", "enum": TOPOLOGIES.names(), "description": "shorthand for {kind: NAME}"}
    union = {k: v for k, v in topo.items() if k in ("oneOf", "discriminator")}
    body["$defs"]["NetworkSpec"]["properties"]["topology"] = {
        "anyOf": [shorthand, union], **{k: v for k, v in topo.items() if k not in union}}
    from algorithms.skiprules import SKIP_RULES
    rule = body["$defs"]["LazyConfig"]["properties"]["rule"]       # the algorithm kind lazy
    shorthand = {"type": "string", "enum": SKIP_RULES.names(), "description": "shorthand for {kind: NAME}"}
    union = {k: v for k, v in rule.items() if k in ("oneOf", "discriminator")}
    body["$defs"]["LazyConfig"]["properties"]["rule"] = {
        "anyOf": [shorthand, union], **{k: v for k, v in rule.items() if k not in union}}


def dumps(obj: dict) -> str:
    return json.dumps(obj, indent=1, sort_keys=False, ensure_ascii=False) + "\n"


# --- docs/reference.md ----------------------------------------------------------------
def _anchor(name: str) -> str:
    return name.lower()


def _type(s: dict) -> str:
    """A short human description of a schema node's type."""
    if "$ref" in s:
        name = s["$ref"].rsplit("/", 1)[-1]
        return f"[{name}](#{_anchor(name)})"
    if "x-unit" in s:
        return f"quantity in {s['x-unit']} (e.g. \"{s['examples'][0]}\")" if s.get("examples") else s["x-unit"]
    if "const" in s:
        return f"`{json.dumps(s['const'])}`"
    if "enum" in s:
        return "one of " + ", ".join(f"`{json.dumps(v)}`" for v in s["enum"])
    for key in ("oneOf", "anyOf"):
        if key in s:
            parts = [p for p in s[key] if p.get("type") != "null"]
            text = " or ".join(dict.fromkeys(_type(p) for p in parts))
            return text + (" or null" if len(parts) < len(s[key]) else "")
    t = s.get("type")
    if t == "array":
        return f"list of {_type(s.get('items', {}))}" if s.get("items") else "list"
    if t == "object":
        extra = s.get("additionalProperties")
        return f"mapping to {_type(extra)}" if isinstance(extra, dict) and extra else "mapping"
    return t if isinstance(t, str) else "any"


_BOUNDS = (("minimum", ">= {}"), ("exclusiveMinimum", "> {}"), ("maximum", "<= {}"), ("exclusiveMaximum", "< {}"),
           ("minItems", "at least {} items"), ("maxItems", "at most {} items"), ("minLength", "at least {} characters"),
           ("maxLength", "at most {} characters"))


def _limits(s: dict) -> str:
    """Ranges and patterns of a node (and of its non-null alternatives)."""
    nodes = [s] + [p for k in ("anyOf", "oneOf") for p in s.get(k, []) if "x-unit" not in s]
    out = []
    for node in nodes:
        for key, sym in _BOUNDS:
            if key in node:
                out.append(sym.format(node[key]))
        if "pattern" in node and "x-unit" not in s:
            out.append(f"pattern `{node['pattern']}`")
    return "; ".join(dict.fromkeys(out))


def _default(prop: dict, required: bool) -> str:
    if required:
        return "**required**"
    if "default" not in prop:
        return ""
    return f"`{json.dumps(prop['default'])}`"


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _section(name: str, node: dict) -> list[str]:
    out = [f"### {name}", ""]
    if node.get("description"):
        out += [node["description"].strip(), ""]
    props = node.get("properties", {})
    if not props:
        return out + [f"Type: {_type(node)}.", ""]
    req = set(node.get("required", []))
    out += ["| field | type | default | limits | description |", "| --- | --- | --- | --- | --- |"]
    for field, prop in props.items():
        out.append("| " + " | ".join(_cell(x) for x in (f"`{field}`", _type(prop), _default(prop, field in req),
                                                         _limits(prop), prop.get("description", ""))) + " |")
    if node.get("additionalProperties") is False:
        out += ["", "Other keys are refused."]
    return out + [""]


def _refs(node: Any) -> list[str]:
    """Definition names ``node`` refers to, in order of first appearance."""
    out: list[str] = []
    if isinstance(node, dict):
        if "$ref" in node:
            out.append(node["$ref"].rsplit("/", 1)[-1])
        for k, v in node.items():
            if k != "discriminator":
                out += _refs(v)
    elif isinstance(node, list):
        for v in node:
            out += _refs(v)
    return list(dict.fromkeys(out))


def reference() -> str:
    """docs/reference.md: every field of a scenario and a sweep, from their schemas."""
    lines = ["# Reference: scenario and sweep files", "",
             "*Generated by `python run_sim.py schema --write` from the pydantic models that validate the "
             "files (the same source as scenarios/schema/*.schema.json); do not edit by hand. "
             "tests/test_schema.py fails when it is stale.*", "",
             "Quantities with units take a number in the base unit or a string \"<number> <unit>\": "
             "bandwidths in bit/s (`bps`, `kbps`, `Mbps`, `Gbps`, `Tbps`, `bit/s`..., and bytes per second "
             "`Bps`, `MBps`, `MB/s`...; decimal prefixes), times in seconds (`s`, `ms`, `us`, `ns`, `min`, "
             "`h`). Editors that read the `# yaml-language-server: $schema=...` first line of the shipped "
             "scenarios (VS Code's YAML extension) complete and check fields from the same schema.", ""]
    for kind in KINDS:
        sch = schema(kind)
        defs = sch.get("$defs", {})
        lines += [f"## {kind.capitalize()} files", ""]
        lines += _section(f"{kind} (top level)", sch)
        seen, queue = set(), _refs(sch.get("properties", {}))
        while queue:
            name = queue.pop(0)
            if name in seen or name not in defs:
                continue
            seen.add(name)
            lines += _section(name, defs[name])
            queue += [r for r in _refs(defs[name]) if r not in seen]
    return "\n".join(lines).rstrip("\n") + "\n"


def outputs() -> dict[Path, str]:
    """Every generated file and its text."""
    files = {SCHEMA_DIR / f"{kind}.schema.json": dumps(schema(kind)) for kind in KINDS}
    files[REFERENCE] = reference()
    return files


def write_all() -> list[Path]:
    SCHEMA_DIR.mkdir(parents=True, exist_ok=True)
    for path, text in outputs().items():
        path.write_text(text, encoding="utf-8")
    return list(outputs())
