"""Replay benchmark (issue 7): host cost per point of a bandwidth x latency
sweep, re-timed from a trace against trained from scratch.

The sweep: scenarios/quickstart.yaml (10 workers, MNIST-5k, MLP 784-512-10,
star, 1 Gbps / 5 ms links) with one algorithm, seed 0, stopping at the 90%
target, over a grid of uplink bandwidths (10 Mbps .. 10 Gbps, log-spaced)
by uplink latencies (0.1 ms .. 200 ms, log-spaced): ``--grid 10`` gives
10 x 10 = 100 points.

  full    per point what a sweep does without replay (``replay: off``):
          sim.study.sweep.run_point (load the scenario, build the world: data,
          shards, model; train with the network; write the results folder).
          ``--full-points K`` times K points spread over the grid (all
          points by default); the per-point figure is their median.
  replay  the source point is trained once (its cost is reported and
          amortised over the grid); every point is then
          sim.study.replay.replay_run from the source's trace (load the trace,
          build the graph, simulate the network, write the results folder),
          inside sim.study.replay.frozen_heap, as a sweep runs its replays.

Both write the same files (no plots: a sweep makes its figures once, with
``run_sim.py plot``).  Each replayed point's metrics.csv is checked to be
byte-identical to the full run's at the points timed in full.  Times are host
wall-clock (perf_counter) in this process, one point at a time.

    .venv/bin/python bench/bench_replay.py [--algorithm sgd] [--grid 10] [--full-points 10] [--json OUT]
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

import _report
from _machine import cpu_model  # bench/_machine.py (scripts run from bench/)

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from sim.alloc import reuse_freed_memory  # noqa: E402
from sim.study.config import load_scenario  # noqa: E402
from sim.study.replay import frozen_heap, replay_run  # noqa: E402
from sim.study.sweep import run_point  # noqa: E402
from sim.study.yamlfile import forget_sections  # noqa: E402
from sim.units import format as fmt  # noqa: E402

SCENARIO = ROOT / "scenarios" / "quickstart.yaml"


def grid(n: int) -> list[tuple[str, str]]:
    bws = np.logspace(np.log10(10e6), np.log10(10e9), n)
    lats = np.logspace(np.log10(0.1e-3), np.log10(0.2), n)
    r3 = lambda x: float(f"{x:.3g}")  # noqa: E731 - three significant digits: "21.5 Mbps"
    return [(fmt(r3(b), "bandwidth"), fmt(r3(a), "time")) for b in bws for a in lats]


def overrides(algorithm: str, bw: str, lat: str) -> list[str]:
    algs = {"sgd": "{name: sgd, kind: sgd, lr: 0.1}",
            "topk-ef": "{name: topk-ef, kind: topk_ef_sgd, lr: 0.1, ratio: 0.01}",
            "comp-ams": "{name: comp-ams, kind: comp_ams, lr: 0.001, compressor: {kind: topk, ratio: 0.01}}"}
    return [f"algorithms=[{algs[algorithm]}]", f"network.uplink.bandwidth={bw}", f"network.uplink.latency={lat}"]


ALGORITHMS = ["sgd", "topk-ef", "comp-ams"]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--algorithm", nargs="+", default=["sgd"], choices=ALGORITHMS)
    p.add_argument("--grid", type=int, default=10, help="values per axis (grid x grid points)")
    p.add_argument("--full-points", type=int, default=0, help="points trained in full (0: all)")
    p.add_argument("--json", help="write the figures here")
    a = p.parse_args(argv)
    reuse_freed_memory()
    torch.set_num_threads(torch.get_num_threads())
    load_before = os.getloadavg()
    rows = [measure(alg, a.grid, a.full_points) for alg in a.algorithm]
    if a.json:
        _report.write("replay", {"rows": rows}, path=a.json, load_before=load_before,
                      title="Trace replay (issues 7 and 15)",
                      command=f"cd bench && ../.venv/bin/python bench_replay.py --algorithm {' '.join(a.algorithm)} "
                              f"--grid {a.grid} --full-points {a.full_points} --json results/replay.json",
                      about=f"Host cost per point of a {a.grid} x {a.grid} sweep of uplink bandwidth (10 Mbps .. 10 "
                            "Gbps) by uplink latency (0.1 .. 200 ms) on scenarios/quickstart.yaml, one algorithm, "
                            "seed 0, to the 90% target: trained in full (sim.study.sweep.run_point: load, build "
                            "the world, train with the network, write the folder; median over the points timed "
                            "in full) against re-timed from the first point's trace (sim.study.replay.replay_run, "
                            "every point, median, inside sim.study.replay.frozen_heap as a sweep runs its replays). Every point timed in full is checked byte-identical (metrics.csv) "
                            "to its replay. The whole-sweep figures count the source point's training once.",
                      tables=[_report.table("", ["algorithm", "rounds", "full per point s", "replay per point ms",
                                                 "ratio", "whole sweep s: without -> with replay"],
                                            [[r["algorithm"], r["rounds_per_run"], f"{r['full_s_median']:.3f}",
                                              f"{1e3 * r['replay_s_median']:.1f}", f"{r['per_point_ratio']:.0f}x",
                                              f"{r['sweep_s_without_replay']:.1f} -> {r['sweep_s_with_replay']:.1f}"]
                                             for r in rows])],
                      goals=[_report.goal(f"{r['algorithm']}: replay cheaper per point than training",
                                          r["per_point_ratio"], ">=", 100) for r in rows])
    return 0


def measure(algorithm: str, grid_n: int, full_points: int) -> dict:
    points = grid(grid_n)
    k = len(points) if full_points <= 0 else min(full_points, len(points))
    full_idx = sorted({round(i * (len(points) - 1) / max(k - 1, 1)) for i in range(k)})
    tmp = Path(tempfile.mkdtemp(prefix="bench_replay_"))

    # the source point (the first of the grid) trains once and records its trace
    t0 = time.perf_counter()
    res = run_point(str(SCENARIO), overrides(algorithm, *points[0]), True, out_dir=str(tmp / "source"))
    source_s = time.perf_counter() - t0
    assert res["status"] == "done", res

    replay_s = []
    # scenario.yaml's section texts are remembered per process (sim/study/yamlfile.py); the
    # previous algorithm's sweep wrote the same network sections, which a sweep of its own
    # would not have seen: start from none
    forget_sections()
    with frozen_heap():          # as a sweep replays its points (sim/study/sweep.py)
        for i, (bw, lat) in enumerate(points):
            scn = load_scenario(SCENARIO, overrides(algorithm, bw, lat))
            t0 = time.perf_counter()
            replay_run(tmp / "source", scn, tmp / f"replay{i:03d}", plots=False)
            replay_s.append(time.perf_counter() - t0)

    full_s = []
    for i in full_idx:
        t0 = time.perf_counter()
        res = run_point(str(SCENARIO), overrides(algorithm, *points[i]), True, out_dir=str(tmp / f"full{i:03d}"))
        full_s.append(time.perf_counter() - t0)
        assert res["status"] == "done", res
        assert (tmp / f"full{i:03d}" / "metrics.csv").read_bytes() == \
            (tmp / f"replay{i:03d}" / "metrics.csv").read_bytes(), f"point {i}: replay differs from full"

    with open(tmp / "source" / "summary.csv") as fh:
        rounds = int(next(csv.DictReader(fh))["final_round"])
    full_med, replay_med = statistics.median(full_s), statistics.median(replay_s)
    n = len(points)
    with_replay = source_s + sum(replay_s)
    without = full_med * n
    out = {
        "machine": f"{cpu_model()}, {torch.get_num_threads()} torch threads, torch {torch.__version__}, "
                   f"Python {platform.python_version()}",
        "algorithm": algorithm, "points": n, "rounds_per_run": rounds,
        "full_points_timed": len(full_s), "full_s_median": full_med, "full_s_min": min(full_s),
        "full_s_max": max(full_s), "replay_s_median": replay_med, "replay_s_max": max(replay_s),
        "source_s": source_s, "per_point_ratio": full_med / replay_med,
        "sweep_s_without_replay": without, "sweep_s_with_replay": with_replay,
        "sweep_ratio": without / with_replay,
    }
    print(f"machine: {out['machine']}")
    print(f"{algorithm}: {n} points ({grid_n} bandwidths x {grid_n} latencies), {rounds} rounds per run")
    print(f"  full training per point : median {full_med:.3f} s (min {min(full_s):.3f}, max {max(full_s):.3f}; "
          f"{len(full_s)} points timed)")
    print(f"  replay per point        : median {replay_med * 1e3:.1f} ms (max {max(replay_s) * 1e3:.1f} ms)")
    print(f"  per point               : replay {out['per_point_ratio']:.0f}x cheaper")
    print(f"  whole sweep             : {without:.1f} s without replay (median x {n}) vs "
          f"{with_replay:.1f} s with ({source_s:.2f} s source + replays): {out['sweep_ratio']:.1f}x")
    return out


if __name__ == "__main__":
    sys.exit(main())
