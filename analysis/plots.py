"""Figures of a run folder written after every run: time-to-accuracy and accuracy-vs-bytes.

Both show test accuracy, one line per algorithm (mean over seeds, band min..max over
seeds after interpolating each seed onto a common grid; see ``analysis.figures``).
``python run_sim.py plot DIR`` (``analysis.report.make_report``) writes the full set.
"""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from .figures import plot_accuracy


def plot_run(run_dir: str | Path) -> list[Path]:
    """Write time_to_accuracy.png and accuracy_vs_bytes.png into ``run_dir``."""
    run_dir = Path(run_dir)
    df = pd.read_csv(run_dir / "metrics.csv", dtype={"algorithm": str})
    target = None
    summary = run_dir / "summary.csv"
    if summary.exists():
        s = pd.read_csv(summary)
        if len(s):
            target = float(s["target_acc"].iloc[0])
    return [plot_accuracy(df, "time", target, run_dir / "time_to_accuracy.png"),
            plot_accuracy(df, "bytes", target, run_dir / "accuracy_vs_bytes.png")]
