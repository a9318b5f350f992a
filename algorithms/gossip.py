"""Decentralized training over a communication graph: no server, neighbours average.

Every worker keeps its own model; the state is batched, X [n, d] (row i is
worker i's parameters), and one gossip step is one sparse matmul W @ X
(topologies/gossip.py ``sparse_rows``; W [n, n] has (edges + n) non-zeros;
held dense when more than 1/8 of them are: faster on CPU, docs/performance-history.md).
Round t of the synchronous forms (sim/gossip.py runs them, with a barrier per
worker: a worker starts round t + 1 once its own messages of round t are
delivered and its in-neighbours' have arrived):

``dpsgd`` (D-PSGD, Lian et al., NeurIPS 2017, "Can Decentralized Algorithms
Outperform Centralized Algorithms?"), in the adapt-then-combine form (a local
step, then neighbourhood averaging; Koloskova et al. 2019, Algorithm 1 with
exact communication):

    Y = X - lr_t G(X)                  H local steps: Y_{h+1} = Y_h - lr_t G_h(Y_h)
    worker i sends y_i (4 d bytes) to each neighbour
    X <- W Y                            W doubly stochastic (Metropolis-Hastings or uniform)

(Lian's Algorithm 1 averages x_k and applies the gradient taken at x_k in the
same step, x_{k+1} = W x_k - lr G(x_k); the messages are the same, the order of
the two operations is not.)

``choco_sgd`` (CHOCO-SGD, Koloskova, Stich & Jaggi, ICML 2019,
"Decentralized Stochastic Optimization and Gossip Algorithms with Compressed
Communication", Algorithm 2), public copies X_hat [n, d] (x_hat_j is known
to j and all its neighbours, identically, so one row per worker), consensus
step gamma:

    Y = X - lr_t G(X)                                         (line 3; H local steps)
    q_i = Q(y_i - x_hat_i)                                    (line 4: any registered compressor)
    worker i sends q_i (the compressor's formula) to each neighbour   (line 5)
    X_hat <- X_hat + Q                                        (line 7, for i and its neighbours)
    X <- Y + gamma (W X_hat - X_hat)                          (line 8: sum_j w_ij (x_hat_j - x_hat_i),
                                                               rows of W sum to 1)

With the identity compressor and gamma = 1 it is D-PSGD (a test checks it).

``sgp`` (Stochastic Gradient Push, Assran, Loizou, Ballas & Rabbat, ICML 2019,
Algorithm 1) over a directed graph, push-sum weights w [n] (w_i^0 = 1):

    Y = X - lr_t G(Z),  Z = X / w                     (the gradient at the de-biased z_i)
    worker i sends (p_ji y_i, p_ji w_i) to each out-neighbour j (4 d + 8 bytes: w in float64)
    X <- P Y,  w <- P w                               P column stochastic: 1 / (outdeg_i + 1)

Push-sum keeps sum_i w_i = n and every w_i > 0 (a test checks it); the
workers' models are z_i = x_i / w_i, the averaged model sum x_i / sum w_i =
mean(X).

``ad_psgd`` (AD-PSGD, Lian, Zhang, Zhang & Liu, ICML 2018, "Asynchronous
Decentralized Parallel SGD", Algorithm 1) is event-driven (sim/gossip.py
``run_ad_psgd``): a worker computes its gradient at the model it read, then
averages atomically with one neighbour drawn at random, x_i, x_j <- (x_i +
x_j) / 2 (one 4 d message each way), then steps x_i <- x_i - lr g.

Local steps H (``local_steps``): H gradient steps between two gossip steps;
step h draws minibatch (t, h) from the worker's own stream (the keys of
sim/engine.py ``grads_at``).  Evaluation (sim/gossip.py): the averaged model
mean_i z_i is evaluated as ``test_acc``; ``worker_acc_mean`` / ``_min`` are
over the workers' own models and ``consensus_distance`` = (1/n) sum_i
||z_i - z_bar||^2.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, ClassVar, Literal

import networkx as nx
import numpy as np
import torch
from pydantic import Field

from topologies.gossip import (GossipGraph, check_doubly_stochastic, mixing_matrix, push_sum, sparse_rows,
                               spectral_gap, symmetric)

from .base import VALUE_BYTES, AlgorithmConfig, Context
from .compressors import Compressor, CompressorConfig, NoneConfig

# Bytes of the push-sum weight that rides with every SGP message: one float64.  The
# weights are kept (and mixed) in float64 so that sum_i w_i = n holds to ~1e-15 per
# round; in float32 the columns of P (1/3, 1/5, ...) do not sum to exactly 1 and the
# total mass drifts by ~1e-7 a round.
WEIGHT_BYTES = 8


@dataclass(frozen=True)
class GossipState:
    x: torch.Tensor                        # [n, d] every worker's parameters (SGP: push-sum numerators)
    x_hat: torch.Tensor | None = None      # [n, d] CHOCO's public copies
    w: torch.Tensor | None = None          # [n] float64 SGP's push-sum weights


def local_steps(x: torch.Tensor, lr: float, steps: int, grad, debias=None) -> torch.Tensor:
    """H local SGD steps of every worker at once: Y_{h+1} = Y_h - lr grad(h, Y_h)
    (``debias``: the gradient is taken at debias(Y_h), SGP's z = y / w)."""
    y = x
    for h in range(steps):
        y = torch.add(y, grad(h, y if debias is None else debias(y)), alpha=-lr)   # one pass over [n, d]
    return y


@dataclass(frozen=True)
class Gossip:
    """One synchronous decentralized algorithm (dpsgd, choco_sgd, sgp): see the module docstring."""

    name: str
    rule: str                       # "dpsgd" | "choco" | "sgp"
    lr: Any                         # lr_t
    n: int
    d: int
    steps: int                      # H local steps per gossip step
    mix: torch.Tensor               # [n, n] sparse CSR: W (row stochastic), or SGP's P (column stochastic)
    sends: tuple[tuple[int, ...], ...]   # sends[i]: the workers i sends its message to
    gap: float                      # spectral gap 1 - |lambda_2| of the mixing matrix
    gamma: float = 1.0
    compressor: Compressor | None = None
    mix64: torch.Tensor | None = None      # [n, n] dense float64 P for the push-sum weights (SGP)
    summable: ClassVar[bool] = False
    decentralized: ClassVar[bool] = True

    def init(self, theta: torch.Tensor) -> GossipState:
        x = theta.expand(self.n, self.d).clone()                                  # [n, d]: all start at theta_0
        if self.rule == "choco":
            return GossipState(x, x_hat=torch.zeros_like(x))                       # x_hat^0 = 0 (Algorithm 2)
        if self.rule == "sgp":
            return GossipState(x, w=torch.ones(self.n, dtype=torch.float64, device=x.device))
        return GossipState(x)

    def models(self, s: GossipState) -> torch.Tensor:
        """[n, d] the workers' own models (SGP: the de-biased z_i = x_i / w_i)."""
        return s.x / s.w.view(-1, 1).float() if s.w is not None else s.x

    def average(self, s: GossipState) -> torch.Tensor:
        """[d] the averaged model (SGP: sum x_i / sum w_i = mean x_i, as sum w_i = n)."""
        return s.x.mean(0)

    def message_bytes(self, s: GossipState, payload_bytes: torch.Tensor | None = None) -> list[int]:
        """[n] the payload of worker i's message to each of its neighbours:
        dpsgd 4 d; sgp 4 d + 4 (the weight); choco the compressor's formula."""
        if payload_bytes is not None:
            return [int(b) for b in payload_bytes.tolist()]
        extra = WEIGHT_BYTES if self.rule == "sgp" else 0
        return [VALUE_BYTES * self.d + extra] * self.n

    def round(self, s: GossipState, t: int, grad, streams) -> tuple[GossipState, list[int]]:
        """One gossip round, every worker at once.  grad(h, thetas [n, d]) -> [n, d]:
        each worker's gradient at its own parameters on minibatch (t, h).
        Returns the new state and the payload bytes of each worker's message."""
        lr = self.lr(t)
        if self.rule == "sgp":
            w = s.w.view(-1, 1).float()
            y = local_steps(s.x, lr, self.steps, grad, debias=lambda v: v / w)
            return GossipState(self.mix @ y, w=torch.mv(self.mix64, s.w)), self.message_bytes(s)
        y = local_steps(s.x, lr, self.steps, grad)                                 # [n, d]
        if self.rule == "dpsgd":
            return GossipState(self.mix @ y), self.message_bytes(s)
        payload = self.compressor.compress(y - s.x_hat, streams=streams, round=t)  # q_i = Q(y_i - x_hat_i)
        x_hat = s.x_hat + self.compressor.decompress(payload)
        x = y + self.gamma * (self.mix @ x_hat - x_hat)
        return GossipState(x, x_hat=x_hat), self.message_bytes(s, payload.nbytes)


@dataclass(frozen=True)
class AdPsgd:
    """AD-PSGD (Lian et al. 2018, Algorithm 1): see the module docstring; sim/gossip.py runs it."""

    name: str
    lr: Any                         # lr_t, t = the version // n (n gradients ~ one synchronous round)
    n: int
    d: int
    steps: int
    neighbours: tuple[tuple[int, ...], ...]
    gap: float                      # of the uniform-pair averaging's expected matrix (reported)
    summable: ClassVar[bool] = False
    decentralized: ClassVar[bool] = True

    @property
    def exchange_bytes(self) -> int:
        """One direction of a pairwise average: the model, 4 d."""
        return VALUE_BYTES * self.d

    def init(self, theta: torch.Tensor) -> GossipState:
        return GossipState(theta.expand(self.n, self.d).clone())

    def models(self, s: GossipState) -> torch.Tensor:
        return s.x

    def average(self, s: GossipState) -> torch.Tensor:
        return s.x.mean(0)

    @staticmethod
    def pair_average(x: torch.Tensor, i: int, j: int) -> torch.Tensor:
        """x_i, x_j <- (x_i + x_j) / 2, in place on rows i and j of x [n, d] (the atomic averaging)."""
        m = (x[i] + x[j]) * 0.5
        x[i] = m
        x[j] = m
        return x


def _sends(g: nx.Graph | nx.DiGraph) -> tuple[tuple[int, ...], ...]:
    n = g.number_of_nodes()
    nb = g.successors if g.is_directed() else g.neighbors
    return tuple(tuple(sorted(int(j) for j in nb(i))) for i in range(n))


class _GossipFields(AlgorithmConfig):
    graph: GossipGraph = Field(default_factory=GossipGraph, description="the communication graph")
    local_steps: int = Field(1, ge=1, le=10_000, description="H local SGD steps between gossip steps")

    decentralized: ClassVar[bool] = True

    @property
    def timing_dependent_why(self) -> str | None:
        # sim/study/replay.py refuses what this returns: the trace replay only knows
        # parameter-server and ring rounds (sim/engine.py Trainer); gossip writes no trace.
        return f"algorithm {self.label!r} is decentralized (gossip): its runs write no trace to replay yet"

    def comm_graph(self, ctx: Context) -> nx.Graph | nx.DiGraph:
        return self.graph.build(ctx.n, ctx.seed)

    def check(self, n: int, seed: int) -> None:
        """Raise ValueError (GraphError) for a graph or mixing matrix this
        algorithm cannot use (sim/study/config.py calls it, so bad input is
        refused before anything runs)."""
        g = self.graph.build(n, seed)
        if hasattr(self, "mixing"):
            mixing_matrix(symmetric(g), self.mixing)


class _SymmetricFields(_GossipFields):
    mixing: Literal["metropolis_hastings", "uniform"] = Field(
        "metropolis_hastings", description="W: Metropolis-Hastings (any graph) or uniform 1 / (deg + 1) "
                                           "(doubly stochastic on regular graphs only)")

    def _mixing(self, ctx: Context) -> tuple[nx.Graph, np.ndarray]:
        g = symmetric(self.comm_graph(ctx))     # directed generators (exponential) are used both ways
        return g, mixing_matrix(g, self.mixing)


class DpsgdConfig(_SymmetricFields):
    """D-PSGD (Lian et al. 2017): local step(s), then averaging with the neighbours (algorithms/gossip.py)."""

    kind: Literal["dpsgd"] = "dpsgd"

    def build(self, ctx: Context) -> Gossip:
        g, w = self._mixing(ctx)
        return Gossip(self.label, "dpsgd", self.lr_at, ctx.n, ctx.d, self.local_steps,
                      sparse_rows(w, ctx.device), _sends(g), spectral_gap(w))


class ChocoSgdConfig(_SymmetricFields):
    """CHOCO-SGD (Koloskova et al. 2019): compressed gossip with public copies and consensus step gamma."""

    kind: Literal["choco_sgd"] = "choco_sgd"
    gamma: float = Field(gt=0, le=1, description="consensus step size (1 with the identity compressor: D-PSGD)")
    compressor: CompressorConfig = Field(default_factory=NoneConfig, description="Q, applied to y_i - x_hat_i")

    def build(self, ctx: Context) -> Gossip:
        g, w = self._mixing(ctx)
        return Gossip(self.label, "choco", self.lr_at, ctx.n, ctx.d, self.local_steps,
                      sparse_rows(w, ctx.device), _sends(g), spectral_gap(w), self.gamma,
                      self.compressor.build(ctx))


class SgpConfig(_GossipFields):
    """Stochastic gradient push (Assran et al. 2019): push-sum over a directed graph."""

    kind: Literal["sgp"] = "sgp"
    graph: GossipGraph = Field(default_factory=lambda: GossipGraph(kind="exponential"),
                               description="the communication graph (directed: i sends to its successors; "
                                           "an undirected graph is used both ways)")

    def build(self, ctx: Context) -> Gossip:
        g = self.comm_graph(ctx)
        g = g if g.is_directed() else g.to_directed()
        p = push_sum(g)                                                 # column stochastic
        if not np.allclose(p.sum(axis=0), 1.0, atol=1e-9) or (p < 0).any():   # pragma: no cover - by construction
            raise ValueError("push-sum weights are not column stochastic")
        return Gossip(self.label, "sgp", self.lr_at, ctx.n, ctx.d, self.local_steps,
                      sparse_rows(p, ctx.device), _sends(g), spectral_gap(p),
                      mix64=torch.tensor(p, dtype=torch.float64, device=ctx.device))


class AdPsgdConfig(_GossipFields):
    """AD-PSGD (Lian et al. 2018): asynchronous pairwise averaging with a random neighbour (event-driven)."""

    kind: Literal["ad_psgd"] = "ad_psgd"
    timing_independent: ClassVar[bool] = False

    @property
    def timing_dependent_why(self) -> str | None:
        return (f"algorithm {self.label!r} is not timing-independent (asynchronous gossip: who averages with "
                "whom, and when, depends on arrival times)")

    def build(self, ctx: Context) -> AdPsgd:
        g = symmetric(self.comm_graph(ctx))
        # The expected averaging matrix of one step (a uniform worker i, a uniform neighbour j, then
        # x_i, x_j <- their mean): E[W] = I - (1/n) sum_i (1/deg_i) sum_j (e_i - e_j)(e_i - e_j)^T / 2.
        n = ctx.n
        w = np.eye(n)
        for i in range(n):
            nb = list(g.neighbors(i))
            c = 1.0 / (2.0 * n * len(nb))
            for j in nb:
                w[i, i] -= c
                w[j, j] -= c
                w[i, j] += c
                w[j, i] += c
        check_doubly_stochastic(w, "the expected pairwise averaging matrix")
        return AdPsgd(self.label, self.lr_at, ctx.n, ctx.d, self.local_steps, _sends(g), spectral_gap(w))
