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
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import torch

from sim.learn.rng import WorkerStreams

from .base import Downlink, INDEX_BYTES, Payload, Upload, VALUE_BYTES
from .ps import ParameterServer, keep_rows, update_bytes


@dataclass(frozen=True)
class LazyState:
    inner: Any                   # the wrapped algorithm's state
    stored: torch.Tensor         # [n, d] the server's last decoded message of each worker
    theta_hat: torch.Tensor      # [n, d] the iterate at each worker's last upload
    snapshot: torch.Tensor | None  # [d] (wk1) snapshot iterate
    delta_stored: torch.Tensor | None  # [n, d] (wk1) last uploaded delta
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
    rule: str                    # lasg_wk2 | lasg_wk1 | lasg_ps | lag | sasg
    n: int
    lr: Any                      # lr(t)
    D: int = 10
    xi: tuple[float, ...] = ()
    max_delay: int = 50
    scaling: str = "lasg"        # lasg: 1/(lr^2 M^2); sasg: 1/(2 lr M^2)
    strict: bool = False
    stale_at: str = "theta_hat"  # theta_hat | previous
    aggregate: str = "mean"      # mean | sum
    smoothness: float = 0.1      # L of lasg_ps
    warmup_all: bool = False     # every worker communicates while k < D (SASG notebook)

    @property
    def summable(self) -> bool:
        return False

    # the server steps with stored messages even in a round in which no worker uploads
    updates_without_uploads = True

    @property
    def needs_aux_gradient(self) -> bool:
        return self.rule in ("lasg_wk2", "lasg_wk1", "sasg")

    def init(self, theta: torch.Tensor) -> LazyState:
        n, d = self.n, theta.numel()
        z = torch.zeros(n, d, device=theta.device)
        wk1 = self.rule == "lasg_wk1"
        return LazyState(self.inner.init(theta), z, theta.expand(n, d).clone(),
                         theta.clone() if wk1 else None, z.clone() if wk1 else None,
                         (), torch.zeros(n, dtype=torch.long), prev_theta=theta.clone(),
                         current=theta.clone())

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
        thr = self.threshold(s, round)
        forced = s.delay >= self.max_delay
        if round == 0 or (self.warmup_all and round < self.D):   # nothing stored yet: all upload
            forced = torch.ones(n, dtype=torch.bool)
        factor = torch.ones(n)
        if self.rule in ("lasg_wk2", "sasg", "lag"):
            if self.rule == "lag":
                stale = s.stored                              # the gradient it last sent
                diff = ((grads - stale) ** 2).sum(1)
            else:
                at = s.theta_hat if self.stale_at == "theta_hat" else s.prev_theta.expand(n, -1)
                stale = aux_grad(at)                          # [n, d] same minibatch
                diff = ((grads - stale) ** 2).sum(1)
                factor = torch.full((n,), 2.0)                # two forward/backward passes
            big = diff > thr if self.strict else diff >= thr
            upload = big.cpu() | forced
            sends = torch.ones(n, dtype=torch.bool)
            x = grads
        elif self.rule == "lasg_wk1":
            g_snap = aux_grad(s.snapshot.expand(n, -1))
            delta = grads - g_snap
            diff = ((delta - s.delta_stored) ** 2).sum(1)
            big = diff > thr if self.strict else diff >= thr
            upload = big.cpu() | forced
            sends = torch.ones(n, dtype=torch.bool)
            factor = torch.full((n,), 2.0)
            x = grads
        elif self.rule == "lasg_ps":
            gap = ((s.current.view(1, -1) - s.theta_hat) ** 2).sum(1) * self.smoothness
            big = gap > thr if self.strict else gap >= thr
            upload = big.cpu() | forced
            sends = upload.clone()                            # not asked: no compute, no message
            factor = upload.float()
            x = grads
        else:  # pragma: no cover - validated by the config
            raise ValueError(self.rule)
        upload = upload & act.cpu()
        up_dev = upload.to(dev)
        inner_up, inner = self.inner.worker_encode(s.inner, x, round, streams, up_dev)
        nbytes = torch.where(upload, inner_up.payload.nbytes, torch.zeros_like(inner_up.payload.nbytes))
        payload = Payload(inner_up.payload.tensors, nbytes)
        out = Upload(payload, upload, sends=sends & act.cpu(), compute_factor=factor)
        new = replace(s, inner=inner, uploaded=upload)
        if self.rule == "lasg_wk1":
            new = replace(new, delta_stored=keep_rows(up_dev, delta, s.delta_stored))
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
        snapshot = s.snapshot
        if self.rule == "lasg_wk1" and (round + 1) % self.max_delay == 0:
            snapshot = new_theta.clone()
        skips = s.skips + int((~s.uploaded).sum())
        inner = replace(s.inner, opt=opt, decoded=None)
        return new_theta, Downlink(update_bytes(delta), "update", delta), replace(
            s, inner=inner, stored=stored, theta_hat=theta_hat, history=history, delay=delay,
            snapshot=snapshot, prev_theta=theta.clone(), current=new_theta.clone(), skips=skips,
            slots=s.slots + self.n)

    def server_state_bytes(self, s: LazyState) -> int:
        """The server's memory for stored messages: dense (4 d per worker) for
        gradients, value + index per nonzero for sparse messages, whichever is
        smaller for each worker (sasg.txt Table III)."""
        nnz = (s.stored != 0).sum(1)
        d = s.stored.shape[1]
        return int(torch.minimum(nnz * (VALUE_BYTES + INDEX_BYTES), torch.full_like(nnz, VALUE_BYTES * d)).sum()) \
            if self.rule == "sasg" else VALUE_BYTES * d * self.n

    def skipped_fraction(self, s: LazyState) -> float:
        return s.skips / s.slots if s.slots else 0.0
