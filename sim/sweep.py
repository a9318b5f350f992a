"""Sweeps: one scenario run over a grid (or a zip) of field values.

    name: uplink_sweep
    base: ../quickstart.yaml          # relative to this file
    mode: grid                        # grid (every combination) | zip (the i-th values together)
    axes:
      network.uplink.bandwidth: [100 Mbps, 1 Gbps, 10 Gbps]
      seed: [0, 1, 2]
    set: {stop.max_rounds: 500}       # optional: the same override for every point
    replay: auto                      # auto (default) | off

Every point is the base scenario with its axis values applied as ``--set``
overrides; its results folder is ``DIR/points/NNN``.  ``DIR/sweep_summary.csv``
has one row per point, algorithm and seed, the axes as columns.  A point that
fails (bad values, an error while running) is recorded with its error and the
sweep goes on; a finished point has a ``done`` marker and is skipped when the
same command runs again, so a killed sweep resumes where it stopped.

Replay: points that differ from an earlier point only in ``network`` fields
share its learning trajectory.  The earlier point (the *source*) trains in
full and records a trace; the others are re-timed from it without computing
a gradient (sim/replay.py), exactly.  Where timing can change the math
(round_timeout, failures, a topology whose protocol differs, stop.max_sim_time
reached at another round) the point trains in full and ``replay_note`` in
sweep_summary.csv says why.  Full points run on the chosen backend
(sim/backends.py: local processes or Ray); replays run in the driver.
"""
from __future__ import annotations

import csv
import itertools
import json
import sys
import traceback
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from .errors import ConfigError
from .results import SUMMARY_COLUMNS


class SweepSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    base: str = Field(description="the scenario file, relative to the sweep file")
    mode: Literal["grid", "zip"] = "grid"
    axes: dict[str, list[Any]] = Field(min_length=1, description="dotted field -> values")
    set: dict[str, Any] = Field(default_factory=dict, description="overrides for every point")
    replay: Literal["auto", "off"] = Field(
        "auto", description="auto: points that differ from an earlier one only in the network are "
                            "re-timed from its trace (sim/replay.py); off: every point trains")

    @field_validator("axes")
    @classmethod
    def _non_empty(cls, v: dict[str, list[Any]]) -> dict[str, list[Any]]:
        for key, values in v.items():
            if not values:
                raise ValueError(f"axis {key!r} has no values")
        return v


def _override(key: str, value: Any) -> str:
    return f"{key}={yaml.safe_dump(value, default_flow_style=True).strip().removesuffix('...').strip()}"


def load_sweep(path: str | Path) -> tuple[SweepSpec, Path, list[dict[str, Any]]]:
    """The sweep spec, the base scenario path, and the points (axis -> value)."""
    from .config import read_yaml
    file = str(path)
    p = Path(path)
    data = read_yaml(p)
    try:
        spec = SweepSpec.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        raise ConfigError(err["msg"], field=".".join(str(x) for x in err["loc"]) or None, file=file) from None
    base = (p.parent / spec.base).resolve()
    if not base.is_file():
        raise ConfigError(f"base scenario {str(base)!r} not found", field="base", file=file)
    keys = list(spec.axes)
    if spec.mode == "zip":
        lengths = {k: len(v) for k, v in spec.axes.items()}
        if len(set(lengths.values())) != 1:
            raise ConfigError(f"zip needs axes of equal length, got {lengths}", field="axes", file=file)
        combos = list(zip(*spec.axes.values()))
    else:
        combos = list(itertools.product(*spec.axes.values()))
    return spec, base, [dict(zip(keys, c)) for c in combos]


def run_point(base: str, overrides: list[str], quiet: bool, out_dir: str) -> dict:
    """Run one point fully (training and network) in this process; returns
    {"status": "done"|"failed"|"interrupted", "error": str}."""
    from .alloc import reuse_freed_memory
    from .config import load_scenario
    from .engine import build_world
    from .runner import execute
    reuse_freed_memory()
    try:
        scn = load_scenario(base, overrides)
        worlds = {seed: build_world(scn, seed) for seed in scn.run_seeds}
        status, _ = execute(scn, worlds, Path(out_dir), quiet=quiet, plots=False)
        return {"status": "done" if status == 0 else "interrupted", "error": ""}
    except ConfigError as exc:
        return {"status": "failed", "error": str(exc)}
    except Exception as exc:  # noqa: BLE001 - a failing point is recorded, the sweep goes on
        return {"status": "failed", "error": f"{type(exc).__name__}: {exc}\n{traceback.format_exc(limit=3)}"}


SWEEP_COLUMNS_AFTER_AXES = ["point_status", "error", "run_mode", "replay_note"]


def write_sweep_summary(out: Path, points: list[dict[str, Any]], results: dict[int, dict]) -> None:
    keys = [k for k in (points[0] if points else []) if k not in SUMMARY_COLUMNS]  # "seed" is there already
    cols = ["point", *keys, *SWEEP_COLUMNS_AFTER_AXES, *SUMMARY_COLUMNS]
    with (out / "sweep_summary.csv").open("w", newline="") as fh:
        w = csv.writer(fh, lineterminator="\n")
        w.writerow(cols)
        for i, values in enumerate(points):
            res = results.get(i, {"status": "pending", "error": ""})
            head = [f"{i:03d}", *[values[k] for k in keys], res["status"],
                    res["error"].splitlines()[0] if res["error"] else "", res.get("mode", ""), res.get("note", "")]
            summary = out / "points" / f"{i:03d}" / "summary.csv"
            rows = list(csv.DictReader(summary.open())) if summary.exists() and res["status"] == "done" else []
            if not rows:
                w.writerow(head + [""] * len(SUMMARY_COLUMNS))
            for row in rows:
                w.writerow(head + [row.get(c, "") for c in SUMMARY_COLUMNS])


def _math_key(scn) -> str:
    """Points with equal keys differ only in the network: one trace serves them all."""
    from .replay import math_fields
    return json.dumps(math_fields(scn), sort_keys=True)


class _Sweep:
    """The driver's bookkeeping: points, results, done markers, the summary."""

    def __init__(self, out_dir: Path, points: list[dict], quiet: bool) -> None:
        self.out_dir, self.points, self.quiet = out_dir, points, quiet
        self.results: dict[int, dict] = {}

    def dir(self, i: int) -> Path:
        return self.out_dir / "points" / f"{i:03d}"

    def finished(self, i: int) -> dict | None:
        """The result recorded by an earlier run's done marker, or None."""
        marker = self.dir(i) / "done"
        if not marker.exists():
            return None
        meta = yaml.safe_load(marker.read_text())
        meta = meta if isinstance(meta, dict) else {}
        return {"status": "done", "error": "", "mode": meta.get("mode", "full"), "note": meta.get("note", "")}

    def done(self, i: int, result: dict) -> None:
        self.results[i] = result
        if result["status"] == "done":
            (self.dir(i) / "done").write_text(yaml.safe_dump({"mode": result["mode"], "note": result["note"]}))
        if not self.quiet or result["status"] != "done":
            err = result["error"].splitlines()[0] if result["error"] else ""
            print(f"point {i:03d} {result['status']} ({result['mode']}{': ' + result['note'] if result['note'] else ''})"
                  f"{': ' + err if err else ''}", file=sys.stderr)
        write_sweep_summary(self.out_dir, self.points, self.results)


def run_sweep(path: str, out: str | None, backend: str = "local", workers: int = 1, quiet: bool = False,
              address: str | None = None) -> int:
    """Run a sweep: full co-simulations where the math changes, trace replays
    where only the network does (sim/replay.py), on the chosen backend."""
    from .backends import BACKENDS, Job, resources, run_jobs
    from .config import load_scenario
    from .replay import refusal, replay_run
    from .trace import ReplayUnavailable

    spec, base, points = load_sweep(path)
    if backend not in BACKENDS:
        raise ConfigError(f"unknown backend {backend!r}; allowed: {', '.join(BACKENDS)}", field="--backend",
                          file=path)
    if workers < 1:
        raise ConfigError("--workers must be >= 1", file=path)
    out_dir = Path(out) if out else Path("results") / spec.name
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "sweep.yaml").write_text(yaml.safe_dump(spec.model_dump(), sort_keys=False))
    fixed = [_override(k, v) for k, v in spec.set.items()]
    overrides = {i: [*fixed, *[_override(k, v) for k, v in values.items()]] for i, values in enumerate(points)}
    sw = _Sweep(out_dir, points, quiet)

    # 1. Plan: every point's scenario; points that differ only in the network
    #    share one source point (the first), whose trace the others replay.
    scenarios, source_of, refused = {}, {}, {}
    first: dict[str, int] = {}
    for i in range(len(points)):
        try:
            scenarios[i] = load_scenario(base, overrides[i])
        except ConfigError as exc:
            sw.results[i] = {"status": "failed", "error": str(exc), "mode": "full", "note": ""}
            print(f"point {i:03d} failed: {exc}", file=sys.stderr)
            continue
        if spec.replay == "off":
            continue
        src = first.setdefault(_math_key(scenarios[i]), i)
        if src != i:
            why = refusal(scenarios[src], scenarios[i])
            if why is None:
                source_of[i] = src
            else:
                refused[i] = f"replay refused: {why}"
    for i in range(len(points)):
        prior = sw.finished(i)
        if prior is not None:
            sw.results[i] = prior          # finished in an earlier run: skipped
    todo = [i for i in range(len(points)) if i not in sw.results]
    sources = {s for s in source_of.values()}
    print(f"sweep {spec.name}: {len(points)} points ({len(points) - len(todo)} already done or invalid; "
          f"{sum(1 for i in todo if i in source_of)} to replay), backend {backend}, results in {out_dir}",
          file=sys.stderr)

    def full(ids: list[int], notes: dict[int, str]) -> None:
        if not ids:
            return
        jobs = []
        for i in ids:
            cpus, gpus = resources(scenarios[i])
            jobs.append(Job(i, run_point, (str(base), overrides[i], True), str(sw.dir(i)), cpus, gpus))
        try:
            run_jobs(jobs, backend=backend, workers=workers, address=address,
                     on_done=lambda i, r: sw.done(i, {**r, "mode": "full", "note": notes.get(i, "")}))
        except ConfigError as exc:
            raise exc.with_file(path)

    # 2. Full co-simulations: sources and points that cannot be replayed.
    notes = {i: "source of replays" for i in sources} | refused
    full([i for i in todo if i not in source_of], notes)

    # 3. Replays, here (milliseconds each: no gradients, no data).
    fallback: dict[int, str] = {}
    for i in [i for i in todo if i in source_of]:
        src = source_of[i]
        if sw.results.get(src, {}).get("status") != "done":
            fallback[i] = f"replay impossible: source point {src:03d} did not finish"
            continue
        try:
            replay_run(sw.dir(src), scenarios[i], sw.dir(i), plots=False)
            sw.done(i, {"status": "done", "error": "", "mode": "replay", "note": f"replayed from point {src:03d}"})
        except ReplayUnavailable as exc:
            fallback[i] = f"replay refused: {exc}"
        except Exception as exc:  # noqa: BLE001 - recorded, the sweep goes on
            sw.done(i, {"status": "failed", "error": f"{type(exc).__name__}: {exc}", "mode": "replay", "note": ""})

    # 4. Points whose replay was refused at run time run in full.
    full(list(fallback), fallback)
    write_sweep_summary(out_dir, points, sw.results)
    return 0
