"""Deep Gradient Compression (Lin, Han, Mao, Wang & Dally, ICLR 2018,
arXiv:1712.01887; reference code github.com/synxlin/deep-gradient-compression).

Each worker i keeps a velocity u_i and an accumulation v_i ([n, d] tensors,
batched over workers) and, in round t with learning rate lr_t:

    g_i <- g_i min(1, (c / sqrt(N)) / ||g_i||_2)        local gradient clipping (Sec. 3.2), if clip_norm c
    u_i <- m u_i + g_i                                  momentum correction, Eq. (6)-(7)
    v_i <- v_i + u_i
        (nesterov: u_i <- m (u_i + g_i);  v_i <- v_i + u_i + g_i, as the reference code)
    S_i = top-k_t(|v_i|)  (per layer, or of the whole vector)   Algorithm 1, "thr <- s% of |G|"
    sends v_i[S_i]                                      ceil(k_t (32 + ib) / 8) bytes
    v_i[S_i] <- 0;  u_i[S_i] <- 0                       momentum factor masking (Sec. 3.3;
                                                        u only with momentum_masking: true)

    server:  G = mean over arrived workers of the decoded sparse v_i[S_i]
             theta <- theta - lr_t G                    (plain SGD step: the momentum lives on
                                                        the workers, Eq. (7))
             broadcasts G's nonzero pattern: min(4 d, ceil(|U| (32 + ib) / 8)) bytes,
             U = union of the arrived workers' S_i.

Readings of the paper (see also the report in docs):

* Aggregation.  Algorithm 1 (and Algorithm 4 in the appendix) writes
  G_t = sum_k encode(G~_t^k) with each node's gradient already scaled by
  1 / (N b); commsim's per-worker gradients are local means (1 / b), so the
  paper's sum is the mean over the N workers, which is also what the reference
  code does (``grad.mul_(1. / world_size)``).  With missing workers the mean is
  over the workers that arrived (commsim's documented meaning, ps.py).
* Missing workers.  A worker cannot know its message was lost: it zeroes u and
  v at the coordinates it sent as if the message had been delivered, the same
  rule as error feedback's memory (docs/scenarios.md, "Failures and missing
  workers").  Those accumulated values are lost.  A worker not taking part
  (``active`` False: crashed) keeps u and v unchanged and sends nothing.
* Clipping.  Sec. 3.2: "we perform the gradient clipping locally before adding
  the current gradient G_t to previous accumulation ... we scale the threshold
  by N^{-1/2}".  We clip each worker's whole gradient vector (Pascanu et al.:
  the norm over all layers) at clip_norm / sqrt(N), N = the configured number
  of workers, applied to commsim's local-mean gradient.  (The reference code's
  DGCSGDMemory clips per tensor and its configs leave clipping off.)
* Top-k.  The paper estimates the threshold from a 0.1%-1% sample and
  re-selects hierarchically (Sec. 5); commsim takes the exact top-k per worker
  (k largest |v_ij|, ties broken by torch.topk), so each worker sends exactly
  k_t values: with ``scope: layer`` (Algorithm 1 loops over layers) k_b =
  max(1, floor(density_t d_b)) in each layer b, with ``scope: vector``
  k = max(1, floor(density_t d)) (commsim's top-k convention; the reference code
  uses ceil(density d_b)).
* Sparsity warm-up (Sec. 3.3, "Warm-up Training"): the first ``warmup_rounds``
  rounds are split into ``warmup_stages`` equal stages (stage j = floor(t S / W)
  for t < W) and stage j uses density_j = density ** ((j + 1) / (S + 1)); from
  round W on, density.  This is the reference code's schedule
  (``warmup_coeff = ratio ** (1 / (warmup_epochs + 1))``, ratio_e =
  coeff ** (e + 1)) with epochs read as stages; with the paper's density 0.001
  and S = 4 it gives 25.1%, 6.31%, 1.58%, 0.398% then 0.1% sent, i.e. sparsity
  74.9%, 93.7%, 98.4%, 99.60%, 99.9% -- the paper's 75%, 93.75%, 98.4375%,
  99.6%, 99.9% (which are 1 - 4^-j, and 4^-5 = 0.098% ~ 0.1%) to within 0.4%.
  The paper's learning-rate warm-up is commsim's ``lr_schedule: warmup``.
* The learning rate multiplies what is sent at the step (Eq. (7):
  w_{t+1} = w_t - eta sparse(v_t)), so v is in gradient units and a schedule's
  lr_t applies to the whole accumulated value when it is sent.

With density 1 and no clipping every coordinate is sent and v is zeroed every
round: with momentum masking u is zeroed too and DGC is plain SGD on the mean
gradient; without it the sent value is u_i and the mean of the u_i is the
heavy-ball momentum of the mean gradient: DGC is momentum SGD (PyTorch's
convention, Nesterov included) -- tested in tests/test_dgc.py.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any, Literal

import torch
from pydantic import Field

from sim.learn.rng import WorkerStreams

from .base import VALUE_BYTES, AlgorithmConfig, Context, Downlink, Upload
from .compressors import IndexBits, LayerTopK, TopK, _index_bits_field, layer_bounds, sparse_bytes
from .ps import keep_rows, mean_over_arrived


@dataclass(frozen=True)
class DgcState:
    u: torch.Tensor                       # [n, d] velocities (momentum-corrected), Eq. (6)
    v: torch.Tensor                       # [n, d] accumulations, Eq. (7)
    decoded: torch.Tensor | None = None   # [n, d] this round's sparse messages (server side)
    sent: torch.Tensor | None = None      # [n, d] bool: the coordinates each worker sent this round


def warmup_density(t: int, density: float, warmup_rounds: int, warmup_stages: int) -> float:
    """Density of round t: density ** ((j + 1) / (S + 1)) in warm-up stage
    j = floor(t S / W) for t < W, then ``density`` (Sec. 3.3, exponential
    sparsity warm-up; the reference code's warmup_coeff schedule)."""
    if t >= warmup_rounds:
        return density
    j = (t * warmup_stages) // warmup_rounds
    return density ** ((j + 1) / (warmup_stages + 1))


@dataclass(frozen=True)
class Dgc:
    name: str
    n: int
    d: int
    bounds: tuple[tuple[int, int], ...]   # top-k scopes: the layers, or ((0, d),)
    lr: Any                               # lr(t)
    momentum: float
    nesterov: bool
    density: float
    warmup_rounds: int
    warmup_stages: int
    clip_norm: float | None
    momentum_masking: bool
    index_bits: IndexBits
    per_layer: bool
    summable: bool = False                # different indices per worker: ring all-gather

    def density_at(self, t: int) -> float:
        return warmup_density(t, self.density, self.warmup_rounds, self.warmup_stages)

    def k_at(self, t: int) -> tuple[int, ...]:
        """Entries each worker sends in round t, per scope: min(d_b, max(1, floor(density_t d_b)))."""
        rho = self.density_at(t)
        return tuple(min(b - a, max(1, int(rho * (b - a)))) for a, b in self.bounds)

    def compressor(self, t: int):
        ks = self.k_at(t)
        if self.per_layer:
            return LayerTopK(self.d, tuple((a, b, k) for (a, b), k in zip(self.bounds, ks)), self.index_bits)
        return TopK(self.d, ks[0], index_bits=self.index_bits)

    def clip(self, g: torch.Tensor) -> torch.Tensor:
        """Local gradient clipping (Sec. 3.2): each worker rescales its gradient to
        L2 norm at most clip_norm / sqrt(N)."""
        if self.clip_norm is None:
            return g
        thr = self.clip_norm / math.sqrt(self.n)
        norm = torch.linalg.vector_norm(g, dim=1, keepdim=True)                 # [n, 1]
        scale = torch.where(norm > thr, thr / norm.clamp(min=torch.finfo(g.dtype).tiny), torch.ones_like(norm))
        return g * scale

    def init(self, theta: torch.Tensor) -> DgcState:
        z = torch.zeros(self.n, theta.numel(), device=theta.device, dtype=theta.dtype)
        return DgcState(z, z.clone())

    def worker_encode(self, s: DgcState, grads: torch.Tensor, round: int, streams: WorkerStreams,
                      active: torch.Tensor | None = None, aux_grad=None) -> tuple[Upload, DgcState]:
        g = self.clip(grads)
        if self.nesterov:                                  # reference code, DGCSGDMemory.compensate
            u = self.momentum * (s.u + g)
            v = s.v + u + g
        else:                                              # Eq. (6)-(7): u = m u + g; v = v + u
            u = self.momentum * s.u + g
            v = s.v + u
        payload = self.compressor(round).compress(v)       # exact top-k of |v| (Algorithm 1)
        idx = payload.tensors["indices"]                   # [n, k]
        sent = torch.zeros_like(v, dtype=torch.bool).scatter_(1, idx, True)
        decoded = torch.where(sent, v, torch.zeros_like(v))
        # Momentum factor masking (Sec. 3.3): v <- v o ~mask; u <- u o ~mask, done by the
        # worker when it sends (whether or not the message arrives).
        v = torch.where(sent, torch.zeros_like(v), v)
        if self.momentum_masking:
            u = torch.where(sent, torch.zeros_like(u), u)
        u, v = keep_rows(active, u, s.u), keep_rows(active, v, s.v)
        sends = torch.ones(grads.shape[0], dtype=torch.bool) if active is None else active.cpu()
        return Upload(payload, carries_gradient=sends, sends=sends), replace(s, u=u, v=v, decoded=decoded, sent=sent)

    def server_update(self, s: DgcState, theta: torch.Tensor, upload: Upload, arrived: torch.Tensor,
                      round: int) -> tuple[torch.Tensor, Downlink, DgcState]:
        arr = arrived.to(theta.device)
        delta = -self.lr(round) * mean_over_arrived(s.decoded, arr)
        union = int((s.sent & arr.view(-1, 1)).any(0).sum())
        nbytes = min(VALUE_BYTES * self.d, int(sparse_bytes(union, self.d, self.index_bits)))
        return theta + delta, Downlink(nbytes, "update", delta), replace(s, decoded=None, sent=None)


class DgcConfig(AlgorithmConfig):
    """Deep Gradient Compression (Lin et al., ICLR 2018): momentum correction,
    local gradient clipping, momentum factor masking and exponential sparsity
    warm-up; each worker sends the exact top-k of its accumulated velocity
    (algorithms/dgc.py)."""

    kind: Literal["dgc"] = "dgc"
    momentum: float = Field(0.9, ge=0, lt=1, description="momentum m of the worker velocities u = m u + g")
    nesterov: bool = Field(False, description="Nesterov form of the momentum correction (reference code)")
    density: float = Field(0.001, gt=0, le=1, description="final fraction of coordinates each worker sends "
                                                          "per round, in (0, 1] (the paper's 99.9% sparsity: 0.001)")
    warmup_rounds: int = Field(0, ge=0, description="rounds of exponential sparsity warm-up (0: off)")
    warmup_stages: int = Field(4, ge=1, description="equal stages of the warm-up; stage j sends density ** "
                                                    "((j + 1) / (stages + 1)) (4: the paper's 75% ... 99.6%)")
    clip_norm: float | None = Field(None, gt=0, description="L2 gradient-clipping threshold; each worker clips "
                                                            "its gradient at clip_norm / sqrt(workers) (None: off)")
    momentum_masking: bool = Field(True, description="zero the velocity u at the sent coordinates too")
    scope: Literal["layer", "vector"] = Field(
        "layer", description="layer: top max(1, floor(density d_b)) of each layer (Algorithm 1); vector: of all d")
    index_bits: IndexBits = _index_bits_field()

    def build(self, ctx: Context) -> Dgc:
        bounds = layer_bounds(ctx) if self.scope == "layer" else ((0, ctx.d),)
        return Dgc(self.label, ctx.n, ctx.d, tuple(bounds), self.lr_at, self.momentum, self.nesterov,
                   self.density, self.warmup_rounds, self.warmup_stages, self.clip_norm,
                   self.momentum_masking, self.index_bits, self.scope == "layer")
