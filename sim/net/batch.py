"""Events due at one instant that share one SimPy queue entry, in SimPy's exact order.

A synchronous round makes many events due at the same instant: n uploads end
together and arrive one latency later; n workers get the parameters together
and finish computing together.  One queue entry per event was a large share of
a replayed round's host time (the push, the pop and env.step per event).  Here
one entry, a :class:`Batch`, carries a run of events whose entries would have
been consecutive in SimPy's queue order, and processing it processes each in
turn, as ``env.step`` would.

Why the order is SimPy's: SimPy orders entries by (time, priority, id), ids
taken from one counter as events are scheduled.  A batch holds events that
would have taken consecutive ids (nothing else was scheduled between them)
for one time at NORMAL priority, so no other entry lies between them, and the
batch takes the place (time, NORMAL, id) of its first event.  Events that
their callbacks schedule take later ids, so they come after the batch's
events, unless they are due now at a higher priority (URGENT: a process
starting, an interrupt): then the rest of the batch goes back into the queue
under the batch's own (time, priority, id), behind them.  If a callback raises,
the events not yet processed go back the same way (and a StopSimulation, from
``env.run(until=one of them)``, leaves that event's remaining callbacks
rescheduled as env.step does), so a run resumed afterwards processes them as
SimPy would have.  tests/test_network.py compares exact traces.
"""
from __future__ import annotations

import heapq
import itertools

import simpy

NORMAL = simpy.events.NORMAL


class Batch(simpy.Event):
    """One queue entry for ``events`` (triggered, not yet processed), due at ``when``."""

    def __init__(self, env: simpy.Environment, events: list[simpy.Event], eid: int, when: float) -> None:
        self.env = env
        self.callbacks = [self._process]
        self._ok, self._value = True, None
        self.events, self.eid, self.when = events, eid, when

    @classmethod
    def schedule(cls, env: simpy.Environment, events: list[simpy.Event], when: float) -> "Batch":
        """Push a batch for ``events`` due at ``when``, taking the next id as env.schedule does."""
        eid = next(env._eid)
        batch = cls(env, events, eid, when)
        heapq.heappush(env._queue, (when, NORMAL, eid, batch))
        return batch

    def _later(self, rest: list[simpy.Event]) -> None:
        env = self.env
        heapq.heappush(env._queue, (env._now, NORMAL, self.eid, Batch(env, rest, self.eid, env._now)))

    def _process(self, _ev) -> None:
        env = self.env
        queue, now = env._queue, env._now
        events = self.events
        for j, ev in enumerate(events):
            if j and queue and queue[0][0] == now and queue[0][1] < NORMAL:
                self._later(events[j:])                  # an URGENT event came due now: it goes first
                return
            callbacks, ev.callbacks = ev.callbacks, None
            callback = None
            try:
                for callback in callbacks:
                    callback(ev)
            except BaseException as exc:
                if isinstance(exc, simpy.core.StopSimulation):   # as env.step does for its event
                    ev.callbacks = callbacks[callbacks.index(callback) + 1:]
                    env.schedule(ev, simpy.events.EventPriority(-1))
                if j + 1 < len(events):
                    self._later(events[j + 1:])
                raise


class Timeouts:
    """``timeout(delay)``: an event that fires ``delay`` seconds from now, as
    ``env.timeout(delay)`` (value None), sharing a queue entry with the
    timeouts made just before it for the same instant when nothing else was
    scheduled in between (the module docstring says why that is exact).
    Whether anything was: SimPy's id counter (an itertools.count) is read by
    taking its next value and putting a count from that value back, so the
    ids every event takes are the ones it would take anyway."""

    def __init__(self, env: simpy.Environment) -> None:
        self.env = env
        self._last: Batch | None = None
        self._next_id = -1          # the counter's value just after the last batch was pushed

    def _peek_id(self) -> int:
        env = self.env
        v = next(env._eid)
        env._eid = itertools.count(v)
        return v

    def timeout(self, delay: float) -> simpy.Event:
        if delay < 0:
            raise ValueError(f"Negative delay {delay}")
        env = self.env
        ev = simpy.Event(env)
        ev._ok, ev._value = True, None
        when = env._now + delay
        last = self._last
        if last is not None and last.callbacks is not None and last.when == when \
                and self._peek_id() == self._next_id:
            last.events.append(ev)
            return ev
        self._last = Batch.schedule(env, [ev], when)
        self._next_id = self._last.eid + 1
        return ev
