"""Figures of a run folder written after every run: time-to-accuracy and accuracy-vs-bytes.

Both show test accuracy, one line per algorithm (mean over seeds, band min..max over
seeds after interpolating each seed onto a common grid; see ``analysis.figures``), under a
title naming the scenario (``name`` in scenario.yaml, else the folder) and its seeds
("seed 0", "3 seeds").  ``python run_sim.py plot DIR`` (``analysis.report.make_report``)
writes the full set.
"""
from __future__ import annotations

from pathlib import Path

import pandas as pd
import yaml

from .figures import figure_title, plot_accuracy, plot_staleness, plot_timeline


def plot_run(run_dir: str | Path) -> list[Path]:
    """Write time_to_accuracy.png and accuracy_vs_bytes.png into ``run_dir``,
    and for event-driven algorithms (rows in updates.csv) staleness.png and
    timeline.png."""
    run_dir = Path(run_dir)
    df = pd.read_csv(run_dir / "metrics.csv", dtype={"algorithm": str})
    target = None
    summary = run_dir / "summary.csv"
    if summary.exists():
        s = pd.read_csv(summary)
        if len(s):
            target = float(s["target_acc"].iloc[0])
    scenario = run_dir / "scenario.yaml"
    name = (yaml.safe_load(scenario.read_text()) or {}).get("name") if scenario.is_file() else None
    title = figure_title(str(name or run_dir.name), df["seed"].dropna().unique())
    out = [plot_accuracy(df, "time", target, run_dir / "time_to_accuracy.png", title),
           plot_accuracy(df, "bytes", target, run_dir / "accuracy_vs_bytes.png", title)]
    updates = run_dir / "updates.csv"
    if updates.exists():
        up = pd.read_csv(updates, dtype={"algorithm": str})
        if len(up):
            out += [plot_staleness(up, run_dir / "staleness.png", title),
                    plot_timeline(up, run_dir / "timeline.png", title)]
    return out
