"""Run traces: everything the network had to carry, round by round.

A synchronous algorithm's learning trajectory does not depend on network
timing, only its clock does.  :class:`Recorder` wraps the engine's
:class:`sim.engine.Trainer` and writes each of its answers to
``RUN_DIR/trace.jsonl``; :class:`Replayer` gives the same answers back, in
the same order, without computing a gradient, so :func:`sim.engine.simulate`
re-times the run under another network exactly (sim/replay.py).

One JSON object per line.  A segment per algorithm and seed:

    {"e": "start", "v": 1, "algorithm": label, "seed": s, "d": d, "n": n,
     "summable": bool, "has_second_round": bool, "updates_without_uploads": bool}
    {"e": "evaluate", "t": round, "out": {"train_loss", "test_loss", "test_acc"}}
    {"e": "plan", "t": round, "in": active, "out": {"sizes": [n][m] payload bytes per
        destination (headers excluded), "sending": bits, "carries": bits,
        "step_s": [n] compute seconds | null (same as the previous plan)}}
    {"e": "second_round", "t": round, "in": arrived, "out": [request_bytes, reply_bytes] | null}
    {"e": "update", "t": round, "in": arrived, "out": {"down": [S] bytes, "finite": bool}}
    {"e": "stats", "out": {"skipped_fraction", "server_state_bytes", "compression_rate"}}

``active``/``arrived``/``sending``/``carries`` are bit strings ("1101", worker
0 first); skip decisions are in ``carries`` (0: a header-only skip notice)
and ``sending``.  Floats are written with ``repr`` (json's default), so they
load back bit for bit.  A segment without its ``stats`` line is incomplete
(the run was interrupted) and cannot be replayed.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import IO, Any

TRACE_FILE = "trace.jsonl"
TRACE_VERSION = 1


class ReplayUnavailable(Exception):
    """The trace cannot reproduce this run: the reason is the message."""


def bits(flags: list[bool]) -> str:
    return "".join("1" if f else "0" for f in flags)


def unbits(s: str) -> list[bool]:
    return [c == "1" for c in s]


class Recorder:
    """Wraps a Trainer; writes each answer to ``fh`` as it is given."""

    def __init__(self, inner, fh: IO[str], label: str, seed: int, d: int, n: int) -> None:
        self.inner, self.fh = inner, fh
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

    def _write(self, event: dict, flush: bool = False) -> None:
        self.fh.write(json.dumps(event, separators=(",", ":")) + "\n")
        if flush:
            self.fh.flush()

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

    def update(self, t: int, arrived: list[bool]) -> dict:
        out = self.inner.update(t, arrived)
        self._write({"e": "update", "t": t, "in": bits(arrived), "out": out})
        return out

    def stats(self) -> dict:
        out = self.inner.stats()
        self._write({"e": "stats", "out": out}, flush=True)
        return out


class Replayer:
    """Gives a recorded segment's answers back, checking that the replay asks
    the same questions (same round, same workers taking part and arriving);
    any difference raises :class:`ReplayUnavailable` naming it."""

    def __init__(self, header: dict, events: list[dict]) -> None:
        self.header = header
        self.events = events
        self.pos = 0
        self.has_second_round = bool(header["has_second_round"])
        self.summable = bool(header["summable"])
        self.updates_without_uploads = bool(header["updates_without_uploads"])
        self._last_step: list[float] | None = None

    def _next(self, kind: str, t: int | None, inp: str | None = None) -> Any:
        where = f"{self.header['algorithm']} (seed {self.header['seed']})"
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
        return ev.get("out")

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


def read_trace(path: str | Path) -> dict[tuple[str, int], tuple[dict, list[dict]]]:
    """(algorithm label, seed) -> (header, events) of every complete segment."""
    segments: dict[tuple[str, int], tuple[dict, list[dict]]] = {}
    header, events = None, []
    with Path(path).open() as fh:
        for line in fh:
            try:
                ev = json.loads(line)
            except json.JSONDecodeError:
                break          # a line cut short by an interruption: the segment is incomplete
            if ev["e"] == "start":
                header, events = ev, []
                if ev.get("v") != TRACE_VERSION:
                    raise ReplayUnavailable(f"{path}: trace version {ev.get('v')}, this commsim reads "
                                            f"version {TRACE_VERSION}")
                continue
            if header is None:
                continue
            events.append(ev)
            if ev["e"] == "stats":
                segments[(header["algorithm"], int(header["seed"]))] = (header, events)
                header, events = None, []
    return segments
