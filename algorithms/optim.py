"""Server-side optimizers, composed into algorithms (Optax style).

``init(theta) -> state``;  ``update(g, state, round) -> (delta, state)`` with
``theta_next = theta + delta``.  ``lr`` is a function of the round (a
schedule).
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Callable

import torch

LrFn = Callable[[int], float]


def constant(lr: float) -> LrFn:
    return lambda t: lr


@dataclass(frozen=True)
class Sgd:
    """theta <- theta - lr_t g."""

    lr: LrFn

    def init(self, theta: torch.Tensor) -> None:
        return None

    def update(self, g: torch.Tensor, state: None, round: int) -> tuple[torch.Tensor, None]:
        return -self.lr(round) * g, None


@dataclass(frozen=True)
class Momentum:
    """Heavy ball (PyTorch's SGD convention): m = mu m + g; theta <- theta - lr m
    (Nesterov: theta <- theta - lr (g + mu m))."""

    lr: LrFn
    momentum: float = 0.9
    nesterov: bool = False

    def init(self, theta: torch.Tensor) -> torch.Tensor:
        return torch.zeros_like(theta)

    def update(self, g: torch.Tensor, m: torch.Tensor, round: int) -> tuple[torch.Tensor, torch.Tensor]:
        m = self.momentum * m + g
        step = g + self.momentum * m if self.nesterov else m
        return -self.lr(round) * step, m


@dataclass(frozen=True)
class AmsGradState:
    m: torch.Tensor      # [d]
    v: torch.Tensor      # [d]
    v_hat: torch.Tensor  # [d]
    t: int = 0


@dataclass(frozen=True)
class AmsGrad:
    """AMSGrad as on the COMP-AMS server (comp-ams.txt Algorithm 2, lines 13-16):

        m = b1 m + (1 - b1) g;   v = b2 v + (1 - b2) g^2;   v_hat = max(v, v_hat)
        theta <- theta - lr m / sqrt(v_hat + eps)

    m, v, v_hat start at 0 (line 2); eps is inside the square root and there is
    no bias correction, as printed.
    """

    lr: LrFn
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
        return -self.lr(round) * m / torch.sqrt(v_hat + self.eps), replace(s, m=m, v=v, v_hat=v_hat)


@dataclass(frozen=True)
class Adam:
    """Adam (Kingma & Ba 2015, Algorithm 1): bias-corrected moments, eps outside
    the root; ``bias_correction: false`` gives the DeepSpeed 1-bit Adam warm-up
    form m / (sqrt(v) + eps)."""

    lr: LrFn
    beta1: float = 0.9
    beta2: float = 0.999
    eps: float = 1e-8
    bias_correction: bool = True

    def init(self, theta: torch.Tensor) -> AmsGradState:
        z = torch.zeros_like(theta)
        return AmsGradState(z, z.clone(), z.clone(), 0)

    def update(self, g: torch.Tensor, s: AmsGradState, round: int) -> tuple[torch.Tensor, AmsGradState]:
        t = s.t + 1
        m = self.beta1 * s.m + (1 - self.beta1) * g
        v = self.beta2 * s.v + (1 - self.beta2) * g * g
        if self.bias_correction:
            m_hat, v_hat = m / (1 - self.beta1 ** t), v / (1 - self.beta2 ** t)
        else:
            m_hat, v_hat = m, v
        return -self.lr(round) * m_hat / (torch.sqrt(v_hat) + self.eps), replace(s, m=m, v=v, t=t)
