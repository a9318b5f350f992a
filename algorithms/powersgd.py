"""PowerSGD (Vogels, Karimireddy & Jaggi, NeurIPS 2019, arXiv:1905.13727): rank-r
gradient compression by one step of warm-started power (subspace) iteration,
with error feedback, on a parameter server.

Per matrix-shaped layer b (a block of 2 or more dimensions, viewed as
[n_b, m_b] = [shape[0], prod(shape[1:])] as the reference code's
``view_as_matrix`` does; rank r_b = min(r, n_b, m_b)), every round t:

    worker i:  M_i = G_i + e_i                     (error feedback; e_i = 0 without it)
               P_i = M_i Q                         (Q: last round's averaged Q, the warm start;
                                                    round 0: a seeded standard normal, the same
                                                    on every worker)                  -> up
    server:    P_hat = orthogonalise(mean_A P_i)   (Gram-Schmidt, column by column)   -> down
    worker i:  Q_i = M_i^T P_hat                                                     -> up
    server:    Q_bar = mean_A Q_i                                                    -> down
    all:       Delta' = P_hat Q_bar^T              (= P_hat P_hat^T mean_A M_i)
               e_i = M_i - P_hat Q_bar^T           (i in A)

(A: the workers whose first upload arrived.)  1-D blocks (biases) are sent
dense and averaged exactly; their memory is 0 after a round in which the
worker's message arrived.  Paper Algorithm 1 (COMPRESS+AGGREGATE /
DECOMPRESS) and Algorithm 2 (EF-SGD with momentum: e_w <- Delta_w -
DECOMPRESS(C(Delta_w)); m <- lambda m + Delta'; x <- x - gamma (Delta' + m)).
Our reading of the memory, e_i = M_i - P_hat Q_bar^T with the AVERAGED Q
(not the worker's own Q_i): the compressed representation of Algorithm 1 is
(P_hat, Q) after the all-reduce of Q, and both the authors' code
(epfml/powersgd, powersgd/powersgd.py, BasicPowerSGD.aggregate: the error
buffer is ``grad_batch - P Q^T`` after ``allreduce_average`` of Q; biases go
through ``AllReduce``, which zeroes their error) and torch's DDP hook
(torch/distributed/algorithms/ddp_comm_hooks/powerSGD_hook.py:
``error_dict = input_tensor_cp - input_tensor`` after the decompression of the
averaged Q) do that.  Momentum: ``momentum`` lambda (default 0, plain SGD on
Delta'), m <- lambda m + Delta', theta <- theta - lr m, or with ``nesterov``
theta <- theta - lr (Delta' + lambda m) (torch's Nesterov form; the paper's
experiments use Nesterov-type momentum 0.9).  The momentum is identical on
every worker (it is a function of the broadcast), so it is kept once.

Missing workers: the means are over A only.  A worker that took part but whose
upload did not arrive gets no P_hat request, sends no Q and keeps
e_i = M_i (nothing of this round's message got through; its gradient is not
lost but carried to the next round).  A worker that did not take part
(``active`` False) keeps its e_i unchanged.  With no arrivals Q is kept.

Wire sizes (float32, 4 bytes; D = the sum of the 1-D block sizes):
    upload         4 (sum_b n_b r_b + D)        P_i of every matrix layer + the dense vectors
    request (down) 4 sum_b n_b r_b              P_hat  (second round)
    reply (up)     4 sum_b m_b r_b              Q_i    (second round)
    broadcast      4 (sum_b m_b r_b + D)        Q_bar + the averaged dense vectors
                                                (the workers hold P_hat already)

Ring topology: the paper's two all-reduce phases (Algorithm 1, "ALL-REDUCE"
of P, then of Q): the round's upload is the all-reduce of P and the dense
vectors, the second round (sim/net/protocols.py Ring.exchange) the all-reduce of
Q; every worker orthogonalises the reduced P itself, so the request (P_hat)
is not sent and nothing is broadcast.  The math is the same as on a server.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any, Literal

import torch
from pydantic import Field

from sim.learn.models import Block
from sim.learn.rng import WorkerStreams

from .base import VALUE_BYTES, AlgorithmConfig, Context, Downlink, Payload, Upload


@dataclass(frozen=True)
class Layer:
    start: int
    stop: int
    rows: int   # n_b
    cols: int   # m_b
    rank: int   # r_b = min(r, n_b, m_b)


def split_blocks(blocks: tuple[Block, ...], d: int, rank: int) -> tuple[tuple[Layer, ...], torch.Tensor]:
    """Matrix layers (2 or more dimensions) and the indices of the dense rest.
    No blocks at all: theta is one dense vector."""
    layers, dense = [], []
    for b in blocks:
        if len(b.shape) >= 2:
            rows = b.shape[0]
            cols = math.prod(b.shape[1:])
            layers.append(Layer(b.start, b.stop, rows, cols, min(rank, rows, cols)))
        else:
            dense.append(torch.arange(b.start, b.stop))
    covered = sum(b.stop - b.start for b in blocks)
    if covered < d:   # anything the blocks do not describe is sent dense
        mask = torch.ones(d, dtype=torch.bool)
        for b in blocks:
            mask[b.start:b.stop] = False
        dense.append(torch.nonzero(mask).view(-1))
    idx = torch.cat(dense) if dense else torch.zeros(0, dtype=torch.long)
    return tuple(layers), idx.sort().values


def orthogonalise(p: torch.Tensor, rel_tol: float = 1e-5) -> torch.Tensor:
    """Gram-Schmidt on the columns of p [n_b, r] (the paper's choice, Sec. 3; the
    reference code uses it for r <= 2).  Each column is projected off the
    earlier ones twice ("twice is enough", for orthogonality in float32); a
    column whose remainder is below rel_tol times the largest input column
    norm is set to 0 (P of numerical rank < r: in exact arithmetic that
    remainder is 0, and normalising float32 noise would add a spurious
    direction to the update)."""
    p = p.clone()
    floor = rel_tol * float(p.norm(dim=0).max()) if p.numel() else 0.0
    for j in range(p.shape[1]):
        col = p[:, j]
        for _ in range(2):
            if j:
                prev = p[:, :j]
                col = col - prev @ (prev.T @ col)
        norm = float(col.norm())
        p[:, j] = col / norm if norm > floor and norm > 0 else torch.zeros_like(col)
    return p


@dataclass(frozen=True)
class PowerSgdState:
    q: tuple[torch.Tensor, ...]            # per matrix layer [m_b, r_b]: the warm start (last Q_bar)
    e: torch.Tensor | None                 # [n, d] worker memories, or None (error_feedback off)
    mom: torch.Tensor | None               # [d] momentum (the same on every worker), or None
    M: torch.Tensor | None = None          # [n, d] this round's M_i = G_i + e_i
    p: tuple[torch.Tensor, ...] | None = None       # per layer [n, n_b, r_b]: the workers' P_i
    p_hat: tuple[torch.Tensor, ...] | None = None   # per layer [n_b, r_b]


@dataclass(frozen=True)
class PowerSgd:
    name: str
    lr: Any
    n: int
    d: int
    layers: tuple[Layer, ...]
    dense: torch.Tensor          # [D] indices sent dense
    rank: int
    momentum: float
    nesterov: bool
    seed: int
    error_feedback: bool
    summable: bool = True        # P and Q are summed by an all-reduce (ring: two phases)

    # --- wire sizes (bytes per worker), see the module docstring ------------------
    @property
    def p_values(self) -> int:
        return sum(L.rows * L.rank for L in self.layers)

    @property
    def q_values(self) -> int:
        return sum(L.cols * L.rank for L in self.layers)

    @property
    def upload_bytes(self) -> int:
        return VALUE_BYTES * (self.p_values + int(self.dense.numel()))      # 4 (sum n_b r_b + D)

    @property
    def request_bytes(self) -> int:
        return VALUE_BYTES * self.p_values                                 # 4 sum n_b r_b

    @property
    def reply_bytes(self) -> int:
        return VALUE_BYTES * self.q_values                                 # 4 sum m_b r_b

    @property
    def broadcast_bytes(self) -> int:
        return VALUE_BYTES * (self.q_values + int(self.dense.numel()))     # 4 (sum m_b r_b + D)

    def compression_rate(self, d: int) -> float:
        """d / (sum_b (n_b + m_b) r_b + D): values a worker uploads per round
        (P_i, Q_i and the dense vectors) against dense SGD's d."""
        return d / (self.p_values + self.q_values + int(self.dense.numel()))

    # --- the round ----------------------------------------------------------------
    def init(self, theta: torch.Tensor) -> PowerSgdState:
        dev = theta.device
        g = torch.Generator(device="cpu").manual_seed(self.seed)   # own stream: not the global RNG
        q = tuple(torch.randn(L.cols, L.rank, generator=g).to(dev) for L in self.layers)
        e = torch.zeros(self.n, theta.numel(), device=dev) if self.error_feedback else None
        mom = torch.zeros_like(theta) if self.momentum > 0 else None
        return PowerSgdState(q, e, mom)

    def _mat(self, x: torch.Tensor, L: Layer) -> torch.Tensor:
        return x[:, L.start:L.stop].reshape(x.shape[0], L.rows, L.cols)     # [n, n_b, m_b]

    def worker_encode(self, s: PowerSgdState, grads: torch.Tensor, round: int, streams: WorkerStreams,
                      active: torch.Tensor | None = None, aux_grad=None) -> tuple[Upload, PowerSgdState]:
        n = grads.shape[0]
        act = torch.ones(n, dtype=torch.bool) if active is None else active.cpu()
        M = grads + s.e if s.e is not None else grads
        e = s.e
        if e is not None:       # nothing got through yet: e_i = M_i until the round completes
            e = torch.where(act.to(M.device).view(-1, 1), M, e)
        p = tuple(torch.einsum("inm,mr->inr", self._mat(M, L), q) for L, q in zip(self.layers, s.q))
        payload = Payload({}, torch.full((n,), self.upload_bytes, dtype=torch.int64))
        return Upload(payload, act), replace(s, e=e, M=M, p=p, p_hat=None)

    def second_round(self, s: PowerSgdState, arrived: torch.Tensor, round: int):
        """P_hat = orthogonalise(mean over arrived P_i) per layer; the request is
        P_hat (4 sum n_b r_b bytes down), the reply Q_i (4 sum m_b r_b up).
        None when the model has no matrix layer (dense SGD, one round)."""
        if not self.layers:
            return None, replace(s, p_hat=())
        w = arrived.to(s.M.device).to(s.M.dtype)
        count = w.sum().clamp(min=1.0)
        p_hat = tuple(orthogonalise(torch.einsum("i,inr->nr", w, p) / count) for p in s.p)
        return (self.request_bytes, self.reply_bytes), replace(s, p_hat=p_hat)

    def server_update(self, s: PowerSgdState, theta: torch.Tensor, upload: Upload, arrived: torch.Tensor,
                      round: int) -> tuple[torch.Tensor, Downlink, PowerSgdState]:
        if s.p_hat is None:
            _, s = self.second_round(s, arrived, round)
        w = arrived.to(theta.device).to(theta.dtype)
        count = w.sum().clamp(min=1.0)
        upd = torch.zeros_like(theta)
        qs = []
        for L, ph, q_old in zip(self.layers, s.p_hat, s.q):
            q_i = torch.einsum("inm,nr->imr", self._mat(s.M, L), ph)         # the workers' replies
            q_bar = torch.einsum("i,imr->mr", w, q_i) / count
            upd[L.start:L.stop] = (ph @ q_bar.T).reshape(-1)                 # Delta' = P_hat Q_bar^T
            zero = q_bar.norm(dim=0) == 0                                    # no information: keep the warm start
            qs.append(torch.where(zero.view(1, -1), q_old, q_bar))
        if self.dense.numel():
            upd[self.dense] = (w @ s.M[:, self.dense]) / count
        e = s.e
        if e is not None:   # arrived: e_i = M_i - P_hat Q_bar^T on matrices, 0 on dense vectors
            sent = s.M - upd.view(1, -1)
            if self.dense.numel():
                sent[:, self.dense] = 0.0
            e = torch.where(arrived.to(theta.device).view(-1, 1), sent, e)
        mom, step = s.mom, upd
        if mom is not None:
            mom = self.momentum * mom + upd
            step = upd + self.momentum * mom if self.nesterov else mom
        return theta - self.lr(round) * step, Downlink(self.broadcast_bytes, "update"), \
            PowerSgdState(tuple(qs), e, mom)


class PowerSgdConfig(AlgorithmConfig):
    """PowerSGD (Vogels et al. 2019, arXiv:1905.13727): rank-r power-iteration
    compression of every matrix layer with warm start and error feedback; two
    rounds of messages (P up, P_hat down, Q up, Q_bar down) on a parameter
    server, two all-reduce phases (P, then Q) on a ring (algorithms/powersgd.py)."""

    kind: Literal["powersgd"] = "powersgd"
    rank: int = Field(2, ge=1, description="rank r of the approximation (per layer min(r, rows, cols))")
    momentum: float = Field(0.0, ge=0, lt=1, description="lambda: m <- lambda m + Delta' (0: plain SGD on "
                                                          "the decompressed update; the paper uses 0.9)")
    nesterov: bool = Field(False, description="step Delta' + lambda m instead of m")
    seed: int = Field(0, description="seed of the initial Q (a standard normal, the same on all workers)")
    error_feedback: bool = Field(True, description="keep e_i = M_i - P_hat Q_bar^T on each worker")

    def build(self, ctx: Context) -> PowerSgd:
        layers, dense = split_blocks(ctx.blocks, ctx.d, self.rank)
        return PowerSgd(self.label, self.lr_at, ctx.n, ctx.d, layers, dense.to(ctx.device), self.rank,
                        self.momentum, self.nesterov, self.seed, self.error_feedback)
