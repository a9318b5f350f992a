"""Compute-time models: how long a worker's local step takes in simulated time.

The host clock never enters: a step's duration is a function of the model and
the scenario only.

``flops``: forward FLOPs per sample are counted by ``torch.utils.flop_counter``
(2 FLOPs per multiply-accumulate of matmuls and convolutions); forward plus
backward is 3x the forward (the backward pass costs about twice the forward:
Kaplan et al. 2020, "Scaling Laws for Neural Language Models", Sec. 2.1,
C ~ 6N per token = 2N forward + 4N backward).  A step on b samples takes

    step_s = 3 * flops_fwd_per_sample * b / (device_tflops * 1e12 * efficiency)

divided by the worker's speed factor.  ``fixed``: a given time per step.
"""
from __future__ import annotations

from typing import Annotated, Literal, Union

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch.utils.flop_counter import FlopCounterMode

from .models import FlatModel
from .registry import Registry
from .unitfields import Duration

COMPUTE_MODELS: Registry = Registry("compute model")


def forward_flops_per_sample(model: FlatModel) -> int:
    """FLOPs of one forward pass on one sample, counted by PyTorch."""
    theta = torch.zeros(model.d)
    x = torch.zeros(1, *model.input_shape)
    with FlopCounterMode(display=False) as counter:
        model.forward(theta, x)
    return int(counter.get_total_flops())


class _Config(BaseModel):
    model_config = ConfigDict(extra="forbid")
    speed: Union[float, list[float]] = Field(
        1.0, description="per-worker speed factor (a list of n, or one for all); 0.5 = half as fast")

    def speeds(self, n: int) -> list[float]:
        s = self.speed if isinstance(self.speed, list) else [self.speed] * n
        if len(s) != n:
            raise ValueError(f"compute.speed lists {len(s)} values but there are {n} workers")
        if any(v <= 0 for v in s):
            raise ValueError("compute.speed values must be > 0")
        return [float(v) for v in s]

    def step_times(self, model: FlatModel, batch_size: int, n: int) -> list[float]:
        """Seconds per local step for each worker, [n]."""
        base = self.base_step_s(model, batch_size)
        return [base / s for s in self.speeds(n)]


@COMPUTE_MODELS.register("flops")
class FlopsCompute(_Config):
    kind: Literal["flops"] = "flops"
    device_tflops: float = Field(15.0, gt=0, description="peak device throughput, TFLOP/s")
    efficiency: float = Field(0.4, gt=0, le=1, description="fraction of peak reached")

    def base_step_s(self, model: FlatModel, batch_size: int) -> float:
        flops = 3 * forward_flops_per_sample(model) * batch_size
        return flops / (self.device_tflops * 1e12 * self.efficiency)


@COMPUTE_MODELS.register("fixed")
class FixedCompute(_Config):
    kind: Literal["fixed"] = "fixed"
    step_time: Duration = Field(description='seconds per local step, e.g. "20 ms"')

    def base_step_s(self, model: FlatModel, batch_size: int) -> float:
        return float(self.step_time)


ComputeConfig = Annotated[Union[tuple(c for _, c in COMPUTE_MODELS.items())], Field(discriminator="kind")]
