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

State: none beyond theta on the server (no momentum); with a compressor,
each worker's error-feedback memory (``init_workers`` / ``encode``).
Failures (crash and rejoin intervals) are modelled by sim/eventsim.py: a
lost computation is never applied, and its error feedback is rolled back.
"""
from __future__ import annotations

from dataclasses import dataclass
import math
from typing import Any, ClassVar, Literal

import torch
from pydantic import Field, model_validator

from .base import VALUE_BYTES, AlgorithmConfig, Context
from .compressors import Compressor, CompressorConfig, ErrorFeedback, NoneConfig


@dataclass(frozen=True)
class AsyncSgd:
    name: str
    lr: Any                   # lr_t, t = the synchronous round equivalent v // n
    n: int
    d: int
    staleness_lr: bool
    max_staleness: int | None
    compressor: Compressor | None = None    # None: dense gradients
    error_feedback: bool = False
    summable: bool = False

    # --- the workers' side: compression with error feedback -------------------------
    @property
    def fixed_size(self) -> bool:
        """Is every upload 4 d bytes whatever the gradient (no compressor)?"""
        return self.compressor is None

    def init_workers(self, n: int, d: int, device) -> torch.Tensor | None:
        """Each worker's error-feedback memory, [n, d] (None without EF)."""
        return torch.zeros(n, d, device=device) if self.error_feedback else None

    def encode(self, errors: torch.Tensor | None, grads: torch.Tensor, workers: torch.Tensor, streams
               ) -> tuple[torch.Tensor | None, torch.Tensor, list[int]]:
        """Rows of gradients [m, d] of ``workers`` [m] (at most one row per worker)
        -> (new memories, what the server decodes [m, d], payload bytes [m]):
        p = g + e_i, sent C(p), e_i <- p - D(C(p)) (the compressor's formula
        gives the bytes).  ``streams``: sim.learn.rng.RowStreams for the rows."""
        if self.compressor is None:
            return errors, grads, [self.upload_bytes] * int(grads.shape[0])
        if errors is None:
            payload = self.compressor.compress(grads, streams=streams, round=0)
            return None, self.compressor.decompress(payload), [int(b) for b in payload.nbytes.tolist()]
        payload, decoded, err = ErrorFeedback(self.compressor).step(grads, errors[workers], streams=streams, round=0)
        errors = errors.clone()
        errors[workers] = err
        return errors, decoded, [int(b) for b in payload.nbytes.tolist()]

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

    local_steps: ClassVar[int] = 0          # the message is a gradient at the snapshot
    concurrency: ClassVar[None] = None      # every worker computes all the time
    reply_at_once: ClassVar[bool] = True    # the new parameters go back as soon as the gradient is applied

    receive_into: ClassVar[bool] = True      # receive(out=) writes the new theta there (sim/eventsim.py VersionRing)

    def receive(self, state: None, theta: torch.Tensor, grad: torch.Tensor, job, staleness: int,
                version: int, out: torch.Tensor | None = None) -> tuple[torch.Tensor, None, dict]:
        """One arrival: theta [d], grad [d] -> new theta (in ``out`` when given), state, what was done."""
        eta = self.step_size(version, staleness)
        return torch.add(theta, grad, alpha=-eta, out=out), state, {"applied": True, "step_size": eta}   # one pass

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
    compressor: CompressorConfig = Field(default_factory=NoneConfig, description="applied to each gradient")
    error_feedback: bool = Field(True, description="keep e_i = p - D(C(p)) on each worker (with a compressor)")

    timing_independent: ClassVar[bool] = False
    event_driven: ClassVar[bool] = True

    @model_validator(mode="after")
    def _per_worker_draws(self) -> "AsyncSgdConfig":
        if getattr(self.compressor, "shared_seed", False):
            raise ValueError("compressor: randomk with shared_seed draws one mask per round; an asynchronous "
                             "run has no rounds (allowed: shared_seed: false)")
        return self

    def build(self, ctx: Context) -> AsyncSgd:
        comp = None if self.compressor.kind == "none" else self.compressor.build(ctx)
        return AsyncSgd(self.label, self.lr_at, ctx.n, ctx.d, self.staleness_lr, self.max_staleness, comp,
                        self.error_feedback and comp is not None)


# --- FedBuff and FedAsync: local steps, then a buffered or a mixing server ------------

@dataclass(frozen=True)
class FedBuffState:
    total: torch.Tensor | None      # [d] the sum of the buffered Delta_i
    count: int                      # messages in the buffer


@dataclass(frozen=True)
class FedBuff:
    """FedBuff (Nguyen et al., AISTATS 2022, "Federated Learning with Buffered
    Asynchronous Aggregation", Algorithm 1): at most C clients train at once,
    each H local SGD steps from the model it received (Delta_i = theta_snap -
    theta_i^(H)); the server adds each arriving Delta_i to a buffer and, when
    K are in, steps theta <- theta - lr * (1/K) sum Delta_i (version + 1) and
    empties the buffer.  A client whose message was processed is replaced by
    one drawn uniformly from the idle clients (itself included) that are up,
    which gets the current model (with failures, sim/eventsim.py: a crashed
    client frees its slot at once; an open slot waits for a rejoin).  Replies of one instant go out after every arrival of
    that instant was processed, so with K = C = n and equal clients every
    client starts from the flushed model: synchronous FedAvg (a test checks
    it).  Staleness weights (the paper's 1/sqrt(1 + tau)) with
    ``staleness_weight: sqrt``; none by default."""

    name: str
    lr: Any
    n: int
    d: int
    local_steps: int
    local_lr: Any
    buffer: int               # K
    concurrency: int | None   # C (None: n)
    staleness_weight: str
    reply_at_once: ClassVar[bool] = False

    @property
    def upload_bytes(self) -> int:
        return VALUE_BYTES * self.d          # Delta_i, dense

    @property
    def reply_bytes(self) -> int:
        return VALUE_BYTES * self.d          # the model

    def init(self, theta: torch.Tensor) -> FedBuffState:
        return FedBuffState(torch.zeros_like(theta), 0)

    def may_proceed(self, clock: int, slowest: int) -> bool:
        return True

    def receive(self, s: FedBuffState, theta: torch.Tensor, delta: torch.Tensor, job, staleness: int,
                version: int) -> tuple[torch.Tensor, FedBuffState, dict]:
        w = 1.0 / math.sqrt(1.0 + staleness) if self.staleness_weight == "sqrt" else 1.0
        total, count = s.total + w * delta, s.count + 1
        if count < self.buffer:
            return theta, FedBuffState(total, count), {"applied": False, "step_size": 0.0}
        eta = self.lr(version) / self.buffer
        return theta - eta * total, FedBuffState(torch.zeros_like(theta), 0), {"applied": True, "step_size": eta}


@dataclass(frozen=True)
class FedAsync:
    """FedAsync (Xie, Koyejo & Gupta 2019, arXiv:1903.03934, Algorithm 1 and
    Sec. 5.2): a client trains H local SGD steps from the model it received
    (version tau) and sends its model x_new; on arrival at version t the
    server mixes x <- (1 - alpha_t) x + alpha_t x_new with alpha_t = alpha
    s(t - tau): ``constant`` s = 1; ``polynomial`` s = (t - tau + 1)^-a;
    ``hinge`` s = 1 if t - tau <= b else 1 / (a (t - tau - b) + 1).  It
    replies at once with the mixed model.  (The paper's proximal term rho is
    not modelled: rho = 0.)"""

    name: str
    alpha: float
    n: int
    d: int
    local_steps: int
    local_lr: Any
    staleness_fn: str
    a: float
    b: int
    concurrency: ClassVar[None] = None
    reply_at_once: ClassVar[bool] = True

    @property
    def upload_bytes(self) -> int:
        return VALUE_BYTES * self.d          # the local model

    @property
    def reply_bytes(self) -> int:
        return VALUE_BYTES * self.d

    def init(self, theta: torch.Tensor) -> None:
        return None

    def may_proceed(self, clock: int, slowest: int) -> bool:
        return True

    def weight(self, staleness: int) -> float:
        if self.staleness_fn == "polynomial":
            return (staleness + 1.0) ** (-self.a)
        if self.staleness_fn == "hinge":
            return 1.0 if staleness <= self.b else 1.0 / (self.a * (staleness - self.b) + 1.0)
        return 1.0

    def receive(self, state: None, theta: torch.Tensor, delta: torch.Tensor, job, staleness: int,
                version: int) -> tuple[torch.Tensor, None, dict]:
        x_new = job.theta - delta                                   # the client's model
        alpha = self.alpha * self.weight(staleness)
        return (1.0 - alpha) * theta + alpha * x_new, state, {"applied": True, "step_size": alpha}


class _LocalFields(AlgorithmConfig):
    local_lr: float = Field(gt=0, description="the clients' local SGD step size")
    local_steps: int = Field(1, ge=1, le=10_000, description="H local steps per job")

    timing_independent: ClassVar[bool] = False
    event_driven: ClassVar[bool] = True

    def _local_lr(self):
        return lambda j: self.local_lr * self.lr_schedule.factor(j)


class FedBuffConfig(_LocalFields):
    """FedBuff (Nguyen et al. 2022): buffered asynchronous aggregation of K
    client deltas, C clients at once, server step ``lr`` (event-driven)."""

    kind: Literal["fedbuff"] = "fedbuff"
    lr: float = Field(1.0, gt=0, description="server step size eta_g")
    buffer: int = Field(ge=1, description="K deltas per server step")
    concurrency: int | None = Field(None, ge=1, description="C clients training at once (default: all)")
    staleness_weight: Literal["none", "sqrt"] = "none"

    def build(self, ctx: Context) -> FedBuff:
        return FedBuff(self.label, self.lr_at, ctx.n, ctx.d, self.local_steps, self._local_lr(), self.buffer,
                       self.concurrency, self.staleness_weight)


class FedAsyncConfig(_LocalFields):
    """FedAsync (Xie et al. 2019): the server mixes each arriving client model
    with weight alpha s(staleness) (event-driven)."""

    kind: Literal["fedasync"] = "fedasync"
    lr: float = Field(1.0, gt=0, description="unused by the mixing rule (alpha is the server's weight)")
    alpha: float = Field(0.6, gt=0, le=1, description="mixing weight before the staleness function")
    staleness_fn: Literal["constant", "polynomial", "hinge"] = "constant"
    a: float = Field(0.5, ge=0, description="polynomial exponent / hinge slope")
    b: int = Field(4, ge=0, description="hinge: staleness served at full weight")

    def build(self, ctx: Context) -> FedAsync:
        return FedAsync(self.label, self.alpha, ctx.n, ctx.d, self.local_steps, self._local_lr(),
                        self.staleness_fn, self.a, self.b)
