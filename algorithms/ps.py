"""The synchronous parameter-server round, composed from parts:

    worker:  x_i = g_i;  sent_i = C(x_i [+ e_i])          (compressor, optional EF)
    server:  g_bar = mean over arrived workers of D(sent_i)
             theta <- theta + optimizer(g_bar)
             broadcast the parameter update

``sgd``, ``topk_ef_sgd`` and ``comp_ams`` are this round with different
compressors and server optimizers (see algorithms/__init__.py).
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import torch

from sim.rng import WorkerStreams

from .base import INDEX_BYTES, VALUE_BYTES, Downlink, Payload, Upload
from .compressors import Compressor, ErrorFeedback


@dataclass(frozen=True)
class PSState:
    opt: Any                       # server optimizer state
    error: torch.Tensor | None     # [n, d] worker error-feedback memories, or None
    decoded: torch.Tensor | None = None   # [n, d] decoded uploads of this round (server side)


def update_bytes(delta: torch.Tensor) -> int:
    """Wire size of a parameter update the server broadcasts: the cheaper of
    dense (4 d) and sparse (nnz (4 + 4): value and uint32 index) encodings,
    as a real server would choose."""
    d = delta.numel()
    nnz = int(torch.count_nonzero(delta))
    return min(VALUE_BYTES * d, nnz * (VALUE_BYTES + INDEX_BYTES))


def mean_over_arrived(decoded: torch.Tensor, arrived: torch.Tensor) -> torch.Tensor:
    """Aggregation with missing workers (Flower style, documented meaning): a
    worker whose message did not arrive is left out and the mean is over the
    workers that arrived.  With none arrived the result is zero (no step)."""
    w = arrived.to(decoded.dtype)                     # [n]
    count = w.sum().clamp(min=1.0)
    return (w @ decoded) / count                      # [d]


@dataclass(frozen=True)
class ParameterServer:
    name: str
    compressor: Compressor
    optimizer: Any
    error_feedback: bool
    n: int

    def init(self, theta: torch.Tensor) -> PSState:
        ef = ErrorFeedback(self.compressor).init(self.n, theta.numel(), theta.device) if self.error_feedback else None
        return PSState(self.optimizer.init(theta), ef)

    @property
    def summable(self) -> bool:
        """Can the workers' messages be summed in transit (ring all-reduce)?"""
        return self.compressor.linear

    def worker_encode(self, state: PSState, grads: torch.Tensor, round: int,
                      streams: WorkerStreams, active: torch.Tensor | None = None) -> tuple[Upload, PSState]:
        """grads [n, d] -> every worker's message.  ``active`` [n] bool: workers
        taking part this round; the others' state is left as it was."""
        if self.error_feedback:
            payload, decoded, error = ErrorFeedback(self.compressor).step(
                grads, state.error, streams=streams, round=round)
            if active is not None:
                error = torch.where(active.to(error.device).view(-1, 1), error, state.error)
        else:
            payload = self.compressor.compress(grads, streams=streams, round=round)
            decoded, error = self.compressor.decompress(payload), None
        sends = torch.ones(grads.shape[0], dtype=torch.bool) if active is None else active.cpu()
        return Upload(payload, sends), replace(state, error=error, decoded=decoded)

    def server_update(self, state: PSState, theta: torch.Tensor, upload: Upload,
                      arrived: torch.Tensor, round: int) -> tuple[torch.Tensor, Downlink, PSState]:
        g_bar = mean_over_arrived(state.decoded, arrived.to(theta.device))
        delta, opt = self.optimizer.update(g_bar, state.opt, round)
        down = Downlink(update_bytes(delta), "update", delta)
        return theta + delta, down, replace(state, opt=opt, decoded=None)
