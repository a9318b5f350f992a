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

The count is cached by the model config (its JSON), input shape and torch
version: in the process and in the start-up cache folder (sim/learn/cache.py),
since the first count imports ``torch._dynamo``, seconds of ``validate``.
"""
from __future__ import annotations

import json
from typing import Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field, PositiveFloat, model_validator
from torch.utils.flop_counter import FlopCounterMode

from sim.learn import cache
from sim.learn.models import FlatModel
from sim.registry import Registry
from sim.unitfields import Duration, Size
from topologies.spec import _dists, per_worker, per_worker_type

SpeedDist = _dists(PositiveFloat, "Speed")

COMPUTE_MODELS: Registry = Registry("compute model")


FLOPS_COUNT_VERSION = 1   # bump when count_forward_flops changes what it counts
_FLOPS_MEMO: dict[str, int] = {}  # flops_key JSON -> count, this process (a pure function's results)


def count_forward_flops(model: FlatModel) -> int:
    """FLOPs of one forward pass on one sample, counted by PyTorch (no cache).

    The first count in a process imports ``torch._dynamo`` (seconds)."""
    theta = torch.zeros(model.d)
    x = torch.zeros(1, *model.input_shape)
    with FlopCounterMode(display=False) as counter:
        model.forward(theta, x)
    return int(counter.get_total_flops())


def flops_key(model: FlatModel) -> dict | None:
    """What the count depends on: the model's config, input shape, classes and
    the torch version; None for a model not made by ``build_model``."""
    if model.config_json is None:
        return None
    return {"model": json.loads(model.config_json), "input_shape": list(model.input_shape),
            "num_classes": int(model.num_classes), "torch": torch.__version__, "count": FLOPS_COUNT_VERSION}


def forward_flops_per_sample(model: FlatModel) -> int:
    """:func:`count_forward_flops`, remembered in this process and in the start-up
    cache folder (sim/learn/cache.py) under :func:`flops_key`."""
    parts = flops_key(model)
    if parts is None:
        return count_forward_flops(model)
    memo = json.dumps(parts, sort_keys=True)
    if memo not in _FLOPS_MEMO:
        value = cache.cached_json("flops", parts, lambda: count_forward_flops(model))
        if isinstance(value, bool) or not isinstance(value, int):   # a damaged entry: count again
            value = count_forward_flops(model)
        _FLOPS_MEMO[memo] = value
    return _FLOPS_MEMO[memo]


class Stragglers(BaseModel):
    """Each worker, each step, independently: with ``probability`` the step
    takes ``slowdown`` times as long (drawn from the worker's own stream)."""

    model_config = ConfigDict(extra="forbid", defer_build=True)
    probability: float = Field(ge=0, le=1)
    slowdown: float = Field(ge=1)


class _Config(BaseModel):
    model_config = ConfigDict(extra="forbid", defer_build=True)
    speed: per_worker_type(PositiveFloat, SpeedDist) = Field(  # type: ignore[valid-type]
        1.0, description="per-worker speed factor: one number, a list of n, or a distribution "
                         "({dist: lognormal|uniform|choice, ...}); 0.5 = half as fast")
    stragglers: Stragglers | None = None
    memory_budget: Size | None = Field(
        None, description='memory a synchronous parameter-server round may hold, e.g. "8 GiB" (default: what '
                          'the device has free): when the whole [n, d] round does not fit, workers are processed '
                          'in chunks, with the same results (sim/learn/chunked.py)')
    state_dtype: Literal["float32", "bfloat16"] = Field(
        "float32", description="how per-worker state (error feedback, local momenta) is stored between rounds; "
                               "bfloat16 halves it and rounds it each round (results differ from float32)")
    state_store: Literal["auto", "device", "host", "disk"] = Field(
        "auto", description="where per-worker state lives between rounds when the round runs in chunks: device; "
                            "host (pinned memory, copied to the device chunk by chunk; on a CPU device the host "
                            "is the device); disk (a file in state_dir, read and written chunk by chunk, with "
                            "this round's uploads); auto: device, else host when a GPU is short (same results "
                            "in every store, sim/learn/rowstore.py)")
    state_dir: str | None = Field(
        None, description="folder for the state file of state_store: disk (default: the system's temporary "
                          "folder); it must have room for every worker's state and one round's uploads")

    @model_validator(mode="after")
    def _state_dir_for_disk(self):
        if self.state_dir is not None and self.state_store != "disk":
            raise ValueError(f"state_dir is the folder of state_store: disk, and state_store is "
                             f"{self.state_store!r}; allowed: state_store: disk, or leave state_dir unset")
        return self

    def speeds(self, n: int, rng: np.random.Generator) -> list[float]:
        return per_worker(self.speed, n, rng, "compute.speed")

    def step_times(self, model: FlatModel, batch_size: int, n: int, rng: np.random.Generator) -> list[float]:
        """Seconds per local step for each worker, [n] (before stragglers)."""
        base = self.base_step_s(model, batch_size)
        return [base / s for s in self.speeds(n, rng)]


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


ComputeConfig = COMPUTE_MODELS.config_union()   # plugins' kinds too (sim/registry.py)
