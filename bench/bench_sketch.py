"""Host time to sketch and unsketch at ResNet-18 size (issue 5).

    .venv/bin/python bench/bench_sketch.py [--d 11173962] [--workers 16] [--rows 10] [--cols 100000]
                                           [--k 50000] [--device cpu|cuda] [--repeats 3]

Times, median of ``repeats`` after one warm-up:
  build     the hash tables (once per run)
  sketch_n  every worker's table, batched: x [n, d] -> [n, r, c]
  sketch_1  one table of the sum (what the server needs, by linearity)
  unsketch  median estimates of all d coordinates + top-k (P k candidates)
  unsketch_scaled  the same with SketchedAMSGrad-GA's 1/sqrt(v_hat) scaling
"""
from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

import torch

import _report  # bench/_report.py (scripts run from bench/)

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from algorithms.sketch import CountSketch  # noqa: E402


def timed(fn, repeats, sync):
    fn()
    sync()
    ts = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        sync()
        ts.append(time.perf_counter() - t)
    return sorted(ts)[len(ts) // 2]


def main(argv=None):
    p = argparse.ArgumentParser()
    p.add_argument("--d", type=int, default=11_173_962)
    p.add_argument("--workers", type=int, default=16)
    p.add_argument("--rows", type=int, default=10)
    p.add_argument("--cols", type=int, default=100_000)
    p.add_argument("--k", type=int, default=50_000)
    p.add_argument("--P", type=int, default=8)
    p.add_argument("--device", default="cpu")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--json", help="write the figures here")
    a = p.parse_args(argv)
    load_before = os.getloadavg()
    dev = torch.device("cuda" if a.device == "auto" and torch.cuda.is_available() else a.device)
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    t = time.perf_counter()
    cs = CountSketch(a.d, a.rows, a.cols, seed=0, device=dev)
    build = time.perf_counter() - t
    x = torch.randn(a.workers, a.d, generator=torch.Generator().manual_seed(0)).to(dev)
    table = cs.sketch(x.sum(0))
    v = torch.rand(a.d, generator=torch.Generator().manual_seed(1)).to(dev) + 0.1
    res = {
        "sketch_n": timed(lambda: cs.sketch(x), a.repeats, sync),
        "sketch_1": timed(lambda: cs.sketch(x.sum(0)), a.repeats, sync),
        "unsketch": timed(lambda: cs.heavy_hitters(table, a.P * a.k), a.repeats, sync),
        "unsketch_scaled": timed(lambda: cs.heavy_hitters(table, a.P * a.k, scale=v.sqrt()), a.repeats, sync),
    }
    print(f"d = {a.d:,}, n = {a.workers}, sketch {a.rows} x {a.cols:,} ({cs.nbytes / 1e6:.1f} MB), "
          f"P k = {a.P * a.k:,}, device {dev}, torch {torch.__version__}, threads {torch.get_num_threads()}, "
          f"{platform.machine()}")
    print(f"| step | host s |\n| --- | ---: |\n| build hash tables (once) | {build:.2f} |")
    for name, s in res.items():
        print(f"| {name} | {s:.3f} |")
    if a.json:
        what = {"sketch_n": "every worker's table, batched: [n, d] -> [n, r, c]",
                "sketch_1": "one table of the sum (the server's, by linearity)",
                "unsketch": "median estimates of all d coordinates + top-(P k)",
                "unsketch_scaled": "the same with SketchedAMSGrad-GA's 1 / sqrt(v_hat) scaling"}
        _report.write("sketch", {"d": a.d, "n": a.workers, "rows": a.rows, "cols": a.cols, "k": a.k, "P": a.P,
                                 "build_s": build, "median_s": res}, path=a.json, load_before=load_before,
                      title="Sketching (issue 5)",
                      command=f"cd bench && ../.venv/bin/python bench_sketch.py --d {a.d} --workers {a.workers} "
                              f"--rows {a.rows} --cols {a.cols} --k {a.k} --P {a.P} --repeats {a.repeats} "
                              "--json results/sketch.json",
                      about=f"Host time to sketch and unsketch at ResNet-18 size: d = {a.d:,}, n = {a.workers} "
                            f"workers, a count sketch of {a.rows} x {a.cols:,} ({cs.nbytes / 1e6:.1f} MB), P k = "
                            f"{a.P * a.k:,} candidates, device {dev}; median of the repeats after one warm-up.",
                      tables=[_report.table("", ["step", "host s"],
                                            [["build the hash tables (once per run)", f"{build:.2f}"]] +
                                            [[f"{k}: {what[k]}", f"{v:.3f}"] for k, v in res.items()])])


if __name__ == "__main__":
    main()
