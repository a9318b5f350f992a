"""Compression cost per round for every registered compressor (issue 4).

    .venv/bin/python bench/bench_compressors.py [--workers 32] [--d 407050] [--repeats 5]
        [--threads T] [--json OUT]

For x [n, d] (float32, random normal) and each compressor in the registry, the
host time of compress + decompress, and of the error-feedback step around it,
against the memory-bandwidth floor: one pass over the [n, d] tensor
(``x.clone()``, i.e. read + write of 4 n d bytes, timed the same way).
Median of ``repeats`` after one warm-up call.

``x_floor`` (issue 15's measure) is the median over the repetitions of
(compress + decompress time) / (one-pass time), the two timed back to back in
each repetition, so that a shared, loaded machine moves both alike.  The JSON
(``--json``) has the machine (bench/_machine.py's CPU model, cores, torch
threads, the load average before and after) and one row per compressor.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

import _report
from _machine import cpu_model  # bench/_machine.py (scripts run from bench/)

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import algorithms
from algorithms.base import Context
from algorithms.compressors import ErrorFeedback
from sim.learn.models import Block
from sim.alloc import reuse_freed_memory
from sim.learn.rng import WorkerStreams

EXAMPLES = {  # a setting per kind at about 1% density or 1 bit per entry
    "none": {}, "topk": {"ratio": 0.01}, "randomk": {"ratio": 0.01}, "threshold": {"tau": 2.58},
    "block_sign": {}, "scaled_sign": {}, "sign": {}, "qsgd": {"s": 1}, "mvss": {"rho": 0.01},
}


def median_time(fn, repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    times.sort()
    return times[len(times) // 2]


def paired_ratio(fn, floor_fn, repeats: int) -> tuple[float, float, float]:
    """(median fn time, median floor time, median of fn / floor), the two timed
    back to back in every repetition, after one warm-up call of each."""
    fn(), floor_fn()
    tf, tc, ratios = [], [], []
    for _ in range(repeats):
        t = time.perf_counter()
        floor_fn()
        t1 = time.perf_counter()
        fn()
        t2 = time.perf_counter()
        tf.append(t1 - t), tc.append(t2 - t1), ratios.append((t2 - t1) / (t1 - t))
    return statistics.median(tc), statistics.median(tf), statistics.median(ratios)


def main(argv=None) -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--workers", type=int, default=32)
    p.add_argument("--d", type=int, default=407050)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    p.add_argument("--json")
    p.add_argument("--no-malloc-reuse", action="store_true",
                   help="leave glibc's default (every [n, d] tensor a fresh mmap, faulted in page by page)")
    a = p.parse_args(argv)
    # As run_sim.py does for every command (sim/alloc.py).  Without it the floor, a clone of a fresh
    # 52 MB tensor, is mostly page faults (22 ms against 6 ms at memory speed on the 2-core machine),
    # which made every ratio look 3-4x better than against a real memory pass.
    reused = False if a.no_malloc_reuse else reuse_freed_memory()
    if a.threads:
        torch.set_num_threads(a.threads)
    load_before = os.getloadavg()
    n, d = a.workers, a.d
    # the MLP 784-512-10 layout, so per-layer compressors see real layers when d = 407,050
    sizes = [784 * 512, 512, 512 * 10, 10] if d == 407050 else [d]
    blocks, s = [], 0
    for i, z in enumerate(sizes):
        blocks.append(Block(f"b{i}", s, s + z, (z,)))
        s += z
    ctx = Context(d=d, n=n, blocks=tuple(blocks), device=torch.device("cpu"))
    x = torch.randn(n, d, generator=torch.Generator().manual_seed(0))
    e = torch.zeros_like(x)
    streams = WorkerStreams(0, n)
    rows = []
    for kind in algorithms.COMPRESSORS.names():
        comp = algorithms.COMPRESSORS[kind](**EXAMPLES.get(kind, {})).build(ctx)
        t_c, t_f, ratio = paired_ratio(lambda: comp.decompress(comp.compress(x, streams=streams, round=1)),
                                       lambda: x.clone(), a.repeats)
        ef = ErrorFeedback(comp)
        t_ef = median_time(lambda: ef.step(x, e, streams=streams, round=1), a.repeats)
        nbytes = comp.compress(x, streams=streams, round=1).nbytes.float().mean().item()
        rows.append({"compressor": kind, "setting": EXAMPLES.get(kind, {}), "compress_ms": 1e3 * t_c,
                     "ef_step_ms": 1e3 * t_ef, "x_floor": ratio, "paired_floor_ms": 1e3 * t_f, "bytes_per_worker": nbytes,
                     "ratio_vs_dense": 4 * d / nbytes})
    floor = statistics.median(r["paired_floor_ms"] for r in rows) / 1e3   # the clones timed in the pairs
    load_after = os.getloadavg()
    machine = {"cpu": cpu_model(), "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
               "torch": torch.__version__, "python": platform.python_version(),
               "load_before": load_before, "load_after": load_after}
    print(f"n = {n}, d = {d}, torch {torch.__version__}, threads {torch.get_num_threads()}, "
          f"{machine['cpu']}, {machine['cores']} cores, load {load_before[0]:.2f} -> {load_after[0]:.2f}")
    print(f"memory floor (one pass over [n, d], clone): {1e3 * floor:.2f} ms")
    print("| compressor | setting | compress+decompress ms | EF step ms | x floor | bytes/worker | x smaller than dense |")
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: |")
    for r in rows:
        print(f"| {r['compressor']} | {r['setting']} | {r['compress_ms']:.1f} | {r['ef_step_ms']:.1f} | "
              f"{r['x_floor']:.1f} | {r['bytes_per_worker']:.0f} | {r['ratio_vs_dense']:.1f} |")
    if a.json:
        goals = {"topk": 2, "sign": 2, "scaled_sign": 2, "block_sign": 2, "randomk": 3, "qsgd": 3, "mvss": 3}
        _report.write("compressors", {"n": n, "d": d, "repeats": a.repeats, "floor_ms": 1e3 * floor,
                                      "malloc_reuse": reused, "rows": rows},
                      path=a.json, load_before=load_before, title="Compressors (issues 4 and 15)",
                      command=f"cd bench && ../.venv/bin/python bench_compressors.py --workers {n} --d {d} "
                              f"--repeats {a.repeats}{'' if reused else ' --no-malloc-reuse'} "
                              f"--json results/compressors.json",
                      about=f"Host time of compress + decompress of every registered compressor over an [n, d] "
                            f"= [{n}, {d:,}] float32 batch of gradients (the MLP 784-512-10 layer layout when "
                            "d = 407,050, so per-layer compressors see real layers), against the memory floor: "
                            "one pass over [n, d] (a clone), timed in pairs with it (median of the per-pair "
                            "ratios). The EF step is error feedback around the compressor (p = g + e, C(p), "
                            "e <- p - D(C(p))). Bytes per worker are the compressor's own wire formula. "
                            + ("Freed memory is reused (glibc mallopt, sim/alloc.py), as run_sim.py sets it, so "
                               "the clone runs at memory speed rather than faulting in fresh pages."
                               if reused else "glibc's default allocation (--no-malloc-reuse): every [n, d] "
                               "tensor is a fresh mmap, so the floor includes its page faults."),
                      tables=[_report.table(f"Memory floor (one clone of [n, d], median over the pairs): {1e3 * floor:.2f} ms.",
                                            ["compressor", "setting", "compress + decompress ms", "EF step ms",
                                             "x floor", "bytes / worker", "x smaller than dense"],
                                            [[r["compressor"], json.dumps(r["setting"]) if r["setting"] else "",
                                              f"{r['compress_ms']:.1f}", f"{r['ef_step_ms']:.1f}",
                                              f"{r['x_floor']:.1f}", f"{r['bytes_per_worker']:,.0f}",
                                              f"{r['ratio_vs_dense']:.1f}"] for r in rows])],
                      goals=[_report.goal(f"{r['compressor']}: compress + decompress / one pass", r["x_floor"],
                                          "<=", goals[r["compressor"]]) for r in rows if r["compressor"] in goals])

if __name__ == "__main__":
    main()
