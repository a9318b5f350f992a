"""Decentralized training benchmark (issue 14): host time per round of D-PSGD
at n = 64 on the MLP, and the share of it the mixing step (W @ X) takes.

The scenario: MNIST-5k, MLP 784-512-10 (d = 407,050), batch 32 per worker,
the quickstart's 1 Gbps star, n = 64 workers, ``dpsgd`` over a ring, a 2-D
torus (8 x 8), the exponential graph (symmetrized) and the complete graph.
Host time per round: perf_counter between the completions of round 1 and
round R (``on_round``), over R - 1 rounds, so the evaluations at rounds 0 and
R are left out; best of ``--repeat``.  The mixing step: ``alg.mix @ Y`` for
Y [64, d], timed alone in the same process (median of 20), with the kernel
the algorithm uses (CSR sparse, or dense for graphs with more than 1/8
of the entries non-zero: topologies/gossip.py sparse_rows) and, for
comparison, the other one.

    .venv/bin/python bench/bench_gossip.py [--rounds 8] [--repeat 2] [--json OUT]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import _report  # bench/_report.py (scripts run from bench/)

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

GRAPHS = {"ring": {"kind": "ring"}, "torus": {"kind": "torus"}, "exponential": {"kind": "exponential"},
          "complete": {"kind": "complete"}}


def _median_s(f, reps: int = 20) -> float:
    f()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        f()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def bench(n: int, rounds: int, repeat: int) -> list[dict]:
    import torch

    import algorithms
    from algorithms.base import Context
    from sim.alloc import reuse_freed_memory
    from sim.engine import build_world, run_algorithm
    from sim.study.config import load_scenario
    reuse_freed_memory()            # as run_sim.py does for every command
    scn = load_scenario(ROOT / "scenarios" / "quickstart.yaml",
                        [f"workers={n}", "model.hidden=[512]", "data.partition={kind: iid}",
                         f"stop.max_rounds={rounds}", f"eval_every={rounds}", "stop.on_target=false",
                         "stop.max_sim_time=null"])
    world = build_world(scn, 0)
    rows = []
    for name, graph in GRAPHS.items():
        cfg = algorithms.ALGORITHMS["dpsgd"](name=f"dpsgd-{name}", lr=0.1, graph=graph)
        best = float("inf")
        for _ in range(repeat):
            stamps: dict[int, float] = {}
            run_algorithm(world, cfg, on_round=lambda r, t: stamps.setdefault(r, time.perf_counter()))
            best = min(best, (stamps[rounds] - stamps[1]) / (rounds - 1))
        alg = cfg.build(Context(d=world.model.d, n=n, blocks=world.model.blocks, device=world.device))
        y = torch.randn(n, world.model.d)
        used = _median_s(lambda: alg.mix @ y)
        other = alg.mix.to_dense() if alg.mix.layout == torch.sparse_csr else alg.mix.to_sparse_csr()
        alt = _median_s(lambda: other @ y)
        rows.append({"graph": name, "n": n, "d": world.model.d, "rounds": rounds,
                     "messages_per_round": sum(len(s) for s in alg.sends),
                     "host_s_per_round": best, "mixing_s": used,
                     "mixing_share": used / best, "kernel": "csr" if alg.mix.layout == torch.sparse_csr else "dense",
                     "other_kernel_s": alt, "torch_threads": torch.get_num_threads()})
        r = rows[-1]
        print(f"{name:12s}: {1e3 * best:8.1f} ms per round, mixing {1e3 * used:6.1f} ms ({100 * r['mixing_share']:.1f}%, "
              f"{r['kernel']}; the other kernel {1e3 * alt:.1f} ms)", file=sys.stderr)
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=8)
    p.add_argument("--repeat", type=int, default=2)
    p.add_argument("--workers", type=int, default=64)
    p.add_argument("--json")
    a = p.parse_args()
    load_before = os.getloadavg()
    rows = bench(a.workers, a.rounds, a.repeat)
    print("| graph | messages / round | host ms per round | mixing ms | mixing share | kernel | other kernel ms |")
    print("| --- | ---: | ---: | ---: | ---: | --- | ---: |")
    for r in rows:
        print(f"| {r['graph']} | {r['messages_per_round']} | {1e3 * r['host_s_per_round']:.1f} | "
              f"{1e3 * r['mixing_s']:.1f} | {100 * r['mixing_share']:.1f}% | {r['kernel']} | "
              f"{1e3 * r['other_kernel_s']:.1f} |")
    if a.json:
        _report.write("gossip", {"rows": rows}, path=a.json, load_before=load_before,
                      title="Decentralized training (issue 14)",
                      command=f"cd bench && ../.venv/bin/python bench_gossip.py --rounds {a.rounds} --repeat "
                              f"{a.repeat} --workers {a.workers} --json results/gossip.json",
                      about=f"Host time per round of D-PSGD at n = {a.workers} on the MLP 784-512-10 (d = 407,050, "
                            "MNIST-5k, batch 32), over a ring, a 2-D torus, the (symmetrized) exponential graph "
                            "and the complete graph, and the share of it the mixing step W @ X takes (timed alone "
                            "in the same process, median of 20) with the kernel the algorithm picks (CSR, or "
                            "dense above 1/8 non-zeros) and the other kernel for comparison. Rounds between the "
                            "first and the last completion, evaluations left out; best of the repeats.",
                      tables=[_report.table("", ["graph", "messages / round", "host ms per round", "mixing ms",
                                                 "mixing share", "kernel", "other kernel ms"],
                                            [[r["graph"], r["messages_per_round"], f"{1e3 * r['host_s_per_round']:.1f}",
                                              f"{1e3 * r['mixing_s']:.1f}", f"{100 * r['mixing_share']:.1f}%",
                                              r["kernel"], f"{1e3 * r['other_kernel_s']:.1f}"] for r in rows])],
                      goals=[_report.goal(f"mixing share of a round, {r['graph']}", 100 * r["mixing_share"], "<=",
                                          10, "%") for r in rows])

if __name__ == "__main__":
    main()
