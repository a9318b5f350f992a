"""A commsim plugin: a new compressor and a new algorithm in one file (docs/plugins.md).

    python run_sim.py run docs/examples/plugin_scenario.yaml --plugin docs/examples/my_plugin.py
    python run_sim.py check docs/examples/my_plugin.py

Importing this file registers

* ``sign_topk``: keep the k largest |x_j| of each worker's vector and send only
  their signs and indices and one scale (the mean |x_j| over the kept ones):
  ceil(k (1 + 32) / 8) + 4 bytes, k = max(1, floor(ratio d));
* ``ef21``: EF21 (Richtarik, Sokolov & Fatkhullin, NeurIPS 2021): worker i keeps
  an estimate g_i of its gradient and sends c_i = C(grad_i - g_i); both ends add
  c_i to g_i; the server steps theta <- theta - lr mean_i(g_i).  Any compressor,
  this file's included.

Everything here uses commsim's own pieces: the registries (``COMPRESSORS``,
``ALGORITHMS``), the config base ``AlgorithmConfig`` (name, lr, lr_schedule,
wait_for, ...), ``Payload`` / ``Upload`` / ``Downlink`` (algorithms/base.py) and
the compressor union ``CompressorConfig``, so ``compressor: {kind: ...}`` accepts
every registered compressor, built-in or from a plugin.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any, Callable, ClassVar, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field

from algorithms import ALGORITHMS, COMPRESSORS
from algorithms.base import AlgorithmConfig, Context, Downlink, Payload, Upload
from algorithms.compressors import CompressorConfig, TopKConfig
from algorithms.ps import update_bytes


# --- the compressor -------------------------------------------------------------
@dataclass(frozen=True)
class SignTopK:
    """Batched over the workers: x [n, d] -> a Payload, and back to [n, d]."""

    d: int
    k: int
    linear: ClassVar[bool] = False     # payloads cannot be summed in compressed form

    @property
    def nbytes(self) -> int:
        # k signs (1 bit) and k uint32 indices (32 bits), bit-packed; one float32 scale
        return math.ceil(self.k * (1 + 32) / 8) + 4

    def compress(self, x: torch.Tensor, *, streams=None, round: int = 0) -> Payload:
        idx = x.abs().topk(self.k, dim=1).indices                 # [n, k]
        vals = x.gather(1, idx)                                   # [n, k]
        scale = vals.abs().mean(1, keepdim=True)                  # [n, 1]
        nbytes = torch.full((x.shape[0],), self.nbytes, dtype=torch.int64)
        return Payload({"idx": idx, "positive": vals >= 0, "scale": scale}, nbytes)

    def decompress(self, p: Payload) -> torch.Tensor:
        idx, positive, scale = p.tensors["idx"], p.tensors["positive"], p.tensors["scale"]
        vals = torch.where(positive, scale, -scale)               # [n, k]
        out = torch.zeros(idx.shape[0], self.d, dtype=scale.dtype, device=scale.device)
        return out.scatter_(1, idx, vals)


@COMPRESSORS.register("sign_topk")
class SignTopKConfig(BaseModel):
    """Signs of the top-k entries and one scale per worker message."""

    model_config = ConfigDict(extra="forbid")     # unknown keys refused, as for the built-ins
    kind: Literal["sign_topk"] = "sign_topk"
    ratio: float = Field(0.01, gt=0, le=1, description="fraction of coordinates kept, in (0, 1]")

    conformance_example: ClassVar[dict] = {"ratio": 0.1}     # what `run_sim.py check` builds

    def k(self, d: int) -> int:
        return min(d, max(1, int(self.ratio * d)))

    def build(self, ctx: Context) -> SignTopK:
        return SignTopK(ctx.d, self.k(ctx.d))

    def expected_bytes(self, ctx: Context, x: torch.Tensor, decoded: torch.Tensor) -> int:
        """The wire formula `check` compares every message with: ceil(k 33 / 8) + 4."""
        return math.ceil(self.k(ctx.d) * 33 / 8) + 4


# --- the algorithm --------------------------------------------------------------
@dataclass(frozen=True)
class Ef21State:
    g: torch.Tensor                    # [n, d] every worker's gradient estimate (the server keeps the same)
    decoded: torch.Tensor | None = None   # [n, d] this round's c_i, as the server decodes them


@dataclass(frozen=True)
class Ef21:
    name: str
    compressor: Any
    lr: Callable[[int], float]
    n: int

    @property
    def summable(self) -> bool:        # ring all-reduce only with a linear compressor
        return self.compressor.linear

    def init(self, theta: torch.Tensor) -> Ef21State:
        return Ef21State(torch.zeros(self.n, theta.numel(), device=theta.device))

    def worker_encode(self, state: Ef21State, grads: torch.Tensor, round: int, streams, active=None,
                      aux_grad=None) -> tuple[Upload, Ef21State]:
        payload = self.compressor.compress(grads - state.g, streams=streams, round=round)
        sends = torch.ones(grads.shape[0], dtype=torch.bool) if active is None else active.cpu()
        return Upload(payload, sends), replace(state, decoded=self.compressor.decompress(payload))

    def server_update(self, state: Ef21State, theta: torch.Tensor, upload: Upload, arrived: torch.Tensor,
                      round: int) -> tuple[torch.Tensor, Downlink, Ef21State]:
        # a worker's estimate moves only when its c_i arrived (both ends stay equal)
        w = arrived.to(device=theta.device, dtype=theta.dtype).view(-1, 1)
        g = state.g + w * state.decoded
        delta = -self.lr(round) * g.mean(0)
        return theta + delta, Downlink(update_bytes(delta), "update", delta), Ef21State(g)


@ALGORITHMS.register("ef21")
class Ef21Config(AlgorithmConfig):
    """EF21 with any registered compressor (default top-k 1 %)."""

    kind: Literal["ef21"] = "ef21"
    compressor: CompressorConfig = Field(default_factory=lambda: TopKConfig(ratio=0.01))

    conformance_example: ClassVar[dict] = {"lr": 0.5, "compressor": {"kind": "topk", "ratio": 0.25}}
    uploads_per_round: ClassVar[int] = 1

    def build(self, ctx: Context) -> Ef21:
        return Ef21(self.label, self.compressor.build(ctx), self.lr_at, ctx.n)
