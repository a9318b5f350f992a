"""Lazy aggregation: skip rules wrapping an algorithm's upload (LAG, LASG, SASG).

A worker (or the server, for ``lasg_ps``) decides each round whether the
worker uploads; the server reuses the last message it stored for each worker
that skips.  Rules (sasg.txt Algorithm 1 and rule (6); Chen, Sun & Yin 2020,
LASG; the reference codes named in ../shared/notes/algorithm-details.md):

``lasg_wk2`` / ``sasg``
    On the same minibatch, worker m computes g(theta^k) and g(theta_hat_m)
    (theta_hat_m: the iterate of its last upload, or the previous iterate with
    ``stale_at: previous``) and uploads when

        ||g(theta^k) - g(theta_hat_m)||^2  >=  threshold
        threshold = scale * sum_{d=1..D} xi_d ||theta^{k+1-d} - theta^{k-d}||^2

    (``>`` with ``strict: true``), or when its delay reached ``max_delay``.
    ``scale`` is 1 / (lr^2 M^2) (``threshold_scaling: lasg``, the LASG paper)
    or 1 / (2 lr M^2) (``sasg``, the SASG notebook).  The threshold starts at
    0, so the first rounds all upload (SASG: every worker communicates while
    k < D).
``lasg_wk1``
    Variance-reduced form: delta = g(theta^k) - g(theta_snapshot) on the same
    minibatch, snapshot refreshed every ``max_delay`` rounds; uploads when
    ||delta - delta_stored||^2 >= threshold.
``lasg_ps``
    The server asks worker m when L ||theta^k - theta_hat_m||^2 >= threshold
    (L = ``smoothness``); workers it does not ask compute nothing and send
    nothing.
``lag``
    LAG's worker rule on the algorithm's gradients (deterministic LAG when
    ``batch_size`` is the whole shard).

Costs are charged honestly: the auxiliary gradient is real compute (the
round's compute time is doubled for rules that need it), a skipping worker
still receives the broadcast, and a worker-side skip costs a header-only skip
notice on the uplink.  Messages are combined by ``aggregate: mean`` (LASG
code) or ``sum`` (SASG notebook: theta^{k+1} = theta^k - sum_m Delta_m).

The rules themselves are registered objects (algorithms/skiprules.py,
``SKIP_RULES``); :class:`Lazy` holds what every rule shares (the threshold,
forced uploads, the stored messages and their reuse, the costs) and asks its
rule only which workers want to upload.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import torch

from sim.learn.rng import WorkerStreams

from .base import Downlink, INDEX_BYTES, Payload, Upload, VALUE_BYTES
from .compressors import Identity
from .ps import ParameterServer, keep_rows, update_bytes
from .skiprules import Decision, RoundView, SkipRule


@dataclass(frozen=True)
class LazyState:
    inner: Any                   # the wrapped algorithm's state
    stored: torch.Tensor         # [n, d] the server's last decoded message of each worker
    theta_hat: torch.Tensor      # [n, d] the iterate at each worker's last upload
    rule: Any                    # the skip rule's own state (SkipRule.init), e.g. wk1's snapshot
    history: tuple[float, ...]   # the last D values of ||theta^{k+1} - theta^k||^2, newest last
    delay: torch.Tensor          # [n] rounds since each worker's last upload
    uploaded: torch.Tensor | None = None   # [n] bool, this round
    prev_theta: torch.Tensor | None = None   # theta^{k-1}
    current: torch.Tensor | None = None      # theta^k
    skips: int = 0
    slots: int = 0


@dataclass(frozen=True)
class Lazy:
    name: str
    inner: ParameterServer
    rule: SkipRule               # algorithms/skiprules.py (SKIP_RULES)
    n: int
    lr: Any                      # lr(t)
    D: int = 10
    xi: tuple[float, ...] = ()
    max_delay: int = 50
    scaling: str = "lasg"        # lasg: 1/(lr^2 M^2); sasg: 1/(2 lr M^2)
    strict: bool = False
    stale_at: str = "theta_hat"  # theta_hat | previous
    aggregate: str = "mean"      # mean | sum
    warmup_all: bool = False     # every worker communicates while k < D (SASG notebook)

    @property
    def summable(self) -> bool:
        return False

    # the server steps with stored messages even in a round in which no worker uploads
    updates_without_uploads = True

    @property
    def needs_aux_gradient(self) -> bool:
        return self.rule.needs_aux_gradient

    def init(self, theta: torch.Tensor) -> LazyState:
        n, d = self.n, theta.numel()
        z = torch.zeros(n, d, device=theta.device)
        return LazyState(self.inner.init(theta), z, theta.expand(n, d).clone(), self.rule.init(theta, n),
                         (), torch.zeros(n, dtype=torch.long), prev_theta=theta.clone(), current=theta.clone())

    def threshold(self, s: LazyState, t: int) -> float:
        """scale * sum_d xi_d ||theta^{k+1-d} - theta^{k-d}||^2 over the last D changes."""
        xi = self.xi or tuple([1.0 / self.D] * self.D)
        recent = list(reversed(s.history))[: self.D]          # newest first: d = 1, 2, ...
        total = sum(w * h for w, h in zip(xi, recent))
        lr, m = self.lr(t), self.n
        scale = 1.0 / (lr * lr * m * m) if self.scaling == "lasg" else 1.0 / (2.0 * lr * m * m)
        return scale * total

    def worker_encode(self, s: LazyState, grads: torch.Tensor, round: int, streams: WorkerStreams,
                      active: torch.Tensor | None = None, aux_grad=None) -> tuple[Upload, LazyState]:
        n = grads.shape[0]
        dev = grads.device
        act = torch.ones(n, dtype=torch.bool, device=dev) if active is None else active.to(dev)
        forced = s.delay >= self.max_delay
        if round == 0 or (self.warmup_all and round < self.D):   # nothing stored yet: all upload
            forced = torch.ones(n, dtype=torch.bool)
        stale = s.theta_hat if self.stale_at == "theta_hat" else s.prev_theta.expand(n, -1)
        view = RoundView(round, grads, aux_grad, s.current, s.prev_theta, s.theta_hat, stale, s.stored,
                         self.threshold(s, round), self.strict, s.rule)
        decision = self.rule.decide(view)
        wants = _wants(decision, n)
        upload = wants.cpu() | forced
        if self.rule.server_decides:        # not asked: no compute, no message
            sends, factor = upload.clone(), upload.float()
        else:                               # every worker computes; a skip is a header-only notice
            sends = torch.ones(n, dtype=torch.bool)
            factor = torch.full((n,), 2.0) if self.rule.needs_aux_gradient else torch.ones(n)
        upload = upload & act.cpu()
        up_dev = upload.to(dev)
        inner_up, inner = self.inner.worker_encode(s.inner, grads, round, streams, up_dev)
        nbytes = torch.where(upload, inner_up.payload.nbytes, torch.zeros_like(inner_up.payload.nbytes))
        payload = Payload(inner_up.payload.tensors, nbytes)
        out = Upload(payload, upload, sends=sends & act.cpu(), compute_factor=factor)
        new = replace(s, inner=inner, uploaded=upload)
        if decision.update is not None:
            new = replace(new, rule=decision.update(up_dev))
        return out, new

    def server_update(self, s: LazyState, theta: torch.Tensor, upload: Upload, arrived: torch.Tensor,
                      round: int) -> tuple[torch.Tensor, Downlink, LazyState]:
        fresh = (s.uploaded & arrived.cpu()).to(theta.device)           # [n]
        stored = keep_rows(fresh, s.inner.decoded, s.stored)            # reuse stale messages
        g = stored.sum(0) if self.aggregate == "sum" else stored.mean(0)
        delta, opt = self.inner.optimizer.update(g, s.inner.opt, round)
        new_theta = theta + delta
        change = float((delta * delta).sum())
        history = (s.history + (change,))[-self.D:]
        theta_hat = keep_rows(fresh, theta.expand(self.n, -1), s.theta_hat)
        delay = torch.where(fresh.cpu(), torch.zeros_like(s.delay), s.delay + 1)
        rule = self.rule.after_step(s.rule, new_theta, round, self)
        skips = s.skips + int((~s.uploaded).sum())
        inner = replace(s.inner, opt=opt, decoded=None)
        return new_theta, Downlink(update_bytes(delta), "update", delta), replace(
            s, inner=inner, stored=stored, theta_hat=theta_hat, history=history, delay=delay,
            rule=rule, prev_theta=theta.clone(), current=new_theta.clone(), skips=skips,
            slots=s.slots + self.n)

    def server_state_bytes(self, s: LazyState) -> int:
        """The server's memory for stored messages.  Uncompressed gradients are
        kept dense (4 d per worker, as the LASG code keeps them); compressed
        messages (SASG's top-k) the cheaper of dense and value + index per
        nonzero, for each worker (sasg.txt Table III).  A property of what the
        wrapped algorithm sends, not of the rule."""
        d = s.stored.shape[1]
        if isinstance(self.inner.compressor, Identity):
            return VALUE_BYTES * d * self.n
        nnz = (s.stored != 0).sum(1)
        return int(torch.minimum(nnz * (VALUE_BYTES + INDEX_BYTES), torch.full_like(nnz, VALUE_BYTES * d)).sum())

    def skipped_fraction(self, s: LazyState) -> float:
        return s.skips / s.slots if s.slots else 0.0


def _wants(decision: Any, n: int) -> torch.Tensor:
    """A rule's verdict, checked: [n] bool (a plugin's rule is told what is wrong)."""
    if not isinstance(decision, Decision):
        raise TypeError(f"a skip rule's decide() returned {type(decision).__name__}; allowed: "
                        "Decision(wants [n] bool, update=None) (algorithms/skiprules.py)")
    w = decision.wants
    if not isinstance(w, torch.Tensor) or w.dtype != torch.bool or tuple(w.shape) != (n,):
        got = f"{w.dtype} {tuple(w.shape)}" if isinstance(w, torch.Tensor) else type(w).__name__
        raise ValueError(f"a skip rule's Decision.wants is {got}; allowed: a bool tensor of shape ({n},), "
                         "one verdict per worker")
    return w
