"""signSGD / Signum with majority vote (Bernstein, Zhao, Azizzadenesheli &
Anandkumar, ICLR 2019, "signSGD with Majority Vote is Communication Efficient
and Fault Tolerant", arXiv:1810.05291, Algorithm 1 "Signum with majority vote"):

    worker m:      v_m <- (1 - beta) g_m + beta v_m;   push sign(v_m)      (1 bit per coordinate up)
    server:        V <- sum_m sign(v_m);               push sign(V)        (majority vote, 1 bit down)
    every worker:  theta <- theta - lr (sign(V) + lambda theta)            (Signum with weight decay)

beta = 0 is signSGD with majority vote (v_m = g_m).  The workers all apply the
same broadcast vote, so theta stays replicated; the server here applies it
once to the shared theta.

Conventions (where the paper leaves a choice):

* Worker signs follow algorithms/compressors.py: bit 1 means v >= 0, so
  sign(0) = +1 (the ``sign`` compressor is the uplink encoder).
* A tie in the vote (V_k = 0, possible only with an even number of voters):
  ``tie: positive`` (default) gives +1, the same bit convention, so the
  broadcast stays 1 bit per coordinate; ``tie: zero`` leaves a tied
  coordinate where it is (sign(0) = 0, as numpy's sign in the paper's
  pseudocode would give), which needs a ternary symbol, 2 bits per coordinate
  down.  Weight decay still applies to a tied coordinate.
* Missing workers (``arrived`` False): the vote is over the workers whose
  message arrived (Flower style, as ``mean_over_arrived``).  With none
  arrived there is no vote and no step at all (weight decay included), and
  nothing is broadcast (0 payload bytes).

Wire: up ceil(d / 8) bytes per worker (d sign bits); down ceil(d / 8) bytes
(``tie: positive``) or ceil(2 d / 8) (``tie: zero``).  Not summable on a ring:
the vote needs every worker's signs (a sum of signs needs log2(n + 1) bits per
coordinate, not one), so a ring gathers.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import torch

from sim.learn.rng import WorkerStreams

from .base import Downlink, Upload
from .compressors import Sign, sign_bytes
from .ps import keep_rows


@dataclass(frozen=True)
class MajorityState:
    momentum: torch.Tensor                 # [n, d] v_m (worker side; v_m = g_m when beta = 0)
    signs: torch.Tensor | None = None      # [n, d] +-1 float32: this round's decoded uploads (server side)


def majority_vote(signs: torch.Tensor, arrived: torch.Tensor, tie: str = "positive") -> torch.Tensor:
    """signs [n, d] of +-1, arrived [n] bool -> the vote [d] in {-1, (0,) +1}:
    sign of the sum over the arrived workers; a tie (sum 0) is +1
    (``positive``) or 0 (``zero``).  Sums of +-1 are exact in float32 for
    n < 2^24."""
    V = arrived.to(signs.dtype) @ signs                                     # [d] sum of the arrived signs
    if tie == "zero":
        return torch.sign(V)
    return torch.where(V >= 0, 1.0, -1.0).to(signs.dtype)


def vote_bytes(d: int, tie: str = "positive") -> int:
    """Bytes of the broadcast vote: ceil(d / 8) (1 bit) or ceil(2 d / 8) (ternary, ``tie: zero``)."""
    return sign_bytes(d) if tie == "positive" else (2 * d + 7) // 8


@dataclass(frozen=True)
class SignumMajority:
    name: str
    lr: Any                       # lr(t)
    n: int
    d: int
    momentum: float = 0.0         # beta
    weight_decay: float = 0.0     # lambda
    tie: str = "positive"         # "positive" | "zero"
    summable: bool = False

    def init(self, theta: torch.Tensor) -> MajorityState:
        return MajorityState(torch.zeros(self.n, theta.numel(), device=theta.device))

    def worker_encode(self, s: MajorityState, grads: torch.Tensor, round: int,
                      streams: WorkerStreams, active: torch.Tensor | None = None,
                      aux_grad=None) -> tuple[Upload, MajorityState]:
        """grads [n, d] -> every worker's sign bits; workers not ``active`` keep
        their momentum."""
        n = grads.shape[0]
        v = (1 - self.momentum) * grads + self.momentum * s.momentum if self.momentum > 0 else grads
        v = keep_rows(active, v, s.momentum)
        sign = Sign(self.d)
        payload = sign.compress(v)                  # nbytes = ceil(d / 8) per worker, bit 1 <=> v >= 0
        sends = torch.ones(n, dtype=torch.bool) if active is None else active.cpu()
        return Upload(payload, sends), replace(s, momentum=v, signs=sign.decompress(payload).to(grads.device))

    def server_update(self, s: MajorityState, theta: torch.Tensor, upload: Upload,
                      arrived: torch.Tensor, round: int) -> tuple[torch.Tensor, Downlink, MajorityState]:
        arrived = arrived.to(theta.device)
        if not bool(arrived.any()):                  # no vote: no step, nothing broadcast
            return theta, Downlink(0, "update"), replace(s, signs=None)
        vote = majority_vote(s.signs, arrived, self.tie)                  # [d]
        step = vote + self.weight_decay * theta if self.weight_decay > 0 else vote
        return theta - self.lr(round) * step, Downlink(vote_bytes(self.d, self.tie), "update"), \
            replace(s, signs=None)
