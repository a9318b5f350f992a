"""What every benchmark writes, so docs/performance.md is generated, never hand-copied.

A bench script measures, then calls :func:`write` with its raw figures and a
``report``: a title, the command that reproduces it, what it measures, tables
(captions, columns, rows already formatted from the figures) and goals
(a measured value against a target, with the comparison).  ``bench/render.py``
turns every ``bench/results/*.json`` into docs/performance.md; the verdict of a
goal (met or not) is computed there from value, op and target, never stored.

The machine record holds the facts a reader needs to judge a figure: CPU,
cores, Python, torch and its threads, the platform, the UTC date, the commit
(with ``+dirty`` when the tree had uncommitted changes) and the load average
before and after the measurement (a loaded 2-core machine swings ratios 2-10x).
"""
from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import subprocess
from pathlib import Path

from _machine import cpu_model

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
OPS = {"<=": lambda v, t: v <= t, ">=": lambda v, t: v >= t}


def _commit() -> str:
    try:
        rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                             check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT,
                               capture_output=True, text=True, check=True).stdout.strip()
        return rev + ("+dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def machine(load_before: tuple[float, float, float]) -> dict:
    """The machine record; ``load_before`` is ``os.getloadavg()`` taken before measuring."""
    import torch
    return {"cpu": cpu_model(), "cores": os.cpu_count(), "python": platform.python_version(),
            "torch": torch.__version__, "torch_threads": torch.get_num_threads(),
            "device": "cuda: " + torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu",
            "platform": platform.platform(terse=True),
            "date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), "commit": _commit(),
            "load_before": [round(x, 2) for x in load_before],
            "load_after": [round(x, 2) for x in os.getloadavg()]}


def table(caption: str, columns: list[str], rows: list[list]) -> dict:
    """A table of already formatted cells (str), one list per row."""
    assert all(len(r) == len(columns) for r in rows), "every row has one cell per column"
    return {"caption": caption, "columns": columns, "rows": [[str(c) for c in r] for r in rows]}


def goal(name: str, value: float, op: str, target: float, unit: str = "x") -> dict:
    """A measured ``value`` against ``target``: met when ``value op target``."""
    assert op in OPS, op
    return {"name": name, "value": float(value), "op": op, "target": float(target), "unit": unit}


def write(name: str, data: dict, *, title: str, command: str, about: str, load_before, tables: list[dict],
          goals: list[dict] = (), notes: list[str] = (), path: str | Path | None = None) -> Path:
    """Write ``bench/results/<name>.json`` (or ``path``): the raw figures plus the report block."""
    out = Path(path) if path else RESULTS / f"{name}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    doc = dict(data)
    doc["report"] = {"name": name, "title": title, "command": command, "about": about,
                     "machine": machine(load_before), "tables": list(tables), "goals": list(goals),
                     "notes": list(notes)}
    out.write_text(json.dumps(doc, indent=1) + "\n")
    return out
