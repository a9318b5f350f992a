"""Sweeps: one scenario run over a grid (or a zip) of field values.

    name: uplink_sweep
    base: ../quickstart.yaml          # relative to this file
    mode: grid                        # grid (every combination) | zip (the i-th values together)
    axes:
      network.uplink.bandwidth: [100 Mbps, 1 Gbps, 10 Gbps]
      seed: [0, 1, 2]
    set: {stop.max_rounds: 500}       # optional: the same override for every point

Every point is the base scenario with its axis values applied as ``--set``
overrides; its results folder is ``DIR/points/NNN``.  ``DIR/sweep_summary.csv``
has one row per point, algorithm and seed, the axes as columns.  A point that
fails (bad values, an error while running) is recorded with its error and the
sweep goes on; a finished point has a ``done`` marker and is skipped when the
same command runs again, so a killed sweep resumes where it stopped.
"""
from __future__ import annotations

import csv
import itertools
import multiprocessing
import sys
import traceback
from concurrent.futures import ProcessPoolExecutor
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


def run_point(base: str, overrides: list[str], out: str, quiet: bool) -> dict:
    """Run one point in this process; returns {"status": "done"|"failed", "error": str}."""
    from .alloc import reuse_freed_memory
    from .config import load_scenario
    from .engine import build_world
    from .runner import execute
    reuse_freed_memory()
    out_dir = Path(out)
    try:
        scn = load_scenario(base, overrides)
        worlds = {seed: build_world(scn, seed) for seed in scn.run_seeds}
        status, _ = execute(scn, worlds, out_dir, quiet=quiet)
        if status != 0:
            return {"status": "interrupted", "error": ""}
        (out_dir / "done").write_text("ok\n")
        return {"status": "done", "error": ""}
    except ConfigError as exc:
        return {"status": "failed", "error": str(exc)}
    except Exception as exc:  # noqa: BLE001 - a failing point is recorded, the sweep goes on
        return {"status": "failed", "error": f"{type(exc).__name__}: {exc}\n{traceback.format_exc(limit=3)}"}


def write_sweep_summary(out: Path, points: list[dict[str, Any]], results: dict[int, dict]) -> None:
    keys = [k for k in (points[0] if points else []) if k not in SUMMARY_COLUMNS]  # "seed" is there already
    cols = ["point", *keys, "point_status", "error", *SUMMARY_COLUMNS]
    with (out / "sweep_summary.csv").open("w", newline="") as fh:
        w = csv.writer(fh, lineterminator="\n")
        w.writerow(cols)
        for i, values in enumerate(points):
            res = results.get(i, {"status": "pending", "error": ""})
            head = [f"{i:03d}", *[values[k] for k in keys], res["status"], res["error"].splitlines()[0]
                    if res["error"] else ""]
            summary = out / "points" / f"{i:03d}" / "summary.csv"
            rows = list(csv.DictReader(summary.open())) if summary.exists() else []
            if not rows:
                w.writerow(head + [""] * len(SUMMARY_COLUMNS))
            for row in rows:
                w.writerow(head + [row.get(c, "") for c in SUMMARY_COLUMNS])


def run_sweep(path: str, out: str | None, backend: str = "local", workers: int = 1, quiet: bool = False) -> int:
    spec, base, points = load_sweep(path)
    if backend == "ray":
        raise ConfigError("--backend ray is not available yet; use --backend local (parallel processes "
                          "with --workers N)", field="--backend", file=path)
    if workers < 1:
        raise ConfigError("--workers must be >= 1", file=path)
    out_dir = Path(out) if out else Path("results") / spec.name
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "sweep.yaml").write_text(yaml.safe_dump(spec.model_dump(), sort_keys=False))
    fixed = [_override(k, v) for k, v in spec.set.items()]
    jobs, results = [], {}
    for i, values in enumerate(points):
        point_dir = out_dir / "points" / f"{i:03d}"
        if (point_dir / "done").exists():
            results[i] = {"status": "done", "error": ""}     # finished in an earlier run: skipped
            continue
        jobs.append((i, [*fixed, *[_override(k, v) for k, v in values.items()]], point_dir))
    print(f"sweep {spec.name}: {len(points)} points ({len(points) - len(jobs)} already done), "
          f"results in {out_dir}", file=sys.stderr)
    if workers == 1:
        for i, overrides, point_dir in jobs:
            results[i] = run_point(str(base), overrides, str(point_dir), quiet)
            write_sweep_summary(out_dir, points, results)
    else:
        # spawn, not fork: a forked child of a process whose torch thread pool is
        # running can deadlock in OpenMP
        with ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn")) as pool:
            futures = {i: pool.submit(run_point, str(base), o, str(d), True) for i, o, d in jobs}
            for i, fut in futures.items():
                results[i] = fut.result()
                write_sweep_summary(out_dir, points, results)
    write_sweep_summary(out_dir, points, results)
    failed = [i for i, r in results.items() if r["status"] != "done"]
    for i in failed:
        print(f"point {i:03d} {results[i]['status']}: {results[i]['error'].splitlines()[0] if results[i]['error'] else ''}",
              file=sys.stderr)
    return 0
