"""A flow-level network model on SimPy.

Each message is a *flow* along its route (a list of directed links).  Active
flows share every link max-min fairly: rates are recomputed by progressive
filling whenever a flow starts or ends (Bertsekas & Gallager, *Data Networks*,
2nd ed., Sec. 6.5.2).  A message's last byte leaves the sender when its bytes
have drained at those rates, and arrives one path latency later:

    arrival = start + transfer time under sharing + sum of link latencies

so a lone message takes ``latency_s + 8 * nbytes / bandwidth_bps`` (the
closed form the tests check).  This is the usual fluid approximation (SimGrid's
default model adds latency the same way); packets, slow start and queues are
not modelled.

Why hand-written: SimPy has no fluid links, and a `simpy.Resource` per link
would serialise messages (FIFO), which is a different model.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import networkx as nx
import simpy

from .wire import Message

# A flow with less than this much sending time left is done (absorbs float
# rounding in remaining -= rate * dt).
_EPS_S = 1e-12


@dataclass(eq=False)
class Link:
    """A directed link; its capacity is shared by the flows crossing it."""

    src: str
    dst: str
    bandwidth_bps: float
    latency_s: float
    bytes_carried: float = 0.0   # bytes of messages that crossed this link
    busy_s: float = 0.0          # simulated time with at least one active flow
    active: int = 0              # flows now crossing it
    _busy_since: float = 0.0

    @property
    def name(self) -> str:
        return f"{self.src}->{self.dst}"


@dataclass(eq=False)
class Flow:
    msg: Message
    path: tuple[Link, ...]
    remaining_bytes: float
    done: simpy.Event
    start_s: float
    rate_Bps: float = 0.0        # bytes per second, set by max-min sharing
    latency_s: float = field(default=0.0)


def max_min_rates(flows: list[Flow]) -> None:
    """Set ``flow.rate_Bps`` for every flow by progressive filling.

    Repeatedly find the link whose remaining capacity divided by its number of
    not-yet-fixed flows is smallest, fix those flows at that share and take
    their rate off every link they cross.  Ties are broken by the order links
    are first seen, so the result is deterministic.
    """
    cap: dict[Link, float] = {}
    users: dict[Link, list[Flow]] = {}
    for f in flows:
        for link in f.path:
            if link not in cap:
                cap[link] = link.bandwidth_bps / 8.0  # bytes per second
                users[link] = []
            users[link].append(f)
    count = {link: len(fs) for link, fs in users.items()}
    fixed: set[int] = set()
    while count:
        link = min(count, key=lambda l: cap[l] / count[l])
        share = cap[link] / count[link]
        for f in users[link]:
            if id(f) in fixed:
                continue
            fixed.add(id(f))
            f.rate_Bps = share
            for other in f.path:
                cap[other] -= share
                count[other] -= 1
                if count[other] == 0:
                    del count[other]


class Network:
    """Delivers messages over a topology graph whose directed edges carry
    ``bandwidth_bps`` and ``latency_s``; routes are latency-shortest paths."""

    def __init__(self, env: simpy.Environment, graph: nx.DiGraph, sharing: str = "fair") -> None:
        if sharing != "fair":
            raise ValueError(f"unknown sharing model {sharing!r}; allowed: fair")
        self.env = env
        self.graph = graph
        self.links: dict[tuple[str, str], Link] = {}
        for u, v, data in graph.edges(data=True):
            self.links[(u, v)] = Link(u, v, float(data["bandwidth_bps"]), float(data["latency_s"]))
        self._routes: dict[tuple[str, str], tuple[Link, ...]] = {}
        self._flows: list[Flow] = []
        self._last_s = 0.0
        self._wakeup_version = 0
        self.delivered: list[tuple[float, float, Message]] = []  # (send_s, arrive_s, msg) if tracing
        self.trace = False

    # -- routing ---------------------------------------------------------
    def route(self, src: str, dst: str) -> tuple[Link, ...]:
        key = (src, dst)
        if key not in self._routes:
            nodes = nx.shortest_path(self.graph, src, dst, weight="latency_s")
            self._routes[key] = tuple(self.links[(a, b)] for a, b in zip(nodes, nodes[1:]))
        return self._routes[key]

    # -- sending ---------------------------------------------------------
    def send(self, msg: Message) -> simpy.Event:
        """Start sending ``msg`` now; the returned event fires (with the
        message as value) when its last byte reaches ``msg.dst``."""
        path = self.route(msg.src, msg.dst)
        done = self.env.event()
        flow = Flow(msg, path, float(msg.nbytes), done, self.env.now,
                    latency_s=sum(l.latency_s for l in path))
        for link in path:
            link.bytes_carried += msg.nbytes
        self._advance()
        for link in path:
            if link.active == 0:
                link._busy_since = self.env.now
            link.active += 1
        self._flows.append(flow)
        self._reschedule()
        return done

    def _advance(self) -> None:
        """Drain every active flow at its current rate up to now."""
        dt = self.env.now - self._last_s
        if dt > 0:
            for f in self._flows:
                f.remaining_bytes -= f.rate_Bps * dt
        self._last_s = self.env.now

    def _reschedule(self) -> None:
        max_min_rates(self._flows)
        self._wakeup_version += 1
        if not self._flows:
            return
        dt = min(f.remaining_bytes / f.rate_Bps for f in self._flows)
        version = self._wakeup_version
        self.env.timeout(max(dt, 0.0)).callbacks.append(lambda _ev: self._on_wakeup(version))

    def _on_wakeup(self, version: int) -> None:
        if version != self._wakeup_version:
            return  # superseded by a later start or end
        self._advance()
        # Done: less than a picosecond of sending left (float rounding).
        finished = [f for f in self._flows if f.remaining_bytes <= f.rate_Bps * _EPS_S]
        if not finished:  # float rounding left a sliver: wait for it
            self._reschedule()
            return
        for f in finished:
            self._flows.remove(f)
            for link in f.path:
                link.active -= 1
                if link.active == 0:
                    link.busy_s += self.env.now - link._busy_since
            self._deliver(f)
        self._reschedule()

    def _deliver(self, f: Flow) -> None:
        if f.latency_s > 0:
            self.env.timeout(f.latency_s).callbacks.append(lambda _ev: self._arrive(f))
        else:
            self._arrive(f)

    def _arrive(self, f: Flow) -> None:
        if self.trace:
            self.delivered.append((f.start_s, self.env.now, f.msg))
        f.done.succeed(f.msg)
