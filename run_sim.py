#!/usr/bin/env python3
"""commsim: which communication-efficient training algorithm reaches a target
accuracy first, in simulated wall-clock time, on this network?

    python run_sim.py run SCENARIO.yaml [--out DIR] [--set dotted.key=value ...] [--log tensorboard]
    python run_sim.py validate SCENARIO.yaml [--set ...]
    python run_sim.py list [scenarios]
    python run_sim.py sweep SWEEP.yaml [--out DIR] [--backend local|ray] [--workers N] [--address ADDR] [--log ...]
                            [--retries N] [--connect-timeout S] [--gpus-per-point F] [--cpus-per-point N]
    python run_sim.py replay RUN_DIR --set network.KEY=VALUE ... [--out DIR]
    python run_sim.py plot DIR          (a run folder or a sweep folder)
    python run_sim.py check PLUGIN      (the conformance checks over what a plugin registers)
    python run_sim.py papers [--quick] [--workers N] [--out DIR] [--only NAME ...]
    python run_sim.py schema [scenario|sweep] [--write]   (JSON Schema; --write: scenarios/schema, docs/reference.md)

Reads top to bottom: parse the command, load and validate the scenario, build
the world (data, shards, model), then for each seed and algorithm co-simulate
training and write tidy results and plots.  Bad input: one message naming the
file, the field and what is allowed; exit code 2; nothing written.

Installed (``pip install .``), the same commands are ``commsim run ...``.  A
SCENARIO or SWEEP that is not an existing path may name a shipped one
(``commsim run quickstart``; sim/study/shipped.py).  The Python API,
sim/api.py, runs the same core (sim/study/runner.py ``run_scenario``).

``--plugin FILE_OR_MODULE`` (run, validate, list, sweep, replay, check, schema; also
COMMSIM_PLUGINS and the commsim.plugins entry points) imports a user's code that
registers algorithms, compressors, ... first: sim/plugins.py, docs/plugins.md.
"""
from __future__ import annotations

import argparse
import datetime as _dt
import gc
import sys
from pathlib import Path

EXIT_BAD_INPUT = 2
EXIT_FAILED = 1
EXIT_INTERRUPTED = 130
LOG_CHOICES = ["tensorboard"]      # sim/study/tracking.py TRACKERS
LOG_HELP = "also write the metrics for an experiment tracker: tensorboard -> RUN_DIR/tensorboard/"
# Commands that only read, check and print.  While one runs the cyclic garbage collector is off:
# start-up makes ~200k long-lived objects (torch, pydantic's schema, the registries) and each full
# collection scans them all (~0.1-0.25 s of a validate).  Called as the program (argv None: the
# process ends when main returns) it then freezes them (gc.freeze), so the interpreter's collections
# at exit skip them too (~0.5 s).  Nothing they check or print changes (issue 15: start-up).
QUICK_COMMANDS = ("validate",)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    prog = "commsim" if Path(sys.argv[0]).name == "commsim" else "run_sim.py"   # the console script's name
    p = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run every algorithm of a scenario")
    run.add_argument("scenario")
    run.add_argument("--out", help="results folder (default: results/<name>/<timestamp>/)")
    run.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                     help="override a field, e.g. --set network.uplink.bandwidth='100 Mbps'")
    run.add_argument("--overwrite", action="store_true", help="replace results already in --out")
    run.add_argument("--quiet", action="store_true", help="no progress bar")
    run.add_argument("--log", choices=LOG_CHOICES, help=LOG_HELP)
    val = sub.add_parser("validate", help="check a scenario without running it")
    val.add_argument("scenario")
    val.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    ls = sub.add_parser("list", help="print the registered datasets, models, algorithms, compressors, skip rules, topologies "
                                     "(or, with `scenarios`, the names of the shipped scenarios and sweeps)")
    ls.add_argument("what", nargs="?", choices=["registries", "scenarios"], default="registries",
                    help="scenarios: the shipped scenarios and sweeps, by the names run and sweep accept")
    sw = sub.add_parser("sweep", help="run a scenario over a grid (or zip) of field values")
    sw.add_argument("sweep")
    sw.add_argument("--out", help="sweep folder (default: results/<sweep name>/)")
    sw.add_argument("--backend", choices=["local", "ray"], default="local")
    sw.add_argument("--workers", type=int, default=1,
                    help="points run in parallel (local processes, or the CPUs of a local Ray instance)")
    sw.add_argument("--address", help="--backend ray: the Ray cluster to join (auto, HOST:6379, ray://HOST:10001); "
                                      "default: start a local instance for this sweep")
    sw.add_argument("--retries", type=int, default=2,
                    help="--backend ray: a point whose node dies runs again, on another node, at most N times "
                         "(default 2); then it is failed with the node's error")
    sw.add_argument("--connect-timeout", type=float, default=10.0, metavar="SECONDS",
                    help="--backend ray --address: how long joining the cluster may take before it is given up "
                         "with the reason (default 10)")
    sw.add_argument("--gpus-per-point", type=float, default=1.0, metavar="F",
                    help="--backend ray: the GPUs a point on CUDA asks for (default 1; 0.5 lets two share one)")
    sw.add_argument("--cpus-per-point", type=float, default=1.0, metavar="N",
                    help="--backend ray: the CPUs every point asks for, and its torch threads (default 1)")
    sw.add_argument("--quiet", action="store_true", help="no progress bars")
    sw.add_argument("--log", choices=LOG_CHOICES, help=LOG_HELP + " (each point, in its folder)")
    pl = sub.add_parser("plot", help="figures and report.md for a run folder or a sweep folder")
    pl.add_argument("dir")
    pl.add_argument("--baseline", help="the algorithm speed-ups are measured against (default: the first "
                                       "of kind sgd)")
    pp = sub.add_parser("papers", help="run the CPU-scale paper reproductions and write report.md")
    pp.add_argument("--quick", action="store_true",
                    help="fewer seeds and rounds: checks the pipeline in minutes (default --out results/papers-quick)")
    pp.add_argument("--workers", type=int, default=1, help="points run in parallel (local processes)")
    pp.add_argument("--out", help="folder (default: results/papers, or results/papers-quick)")
    pp.add_argument("--only", nargs="+", metavar="NAME", help="these reproductions only (see sim/study/papers.py)")
    pp.add_argument("--quiet", action="store_true", help="no progress bars")
    sc = sub.add_parser("schema", help="print the JSON Schema of scenario (or sweep) files")
    sc.add_argument("kind", nargs="?", choices=["scenario", "sweep"], default="scenario")
    sc.add_argument("--write", action="store_true",
                    help="refresh scenarios/schema/*.schema.json and docs/reference.md instead")
    rp = sub.add_parser("replay", help="re-time a recorded run under another network (no gradients)")
    rp.add_argument("run_dir")
    rp.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="network override, e.g. --set network.uplink.latency='50 ms'")
    rp.add_argument("--out", help="results folder (default: RUN_DIR/replays/<timestamp>/)")
    rp.add_argument("--overwrite", action="store_true", help="replace results already in --out")
    ck = sub.add_parser("check", help="run the conformance checks over what a plugin registers (PASS/FAIL each)")
    ck.add_argument("plugin_under_test", metavar="PLUGIN", help="a .py file or an importable module")
    from sim.plugins import FLAG_HELP
    for cmd in (run, val, ls, sw, rp, ck, sc):  # sim/plugins.py: loaded before the command runs
        cmd.add_argument("--plugin", action="append", default=[], metavar="FILE_OR_MODULE", help=FLAG_HELP)
    return p.parse_args(argv)


def default_out(parent: Path) -> Path:
    """A fresh timestamped folder under ``parent`` (names are validated, so it
    stays inside: no "..", no separators, sim/study/config.py NAME_PATTERN)."""
    return parent / _dt.datetime.now().strftime("%Y%m%d-%H%M%S")


def cmd_list(args) -> int:
    if args.what == "scenarios":
        from sim.study import shipped
        print(f"scenarios (run, validate): {', '.join(shipped.short_names('scenario'))}")
        print(f"sweeps (sweep): {', '.join(shipped.short_names('sweep'))}")
        print(f"folder: {shipped.folder()}")
        return 0
    import algorithms
    from sim.learn.compute import COMPUTE_MODELS
    from sim.learn.data import DATASETS, PARTITIONS
    from sim.learn.models import MODELS
    from topologies import TOPOLOGIES
    for title, reg in [("datasets", DATASETS), ("partitions", PARTITIONS), ("models", MODELS),
                       ("algorithms", algorithms.ALGORITHMS), ("compressors", algorithms.COMPRESSORS),
                       ("skip rules", algorithms.SKIP_RULES), ("topologies", TOPOLOGIES),
                       ("compute models", COMPUTE_MODELS)]:
        print(f"{title}: {', '.join(reg.names())}")
    from sim.plugins import loaded
    for plugin in loaded():
        print(f"plugin {plugin.describe()}")
    return 0


def cmd_validate(args) -> int:
    from sim.study.config import load_scenario
    from sim.study.runner import build_worlds
    from sim.study.shipped import resolve
    from sim.errors import DataError
    path = resolve(args.scenario, "scenario")      # a path, or the name of a shipped scenario
    scn = load_scenario(path, args.set)
    try:  # checks that need the data (batch larger than a shard, unreachable nodes)
        build_worlds(scn, path)
    except DataError as exc:  # a local data set that is not on this machine: the file itself is fine
        print(f"note: {exc.with_file(path)}\n  the scenario is valid; checks against the data "
              "were skipped", file=sys.stderr)
    print(f"{path}: ok ({len(scn.algorithms)} algorithms, {scn.workers} workers, "
          f"seeds {scn.run_seeds})")
    return 0


def cmd_run(args) -> int:
    from analysis.tables import time_to_target_table
    from sim.study.config import load_scenario
    from sim.study.runner import run_scenario
    from sim.study.shipped import resolve
    from sim.study import tracking

    tracking.check(args.log)        # --log's package is installed (else exit 2, nothing written)
    # 1. Scenario: read, override, validate (nothing is written before this passes).
    path = resolve(args.scenario, "scenario")      # a path, or the name of a shipped scenario
    scn = load_scenario(path, args.set)
    out = Path(args.out) if args.out else default_out(Path("results") / scn.name)

    # 2-5. --out checked, worlds (data, shards, model) per seed, results folder, training,
    #      plots: sim/study/runner.py, the core that sweeps and the Python API (sim/api.py) share.
    status, summaries = run_scenario(scn, path, out, overwrite=args.overwrite, quiet=args.quiet)
    tracking.write(args.log, out)   # from metrics.csv, after it is written
    if summaries:
        print(time_to_target_table(summaries))
    return status


def cmd_sweep(args) -> int:
    from sim.study.shipped import resolve
    from sim.study.sweep import RayOptions, run_sweep
    ray = RayOptions(retries=args.retries, connect_timeout=args.connect_timeout,
                     gpus_per_point=args.gpus_per_point, cpus_per_point=args.cpus_per_point)
    return run_sweep(resolve(args.sweep, "sweep"), args.out, backend=args.backend, workers=args.workers,
                     quiet=args.quiet, address=args.address, ray_options=ray, log=args.log)


def cmd_papers(args) -> int:
    from sim.study.papers import run_papers
    return run_papers(args.out, quick=args.quick, workers=args.workers, only=args.only, quiet=args.quiet)


def cmd_replay(args) -> int:
    from analysis.tables import time_to_target_table
    from sim.study.config import load_scenario
    from sim.errors import ConfigError
    from sim.study.replay import replay_run
    from sim.study.runner import check_out
    from sim.study.trace import ReplayUnavailable

    run_dir = Path(args.run_dir)
    scenario = run_dir / "scenario.yaml"
    if not run_dir.is_dir() or not scenario.is_file():
        raise ConfigError("not a results folder (no scenario.yaml); allowed: the folder a run wrote",
                          file=str(run_dir))
    from sim.plugins import explain_missing
    with explain_missing(run_dir):     # a plugin the run had that is not loaded now is named
        scn = load_scenario(scenario, args.set)
    out = Path(args.out) if args.out else default_out(run_dir / "replays")
    check_out(out, args.overwrite, str(run_dir))
    try:
        summaries = replay_run(run_dir, scn, out)
    except ReplayUnavailable as exc:
        raise ConfigError(f"cannot replay: {exc}", file=str(scenario)) from None
    print(f"replayed {run_dir} -> {out}", file=sys.stderr)
    print(time_to_target_table(summaries))
    return 0


def cmd_plot(args) -> int:
    from analysis.report import make_report
    written = make_report(args.dir, baseline=args.baseline)
    for path in written:
        print(path)
    return 0


def cmd_schema(args) -> int:
    from sim.study import schema
    if args.write:
        for path in schema.write_all():
            print(path)
        return 0
    sys.stdout.write(schema.dumps(schema.schema(args.kind)))
    return 0

def cmd_check(args) -> int:
    from sim.conformance import check_plugin
    return check_plugin(args.plugin_under_test)

COMMANDS = {"schema": cmd_schema, "list": cmd_list, "validate": cmd_validate, "sweep": cmd_sweep,
            "replay": cmd_replay, "plot": cmd_plot, "run": cmd_run, "papers": cmd_papers, "check": cmd_check}


def main(argv: list[str] | None = None) -> int:
    """The one place where exceptions become messages and exit codes.

    What is bad input (exit 2, nothing written) is explicit: a ConfigError,
    raised by the loaders and checks for every fault of a file or a value the
    user gave (sim/errors.py; its DataError for data sets).  Faults of the
    environment while writing, OutputError (a read-only folder, a full disk)
    or an OSError naming a file, print one line with the path and the errno
    and exit 1; rows already written stay whole.  Ctrl-C or SIGTERM exits 130.  Anything
    else is a bug in commsim and keeps its traceback.
    """
    args = parse_args(argv)
    quick = args.command in QUICK_COMMANDS and gc.isenabled()
    if quick:
        gc.disable()
    try:
        return _run_command(args)
    finally:
        if quick:
            if argv is None:    # the program itself (python run_sim.py, commsim): the process ends next
                gc.freeze()
            gc.enable()


def _run_command(args: argparse.Namespace) -> int:
    from sim.alloc import reuse_freed_memory
    reuse_freed_memory()  # large [n, d] tensors reused, not re-faulted (sim/alloc.py)
    from sim.errors import ConfigError, OutputError, os_reason
    from sim.study.signals import sigterm_interrupts
    try:
        with sigterm_interrupts():       # `kill PID` stops like Ctrl-C: what was written is kept
            if hasattr(args, "plugin"):  # entry points, COMMSIM_PLUGINS, --plugin (sim/plugins.py)
                from sim.plugins import load_all
                load_all(args.plugin)
            return COMMANDS[args.command](args)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except OutputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except OSError as exc:
        if exc.filename is None:
            raise
        print(f"error: {exc.filename}: {os_reason(exc)}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
