"""Memory-budget benchmark (issue 15, goal 6): peak memory and host time per
round of a synchronous top-k EF round, unchunked and in chunks of workers
under ``compute.memory_budget`` (sim/learn/chunked.py).

The round: ResNet-18 (d = 11,172,810; the 1-channel variant on MNIST-5k,
embedded), ``--workers`` workers with ``--batch`` samples each, top-k 1% with
error feedback (``topk_ef_sgd``), on the CPU.  Each configuration runs in a
fresh process (so its peak RSS is its own): it builds the world, runs one
warm-up round, then times ``--rounds`` rounds (``--repeats`` processes of each
configuration, interleaved; the best and the median over all their rounds) of the engine's plan + update
(gradients, compression, the server's step; no network simulation), and
reports the peak resident set (getrusage ru_maxrss), the resident set before
the first round (Python, torch, the data, the model) and the sha256 of the
final parameters.  The chunked float32 run must end with the unchunked run's
parameters, bit for bit (checked).  Configurations:

  unchunked   no budget (the round holds every worker's [d] tensors at once)
  chunked     compute.memory_budget = --budget, float32 state
  bf16        the same budget, compute.state_dtype: bfloat16 (different results, by design)

  disk        the same budget, compute.state_store: disk (the state and the
              round's uploads in files, sim/learn/rowstore.py); float32, so the
              unchunked bits (checked)

The issue's scale, n = 1000 workers (44.7 GB of error-feedback state alone),
does not fit this 24 GiB machine in memory: ``--configs disk --name
memory_scale --workers 1000 --batch 4`` runs it with the state on disk
(batch 4: MNIST-5k gives each of 1000 iid workers 5 samples).

    .venv/bin/python bench/bench_memory.py [--workers 16] [--batch 8] [--rounds 5] [--repeats 2] [--budget "4 GiB"]
        [--configs unchunked chunked bf16 disk] [--state-dir DIR] [--name memory] [--json OUT]
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from sim.alloc import resident_bytes, reuse_freed_memory  # noqa: E402 (imports no torch)

CONFIGS = {"unchunked": [], "chunked": ["compute.memory_budget={budget}"],
           "bf16": ["compute.memory_budget={budget}", "compute.state_dtype=bfloat16"],
           "disk": ["compute.memory_budget={budget}", "compute.state_store=disk", "compute.state_dir={state_dir}"]}


def child(args) -> dict:
    reuse_freed_memory()                       # as run_sim.py does: before torch is imported (sim/alloc.py)
    import torch
    import algorithms
    from sim.engine import Trainer, build_world
    from sim.study.config import load_scenario
    over = [f"workers={args.workers}", f"batch_size={args.batch}", "data.partition={kind: iid}",
            "model={kind: resnet18}", "device=cpu"] + [o.format(budget=args.budget, state_dir=args.state_dir) for o in CONFIGS[args.child]]
    scn = load_scenario(ROOT / "scenarios" / "quickstart.yaml", over)
    world = build_world(scn, 0)
    cfg = algorithms.ALGORITHMS["topk_ef_sgd"](name="topk-ef", lr=0.05, ratio=0.01)
    before = resident_bytes()
    tr = Trainer(world, cfg)

    class Sizes:                                # what the protocol would be asked (one server)
        bounds = [(0, world.model.d)]

        def sizes(self, payload):
            return [[int(b)] for b in payload.nbytes.tolist()]
    tr.proto = Sizes()
    trace = []                                  # [round, first worker of the chunk, RSS bytes] after each chunk
    if tr.chunked is not None:
        encode, t_now = tr.chunked.encode, [0]

        def traced(a, b, *rest):
            out = encode(a, b, *rest)
            trace.append([t_now[0], a, resident_bytes()])
            return out
        tr.chunked.encode = traced
    everyone = [True] * world.n
    times = []
    for t in range(args.rounds + 1):
        if tr.chunked is not None:
            t_now[0] = t
        t0 = time.perf_counter()
        assert tr.plan(t, everyone) is not None
        tr.update(t, everyone)
        times.append(time.perf_counter() - t0)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return {"config": args.child, "d": world.model.d, "workers": world.n, "batch": args.batch,
            "chunks": None if tr.chunked is None else tr.chunked.chunks(), "round_s": times[1:],
            "warmup_s": times[0], "peak_rss_bytes": peak, "rss_before_trainer_bytes": before,
            "theta_sha256": hashlib.sha256(tr.theta.numpy().tobytes()).hexdigest(),
            "torch_threads": torch.get_num_threads(), "rss_after_chunks": trace}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--workers", type=int, default=16)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--budget", default="4 GiB")
    p.add_argument("--repeats", type=int, default=2, help="runs of each configuration, interleaved")
    p.add_argument("--state-dir", default=tempfile.gettempdir(), help="folder of the disk store (compute.state_dir)")
    p.add_argument("--configs", nargs="+", choices=sorted(CONFIGS), default=list(CONFIGS))
    p.add_argument("--name", default="memory", help="the result's name (bench/results/NAME.json)")
    p.add_argument("--json", default=None)
    p.add_argument("--child", choices=sorted(CONFIGS), help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.child:
        print(json.dumps(child(a)))
        return 0
    import _report
    from sim.units import parse
    load_before = os.getloadavg()
    runs = {}
    for rep in range(a.repeats):              # interleaved: a slow spell of the machine hits every configuration
        for name in a.configs:
            cmd = [sys.executable, __file__, "--child", name, "--workers", str(a.workers), "--batch", str(a.batch),
                   "--rounds", str(a.rounds), "--budget", a.budget, "--state-dir", a.state_dir]
            out = subprocess.run(cmd, capture_output=True, text=True, check=True)
            r = json.loads(out.stdout.strip().splitlines()[-1])
            if name in runs:                  # the rounds of every repetition; the peak is the largest
                assert r["theta_sha256"] == runs[name]["theta_sha256"], f"{name}: a repetition differs"
                r["round_s"] = runs[name]["round_s"] + r["round_s"]
                r["peak_rss_bytes"] = max(r["peak_rss_bytes"], runs[name]["peak_rss_bytes"])
            runs[name] = r
            chunks = "-" if r["chunks"] is None else len(r["chunks"])
            print(f"{name:10s} chunks {chunks}  peak RSS {r['peak_rss_bytes'] / 2**30:.2f} GiB "
                f"(before the trainer {r['rss_before_trainer_bytes'] / 2**30:.2f} GiB)  "
                f"round {min(r['round_s']):.2f} s (best of {len(r['round_s'])}), "
                f"median {statistics.median(r['round_s']):.2f} s, first round {r['warmup_s']:.2f} s", flush=True)
    same = [k for k in ("chunked", "disk") if k in runs and "unchunked" in runs]
    for k in same:                            # float32 in chunks, in memory or on disk: the unchunked bits
        assert runs[k]["theta_sha256"] == runs["unchunked"]["theta_sha256"], f"{k} run differs from unchunked"
    if "chunked" in runs and "disk" in runs:
        assert runs["disk"]["theta_sha256"] == runs["chunked"]["theta_sha256"], "disk run differs from chunked"
    budget = parse(a.budget, "size")
    base = statistics.median(runs["unchunked"]["round_s"]) if "unchunked" in runs else None
    rows = []
    for name, r in runs.items():
        rows.append([name, "-" if r["chunks"] is None else str(len(r["chunks"])),
                     f"{r['peak_rss_bytes'] / 2**30:.2f}", f"{r['rss_before_trainer_bytes'] / 2**30:.2f}",
                     f"{r['warmup_s']:.2f}", f"{min(r['round_s']):.2f}", f"{statistics.median(r['round_s']):.2f}",
                     "-" if base is None else f"{statistics.median(r['round_s']) / base:.2f}x"])
    d = next(iter(runs.values()))["d"]
    state_gb = 4 * d * a.workers / 1e9
    data = {"workers": a.workers, "batch": a.batch, "rounds": a.rounds, "repeats": a.repeats, "budget": a.budget,
            "budget_bytes": budget, "state_dir": a.state_dir, "runs": runs}
    goals = [_report.goal(f"{k} peak RSS / budget ({a.budget})", runs[k]["peak_rss_bytes"] / budget, "<=", 1.1)
             for k in ("chunked", "disk") if k in runs]
    if base is not None and "chunked" in runs:
        goals.append(_report.goal("chunked / unchunked time per round (medians)",
                                  statistics.median(runs["chunked"]["round_s"]) / base, "<=", 1.5))
    notes = []
    if "unchunked" not in runs:
        notes.append(f"n = {a.workers} x d = {d:,}: the error-feedback state alone is {state_gb:.1f} GB, "
                     "more than this machine's memory, so only the disk store runs (no unchunked run to time "
                     "against); it is checked bit for bit against the unchunked run at the small scale.")
    notes.append("disk: compute.state_store: disk, the state and the round's uploads in files under "
                 f"{a.state_dir} (read and written chunk by chunk; sim/learn/rowstore.py).")
    path = _report.write(
        a.name, data, title=("Memory budget: a top-k EF round in chunks of workers" if a.name == "memory" else
                             f"Memory budget at n = {a.workers}: the state on disk"),
        command=f".venv/bin/python bench/bench_memory.py --workers {a.workers} --batch {a.batch} "
                f"--rounds {a.rounds} --repeats {a.repeats} --budget \"{a.budget}\" --configs {' '.join(a.configs)}"
                + ("" if a.name == "memory" else f" --name {a.name}"),
        about=f"ResNet-18 (d = {d:,}) on MNIST-5k, {a.workers} workers x {a.batch} samples, topk_ef_sgd 1%, CPU; "
              "each configuration in its own process; peak RSS is the whole process (Python, torch, data "
              "included); the first round (with the one-time costs) is reported apart and the rounds after it "
              "are timed. The float32 runs in chunks (in memory or on disk) end with the unchunked run's "
              "parameters, bit for bit (checked where the unchunked run fits).",
        load_before=load_before,
        tables=[_report.table("per configuration", ["run", "chunks", "peak RSS (GiB)", "RSS before the trainer (GiB)",
                                                    "first round (s)", "s per round (best)", "median",
                                                    "median vs unchunked"], rows)],
        goals=goals, notes=notes, path=a.json)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
