"""1-bit Adam (Tang et al. 2021), as in DeepSpeed's ``runtime/fp16/onebit/adam.py``.

Warm-up (``freeze_step`` rounds): dense Adam, workers send full gradients,
the server updates m and v with m / (sqrt(v) + eps), no bias correction.
Then v is frozen and momentum is communicated, compressed, with error
feedback on both sides:

    worker:  m_i = b1 m_i + (1 - b1) g_i;   b = m_i + e_i;   send C(b);   e_i = b - C(b)
    server:  c = mean_i C(b_i) + e_s;   broadcast C(c);   e_s = c - C(c)
    all:     m_i = C(c);   theta <- theta - lr m_i / (sqrt(v) + eps)

C is the sign with one L2 scale per tensor: ||x_B||_2 / sqrt(|B|) sign(x_B),
sign(0) = +1 (DeepSpeed's convention); wire: ceil(|B| / 8) + 4 bytes per block.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any

import torch

from sim.learn.models import Block
from sim.learn.rng import WorkerStreams

from .base import VALUE_BYTES, Downlink, Payload, Upload
from .optim import Adam, AmsGradState
from .ps import keep_rows, mean_over_arrived, update_bytes


def l2_sign(x: torch.Tensor, blocks: tuple[Block, ...]) -> torch.Tensor:
    """x [n, d] -> per-block ||x_B||_2 / sqrt(|B|) * sign(x_B), sign(0) = +1."""
    out = torch.empty_like(x)
    for b in blocks:
        xb = x[:, b.start:b.stop]
        scale = xb.norm(dim=1, keepdim=True) / math.sqrt(b.stop - b.start)
        out[:, b.start:b.stop] = torch.where(xb >= 0, scale, -scale)
    return out


def l2_sign_bytes(blocks: tuple[Block, ...]) -> int:
    return sum(math.ceil((b.stop - b.start) / 8) + VALUE_BYTES for b in blocks)


@dataclass(frozen=True)
class OneBitState:
    m: torch.Tensor            # [d] server momentum (warm-up) / [n, d] worker momenta (compressed stage)
    v: torch.Tensor            # [d] second moment, frozen after warm-up
    error: torch.Tensor        # [n, d] worker errors
    server_error: torch.Tensor # [d]
    decoded: torch.Tensor | None = None


@dataclass(frozen=True)
class OneBitAdam:
    name: str
    lr: Any
    n: int
    blocks: tuple[Block, ...]
    freeze_step: int
    beta1: float = 0.9
    beta2: float = 0.999
    eps: float = 1e-8
    summable: bool = False

    def init(self, theta: torch.Tensor) -> OneBitState:
        z = torch.zeros_like(theta)
        zn = torch.zeros(self.n, theta.numel(), device=theta.device)
        return OneBitState(z, z.clone(), zn, z.clone())

    def worker_encode(self, s: OneBitState, grads: torch.Tensor, round: int,
                      streams: WorkerStreams, active: torch.Tensor | None = None,
                      aux_grad=None) -> tuple[Upload, OneBitState]:
        n, d = grads.shape
        sends = torch.ones(n, dtype=torch.bool) if active is None else active.cpu()
        if round < self.freeze_step:   # dense warm-up: full gradients, 4 d bytes
            payload = Payload({"values": grads}, torch.full((n,), VALUE_BYTES * d, dtype=torch.int64))
            return Upload(payload, sends), replace(s, decoded=grads)
        m = s.m if s.m.dim() == 2 else s.m.expand(n, d)        # first compressed round: m_i = server m
        m = self.beta1 * m + (1 - self.beta1) * grads
        b = m + s.error
        sent = l2_sign(b, self.blocks)
        error = keep_rows(active, b - sent, s.error)
        m = keep_rows(active, m, s.m if s.m.dim() == 2 else m)
        payload = Payload({"values": sent}, torch.full((n,), l2_sign_bytes(self.blocks), dtype=torch.int64))
        return Upload(payload, sends), replace(s, m=m, error=error, decoded=sent)

    def server_update(self, s: OneBitState, theta: torch.Tensor, upload: Upload,
                      arrived: torch.Tensor, round: int) -> tuple[torch.Tensor, Downlink, OneBitState]:
        avg = mean_over_arrived(s.decoded, arrived.to(theta.device))
        if round < self.freeze_step:   # dense Adam, no bias correction (DeepSpeed's warm-up)
            adam = Adam(self.lr, self.beta1, self.beta2, self.eps, bias_correction=False)
            delta, st = adam.update(avg, AmsGradState(s.m, s.v, s.v), round)
            return theta + delta, Downlink(update_bytes(delta), "update", delta), \
                replace(s, m=st.m, v=st.v, decoded=None)
        c = avg + s.server_error
        sent = l2_sign(c.view(1, -1), self.blocks).view(-1)
        m_sync = sent.expand(self.n, -1).clone()               # every worker's momentum := C(c)
        delta = -self.lr(round) * sent / (torch.sqrt(s.v) + self.eps)
        return theta + delta, Downlink(l2_sign_bytes(self.blocks), "update"), \
            replace(s, m=m_sync, server_error=c - sent, decoded=None)
