"""Event-driven co-simulation: algorithms whose math depends on the network's timing.

In the synchronous engine (sim/engine.py) a round's math is fixed before its
messages move.  Here workers are SimPy processes and the server reacts to
each arrival, so *when* a gradient arrives decides *what* is learned
(staleness, who waits):

    worker i:  take the parameters it received (version v) -> compute for
               step_s (its compute time, stragglers included) -> push the
               gradient (a message through the network) -> wait for the reply
    server:    on each arrival: apply it (algorithm.apply), version v -> v + 1;
               reply with the parameters, or hold the reply (bounded staleness)

Lazy, batched evaluation.  A gradient is fixed the moment its inputs are: the
parameter snapshot the worker received and the minibatch it draws for its
j-th step (from its own counter-based stream, keyed by (worker, j)).  It is
needed only when the server applies it.  :class:`LazyGrads` keeps the fixed
but not yet computed gradients; when the first of them is needed it
evaluates *all* of them in one batched call (vmap over the per-worker
snapshots, ``GradFn.at``).  In steady state about n gradients are in flight,
so the batches stay about n wide (``mean_batch`` reports it).  ``eager=True``
evaluates each one alone as it is fixed: the one-at-a-time reference that
tests compare against.

Ties.  Arrivals at the same simulated instant are applied in worker order
(the server waits one zero-length step for every arrival of that instant,
then sorts them), so equal workers give an exact, documented sequence.

Versions and outputs.  ``metrics.csv`` rows are keyed by the server version
(``round`` = the number of gradients applied) and simulated time;
``eval_every`` and ``stop.max_rounds`` count n versions each, the gradients
of one synchronous round, so a synchronous and an asynchronous run of the
same scenario evaluate after the same amounts of work.  ``updates.csv`` has
one row per applied gradient: its worker, the version it was computed at, its
staleness and the step size used.

Compression (``async_sgd`` with a compressor): each gradient goes through
the compressor with the worker's error feedback when it is evaluated (rows of
one batch are distinct workers, one computation in flight each), with each
row's random draws from its worker's stream at its step (sim/learn/rng.py
RowStreams); the upload's size is the compressor's formula for that message,
so a compressed upload forces the evaluation when it is sent.

Failures (``failures:`` crash and rejoin intervals): a worker that is down
when its parameters arrive, or that crashes while computing, loses that work
(nothing is sent; the computation is dropped, unevaluated if it still is);
when it is up again it pulls the parameters (a params message sent at its rejoin time) and
goes on; one that never rejoins is never heard from again.  Every worker
gone for good is a stall.  With a compressor and error feedback, a lost
computation that was already evaluated (so encoded, its residual folded into
the worker's memory) is rolled back: the worker's memory row is put back as
it was before that job (``LazyGrads.drop``), as if the job never existed.
The rollback is exact because a worker has at most one job in flight.  (Its
minibatch and compressor draws at that step are not reused: the next job
takes the next step's.)

Failures with FedBuff's concurrency C < n: the server owns C slots and
knows who is up (as if every client kept a connection whose loss it sees at
once; a failure is an outcome with this meaning, not a silent hang).  A slot
that frees (a message processed, or its client lost) is given to a client
drawn uniformly, with the run's seeded generator, from the idle clients that
are up at that instant; with none up the slot stays open and is filled at the
earliest rejoin among the idle clients (``fill``).  A client that crashes
while training loses its work and frees its slot at the crash instant; one
whose parameters arrive while it is down frees it at their arrival.  A
client never pulls parameters by itself (the server draws it again, once up).
The first C clients are drawn from those up at time 0.  While every client
is up the draws are those of a run without failures, bit for bit (a test
checks it); C = n keeps the rule above (each client rejoins by itself).

Not modelled yet for event-driven algorithms (refused with a message, before
anything is written): round_timeout, wait_for, rings and sharded servers,
BatchNorm models.

Trace.  ``trace.jsonl`` gets a segment per event-driven run
(sim/study/trace.py ``EventRecorder``, written by sim/study/runner.py from
the rows below): its header names the run and says why it cannot be
replayed, then one line per evaluation (keyed by version and simulated time)
and one per processed message (version, time, worker, computed_at,
staleness, step size, applied, payload bytes), in updates.csv's order.  It
documents the run; it cannot re-time it, because the math depends on timing
(sim/study/replay.py refuses these algorithms by ``timing_independent =
False``, with that reason).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np
import simpy
import torch

from algorithms.base import Context

from sim.engine import (Counters, RunResult, World, drive, evaluate, failures_of, grads_at, straggler_times,
                        version_stop)
from sim.errors import ConfigError
from sim.learn.grads import GradFn
from sim.net.network import Network
from sim.learn.rng import RowStreams, WorkerStreams
from sim.net.wire import Message



def refusal(scn, cfg) -> str | None:  # also called by sim/study/config.py, so bad input is refused up front
    """Why an event-driven algorithm cannot run this scenario yet, or None."""
    topo = scn.network.topology
    if topo.collective == "ring" or len(topo.server_names()) != 1:
        return (f"{cfg.label}: an event-driven algorithm needs one parameter server; allowed topologies: "
                "star (servers: 1), hierarchical, graph")
    if scn.round_timeout is not None:
        return f"{cfg.label}: round_timeout has no meaning for an asynchronous algorithm (it has no rounds)"
    return None


def first_clients(pick: np.random.Generator, failures, n: int, C: int) -> list[int]:
    """C < n: the clients of the first slots, drawn uniformly without replacement from
    those up at time 0 (all of them without failures: one draw of C out of n, as
    always); fewer when fewer are up (the other slots wait for a rejoin)."""
    up = [i for i in range(n) if failures.up(i, 0.0)]
    drawn = pick.choice(len(up), size=min(C, len(up)), replace=False).tolist() if up else []
    return sorted(up[k] for k in drawn)


def first_crash_s(failures, i: int, t0: float, t1: float) -> float | None:
    """When worker i, up at t0, first crashes in (t0, t1], or None (up throughout)."""
    crashes = [a for a, b in failures.intervals.get(i, ()) if t0 < a <= t1]
    return min(crashes) if crashes else None


@dataclass
class Job:
    """One worker's computation: fixed when the worker starts, computed lazily."""

    worker: int
    step: int                   # the worker's job count (its minibatch stream index)
    version: int                # the server version of ``theta``
    theta: torch.Tensor         # [d] the parameters it starts from (never modified in place)
    message: torch.Tensor | None = None   # [d] a gradient (local_steps 0) or Delta = theta - theta^(H)
    nbytes: int | None = None             # its upload's payload bytes, once encoded
    ef_before: torch.Tensor | None = None  # [d] the worker's error-feedback memory before this job's encode
    params_sent_s: float = 0.0            # when its parameters left the server (0: held from the start)
    compute_start_s: float = 0.0
    upload_start_s: float = 0.0
    slot: tuple | None = None             # (ring, row) when ``theta`` is a row of a VersionRing, else None


@dataclass
class Params:
    """A params message in flight: what the worker will hold when it arrives."""

    theta: torch.Tensor
    version: int
    sent_s: float
    slot: tuple | None = None


class VersionRing:
    """The server's parameter versions as rows of one [R, d] buffer, version v in
    row v mod R, so that the snapshots of consecutive versions (what the lazy
    batch of an asynchronous run mostly holds) are a slice: no copy.

    Why: stacking m snapshots into [m, d] for the batched gradient was one extra
    read and write of m d floats per batch, a quarter of async_sgd's host time
    per gradient (issue 13's benchmark); with the ring the update
    theta - eta g is written straight into its row (``out=``) and a batch of
    consecutive versions is ``buf[lo:hi]``.

    Safety, so that no snapshot is ever read after being overwritten: a row is
    written only after every holder of the version in it (a params message in
    flight, a computation not yet evaluated: ``holders()``) was given its own
    copy (``evacuate``, rare: a straggler holding a version older than R
    updates); the current version is never overwritten (its successor goes to
    the next row, R >= 2); evaluated jobs drop their snapshot (``theta =
    None``) so a stale view cannot be read later; and every batch checks that
    each row still holds the version its job was fixed at (``holds``),
    raising if not, never computing on a wrong snapshot."""

    def __init__(self, theta: torch.Tensor, rows: int, holders: Callable[[], list]) -> None:
        assert rows >= 2
        self.buf = torch.empty(rows, theta.numel(), dtype=theta.dtype, device=theta.device)   # [R, d]
        self.version = [-1] * rows             # the version each row holds
        self.holders = holders
        self.evacuated = 0                     # copies made for long-held versions
        self.buf[0].copy_(theta)
        self.version[0] = 0

    def row(self, v: int) -> tuple[torch.Tensor, tuple]:
        r = v % len(self.version)
        return self.buf[r], (self, r)

    def holds(self, slot: tuple, v: int) -> bool:
        ring, r = slot
        return ring is self and self.version[r] == v

    def claim(self, v: int) -> tuple[torch.Tensor, tuple]:
        """Row for version v (to be written by the caller): its previous version's holders get copies."""
        r = v % len(self.version)
        old = self.version[r]
        for h in self.holders():
            if h.slot is not None and h.slot[0] is self and h.slot[1] == r and h.version == old:
                h.theta, h.slot = h.theta.clone(), None
                self.evacuated += 1
        self.version[r] = v
        return self.buf[r], (self, r)


class LazyGrads:
    """Computations whose inputs are fixed, evaluated together when the first is needed.

    ``local_steps`` 0: the message is the gradient at the snapshot on
    minibatch (TAG_BATCH, j).  H >= 1: H local SGD steps with ``local_lr``,
    step 0 on minibatch (TAG_BATCH, j) and step h on (TAG_LOCAL, j, h), the
    keys sim/engine.py LocalSteps uses for round j, so a client's j-th job
    draws what it would draw in round j of a synchronous run; the message
    is Delta = theta - theta^(H).  All pending jobs advance in lockstep: one
    batched call per local step."""

    def __init__(self, world: World, grad_fn: GradFn, streams: WorkerStreams, local_steps: int = 0,
                 local_lr=None, eager: bool = False, alg=None) -> None:
        if world.model.has_buffers:
            raise ConfigError("event-driven algorithms do not support BatchNorm models yet (the running "
                              "statistics would need a version per worker)", field="model.kind")
        self.world, self.grad_fn, self.streams, self.eager = world, grad_fn, streams, eager
        self.local_steps, self.local_lr = local_steps, local_lr
        self.pending: list[Job] = []
        self.widths: list[int] = []      # the size of every batched call
        # the workers' compression with error feedback (async_sgd with a compressor), batched too
        self.alg = alg if alg is not None and hasattr(alg, "encode") else None
        self.errors = self.alg.init_workers(world.n, world.model.d, world.device) if self.alg else None
        self.encoded_step: dict[int, int] = {}   # worker -> the step of its last encoded job
        self.sliced = 0                          # batches whose snapshots were a slice of the version ring

    def drop(self, job: Job) -> None:
        """A computation lost to a crash: never evaluated (when it still can be) or sent.

        One already evaluated had gone through the worker's error feedback:
        its memory row is put back as it was before that job, so the lost job
        leaves no trace in it.  Exact, not approximate: a worker has at most
        one job in flight (it starts the next only after this one was applied
        or dropped), so no later encode of this worker touched the row since
        (the assertion checks it)."""
        if any(p is job for p in self.pending):
            self.pending = [p for p in self.pending if p is not job]
            return
        if job.ef_before is not None:
            assert self.encoded_step.get(job.worker) == job.step, "a later job of this worker was encoded"
            self.errors[job.worker] = job.ef_before
            job.ef_before = None

    def nbytes(self, job: Job) -> int:
        """The payload bytes of ``job``'s upload (evaluates it, with every pending job, if needed)."""
        if job.message is None:
            self._evaluate()
        return job.nbytes

    def add(self, job: Job) -> None:
        self.pending.append(job)
        if self.eager:
            self._evaluate()

    def get(self, job: Job) -> torch.Tensor:
        if job.message is None:
            self._evaluate()
        return job.message

    @property
    def mean_batch(self) -> float:
        return sum(self.widths) / len(self.widths) if self.widths else 0.0

    def _grads(self, thetas: torch.Tensor, workers: torch.Tensor, steps: torch.Tensor, h: int) -> torch.Tensor:
        self.widths.append(int(thetas.shape[0]))
        return grads_at(self.world, self.grad_fn, self.streams, thetas, workers, steps, h)         # [m, d]

    def _evaluate(self) -> None:
        jobs, self.pending = self.pending, []
        if not jobs:
            return
        dev = self.world.device
        workers = torch.tensor([j.worker for j in jobs], dtype=torch.int64, device=dev)   # [m]
        steps = torch.tensor([j.step for j in jobs], dtype=torch.int64, device=dev)       # [m]
        start, jobs, workers, steps, sliced = self._snapshots(jobs, workers, steps)       # [m, d]
        self.sliced += sliced
        if self.local_steps == 0:
            out = self._grads(start, workers, steps, 0)
        else:
            lr = torch.tensor([self.local_lr(j.step) for j in jobs], device=dev).view(-1, 1)
            th = start
            for h in range(self.local_steps):                  # lockstep: one batched call per local step
                th = th - lr * self._grads(th, workers, steps, h)
            out = start - th
        sizes = [None] * len(jobs)
        if self.alg is not None:                 # rows are distinct workers: one job in flight each
            if self.errors is not None:          # kept for a rollback if the job is lost (drop)
                for j, row in zip(jobs, self.errors[workers]):
                    j.ef_before = row
                self.encoded_step.update((j.worker, j.step) for j in jobs)
            self.errors, out, sizes = self.alg.encode(self.errors, out, workers, RowStreams(self.streams, workers,
                                                                                            steps))
        for j, m, b in zip(jobs, out, sizes):
            j.message = m
            j.nbytes = j.nbytes if b is None else b      # None: a fixed size, set when it was sent
            if j.slot is not None:                       # the ring may reuse its row from now on
                j.theta, j.slot = None, None

    @staticmethod
    def _snapshots(jobs: list[Job], workers: torch.Tensor, steps: torch.Tensor):
        """The jobs' snapshots as one [m, d] tensor: a slice of the VersionRing
        when they are m consecutive rows of it (the jobs, workers and steps put
        in row order; each row's gradient does not depend on the other rows
        of its batch, which the lazy-equals-eager tests check bitwise), else
        a stack."""
        slots = [j.slot for j in jobs]
        if slots[0] is not None and all(sl is not None and sl[0] is slots[0][0] for sl in slots):
            ring = slots[0][0]
            for j in jobs:
                if not ring.holds(j.slot, j.version):
                    raise AssertionError(f"version ring: row {j.slot[1]} no longer holds version {j.version}")
            rows = [sl[1] for sl in slots]
            lo = min(rows)
            if sorted(rows) == list(range(lo, lo + len(rows))):
                order = sorted(range(len(jobs)), key=lambda k: rows[k])
                if order != list(range(len(jobs))):
                    perm = torch.tensor(order, dtype=torch.int64, device=workers.device)
                    jobs, workers, steps = [jobs[k] for k in order], workers[perm], steps[perm]
                return ring.buf[lo:lo + len(rows)], jobs, workers, steps, True
        return torch.stack([j.theta for j in jobs]), jobs, workers, steps, False


def run_event_driven(world: World, cfg, on_row: Callable[[dict], None] = lambda row: None,
                     on_round: Callable[[int, float], None] = lambda r, t: None,
                     on_update: Callable[[dict], None] = lambda row: None, eager: bool = False,
                     ring_rows: int | None = None) -> RunResult:
    """Train one event-driven algorithm in ``world`` until a stop rule fires.

    The algorithm (algorithms/asynchronous.py) gives ``local_steps`` and
    ``local_lr``, ``upload_bytes`` / ``reply_bytes``, ``concurrency`` (how many
    workers compute at once; None: all), ``reply_at_once`` (answer each
    arrival as it is processed, or after every arrival of that instant),
    ``receive(state, theta, message, job, staleness, version) -> (theta,
    state, {"applied": bool, "step_size": float})`` and ``may_proceed(clock,
    slowest)`` (bounded staleness)."""
    scn = world.scenario
    why = refusal(scn, cfg)
    if why:
        raise ConfigError(why, field="algorithms")
    n, d, dev = world.n, world.model.d, world.device
    alg = cfg.build(Context(d=d, n=n, blocks=world.model.blocks, device=dev,
                            shard_sizes=tuple(int(x) for x in world.shards.size.tolist())))
    env = simpy.Environment()
    net = Network(env, world.graph, scn.network.sharing)
    server = scn.network.topology.server_names()[0]
    header = scn.network.header_bytes
    streams = WorkerStreams(world.seed, n, dev)
    failures = failures_of(scn)
    H = int(getattr(alg, "local_steps", 0))
    lazy = LazyGrads(world, GradFn(world.model, scn.gradients), streams, H, getattr(alg, "local_lr", None),
                     eager=eager, alg=alg)
    fixed = getattr(alg, "fixed_size", True)    # else an upload's size needs its encoded message
    result = RunResult(cfg.label, world.seed, model_params=d)
    c = Counters()
    stop = scn.stop
    s = {"theta": world.model.init_params(world.seed, dev), "version": 0, "state": None, "messages": 0}
    s["state"] = alg.init(s["theta"])
    inflight: dict[int, Params] = {}     # params messages on their way, by message number
    # Versions in a ring (no copy per batch) for algorithms that can write their update into a given
    # row (``receive(..., out=)``); with local steps the snapshots are stacked as before.
    # ``ring_rows``: R (default 2 n + 2: n versions held by the workers, plus the ones in flight); 0: no ring.
    rows = 2 * n + 2 if ring_rows is None else int(ring_rows)
    ring = VersionRing(s["theta"], rows, lambda: [*inflight.values(), *lazy.pending]) \
        if getattr(alg, "receive_into", False) and H == 0 and rows >= 2 else None
    if ring is not None:
        s["theta"], s["slot"] = ring.row(0)
    clocks = [0] * n                     # messages of each worker processed so far
    held: list[int] = []                 # workers whose next start waits (bounded staleness)
    start = [env.event() for _ in range(n)]
    mailbox: list[Job] = []
    wake = {"ev": env.event()}
    done = env.event()
    every, last_message = scn.eval_every * n, stop.max_rounds * n
    steps: dict[int, list[float]] = {}
    C = n if getattr(alg, "concurrency", None) is None else min(int(alg.concurrency), n)
    pick = np.random.default_rng([world.seed, 0xFEDB])   # the server's client choice (concurrency < n)
    first = first_clients(pick, failures, n, C) if C < n else list(range(n))
    idle = sorted(set(range(n)) - set(first))            # C < n: the clients without a slot
    slots = {"open": C - len(first), "wake_s": math.inf}  # C < n: slots without a client; next wake to fill

    def step_s(i: int, j: int) -> float:
        if j not in steps:                      # the n workers' times of local step j, drawn once
            steps[j] = straggler_times(world, streams, j)
        return steps[j][i] * max(1, H)          # H local steps take H step times

    def record() -> dict:
        ev = evaluate(world, s["theta"])
        row = {"algorithm": cfg.label, "seed": world.seed, "round": s["version"], "sim_time_s": env.now,
               "uploads": c.uploads, "bytes_up": c.bytes_up, "bytes_down": c.bytes_down, **ev}
        result.rows.append(row)
        on_row(row)
        return row

    def send_params(i: int) -> None:
        version = s["version"]
        msg = Message(server, f"w{i}", "params", version, alg.reply_bytes, header)
        c.bytes_down += msg.nbytes
        ev = start[i]                           # pending: the worker took the previous one and replaced it
        key = s["sent"] = s.get("sent", 0) + 1
        inflight[key] = Params(s["theta"], version, env.now, s.get("slot"))
        net.send(msg).callbacks.append(lambda _e: ev.succeed(inflight.pop(key)))

    def fill() -> None:
        """C < n: give each open slot a client drawn uniformly from the idle ones that
        are up now; with none up, wake at the earliest rejoin among them."""
        while slots["open"] > 0:
            up = [k for k in idle if failures.up(k, env.now)]
            if not up:
                return wake_at(min((failures.next_up_one(k, env.now) for k in idle), default=math.inf))
            nxt = up[int(pick.integers(len(up)))]
            idle.remove(nxt)
            slots["open"] -= 1
            send_params(nxt)

    def wake_at(t: float) -> None:
        if t < slots["wake_s"]:                 # inf (nobody ever rejoins): the slot stays open
            slots["wake_s"] = t
            env.process(refill(t))

    def refill(t: float):
        yield env.timeout(t - env.now)
        if slots["wake_s"] == t:
            slots["wake_s"] = math.inf
        fill()

    def free_slot(i: int) -> None:
        """C < n: client i is done (its message processed) or lost (down when its
        parameters arrived, or crashed while training): its slot goes to a draw."""
        idle.append(i)
        idle.sort()
        slots["open"] += 1
        fill()

    def dispatch(i: int) -> None:
        """Worker i's message was processed: who computes next, and when."""
        if C < n:                                # a slot is free: a client drawn from the idle ones
            return free_slot(i)
        held.append(i)
        slowest = min(clocks)
        for k in sorted(held):
            if alg.may_proceed(clocks[k], slowest):
                held.remove(k)
                send_params(k)

    def rejoin(i: int):
        """Worker i is down: wait until it is up again (forever if it never is), then pull
        the parameters (a params message, 4 d bytes) before computing again."""
        wake = failures.next_up_one(i, env.now)
        if math.isinf(wake):
            yield env.event()                     # never: this worker is gone
        yield env.timeout(wake - env.now)
        send_params(i)

    def worker(i: int):
        j = 0
        while True:
            got = yield start[i]                  # Params: the snapshot (maybe a ring row) and its version
            start[i] = env.event()                # where the next assignment will come
            if not failures.up(i, env.now):       # the parameters reached a worker that is down
                if C < n:
                    free_slot(i)
                else:
                    yield from rejoin(i)
                continue
            job = Job(i, j, got.version, got.theta, params_sent_s=got.sent_s, compute_start_s=env.now,
                      slot=got.slot)
            del got
            lazy.add(job)
            crash_s = first_crash_s(failures, i, env.now, env.now + step_s(i, j)) if C < n else None
            if crash_s is not None:               # C < n: the server learns of it at once, the slot is free
                yield env.timeout(crash_s - env.now)
                lazy.drop(job)
                j += 1
                free_slot(i)
                continue
            yield env.timeout(step_s(i, j))
            if not failures.up_through(i, job.compute_start_s, env.now):   # crashed while computing
                lazy.drop(job)
                j += 1
                yield from rejoin(i)
                continue
            job.upload_start_s = env.now
            size = job.nbytes = alg.upload_bytes if fixed else lazy.nbytes(job)
            msg = Message(f"w{i}", server, "grad", j, size, header)
            yield net.send(msg)
            c.uploads += 1                    # counted on delivery
            c.bytes_up += msg.nbytes
            mailbox.append(job)
            if not wake["ev"].triggered:
                wake["ev"].succeed()
            j += 1

    def finish(why_diverged: str = "") -> None:
        if why_diverged:
            result.diverged, result.diverged_why = True, why_diverged
        if not done.triggered:
            done.succeed()

    def server_proc():
        record()
        while True:
            if not mailbox:
                wake["ev"] = env.event()
                yield wake["ev"]
            yield env.timeout(0)             # every arrival of this instant is in the mailbox now
            batch = sorted(mailbox, key=lambda job: job.worker)
            mailbox.clear()
            answered = []
            for job in batch:
                msg = lazy.get(job)
                tau = s["version"] - job.version
                if ring is not None:                 # written straight into the next version's row
                    row, slot = ring.claim(s["version"] + 1)
                    theta, s["state"], info = alg.receive(s["state"], s["theta"], msg, job, tau, s["version"],
                                                          out=row)
                    if theta is not row or not info["applied"]:
                        raise AssertionError(f"{cfg.label}: receive(out=) must write the new version into out")
                    s["theta"], s["slot"] = row, slot
                else:
                    s["theta"], s["state"], info = alg.receive(s["state"], s["theta"], msg, job, tau,
                                                               s["version"])
                s["version"] += 1 if info["applied"] else 0
                s["messages"] += 1
                clocks[job.worker] += 1
                on_update({"algorithm": cfg.label, "seed": world.seed, "version": s["version"],
                           "sim_time_s": env.now, "worker": job.worker, "computed_at": job.version,
                           "staleness": tau, "step_size": info["step_size"], "params_sent_s": job.params_sent_s,
                           "compute_start_s": job.compute_start_s, "upload_start_s": job.upload_start_s,
                           "applied": info["applied"], "payload_bytes": job.nbytes})   # the last two: trace only
                on_round(s["messages"] // n, env.now)
                # every n messages (as often as the synchronous engine checks: once a round)
                if s["messages"] % n == 0 and not bool(torch.isfinite(s["theta"]).all()):
                    record()
                    return finish(f"diverged at version {s['version']}: a parameter is not finite after the update")
                if alg.reply_at_once:
                    dispatch(job.worker)
                else:
                    answered.append(job.worker)
                verdict = version_stop(stop, s["messages"], every, last_message, env.now, record, s["version"])
                if verdict is not None:
                    return finish(verdict)
            for i in answered:
                dispatch(i)

    env.process(server_proc())
    for i in range(n):
        env.process(worker(i))
    for i in first:                              # they hold theta_0 at time 0
        start[i].succeed(Params(s["theta"], 0, 0.0, s.get("slot")))
    if slots["open"]:                            # C < n, fewer clients up at time 0 than slots
        env.process(refill(0.0))
    drive(env, done, net, result, record, lambda: f"version {s['version']}")
    result.mean_batch = lazy.mean_batch
    result.ring_batches, result.ring_evacuated = lazy.sliced, (ring.evacuated if ring is not None else 0)
    return result
