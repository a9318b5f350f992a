"""Event-driven engine benchmark (issue 13): host time per applied gradient,
asynchronous SGD (sim/eventsim.py) against the synchronous engine, the mean
width of the lazy batched gradient calls, and peak memory.

The scenario: MNIST-5k, MLP 784-512-10, batch 32 per worker, a 1 Gbps / 5 ms
star, fixed 10 ms compute steps with per-worker speeds spread over
[0.5, 1] (so arrivals interleave), n = 32 and n = 100 workers.  ``sync`` is
``sgd`` for R rounds (R n gradients), ``async`` is ``async_sgd`` for the same
R n gradients (stop.max_rounds counts n gradients each for event-driven
algorithms).  No evaluation in between (eval_every = R).  Every
(engine, n) runs in its own fresh process (``--one``), so that its peak
resident memory (ru_maxrss) is its own; host time is perf_counter around
``run_algorithm`` only (world building excluded), best of ``--repeat``,
with freed memory reused as ``run_sim.py`` sets it (sim/alloc.py).

    .venv/bin/python bench/bench_async.py [--rounds 30] [--repeat 3] [--json OUT]
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import _report  # bench/_report.py (scripts run from bench/)

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def overrides(n: int, rounds: int) -> list[str]:
    speeds = [round(0.5 + 0.5 * i / max(1, n - 1), 4) for i in range(n)]
    return [f"workers={n}", "model.hidden=[512]", "data.partition={kind: iid}",
            f"compute={{kind: fixed, step_time: 10 ms, speed: {speeds}}}", f"stop.max_rounds={rounds}",
            f"eval_every={rounds}", "stop.on_target=false", "stop.max_sim_time=null"]


def _network_seconds(run) -> dict:
    """Host seconds inside the network model's leaf methods during ``run()``, and in all."""
    from sim.net.network import Network
    spent = [0.0]
    real = {m: getattr(Network, m) for m in ("send", "_reschedule", "_advance")}

    def timed(fn):
        def wrapper(self, *a, **k):
            t0 = time.perf_counter()
            try:
                return fn(self, *a, **k)
            finally:
                spent[0] += time.perf_counter() - t0
        return wrapper
    try:
        for m, fn in real.items():
            setattr(Network, m, timed(fn))
        t0 = time.perf_counter()
        run()
        total = time.perf_counter() - t0
    finally:
        for m, fn in real.items():
            setattr(Network, m, fn)
    return {"network": spent[0], "total": total}


def one(engine: str, n: int, rounds: int, repeat: int) -> dict:
    import torch

    import algorithms
    from sim.alloc import reuse_freed_memory
    from sim.study.config import load_scenario
    reuse_freed_memory()            # as run_sim.py does for every command
    from sim.engine import build_world, run_algorithm
    scn = load_scenario(ROOT / "scenarios" / "quickstart.yaml", overrides(n, rounds))
    world = build_world(scn, 0)
    cfg = algorithms.ALGORITHMS["sgd" if engine == "sync" else "async_sgd"](name=engine, lr=0.1)
    best, batch, sliced, evacuated = float("inf"), 0.0, 0, 0
    for _ in range(repeat):
        t0 = time.perf_counter()
        res = run_algorithm(world, cfg)
        best = min(best, time.perf_counter() - t0)
        batch = res.mean_batch
        sliced, evacuated = res.ring_batches, res.ring_evacuated
    # One more run with the network model's entry points timed (sim/net/network.py: send, the
    # rate recomputation, draining): its share of the host time, and what is left without it.
    # The headline figure above comes from the untimed runs; the timers cost ~1 us a call.
    net_s = _network_seconds(lambda: run_algorithm(world, cfg))
    grads = rounds * n
    return {"engine": engine, "n": n, "rounds": rounds, "gradients": grads, "host_s": best,
            "network_s": net_s["network"], "timed_total_s": net_s["total"],
            "network_share": net_s["network"] / net_s["total"],
            "rest_ms_per_gradient": 1e3 * best * (1 - net_s["network"] / net_s["total"]) / grads,
            "host_ms_per_gradient": 1e3 * best / grads, "mean_batch": batch if engine == "async" else n,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "torch_threads": torch.get_num_threads(),
            "ring_sliced_batches": sliced, "ring_evacuated": evacuated}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=30)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--json")
    p.add_argument("--one", nargs=2, metavar=("ENGINE", "N"), help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.one:
        print(json.dumps(one(a.one[0], int(a.one[1]), a.rounds, a.repeat)))
        return
    load_before = os.getloadavg()
    rows = []
    for n in (32, 100):
        for engine in ("sync", "async"):
            out = subprocess.run([sys.executable, __file__, "--one", engine, str(n), "--rounds", str(a.rounds),
                                  "--repeat", str(a.repeat)], capture_output=True, text=True, check=True,
                                 cwd=Path(__file__).parent)
            rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
            r = rows[-1]
            print(f"n={n:4d} {engine:5s}: {r['host_ms_per_gradient']:.3f} ms per gradient, "
                  f"mean batch {r['mean_batch']:.1f}, peak RSS {r['peak_rss_mb']:.0f} MB", file=sys.stderr)
    def over(key):
        return {n: next(r for r in rows if r["n"] == n and r["engine"] == "async")[key] /
                next(r for r in rows if r["n"] == n and r["engine"] == "sync")[key] for n in (32, 100)}
    ratios = over("host_ms_per_gradient")
    rest = over("rest_ms_per_gradient")      # both engines without their network model's time
    print("| n | engine | host ms per gradient | mean batch width | peak RSS (MB) |")
    print("| ---: | --- | ---: | ---: | ---: |")
    for r in rows:
        print(f"| {r['n']} | {r['engine']} | {r['host_ms_per_gradient']:.3f} | {r['mean_batch']:.1f} | "
              f"{r['peak_rss_mb']:.0f} |")
    print("\nasync / sync host time per gradient: " + ", ".join(f"n = {n}: {v:.2f}x" for n, v in ratios.items()))
    print("without the network model's time: " + ", ".join(f"n = {n}: {v:.2f}x" for n, v in rest.items()))
    if a.json:
        _report.write("async", {"rows": rows, "async_over_sync": ratios, "async_over_sync_without_network": rest},
                      path=a.json, load_before=load_before,
                      title="Event-driven engine (issue 13)",
                      command=f"cd bench && ../.venv/bin/python bench_async.py --rounds {a.rounds} "
                              f"--repeat {a.repeat} --json results/async.json",
                      about="Host time per applied gradient of `async_sgd` (sim/eventsim.py) against `sgd` in "
                            "the synchronous engine, for the same number of gradients (R rounds x n): MNIST-5k, "
                            "MLP 784-512-10, batch 32, a 1 Gbps / 5 ms star, fixed 10 ms steps with worker "
                            "speeds spread over [0.5, 1] so that arrivals interleave. Each (engine, n) runs in "
                            "a fresh process, so its peak RSS is its own; best of the repeats; world building "
                            "excluded. The mean batch width is how many fixed gradients the lazy evaluation "
                            "computed per batched call; 'ring slices' counts the batches whose snapshots were a "
                            "slice of the version ring (sim/eventsim.py VersionRing), the others were stacked. "
                            "'network share' is the part of the host time spent in the network model (its send, "
                            "rate recomputation and draining, timed in one extra run), and 'without network' "
                            "the host time per gradient less that share: async / sync without it is what no "
                            "speed-up of the network model can go below.",
                      tables=[_report.table("", ["n", "engine", "host ms per gradient", "network share",
                                                 "without network, ms per gradient", "mean batch width",
                                                 "ring slices", "peak RSS (MB)"],
                                            [[r["n"], r["engine"], f"{r['host_ms_per_gradient']:.3f}",
                                              f"{100 * r['network_share']:.0f}%", f"{r['rest_ms_per_gradient']:.3f}",
                                              f"{r['mean_batch']:.1f}",
                                              str(r.get("ring_sliced_batches", "")) if r["engine"] == "async" else "",
                                              f"{r['peak_rss_mb']:.0f}"] for r in rows])],
                      notes=["async / sync host time per gradient without the network model's time: " +
                             ", ".join(f"n = {n}: {v:.2f}x" for n, v in rest.items())],
                      goals=[_report.goal(f"async / sync host time per gradient, n = {n}", v, "<=", 1.5)
                             for n, v in ratios.items()])

if __name__ == "__main__":
    main()
