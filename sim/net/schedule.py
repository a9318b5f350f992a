"""Piecewise-constant bandwidth over time: schedules, traces, and down intervals.

A :class:`Schedule` holds change points ``times_s[0] = 0 < times_s[1] < ...``
and the bandwidth from each point on.  With ``period_s`` it repeats (a looping
trace).  Down intervals multiply the bandwidth by 0 between ``start`` and
``end``.  The link's nominal bandwidth is used before the first point when it
is not 0.
"""
from __future__ import annotations

import bisect
import csv
import io
import math
from dataclasses import dataclass
from pathlib import Path

from sim.errors import ConfigError


@dataclass(frozen=True)
class Schedule:
    times_s: tuple[float, ...]        # change points, strictly increasing, first is 0
    bandwidth_bps: tuple[float, ...]  # bandwidth from each change point on (>= 0)
    period_s: float | None = None     # repeat every period_s (must exceed the last point)

    def __post_init__(self) -> None:
        if not self.times_s or self.times_s[0] != 0.0:
            raise ValueError("a schedule starts at time 0")
        if any(b <= a for a, b in zip(self.times_s, self.times_s[1:])):
            raise ValueError("schedule times must be strictly increasing")
        if any(not (bw >= 0 and math.isfinite(bw)) for bw in self.bandwidth_bps):
            raise ValueError("schedule bandwidths must be finite and >= 0")
        if self.period_s is not None and self.period_s <= self.times_s[-1]:
            raise ValueError("loop period must be longer than the last change point")

    def _locate(self, t: float) -> tuple[int, float]:
        """(segment index, start of the current repetition) at time t."""
        base = 0.0
        if self.period_s is not None:
            k = math.floor(t / self.period_s)
            base = k * self.period_s
            t = t - base
        return bisect.bisect_right(self.times_s, t) - 1, base

    def rate_at(self, t: float) -> float:
        i, _ = self._locate(t)
        return self.bandwidth_bps[i]

    def next_change(self, t: float) -> float | None:
        """The first change point strictly after t (None: constant from t on).

        With a period, ``floor(t / period) * period`` can round so that the
        candidate is not after t; then the search steps on to the next point
        (otherwise a looping schedule could freeze simulated time)."""
        probe = t
        for _ in range(len(self.times_s) + 2):
            i, base = self._locate(probe)
            if i + 1 < len(self.times_s):
                nxt = base + self.times_s[i + 1]
            elif self.period_s is not None:
                nxt = base + self.period_s
            else:
                return None
            if nxt > t:
                return nxt
            probe = math.nextafter(max(nxt, probe), math.inf)
        raise RuntimeError(f"no change point after {t}")  # pragma: no cover

    def finish_time(self, start_s: float, bits: float) -> float:
        """When ``bits`` sent from ``start_s`` at the scheduled rate are done (inf: never)."""
        t = start_s
        left = bits
        for _ in range(10_000_000):
            rate = self.rate_at(t)
            nxt = self.next_change(t)
            if nxt is None:
                return t + left / rate if rate > 0 else math.inf
            if rate > 0 and t + left / rate <= nxt:
                return t + left / rate
            left -= rate * (nxt - t)
            t = nxt
        raise RuntimeError("schedule integration did not terminate")  # pragma: no cover


def with_down_intervals(schedule: Schedule | None, nominal_bps: float,
                        down: list[tuple[float, float]]) -> Schedule | None:
    """Combine a schedule (or a constant ``nominal_bps``) with down intervals.

    Looping schedules are unrolled up to the last down interval's end.
    """
    if not down:
        return schedule
    if schedule is None:
        schedule = Schedule((0.0,), (nominal_bps,))
    horizon = max(e for _, e in down)
    points = {0.0}
    t = 0.0
    while True:
        nxt = schedule.next_change(t)
        if nxt is None or nxt > horizon:
            break
        points.add(nxt)
        t = nxt
    for s, e in down:
        points.update((s, e))
    times = sorted(points)

    def is_down(t: float) -> bool:
        return any(s <= t < e for s, e in down)

    rates = [0.0 if is_down(t) else schedule.rate_at(t) for t in times]
    # After the horizon: the original schedule continues; keep it simple by
    # appending its behaviour only when it is constant from there on.
    if schedule.period_s is not None or schedule.next_change(horizon) is not None:
        # Fall back to unrolling a further stretch of the loop (ten periods).
        end = horizon + 10 * (schedule.period_s or 0.0)
        t = horizon
        while True:
            nxt = schedule.next_change(t)
            if nxt is None or nxt > end:
                break
            times.append(nxt)
            rates.append(schedule.rate_at(nxt))
            t = nxt
    # merge equal neighbours
    mt, mr = [times[0]], [rates[0]]
    for t, r in zip(times[1:], rates[1:]):
        if r != mr[-1]:
            mt.append(t)
            mr.append(r)
    return Schedule(tuple(mt), tuple(mr), None)


def read_trace(path: str | Path, field: str) -> tuple[list[float], list[float]]:
    """Read a CSV trace with columns ``time_s, bandwidth_bps`` (header required).

    Errors name the file and the line.
    """
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"trace file {str(p)!r} not found", field=field)
    times, bws = [], []
    from sim.study.yamlfile import read_text
    try:
        text = read_text(p, "CSV file with columns time_s,bandwidth_bps")
    except ConfigError as exc:
        raise ConfigError(f"{p}: {exc.message}", field=field) from None
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        header = next(reader, None)
        if header is None or [h.strip() for h in header[:2]] != ["time_s", "bandwidth_bps"]:
            raise ConfigError(f"{p}:1: expected the header 'time_s,bandwidth_bps', got {header}", field=field)
        for row in reader:
            lineno = reader.line_num
            if not row or all(not c.strip() for c in row):
                continue
            if len(row) < 2:
                raise ConfigError(f"{p}:{lineno}: expected 2 columns, got {row}", field=field)
            try:
                t, bw = float(row[0]), float(row[1])
            except ValueError:
                raise ConfigError(f"{p}:{lineno}: not numbers: {row}", field=field) from None
            if not (math.isfinite(t) and math.isfinite(bw)) or bw < 0 or t < 0:
                raise ConfigError(f"{p}:{lineno}: time_s must be >= 0 and bandwidth_bps >= 0, got {row}",
                                  field=field)
            if times and t <= times[-1]:
                raise ConfigError(f"{p}:{lineno}: time_s {t} is not after the previous {times[-1]}",
                                  field=field)
            times.append(t)
            bws.append(bw)
    except csv.Error as exc:
        raise ConfigError(f"{p}:{reader.line_num}: not CSV ({exc})", field=field) from None
    if not times:
        raise ConfigError(f"{p}: the trace has no rows", field=field)
    return times, bws
