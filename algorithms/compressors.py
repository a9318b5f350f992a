"""Gradient compressors, batched over workers, with exact wire sizes.

A compressor maps x [n, d] to a :class:`Payload` (what would be sent, and its
size in bytes per worker from the formula next to the code) and decodes a
payload back to [n, d].  Error feedback is a wrapper (:class:`ErrorFeedback`),
not a subclass.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Literal, Protocol, Union

import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator

from sim.registry import Registry
from sim.rng import WorkerStreams

from .base import INDEX_BYTES, VALUE_BYTES, Context, Payload

COMPRESSORS: Registry = Registry("compressor")  # kind -> config class with .build(ctx)


class Compressor(Protocol):
    linear: bool   # can payloads be summed in compressed form?

    def compress(self, x: torch.Tensor, *, streams: WorkerStreams | None = None,
                 round: int = 0) -> Payload: ...

    def decompress(self, p: Payload) -> torch.Tensor: ...


@dataclass(frozen=True)
class Identity:
    """No compression: d float32 values.  nbytes = 4 d."""

    d: int
    linear: bool = True

    def compress(self, x, *, streams=None, round=0) -> Payload:
        n = x.shape[0]
        return Payload({"values": x}, torch.full((n,), VALUE_BYTES * self.d, dtype=torch.int64))

    def decompress(self, p: Payload) -> torch.Tensor:
        return p.tensors["values"]


@dataclass(frozen=True)
class TopK:
    """Top-k by magnitude over the whole vector (comp-ams.txt Definition 1).

    Wire: k float32 values and k uint32 indices, nbytes = k (4 + 4).
    Ties are broken by torch.topk; a kept entry that is exactly 0 is still sent.
    """

    d: int
    k: int
    linear: bool = False

    def compress(self, x, *, streams=None, round=0) -> Payload:
        n = x.shape[0]
        idx = torch.topk(x.abs(), self.k, dim=1, sorted=False).indices      # [n, k]
        vals = torch.gather(x, 1, idx)                                      # [n, k]
        nbytes = torch.full((n,), self.k * (VALUE_BYTES + INDEX_BYTES), dtype=torch.int64)
        return Payload({"values": vals, "indices": idx}, nbytes)

    def decompress(self, p: Payload) -> torch.Tensor:
        vals, idx = p.tensors["values"], p.tensors["indices"]
        out = torch.zeros(vals.shape[0], self.d, dtype=vals.dtype, device=vals.device)
        return out.scatter_(1, idx, vals)


class _Config(BaseModel):
    model_config = ConfigDict(extra="forbid")


@COMPRESSORS.register("none")
class NoneConfig(_Config):
    kind: Literal["none"] = "none"

    def build(self, ctx: Context) -> Compressor:
        return Identity(ctx.d)


@COMPRESSORS.register("topk")
class TopKConfig(_Config):
    kind: Literal["topk"] = "topk"
    ratio: float | None = Field(None, gt=0, le=1, description="fraction of coordinates kept, in (0, 1]")
    k: int | None = Field(None, ge=1, description="number of coordinates kept (instead of ratio)")

    @model_validator(mode="after")
    def _one_of(self):
        if (self.ratio is None) == (self.k is None):
            raise ValueError("give exactly one of ratio (in (0, 1]) or k (>= 1)")
        return self

    def build(self, ctx: Context) -> Compressor:
        # k = max(1, floor(ratio d)), as in the SASG reference code.
        k = self.k if self.k is not None else max(1, int(self.ratio * ctx.d))
        return TopK(ctx.d, min(k, ctx.d))


CompressorConfig = Annotated[Union[tuple(c for _, c in COMPRESSORS.items())], Field(discriminator="kind")]


@dataclass(frozen=True)
class ErrorFeedback:
    """Error feedback around any compressor (comp-ams.txt Algorithm 2, lines 7-8):

        p = x + e;   sent = C(p);   e' = p - D(sent)   (= e + x - x~)

    so ``D(sent) + e' == x + e`` exactly up to float rounding; the state ``e``
    ([n, d], one row per worker) goes in and comes out explicitly.
    """

    inner: Compressor

    @property
    def linear(self) -> bool:
        return self.inner.linear

    def init(self, n: int, d: int, device) -> torch.Tensor:
        return torch.zeros(n, d, device=device)

    def step(self, x: torch.Tensor, e: torch.Tensor, *, streams=None, round=0
             ) -> tuple[Payload, torch.Tensor, torch.Tensor]:
        """Returns (payload, decoded [n, d], new error [n, d])."""
        p = x + e
        payload = self.inner.compress(p, streams=streams, round=round)
        decoded = self.inner.decompress(payload)
        return payload, decoded, p - decoded
