"""How one synchronous round moves messages through the network, in simulated time.

A protocol gets the round's messages (sizes from the encoder), each worker's
compute time and who takes part, runs the SimPy processes, and reports who
arrived in time, the bytes moved and where the round's time went.  The math is
not here: the engine computes it batched and passes only sizes.

``ParameterServer``: workers upload to S servers (each server gets its slice
of theta), the servers update and broadcast their slice back.
``Ring``: ring all-reduce (summable messages) or all-gather (the rest).
"""
from __future__ import annotations

import math

from dataclasses import dataclass, field

import numpy as np
import simpy
import torch

from sim.net.batch import Timeouts
from sim.net.network import Network
from sim.net.wire import Message

INF = float("inf")


def slice_bounds(d: int, parts: int) -> list[tuple[int, int]]:
    """Contiguous slices of theta for ``parts`` servers (or ring chunks), sizes
    differing by at most one (np.array_split)."""
    sizes = [len(a) for a in np.array_split(np.arange(d), parts)] if parts > 1 else [d]
    out, start = [], 0
    for s in sizes:
        out.append((start, start + s))
        start += s
    return out


def slice_bytes(tensors, nbytes: torch.Tensor, d: int, bounds: list[tuple[int, int]]) -> list[list[int]]:
    """Per worker, the payload bytes that fall in each slice, [n][S].

    Index-coded payloads (``indices`` in the tensors) are split exactly by where
    their indices fall, each entry costing nbytes / k; other encodings are split
    in proportion to the slice length (exact for dense and per-coordinate codes),
    the rounding remainder going to the last slice.
    """
    n, parts = int(nbytes.shape[0]), len(bounds)
    total = nbytes.tolist()
    if parts == 1:
        return [[int(b)] for b in total]
    if "indices" in tensors:
        idx = tensors["indices"]                                  # [n, k]
        k = max(int(idx.shape[1]), 1)
        edges = torch.tensor([b for _, b in bounds[:-1]], device=idx.device)
        which = torch.bucketize(idx, edges, right=True)           # [n, k] slice of each entry
        counts = torch.stack([(which == j).sum(1) for j in range(parts)], 1).tolist()  # [n, S]
        out = []
        for i in range(n):
            per = [int(c * total[i] // k) for c in counts[i]]
            per[-1] += int(total[i]) - sum(per)
            out.append(per)
        return out
    out = []
    for i in range(n):
        per = [int(total[i] * (b - a) // d) for a, b in bounds]
        per[-1] += int(total[i]) - sum(per)
        out.append(per)
    return out


@dataclass
class RoundTiming:
    arrived: list[bool]
    messages_up: int = 0
    bytes_up: int = 0
    uploads: int = 0                 # messages carrying gradient information
    phase: dict = field(default_factory=dict)
    late: list[bool] | None = None   # keep_late: the previous round's uploads that arrived during this one


@dataclass
class Failures:
    """Worker down intervals: worker i is down in [crash_at, rejoin_at)."""

    intervals: dict[int, list[tuple[float, float]]] = field(default_factory=dict)

    def up(self, i: int, t: float) -> bool:
        if not self.intervals:
            return True
        return not any(a <= t < b for a, b in self.intervals.get(i, ()))

    def next_up(self, n: int, t: float) -> float:
        """The earliest time >= t at which some worker of 0..n-1 is up (inf: none ever is)."""
        return min((self.next_up_one(i, t) for i in range(n)), default=math.inf)

    def next_up_one(self, i: int, t: float) -> float:
        """The earliest time >= t at which worker i is up (inf: never again)."""
        at = t
        for a, b in sorted(self.intervals.get(i, ())):
            if a <= at < b:
                at = b
        return at

    def up_through(self, i: int, t0: float, t1: float) -> bool:
        """Up for the whole of [t0, t1]."""
        if not self.intervals:
            return True
        return not any(a <= t1 and t0 < b for a, b in self.intervals.get(i, ()))


class ParameterServer:
    """Workers -> S servers (slices) -> workers."""

    def __init__(self, env: simpy.Environment, net: Network, n: int, servers: list[str], d: int,
                 header: int, failures: Failures) -> None:
        self.env, self.net, self.n, self.servers, self.d = env, net, n, servers, d
        self.timeouts = Timeouts(env)   # the workers' compute steps ending together share a queue entry
        self.header = header
        self.failures = failures
        self.workers = [f"w{i}" for i in range(n)]
        self.bounds = slice_bounds(d, len(servers))
        start = env.event().succeed()
        self.ready: list[simpy.Event | None] = [start] * n    # has the round's parameters
        self.synced_at = [0.0] * n                            # when its last broadcast was sent
        self.round_start = 0.0
        self.bytes_down = 0
        self._late_sent: list[tuple[int, bool]] = []   # (bytes, carries) sent after their round ended

    def wait_for_rejoin(self):
        """SimPy generator for a round in which no worker is up: waits until the
        first one is up again, and the round (with its round_timeout) starts
        then; returns False at once if none ever is."""
        wake = self.failures.next_up(self.n, self.env.now)
        if math.isinf(wake):
            return False
        yield self.env.timeout(wake - self.env.now)
        self.round_start = self.env.now
        return True

    def begin(self, t: int) -> list[bool]:
        """Who takes part in round t: the workers up now.  A worker that was down
        since its last broadcast pulls the full parameters first (4 d bytes: its
        copy may be stale)."""
        if not self.failures.intervals and None not in self.ready:
            return [True] * self.n    # no failures, and every worker has the parameters: as the loop below
        active = []
        now = self.env.now
        for i in range(self.n):
            up = self.failures.up(i, now)
            active.append(up)
            if up and (self.ready[i] is None or not self.failures.up_through(i, self.synced_at[i], now)):
                evs = []
                for j, s in enumerate(self.servers):
                    a, b = self.bounds[j]
                    msg = Message(s, self.workers[i], "params", t, 4 * (b - a), self.header)
                    self.bytes_down += msg.nbytes
                    evs.append(self.net.send(msg))
                self.ready[i] = evs[0] if len(evs) == 1 else self.env.all_of(evs)
                self.synced_at[i] = now
        return active

    def _worker(self, i: int, t: int, sizes: list[int], step_s: float, out: dict, finished) -> None:
        """Worker i's round as a chain of event callbacks (wait for the
        parameters -> compute step_s -> upload to every server), calling
        ``finished()`` when its uploads arrived or it crashed.  Callbacks, not
        a SimPy process: a process per worker and round costs two more events
        and a generator, a third of a replayed round's host time."""
        env = self.env
        failures = self.failures if self.failures.intervals else None
        one = len(self.servers) == 1

        def delivered_one(_ev) -> None:
            out["done"][i] = env._now
            finished(True)

        def computed(_ev) -> None:
            if out.get("interrupted"):     # K-sync moved on: this work is dropped, nothing is sent
                finished()
                return
            if failures is not None and not failures.up_through(i, self.round_start, env.now):
                out["lost"][i] = env.now   # crashed before it could send
                finished()
                return
            send, header, w = self.net.send, self.header, self.workers[i]
            if one:                        # one server: one message, no count of deliveries left
                ev = send(Message(w, self.servers[0], "grad", t, sizes[0], header))
                out["sent_bytes"][i] = sizes[0] + header
                if out.get("closed"):      # as below
                    self._late_sent.append((out["sent_bytes"][i], out["carries"] is None or out["carries"][i]))
                ev.callbacks.append(delivered_one)
                return
            evs = [send(Message(w, s, "grad", t, sizes[j], header)) for j, s in enumerate(self.servers)]
            out["sent_bytes"][i] = sum(sizes) + header * len(evs)
            if out.get("closed"):          # sent after its round ended: counted with the next round
                carry = out["carries"] is None or out["carries"][i]
                self._late_sent.append((out["sent_bytes"][i], carry))
            left = [len(evs)]

            def delivered(_ev) -> None:
                left[0] -= 1
                if left[0] == 0:
                    out["done"][i] = env.now
                    finished(True)
            for ev in evs:
                ev.callbacks.append(delivered)

        def ready(_ev) -> None:
            out["ready"][i] = env._now     # env.now without the property call (the hot path)
            self.timeouts.timeout(step_s).callbacks.append(computed)     # as env.timeout (sim/net/batch.py)

        ev = self.ready[i]
        if ev.callbacks is None:      # already processed: the worker has the parameters
            ready(ev)
        else:
            ev.callbacks.append(ready)

    def sizes(self, payload) -> list[list[int]]:
        """Payload bytes worker i sends server j, [n][S] (headers not included)."""
        return slice_bytes(payload.tensors, payload.nbytes, self.d, self.bounds)

    def round(self, t: int, sizes: list[list[int]], active: list[bool], step_s: list[float],
              timeout_s: float | None, carries: list[bool] | None = None, wait_for: int | None = None,
              keep_late: bool = False):
        """SimPy generator: returns RoundTiming once every active worker's
        upload arrived, crashed, or the deadline passed, or (``wait_for`` K,
        K-sync) once K uploads arrived.  Uploads after the round ended are
        dropped (they still cross the network).  ``sizes`` from :meth:`sizes`;
        ``carries[i]`` False: worker i's message is a skip notice (not counted
        as an upload).  ``keep_late`` (late: apply): late workers are not
        interrupted, and ``RoundTiming.late`` lists the workers whose upload of
        the previous round arrived after it ended and by the end of this one."""
        out = {"ready": {}, "done": {}, "lost": {}, "sent_bytes": {}, "carries": carries}
        wait = self.env.event()
        pending = [sum(1 for a in active if a)]
        got = [0]

        def finished(ok: bool = False) -> None:
            pending[0] -= 1
            got[0] += ok
            if not wait.triggered and (pending[0] == 0 or (wait_for is not None and got[0] >= wait_for)):
                wait.succeed()
        if pending[0] == 0:
            wait.succeed()
        for i in range(self.n):
            if active[i]:
                self._worker(i, t, sizes[i], step_s[i], out, finished)
        if wait_for is not None:    # the round ends at the K-th arrival; later ones are late
            yield wait
            end = self.env.now
            # Dutta et al. 2018: the other workers are interrupted; one still computing
            # sends nothing, an upload already on the wire completes and is dropped
            out["interrupted"] = not keep_late
            arrived = sorted((out["done"][i], i) for i in out["done"])[:wait_for]
            keep = {i for _, i in arrived}
            late_ones = {i: v for i, v in out["done"].items() if i not in keep}
            out["done"] = {i: v for i, v in out["done"].items() if i in keep}
            out["done_late"] = late_ones          # arrived with the K-th, but not among the first K
            return self._late(self._timing(out, step_s, carries, end), out, end, keep_late)
        if timeout_s is not None:
            deadline = self.round_start + timeout_s
            yield wait | self.env.timeout(max(deadline - self.env.now, 0.0))
        else:
            yield wait
        return self._late(self._timing(out, step_s, carries, self.env.now), out, self.env.now, keep_late)

    def _late(self, timing: RoundTiming, out: dict, end: float, keep_late: bool) -> RoundTiming:
        """Which of the previous round's late uploads arrived by ``end`` (keep_late)."""
        if not keep_late:
            return timing
        prev = getattr(self, "_prev", None)
        late = [False] * self.n
        if prev is not None:
            p_out, _, p_arrived = prev
            done = {**p_out.get("done_late", {}), **p_out["done"]}   # late deliveries keep landing here
            # not counted last round, delivered by now (a delivery by the last end that was not
            # counted is a K-sync tie beyond K)
            late = [not p_arrived[i] and done.get(i, math.inf) <= end for i in range(self.n)]
        timing.late = late
        self._prev = (out, end, list(timing.arrived))
        return timing

    def _timing(self, out: dict, step_s: list[float], carries, end: float) -> RoundTiming:
        arrived = [i in out["done"] and out["done"][i] <= end for i in range(self.n)]
        timing = RoundTiming(arrived)
        timing.messages_up = len(out["sent_bytes"]) * len(self.servers)
        timing.bytes_up = sum(out["sent_bytes"].values())
        senders = out["sent_bytes"]
        timing.uploads = len(self.servers) * sum(1 for i in senders if carries is None or carries[i])
        # uploads of earlier rounds sent after those rounds ended (round_timeout, late: apply)
        late, self._late_sent = self._late_sent, []
        timing.messages_up += len(late) * len(self.servers)
        timing.bytes_up += sum(b for b, _ in late)
        timing.uploads += len(self.servers) * sum(1 for _, c in late if c)
        out["closed"] = True
        timing.phase = self._phases(out, step_s, end, arrived)
        return timing

    def _phases(self, out, step_s, end, arrived) -> dict:
        """Critical-path breakdown: the worker whose upload completed last."""
        done = {i: t for i, t in out["done"].items() if arrived[i]}
        ph = {"start_s": self.round_start, "end_s": end, "download_s": 0.0, "compute_s": 0.0,
              "upload_s": 0.0, "server_s": 0.0, "wait_s": end - self.round_start, "exchange_s": 0.0,
              "critical_worker": ""}
        if done:
            c = max(done, key=lambda i: (done[i], -i))
            ready = out["ready"][c]
            ph.update(download_s=ready - self.round_start, compute_s=step_s[c],
                      upload_s=done[c] - ready - step_s[c], wait_s=end - done[c], critical_worker=c)
        return ph

    def exchange(self, t: int, request_bytes: int, reply_bytes: int, who: list[bool]):
        """SimPy generator: a second round (sketched methods).  Every server asks
        each worker in ``who`` for values (its share of ``request_bytes``); a
        worker answers each server once it has all requests (``reply_bytes``,
        split the same way).  Returns {"bytes_up", "messages_up"} once every
        reply arrived."""
        split = lambda total: [total * (b - a) // self.d for a, b in self.bounds[:-1]] + \
            [total - sum(total * (b - a) // self.d for a, b in self.bounds[:-1])]  # noqa: E731
        req, rep = split(request_bytes), split(reply_bytes)
        out = {"bytes_up": 0, "messages_up": 0}

        def worker(i: int):
            evs = []
            for j, s in enumerate(self.servers):
                msg = Message(s, self.workers[i], "request", t, req[j], self.header)
                self.bytes_down += msg.nbytes
                evs.append(self.net.send(msg))
            yield self.env.all_of(evs)
            evs = []
            for j, s in enumerate(self.servers):
                msg = Message(self.workers[i], s, "values", t, rep[j], self.header)
                out["bytes_up"] += msg.nbytes
                out["messages_up"] += 1
                evs.append(self.net.send(msg))
            yield self.env.all_of(evs)

        yield self.env.all_of([self.env.process(worker(i)) for i in range(self.n) if who[i]])
        return out

    def finish(self, t: int, down_sizes: list[int] | None) -> None:
        """The servers broadcast their slice of the update to every worker up now;
        ``None``: nothing was applied, a header-only 'no update' goes out."""
        now = self.round_start = self.env.now
        failures = self.failures if self.failures.intervals else None
        sizes = [0 if down_sizes is None else down_sizes[j] for j in range(len(self.servers))]
        send, header, ready, synced = self.net.send, self.header, self.ready, self.synced_at
        one = len(self.servers) == 1
        for i, w in enumerate(self.workers):
            if failures is not None and not failures.up(i, now):
                ready[i] = None               # must pull the parameters when it rejoins
                continue
            if one:                           # the same message as below, without the list
                self.bytes_down += header + sizes[0]
                ready[i] = send(Message(self.servers[0], w, "update", t, sizes[0], header))
            else:
                evs = []
                for j, s in enumerate(self.servers):
                    self.bytes_down += header + sizes[j]
                    evs.append(send(Message(s, w, "update", t, sizes[j], header)))
                ready[i] = self.env.all_of(evs)
            synced[i] = now


class Ring:
    """Ring all-reduce or all-gather among the workers; no server."""

    def __init__(self, env: simpy.Environment, net: Network, n: int, d: int, header: int,
                 summable: bool) -> None:
        self.env, self.net, self.n, self.d, self.header = env, net, n, d, header
        self.summable = summable
        self.workers = [f"w{i}" for i in range(n)]
        self.ready_at = [0.0] * n      # when each worker had the last round's result
        self.round_start = 0.0
        self.bytes_down = 0
        self.bounds = slice_bounds(d, n)

    def begin(self, t: int) -> list[bool]:
        return [True] * self.n

    def sizes(self, payload) -> list[list[int]]:
        """Summable: the bytes of each of worker i's n chunks, [n][n]; otherwise
        worker i's whole message, [n][1] (headers not included)."""
        if self.summable:
            return slice_bytes(payload.tensors, payload.nbytes, self.d, self.bounds)
        return [[int(b)] for b in payload.nbytes.tolist()]

    def round(self, t: int, sizes: list[list[int]], active, step_s, timeout_s, carries=None, wait_for=None,
              keep_late=False):
        n = self.n
        if self.summable:
            # reduce-scatter then all-gather: step s, worker i sends chunk (i - s) mod n
            steps = 2 * (n - 1)
            size = lambda i, s: sizes[i][(i - s) % n]  # noqa: E731
        else:
            # all-gather: step s, worker i forwards the message that originated at (i - s) mod n
            steps = n - 1
            size = lambda i, s: sizes[(i - s) % n][0]  # noqa: E731
        out = {"ready": {}, "done": {}, "bytes": 0, "msgs": 0}
        got = self._steps_events(steps)

        def worker(i):
            # Worker i had the previous result at ready_at[i] (<= now) and computes
            # from then on; it cannot send before now, when the engine starts the round.
            out["ready"][i] = self.ready_at[i]
            yield self.env.timeout(max(self.ready_at[i] + step_s[i] - self.env.now, 0.0))
            yield from self._pass_on(i, t, steps, size, got, out)
            out["done"][i] = self.env.now

        procs = [self.env.process(worker(i)) for i in range(n)]
        yield self.env.all_of(procs)
        end = self.env.now
        timing = RoundTiming([True] * n, messages_up=out["msgs"], bytes_up=out["bytes"], uploads=out["msgs"])
        c = max(out["done"], key=lambda i: (out["done"][i], -i))
        compute = max(out["ready"][c] + step_s[c] - self.round_start, 0.0)   # the part inside this round
        timing.phase = {"start_s": self.round_start, "end_s": end, "download_s": 0.0,
                        "compute_s": compute, "upload_s": out["done"][c] - self.round_start - compute,
                        "server_s": 0.0, "wait_s": end - out["done"][c], "exchange_s": 0.0,
                        "critical_worker": c}
        # every worker starts the next round as soon as it has the reduced result
        self.ready_at = [out["done"][i] for i in range(n)]
        return timing

    def _steps_events(self, steps: int) -> list[list[simpy.Event]]:
        """got[i][s]: worker i received its step-s message."""
        return [[self.env.event() for _ in range(steps)] for _ in range(self.n)]

    def _pass_on(self, i: int, t: int, steps: int, size, got, out: dict):
        """Worker i's part of a ring pass: at step s it sends ``size(i, s)``
        bytes to i + 1, once it has received step s - 1 from i - 1."""
        nxt = (i + 1) % self.n
        for s in range(steps):
            if s > 0:
                yield got[i][s - 1]
            msg = Message(self.workers[i], self.workers[nxt], "grad", t, size(i, s), self.header)
            out["bytes"] += msg.nbytes
            out["msgs"] += 1
            ev = self.net.send(msg)
            ev.callbacks.append(lambda _e, nxt=nxt, s=s: got[nxt][s].succeed())
        if steps:
            yield got[i][steps - 1]

    def exchange(self, t: int, request_bytes: int, reply_bytes: int, who: list[bool]):
        """SimPy generator: a second all-reduce phase in the same round (PowerSGD's
        Q after P, the sketched methods' exact values at the candidates after the
        sketches).  On a ring nobody asks: every worker derives the request
        (P_hat, the candidates) itself from the first phase's reduced result, so
        ``request_bytes`` is not sent, and ``reply_bytes`` per worker go through
        a reduce-scatter + all-gather in n chunks (cut at 4-byte values; closed
        form 2 (n - 1) (latency + 8 (reply_bytes / n + header) / bandwidth) on
        equal links).  It starts when the first phase has finished on every
        worker (a barrier between the phases; on equal links the workers finish
        the first phase together anyway).  Every worker takes part (a ring has
        no failures or timeouts).  Returns {"bytes_up", "messages_up"} once every
        worker has the reduced result."""
        n = self.n
        if not self.summable:
            raise ValueError("a second ring phase needs summable messages")
        words, rest = divmod(int(reply_bytes), 4)          # chunks cut at float32 boundaries
        chunks = [4 * (b - a) for a, b in slice_bounds(words, n)]
        chunks[-1] += rest
        steps = 2 * (n - 1)
        size = lambda i, s: chunks[(i - s) % n]  # noqa: E731
        got = self._steps_events(steps)
        out = {"bytes": 0, "msgs": 0}
        done = [0.0] * n

        def worker(i):
            yield from self._pass_on(i, t, steps, size, got, out)
            done[i] = self.env.now

        yield self.env.all_of([self.env.process(worker(i)) for i in range(n)])
        self.ready_at = done
        return {"bytes_up": out["bytes"], "messages_up": out["msgs"]}

    def finish(self, t: int, down_sizes) -> None:
        # Each worker applied the update itself when its all-gather finished.
        self.round_start = self.env.now
