"""Sweep processes and torch threads (issue 15, goal 5): wall time of a 4-point
sweep with ``--workers 1`` (one process, every core as torch threads) and
``--workers 2`` (two processes, cores // 2 threads each: sim/study/backends.py).

The sweep: the quickstart scenario (MNIST-5k, MLP 784-128-10, 8 workers) for
``--rounds`` rounds, sgd and top-k EF, over 4 values of the batch size (so no
point can be replayed from another: every point trains).  Each measurement is
a fresh ``run_sim.py sweep`` process into a fresh folder, wall-clock from start
to exit, best of ``--repeat``, the two settings interleaved.

    .venv/bin/python bench/bench_sweep_threads.py [--rounds 60] [--repeat 2] [--json OUT]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _machine import cpu_model  # bench/_machine.py (scripts run from bench/)

ROOT = Path(__file__).resolve().parents[1]

SWEEP = """name: threads
base: {base}
mode: grid
set:
  stop.max_rounds: {rounds}
  eval_every: {rounds}
  stop.on_target: false
  workers: 8
  algorithms: [{{name: sgd, kind: sgd, lr: 0.1}}, {{name: topk, kind: topk_ef_sgd, lr: 0.1, ratio: 0.01}}]
axes:
  batch_size: [16, 24, 32, 40]
"""


def one(workers: int, rounds: int, folder: Path) -> float:
    spec = folder / "sweep.yaml"
    spec.write_text(SWEEP.format(base=ROOT / "scenarios" / "quickstart.yaml", rounds=rounds))
    t0 = time.perf_counter()
    subprocess.run([sys.executable, str(ROOT / "run_sim.py"), "sweep", str(spec), "--out", str(folder / "out"),
                    "--workers", str(workers), "--quiet"], check=True, cwd=ROOT, capture_output=True)
    return time.perf_counter() - t0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=60)
    p.add_argument("--repeat", type=int, default=2)
    p.add_argument("--json")
    a = p.parse_args()
    load_before = os.getloadavg()
    best = {1: float("inf"), 2: float("inf")}
    for _ in range(a.repeat):
        for workers in (1, 2):
            with tempfile.TemporaryDirectory() as tmp:
                best[workers] = min(best[workers], one(workers, a.rounds, Path(tmp)))
            print(f"--workers {workers}: {best[workers]:.1f} s (best so far)", file=sys.stderr)
    result = {"machine": {"cpu": cpu_model(), "cores": os.cpu_count(), "python": platform.python_version(),
                          "load_before": load_before, "load_after": os.getloadavg()},
              "rounds": a.rounds, "points": 4, "wall_s": {str(k): v for k, v in best.items()},
              "speedup_2_over_1": best[1] / best[2]}
    print("| --workers | torch threads each | wall s (4 points) |")
    print("| ---: | ---: | ---: |")
    for k, v in best.items():
        print(f"| {k} | {max(1, (os.cpu_count() or 1) // k)} | {v:.1f} |")
    print(f"\n--workers 2 is {result['speedup_2_over_1']:.2f}x as fast as --workers 1")
    if a.json:
        Path(a.json).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
