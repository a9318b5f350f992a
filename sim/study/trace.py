"""Run traces: everything the network had to carry, round by round.

A synchronous algorithm's learning trajectory does not depend on network
timing, only its clock does.  :class:`Recorder` wraps the engine's
:class:`sim.engine.Trainer` and writes each of its answers to
``RUN_DIR/trace.jsonl``; :class:`Replayer` gives the same answers back, in
the same order, without computing a gradient, so :func:`sim.engine.simulate`
re-times the run under another network exactly (sim/study/replay.py).

One JSON object per line.  A segment per algorithm and seed:

    {"e": "start", "v": 1, "algorithm": label, "seed": s, "d": d, "n": n,
     "summable": bool, "has_second_round": bool, "updates_without_uploads": bool}
    {"e": "evaluate", "t": round, "out": {"train_loss", "test_loss", "test_acc"}}
    {"e": "plan", "t": round, "in": active, "out": {"sizes": [n][m] payload bytes per
        destination (headers excluded), "sending": bits, "carries": bits,
        "step_s": [n] compute seconds | null (same as the previous plan)}}
    {"e": "second_round", "t": round, "in": arrived, "out": [request_bytes, reply_bytes] | null}
    {"e": "update", "t": round, "in": arrived, "out": {"down": [S] bytes, "finite": bool,
        "diag": {quantity: number} (optional: the algorithm's diagnostics of the round)}}
    {"e": "stats", "out": {"skipped_fraction", "server_state_bytes", "compression_rate"},
     "sha256": hex digest of the segment's lines before this one (edits are detected)}

``active``/``arrived``/``sending``/``carries`` are bit strings ("1101", worker
0 first); skip decisions are in ``carries`` (0: a header-only skip notice)
and ``sending``.  Floats are written with ``repr`` (json's default), so they
load back bit for bit.  A segment without its ``stats`` line is incomplete
(the run was interrupted) and cannot be replayed.

An event-driven algorithm (sim/eventsim.py) has no rounds: its segment
(:class:`EventRecorder`) is keyed by server version and simulated time and
documents the run; it cannot be replayed (its math depends on the timing),
and its header says why:

    {"e": "start", "v": 1, "algorithm": label, "seed": s, "d": d, "n": n,
     "event_driven": true, "replay": the reason replay refuses it}
    {"e": "evaluate", "t": version, "sim_time_s": t, "out": {"train_loss", "test_loss", "test_acc"}}
    {"e": "apply", "version": version after it, "sim_time_s": t, "worker": i, "computed_at": version,
     "staleness": tau, "step_size": eta, "applied": bool (FedBuff: false while buffered),
     "payload_bytes": its upload's payload (header excluded)}
    {"e": "end", "messages": processed messages, "status": "done" | "stalled" | "diverged",
     "sha256": hex digest of the segment's lines before this one}

One ``apply`` line per processed message, in the order of ``updates.csv``.
"""
from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path
from typing import IO, Any

from sim.errors import os_reason

TRACE_FILE = "trace.jsonl"
TRACE_VERSION = 1


class ReplayUnavailable(Exception):
    """The trace cannot reproduce this run: the reason is the message."""


def bits(flags: list[bool]) -> str:
    return "".join(["1" if f else "0" for f in flags])


def unbits(s: str) -> list[bool]:
    return [c == "1" for c in s]


class SegmentWriter:
    """One segment's lines to ``fh``, hashed as they go (its last line records the digest)."""

    def __init__(self, fh: IO[str]) -> None:
        self.fh = fh
        self._digest = hashlib.sha256()   # over the segment's lines before its last (stats / end) line

    def _write(self, event: dict, flush: bool = False) -> None:
        line = json.dumps(event, separators=(",", ":")) + "\n"
        self._digest.update(line.encode())
        self.fh.write(line)
        if flush:
            self.fh.flush()


class Recorder(SegmentWriter):
    """Wraps a Trainer; writes each answer to ``fh`` as it is given."""

    def __init__(self, inner, fh: IO[str], label: str, seed: int, d: int, n: int) -> None:
        super().__init__(fh)
        self.inner = inner
        self.has_second_round = inner.has_second_round
        self.summable = inner.summable
        self.updates_without_uploads = inner.updates_without_uploads
        self._last_step: list[float] | None = None
        self._write({"e": "start", "v": TRACE_VERSION, "algorithm": label, "seed": seed, "d": d, "n": n,
                     "summable": self.summable, "has_second_round": self.has_second_round,
                     "updates_without_uploads": self.updates_without_uploads})

    @property
    def proto(self):
        return self.inner.proto

    def evaluate(self, t: int) -> dict:
        out = self.inner.evaluate(t)
        self._write({"e": "evaluate", "t": t, "out": out}, flush=True)
        return out

    def plan(self, t: int, active: list[bool]) -> dict | None:
        out = self.inner.plan(t, active)
        rec = None
        if out is not None:
            step = None if out["step_s"] == self._last_step else out["step_s"]
            self._last_step = out["step_s"]
            rec = {"sizes": out["sizes"], "sending": bits(out["sending"]), "carries": bits(out["carries"]),
                   "step_s": step}
        self._write({"e": "plan", "t": t, "in": bits(active), "out": rec})
        return out

    def second_round(self, t: int, arrived: list[bool]) -> list[int] | None:
        out = self.inner.second_round(t, arrived)
        self._write({"e": "second_round", "t": t, "in": bits(arrived), "out": out})
        return out

    def update(self, t: int, arrived: list[bool], late: list[bool] | None = None) -> dict:
        out = self.inner.update(t, arrived) if late is None else self.inner.update(t, arrived, late)
        self._write({"e": "update", "t": t, "in": bits(arrived), "out": out})
        return out

    def stats(self) -> dict:
        out = self.inner.stats()
        self._write({"e": "stats", "out": out, "sha256": self._digest.hexdigest()}, flush=True)
        return out


APPLY_FIELDS = ("version", "sim_time_s", "worker", "computed_at", "staleness", "step_size", "applied",
                "payload_bytes")


class EventRecorder(SegmentWriter):
    """The segment of an event-driven run (see the module docstring): fed the
    engine's evaluation rows (``evaluate``) and processed messages (``apply``,
    the rows of updates.csv plus ``applied`` and ``payload_bytes``)."""

    def __init__(self, fh: IO[str], label: str, seed: int, d: int, n: int, why_not_replayable: str) -> None:
        super().__init__(fh)
        self.messages = 0
        self._write({"e": "start", "v": TRACE_VERSION, "algorithm": label, "seed": seed, "d": d, "n": n,
                     "event_driven": True, "replay": why_not_replayable})

    def evaluate(self, row: dict) -> None:
        self._write({"e": "evaluate", "t": row["round"], "sim_time_s": row["sim_time_s"],
                     "out": {k: row[k] for k in ("train_loss", "test_loss", "test_acc")}}, flush=True)

    def apply(self, row: dict) -> None:
        self.messages += 1
        self._write({"e": "apply", **{k: row[k] for k in APPLY_FIELDS}})

    def end(self, status: str) -> None:
        self._write({"e": "end", "messages": self.messages, "status": status, "sha256": self._digest.hexdigest()},
                    flush=True)


class Replayer:
    """Gives a recorded segment's answers back, checking that the replay asks
    the same questions (same round, same workers taking part and arriving);
    any difference raises :class:`ReplayUnavailable` naming it."""

    def __init__(self, header: dict, events: list[dict], widths: tuple[int, int] | None = None,
                 path: str = TRACE_FILE) -> None:
        self.header = header
        self.events = events
        self.widths = widths     # (destinations per plan, slices per update) of the replaying protocol
        self.path = path
        self.pos = 0
        self.has_second_round = bool(header["has_second_round"])
        self.summable = bool(header["summable"])
        self.updates_without_uploads = bool(header["updates_without_uploads"])
        self._last_step: list[float] | None = None
        self._where = f"{header['algorithm']} (seed {header['seed']})"

    def _next(self, kind: str, t: int | None, inp: str | None = None) -> Any:
        where = self._where
        if self.pos >= len(self.events):
            raise ReplayUnavailable(f"{where}: the trace ends before round {t}'s {kind}: under this network "
                                    "the run goes further than the recorded one (stop.max_sim_time?)")
        ev = self.events[self.pos]
        if ev["e"] != kind or ev.get("t") != t:
            raise ReplayUnavailable(
                f"{where}: at round {t} the replay needs '{kind}' but the recorded run did '{ev['e']}' at "
                f"round {ev.get('t')}: timing changed the run's course (stop.max_sim_time reached at "
                "another round, or a stall)")
        if inp is not None and ev.get("in") != inp:
            what = "took part" if kind == "plan" else "arrived"
            raise ReplayUnavailable(f"{where}: in round {t} the workers that {what} differ from the recorded "
                                    f"run ({inp} vs {ev.get('in')}): timing changes the math here")
        self.pos += 1
        out = ev.get("out")
        if self.widths is not None and out is not None and kind in ("plan", "update"):
            got = len(out["sizes"][0]) if kind == "plan" else len(out["down"])
            want = self.widths[0] if kind == "plan" else self.widths[1]
            if got != want:
                field = "out.sizes" if kind == "plan" else "out.down"
                raise TraceError(f"{self.path}:{ev.get('_line', '?')}: {field}: {got} destinations per worker, "
                                 f"the scenario's protocol has {want} (a trace of another topology, or edited)")
        return out

    def evaluate(self, t: int) -> dict:
        return self._next("evaluate", t)

    def plan(self, t: int, active: list[bool]) -> dict | None:
        out = self._next("plan", t, bits(active))
        if out is None:
            return None
        step = out["step_s"] if out["step_s"] is not None else self._last_step
        self._last_step = step
        return {"sizes": out["sizes"], "sending": unbits(out["sending"]), "carries": unbits(out["carries"]),
                "step_s": step}

    def second_round(self, t: int, arrived: list[bool]) -> list[int] | None:
        return self._next("second_round", t, bits(arrived))

    def update(self, t: int, arrived: list[bool]) -> dict:
        return self._next("update", t, bits(arrived))

    def stats(self) -> dict:
        while self.pos < len(self.events) and self.events[self.pos]["e"] != "stats":
            self.pos += 1     # the replay stopped earlier (stop.max_sim_time at an evaluated round)
        return self._next("stats", None)


class TraceError(ReplayUnavailable):
    """A trace file that is malformed or was edited: names the line and the field."""


def _is_int(v: Any, low: int = 0) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= low


def _is_num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _bits_ok(v: Any, n: int) -> bool:
    return isinstance(v, str) and len(v) == n and set(v) <= {"0", "1"}


START_FIELDS = [("v", _is_int, "an integer"), ("algorithm", lambda v: isinstance(v, str), "a string"),
                ("seed", _is_int, "an integer >= 0"), ("d", lambda v: _is_int(v, 1), "an integer >= 1"),
                ("n", lambda v: _is_int(v, 1), "an integer >= 1")]


def _first_bad(ev: dict, fields) -> str | None:
    for key, ok, want in fields:
        if not ok(ev.get(key)):
            return f"{key}: {ev.get(key)!r}; allowed: {want}"
    return None


def _check_event_driven(ev: dict, n: int | None) -> str | None:
    """The first problem of one event of an event-driven segment, or None."""
    kind = ev.get("e")
    if kind == "start":
        return _first_bad(ev, [*START_FIELDS, ("replay", lambda v: isinstance(v, str), "a string (the reason)")])
    if kind not in ("evaluate", "apply", "end"):
        return f"e: {kind!r}; allowed in an event-driven segment: start, evaluate, apply, end"
    if kind == "evaluate":
        out = ev.get("out")
        bad = _first_bad(ev, [("t", _is_int, "a server version >= 0"), ("sim_time_s", _is_num, "a number")])
        if bad or not isinstance(out, dict):
            return bad or "out: allowed: {train_loss, test_loss, test_acc}"
        return _first_bad(out, [(k, _is_num, "a number") for k in ("train_loss", "test_loss", "test_acc")])
    if kind == "apply":
        return _first_bad(ev, [("version", _is_int, "an integer >= 0"), ("sim_time_s", _is_num, "a number"),
                               ("worker", lambda v: _is_int(v) and v < n, f"a worker index 0 .. {n - 1}"),
                               ("computed_at", _is_int, "an integer >= 0"), ("staleness", _is_int, "an integer >= 0"),
                               ("step_size", _is_num, "a number"),
                               ("applied", lambda v: isinstance(v, bool), "true or false"),
                               ("payload_bytes", _is_int, "an integer >= 0")])
    return _first_bad(ev, [("messages", _is_int, "an integer >= 0"),
                           ("status", lambda v: v in ("done", "stalled", "diverged"), "done, stalled or diverged"),
                           ("sha256", lambda v: isinstance(v, str) and len(v) == 64, "64 hex digits")])


def _check_event(ev: Any, n: int | None, event_driven: bool = False) -> str | None:
    """The first problem of one trace event, as 'field: what is wrong', or None."""
    if not isinstance(ev, dict):
        return f"the line is {type(ev).__name__}, not an event object"
    kind = ev.get("e")
    if (kind == "start" and ev.get("event_driven") is True) or (kind != "start" and event_driven):
        return _check_event_driven(ev, n)
    if kind == "start":
        for key, ok, want in [("v", _is_int, "an integer"), ("algorithm", lambda v: isinstance(v, str), "a string"),
                              ("seed", _is_int, "an integer >= 0"), ("d", lambda v: _is_int(v, 1), "an integer >= 1"),
                              ("n", lambda v: _is_int(v, 1), "an integer >= 1"),
                              ("summable", lambda v: isinstance(v, bool), "true or false"),
                              ("has_second_round", lambda v: isinstance(v, bool), "true or false"),
                              ("updates_without_uploads", lambda v: isinstance(v, bool), "true or false")]:
            if not ok(ev.get(key)):
                return f"{key}: {ev.get(key)!r}; allowed: {want}"
        return None
    if kind not in ("evaluate", "plan", "second_round", "update", "stats"):
        return f"e: {kind!r}; allowed: start, evaluate, plan, second_round, update, stats"
    if n is None:
        return f"e: a {kind!r} event before any 'start' event"
    if kind != "stats" and not _is_int(ev.get("t")):
        return f"t: {ev.get('t')!r}; allowed: a round number >= 0"
    if kind in ("plan", "second_round", "update") and not _bits_ok(ev.get("in"), n):
        return f"in: {ev.get('in')!r}; allowed: a string of {n} '0'/'1' (one per worker)"
    out = ev.get("out")
    if kind == "evaluate":
        if not isinstance(out, dict):
            return "out: allowed: {train_loss, test_loss, test_acc}"
        for key in ("train_loss", "test_loss", "test_acc"):
            if not _is_num(out.get(key)):
                return f"out.{key}: {out.get(key)!r}; allowed: a number"
    elif kind == "plan" and out is not None:
        if not isinstance(out, dict):
            return "out: allowed: null or {sizes, sending, carries, step_s}"
        sizes = out.get("sizes")
        if not (isinstance(sizes, list) and len(sizes) == n and all(isinstance(r, list) and r for r in sizes)
                and len({len(r) for r in sizes}) == 1 and all(_is_int(b) for r in sizes for b in r)):
            return f"out.sizes: allowed: {n} lists (one per worker) of the same number of byte counts >= 0"
        for key in ("sending", "carries"):
            if not _bits_ok(out.get(key), n):
                return f"out.{key}: {out.get(key)!r}; allowed: a string of {n} '0'/'1'"
        step = out.get("step_s")
        if step is not None and not (isinstance(step, list) and len(step) == n and
                                     all(_is_num(x) and math.isfinite(x) and x >= 0 for x in step)):
            return f"out.step_s: allowed: null or {n} finite compute times in seconds >= 0"
    elif kind == "second_round" and out is not None:
        if not (isinstance(out, list) and len(out) == 2 and all(_is_int(x) for x in out)):
            return f"out: {out!r}; allowed: null or [request bytes, reply bytes] (integers >= 0)"
    elif kind == "update":
        if not (isinstance(out, dict) and isinstance(out.get("down"), list) and out["down"]
                and all(_is_int(x) for x in out["down"])):
            return "out.down: allowed: a list of byte counts >= 0 (one per server)"
        if not isinstance(out.get("finite"), bool):
            return f"out.finite: {out.get('finite')!r}; allowed: true or false"
        diag = out.get("diag", {})
        if not (isinstance(diag, dict) and all(isinstance(k, str) and _is_num(v) for k, v in diag.items())):
            return f"out.diag: {diag!r}; allowed: a mapping of quantity names to numbers"
    elif kind == "stats":
        if not isinstance(out, dict):
            return "out: allowed: {skipped_fraction, server_state_bytes, compression_rate}"
        if not _is_num(out.get("skipped_fraction")):
            return f"out.skipped_fraction: {out.get('skipped_fraction')!r}; allowed: a number"
        if not _is_int(out.get("server_state_bytes")):
            return f"out.server_state_bytes: {out.get('server_state_bytes')!r}; allowed: an integer >= 0"
        if not (_is_num(out.get("compression_rate")) or out.get("compression_rate") == ""):
            return f"out.compression_rate: {out.get('compression_rate')!r}; allowed: a number or \"\""
        if "sha256" in ev and not (isinstance(ev["sha256"], str) and len(ev["sha256"]) == 64):
            return f"sha256: {ev['sha256']!r}; allowed: 64 hex digits"
    return None


def read_trace(path: str | Path, data: bytes | None = None) -> dict[tuple[str, int], tuple[dict, list[dict]]]:
    """(algorithm label, seed) -> (header, events) of every complete segment.

    A last line cut short (an interrupted run) ends an incomplete segment,
    which is left out.  Anything else that is not a well-formed event (bad
    JSON in the middle, a wrong type or value, bytes that are not UTF-8), or a
    segment whose lines do not hash to the ``sha256`` its ``stats`` line
    recorded, raises :class:`TraceError` naming the line and the field."""
    path = Path(path)
    segments: dict[tuple[str, int], tuple[dict, list[dict]]] = {}
    header, events, digest, first_line = None, [], hashlib.sha256(), 0
    if data is None:
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise TraceError(f"{path}: cannot be read: {os_reason(exc)}") from None
    raw_lines = data.split(b"\n")
    if raw_lines and raw_lines[-1] == b"":
        raw_lines.pop()
    for lineno, raw in enumerate(raw_lines, start=1):
        where = f"{path}:{lineno}"
        try:
            line = raw.decode("utf-8")
            ev = json.loads(line)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            if lineno == len(raw_lines):
                break          # a line cut short by an interruption: the segment is incomplete
            raise TraceError(f"{where}: not a JSON event ({exc}); the trace was damaged or edited, "
                             "re-run the scenario to record it again") from None
        n = int(header["n"]) if header is not None else None
        problem = _check_event(ev, n, header is not None and header.get("event_driven") is True)
        if problem:
            raise TraceError(f"{where}: {problem} (a malformed or edited trace; re-run the scenario "
                             "to record it again)")
        if ev["e"] == "start":
            if ev["v"] != TRACE_VERSION:
                raise TraceError(f"{where}: v: trace version {ev['v']}, this commsim reads version {TRACE_VERSION}")
            header, events, digest, first_line = ev, [], hashlib.sha256(), lineno
            digest.update(raw + b"\n")
            continue
        if ev["e"] in ("stats", "end"):         # the last line of a segment (end: an event-driven one)
            recorded = ev.get("sha256")
            if recorded is not None and recorded != digest.hexdigest():
                raise TraceError(f"{path}:{first_line}-{lineno - 1}: the lines of {header['algorithm']!r} seed "
                                 f"{header['seed']} do not match the checksum recorded on line {lineno} (sha256): "
                                 "the trace was edited after the run; re-run the scenario to record it again")
            ev["_line"] = lineno
            events.append(ev)
            segments[(header["algorithm"], int(header["seed"]))] = (header, events)
            header, events = None, []
            continue
        digest.update(raw + b"\n")
        ev["_line"] = lineno
        events.append(ev)
    return segments
