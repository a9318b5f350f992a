"""Pydantic field types for quantities with units (see sim/units.py).

``Bandwidth`` parses "1 Gbps" to bit/s (> 0), ``Duration`` parses "5 ms" to
seconds (>= 0); both write themselves back in units ("1 Gbps", "5 ms") when a
resolved scenario is dumped.
"""
from __future__ import annotations

from typing import Annotated

from pydantic import BeforeValidator, Field, PlainSerializer

from sim import units


def _parser(kind: str):
    return lambda v: units.parse(v, kind)


def _writer(kind: str):
    return lambda v: units.format(v, kind)


Bandwidth = Annotated[float, BeforeValidator(_parser("bandwidth")), Field(gt=0),
                      PlainSerializer(_writer("bandwidth"), return_type=str)]
Duration = Annotated[float, BeforeValidator(_parser("time")), Field(ge=0),
                     PlainSerializer(_writer("time"), return_type=str)]
PositiveDuration = Annotated[float, BeforeValidator(_parser("time")), Field(gt=0),
                             PlainSerializer(_writer("time"), return_type=str)]
BandwidthOrZero = Annotated[float, BeforeValidator(_parser("bandwidth")), Field(ge=0),
                            PlainSerializer(_writer("bandwidth"), return_type=str)]
