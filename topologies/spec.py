"""The ``network:`` section of a scenario: links, per-worker heterogeneity,
time-varying bandwidth, down intervals.

Per-worker quantities (a link's bandwidth and latency) are one value for all
workers, a list of n values, or a distribution drawn with the scenario seed::

    bandwidth: 1 Gbps
    bandwidth: [1 Gbps, 100 Mbps, 1 Gbps, 10 Mbps]
    bandwidth: {dist: lognormal, median: 1 Gbps, sigma: 0.5}
    bandwidth: {dist: uniform, low: 100 Mbps, high: 1 Gbps}
    bandwidth: {dist: choice, values: [100 Mbps, 1 Gbps], p: [0.2, 0.8]}
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Annotated, Any, Literal, Union

import numpy as np
from pydantic import BaseModel, ConfigDict, Discriminator, Field, PrivateAttr, Tag, create_model, model_validator

from sim.study.inputs import SHA256_PATTERN, local_path, pin
from sim.net.schedule import Schedule, read_trace, with_down_intervals
from sim.unitfields import Bandwidth, BandwidthOrZero, Duration, PositiveDuration


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", defer_build=True)


class _LogNormal(Strict):
    """exp(N(log median, sigma^2)) per worker."""
    dist: Literal["lognormal"]
    sigma: float = Field(gt=0)

    def draw(self, n: int, rng: np.random.Generator) -> list[float]:
        return [float(v) for v in self.median * np.exp(self.sigma * rng.standard_normal(n))]


class _Uniform(Strict):
    """Uniform on [low, high] per worker."""
    dist: Literal["uniform"]

    @model_validator(mode="after")
    def _order(self):
        if self.high < self.low:
            raise ValueError("high must be >= low")
        return self

    def draw(self, n: int, rng: np.random.Generator) -> list[float]:
        return [float(v) for v in rng.uniform(self.low, self.high, n)]


class _Choice(Strict):
    """One of ``values`` per worker, with probabilities ``p`` (default: equal)."""
    dist: Literal["choice"]
    p: list[float] | None = None

    @model_validator(mode="after")
    def _probs(self):
        if self.p is not None:
            if len(self.p) != len(self.values) or any(x < 0 for x in self.p) or \
                    not math.isclose(sum(self.p), 1.0, rel_tol=1e-9):
                raise ValueError("p must list one probability >= 0 per value, summing to 1")
        return self

    def draw(self, n: int, rng: np.random.Generator) -> list[float]:
        idx = rng.choice(len(self.values), size=n, p=self.p)
        return [float(self.values[i]) for i in idx]


def _dists(Q: Any, label: str):
    """The three distributions of a quantity of type ``Q``, as a union on ``dist``.
    Built with create_model so that each class has its own name (LogNormalBandwidth,
    ...), which also names its JSON Schema definition (``run_sim.py schema``)."""
    fields = {"lognormal": {"median": (Q, ...)}, "uniform": {"low": (Q, ...), "high": (Q, ...)},
              "choice": {"values": (list[Q], Field(min_length=1))}}
    classes = []
    for base, kind in ((_LogNormal, "lognormal"), (_Uniform, "uniform"), (_Choice, "choice")):
        cls = create_model(f"{base.__name__[1:]}{label}", __base__=base, __module__=__name__, **fields[kind])
        cls.__doc__ = base.__doc__
        classes.append(cls)
    return Annotated[Union[tuple(classes)], Field(discriminator="dist")]


def _shape(v: Any) -> str:
    if isinstance(v, list):
        return "list"
    if isinstance(v, dict) or hasattr(v, "draw"):
        return "dist"
    return "one"


def per_worker_type(Q: Any, dist: Any) -> Any:
    """One value, a list of n, or a distribution; the input's shape picks the
    branch, so an error names only what was wrong with that shape."""
    return Annotated[Union[Annotated[Q, Tag("one")], Annotated[list[Q], Tag("list")],
                           Annotated[dist, Tag("dist")]], Discriminator(_shape)]


BandwidthDist = _dists(Bandwidth, "Bandwidth")
DurationDist = _dists(Duration, "Duration")
PerWorkerBandwidth = per_worker_type(Bandwidth, BandwidthDist)
PerWorkerDuration = per_worker_type(Duration, DurationDist)


def per_worker(value: Any, n: int, rng: np.random.Generator, field: str) -> list[float]:
    """One value per worker from a scalar, a list of n, or a distribution."""
    if isinstance(value, list):
        if len(value) != n:
            raise ValueError(f"{field} lists {len(value)} values; allowed: one value, a distribution, "
                             f"or a list of exactly workers = {n}")
        return [float(v) for v in value]
    if hasattr(value, "draw"):
        return value.draw(n, rng)
    return [float(value)] * n


class SchedulePoint(Strict):
    at: Duration = Field(description='time the bandwidth takes this value, e.g. "10 s"')
    bandwidth: BandwidthOrZero = Field(description='from this time on, e.g. "100 Mbps" (0: down)')


class DownInterval(Strict):
    start: Duration
    end: Duration

    @model_validator(mode="after")
    def _order(self):
        if self.end <= self.start:
            raise ValueError("end must be after start")
        return self


class LinkSpec(Strict):
    """A link (or, for per-worker links, one link per worker)."""

    bandwidth: PerWorkerBandwidth | None = Field(None, description='e.g. "1 Gbps"')
    latency: PerWorkerDuration = Field(0.0, description='one-way, e.g. "5 ms"')
    schedule: list[SchedulePoint] | None = Field(
        None, description="piecewise-constant bandwidth: [{at: 0 s, bandwidth: 1 Gbps}, ...], times increasing")
    trace: str | None = Field(None, description="CSV file with columns time_s,bandwidth_bps")
    trace_sha256: str | None = Field(None, pattern=SHA256_PATTERN,
                                     description="the trace's SHA-256 (a run writes it; a changed file is refused)")
    period: PositiveDuration | None = Field(None, description="repeat the schedule or trace every period")
    down: list[DownInterval] = Field(default_factory=list, description="intervals with the link down")
    _trace_points: tuple[list[float], list[float]] | None = PrivateAttr(None)

    @model_validator(mode="after")
    def _check(self):
        if self.schedule is not None and self.trace is not None:
            raise ValueError("give either schedule or trace, not both")
        if self.bandwidth is None and self.schedule is None and self.trace is None:
            raise ValueError("bandwidth is required (or a schedule or trace)")
        if self.schedule is not None:
            times = [p.at for p in self.schedule]
            if not times:
                raise ValueError("schedule needs at least one point")
            if any(b <= a for a, b in zip(times, times[1:])):
                raise ValueError(f"schedule times must be strictly increasing, got {times}")
        if self.period is not None and self.schedule is None and self.trace is None:
            raise ValueError("period applies to a schedule or a trace")
        return self

    def load_trace(self, base: Path, field: str) -> None:
        """Read the trace file (relative to the scenario's folder); errors name the
        line.  The path becomes absolute and its hash is recorded (sim/study/inputs.py)."""
        if self.trace is not None:
            path, digest = pin(self.trace, base, self.trace_sha256, field, "bandwidth trace (CSV)")
            self._trace_points = read_trace(local_path(path), field)
            self.trace, self.trace_sha256 = str(path), digest

    def nominal(self, n: int, rng: np.random.Generator, field: str) -> list[float]:
        if self.bandwidth is None:
            return [math.nan] * n
        return per_worker(self.bandwidth, n, rng, f"{field}.bandwidth")

    def latencies(self, n: int, rng: np.random.Generator, field: str) -> list[float]:
        return per_worker(self.latency, n, rng, f"{field}.latency")

    def make_schedule(self, nominal_bps: float) -> Schedule | None:
        """The link's bandwidth over time, or None when it is constant."""
        sched = None
        points = None
        if self.schedule is not None:
            points = ([p.at for p in self.schedule], [p.bandwidth for p in self.schedule])
        elif self._trace_points is not None:
            points = self._trace_points
        if points is not None:
            times, bws = list(points[0]), list(points[1])
            if times[0] > 0:  # before the first point: the nominal bandwidth (0 if none given)
                times.insert(0, 0.0)
                bws.insert(0, 0.0 if math.isnan(nominal_bps) else nominal_bps)
            if self.period is not None and self.period <= times[-1]:
                raise ValueError(f"period {self.period} s must be longer than the last point {times[-1]} s")
            sched = Schedule(tuple(times), tuple(bws), self.period)
        downs = [(d.start, d.end) for d in self.down]
        return with_down_intervals(sched, nominal_bps, downs)


def link_attrs(bandwidth_bps: float, latency_s: float, schedule: Schedule | None) -> dict:
    """Edge attributes of a graph edge: SI units in the names."""
    bw = bandwidth_bps if not math.isnan(bandwidth_bps) else (schedule.rate_at(0.0) if schedule else 0.0)
    return {"bandwidth_bps": bw, "latency_s": latency_s, "schedule": schedule}
