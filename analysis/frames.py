"""Tidy frames of results: ``analysis.load(DIR)``, and what the Python API (sim/api.py) returns.

    from analysis import load
    res = load("results/qs")       # a run folder (run_sim.py run --out, or sim.api.run(..., out=...))
    res.metrics, res.summary, res.phases, res.links, res.diagnostics, res.updates
    sw = load("results/bw")        # a sweep folder: every point shown done in sweep_summary.csv
    sw.points                      # one row per point: its axes, point_status, error, run_mode, replay_note

Each table is its CSV file read by ``pandas.read_csv`` (column types inferred, ``algorithm``
always text, an empty cell NaN); a run kept in memory is parsed from the same text, so a run
with and without ``out`` gives equal frames.  A table a folder lacks (written by an older
commsim) is an empty frame with its columns.  In a sweep folder each table is the points'
tables one after another, every row led by ``point`` ("000", its folder under points/) and
the swept fields, valued as in sweep_summary.csv; points that failed, were interrupted or are
pending have no rows there (see ``points``).
"""
from __future__ import annotations

import io
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import yaml

from sim.errors import ConfigError
from sim.study.results import RESULT_COLUMNS

TABLES = tuple(RESULT_COLUMNS)        # metrics, summary, phases, links, diagnostics, updates
POINT_COLUMNS = ["point_status", "error", "run_mode", "replay_note"]


@dataclass
class Frames:
    """The tables of one run, or of every done point of a sweep."""
    metrics: pd.DataFrame
    summary: pd.DataFrame
    phases: pd.DataFrame
    links: pd.DataFrame
    diagnostics: pd.DataFrame
    updates: pd.DataFrame
    scenario: dict = field(default_factory=dict)   # the resolved scenario (a sweep: its first done point's)
    folder: Path | None = None                     # None: kept in memory, nothing written
    points: pd.DataFrame | None = None             # sweeps only: one row per point
    sweep: dict | None = None                      # sweeps only: sweep.yaml

    @property
    def kind(self) -> str:
        return "run" if self.points is None else "sweep"

    @property
    def axes(self) -> list[str]:
        """The swept fields (columns of every sweep table after ``point``); [] for a run."""
        if self.points is None:
            return []
        return [c for c in self.points.columns if c != "point" and c not in POINT_COLUMNS]

    def tables(self) -> dict[str, pd.DataFrame]:
        return {name: getattr(self, name) for name in TABLES}


def read_table(source, name: str) -> pd.DataFrame:
    """One result table from a path or from its CSV text (the same parse either way)."""
    if isinstance(source, str):
        source = io.StringIO(source)
    elif not Path(source).is_file():
        return pd.DataFrame(columns=RESULT_COLUMNS[name])
    return pd.read_csv(source, dtype={"algorithm": str})


def frames_from_tables(tables: dict[str, str], scenario: dict) -> Frames:
    """Frames of a run kept in memory: ``tables`` holds each CSV file's text."""
    return Frames(**{name: read_table(tables[name], name) for name in TABLES}, scenario=scenario)


def _yaml(path: Path) -> dict:
    try:
        data = yaml.safe_load(path.read_text()) if path.is_file() else None
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        data = None
    return data if isinstance(data, dict) else {}


def load_run(folder: Path) -> Frames:
    return Frames(**{name: read_table(folder / f"{name}.csv", name) for name in TABLES},
                  scenario=_yaml(folder / "scenario.yaml"), folder=folder)


def load_sweep(folder: Path) -> Frames:
    raw = pd.read_csv(folder / "sweep_summary.csv", dtype={"point": str, "algorithm": str})
    cols = list(raw.columns)
    axes = cols[cols.index("point") + 1:cols.index("point_status")]
    points = raw.drop_duplicates("point")[["point", *axes, *POINT_COLUMNS]].reset_index(drop=True)
    done = points[points["point_status"] == "done"]
    parts: dict[str, list[pd.DataFrame]] = {name: [] for name in TABLES}
    scenario: dict = {}
    for _, p in done.iterrows():
        d = folder / "points" / p["point"]
        scenario = scenario or _yaml(d / "scenario.yaml")
        for name in TABLES:
            df = read_table(d / f"{name}.csv", name)
            if len(df):
                lead = pd.DataFrame({"point": p["point"], **{a: p[a] for a in axes}}, index=df.index)
                parts[name].append(pd.concat([lead, df], axis=1))
    tables = {name: pd.concat(frames, ignore_index=True) if frames else
              pd.DataFrame(columns=["point", *axes, *RESULT_COLUMNS[name]]) for name, frames in parts.items()}
    return Frames(**tables, scenario=scenario, folder=folder, points=points, sweep=_yaml(folder / "sweep.yaml"))


def load(path: str | Path) -> Frames:
    """The tidy frames of a run folder or a sweep folder (ConfigError when it is neither)."""
    folder = Path(path)
    if not folder.is_dir():
        raise ConfigError("not a folder; allowed: a run or sweep results folder", file=str(path))
    if (folder / "sweep_summary.csv").is_file():
        return load_sweep(folder)
    if (folder / "metrics.csv").is_file():
        return load_run(folder)
    raise ConfigError("no metrics.csv or sweep_summary.csv: expected a run folder (run_sim.py run --out) "
                      "or a sweep folder (run_sim.py sweep)", file=str(path))
