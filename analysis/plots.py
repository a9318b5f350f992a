"""Figures of a run folder: time-to-accuracy and accuracy-vs-bytes (seaborn)."""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402


def _lineplot(df: pd.DataFrame, x: str, xlabel: str, target: float | None, path: Path,
              logx: bool = False) -> None:
    fig, ax = plt.subplots(figsize=(7, 4.5))
    sns.lineplot(data=df, x=x, y="test_acc", hue="algorithm", errorbar=("pi", 100) if df["seed"].nunique() > 1 else None,
                 estimator="mean", ax=ax, marker="o", markersize=3)
    if target is not None:
        ax.axhline(target, color="grey", ls="--", lw=1, label=f"target {target:.0%}")
    if logx:
        ax.set_xscale("symlog")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("test accuracy")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_run(run_dir: str | Path) -> list[Path]:
    """Write time_to_accuracy.png and accuracy_vs_bytes.png into ``run_dir``."""
    run_dir = Path(run_dir)
    df = pd.read_csv(run_dir / "metrics.csv")
    target = None
    summary = run_dir / "summary.csv"
    if summary.exists():
        s = pd.read_csv(summary)
        if len(s):
            target = float(s["target_acc"].iloc[0])
    df["MB_total"] = (df["bytes_up"] + df["bytes_down"]) / 1e6
    out = [run_dir / "time_to_accuracy.png", run_dir / "accuracy_vs_bytes.png"]
    _lineplot(df, "sim_time_s", "simulated wall-clock time (s)", target, out[0])
    _lineplot(df, "MB_total", "bytes on the wire, up + down (MB)", target, out[1], logx=True)
    return out
