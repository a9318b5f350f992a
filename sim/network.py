"""Flow-level network models on SimPy.

Two link-sharing models, chosen by ``network.sharing``:

``fair`` (default)
    Each message is a *flow* along its route (a tuple of directed links).
    Active flows share every link max-min fairly: rates are recomputed by
    progressive filling whenever a flow starts or ends or a link's bandwidth
    changes (Bertsekas & Gallager, *Data Networks*, 2nd ed., Sec. 6.5.2).

``fifo``
    Each link sends one message at a time, in the order message heads reach
    it.  A message crossing several links is pipelined (cut-through), not
    stored and forwarded whole: on link l it starts when its head arrives and
    the link is free, and cannot finish before its tail has arrived from the
    previous link.

In both, a message's last byte arrives one path latency after it has been
sent, so a lone message takes ``sum(latency_s) + 8 * nbytes / min(bandwidth_bps)``
under either model (the closed form the tests check).  A link's bandwidth
may follow a piecewise-constant :class:`~sim.schedule.Schedule` (time-varying
links, down intervals); transfers in flight slow down, stall and resume with
it.  Packets, TCP dynamics and switch buffers are not modelled.

Why hand-written: SimPy has no fluid links, and a ``simpy.Resource`` per link
serialises whole messages link by link (store and forward), which is neither
model.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import networkx as nx
import simpy

from .schedule import Schedule
from .wire import Message

# A flow with less than this much sending time left is done (absorbs float
# rounding in remaining -= rate * dt).
_EPS_S = 1e-12

SHARING_MODELS = ("fair", "fifo")


@dataclass(eq=False)
class Link:
    """A directed link.  ``bandwidth_bps`` is its current capacity."""

    src: str
    dst: str
    bandwidth_bps: float
    latency_s: float
    schedule: Schedule | None = None
    bytes_carried: float = 0.0   # bytes of messages that finished crossing this link
    busy_s: float = 0.0          # simulated time with at least one message on it
    messages: int = 0            # messages that finished crossing it
    active: int = 0              # fair: flows now crossing it
    free_at_s: float = 0.0       # fifo: when the message in service leaves it
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
    their rate off every link they cross.  Ties go to the link seen first, so
    the result is deterministic.  A link of bandwidth 0 (down) fixes its flows
    at rate 0.
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
        share = max(cap[link] / count[link], 0.0)
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
    ``bandwidth_bps`` and ``latency_s`` (and optionally ``schedule``); routes
    are latency-shortest paths (ties: fewest hops, then networkx's order)."""

    def __init__(self, env: simpy.Environment, graph: nx.DiGraph, sharing: str = "fair") -> None:
        if sharing not in SHARING_MODELS:
            raise ValueError(f"unknown sharing model {sharing!r}; allowed: {', '.join(SHARING_MODELS)}")
        self.env = env
        self.graph = graph
        self.sharing = sharing
        self.links: dict[tuple[str, str], Link] = {}
        for u, v, data in graph.edges(data=True):
            link = Link(u, v, float(data["bandwidth_bps"]), float(data["latency_s"]), data.get("schedule"))
            self.links[(u, v)] = link
            if link.schedule is not None:
                link.bandwidth_bps = link.schedule.rate_at(0.0)
                if sharing == "fair":
                    env.process(self._follow_schedule(link))
        self._routes: dict[tuple[str, str], tuple[Link, ...]] = {}
        self._flows: list[Flow] = []
        self._last_s = 0.0
        self._wakeup_version = 0
        self._recompute_pending = False
        self.trace = False
        self.delivered: list[tuple[float, float, Message]] = []  # (send_s, arrive_s, msg) when tracing
        self.in_flight = 0

    # -- routing ---------------------------------------------------------
    def route(self, src: str, dst: str) -> tuple[Link, ...]:
        key = (src, dst)
        if key not in self._routes:
            nodes = nx.shortest_path(self.graph, src, dst, weight=_latency_then_hops)
            self._routes[key] = tuple(self.links[(a, b)] for a, b in zip(nodes, nodes[1:]))
        return self._routes[key]

    # -- sending ---------------------------------------------------------
    def send(self, msg: Message) -> simpy.Event:
        """Start sending ``msg`` now; the returned event fires (with the
        message as value) when its last byte reaches ``msg.dst``."""
        path = self.route(msg.src, msg.dst)
        done = self.env.event()
        self.in_flight += 1
        if self.sharing == "fifo":
            self.env.process(self._fifo(msg, path, done))
            return done
        flow = Flow(msg, path, float(msg.nbytes), done, self.env.now,
                    latency_s=sum(l.latency_s for l in path))
        self._advance()
        for link in path:
            if link.active == 0:
                link._busy_since = self.env.now
            link.active += 1
        self._flows.append(flow)
        self._request_recompute()
        return done

    # -- fair sharing ----------------------------------------------------
    def _request_recompute(self) -> None:
        """Recompute rates once per instant, after every start at this instant
        (n simultaneous uploads cost one progressive filling, not n)."""
        if not self._recompute_pending:
            self._recompute_pending = True
            self.env.timeout(0).callbacks.append(self._recompute)

    def _recompute(self, _ev=None) -> None:
        self._recompute_pending = False
        self._advance()
        self._reschedule()

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
        moving = [f.remaining_bytes / f.rate_Bps for f in self._flows if f.rate_Bps > 0]
        if not moving:
            return  # nothing moves until a start or a bandwidth change
        version = self._wakeup_version
        self.env.timeout(max(min(moving), 0.0)).callbacks.append(lambda _ev: self._on_wakeup(version))

    def _on_wakeup(self, version: int) -> None:
        if version != self._wakeup_version:
            return  # superseded by a later start, end or bandwidth change
        self._advance()
        finished = [f for f in self._flows if f.remaining_bytes <= f.rate_Bps * _EPS_S]
        for f in finished:
            self._flows.remove(f)
            for link in f.path:
                link.active -= 1
                if link.active == 0:
                    link.busy_s += self.env.now - link._busy_since
            self._sent(f.msg, f.path)
            self._after(f.latency_s, f.start_s, f.msg, f.done)
        self._reschedule()

    def _follow_schedule(self, link: Link):
        while True:
            nxt = link.schedule.next_change(self.env.now)
            if nxt is None:
                return
            yield self.env.timeout(nxt - self.env.now)
            self._advance()
            link.bandwidth_bps = link.schedule.rate_at(self.env.now)
            self._reschedule()

    # -- fifo ------------------------------------------------------------
    def _fifo(self, msg: Message, path: tuple[Link, ...], done: simpy.Event):
        start = self.env.now
        bits = 8.0 * msg.nbytes
        tail_s = start           # when the tail is available at the current link
        for link in path:        # the head has just reached `link`
            begin = max(self.env.now, link.free_at_s)
            if link.schedule is not None:
                end = link.schedule.finish_time(begin, bits)
            else:
                end = begin + bits / link.bandwidth_bps
            end = max(end, tail_s)
            if math.isinf(end):
                return           # the link never comes back: the message never arrives
            link.free_at_s = end
            link.busy_s += end - begin
            link.bytes_carried += msg.nbytes
            link.messages += 1
            tail_s = end + link.latency_s
            yield self.env.timeout(begin + link.latency_s - self.env.now)  # head to the next node
        self.in_flight -= 1
        yield self.env.timeout(max(tail_s - self.env.now, 0.0))
        if self.trace:
            self.delivered.append((start, self.env.now, msg))
        done.succeed(msg)

    # -- delivery --------------------------------------------------------
    def _sent(self, msg: Message, path: tuple[Link, ...]) -> None:
        for link in path:
            link.bytes_carried += msg.nbytes
            link.messages += 1
        self.in_flight -= 1

    def _after(self, latency_s: float, start_s: float, msg: Message, done: simpy.Event) -> None:
        def arrive(_ev=None):
            if self.trace:
                self.delivered.append((start_s, self.env.now, msg))
            done.succeed(msg)
        if latency_s > 0:
            self.env.timeout(latency_s).callbacks.append(arrive)
        else:
            arrive()


def _latency_then_hops(u, v, data) -> float:
    # latency-shortest; a tiny per-hop term makes ties go to fewer hops
    return data["latency_s"] + 1e-12
