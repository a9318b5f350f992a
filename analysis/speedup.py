"""Rounds to a training-loss target across runs (comp-ams.txt Sec. 5.2 linear speedup).

    python -m analysis.speedup RUN_DIR [RUN_DIR ...] [--loss 0.5]

For each run folder: the number of workers (from its scenario.yaml) and, per
algorithm and seed, the first evaluated round whose train_loss is at or below
the target.  Resolution is the run's eval_every.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd
import yaml


def rounds_to_loss(run_dir: str | Path, loss: float) -> pd.DataFrame:
    run_dir = Path(run_dir)
    scn = yaml.safe_load((run_dir / "scenario.yaml").read_text())
    df = pd.read_csv(run_dir / "metrics.csv")
    rows = []
    for (alg, seed), g in df.groupby(["algorithm", "seed"], sort=True):
        hit = g[g["train_loss"] <= loss]
        rows.append({"workers": scn["workers"], "algorithm": alg, "seed": seed,
                     "rounds_to_loss": int(hit["round"].iloc[0]) if len(hit) else None,
                     "sim_time_s": float(hit["sim_time_s"].iloc[0]) if len(hit) else None})
    return pd.DataFrame(rows)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("runs", nargs="+")
    p.add_argument("--loss", type=float, default=0.5)
    a = p.parse_args(argv)
    table = pd.concat([rounds_to_loss(r, a.loss) for r in a.runs], ignore_index=True)
    print(table.to_string(index=False))


if __name__ == "__main__":
    main()
