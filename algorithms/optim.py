"""Server-side optimizers, composed into algorithms (Optax style).

``init(theta) -> state``;  ``update(g, state, round) -> (delta, state)`` with
``theta_next = theta + delta``.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

import torch


@dataclass(frozen=True)
class Sgd:
    """theta <- theta - lr g."""

    lr: float

    def init(self, theta: torch.Tensor) -> None:
        return None

    def update(self, g: torch.Tensor, state: None, round: int) -> tuple[torch.Tensor, None]:
        return -self.lr * g, None


@dataclass(frozen=True)
class AmsGradState:
    m: torch.Tensor      # [d]
    v: torch.Tensor      # [d]
    v_hat: torch.Tensor  # [d]


@dataclass(frozen=True)
class AmsGrad:
    """AMSGrad as on the COMP-AMS server (comp-ams.txt Algorithm 2, lines 13-16):

        m = b1 m + (1 - b1) g;   v = b2 v + (1 - b2) g^2;   v_hat = max(v, v_hat)
        theta <- theta - lr m / sqrt(v_hat + eps)

    m, v, v_hat start at 0 (line 2); eps is inside the square root and there is
    no bias correction, as printed.
    """

    lr: float
    beta1: float = 0.9
    beta2: float = 0.999
    eps: float = 1e-8

    def init(self, theta: torch.Tensor) -> AmsGradState:
        z = torch.zeros_like(theta)
        return AmsGradState(z, z.clone(), z.clone())

    def update(self, g: torch.Tensor, s: AmsGradState, round: int) -> tuple[torch.Tensor, AmsGradState]:
        m = self.beta1 * s.m + (1 - self.beta1) * g
        v = self.beta2 * s.v + (1 - self.beta2) * g * g
        v_hat = torch.maximum(v, s.v_hat)
        return -self.lr * m / torch.sqrt(v_hat + self.eps), replace(s, m=m, v=v, v_hat=v_hat)
