"""The Python API: run a scenario or a sweep from a notebook or a script.

    from sim import api
    res = api.run("quickstart", overrides={"stop.max_rounds": 100})
    res.summary                  # pandas DataFrames: metrics, summary, phases, links, diagnostics, updates
    res = api.run("my.yaml", out="results/mine")     # also writes what `run_sim.py run --out` writes
    sw = api.sweep("uplink_bandwidth", overrides={"stop.max_rounds": 50}, workers=2)
    sw.summary, sw.points        # every point's rows led by its point and axis values; one row a point

``scenario`` / ``sweep``: a path; the name of a shipped one (``commsim list
scenarios``, sim/study/shipped.py); YAML text (a string with a line break or
``": "``); or a dict.  Relative paths inside YAML text or a dict (a sweep's
``base``, traces, GraphML) are taken from the current folder.

``overrides``: ``{"dotted.key": value}`` or ``["dotted.key=value", ...]``, the
CLI's ``--set`` (for a sweep: added to its ``set:``).

The CLI and this API share one core (sim/study/runner.py ``run_scenario``,
sim/study/sweep.py ``run_sweep``) and so the same checks: bad input raises
:class:`ScenarioError` (``.file``, ``.field``, ``.message``), whose ``str()`` is
the message the CLI prints after ``error: ``, and nothing is written.  Results
come back as :class:`analysis.frames.Frames`, the frames ``analysis.load(DIR)``
reads from a folder.  ``run`` writes files only when ``out`` is given (exactly
the files ``run_sim.py run --out`` writes); ``sweep`` runs its points in a
temporary folder, removed afterwards, unless ``out`` is given (then it resumes
there like the CLI).  Ctrl-C raises KeyboardInterrupt (rows already written to
``out`` are kept).
"""
from __future__ import annotations

import copy
import tempfile
from pathlib import Path
from typing import Any, Mapping, Sequence

from analysis.frames import Frames
from sim.errors import ScenarioError

__all__ = ["run", "sweep", "load_scenario", "ScenarioError", "Frames"]

EXIT_INTERRUPTED = 130
DICT_LABEL = "<dict>"
TEXT_LABEL = "<yaml string>"


def _is_yaml_text(text: str) -> bool:
    """A line break, or (when no such file exists) ``": "`` or a leading ``{``."""
    if "\n" in text:
        return True
    return (": " in text or text.lstrip().startswith("{")) and not _exists(text)


def _exists(text: str) -> bool:
    try:
        return Path(text).exists()
    except (OSError, ValueError):        # too long for a file name, a NUL byte
        return False


def _source(given: Any, kind: str) -> tuple[Any, str, Path | None]:
    """(data or None, the file that names it in messages, the folder relative paths start from);
    data None: read the file."""
    from sim.study import yamlfile
    from sim.study.shipped import resolve
    if isinstance(given, Mapping):
        return copy.deepcopy(dict(given)), DICT_LABEL, Path.cwd()
    if isinstance(given, Path):
        return None, str(given), None
    if isinstance(given, str):
        if _is_yaml_text(given):
            return yamlfile.loads(given, TEXT_LABEL), TEXT_LABEL, Path.cwd()
        return None, resolve(given, kind), None
    raise ScenarioError(f"a {kind} must be given as a path, a shipped name, YAML text or a dict, "
                        f"not {type(given).__name__}", file=f"<{type(given).__name__}>")


def _override_items(overrides: Mapping[str, Any] | Sequence[str] | None, file: str) -> list[str]:
    """``--set`` items: a dict's values written as YAML (as a sweep writes its points)."""
    from sim.study.sweep import _override
    if overrides is None:
        return []
    if isinstance(overrides, Mapping):
        return [_override(str(k), v) for k, v in overrides.items()]
    if isinstance(overrides, Sequence) and not isinstance(overrides, str) and all(
            isinstance(item, str) for item in overrides):
        return list(overrides)
    raise ScenarioError('overrides: allowed: a dict {"dotted.key": value} or a list of "dotted.key=value" strings',
                        field="overrides", file=file)


def load_scenario(scenario: Any, overrides: Mapping[str, Any] | Sequence[str] | None = None):
    """The validated scenario (sim.study.config.Scenario) and the file that names it in messages."""
    from sim.study.config import load_scenario as load_file
    from sim.study.config import scenario_from_data
    data, file, base = _source(scenario, "scenario")
    items = _override_items(overrides, file)
    if base is None:
        return load_file(file, items), file
    return scenario_from_data(data, file, base, items), file


def run(scenario: Any, overrides: Mapping[str, Any] | Sequence[str] | None = None,
        out: str | Path | None = None, *, overwrite: bool = False, quiet: bool = True) -> Frames:
    """Run every algorithm of ``scenario`` under every seed; the results as DataFrames.

    ``out``: also write the results folder (refused, like ``--out``, when it is a file or
    already holds results, unless ``overwrite``).  ``quiet=False`` shows the progress bars."""
    import torch

    from analysis.frames import frames_from_tables, load
    from sim.alloc import reuse_freed_memory
    from sim.study.runner import run_scenario
    reuse_freed_memory()
    scn, file = load_scenario(scenario, overrides)
    tables: dict[str, str] = {}
    det, warn_only = torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled()
    try:   # the run sets torch's deterministic mode for itself; the caller's comes back
        status, _ = run_scenario(scn, file, None if out is None else Path(out), overwrite=overwrite, quiet=quiet,
                                 tables=tables)
    finally:
        torch.use_deterministic_algorithms(det, warn_only=warn_only)
    if status == EXIT_INTERRUPTED:
        raise KeyboardInterrupt
    return load(out) if out is not None else frames_from_tables(tables, scn.dump())


def sweep(sweep: Any, overrides: Mapping[str, Any] | Sequence[str] | None = None, out: str | Path | None = None,
          *, axes: Mapping[str, list] | None = None, backend: str = "local", workers: int = 1,
          address: str | None = None, quiet: bool = True) -> Frames:
    """Run a sweep (sim/study/sweep.py: the same planning, replays, backends and checks as
    ``run_sim.py sweep``); its points' tables as DataFrames, ``points`` one row per point.

    ``axes`` replaces those axes of the sweep ({"dotted.key": [values]}).  Failed points do
    not raise: their ``point_status`` and ``error`` are in ``points``."""
    from analysis.frames import load
    from sim.study.config import parse_overrides
    from sim.study.sweep import run_sweep
    data, file, folder = _source(sweep, "sweep")
    fixed = dict(overrides) if isinstance(overrides, Mapping) else dict(
        parse_overrides(_override_items(overrides, file), file))
    changes = {"set": fixed, "axes": dict(axes or {})} if fixed or axes else None
    with tempfile.TemporaryDirectory(prefix="commsim-sweep-") as tmp:
        where = Path(out) if out is not None else Path(tmp) / "sweep"
        status = run_sweep(file, str(where), backend=backend, workers=workers, quiet=quiet, address=address,
                           changes=changes, data=data, folder=folder)
        if status == EXIT_INTERRUPTED:
            raise KeyboardInterrupt
        frames = load(where)
    if out is None:
        frames.folder = None
    return frames
