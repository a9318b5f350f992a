"""Run every benchmark one after the other and regenerate docs/performance.md (``make bench``).

    .venv/bin/python bench/run_all.py [--only NAME ...] [--list]

Each benchmark runs in its own process from bench/, writes
bench/results/<name>.json (bench/_report.py) and nothing else; then
bench/render.py rebuilds docs/performance.md from every result file, so the
document always describes what was measured, with the machine and the load.
Run it on a quiet machine: the load average before and after each benchmark is
recorded in its section, and a warning is printed when the 1-minute load is
above 0.5 at the start of one (another job shares the cores).  Benchmarks whose
optional dependency is missing (``flower``: flwr, in the venv ``make bench-flower``
creates, as flwr pins its own ray) say so and are skipped; the
previous result file, if any, is kept and still rendered with its own date.
"""
from __future__ import annotations

import argparse
import importlib.util
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
# name -> (script and arguments, optional module it needs); the --json path is added
BENCHES: dict[str, tuple[list[str], str | None]] = {
    "gradients": (["bench_gradients.py", "--malloc-reuse"], None),
    "compressors": (["bench_compressors.py"], None),
    "sketch": (["bench_sketch.py"], None),
    "network": (["bench_network.py"], None),
    "replay": (["bench_replay.py", "--algorithm", "sgd", "topk-ef", "comp-ams", "--grid", "10",
                "--full-points", "10"], None),
    "async": (["bench_async.py"], None),
    "gossip": (["bench_gossip.py"], None),
    "startup": (["bench_startup.py"], None),
    "sweep_threads": (["bench_sweep_threads.py"], None),
    "memory": (["bench_memory.py", "--workers", "16", "--batch", "8", "--rounds", "5", "--repeats", "2",
                "--budget", "4 GiB", "--name", "memory"], None),
    # the scale, n = 1000 x ResNet-18 (44.7 GB of state): only on disk here; about 12 minutes
    "memory_scale": (["bench_memory.py", "--workers", "1000", "--batch", "4", "--rounds", "1", "--repeats", "1",
                      "--budget", "4 GiB", "--configs", "disk", "--name", "memory_scale"], None),
    # flwr pins its own ray: it runs from a venv of its own (make bench-flower), see --flower-python
    "flower": (["bench_flower.py", "--sizes", "10", "32", "100", "1000", "--rounds", "10", "--flower-rounds", "4",
                "--rounds-1000", "2", "--repeats", "2"], "flwr"),
}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--only", nargs="+", choices=sorted(BENCHES), metavar="NAME")
    p.add_argument("--list", action="store_true", help="print the benchmarks and their commands")
    p.add_argument("--flower-python", default=str(HERE.parent / ".venv-flower" / "bin" / "python"),
                   help="the interpreter of the venv with flwr (make bench-flower creates .venv-flower)")
    p.add_argument("--quick", action="store_true", help="pass --quick to the benchmarks that have it (flower)")
    a = p.parse_args(argv)
    names = a.only or list(BENCHES)
    if a.list:
        for name in names:
            print(f"{name}: {' '.join(BENCHES[name][0])} --json results/{name}.json")
        return 0
    failed = []
    for name in names:
        args, needs = BENCHES[name]
        python = sys.executable
        if name == "flower":
            python = a.flower_python
            if not Path(python).exists() or subprocess.run([python, "-c", "import flwr"],
                                                          capture_output=True).returncode:
                print(f"bench flower: skipped, no flwr at {python} (make bench-flower creates its venv)",
                      file=sys.stderr)
                continue
            if a.quick:
                args = ["bench_flower.py", "--quick"]
        elif needs and importlib.util.find_spec(needs) is None:
            print(f"bench {name}: skipped, `{needs}` is not installed", file=sys.stderr)
            continue
        load = os.getloadavg()[0]
        if load > 0.5:
            print(f"bench {name}: warning, load average {load:.2f} at the start: another job shares the cores "
                  "(the section will say so)", file=sys.stderr)
        t0 = time.perf_counter()
        print(f"bench {name}: {' '.join(args)}", file=sys.stderr, flush=True)
        rc = subprocess.run([python, *args, "--json", str(HERE / "results" / f"{name}.json")],
                            cwd=HERE).returncode
        print(f"bench {name}: exit {rc} after {time.perf_counter() - t0:.0f} s", file=sys.stderr, flush=True)
        if rc:
            failed.append(name)
    rc = subprocess.run([sys.executable, "render.py"], cwd=HERE).returncode
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed or rc else 0


if __name__ == "__main__":
    sys.exit(main())
