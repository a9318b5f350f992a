"""The synchronous parameter-server round, composed from parts (Optax style):

    worker:  x_i = local(g_i)                  (identity, local momentum, or a local Adam direction)
             sent_i = C_up(x_i [+ e_i])        (compressor, optional error feedback)
    server:  g_bar = mean over arrived workers of D(sent_i)
             delta = optimizer(g_bar)          (SGD, momentum, Adam, AMSGrad)
             [sent = C_down(-delta [+ e_s]); delta = -D(sent)]   (two-way compression)
             theta <- theta + delta;  broadcast the update

``sgd``, ``topk_ef_sgd``, ``comp_ams``, ``qadam``, ``efficient_adam``,
``dist_ef_sgd`` ... are this round with different parts (algorithms/__init__.py).
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import torch

from sim.learn.rng import WorkerStreams

from .base import INDEX_BYTES, VALUE_BYTES, Downlink, Upload
from .compressors import Compressor, ErrorFeedback


@dataclass(frozen=True)
class PSState:
    opt: Any                              # server optimizer state
    error: torch.Tensor | None            # [n, d] worker error-feedback memories, or None
    local: Any = None                     # worker-side optimizer state ([n, d] tensors), or None
    server_error: torch.Tensor | None = None   # [d] server error-feedback memory (two-way schemes)
    decoded: torch.Tensor | None = None   # [n, d] decoded uploads of this round (server side)
    previous: torch.Tensor | None = None  # [n, d] last round's decoded uploads (keep_late: late ones count next round)


def update_bytes(delta: torch.Tensor) -> int:
    """Wire size of a parameter update the server broadcasts: the cheaper of
    dense (4 d) and sparse (nnz (4 + 4): value and uint32 index) encodings,
    as a real server would choose."""
    d = delta.numel()
    nnz = int(torch.count_nonzero(delta))
    return min(VALUE_BYTES * d, nnz * (VALUE_BYTES + INDEX_BYTES))


# Workers per block of the sum over workers.  The sum is a fold over fixed
# blocks of REDUCE_ROWS rows (each block summed by torch.sum over dim 0, then
# the block sums added in worker order), so its floats do not depend on how
# the workers are processed: the chunked round of a memory budget
# (sim/learn/chunked.py) feeds the same blocks one chunk at a time and gets
# the same bits as one [n, d] call.  A BLAS gemv (w @ decoded) would not: its
# order over rows is the library's and changes with the shape.
REDUCE_ROWS = 8


def fold_rows(rows: torch.Tensor, w: torch.Tensor | None, acc: torch.Tensor | None,
              start: int = 0) -> torch.Tensor | None:
    """acc + sum_i w_i rows[i], rows [m, d] holding workers start .. start + m
    (start a multiple of REDUCE_ROWS), as the fixed-block fold above; w [m]
    0/1 weights or None (all 1); acc None: nothing summed yet.  Returns the new
    accumulator (None if m == 0)."""
    assert start % REDUCE_ROWS == 0, "a chunk must start on a block boundary"
    for a in range(0, rows.shape[0], REDUCE_ROWS):
        block = rows[a:a + REDUCE_ROWS]
        if w is not None:
            wb = w[a:a + REDUCE_ROWS]
            if not bool(wb.all()):
                block = torch.where(wb.view(-1, 1), block, torch.zeros((), dtype=block.dtype, device=block.device))
        part = block.sum(0)
        acc = part if acc is None else acc.add_(part)
    return acc


def mean_over_arrived(decoded: torch.Tensor, arrived: torch.Tensor) -> torch.Tensor:
    """Aggregation with missing workers (Flower style, documented meaning): a
    worker whose message did not arrive is left out and the mean is over the
    workers that arrived.  With none arrived the result is zero (no step).
    The sum is :func:`fold_rows` (a fixed order, the same in chunks)."""
    w = arrived.to(device=decoded.device, dtype=torch.bool)    # [n]
    count = float(w.sum().clamp(min=1))
    total = fold_rows(decoded, w, None)
    if total is None:
        return torch.zeros(decoded.shape[1:], dtype=decoded.dtype, device=decoded.device)
    return total / count                                        # [d]


def keep_rows(active: torch.Tensor | None, new: torch.Tensor, old: torch.Tensor) -> torch.Tensor:
    """Workers not taking part keep their state rows."""
    if active is None or old is None or bool(active.all()):
        return new
    return torch.where(active.to(new.device).view(-1, *([1] * (new.dim() - 1))), new, old)


# --- worker-side transforms ---------------------------------------------------
@dataclass(frozen=True)
class LocalMomentum:
    """Each worker: m_i = mu m_i + g_i; sends m_i (dist-EF-SGD's blockwise momentum)."""

    momentum: float

    def init(self, n: int, d: int, device) -> torch.Tensor:
        return torch.zeros(n, d, device=device)

    def step(self, g: torch.Tensor, m: torch.Tensor, t: int) -> tuple[torch.Tensor, torch.Tensor]:
        m = self.momentum * m + g
        return m, m


@dataclass(frozen=True)
class LocalAdamState:
    m: torch.Tensor   # [n, d]
    v: torch.Tensor   # [n, d]


@dataclass(frozen=True)
class LocalAdam:
    """Each worker keeps its own Adam moments and sends the direction
    m_i / (sqrt(v_i) + eps) (Quantized Adam, Chen et al. 2020; Efficient-Adam's
    workers).  No bias correction, as in those algorithms' pseudocode."""

    beta1: float
    beta2: float
    eps: float

    def init(self, n: int, d: int, device) -> LocalAdamState:
        z = torch.zeros(n, d, device=device)
        return LocalAdamState(z, z.clone())

    def step(self, g: torch.Tensor, s: LocalAdamState, t: int) -> tuple[torch.Tensor, LocalAdamState]:
        m = self.beta1 * s.m + (1 - self.beta1) * g
        v = self.beta2 * s.v + (1 - self.beta2) * g * g
        return m / (torch.sqrt(v) + self.eps), LocalAdamState(m, v)


@dataclass(frozen=True)
class ParameterServer:
    name: str
    compressor: Compressor
    optimizer: Any
    error_feedback: bool
    n: int
    local: Any = None                          # LocalMomentum | LocalAdam | None
    down_compressor: Compressor | None = None  # compress the broadcast (two-way schemes)
    down_error_feedback: bool = True
    lr: Any = None                             # lr(t), for EF rescaling (dist-EF-SGD)
    rescale_error: bool = False                # e <- (lr_{t-1} / lr_t) e before adding (Zheng et al. 2019)
    seed: int = 0
    keep_late: bool = False                    # late: apply (the engine sets it): keep last round's uploads

    @property
    def summable(self) -> bool:
        """Can the workers' messages be summed in transit (ring all-reduce)?"""
        return self.compressor.linear

    def init(self, theta: torch.Tensor) -> PSState:
        d, dev = theta.numel(), theta.device
        ef = ErrorFeedback(self.compressor).init(self.n, d, dev) if self.error_feedback else None
        local = self.local.init(self.n, d, dev) if self.local is not None else None
        server_error = torch.zeros(d, device=dev) if (self.down_compressor and self.down_error_feedback) else None
        return PSState(self.optimizer.init(theta), ef, local, server_error)

    def worker_encode(self, state: PSState, grads: torch.Tensor, round: int,
                      streams: WorkerStreams, active: torch.Tensor | None = None,
                      aux_grad=None) -> tuple[Upload, PSState]:
        """grads [n, d] -> every worker's message.  ``active`` [n] bool: workers
        taking part this round; the others' state is left as it was."""
        x, local = grads, state.local
        if self.local is not None:
            x, new_local = self.local.step(grads, state.local, round)
            local = _keep_tree(active, new_local, state.local)
        if self.error_feedback:
            e = state.error
            if self.rescale_error and round > 0:
                e = e * (self.lr(round - 1) / self.lr(round))
            payload, decoded, error = ErrorFeedback(self.compressor).step(x, e, streams=streams, round=round)
            error = keep_rows(active, error, state.error)
        else:
            payload = self.compressor.compress(x, streams=streams, round=round)
            decoded, error = self.compressor.decompress(payload), None
        sends = torch.ones(grads.shape[0], dtype=torch.bool) if active is None else active.cpu()
        return Upload(payload, sends), replace(state, error=error, local=local, decoded=decoded)

    def server_update(self, state: PSState, theta: torch.Tensor, upload: Upload,
                      arrived: torch.Tensor, round: int, late: torch.Tensor | None = None
                      ) -> tuple[torch.Tensor, Downlink, PSState]:
        """``late`` [n] bool (with ``keep_late``): workers whose upload of the
        previous round arrived during this one; their previous messages join
        the mean, one round stale: g_bar = (sum_arrived D_i + sum_late D_i^prev)
        / (|arrived| + |late|)."""
        if late is not None and state.previous is not None and bool(late.any()):
            w_now = arrived.to(theta.device).to(theta.dtype)
            w_late = late.to(theta.device).to(theta.dtype)
            g_bar = (w_now @ state.decoded + w_late @ state.previous) / (w_now.sum() + w_late.sum())
        else:
            g_bar = mean_over_arrived(state.decoded, arrived.to(theta.device))
        previous = state.decoded if self.keep_late else None
        theta, down, state = self.apply_mean(state, theta, g_bar, round)
        return theta, down, replace(state, previous=previous)

    def apply_mean(self, state: PSState, theta: torch.Tensor, g_bar: torch.Tensor, round: int
                   ) -> tuple[torch.Tensor, Downlink, PSState]:
        """The server's step from the mean of the decoded uploads g_bar [d]
        (the chunked round of a memory budget, sim/learn/chunked.py, computes
        g_bar itself and calls this)."""
        delta, opt = self.optimizer.update(g_bar, state.opt, round)
        server_error = state.server_error
        if self.down_compressor is None:
            down = Downlink(update_bytes(delta), "update", delta)
        else:
            # Two-way compression: the server compresses the update it broadcasts,
            # keeping its own error memory (Efficient-Adam, dist-EF-SGD).
            u = (-delta).view(1, -1)
            streams = WorkerStreams(self.seed + 7919, 1, theta.device)
            if server_error is not None:
                payload, dec, err = ErrorFeedback(self.down_compressor).step(
                    u, server_error.view(1, -1), streams=streams, round=round)
                server_error = err.view(-1)
            else:
                payload = self.down_compressor.compress(u, streams=streams, round=round)
                dec = self.down_compressor.decompress(payload)
            delta = -dec.view(-1)
            down = Downlink(int(payload.nbytes[0]), "update")
        return theta + delta, down, replace(state, opt=opt, server_error=server_error, decoded=None)


def _keep_tree(active, new, old):
    if active is None or old is None:
        return new
    if isinstance(new, torch.Tensor):
        return keep_rows(active, new, old)
    return type(new)(**{k: keep_rows(active, getattr(new, k), getattr(old, k)) for k in new.__dataclass_fields__})
