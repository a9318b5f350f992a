"""Sweep processes and torch threads (issue 15, goal 5): wall time of a 4-point
sweep with ``--workers 1`` (one process, every core as torch threads) and
``--workers 2`` (two processes, cores // 2 threads each: sim/study/backends.py).

Two sweeps, each over 4 values of the batch size (so no point can be replayed
from another: every point trains), sgd and top-k EF for ``--rounds`` rounds:
``quickstart`` (MNIST-5k, MLP 784-512-10, 8 workers: torch-heavy) and ``tiny``
(digits, MLP 64-32-10, 32 workers: the simulation's Python side dominates).  Each measurement is
a fresh ``run_sim.py sweep`` process into a fresh folder, wall-clock from start
to exit, best of ``--repeat``, the two settings interleaved.

    .venv/bin/python bench/bench_sweep_threads.py [--rounds 300] [--repeat 1] [--json OUT]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import _report  # bench/_report.py (scripts run from bench/)

ROOT = Path(__file__).resolve().parents[1]

SCENARIOS = {"quickstart": ("quickstart.yaml", 8, [16, 24, 32, 40]), "tiny": ("tiny.yaml", 32, [4, 6, 8, 10])}
SWEEP = """name: threads
base: {base}
mode: grid
set:
  stop.max_rounds: {rounds}
  eval_every: {rounds}
  stop.on_target: false
  stop.max_sim_time: null
  workers: {workers}
  algorithms: [{{name: sgd, kind: sgd, lr: 0.1}}, {{name: topk, kind: topk_ef_sgd, lr: 0.1, ratio: 0.01}}]
axes:
  batch_size: {batches}
"""


def one(scenario: str, workers: int, rounds: int, folder: Path) -> float:
    base, n, batches = SCENARIOS[scenario]
    spec = folder / "sweep.yaml"
    spec.write_text(SWEEP.format(base=ROOT / "scenarios" / base, rounds=rounds, workers=n, batches=batches))
    t0 = time.perf_counter()
    subprocess.run([sys.executable, str(ROOT / "run_sim.py"), "sweep", str(spec), "--out", str(folder / "out"),
                    "--workers", str(workers), "--quiet"], check=True, cwd=ROOT, capture_output=True)
    return time.perf_counter() - t0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=300)
    p.add_argument("--repeat", type=int, default=1)
    p.add_argument("--json")
    a = p.parse_args()
    load_before = os.getloadavg()
    best = {(sc, w): float("inf") for sc in SCENARIOS for w in (1, 2)}
    for _ in range(a.repeat):
        for sc in SCENARIOS:
            for workers in (1, 2):
                with tempfile.TemporaryDirectory() as tmp:
                    best[sc, workers] = min(best[sc, workers], one(sc, workers, a.rounds, Path(tmp)))
                print(f"{sc} --workers {workers}: {best[sc, workers]:.1f} s (best so far)", file=sys.stderr)
    result = {"rounds": a.rounds, "points": 4,
              "wall_s": {sc: {str(w): best[sc, w] for w in (1, 2)} for sc in SCENARIOS},
              "speedup_2_over_1": {sc: best[sc, 1] / best[sc, 2] for sc in SCENARIOS}}
    print("| sweep | --workers | torch threads each | wall s (4 points) |")
    print("| --- | ---: | ---: | ---: |")
    for (sc, w), v in best.items():
        print(f"| {sc} | {w} | {max(1, (os.cpu_count() or 1) // w)} | {v:.1f} |")
    for sc, r in result["speedup_2_over_1"].items():
        print(f"{sc}: --workers 2 is {r:.2f}x as fast as --workers 1")
    if a.json:
        _report.write("sweep_threads", result, path=a.json, load_before=load_before,
                      title="Sweep processes and torch threads (issue 15, goal 5)",
                      command=f"cd bench && ../.venv/bin/python bench_sweep_threads.py --rounds {a.rounds} "
                              f"--repeat {a.repeat} --json results/sweep_threads.json",
                      about="Wall time of a 4-point sweep (4 batch sizes, so every point trains; sgd and top-k "
                            f"EF for {a.rounds} rounds) with `--workers 1` (one process, every core as torch "
                            "threads) and `--workers 2` (two processes, cores // 2 threads each, "
                            "sim/study/backends.py), on `quickstart` (MNIST-5k, MLP 784-512-10, 8 workers: "
                            "torch-heavy) and `tiny` (digits, MLP 64-32-10, 32 workers: the Python side "
                            "dominates). Each measurement is a fresh `run_sim.py sweep` process, best of the "
                            "repeats, the settings interleaved.",
                      tables=[_report.table("", ["sweep", "--workers", "torch threads each", "wall s (4 points)"],
                                            [[sc, w, max(1, (os.cpu_count() or 1) // w), f"{v:.1f}"]
                                             for (sc, w), v in best.items()])],
                      goals=[_report.goal(f"{sc}: --workers 2 speed-up over --workers 1", r, ">=", 1.0)
                             for sc, r in result["speedup_2_over_1"].items()])

if __name__ == "__main__":
    main()
