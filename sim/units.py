"""Quantities with units, parsed once at load time (SimGrid style).

YAML says ``"1 Gbps"``, ``"5 ms"``, ``"10 min"``, ``"1.5 MB"``; the code only ever
sees SI base units in names that say so: ``bandwidth_bps``, ``latency_s``,
``size_bytes``.  A bare number is taken in the base unit (bit/s, s, byte).
Bandwidth prefixes are decimal (1 Gbps = 1e9 bit/s), as network vendors use them.
"""
from __future__ import annotations

import math
import re

_NUM = r"([-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)"
_RE = re.compile(rf"^\s*{_NUM}\s*([A-Za-z/]*)\s*$")

BANDWIDTH_UNITS = {  # -> bit/s
    "bps": 1.0, "kbps": 1e3, "Kbps": 1e3, "Mbps": 1e6, "Gbps": 1e9, "Tbps": 1e12,
    "bit/s": 1.0, "kbit/s": 1e3, "Mbit/s": 1e6, "Gbit/s": 1e9, "Tbit/s": 1e12,
    "Bps": 8.0, "kBps": 8e3, "KBps": 8e3, "MBps": 8e6, "GBps": 8e9,
    "B/s": 8.0, "kB/s": 8e3, "MB/s": 8e6, "GB/s": 8e9,
}
TIME_UNITS = {  # -> s
    "s": 1.0, "sec": 1.0, "ms": 1e-3, "us": 1e-6, "µs": 1e-6, "ns": 1e-9,
    "min": 60.0, "h": 3600.0,
}
SIZE_UNITS = {  # -> bytes
    "B": 1.0, "kB": 1e3, "KB": 1e3, "MB": 1e6, "GB": 1e9,
    "KiB": 1024.0, "MiB": 1024.0**2, "GiB": 1024.0**3,
}

# Preferred units for writing a value back out, largest first.
_OUT = {
    "bandwidth": [("Tbps", 1e12), ("Gbps", 1e9), ("Mbps", 1e6), ("kbps", 1e3), ("bps", 1.0)],
    "time": [("h", 3600.0), ("min", 60.0), ("s", 1.0), ("ms", 1e-3), ("us", 1e-6), ("ns", 1e-9)],
    "size": [("GB", 1e9), ("MB", 1e6), ("kB", 1e3), ("B", 1.0)],
}
_TABLES = {"bandwidth": BANDWIDTH_UNITS, "time": TIME_UNITS, "size": SIZE_UNITS}
_EXAMPLES = {"bandwidth": '"1 Gbps", "100 Mbps"', "time": '"5 ms", "10 min"', "size": '"1 MB", "64 B"'}


def parse(value: object, kind: str) -> float:
    """Parse ``value`` (a number or ``"<number> <unit>"``) into the base unit of ``kind``."""
    table = _TABLES[kind]
    if isinstance(value, bool):
        raise ValueError(f"expected a {kind} like {_EXAMPLES[kind]}, got {value!r}")
    if isinstance(value, (int, float)):
        out = float(value)
    elif isinstance(value, str):
        m = _RE.match(value)
        if not m:
            raise ValueError(f"expected a {kind} like {_EXAMPLES[kind]}, got {value!r}")
        number, unit = m.groups()
        if unit == "":
            scale = 1.0
        elif unit in table:
            scale = table[unit]
        else:
            raise ValueError(
                f"unknown {kind} unit {unit!r} in {value!r}; allowed units: {', '.join(table)}"
            )
        out = float(number) * scale
    else:
        raise ValueError(f"expected a {kind} like {_EXAMPLES[kind]}, got {value!r}")
    if not math.isfinite(out):
        raise ValueError(f"{kind} must be finite, got {value!r}")
    return out


def format(value: float, kind: str) -> str:  # noqa: A001 - mirrors parse()
    """Write ``value`` (base unit) in the largest unit that keeps it exact."""
    for unit, scale in _OUT[kind]:
        if value != 0 and abs(value) >= scale:
            text = f"{value / scale:.12g}"
            if float(text) * scale == value:
                return f"{text} {unit}"
    base = _OUT[kind][-1][0] if kind != "time" else "s"
    if value == 0:
        return f"0 {base}"
    return f"{value!r} {base}"
