"""Compression cost per round for every registered compressor (issue 4).

    .venv/bin/python bench/bench_compressors.py [--workers 32] [--d 407050] [--repeats 5]

For x [n, d] (float32, random normal) and each compressor in the registry, the
host time of compress + decompress, and of the error-feedback step around it,
against the memory-bandwidth floor: one pass over the [n, d] tensor
(``x.clone()``, i.e. read + write of 4 n d bytes, timed the same way).
Median of ``repeats`` after one warm-up call.
"""
from __future__ import annotations

import argparse
import json
import platform
import time

import torch

import algorithms
from algorithms.base import Context
from algorithms.compressors import ErrorFeedback
from sim.learn.models import Block
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


def main(argv=None) -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--workers", type=int, default=32)
    p.add_argument("--d", type=int, default=407050)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--json")
    a = p.parse_args(argv)
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
    floor = median_time(lambda: x.clone(), a.repeats)
    rows = []
    for kind in algorithms.COMPRESSORS.names():
        comp = algorithms.COMPRESSORS[kind](**EXAMPLES.get(kind, {})).build(ctx)
        t_c = median_time(lambda: comp.decompress(comp.compress(x, streams=streams, round=1)), a.repeats)
        ef = ErrorFeedback(comp)
        t_ef = median_time(lambda: ef.step(x, e, streams=streams, round=1), a.repeats)
        nbytes = comp.compress(x, streams=streams, round=1).nbytes.float().mean().item()
        rows.append({"compressor": kind, "setting": EXAMPLES.get(kind, {}), "compress_ms": 1e3 * t_c,
                     "ef_step_ms": 1e3 * t_ef, "x_floor": t_c / floor, "bytes_per_worker": nbytes,
                     "ratio_vs_dense": 4 * d / nbytes})
    print(f"n = {n}, d = {d}, torch {torch.__version__}, threads {torch.get_num_threads()}, "
          f"{platform.processor() or platform.machine()}")
    print(f"memory floor (one pass over [n, d], clone): {1e3 * floor:.2f} ms")
    print("| compressor | setting | compress+decompress ms | EF step ms | x floor | bytes/worker | x smaller than dense |")
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: |")
    for r in rows:
        print(f"| {r['compressor']} | {r['setting']} | {r['compress_ms']:.1f} | {r['ef_step_ms']:.1f} | "
              f"{r['x_floor']:.1f} | {r['bytes_per_worker']:.0f} | {r['ratio_vs_dense']:.1f} |")
    if a.json:
        with open(a.json, "w") as fh:
            json.dump({"n": n, "d": d, "floor_ms": 1e3 * floor, "rows": rows}, fh, indent=1, default=str)


if __name__ == "__main__":
    main()
