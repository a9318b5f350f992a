"""Run every algorithm of a scenario under every seed and write the results
folder (shared by ``run``, ``sweep`` and the Python API, sim/api.py).

Rows are appended as they are produced; an interrupted run keeps them.
Without a folder (the API's ``run(..., out=None)``) the same rows are kept in
memory, formatted exactly as the files would be, and nothing is written.
"""
from __future__ import annotations

import sys
from pathlib import Path

import torch
import yaml

from sim.study.config import Scenario
from sim.engine import World, build_world, run_algorithm, summarize
from sim.study.progress import Progress
from sim.errors import ConfigError, OutputError, interrupted_by, refuse_file_out
from sim.study.results import RESULT_COLUMNS, CsvAppender, LineFile, MemoryLines, write_text
from sim.study.trace import TRACE_FILE, EventRecorder, Recorder
from sim.study import yamlfile

EXIT_INTERRUPTED = 130
RESULT_FILES = ("scenario.yaml", *(f"{name}.csv" for name in RESULT_COLUMNS))


def check_out(out: Path, overwrite: bool, file: str) -> None:
    """Bad --out values, refused before anything is written: a file, a path
    below a file, or a folder holding results (without --overwrite)."""
    refuse_file_out(out, file)
    if not overwrite and out.is_dir() and any((out / f).exists() for f in RESULT_FILES):
        raise ConfigError(f"--out {out} already holds results; pass --overwrite or choose another --out",
                          field="--out", file=file)


def build_worlds(scn: Scenario, file: str) -> dict[int, World]:
    """The world (data on the device, shards, model) of every seed: the checks that need the data."""
    try:
        return {seed: build_world(scn, seed) for seed in scn.run_seeds}
    except ConfigError as exc:
        raise exc.with_file(file)


def run_scenario(scn: Scenario, file: str, out: Path | None, overwrite: bool = False, quiet: bool = False,
                 tables: dict[str, str] | None = None) -> tuple[int, list[dict]]:
    """``run`` once the scenario is loaded, the same for the CLI and the Python API: refuse a bad
    ``out`` (nothing written), build the worlds, then :func:`execute`.  ``file`` names the
    scenario in messages."""
    if out is not None:
        check_out(Path(out), overwrite, file)
    worlds = build_worlds(scn, file)
    return execute(scn, worlds, out, quiet=quiet, tables=tables)


def result_files(out: Path | None) -> dict[str, CsvAppender]:
    """metrics, summary, phases, links, diagnostics and updates.csv, opened with their columns
    (kept in memory when ``out`` is None)."""
    if out is None:
        return {name: CsvAppender(None, cols, MemoryLines()) for name, cols in RESULT_COLUMNS.items()}
    return {name: CsvAppender(out / f"{name}.csv", cols) for name, cols in RESULT_COLUMNS.items()}


def write_scenario(out: Path, scn: Scenario) -> None:
    """The resolved scenario, as run and replay write it."""
    write_text(Path(out) / "scenario.yaml", yamlfile.dump_sections(scn.dump()))   # = yaml.safe_dump(..., sort_keys=False)


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


def execute(scn: Scenario, worlds: dict[int, World], out: Path | None, quiet: bool = False,
            plots: bool = True, tables: dict[str, str] | None = None) -> tuple[int, list[dict]]:
    """Train, write scenario.yaml, metrics/summary/phases/links/diagnostics/updates.csv, the trace
    (trace.jsonl, for replay) and the plots.  Returns (exit status, summary rows).

    ``out=None``: nothing is written (no trace, no plots); the text each CSV file would hold
    goes into ``tables`` (name -> text), when given."""
    torch.use_deterministic_algorithms(True, warn_only=True)
    any_world = next(iter(worlds.values()))
    if out is not None:
        from sim.plugins import facts as plugin_facts     # the plugins loaded, if any (replay names a missing one)
        out = Path(out)
        make_out_dir(out)
        write_scenario(out, scn)
        write_text(out / HOST_FILE, yaml.safe_dump({**host_facts(any_world.device), **plugin_facts()},
                                                   sort_keys=False))
    files = result_files(out)
    trace = LineFile(out / TRACE_FILE) if out is not None else MemoryLines(keep=False)
    summaries: list[dict] = []
    status = 0
    if not quiet:
        print(f"commsim: {scn.name}: {len(scn.algorithms)} algorithms x {len(worlds)} seeds, "
              f"{scn.workers} workers, d = {any_world.model.d:,} parameters, device {any_world.device} "
              f"({torch.get_num_threads()} torch threads); results {f'in {out}' if out else 'kept in memory'}",
              file=sys.stderr)
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
    except BaseException as exc:
        if not interrupted_by(exc):     # KeyboardInterrupt, or an error raised while it unwound
            raise
        status = EXIT_INTERRUPTED
        print("\ninterrupted: the rows written so far are kept", file=sys.stderr)
    finally:
        for f in files.values():
            f.close()
        trace.close()
    if out is None:
        if tables is not None:
            tables.update({name: f.text() for name, f in files.items()})
        return status, summaries
    if summaries and plots:
        from analysis.plots import plot_run   # matplotlib and seaborn: only when plotting

        plot_run(out)
    return status, summaries
