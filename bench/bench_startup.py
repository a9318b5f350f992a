"""Start-up benchmark (issue 15): host wall time of ``import torch``, of
``run_sim.py validate scenarios/quickstart.yaml`` and of the demo
(``run_sim.py run scenarios/quickstart.yaml --out TMP --overwrite``, what
``make demo`` runs) against the simulation's own time, with a cold and a warm
start-up cache (sim/learn/cache.py).

Every measurement is a fresh subprocess, timed from outside (perf_counter
around ``subprocess.run``), best of ``--repeat`` (``--demo-repeat`` for the
demo).  "cold": ``COMMSIM_CACHE`` is a new empty folder for each run (the
embedded data set is parsed, the FLOP count counted); "warm": a folder filled
by one run beforehand.  The OS page cache is warm in both (the files were read
before).  The demo runs through a small wrapper (``--timed-run``) that calls
``run_sim.main`` with ``perf_counter`` around ``build_world`` (data, shards,
model, FLOP count), ``run_algorithm`` (the simulation: training and the SimPy
network) and ``plot_run``; it changes nothing in the results folder.

Goals: validate (warm) <= 1.5x ``import torch``; demo (warm) <= 2x its simulation.

    .venv/bin/python bench/bench_startup.py [--repeat 3] [--demo-repeat 2] [--json OUT] [--root DIR]

``--root DIR`` measures another checkout (e.g. an older commit exported to a
folder) with this script's method.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import _report


ROOT = Path(__file__).resolve().parents[1]
SCENARIO = "scenarios/quickstart.yaml"
MARK = "bench_startup:"
PACKAGES = ("run_sim.py", "sim", "algorithms", "topologies", "analysis")   # commsim's own code


def timed_run(argv: list[str]) -> int:
    """``run_sim.main(argv)`` with host time around its three parts; one line on stderr."""
    sys.path.insert(0, os.getcwd())
    t_start = time.perf_counter()
    import analysis.plots
    import run_sim
    import sim.engine
    import sim.study.runner

    spent = {"build_world_s": 0.0, "simulation_s": 0.0, "plots_s": 0.0}

    def timing(key, fn):
        def wrapped(*args, **kwargs):
            t0 = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                spent[key] += time.perf_counter() - t0
        return wrapped

    sim.engine.build_world = timing("build_world_s", sim.engine.build_world)            # run_sim imports it per call
    sim.study.runner.run_algorithm = timing("simulation_s", sim.study.runner.run_algorithm)
    analysis.plots.plot_run = timing("plots_s", analysis.plots.plot_run)                # runner imports it per call
    rc = run_sim.main(argv)
    spent["in_process_s"] = time.perf_counter() - t_start
    print(MARK + json.dumps(spent), file=sys.stderr)
    return rc


def wall(cmd: list[str], root: Path, cache: Path, extra_env: dict | None = None) -> tuple[float, str]:
    env = {**os.environ, "COMMSIM_CACHE": str(cache), **(extra_env or {})}
    t0 = time.perf_counter()
    out = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True)
    dt = time.perf_counter() - t0
    if out.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({out.returncode}):\n{out.stderr[-3000:]}")
    return dt, out.stderr


def best(runs: list[dict]) -> dict:
    return min(runs, key=lambda r: r["wall_s"])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--demo-repeat", type=int, default=2)
    p.add_argument("--json", help="write the results here (e.g. bench/startup_results.json)")
    p.add_argument("--root", type=Path, default=ROOT, help="the checkout to measure (default: this one)")
    p.add_argument("--timed-run", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.timed_run is not None:
        sys.exit(timed_run(a.timed_run))
    root = a.root.resolve()
    py = sys.executable
    load_before = os.getloadavg()
    rows: dict[str, dict] = {}
    with tempfile.TemporaryDirectory(prefix="bench-startup-") as tmp:
        tmp = Path(tmp)
        warm = tmp / "warm-cache"
        out = tmp / "out"

        def measure(name: str, cmd: list[str], repeat: int, cold: bool, timed: bool = False,
                    extra_env: dict | None = None) -> None:
            runs = []
            for i in range(repeat):
                cache = tmp / f"cold-{name}-{i}" if cold else warm
                dt, err = wall(cmd, root, cache, extra_env)
                run = {"wall_s": dt}
                if timed:
                    line = next(ln for ln in reversed(err.splitlines()) if ln.startswith(MARK))
                    run.update(json.loads(line[len(MARK):]))
                runs.append(run)
                print(f"{name} [{i + 1}/{repeat}]: {dt:.2f} s", file=sys.stderr)
            rows[name] = {**best(runs), "runs": [r["wall_s"] for r in runs], "repeat": repeat}

        validate = [py, str(root / "run_sim.py"), "validate", SCENARIO]
        demo = [py, str(Path(__file__).resolve()), "--timed-run", "run", SCENARIO, "--out", str(out),
                "--overwrite"]
        # Bytecode: an installed package has it (pip compiles on install) and a checkout writes it on
        # its first run, unless PYTHONDONTWRITEBYTECODE is set (as on the project's machines). So
        # it is compiled once here, and one row shows the cost without it (an empty pycache prefix).
        subprocess.run([py, "-m", "compileall", "-q", *[str(root / d) for d in PACKAGES if (root / d).exists()]],
                       check=True, capture_output=True)
        measure("import torch", [py, "-c", "import torch"], a.repeat, cold=False)
        measure("validate, cold cache", validate, a.repeat, cold=True)
        wall(validate, root, warm)                                   # fills the warm cache
        measure("validate, warm cache", validate, a.repeat, cold=False)
        for d in PACKAGES:                  # commsim's own bytecode only (torch's stays compiled)
            for cache_dir in ([root / "__pycache__"] if d.endswith(".py") else (root / d).rglob("__pycache__")):
                shutil.rmtree(cache_dir, ignore_errors=True)
        measure("validate, warm cache, no bytecode", validate, a.repeat, cold=False,
                extra_env={"PYTHONDONTWRITEBYTECODE": "1"})
        subprocess.run([py, "-m", "compileall", "-q", *[str(root / d) for d in PACKAGES if (root / d).exists()]],
                       check=True, capture_output=True)
        measure("demo, cold cache", demo, a.demo_repeat, cold=True, timed=True)
        measure("demo, warm cache", demo, a.demo_repeat, cold=False, timed=True)
    torch_s = rows["import torch"]["wall_s"]
    for name, r in rows.items():
        r["over_import_torch"] = r["wall_s"] / torch_s
        if "simulation_s" in r:
            r["over_simulation"] = r["wall_s"] / r["simulation_s"]
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True,
                            text=True).stdout.strip() or "unknown"
    result = {"root": str(root), "measured_commit": commit, "rows": rows,
              "bytecode": "compiled beforehand (python -m compileall) except in the 'no bytecode' row",
              "PYTHONDONTWRITEBYTECODE": os.environ.get("PYTHONDONTWRITEBYTECODE", ""),
              "goals": {"validate_warm_over_import_torch": rows["validate, warm cache"]["over_import_torch"],
                        "demo_warm_over_simulation": rows["demo, warm cache"]["over_simulation"]}}
    print("| command | wall s (best) | x import torch | build_world s | simulation s | plots s | "
          "x simulation |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for name, r in rows.items():
        extra = (f"{r['build_world_s']:.2f} | {r['simulation_s']:.2f} | {r['plots_s']:.2f} | "
                 f"{r['over_simulation']:.2f}") if "simulation_s" in r else "| | |"
        print(f"| {name} | {r['wall_s']:.2f} | {r['over_import_torch']:.2f} | {extra} |")
    g = result["goals"]
    print(f"\nvalidate (warm) / import torch: {g['validate_warm_over_import_torch']:.2f}x (goal <= 1.5); "
          f"demo (warm) / simulation: {g['demo_warm_over_simulation']:.2f}x (goal <= 2)")
    if a.json:
        cells = lambda r: ([f"{r['build_world_s']:.2f}", f"{r['simulation_s']:.2f}", f"{r['plots_s']:.2f}",  # noqa: E731
                            f"{r['over_simulation']:.2f}"] if "simulation_s" in r else ["", "", "", ""])
        _report.write("startup", result, path=a.json, load_before=load_before, title="Start-up (issue 15, goal 1)",
                      command=f"cd bench && ../.venv/bin/python bench_startup.py --repeat {a.repeat} --demo-repeat "
                              f"{a.demo_repeat} --json results/startup.json",
                      about="Wall time of `import torch`, of `run_sim.py validate scenarios/quickstart.yaml` and of "
                            "the demo (what `make demo` runs) against the simulation's own time, each a fresh "
                            "subprocess timed from outside, best of the repeats. Cold: an empty start-up cache "
                            "(COMMSIM_CACHE, sim/learn/cache.py) per run, so the embedded data set is parsed and "
                            "the FLOP count counted; warm: a cache filled beforehand. The OS page cache is warm "
                            "in both. commsim's bytecode is compiled beforehand (`python -m compileall`), as an "
                            "installed package or any second run has it; the 'no bytecode' row compiles commsim's "
                            "modules from source (this machine sets PYTHONDONTWRITEBYTECODE, so a checkout never "
                            f"writes its own). Checkout measured: commit {commit}.",
                      tables=[_report.table("", ["command", "wall s (best)", "x import torch", "build_world s",
                                                 "simulation s", "plots s", "x simulation"],
                                            [[name, f"{r['wall_s']:.2f}", f"{r['over_import_torch']:.2f}", *cells(r)]
                                             for name, r in rows.items()])],
                      goals=[_report.goal("validate (warm cache) / import torch", g["validate_warm_over_import_torch"],
                                          "<=", 1.5),
                             _report.goal("demo (warm cache) / its simulation", g["demo_warm_over_simulation"],
                                          "<=", 2)])

if __name__ == "__main__":
    main()
