"""Sweeps: one scenario run over a grid (or a zip) of field values.

    name: uplink_sweep
    base: ../quickstart.yaml          # relative to this file
    mode: grid                        # grid (every combination) | zip (the i-th values together)
    axes:
      network.uplink.bandwidth: [100 Mbps, 1 Gbps, 10 Gbps]
      seed: [0, 1, 2]
    set: {stop.max_rounds: 500}       # optional: the same override for every point
    replay: auto                      # auto (default; also on/yes/true) | off (also no/false)

Every point is the base scenario with its axis values applied as ``--set``
overrides; its results folder is ``DIR/points/NNN``.  ``DIR/sweep_summary.csv``
has one row per point, algorithm and seed, the axes as columns, and
``point_status``: ``done``, ``failed`` (bad values, an error while running:
recorded with its error, the sweep goes on), ``interrupted`` or ``pending``
(not run yet).

Checked before anything runs or is written (bad input: exit 2): the sweep
file itself; every axis and ``set:`` key must name a field of the scenario
(sim/study/fields.py; the message names the nearest valid ones); at most
``MAX_POINTS`` points; the base scenario must be readable YAML; with
``--backend ray --address``, the cluster must be joinable (sim/study/rayconnect.py:
the address, the token, an answer within ``--connect-timeout``).  A value that
fails validation is a failed point, not bad input, even if it fails for every
point.

Resume, keyed by what a point is: a finished point has a ``done`` marker
(YAML) recording the sha256 of its fully resolved scenario
(:func:`scenario_hash`).  Running the same sweep into the same ``--out``
again skips every point whose marker matches its scenario now, and re-runs,
saying why, every other one: no marker (interrupted, failed, never run), a
marker without a hash (an older commsim), or a scenario that changed (an axis
value, ``set:`` or the base file; the fields that differ are named).  A
re-run point's folder is emptied first, so no old file is mixed in.  A row of
sweep_summary.csv shows a point's results only when its marker's hash is that
point's current hash, so a row can never label one scenario's results with
another's values; points of an earlier, larger sweep beyond the current ones
are left on disk and never listed.

Replay: points that differ from an earlier point only in ``network`` fields
share its learning trajectory.  The earlier point (the *source*) trains in
full and records a trace; the others are re-timed from it without computing
a gradient (sim/study/replay.py), exactly.  Where timing can change the math
(round_timeout, failures, a topology whose protocol differs, stop.max_sim_time
reached at another round) the point trains in full and ``replay_note`` in
sweep_summary.csv says why.  Full points run on the chosen backend
(sim/study/backends.py: local processes or Ray); replays run in the driver.  A
replayed point's marker also records its source (index, scenario hash and
the id of the source's own run): when the source is re-run, its replays are
stale too.

Stopping: Ctrl-C (SIGINT) or SIGTERM stops launching points; running points
write what they have (sim/study/runner.py flushes every row) and are marked
``interrupted`` (no done marker); local worker processes are signalled and
waited for, Ray tasks are cancelled (sim/study/backends.py).  Running the same
command again resumes: interrupted points re-run from scratch, done ones are
skipped.  One sweep at a time per folder: ``DIR/.lock`` holds the running
sweep's pid and host; a second sweep on that folder refuses (exit 2, writing
nothing); a lock left by a process that no longer exists on this host is
taken over with a note.

Exit code: 0 when every point is done; 1 when any point failed (after
running all the others and writing the summary); 130 when interrupted; 2 for
bad input found before any point ran.
"""
from __future__ import annotations

import contextlib
import csv
import hashlib
import itertools
import json
import math
import os
import shutil
import socket
import sys
import time
import traceback
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from sim.study.config import NAME_PATTERN
from sim.errors import ConfigError, interrupted_by, refuse_file_out
from sim.study.signals import sigterm_interrupts
from sim.study.results import SUMMARY_COLUMNS

MAX_POINTS = 10_000          # more points than this in one sweep is bad input
LOCK_FILE = ".lock"          # in the sweep folder while a sweep runs on it
MARKER = "done"              # in a point folder once the point finished
EXIT_OK, EXIT_FAILED, EXIT_BAD_INPUT, EXIT_INTERRUPTED = 0, 1, 2, 130

_OFF = ("off", "no", "false", "n")
_ON = ("on", "yes", "true", "y")


class SweepSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(pattern=NAME_PATTERN, max_length=128,
                      description="names the default folder results/<name>/")
    base: str = Field(description="the scenario file, relative to the sweep file")
    mode: Literal["grid", "zip"] = "grid"
    axes: dict[str, list[Any]] = Field(min_length=1, description="dotted field -> values")
    set: dict[str, Any] = Field(default_factory=dict, description="overrides for every point")
    replay: Literal["auto", "off"] = Field(
        "auto", description="auto: points that differ from an earlier one only in the network are "
                            "re-timed from its trace (sim/study/replay.py); off: every point trains")

    @field_validator("axes")
    @classmethod
    def _non_empty(cls, v: dict[str, list[Any]]) -> dict[str, list[Any]]:
        for key, values in v.items():
            if not values:
                raise ValueError(f"axis {key!r} has no values; allowed: a list of one or more values")
        return v

    @field_validator("replay", mode="before")
    @classmethod
    def _yaml_booleans(cls, v: Any) -> Any:
        """``replay: off`` unquoted is YAML 1.1's boolean false: take booleans
        (and their spellings) for what they mean."""
        if isinstance(v, bool):
            return "auto" if v else "off"
        if isinstance(v, str):
            low = v.strip().lower()
            if low in ("auto", "off"):
                return low
            if low in _OFF:
                return "off"
            if low in _ON:
                return "auto"
        raise ValueError(f"{v!r} is not allowed; allowed: auto (also on, yes, true), off (also no, false)")


_SPEC_HINTS = {
    "name": '1-128 of letters, digits, "_", "-" and "." (not first)',
    "base": "the scenario file, relative to the sweep file",
    "mode": "grid or zip",
    "axes": "a mapping of dotted field -> list of values",
    "set": "a mapping of dotted field -> value",
}


def _spec_problem(err: dict) -> tuple[str, str]:
    """(field, message) for one pydantic error of the sweep file, without
    pydantic's internal prefixes, saying what is allowed."""
    loc = [str(x) for x in err["loc"]]
    path = ".".join(loc)
    typ, msg, inp = err["type"], err["msg"], err.get("input")
    if msg.startswith("Value error, "):
        msg = msg[len("Value error, "):]
    if typ == "extra_forbidden":
        return path, f"unknown key; allowed: {', '.join(SweepSpec.model_fields)}"
    if typ == "missing":
        return path, "required field is missing"
    hint = _SPEC_HINTS.get(loc[0]) if loc else None
    if loc[:1] == ["axes"] and len(loc) > 1:
        hint = "a list of values"
    if typ != "value_error":
        if inp is not None and not isinstance(inp, (dict, list)):
            msg = f"{msg} (got {inp!r})"
        if hint and typ != "literal_error":         # a literal's message lists what is allowed already
            msg = f"{msg}; allowed: {hint}"
    return path, msg


def _override(key: str, value: Any) -> str:
    return f"{key}={yaml.safe_dump(value, default_flow_style=True).strip().removesuffix('...').strip()}"


def load_sweep(path: str | Path, changes: dict | None = None, data: Any = None,
               folder: Path | None = None) -> tuple[SweepSpec, Path, list[dict[str, Any]]]:
    """The sweep spec, the base scenario path, and the points (axis -> value).

    ``changes`` ({"axes": {...}, "set": {...}}, from code such as
    ``run_sim.py papers --quick``) replaces those axes and adds those
    overrides before the file is validated, so the spec written to the sweep
    folder is the one that ran.  ``data`` (the Python API: a sweep given as a
    dict or YAML text) is used instead of reading ``path``, which then only
    labels messages; ``base`` is relative to ``folder`` (default: the file's).

    Raises ConfigError for bad input: a malformed file, an axis or ``set:``
    key that names no field of the scenario, more than MAX_POINTS points."""
    from sim.study.config import problems_error, read_yaml
    from sim.study.fields import check_key
    file = str(path)
    p = Path(path)
    if data is None:
        data = read_yaml(p)
    if not isinstance(data, dict):
        raise ConfigError("the sweep file must be a YAML mapping; allowed keys: "
                          f"{', '.join(SweepSpec.model_fields)}", file=file)
    if changes:
        data = {**data, "axes": {**(data.get("axes") or {}), **changes.get("axes", {})},
                "set": {**(data.get("set") or {}), **changes.get("set", {})}}
    try:
        spec = SweepSpec.model_validate(data)
    except ValidationError as exc:
        raise problems_error([_spec_problem(err) for err in exc.errors()], file) from None
    base = ((p.parent if folder is None else Path(folder)) / spec.base).resolve()
    if not base.is_file():
        raise ConfigError(f"base scenario {str(base)!r} not found; allowed: a scenario file, relative to "
                          "the sweep file", field="base", file=file)
    for section, keys in (("axes", spec.axes), ("set", spec.set)):
        for key in keys:
            why = check_key(key)
            if why:
                what = "axis" if section == "axes" else "set: key"
                raise ConfigError(f"{what} {why}", field=f"{section}.{key}", file=file)
    keys = list(spec.axes)
    lengths = {k: len(v) for k, v in spec.axes.items()}
    if spec.mode == "zip":
        if len(set(lengths.values())) != 1:
            raise ConfigError(f"zip needs axes of equal length, got {lengths}", field="axes", file=file)
        count = next(iter(lengths.values()))
    else:
        count = math.prod(lengths.values())
    if count > MAX_POINTS:
        shape = " x ".join(str(n) for n in lengths.values()) if spec.mode == "grid" else f"zip of {count}"
        raise ConfigError(f"{count:,} points ({shape}) is more than the limit of {MAX_POINTS:,} points in one "
                          "sweep; allowed: fewer values, or several sweeps", field="axes", file=file)
    if spec.mode == "zip":
        combos = list(zip(*spec.axes.values()))
    else:
        combos = list(itertools.product(*spec.axes.values()))
    return spec, base, [dict(zip(keys, c)) for c in combos]


# Bumped whenever a default changes what a scenario computes without changing its
# resolved form (2: SASG's threshold follows the notebook, issue 12; 3: the sum
# over workers is a fold over fixed blocks of workers, algorithms/ps.py
# REDUCE_ROWS, issue 15, which changes the last bits of every mean): points done
# before are then re-run instead of being kept with the old math.
MATH_VERSION = 3


def scenario_hash(scn) -> str:
    """What a point is: the sha256 of its fully resolved scenario (and MATH_VERSION)."""
    what = {"scenario": scn.dump(), "math_version": MATH_VERSION}
    return hashlib.sha256(json.dumps(what, sort_keys=True).encode()).hexdigest()


def run_point(base: str, overrides: list[str], quiet: bool, out_dir: str) -> dict:
    """Run one point fully (training and network) in this process; returns
    {"status": "done"|"failed"|"interrupted", "error": str}."""
    from sim.alloc import reuse_freed_memory
    from sim.study.config import load_scenario
    from sim.engine import build_world
    from sim.study.runner import execute
    reuse_freed_memory()
    try:
        scn = load_scenario(base, overrides)
        worlds = {seed: build_world(scn, seed) for seed in scn.run_seeds}
        status, _ = execute(scn, worlds, Path(out_dir), quiet=quiet, plots=False)
        return {"status": "done" if status == 0 else "interrupted", "error": ""}
    except ConfigError as exc:
        return {"status": "failed", "error": str(exc)}
    except Exception as exc:  # noqa: BLE001 - a failing point is recorded, the sweep goes on
        if interrupted_by(exc):        # Ctrl-C surfacing as another error (sim/errors.py)
            return {"status": "interrupted", "error": ""}
        return {"status": "failed", "error": f"{type(exc).__name__}: {exc}\n{traceback.format_exc(limit=3)}"}


SWEEP_COLUMNS_AFTER_AXES = ["point_status", "error", "run_mode", "replay_note"]


def read_marker(point_dir: Path) -> dict | None:
    """A point folder's done marker, or None (none, or unreadable: not done)."""
    try:
        meta = yaml.safe_load((Path(point_dir) / MARKER).read_text())
    except (OSError, yaml.YAMLError, UnicodeDecodeError):
        return None
    return meta if isinstance(meta, dict) else None


def _point_rows(point_dir: Path, want_hash: str | None) -> list[dict] | None:
    """The summary rows of a finished point, or None when its done marker does
    not record ``want_hash`` (when given): then they are not this point's."""
    if want_hash is not None:
        marker = read_marker(point_dir)
        if marker is None or marker.get("hash") != want_hash:
            return None
    summary = Path(point_dir) / "summary.csv"
    if not summary.exists():
        return []
    with summary.open(newline="") as fh:
        return list(csv.DictReader(fh))


def write_sweep_summary(out: Path, points: list[dict[str, Any]], results: dict[int, dict],
                        hashes: dict[int, str] | None = None, rows: dict[int, list[dict]] | None = None) -> None:
    """sweep_summary.csv: one row per point, algorithm and seed.  With
    ``hashes`` (point -> scenario hash), a point shown done must have a done
    marker with that hash, else it is shown ``pending`` without results.
    ``rows`` caches summary rows already checked (point -> rows)."""
    keys = [k for k in (points[0] if points else []) if k not in SUMMARY_COLUMNS]  # "seed" is there already
    cols = ["point", *keys, *SWEEP_COLUMNS_AFTER_AXES, *SUMMARY_COLUMNS]
    tmp = out / "sweep_summary.csv.part"
    with tmp.open("w", newline="") as fh:
        w = csv.writer(fh, lineterminator="\n")
        w.writerow(cols)
        for i, values in enumerate(points):
            res = results.get(i, {"status": "pending", "error": ""})
            found: list[dict] | None = []
            if res["status"] == "done":
                found = rows.get(i) if rows is not None and i in rows else \
                    _point_rows(out / "points" / f"{i:03d}", None if hashes is None else hashes.get(i, ""))
                if found is None:                     # not this point's results
                    res, found = {"status": "pending", "error": ""}, []
            head = [f"{i:03d}", *[values[k] for k in keys], res["status"],
                    res["error"].splitlines()[0] if res["error"] else "", res.get("mode", ""), res.get("note", "")]
            if not found:
                w.writerow(head + [""] * len(SUMMARY_COLUMNS))
            for row in found:
                w.writerow(head + [row.get(c, "") for c in SUMMARY_COLUMNS])
    os.replace(tmp, out / "sweep_summary.csv")


def _math_key(scn) -> str:
    """Points with equal keys differ only in the network: one trace serves them all."""
    from sim.study.replay import math_fields
    return json.dumps(math_fields(scn), sort_keys=True)


def _write_atomic(path: Path, text: str) -> None:
    part = path.with_name(path.name + ".part")
    part.write_text(text)
    os.replace(part, path)


# --- the lock --------------------------------------------------------------------
def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:          # EPERM: it exists, it is someone else's
        return True
    return True


class FolderLock:
    """``DIR/.lock``: one sweep at a time per folder (see the module docstring)."""

    def __init__(self, folder: Path, file: str) -> None:
        self.path = Path(folder) / LOCK_FILE
        self.file = file
        self.held = False

    def _holder(self) -> dict | None:
        try:
            data = json.loads(self.path.read_text())
        except FileNotFoundError:
            return {}
        except (OSError, ValueError):
            return None
        return data if isinstance(data, dict) and isinstance(data.get("pid"), int) else None

    def acquire(self) -> None:
        me = {"pid": os.getpid(), "host": socket.gethostname()}
        for _ in range(5):
            try:
                fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            except FileExistsError:
                holder = self._holder()
                if holder is None:           # being written right now, or garbage: look again
                    time.sleep(0.1)
                    holder = self._holder()
                if holder == {}:             # removed meanwhile
                    continue
                if holder is None:
                    raise ConfigError(f"{self.path} exists but does not say which sweep holds it; if no sweep "
                                      "is running on this folder, remove it", field="--out", file=self.file) \
                        from None
                pid, host = holder["pid"], str(holder.get("host", ""))
                if host != me["host"] or pid == me["pid"] or _alive(pid):
                    where = "" if host == me["host"] else f" on host {host}"
                    raise ConfigError(f"another sweep (pid {pid}{where}) is running on this folder: {self.path} "
                                      "holds its lock; wait for it to finish, stop it, or choose another --out"
                                      + ("" if host == me["host"] else
                                         f" (if it is not running on {host} any more, remove {self.path})"),
                                      field="--out", file=self.file) from None
                print(f"note: {self.path}: taking over the lock of pid {pid}, which is not running any more",
                      file=sys.stderr)
                if self._holder() == holder:
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(self.path)
                continue
            with os.fdopen(fd, "w") as fh:
                fh.write(json.dumps(me) + "\n")
            self.held = True
            return
        raise ConfigError(f"could not take {self.path}: other sweeps keep taking it", field="--out",
                          file=self.file)

    def release(self) -> None:
        if self.held:
            self.held = False
            holder = self._holder()
            if holder and holder.get("pid") == os.getpid():
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(self.path)


# --- the driver's bookkeeping ----------------------------------------------------
def _get(d: Any, path: str) -> Any:
    for k in path.split("."):
        if isinstance(d, dict):
            d = d.get(k)
        elif isinstance(d, list) and k.isdigit() and int(k) < len(d):
            d = d[int(k)]
        else:
            return None
    return d


def _changes(old: Any, new: dict) -> str:
    """The fields that differ between a point's old scenario.yaml and its scenario now."""
    from sim.study.replay import _diff
    if not isinstance(old, dict):
        return ""
    diff = _diff(old, new)

    def show(v: Any) -> str:
        text = "(unset)" if v is None else json.dumps(v) if isinstance(v, (dict, list)) else str(v)
        return text if len(text) <= 60 else text[:57] + "..."

    parts = [f"{p}: {show(_get(old, p))} -> {show(_get(new, p))}" for p in diff[:4]]
    return "; ".join(parts) + (f"; and {len(diff) - 4} more" if len(diff) > 4 else "")


class _Sweep:
    """The driver's bookkeeping: points, results, done markers, the summary."""

    def __init__(self, out_dir: Path, points: list[dict], quiet: bool, hashes: dict[int, str],
                 log: str | None = None) -> None:
        self.log = log                              # a tracker logging each done point (sim/study/tracking.py)
        self.out_dir, self.points, self.quiet, self.hashes = out_dir, points, quiet, hashes
        self.results: dict[int, dict] = {}
        self.rows: dict[int, list[dict]] = {}      # summary rows of points checked done
        self.runs: dict[int, str] = {}             # the run id in a done point's marker
        self.current: int | None = None            # the replay being written

    def dir(self, i: int) -> Path:
        return self.out_dir / "points" / f"{i:03d}"

    def resume(self, scenarios: dict) -> None:
        """Keep the points finished earlier whose marker matches what they are
        now; empty the folders of the others (saying why) so they run afresh."""
        markers = {i: read_marker(self.dir(i)) for i in scenarios}
        why: dict[int, str] = {}
        replays = []
        for i, m in markers.items():
            if m is None:
                if self.dir(i).exists() and any(self.dir(i).iterdir()):
                    why[i] = "it did not finish in an earlier run (no done marker: interrupted or failed)"
            elif not m.get("hash"):
                why[i] = "its done marker records no scenario hash (written by an older commsim)"
            elif m["hash"] != self.hashes[i]:
                try:
                    old = yaml.safe_load((self.dir(i) / "scenario.yaml").read_text())
                except (OSError, yaml.YAMLError, UnicodeDecodeError):
                    old = None
                changed = _changes(old, scenarios[i].dump())
                why[i] = f"its scenario changed since the last run{f' ({changed})' if changed else ''}"
            elif m.get("mode") == "replay":
                replays.append(i)
            else:
                self._keep(i, m)
        # a replay is current when its source is kept, with the run it was replayed from
        while replays:
            left = []
            for i in replays:
                m, src = markers[i], markers[i].get("source")
                if not isinstance(src, int) or "source_hash" not in m:
                    why[i] = "its done marker does not record the point it was replayed from"
                elif self._kept(src):
                    if m["source_hash"] != self.hashes.get(src) or m.get("source_run") != self.runs.get(src):
                        why[i] = f"its replay source, point {src:03d}, was re-run since"
                    else:
                        self._keep(i, m)
                elif src in replays and src not in why:
                    left.append(i)              # its source is a replay not decided yet
                else:
                    state = "is re-run" if src in why else "is not done now"
                    why[i] = f"its replay source, point {src:03d}, {state}"
            if len(left) == len(replays):
                for i in left:
                    why[i] = f"its replay source, point {markers[i]['source']:03d}, is re-run"
                break
            replays = left
        for i in sorted(why):
            print(f"point {i:03d}: {why[i]}; re-run", file=sys.stderr)
        for i in scenarios:
            if i not in self.results and self.dir(i).exists():
                shutil.rmtree(self.dir(i))          # no old file mixed into the new run
        for stale in (self.out_dir / "points").glob(".*.part-*"):     # a Ray point's files half-gathered when
            shutil.rmtree(stale, ignore_errors=True)                   # the driver died (sim/study/backends.py)
        extra = sorted(p.name for p in (self.out_dir / "points").glob("*")
                       if p.is_dir() and p.name.isdigit() and int(p.name) >= len(self.points))
        if extra:
            print(f"note: {len(extra)} point folder(s) in {self.out_dir / 'points'} ({extra[0]} .. {extra[-1]}) "
                  f"are from an earlier run with more points; this sweep has {len(self.points)} and does not "
                  "list them", file=sys.stderr)

    def _kept(self, i: int) -> bool:
        return self.results.get(i, {}).get("status") == "done"

    def _keep(self, i: int, marker: dict) -> None:
        rows = _point_rows(self.dir(i), self.hashes[i])
        if rows is None:
            return
        self.results[i] = {"status": "done", "error": "", "mode": marker.get("mode", "full"),
                           "note": marker.get("note", "")}
        self.rows[i] = rows
        self.runs[i] = str(marker.get("run", ""))
        if self.log and not (self.dir(i) / "tensorboard").exists():   # done before without --log
            from sim.study import tracking
            tracking.write(self.log, self.dir(i))

    def done(self, i: int, result: dict, source: int | None = None) -> None:
        self.results[i] = result
        if result["status"] == "done":
            self.runs[i] = uuid.uuid4().hex
            meta = {"mode": result["mode"], "note": result["note"], "hash": self.hashes[i], "run": self.runs[i]}
            if source is not None:
                meta |= {"source": source, "source_hash": self.hashes[source], "source_run": self.runs.get(source)}
            _write_atomic(self.dir(i) / MARKER, yaml.safe_dump(meta, sort_keys=False))
            self.rows[i] = _point_rows(self.dir(i), None) or []
            if self.log:
                from sim.study import tracking
                tracking.write(self.log, self.dir(i))
        self.write_summary()
        if not self.quiet or result["status"] != "done":
            err = result["error"].splitlines()[0] if result["error"] else ""
            node = f" on node {result['node'][:12]}" if result.get("node") else ""     # a Ray cluster's node
            print(f"point {i:03d} {result['status']} ({result['mode']}{': ' + result['note'] if result['note'] else ''})"
                  f"{node}{': ' + err if err else ''}", file=sys.stderr)

    def write_summary(self) -> None:
        write_sweep_summary(self.out_dir, self.points, self.results, self.hashes, self.rows)


@dataclass(frozen=True)
class RayOptions:
    """How full points run on Ray (sim/study/backends.py); ignored by the local backend."""
    retries: int = 2                   # a point whose node dies runs again, on another node, at most this often
    connect_timeout: float = 10.0      # seconds to join --address, or say why not (sim/study/rayconnect.py)
    gpus_per_point: float = 1.0        # what a point on CUDA asks for (a fraction: points share a GPU)
    cpus_per_point: float = 1.0        # what every point asks for (its torch threads)
    extra_paths: tuple[str, ...] = ()  # more files every point needs, sent to the nodes with its own


def run_sweep(path: str, out: str | None, backend: str = "local", workers: int = 1, quiet: bool = False,
              address: str | None = None, changes: dict | None = None, data: Any = None,
              folder: Path | None = None, ray_options: RayOptions | None = None,
              log: str | None = None) -> int:
    """Run a sweep: full co-simulations where the math changes, trace replays
    where only the network does (sim/study/replay.py), on the chosen backend.
    ``changes``, ``data``, ``folder``: see :func:`load_sweep`; ``ray_options``:
    :class:`RayOptions`; ``log``: a tracker (sim/study/tracking.py)
    that logs each point into its folder.  Returns the exit code (see the module docstring)."""
    with sigterm_interrupts():
        try:
            return _run_sweep(path, out, backend, workers, quiet, address, changes, data, folder,
                              ray_options or RayOptions(), log)
        except KeyboardInterrupt:      # before any point ran (while planning): nothing to record
            print("\nsweep interrupted before it started", file=sys.stderr)
            return EXIT_INTERRUPTED


def _run_sweep(path: str, out: str | None, backend: str, workers: int, quiet: bool, address: str | None,
               changes: dict | None = None, data: Any = None, folder: Path | None = None,
               opts: RayOptions = RayOptions(), log: str | None = None) -> int:
    from sim.study import tracking
    from sim.study.backends import BACKENDS, RAY_MISSING, check_point_resources, run_jobs, session
    from sim.study.config import load_scenario, read_yaml
    from sim.study.replay import refusal
    from sim.plugins import explain_missing, worker_specs

    # 1. Check everything; nothing is written before this passes.
    tracking.check(log)
    spec, base, points = load_sweep(path, changes, data, folder)
    if backend not in BACKENDS:
        raise ConfigError(f"unknown backend {backend!r}; allowed: {', '.join(BACKENDS)}", field="--backend",
                          file=path)
    if workers < 1:
        raise ConfigError("--workers must be >= 1", field="--workers", file=path)
    if backend == "ray":
        try:
            import ray  # noqa: F401
        except ImportError:
            raise ConfigError(RAY_MISSING, field="--backend", file=path) from None
    try:
        check_point_resources(opts.gpus_per_point, opts.cpus_per_point, opts.retries)
    except ConfigError as exc:
        raise exc.with_file(path)
    read_yaml(base)                     # the base file is readable YAML (else every point would fail)
    out_dir = Path(out) if out else Path("results") / spec.name
    refuse_file_out(out_dir, path)
    fixed = [_override(k, v) for k, v in spec.set.items()]
    overrides = {i: [*fixed, *[_override(k, v) for k, v in values.items()]] for i, values in enumerate(points)}

    # 2. Plan: every point's scenario; points that differ only in the network
    #    share one source point (the first), whose trace the others replay.
    scenarios, hashes, source_of, refused, invalid = {}, {}, {}, {}, {}
    first: dict[str, int] = {}
    for i in range(len(points)):
        try:
            with explain_missing(out_dir / "points" / f"{i:03d}"):   # its earlier run's plugins, if missing now
                scenarios[i] = load_scenario(base, overrides[i])
        except ConfigError as exc:
            invalid[i] = {"status": "failed", "error": str(exc), "mode": "full", "note": ""}
            continue
        hashes[i] = scenario_hash(scenarios[i])
        if spec.replay == "off":
            continue
        src = first.setdefault(_math_key(scenarios[i]), i)
        if src != i:
            why = refusal(scenarios[src], scenarios[i])
            if why is None:
                source_of[i] = src
            else:
                refused[i] = f"replay refused: {why}"

    # 3. Join the Ray cluster (one that cannot be joined is bad input: nothing
    #    is written), lock the folder, then write: resume, run, summarise.
    from sim.study.backends import Job
    from sim.study.inputs import scenario_inputs
    plugins = worker_specs()                  # loaded by every point's process or Ray task (sim/plugins.py)
    extra_paths = tuple(opts.extra_paths) + tuple(s["file"] for s in plugins if s.get("how") == "file")
    # what the points read, sent to the cluster's nodes when it is joined (sim/study/shipping.py)
    shipped = [Job(i, run_point, (), "", paths=tuple(scenario_inputs(scn, base))) for i, scn in scenarios.items()] \
        if backend == "ray" and address else []
    joined = contextlib.ExitStack()
    try:
        joined.enter_context(session(backend, address, opts.connect_timeout, shipped, extra_paths))
    except ConfigError as exc:
        raise exc.with_file(path)
    with joined:
        out_dir.mkdir(parents=True, exist_ok=True)
        lock = FolderLock(out_dir, path)
        lock.acquire()
        interrupted = False
        try:
            sw = _Sweep(out_dir, points, quiet, hashes, log)
            (out_dir / "sweep.yaml").write_text(yaml.safe_dump(spec.model_dump(), sort_keys=False))
            for i, res in invalid.items():
                sw.results[i] = res
                print(f"point {i:03d} failed: {res['error']}", file=sys.stderr)
            sw.resume(scenarios)
            todo = [i for i in range(len(points)) if i not in sw.results]
            print(f"sweep {spec.name}: {len(points)} points ({len(points) - len(todo)} already done or invalid; "
                  f"{sum(1 for i in todo if i in source_of)} to replay), backend {backend}, results in {out_dir}",
                  file=sys.stderr)
            sw.write_summary()
            try:
                _run_points(sw, todo, base, overrides, scenarios, source_of, refused, path,
                            lambda jobs, on_done: run_jobs(jobs, backend=backend, workers=workers, address=address,
                                                           on_done=on_done, retries=opts.retries,
                                                           connect_timeout=opts.connect_timeout,
                                                           extra_paths=extra_paths, plugins=plugins),
                            opts if backend == "ray" else None)
            except KeyboardInterrupt:
                interrupted = True
                if sw.current is not None and sw.current not in sw.results:
                    sw.results[sw.current] = {"status": "interrupted", "error": "", "mode": "replay", "note": ""}
            sw.write_summary()
        finally:
            lock.release()

        status = [r["status"] for r in sw.results.values()]
        if interrupted:
            print(f"sweep {spec.name} interrupted: {status.count('done')} of {len(points)} points done, "
                  f"{status.count('interrupted')} interrupted, {len(points) - len(status)} not started; "
                  "run the same command again to resume", file=sys.stderr)
            return EXIT_INTERRUPTED
        failed = [i for i, r in sorted(sw.results.items()) if r["status"] != "done"]
        if failed:
            shown = ", ".join(f"{i:03d}" for i in failed[:10]) + (" ..." if len(failed) > 10 else "")
            print(f"sweep {spec.name}: {len(failed)} of {len(points)} points failed ({shown}); "
                  f"see {out_dir / 'sweep_summary.csv'}", file=sys.stderr)
            return EXIT_FAILED
        return EXIT_OK


def _run_points(sw: _Sweep, todo: list[int], base: Path, overrides: dict[int, list[str]], scenarios: dict,
                source_of: dict[int, int], refused: dict[int, str], path: str, run: Any,
                ray: RayOptions | None = None) -> None:
    """Full points on the backend (``run(jobs, on_done)``), then the replays
    here, then the points whose replay was refused at run time.  With ``ray``,
    a job also carries its estimated memory and the paths it reads."""
    from sim.learn.memory import scenario_bytes
    from sim.study.backends import Job, resources
    from sim.study.inputs import scenario_inputs
    from sim.study.replay import frozen_heap

    def full(ids: list[int], notes: dict[int, str]) -> None:
        if not ids:
            return
        jobs = []
        opts = ray or RayOptions()
        for i in ids:
            cpus, gpus = resources(scenarios[i], opts.gpus_per_point, opts.cpus_per_point)
            extra = {"memory_bytes": scenario_bytes(scenarios[i]),
                     "paths": tuple(scenario_inputs(scenarios[i], base))} if ray is not None else {}
            jobs.append(Job(i, run_point, (str(base), overrides[i], True), str(sw.dir(i)), cpus, gpus, **extra))
        try:
            run(jobs, lambda i, r: sw.done(i, {**r, "mode": "full", "note": notes.get(i, "")}))
        except ConfigError as exc:
            raise exc.with_file(path)

    # Full co-simulations: sources and points that cannot be replayed.
    notes = {i: "source of replays" for i in set(source_of.values())} | refused
    full([i for i in todo if i not in source_of], notes)

    # Replays, here (milliseconds each: no gradients, no data).
    fallback: dict[int, str] = {}
    replays = [i for i in todo if i in source_of]
    with frozen_heap() if replays else contextlib.nullcontext():
        _replay_points(sw, replays, scenarios, source_of, fallback)

    # Points whose replay was refused at run time run in full.
    full(list(fallback), fallback)


def _replay_points(sw: _Sweep, replays: list[int], scenarios: dict, source_of: dict[int, int],
                   fallback: dict[int, str]) -> None:
    """Replay the points ``replays`` from their sources' traces, here; a point whose
    replay is impossible or refused goes into ``fallback`` with the reason."""
    from sim.study.replay import replay_run
    from sim.study.trace import ReplayUnavailable
    for i in replays:
        src = source_of[i]
        if sw.results.get(src, {}).get("status") != "done":
            fallback[i] = f"replay impossible: source point {src:03d} did not finish"
            continue
        sw.current = i
        try:
            replay_run(sw.dir(src), scenarios[i], sw.dir(i), plots=False)
            sw.done(i, {"status": "done", "error": "", "mode": "replay", "note": f"replayed from point {src:03d}"},
                    source=src)
        except ReplayUnavailable as exc:
            if sw.dir(i).exists():
                shutil.rmtree(sw.dir(i))
            fallback[i] = f"replay refused: {exc}"
        except Exception as exc:  # noqa: BLE001 - recorded, the sweep goes on
            sw.done(i, {"status": "failed", "error": f"{type(exc).__name__}: {exc}", "mode": "replay", "note": ""})
        sw.current = None
