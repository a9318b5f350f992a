"""Run every algorithm of a scenario under every seed and write the results
folder (shared by ``run`` and ``sweep``).

Rows are appended as they are produced; an interrupted run keeps them.
"""
from __future__ import annotations

import sys
from pathlib import Path

import torch
import yaml

from sim.study.config import Scenario
from sim.engine import World, run_algorithm, summarize
from sim.study.progress import Progress
from sim.errors import OutputError
from sim.study.results import RESULT_COLUMNS, CsvAppender, LineFile, write_text
from sim.study.trace import TRACE_FILE, EventRecorder, Recorder

EXIT_INTERRUPTED = 130


def result_files(out: Path) -> dict[str, CsvAppender]:
    """metrics, summary, phases, links and diagnostics.csv, opened with their columns."""
    return {name: CsvAppender(out / f"{name}.csv", cols) for name, cols in RESULT_COLUMNS.items()}


def write_scenario(out: Path, scn: Scenario) -> None:
    """The resolved scenario, as run and replay write it."""
    write_text(Path(out) / "scenario.yaml", yaml.safe_dump(scn.dump(), sort_keys=False))


def make_out_dir(out: Path) -> None:
    """Create the results folder; a read-only or full disk is an OutputError."""
    try:
        Path(out).mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(exc.filename or out, exc) from None


HOST_FILE = "host.yaml"


def host_facts(device) -> dict:
    """What ran the simulation (host.yaml): it does not change the results (simulated time comes
    from the models, not the host), but says what a host-time figure was measured on."""
    import os
    import platform
    return {"python": platform.python_version(), "torch": str(torch.__version__), "device": str(device),
            "torch_threads": torch.get_num_threads(), "cpu_count": os.cpu_count(), "platform": platform.platform()}


def tee(*sinks):
    """One callback that hands each row to every sink, in order."""
    def each(row: dict) -> None:
        for sink in sinks:
            sink(row)
    return each


def execute(scn: Scenario, worlds: dict[int, World], out: Path, quiet: bool = False,
            plots: bool = True) -> tuple[int, list[dict]]:
    """Train, write scenario.yaml, metrics/summary/phases/links/diagnostics.csv, the trace
    (trace.jsonl, for replay) and the plots.  Returns (exit status, summary rows)."""
    torch.use_deterministic_algorithms(True, warn_only=True)
    out = Path(out)
    make_out_dir(out)
    write_scenario(out, scn)
    any_world = next(iter(worlds.values()))
    from sim.plugins import facts as plugin_facts     # the plugins loaded, if any (replay names a missing one)
    write_text(out / HOST_FILE, yaml.safe_dump({**host_facts(any_world.device), **plugin_facts()}, sort_keys=False))
    files = result_files(out)
    trace = LineFile(out / TRACE_FILE)
    summaries: list[dict] = []
    status = 0
    if not quiet:
        print(f"commsim: {scn.name}: {len(scn.algorithms)} algorithms x {len(worlds)} seeds, "
              f"{scn.workers} workers, d = {any_world.model.d:,} parameters, device {any_world.device} "
              f"({torch.get_num_threads()} torch threads); results in {out}", file=sys.stderr)
    try:
        for seed, world in worlds.items():
            for cfg in scn.algorithms:
                with Progress(f"{cfg.label} (seed {seed})", scn.stop.max_rounds, disable=quiet) as bar:
                    record = lambda src, cfg=cfg, seed=seed, world=world: Recorder(  # noqa: E731
                        src, trace, cfg.label, seed, world.model.d, world.n)
                    on_row, on_update, events = files["metrics"].append, files["updates"].append, None
                    if getattr(cfg, "event_driven", False):     # no Trainer to wrap: a segment fed by rows
                        events = EventRecorder(trace, cfg.label, seed, world.model.d, world.n,
                                               cfg.timing_dependent_why)
                        on_row, on_update = tee(on_row, events.evaluate), tee(on_update, events.apply)
                    result = run_algorithm(world, cfg, on_row=on_row, on_round=bar.update,
                                           on_phase=files["phases"].append, record=record,
                                           on_diag=files["diagnostics"].append, on_update=on_update)
                if events is not None:
                    events.end(summarize(result, scn.stop.target_accuracy)["status"])
                if result.stalled or result.diverged_why:
                    print(f"{cfg.label} (seed {seed}) stopped: {result.stalled or result.diverged_why}",
                          file=sys.stderr)
                for link_row in result.links:
                    files["links"].append(link_row)
                row = summarize(result, scn.stop.target_accuracy)
                files["summary"].append(row)
                summaries.append(row)
    except KeyboardInterrupt:
        status = EXIT_INTERRUPTED
        print("\ninterrupted: the rows written so far are kept", file=sys.stderr)
    finally:
        for f in files.values():
            f.close()
        trace.close()
    if summaries and plots:
        from analysis.plots import plot_run   # matplotlib and seaborn: only when plotting

        plot_run(out)
    return status, summaries
