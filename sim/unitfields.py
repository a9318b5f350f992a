"""Pydantic field types for quantities with units (see sim/units.py).

``Bandwidth`` parses "1 Gbps" to bit/s (> 0), ``Duration`` parses "5 ms" to
seconds (>= 0); both write themselves back in units ("1 Gbps", "5 ms") when a
resolved scenario is dumped.  Their JSON Schema (``run_sim.py schema``, what
editors check YAML against) is what the parser accepts: a non-negative
number in the base unit, or a string "<number> <unit>" whose unit is one of
sim/units.py's, with the base unit under ``x-unit``.
"""
from __future__ import annotations

import re
from typing import Annotated

from pydantic import BeforeValidator, Field, PlainSerializer, WithJsonSchema

from sim import units

BASE_UNITS = {"bandwidth": "bit/s", "time": "s", "size": "B"}


def _parser(kind: str):
    return lambda v: units.parse(v, kind)


def _writer(kind: str):
    return lambda v: units.format(v, kind)


def _schema(kind: str, positive: bool) -> WithJsonSchema:
    """A number (base unit) or "<number> <unit>"; no sign in the string form, as
    every such quantity is >= 0 (the parser's check for > 0 is not expressible
    in a pattern, so "0 Gbps" passes the schema and is refused at load)."""
    table = units._TABLES[kind]
    alternatives = "|".join(re.escape(u) for u in sorted(table, key=len, reverse=True))
    pattern = rf"^\s*\+?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?\s*({alternatives})?\s*$"
    number = {"type": "number", "exclusiveMinimum" if positive else "minimum": 0}
    return WithJsonSchema({"anyOf": [{"type": "string", "pattern": pattern}, number],
                           "x-unit": BASE_UNITS[kind],
                           "examples": [x.strip('"') for x in units._EXAMPLES[kind].split(", ")]})


Bandwidth = Annotated[float, BeforeValidator(_parser("bandwidth")), Field(gt=0),
                      PlainSerializer(_writer("bandwidth"), return_type=str), _schema("bandwidth", True)]
Duration = Annotated[float, BeforeValidator(_parser("time")), Field(ge=0),
                     PlainSerializer(_writer("time"), return_type=str), _schema("time", False)]
PositiveDuration = Annotated[float, BeforeValidator(_parser("time")), Field(gt=0),
                             PlainSerializer(_writer("time"), return_type=str), _schema("time", True)]
BandwidthOrZero = Annotated[float, BeforeValidator(_parser("bandwidth")), Field(ge=0),
                            PlainSerializer(_writer("bandwidth"), return_type=str), _schema("bandwidth", False)]


def _write_size(v: float) -> str:
    """Memory sizes back in binary units when exact ("8 GiB"), else as units.format."""
    for unit in ("GiB", "MiB", "KiB"):
        scale = units.SIZE_UNITS[unit]
        if v >= scale and float(f"{v / scale:.12g}") * scale == v:
            return f"{v / scale:.12g} {unit}"
    return units.format(v, "size")


# A memory size in bytes (> 0): "8 GiB", "512 MB", or a number of bytes.
Size = Annotated[float, BeforeValidator(_parser("size")), Field(gt=0),
                 PlainSerializer(_write_size, return_type=str), _schema("size", True)]
