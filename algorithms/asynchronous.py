"""Asynchronous SGD on a parameter server, with staleness-aware steps and
bounded staleness (SSP).  Event-driven: sim/eventsim.py runs it.

The protocol (Dean et al. 2012, Downpour SGD; the staleness and SSP rules
below are the papers'):

    worker i:  compute g_i at the parameters it last received (version v_i)
               -> push g_i (4 d bytes) -> wait for the reply -> repeat
    server:    on each arrival, at once: theta <- theta - eta * g_i
               (version v -> v + 1); staleness tau = v - v_i
               reply to worker i with the current theta (4 d bytes)

Step size.  eta = lr_t / n per gradient, t = v // n: n arrivals move theta as
far as one synchronous round of SGD with lr_t and the mean gradient, so that
``lr`` means the same as for ``sgd`` (Downpour applies lr * g per gradient:
give ``lr`` n times larger for that).  ``staleness_lr: true`` divides by
max(1, tau) (Zhang, Gupta, Lian & Liu, IJCAI 2016, "Staleness-aware
Async-SGD", Eq. 4: alpha / tau; max(1, .) for the fresh gradients).

Bounded staleness.  ``max_staleness: s`` (Stale Synchronous Parallel, Ho et
al., NIPS 2013): worker i's clock c_i counts its applied gradients; its reply
is held while c_i - min_j c_j > s, and sent (with the then current theta)
once the slowest worker catches up.  s = 0: every worker of a wave computes
at the same version, the one after the whole previous wave was applied: the
n sequential steps of eta = lr / n then equal one step of synchronous SGD
(up to the order of the float additions).  No bound (the default): fully
asynchronous.

State: none beyond theta (no momentum, no compressor).  Missing workers and
failures are not modelled yet for event-driven algorithms (sim/eventsim.py
refuses them with a message).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import torch
from pydantic import Field

from .base import VALUE_BYTES, AlgorithmConfig, Context


@dataclass(frozen=True)
class AsyncSgd:
    name: str
    lr: Any                   # lr_t, t = the synchronous round equivalent v // n
    n: int
    d: int
    staleness_lr: bool
    max_staleness: int | None
    summable: bool = False

    @property
    def upload_bytes(self) -> int:
        """A dense gradient: 4 d."""
        return VALUE_BYTES * self.d

    @property
    def reply_bytes(self) -> int:
        """The parameters: 4 d."""
        return VALUE_BYTES * self.d

    def init(self, theta: torch.Tensor) -> None:
        return None

    def step_size(self, version: int, staleness: int) -> float:
        eta = self.lr(version // self.n) / self.n
        return eta / max(1, staleness) if self.staleness_lr else eta

    def apply(self, state: None, theta: torch.Tensor, grad: torch.Tensor, staleness: int,
              version: int) -> tuple[torch.Tensor, None, float]:
        """One arrival: theta [d], grad [d] -> new theta, state, the step size used."""
        eta = self.step_size(version, staleness)
        return theta - eta * grad, state, eta

    def may_proceed(self, clock: int, slowest: int) -> bool:
        """SSP: may a worker at ``clock`` get new parameters while the slowest is at ``slowest``?"""
        return self.max_staleness is None or clock - slowest <= self.max_staleness


class AsyncSgdConfig(AlgorithmConfig):
    """Asynchronous SGD (Downpour): the server applies every gradient on
    arrival and replies with the new parameters; optional staleness-aware
    step (Zhang et al. 2016) and bounded staleness (SSP, Ho et al. 2013).
    Event-driven (sim/eventsim.py): its math depends on arrival times."""

    kind: Literal["async_sgd"] = "async_sgd"
    staleness_lr: bool = Field(False, description="divide the step by max(1, staleness) (Zhang et al. 2016)")
    max_staleness: int | None = Field(None, ge=0, description="SSP bound s: a worker more than s applied "
                                                              "gradients ahead of the slowest waits (0: sync)")

    timing_independent: ClassVar[bool] = False
    event_driven: ClassVar[bool] = True

    def build(self, ctx: Context) -> AsyncSgd:
        return AsyncSgd(self.label, self.lr_at, ctx.n, ctx.d, self.staleness_lr, self.max_staleness)
