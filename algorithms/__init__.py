"""The algorithm registry: ``kind`` in a scenario -> config class -> Algorithm.

Importing this package registers every algorithm; ``AlgorithmEntry`` is the
discriminated union the scenario schema validates ``algorithms:`` against.
"""
from __future__ import annotations

from typing import Annotated, Literal, Union

from pydantic import Field

from sim.registry import Registry

from .base import AlgorithmConfig, Context
from .compressors import COMPRESSORS, CompressorConfig, TopKConfig
from .optim import AmsGrad, Sgd
from .ps import ParameterServer

ALGORITHMS: Registry = Registry("algorithm")


@ALGORITHMS.register("sgd")
class SgdConfig(AlgorithmConfig):
    """Dense synchronous SGD: every worker sends its full gradient (4 d bytes),
    the server averages and steps."""

    kind: Literal["sgd"] = "sgd"

    def build(self, ctx: Context) -> ParameterServer:
        return ParameterServer(self.label, COMPRESSORS["none"]().build(ctx), Sgd(self.lr), False, ctx.n)


@ALGORITHMS.register("topk_ef_sgd")
class TopKEfSgdConfig(AlgorithmConfig):
    """Top-k sparsified SGD with error feedback on each worker (Stich et al.
    2018; Karimireddy et al. 2019).  EF acts on the gradient and the server
    applies lr, which equals the "p = lr g + e" form for a constant lr."""

    kind: Literal["topk_ef_sgd"] = "topk_ef_sgd"
    ratio: float = Field(0.01, gt=0, le=1, description="fraction of coordinates kept, in (0, 1]")

    def build(self, ctx: Context) -> ParameterServer:
        return ParameterServer(self.label, TopKConfig(ratio=self.ratio).build(ctx), Sgd(self.lr), True, ctx.n)


@ALGORITHMS.register("comp_ams")
class CompAmsConfig(AlgorithmConfig):
    """COMP-AMS (comp-ams.txt Algorithm 2): compressed gradients with error
    feedback on the workers, AMSGrad with max(v) on the server."""

    kind: Literal["comp_ams"] = "comp_ams"
    beta1: float = Field(0.9, ge=0, lt=1)
    beta2: float = Field(0.999, ge=0, lt=1)
    eps: float = Field(1e-8, gt=0)
    compressor: CompressorConfig = Field(default_factory=lambda: TopKConfig(ratio=0.01))
    error_feedback: bool = True

    def build(self, ctx: Context) -> ParameterServer:
        opt = AmsGrad(self.lr, self.beta1, self.beta2, self.eps)
        return ParameterServer(self.label, self.compressor.build(ctx), opt, self.error_feedback, ctx.n)


AlgorithmEntry = Annotated[Union[tuple(c for _, c in ALGORITHMS.items())], Field(discriminator="kind")]

__all__ = ["ALGORITHMS", "COMPRESSORS", "AlgorithmEntry", "AlgorithmConfig", "Context"]
