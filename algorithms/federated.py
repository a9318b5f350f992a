"""Local updates with periodic averaging: FedAvg, local SGD, FedAdam / FedAMS.

``fedavg`` (McMahan et al., AISTATS 2017, Algorithm 1 "FederatedAveraging";
server optimizers as in Reddi et al., ICLR 2021, "Adaptive Federated
Optimization", Algorithm 2; FedAMS / FedCAMS: Wang, Lin & Chen, ICML 2022,
which is COMP-AMS's federated form), round t:

    server:   sample S_t: K of the available clients (seeded, without
              replacement; all of them when clients_per_round is unset)
    client i in S_t, from theta:
              theta_i^(0) = theta
              theta_i^(h+1) = theta_i^(h) - local_lr * g_i(theta_i^(h); minibatch (t, h)),  h < H
              Delta_i = theta - theta_i^(H)                     (the model change)
              sends C(Delta_i [+ e_i])                          (error feedback: e_i <- p_i - D(C(p_i)))
    server:   Delta = sum_i w_i D(sent_i) / sum_i w_i   over the arrived clients of S_t,
              w_i = |shard_i| (weighting: shard, McMahan's n_k / n) or 1 (uniform)
              theta <- theta + ServerOpt(-Delta)
              sgd:  theta - lr Delta   (lr = 1 is McMahan's FedAvg)
              adam / amsgrad: Delta as the gradient of Adam / AMSGrad with step lr

Local steps of all sampled clients advance together: one batched call per
local step over their per-client parameters (``GradFn.at``); step h = 0 is
the gradient the engine already computed at theta on round t's minibatch,
so with H = 1, every client, equal weights and the sgd server at lr 1,
fedavg is ``sgd`` with lr = local_lr (up to float rounding; a test checks
it).  Minibatch (t, h >= 1) comes from the client's own stream keyed by
(round, step).  Compute time: H local steps (``compute_factor`` = H); clients
not sampled compute and send nothing and are not waited for.

``local_sgd`` (Stich, ICLR 2019, "Local SGD converges fast and communicates
little"; Lin et al. 2020): every worker, uniform weights, the average of the
local models (fedavg with the sgd server at lr 1), ``lr`` is the local step.

Missing clients: the weighted mean is over the sampled clients whose upload
arrived; a sampled client whose message did not arrive keeps its error
memory as error feedback leaves it; with none arrived there is no step.

Wire sizes: the compressor's formula for Delta_i (4 d dense); the broadcast
is the update, the cheaper of dense and sparse (algorithms/ps.py).
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Literal

import torch
from pydantic import Field

from sim.learn.rng import TAG_SAMPLE, WorkerStreams

from .base import AlgorithmConfig, Context, Downlink, Upload
from .compressors import Compressor, CompressorConfig, ErrorFeedback, NoneConfig
from .optim import Adam, AmsGrad, Sgd
from .ps import keep_rows, update_bytes



@dataclass(frozen=True)
class FedState:
    opt: Any
    error: torch.Tensor | None = None      # [n, d] client error-feedback memories
    decoded: torch.Tensor | None = None    # [n, d] this round's decoded uploads
    sampled: torch.Tensor | None = None    # [n] bool, this round's clients


@dataclass(frozen=True)
class FedAvg:
    name: str
    compressor: Compressor
    error_feedback: bool
    optimizer: Any                 # server optimizer (Sgd / Adam / AmsGrad) on -Delta
    n: int
    local_steps: int               # H
    local_lr: Any                  # lr_t of the clients' steps
    clients: int | None            # K sampled per round, or None (all available)
    weights: torch.Tensor          # [n] w_i
    wants_local_steps: bool = True  # the engine passes ``local`` to worker_encode

    @property
    def summable(self) -> bool:
        return self.compressor.linear and self.clients is None

    def init(self, theta: torch.Tensor) -> FedState:
        ef = ErrorFeedback(self.compressor).init(self.n, theta.numel(), theta.device) \
            if self.error_feedback else None
        return FedState(self.optimizer.init(theta), ef)

    def sample(self, round: int, available: torch.Tensor, streams: WorkerStreams) -> torch.Tensor:
        """K of the available clients, without replacement: the K smallest of
        one uniform draw per client (its own stream, keyed by the round)."""
        if self.clients is None:
            return available.clone()
        u = streams.uniform(TAG_SAMPLE, round, ()).view(-1).cpu().double()
        u = torch.where(available, u, torch.full_like(u, 2.0))        # unavailable: never picked
        k = min(self.clients, int(available.sum()))
        chosen = torch.zeros_like(available)
        chosen[torch.argsort(u, stable=True)[:k]] = True
        return chosen

    def worker_encode(self, s: FedState, grads: torch.Tensor, round: int, streams: WorkerStreams,
                      active: torch.Tensor | None = None, aux_grad=None, local=None) -> tuple[Upload, FedState]:
        n = grads.shape[0]
        avail = torch.ones(n, dtype=torch.bool) if active is None else active.cpu()
        sampled = self.sample(round, avail, streams)
        rows = torch.nonzero(sampled).view(-1).to(grads.device)            # [m]
        theta = local.theta                                                # [d]
        lr = self.local_lr(round)
        th = theta.view(1, -1) - lr * grads[rows]                          # h = 0: the engine's gradient at theta
        for h in range(1, self.local_steps):                               # one batched call per local step
            th = th - lr * local.grad(h, th, rows)
        delta = torch.zeros_like(grads)
        delta[rows] = theta.view(1, -1) - th                               # Delta_i = theta - theta_i^(H)
        if self.error_feedback:
            payload, decoded, error = ErrorFeedback(self.compressor).step(delta, s.error, streams=streams,
                                                                          round=round)
            error = keep_rows(sampled, error, s.error)
        else:
            payload = self.compressor.compress(delta, streams=streams, round=round)
            decoded, error = self.compressor.decompress(payload), None
        factor = torch.where(sampled, float(self.local_steps), 0.0)
        return Upload(payload, sampled, sends=sampled, compute_factor=factor), \
            replace(s, error=error, decoded=decoded, sampled=sampled)

    def server_update(self, s: FedState, theta: torch.Tensor, upload: Upload, arrived: torch.Tensor,
                      round: int) -> tuple[torch.Tensor, Downlink, FedState]:
        w = (arrived.cpu() & s.sampled).to(theta.dtype).to(theta.device) * self.weights
        total = w.sum()
        mean = (w @ s.decoded) / total if float(total) > 0 else torch.zeros_like(theta)   # Delta
        step, opt = self.optimizer.update(mean, s.opt, round)            # -lr Delta (sgd), Adam on Delta
        return theta + step, Downlink(update_bytes(step), "update", step), \
            replace(s, opt=opt, decoded=None, sampled=None)


def _weights(ctx: Context, weighting: str) -> torch.Tensor:
    if weighting == "uniform" or ctx.shard_sizes is None:
        return torch.ones(ctx.n, device=ctx.device)
    return torch.tensor(ctx.shard_sizes, dtype=torch.float32, device=ctx.device)


class FedAvgConfig(AlgorithmConfig):
    """FedAvg (McMahan et al. 2017) with client sampling, H local steps, shard
    weights, any compressor with error feedback, and a server optimizer: sgd
    (FedAvg at lr 1), adam (FedAdam, Reddi et al. 2021), amsgrad (FedAMS;
    with a compressor and EF, FedCAMS, Wang et al. 2022).  ``lr`` is the
    server's step; ``local_lr`` the clients' (algorithms/federated.py)."""

    kind: Literal["fedavg"] = "fedavg"
    lr: float = Field(1.0, gt=0, description="server step size (1 with the sgd server: plain FedAvg)")
    local_lr: float = Field(gt=0, description="the clients' local SGD step size")
    local_steps: int = Field(1, ge=1, le=10_000, description="H local steps per round")
    clients_per_round: int | None = Field(None, ge=1, description="K clients sampled per round (default: all)")
    weighting: Literal["shard", "uniform"] = Field("shard", description="w_i = shard size, or 1")
    server_optimizer: Literal["sgd", "adam", "amsgrad"] = "sgd"
    beta1: float = Field(0.9, ge=0, lt=1)
    beta2: float = Field(0.99, ge=0, lt=1)
    eps: float = Field(1e-3, gt=0, description="adaptivity tau (Reddi et al. 2021 use 1e-3)")
    compressor: CompressorConfig = Field(default_factory=NoneConfig)
    error_feedback: bool = True

    def build(self, ctx: Context) -> FedAvg:
        opt = {"sgd": lambda: Sgd(self.lr_at),
               "adam": lambda: Adam(self.lr_at, self.beta1, self.beta2, self.eps),
               "amsgrad": lambda: AmsGrad(self.lr_at, self.beta1, self.beta2, self.eps)}[self.server_optimizer]()
        ef = self.error_feedback and self.compressor.kind != "none"
        local_lr = lambda t: self.local_lr * self.lr_schedule.factor(t)  # noqa: E731
        return FedAvg(self.label, self.compressor.build(ctx), ef, opt, ctx.n, self.local_steps, local_lr,
                      self.clients_per_round, _weights(ctx, self.weighting))


class LocalSgdConfig(AlgorithmConfig):
    """Local SGD (Stich 2019): every worker takes H local SGD steps with ``lr``,
    then the models are averaged (fedavg, all workers, uniform weights, lr 1)."""

    kind: Literal["local_sgd"] = "local_sgd"
    local_steps: int = Field(1, ge=1, le=10_000, description="H local steps between averagings")

    def build(self, ctx: Context) -> FedAvg:
        return FedAvg(self.label, NoneConfig().build(ctx), False, Sgd(lambda t: 1.0), ctx.n, self.local_steps,
                      self.lr_at, None, torch.ones(ctx.n, device=ctx.device))
