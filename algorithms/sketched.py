"""Sketching algorithms on the count sketch (algorithms/sketch.py).

``sketched_sgd`` (Ivkin et al. 2019; code dhroth/sketchedsgd): each worker keeps
momentum u and error v (u = rho u + g; v = v + lr u) and sends S(v_i), 4 r c
bytes.  The server sums the sketches -- by linearity it sketches the sum of
the arrived workers' v once, which gives the same table up to float rounding,
while the network still carries n tables -- and with P > 0 unsketches P k
candidates, asks every worker for its exact v at them (a second round: P k
uint32 indices down, P k float32 values up), takes the exact top-k of the sum,
and broadcasts those k values and indices (8 k bytes).  u and v are zeroed
at the updated coordinates on every worker.  P = 0 skips the second round and
uses the sketch's estimates.  The update is the mean over arrived workers.

Diagnostics (diagnostics.csv, one row per round and quantity):
``sketch_recall`` = |top-k of the sketch's estimates  ∩  true top-k| / k and
``update_recall`` = |the k coordinates updated  ∩  true top-k| / k, where the
true top-k is that of the exact vector the sketch stands for (Sketched-SGD:
the sum of the arrived v_i; PA: the mean of p_i; GA: the mean of p_i divided
by sqrt(v_hat), the ranking Algorithm 3 approximates).  With P > 0 the update
recall is the share of the true top-k among the P k candidates (the exact
top-k of the candidates keeps every one of them); with P = 0 the two are
equal.  ``update_mass`` = sum of x_i^2 over the updated coordinates / the
same over the true top-k (x: that exact vector; 1 when the update holds
the true top-k, and near 1 when it misses them only for coordinates of
about the same size, which recall alone would count as misses).
``repeat_share`` = |I_t ∩ I_{t-1}| / k, the share of this round's
updated coordinates that were also updated the round before (their error
was just zeroed, so they are rarely in the true top-k: a sketch that keeps
picking the same buckets shows a high repeat share and a low recall).
They are read from the math, never fed back into it.  FetchSGD has
none: its momentum and error live only in sketch space (zeroing a bucket has
no dense counterpart), so there is no exact vector to compare against.

``fetchsgd`` (Rothchild et al. 2020; code kiddyboots216/CommEfficient with
virtual momentum and error): workers sketch their raw gradient; the server
keeps momentum and error in sketch space, S_u = rho S_u + mean S(g_i),
S_e = S_e + lr S_u, Delta = top-k of unsketch(S_e), then zeroes S_u and S_e in
the buckets where S(Delta) is nonzero.  One round.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import torch

from sim.learn.rng import WorkerStreams

from .base import INDEX_BYTES, VALUE_BYTES, Downlink, Payload, Upload
from .sketch import CountSketch


@dataclass(frozen=True)
class SketchState:
    u: torch.Tensor                        # [n, d] momentum (sketched_sgd) / unused
    v: torch.Tensor                        # [n, d] error accumulators (sketched_sgd) / unused
    table: torch.Tensor | None = None      # [r, c] the server's summed sketch this round
    candidates: torch.Tensor | None = None  # [P k] coordinates asked for in the second round
    s_u: torch.Tensor | None = None        # fetchsgd: [r, c] momentum in sketch space
    s_e: torch.Tensor | None = None        # fetchsgd: [r, c] error in sketch space
    grads: torch.Tensor | None = None      # fetchsgd: [n, d] this round's gradients (for the server's sum)
    true_top: torch.Tensor | None = None   # [k] the exact top-k this round (diagnostics only)
    diag: dict | None = None               # this round's diagnostics (module docstring)
    last_idx: torch.Tensor | None = None   # the coordinates updated last round (diagnostics only)
    ranked: torch.Tensor | None = None     # [d] the exact vector the sketch stands for (diagnostics only)


def _recall(found: torch.Tensor, true_top: torch.Tensor) -> float:
    """|found ∩ true_top| / |true_top| (index sets)."""
    return float(torch.isin(found, true_top).sum()) / max(int(true_top.numel()), 1)


def _sparse(k: int) -> int:
    """k float32 values and k uint32 indices."""
    return k * (VALUE_BYTES + INDEX_BYTES)


@dataclass(frozen=True)
class SketchedSgd:
    name: str
    sketch: CountSketch
    k: int
    P: int
    rho: float
    lr: Any
    n: int
    summable: bool = True        # sketches add up in transit

    def compression_rate(self, d: int) -> float:
        """2 d / (|S| + P k + k): values exchanged per worker and round, as the
        sketching papers count them (indices free)."""
        return 2 * d / (self.sketch.rows * self.sketch.cols + self.P * self.k + self.k)

    def init(self, theta: torch.Tensor) -> SketchState:
        z = torch.zeros(self.n, theta.numel(), device=theta.device)
        return SketchState(z, z.clone())

    def worker_encode(self, s: SketchState, grads: torch.Tensor, round: int, streams: WorkerStreams,
                      active: torch.Tensor | None = None, aux_grad=None) -> tuple[Upload, SketchState]:
        n = grads.shape[0]
        act = torch.ones(n, dtype=torch.bool, device=grads.device) if active is None else active.to(grads.device)
        u = torch.where(act.view(-1, 1), self.rho * s.u + grads, s.u)
        v = torch.where(act.view(-1, 1), s.v + self.lr(round) * u, s.v)
        # What each worker sends is S(v_i); the server only needs their sum, so the
        # tables are not materialised per worker here (linearity, tested).
        payload = Payload({}, torch.full((n,), self.sketch.nbytes, dtype=torch.int64))
        return Upload(payload, act.cpu()), replace(s, u=u, v=v)

    def second_round(self, s: SketchState, arrived: torch.Tensor, round: int):
        """Sum the arrived sketches, pick P k candidates; None when P = 0.
        Returns (request bytes per worker, reply bytes per worker, state)."""
        w = arrived.to(s.v.device).to(s.v.dtype)
        total = w @ s.v                                                # [d] the exact sum of the v_i
        table = self.sketch.sketch(total)                              # = sum_i S(v_i), one sketch
        k = min(self.k, total.numel())
        true_top = torch.topk(total.abs(), k, sorted=False).indices    # diagnostics only
        if self.P == 0:
            return None, replace(s, table=table, true_top=true_top, ranked=total)
        m = min(self.P * self.k, s.v.shape[1])
        cand, est = self.sketch.heavy_hitters(table, m)
        own = cand[torch.topk(est.abs(), k, sorted=False).indices]      # the sketch's own top-k
        return (INDEX_BYTES * m, VALUE_BYTES * m), replace(s, table=table, candidates=cand, true_top=true_top,
                                                           ranked=total,
                                                           diag={"sketch_recall": _recall(own, true_top)})

    def server_update(self, s: SketchState, theta: torch.Tensor, upload: Upload, arrived: torch.Tensor,
                      round: int) -> tuple[torch.Tensor, Downlink, SketchState]:
        w = arrived.to(theta.device).to(theta.dtype)
        count = w.sum().clamp(min=1.0)
        if s.candidates is not None:                                   # exact values at the candidates
            exact = w @ s.v[:, s.candidates]                           # [P k]
            top = torch.topk(exact.abs(), self.k, sorted=False).indices
            idx, vals = s.candidates[top], exact[top]
        else:
            idx, vals = self.sketch.heavy_hitters(s.table, self.k)
        delta = torch.zeros_like(theta)
        delta[idx] = -vals / count
        u, v = s.u.clone(), s.v.clone()
        u[:, idx] = 0.0
        v[:, idx] = 0.0
        diag = self._diag(s, idx)
        return theta + delta, Downlink(_sparse(self.k), "update"), \
            replace(s, u=u, v=v, table=None, candidates=None, true_top=None, diag=diag, last_idx=idx, ranked=None)

    @staticmethod
    def _diag(s, idx: torch.Tensor) -> dict:
        if s.true_top is None:
            return {}
        upd = _recall(idx, s.true_top)
        out = {"sketch_recall": (s.diag or {}).get("sketch_recall", upd), "update_recall": upd}
        best = float(s.ranked[s.true_top].square().sum())
        out["update_mass"] = float(s.ranked[idx].square().sum()) / best if best > 0 else 1.0
        if s.last_idx is not None:
            out["repeat_share"] = _recall(idx, s.last_idx)
        return out

    def diagnostics(self, s) -> dict:
        """This round's recall of the true top-k (module docstring)."""
        return s.diag or {}


@dataclass(frozen=True)
class FetchSgd:
    name: str
    sketch: CountSketch
    k: int
    rho: float
    lr: Any
    n: int
    summable: bool = True

    def init(self, theta: torch.Tensor) -> SketchState:
        z = torch.zeros(0)
        t = torch.zeros(self.sketch.rows, self.sketch.cols, device=theta.device)
        return SketchState(z, z, s_u=t, s_e=t.clone())

    def worker_encode(self, s: SketchState, grads: torch.Tensor, round: int, streams: WorkerStreams,
                      active: torch.Tensor | None = None, aux_grad=None) -> tuple[Upload, SketchState]:
        n = grads.shape[0]
        payload = Payload({}, torch.full((n,), self.sketch.nbytes, dtype=torch.int64))
        sends = torch.ones(n, dtype=torch.bool) if active is None else active.cpu()
        return Upload(payload, sends), replace(s, grads=grads)

    def server_update(self, s: SketchState, theta: torch.Tensor, upload: Upload, arrived: torch.Tensor,
                      round: int) -> tuple[torch.Tensor, Downlink, SketchState]:
        w = arrived.to(theta.device).to(theta.dtype)
        g_table = self.sketch.sketch((w @ s.grads) / w.sum().clamp(min=1.0))   # = mean_i S(g_i)
        s_u = self.rho * s.s_u + g_table
        s_e = s.s_e + self.lr(round) * s_u
        idx, vals = self.sketch.heavy_hitters(s_e, self.k)
        delta = torch.zeros_like(theta)
        delta[idx] = -vals
        nz = self.sketch.sketch(delta) != 0                              # buckets touched by Delta
        s_u = torch.where(nz, torch.zeros_like(s_u), s_u)
        s_e = torch.where(nz, torch.zeros_like(s_e), s_e)
        return theta + delta, Downlink(_sparse(self.k), "update"), replace(s, s_u=s_u, s_e=s_e, grads=None)


@dataclass(frozen=True)
class AmsState:
    m: torch.Tensor                 # [n, d] worker momenta
    e: torch.Tensor                 # [n, d] worker errors
    v: torch.Tensor                 # PA: [n, d] worker second moments; GA: [d] server's
    v_hat: torch.Tensor             # PA: [n, d]; GA: [d]
    p: torch.Tensor | None = None   # [n, d] this round's vectors to sketch
    index: torch.Tensor | None = None      # GA: I_{t-1}, the coordinates updated last round
    h: torch.Tensor | None = None          # GA: [n, |I_{t-1}|] gradient values at I_{t-1}
    candidates: torch.Tensor | None = None
    true_top: torch.Tensor | None = None   # [k] the exact top-k this round (diagnostics only)
    diag: dict | None = None               # this round's diagnostics (module docstring)
    last_idx: torch.Tensor | None = None   # the coordinates updated last round (diagnostics only)
    ranked: torch.Tensor | None = None     # [d] the exact vector the sketch stands for (diagnostics only)


@dataclass(frozen=True)
class SketchedAmsGrad:
    """SketchedAMSGrad (sketched-amsgrad.txt).

    ``pa`` (Algorithm 1, parameter averaging): local AMSGrad on every worker
    (v_0 = v_hat_0 = eps); p_i = m_i / sqrt(v_hat_i) + (alpha_{t-1}/alpha_t) e_i
    is sketched; the server averages the sketches, unsketches P k candidates,
    a second round fetches the workers' exact p_i there, Delta = top-k of their
    mean is broadcast and x <- x - alpha_t Delta; e_i = p_i - Delta_i (p_i with
    the k chosen coordinates removed).  Per round and worker: |S| + P k + k
    entries, compression 2d / (|S| + P k + k).

    ``ga`` (Algorithms 2 and 3, gradient averaging): momentum on the workers,
    v on the server from h_t = g_t at I_{t-1} (k more values up per worker):
    v_t = beta2 v_{t-1} + (1 - beta2) h_t^2 decays everywhere and grows at I_{t-1};
    p_i = m_i + (alpha_{t-1}/alpha_t) e_i is sketched; candidates come from the
    scaled unsketch of Algorithm 3 (each row's bucket value divided by
    sqrt(v_hat_i)); the exact mean of p at the candidates, scaled by
    1/sqrt(v_hat), gives the top-k I_t; x <- x - alpha_t (p_bar / sqrt(v_hat))
    on I_t; e_i = p_i - p_i on I_t.  Our reading: the error is kept in the
    unscaled space of p (the printed e_t = m + ratio e - Delta_t^(i) mixes the
    two otherwise).  Compression 2d / (|S| + P k + 2k).
    """

    name: str
    variant: str           # "pa" | "ga"
    sketch: CountSketch
    k: int
    P: int
    lr: Any
    n: int
    beta1: float = 0.9
    beta2: float = 0.999
    eps: float = 1e-8
    summable: bool = True

    @property
    def entries_per_worker(self) -> int:
        """Values a worker exchanges per round, as the paper counts them."""
        extra = self.k if self.variant == "ga" else 0
        return self.sketch.rows * self.sketch.cols + self.P * self.k + self.k + extra

    def compression_rate(self, d: int) -> float:
        """2 d / (|S| + P k + k) (PA) or 2 d / (|S| + P k + 2 k) (GA)."""
        return 2 * d / self.entries_per_worker

    def init(self, theta: torch.Tensor) -> AmsState:
        n, d = self.n, theta.numel()
        z = torch.zeros(n, d, device=theta.device)
        if self.variant == "pa":
            v = torch.full((n, d), self.eps, device=theta.device)
            return AmsState(z, z.clone(), v, v.clone())
        v = torch.full((d,), self.eps, device=theta.device)
        return AmsState(z, z.clone(), v, v.clone(), index=torch.zeros(0, dtype=torch.long, device=theta.device))

    def worker_encode(self, s: AmsState, grads: torch.Tensor, round: int, streams: WorkerStreams,
                      active: torch.Tensor | None = None, aux_grad=None) -> tuple[Upload, AmsState]:
        n = grads.shape[0]
        ratio = self.lr(round - 1) / self.lr(round) if round > 0 else 1.0
        m = self.beta1 * s.m + (1 - self.beta1) * grads
        new = replace(s, m=m)
        nbytes = self.sketch.nbytes
        if self.variant == "pa":
            v = self.beta2 * s.v + (1 - self.beta2) * grads * grads
            v_hat = torch.maximum(s.v_hat, v)
            p = m / v_hat.sqrt() + ratio * s.e
            new = replace(new, v=v, v_hat=v_hat, p=p)
        else:
            p = m + ratio * s.e
            h = grads[:, s.index]                               # g_t at I_{t-1}: k values (indices known)
            nbytes += VALUE_BYTES * int(s.index.numel())
            new = replace(new, p=p, h=h)
        payload = Payload({}, torch.full((n,), nbytes, dtype=torch.int64))
        sends = torch.ones(n, dtype=torch.bool) if active is None else active.cpu()
        return Upload(payload, sends), new

    def diagnostics(self, s: AmsState) -> dict:
        """This round's recall of the true top-k (module docstring)."""
        return s.diag or {}

    def _scale(self, s: AmsState) -> torch.Tensor | None:
        return s.v_hat.sqrt() if self.variant == "ga" else None

    def second_round(self, s: AmsState, arrived: torch.Tensor, round: int):
        w = arrived.to(s.p.device).to(s.p.dtype)
        count = w.sum().clamp(min=1.0)
        if self.variant == "ga":
            # the server's v, Algorithm 2 lines "h_t = 1/n sum h_t^(i); v_t = beta2 v_{t-1} +
            # (1 - beta2) h_t^2; v_hat_t = max(v_hat_{t-1}, v_t)": h_t is g_t at I_{t-1} and 0
            # elsewhere, so v decays by beta2 at EVERY coordinate each round (the first
            # round too, with I_0 empty) and gains (1 - beta2) h^2 at I_{t-1} only
            v = self.beta2 * s.v
            if s.index.numel():
                h = (w @ s.h) / count                          # the mean over the arrived workers
                v[s.index] += (1 - self.beta2) * h * h
            s = replace(s, v=v, v_hat=torch.maximum(s.v_hat, v))
        mean = (w @ s.p) / count                               # [d] the exact mean of the p_i
        table = self.sketch.sketch(mean)                       # the mean of the workers' sketches
        m = min(self.P * self.k, s.p.shape[1])
        cand, est = self.sketch.heavy_hitters(table, m, scale=self._scale(s))
        # diagnostics only: the exact ranking the sketch approximates, and the sketch's own top-k
        k = min(self.k, mean.numel())
        ranked = mean / s.v_hat.sqrt() if self.variant == "ga" else mean
        true_top = torch.topk(ranked.abs(), k, sorted=False).indices
        own = cand[torch.topk(est.abs(), k, sorted=False).indices]
        return (INDEX_BYTES * m, VALUE_BYTES * m), replace(s, candidates=cand, true_top=true_top, ranked=ranked,
                                                           diag={"sketch_recall": _recall(own, true_top)})

    def server_update(self, s: AmsState, theta: torch.Tensor, upload: Upload, arrived: torch.Tensor,
                      round: int) -> tuple[torch.Tensor, Downlink, AmsState]:
        w = arrived.to(theta.device).to(theta.dtype)
        exact = (w @ s.p[:, s.candidates]) / w.sum().clamp(min=1.0)   # mean of the exact values
        if self.variant == "ga":
            exact = exact / s.v_hat[s.candidates].sqrt()
        top = torch.topk(exact.abs(), self.k, sorted=False).indices
        idx = s.candidates[top]
        delta = torch.zeros_like(theta)
        delta[idx] = -self.lr(round) * exact[top]
        e = s.p.clone()
        e[:, idx] = 0.0                                        # e_i = p_i - Delta_i
        new = replace(s, e=e, p=None, h=None, candidates=None, true_top=None, diag=SketchedSgd._diag(s, idx),
                      last_idx=idx, ranked=None)
        if self.variant == "ga":
            new = replace(new, index=idx.sort().values)
        return theta + delta, Downlink(_sparse(self.k), "update"), new
