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
may follow a piecewise-constant :class:`~sim.net.schedule.Schedule` (time-varying
links, down intervals); transfers in flight slow down, stall and resume with
it.  Packets, TCP dynamics and switch buffers are not modelled.

Why hand-written: SimPy has no fluid links, and a ``simpy.Resource`` per link
serialises whole messages link by link (store and forward), which is neither
model.
"""
from __future__ import annotations

import math
from functools import partial
from dataclasses import dataclass

import heapq

import networkx as nx
import numpy as np
import simpy

from sim.net.batch import Batch
from sim.net.schedule import Schedule
from sim.net.wire import Message

# A flow with less than this much sending time left is done (absorbs float
# rounding in remaining -= rate * dt).
_EPS_S = 1e-12

SHARING_MODELS = ("fair", "fifo")

# From this many active flows, fair sharing keeps them as numpy rows (Network._reschedule).
_ROWS_FROM = 64

# Fillings remembered per network (Network._fill); the memo starts over when full.
_FILLS_KEPT = 4096


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


class Flow:
    """A message on its way under fair sharing.  A plain class with slots, not a
    dataclass: one is made per message, on the hot path of a replay."""

    __slots__ = ("msg", "path", "remaining_bytes", "done", "start_s", "rate_Bps", "latency_s", "nbytes")

    def __init__(self, msg: Message, path: tuple[Link, ...], remaining_bytes: float, done: simpy.Event,
                 start_s: float, rate_Bps: float = 0.0, latency_s: float = 0.0) -> None:
        self.nbytes = msg.header_bytes + msg.payload_bytes   # msg.nbytes (bytes on the wire), no property call
        self.msg = msg
        self.path = path
        self.remaining_bytes = remaining_bytes
        self.done = done
        self.start_s = start_s
        self.rate_Bps = rate_Bps      # bytes per second, set by max-min sharing
        self.latency_s = latency_s


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
    if _one_shared_link(flows, cap, count):     # a star, or disjoint paths (no link shared)
        return
    # The link with the smallest cap / count (ties: the link seen first) from a heap of
    # (cap / count, first-seen index, stamp), an entry valid while its stamp is the link's
    # latest: the same choice as min() over the links in first-seen order, in O(log L) a step
    # instead of O(L) (a star's server link is shared by every flow, so L steps of O(L) each).
    order = {link: k for k, link in enumerate(count)}
    stamp = dict.fromkeys(count, 0)
    heap = [(cap[link] / c, order[link], 0, link) for link, c in count.items()]
    heapq.heapify(heap)
    fixed: set[int] = set()
    while count:
        _, _, st, link = heapq.heappop(heap)
        if link not in count or st != stamp[link]:
            continue                                   # stale: the link changed (or is done) since
        share = max(cap[link] / count[link], 0.0)
        touched = []
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
                else:
                    touched.append(other)
        for other in touched:
            if other in count:
                stamp[other] += 1
                heapq.heappush(heap, (cap[other] / count[other], order[other], stamp[other], other))


def _one_shared_link(flows: list[Flow], cap: dict[Link, float], count: dict[Link, int]) -> bool:
    """The progressive filling below, in O(k log k), when no flow crosses more
    than one shared link (a link with two flows or more): a star, whose
    workers' own links each carry one flow and whose server NIC carries them
    all.  Sets the rates and returns True; returns False (nothing set) when
    the flows do not have that shape or a capacity is not finite.

    Why it gives bitwise the filling's rates.  The filling takes links in the
    order of (cap / count, first-seen index), and a link's cap and count
    change only when a flow crossing it is fixed.  So the flows of one shared
    link S and their own links form a group that no other link touches, and
    the picks within a group come in the same order, with the same floats,
    whatever the other groups do.  In a group, an own link (count 1) keeps its
    ratio cap / 1 = cap until its flow is fixed, so each flow of S has one
    candidate, its own link with the smallest (cap, first-seen index); its
    other own links are deleted, unpicked, when it is fixed.  Taking the
    candidates in that order, a candidate is picked while it comes before S's
    (cap_S / count_S, index_S): its flow gets max(cap / 1, 0.0), and cap_S
    loses that share (count_S one flow); once S comes first, its unfixed
    flows all get max(cap_S / count_S, 0.0).  A flow on own links only (no
    link shared: disjoint paths) is fixed at its smallest cap, and what that
    takes off its other links touches no other flow: it gets
    max(smallest cap, 0.0).
    """
    if not math.isfinite(sum(cap.values())):      # an inf or NaN somewhere (or an overflow): the filling
        return False
    order = {link: k for k, link in enumerate(count)}
    groups: dict[Link, list] = {}
    lone = []
    for f in flows:
        shared = None
        best = None
        for link in f.path:
            if count[link] > 1:
                if shared is not None:
                    return False                     # two shared links on one path
                shared = link
            else:
                key = (cap[link], order[link])       # its ratio cap / 1, which is cap exactly
                if best is None or key < best:
                    best = key
        if shared is None:
            if best is not None:
                lone.append((f, max(best[0], 0.0)))
        else:
            groups.setdefault(shared, []).append((best, f))
    for f, rate in lone:
        f.rate_Bps = rate
    for s, members in groups.items():
        cap_s, count_s, index_s = cap[s], count[s], order[s]
        rest = [f for best, f in members if best is None]
        cand = sorted((best, i, f) for i, (best, f) in enumerate(members) if best is not None)
        j = 0
        while j < len(cand):
            (u, index), _, f = cand[j]
            if (cap_s / count_s, index_s) < (u, index):
                break
            share = max(u, 0.0)
            f.rate_Bps = share
            cap_s -= share
            count_s -= 1
            j += 1
        if count_s:
            share = max(cap_s / count_s, 0.0)
            for _, _, f in cand[j:]:
                f.rate_Bps = share
            for f in rest:
                f.rate_Bps = share
    return True


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
        self._hops: dict[tuple[str, str], tuple[tuple[Link, ...], float]] = {}   # (src, dst) -> (route, its latency_s)
        self._flows: list[Flow] = []
        self._last_s = 0.0
        self._wakeup_version = 0
        self._recompute_pending = False
        self._fills: dict[tuple, tuple] = {}   # flow paths -> a remembered filling (see _fill)
        self.trace = False
        self.carry = True    # deliveries due at one instant share a queue entry (_deliver)
        self.delivered: list[tuple[float, float, Message]] = []  # (send_s, arrive_s, msg) when tracing
        self.in_flight = 0

    # -- routing ---------------------------------------------------------
    def route(self, src: str, dst: str) -> tuple[Link, ...]:
        """The latency-shortest path from src to dst, as links.  A miss runs one
        Dijkstra from src and one towards dst and caches every route they give,
        so n workers uploading to one server cost two searches, not n."""
        key = (src, dst)
        if key not in self._routes:
            for paths in (nx.shortest_path(self.graph, source=src, weight=_latency_then_hops),
                          nx.shortest_path(self.graph, target=dst, weight=_latency_then_hops)):
                for nodes in paths.values():
                    k = (nodes[0], nodes[-1])
                    if k not in self._routes and len(nodes) > 1:
                        self._routes[k] = tuple(self.links[(a, b)] for a, b in zip(nodes, nodes[1:]))
            if key not in self._routes:
                raise nx.NetworkXNoPath(f"no route from {src} to {dst}")
        return self._routes[key]

    # -- sending ---------------------------------------------------------
    def send(self, msg: Message) -> simpy.Event:
        """Start sending ``msg`` now; the returned event fires (with the
        message as value) when its last byte reaches ``msg.dst``."""
        key = (msg.src, msg.dst)
        hop = self._hops.get(key)
        if hop is None:             # link latencies are fixed (schedules change bandwidth only)
            path = self._routes.get(key) or self.route(msg.src, msg.dst)
            hop = self._hops[key] = (path, sum(l.latency_s for l in path))
        path, latency_s = hop
        env = self.env
        done = simpy.Event(env)
        self.in_flight += 1
        if self.sharing == "fifo":
            self._fifo(msg, path, done)
            return done
        now = env._now
        if now != self._last_s:
            self._advance()
        self._flows.append(Flow(msg, path, float(msg.header_bytes + msg.payload_bytes), done, now, 0.0, latency_s))
        for link in path:
            if link.active == 0:
                link._busy_since = now
            link.active += 1
        if not self._recompute_pending:
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
        """Drain every active flow at its current rate up to now.

        With many flows active, fair sharing keeps their bytes left and rates
        in numpy rows (see :meth:`_reschedule`) and drains them in one vector
        operation: ``rem - rate * dt`` elementwise rounds exactly as
        ``f.remaining_bytes -= f.rate_Bps * dt`` does, flow by flow.  Flows
        started since the last recomputation are not rows yet; their rate is
        still 0, so there is nothing to drain for them.
        """
        dt = self.env.now - self._last_s
        if dt > 0:
            rem = getattr(self, "_rem", None)
            if rem is None:
                for f in self._flows:
                    f.remaining_bytes -= f.rate_Bps * dt
            else:
                rem -= self._rate * dt
        self._last_s = self.env.now

    def _reschedule(self) -> None:
        """Set every active flow's rate by progressive filling and schedule a
        wake-up for when the first flow finishes.

        With fewer than 64 flows this calls :func:`max_min_rates`.  With more,
        it runs the same progressive filling with numpy on state kept from
        call to call instead of dicts rebuilt from every path: rows ``_rem``
        (bytes left) and ``_rate`` (bytes/s), one per flow of ``self._flows``
        in its order, and the flow x link incidence as two index arrays,
        ``_inc_row`` and ``_inc_link``, flows in order and each path in order
        (links numbered in ``_link_list`` by first use).  Flows that ``send``
        has appended since the last call become rows first, rows of finished
        flows are dropped by :meth:`_on_wakeup`, and when the flows drop below
        64 the rows go back onto the Flow objects.  While a flow is a row, the
        row, not the Flow, holds its bytes left and rate; both are written
        back to the Flow when it finishes.

        Why the numpy filling gives bitwise the rates of ``max_min_rates``:
        each iteration picks the same link, the one with the smallest
        remaining capacity / unfixed flows, ties to the link seen first in
        the flows' order (its first position in ``_inc_link``); fixes the same
        flows (its unfixed ones) at the same ``share = max(cap / count, 0.0)``
        (the same float operations); and takes ``share`` off each link once
        per newly fixed flow crossing it, as the loop does.  ``np.subtract.at``
        applies repeated indices one after the other, so a link crossed by m
        of them goes through the same m roundings, and their order does not
        matter as all m subtract the same number.  A flow with an empty path
        is never fixed and keeps its rate, as there.  Links that tie for the
        smallest share are fixed in one step where the loop provably fixes
        them one after the other at that share (see the comment there), and
        one at a time otherwise.  The cost is a few numpy calls per step, not
        Python work per flow and link.
        """
        flows = self._flows
        if len(flows) < _ROWS_FROM:
            if getattr(self, "_rem", None) is not None:   # leave the rows
                for f, r, b in zip(flows, self._rem.tolist(), self._rate.tolist()):
                    f.remaining_bytes = r
                    f.rate_Bps = b
                self._rem = self._rate = None
            self._fill(flows)
            self._wakeup_version += 1
            moving = [f.remaining_bytes / f.rate_Bps for f in flows if f.rate_Bps > 0]
            if not moving:
                return  # nothing moves until a start or a bandwidth change
            first_done = min(moving)
        else:

            if getattr(self, "_rem", None) is None:         # enter the rows
                if getattr(self, "_link_ids", None) is None:
                    self._link_ids: dict[Link, int] = {}
                    self._link_list: list[Link] = []
                    self._link_cap = np.zeros(0)
                self._rem = np.zeros(0)
                self._rate = np.zeros(0)
                self._inc_row = np.zeros(0, np.intp)
                self._inc_link = np.zeros(0, np.intp)
            nrows = self._rem.size
            if len(flows) > nrows:                          # new flows become rows
                new = flows[nrows:]
                rows, ids = [], []
                link_ids, link_list = self._link_ids, self._link_list
                for r, f in enumerate(new, nrows):
                    for link in f.path:
                        i = link_ids.get(link)
                        if i is None:
                            i = link_ids[link] = len(link_list)
                            link_list.append(link)
                        rows.append(r)
                        ids.append(i)
                if len(link_list) > self._link_cap.size:      # bytes/s of each link, kept (see _follow_schedule)
                    more = link_list[self._link_cap.size:]
                    self._link_cap = np.concatenate(
                        (self._link_cap, np.array([l.bandwidth_bps for l in more], dtype=float) / 8.0))
                self._inc_row = np.concatenate((self._inc_row, np.array(rows, np.intp)))
                self._inc_link = np.concatenate((self._inc_link, np.array(ids, np.intp)))
                self._rem = np.concatenate((self._rem, [f.remaining_bytes for f in new]))
                self._rate = np.concatenate((self._rate, [f.rate_Bps for f in new]))
                nrows = len(flows)
            rem, rate = self._rem, self._rate
            inc_row, inc_link = self._inc_row, self._inc_link
            links = self._link_list
            nlinks = len(links)

            count = np.bincount(inc_link, minlength=nlinks)   # unfixed flows on each link
            act = np.flatnonzero(count)                       # links that still have some
            cap = np.zeros(nlinks)                            # remaining capacity, bytes/s
            cap[act] = self._link_cap[act]
            fixed = np.zeros(nrows, dtype=bool)
            first = None                                      # first position of each link in inc_link
            batch_ties = True                                 # until a tie fails the check below
            while act.size:
                ratio = cap[act] / count[act]
                m = ratio.min()
                tied = act[ratio == m]
                newly = None                                  # the flows fixed in this iteration
                if tied.size > 1 and batch_ties:
                    # Several links tie at the smallest share m.  The loop would
                    # take them one after the other in first-seen order, each
                    # at share m, and so end where fixing all their flows at
                    # once ends (every step subtracts the same share, so the
                    # order of the subtractions does not matter), provided
                    # (a) no flow crosses two of them, so each keeps ratio m
                    # until its turn, and (b) no other link their flows cross
                    # comes down to a ratio <= m part-way, where the loop would
                    # take it in between: for k = 1, 2, ... of their flows on
                    # it fixed, its capacity less share k times (rounded step
                    # by step, as the loop does) over its count less k stays
                    # above m.  Otherwise take the first-seen link alone, as
                    # the loop does, and stop trying for this filling.
                    is_tied = np.zeros(nlinks, dtype=bool)
                    is_tied[tied] = True
                    per_row = np.bincount(inc_row[is_tied[inc_link] & ~fixed[inc_row]], minlength=nrows)
                    if per_row.max() == 1:                    # (a)
                        share = max(float(m), 0.0)
                        cand = per_row.astype(bool)
                        k_of = np.bincount(inc_link[cand[inc_row]], minlength=nlinks)
                        touched = np.flatnonzero((k_of > 0) & ~is_tied).tolist()
                        safe = len(touched) <= 64
                        for li in touched if safe else ():     # (b)
                            kmax = min(int(k_of[li]), int(count[li]) - 1)
                            if kmax > 0:
                                caps = np.subtract.accumulate(np.concatenate(([cap[li]], np.full(kmax, share))))
                                if not (caps[1:] / (count[li] - np.arange(1, kmax + 1)) > m).all():
                                    safe = False
                                    break
                        if safe:
                            newly = cand
                    if newly is None:
                        batch_ties = False
                if newly is None:                             # one link, as in max_min_rates
                    if tied.size == 1:
                        j = int(tied[0])
                    else:
                        if first is None:
                            first = np.full(nlinks, inc_link.size)
                            seen, pos = np.unique(inc_link, return_index=True)
                            first[seen] = pos
                        if tied.size:
                            j = int(tied[np.argmin(first[tied])])
                        else:   # a NaN ratio: scan in first-seen order, as min() does
                            order = act[np.argsort(first[act], kind="stable")].tolist()
                            j = order[0]
                            for k in order[1:]:
                                if cap[k] / count[k] < cap[j] / count[j]:
                                    j = k
                    share = max(float(cap[j] / count[j]), 0.0)
                    on_j = inc_row[inc_link == j]
                    newly = np.zeros(nrows, dtype=bool)
                    newly[on_j[~fixed[on_j]]] = True
                fixed |= newly
                rate[newly] = share
                hit = inc_link[newly[inc_row]]                # their links, once per crossing
                np.subtract.at(cap, hit, share)
                count -= np.bincount(hit, minlength=nlinks)
                act = act[count[act] > 0]

            self._wakeup_version += 1
            moving = rate > 0
            if not moving.any():
                return  # nothing moves until a start or a bandwidth change
            first_done = float((rem[moving] / rate[moving]).min())
        version = self._wakeup_version
        self.env.timeout(max(first_done, 0.0)).callbacks.append(lambda _ev: self._on_wakeup(version))

    def _fill(self, flows: list[Flow]) -> None:
        """:func:`max_min_rates` on ``flows``, remembered: the rates are a pure
        function of the flows' paths, in order, and the capacities of their
        links, and a synchronous round repeats the same few flow sets (n
        uploads, n downloads) round after round.  A remembered filling is used
        only while every link it involved has the bandwidth it had then (a
        schedule, or anyone, may change it), so the rates are bitwise the ones
        max_min_rates would set."""
        key = tuple([f.path for f in flows])
        memo = self._fills
        hit = memo.get(key)
        if hit is not None:
            links, bws, rates = hit
            if all([l.bandwidth_bps == b for l, b in zip(links, bws)]):
                for f, r in zip(flows, rates):
                    f.rate_Bps = r
                return
        max_min_rates(flows)
        if len(memo) >= _FILLS_KEPT:
            memo.clear()
        links = tuple({l: None for f in flows for l in f.path})
        memo[key] = (links, tuple([l.bandwidth_bps for l in links]), tuple([f.rate_Bps for f in flows]))

    def _on_wakeup(self, version: int) -> None:
        if version != self._wakeup_version:
            return  # superseded by a later start, end or bandwidth change
        self._advance()
        flows = self._flows
        rem = getattr(self, "_rem", None)
        if rem is None:
            finished, left = [], []
            for f in flows:
                (finished if f.remaining_bytes <= f.rate_Bps * _EPS_S else left).append(f)
            flows[:] = left
        else:

            rate = self._rate
            nrows = rem.size
            done = np.flatnonzero(rem <= rate * _EPS_S).tolist()   # rows, in the order of flows
            # flows started at this instant are not rows yet (their rate is still 0)
            done += [i for i in range(nrows, len(flows))
                     if flows[i].remaining_bytes <= flows[i].rate_Bps * _EPS_S]
            finished = [flows[i] for i in done]
            rows = [i for i in done if i < nrows]
            for i, r, b in zip(rows, rem[rows].tolist(), rate[rows].tolist()):
                flows[i].remaining_bytes = r                # the row's last state, onto the Flow
                flows[i].rate_Bps = b
            if len(done) <= 8:                              # a few: delete in place, last first
                for i in reversed(done):
                    del flows[i]
            elif done:
                gone = set(done)
                flows[:] = [f for i, f in enumerate(flows) if i not in gone]
            if rows:
                keep = np.ones(nrows, dtype=bool)
                keep[rows] = False
                inc_keep = keep[self._inc_row]
                renumber = np.cumsum(keep) - 1              # old row -> new row
                self._inc_row = renumber[self._inc_row[inc_keep]]
                self._inc_link = self._inc_link[inc_keep]
                self._rem = rem[keep]
                self._rate = rate[keep]
        now = self.env._now
        for f in finished:          # the links' accounting: active flows, busy time, bytes and messages carried
            nbytes = f.nbytes
            for link in f.path:
                link.active -= 1
                if link.active == 0:
                    link.busy_s += now - link._busy_since
                link.bytes_carried += nbytes
                link.messages += 1
        self.in_flight -= len(finished)
        self._deliver(finished)
        self._reschedule()

    def _follow_schedule(self, link: Link):
        while True:
            nxt = link.schedule.next_change(self.env.now)
            if nxt is None:
                return
            yield self.env.timeout(nxt - self.env.now)
            self._advance()
            link.bandwidth_bps = link.schedule.rate_at(self.env.now)
            i = getattr(self, "_link_ids", {}).get(link)
            if i is not None and i < self._link_cap.size:
                self._link_cap[i] = link.bandwidth_bps / 8.0   # the rows' copy of its capacity
            self._reschedule()

    # -- fifo ------------------------------------------------------------
    def _fifo(self, msg: Message, path: tuple[Link, ...], done: simpy.Event) -> None:
        """Reserve each link in turn as the message's head reaches it (see _FifoMessage)."""
        _FifoMessage(self, msg, path, done).hop(0, self.env.now)

    # -- delivery --------------------------------------------------------
    def _deliver(self, finished: list[Flow]) -> None:
        """The last bytes of ``finished`` (flows that ended at this instant, in
        order) left their last link: each ``done`` fires its path latency
        later, triggered directly (as a timeout and then Event.succeed would,
        one event per message saved, as in fifo).  Deliveries due at one
        instant share one queue entry (sim/net/batch.py; ``carry``, on unless
        a test turns it off): in a synchronous round n uploads, or n
        downloads, end together and arrive one latency later.  Their ids
        would have been taken one after the other in this loop, with nothing
        else scheduled between them, which is what a Batch needs."""
        env = self.env
        now = env._now
        at: dict[float, list[simpy.Event]] = {}
        order = []                                       # (deliveries, when, delay), by first delivery
        for f in finished:
            done = f.done
            if self.trace:
                done.callbacks.append(partial(_log_delivery, self.delivered, f.start_s, f.msg))
            done._ok, done._value = True, f.msg
            delay = f.latency_s if f.latency_s > 0 else 0.0
            when = now + delay
            group = at.get(when) if self.carry else None
            if group is None:
                at[when] = group = [done]
                order.append((group, when, delay))
            else:
                group.append(done)
        for group, when, delay in order:               # an entry where its first delivery's would be
            if len(group) == 1:
                env.schedule(group[0], simpy.events.NORMAL, delay)
            else:
                Batch.schedule(env, group, when)


def _log_delivery(log: list, start_s: float, msg: Message, ev: simpy.Event) -> None:
    log.append((start_s, ev.env.now, msg))


def _latency_then_hops(u, v, data) -> float:
    # latency-shortest; a tiny per-hop term makes ties go to fewer hops
    return data["latency_s"] + 1e-12


class _FifoMessage:
    """One message under ``fifo`` sharing: a chain of timeout callbacks rather
    than a SimPy process (the same events in the same order at about half the
    host cost), and an object rather than nested closures, so no reference
    cycle is left for the garbage collector."""

    __slots__ = ("net", "msg", "path", "done", "bits", "start")

    def __init__(self, net: Network, msg: Message, path: tuple[Link, ...], done: simpy.Event) -> None:
        self.net, self.msg, self.path, self.done = net, msg, path, done
        self.bits = 8.0 * msg.nbytes
        self.start = net.env.now

    def hop(self, i: int, tail_s: float) -> None:
        """The head has just reached path[i]; ``tail_s``: when the tail is
        available here.  Plain comparisons rather than max(): the hot path."""
        env = self.net.env
        link = self.path[i]
        now = env.now
        free = link.free_at_s
        begin = now if now > free else free
        if link.schedule is None:
            end = begin + self.bits / link.bandwidth_bps
        else:
            end = link.schedule.finish_time(begin, self.bits)
            if math.isinf(end):
                return           # the link never comes back: the message never arrives
        if end < tail_s:
            end = tail_s
        link.free_at_s = end
        link.busy_s += end - begin
        link.bytes_carried += self.msg.nbytes
        link.messages += 1
        tail = end + link.latency_s
        if i + 1 < len(self.path):
            env.timeout(begin + link.latency_s - now).callbacks.append(partial(self._next, i + 1, tail))
            return
        net = self.net
        net.in_flight -= 1
        done = self.done
        if net.trace:
            start, msg = self.start, self.msg
            done.callbacks.append(lambda _ev: net.delivered.append((start, env.now, msg)))
        # Trigger ``done`` at the arrival time directly, as Event.succeed would
        # do now (one event per message saved: not a timeout and then done).
        done._ok, done._value = True, self.msg
        env.schedule(done, simpy.events.NORMAL, tail - now if tail > now else 0.0)

    def _next(self, i: int, tail_s: float, _ev: simpy.Event) -> None:
        self.hop(i, tail_s)
