"""Learning-rate schedules: ``lr_t = lr * factor(t)`` for round t = 0, 1, ...

Every algorithm takes ``lr_schedule:`` (default constant).
"""
from __future__ import annotations

import math
from typing import Literal, Union

from pydantic import BaseModel, ConfigDict, Field

from sim.registry import Registry

SCHEDULES: Registry = Registry("learning-rate schedule")


class _Config(BaseModel):
    model_config = ConfigDict(extra="forbid", defer_build=True)


@SCHEDULES.register("constant")
class Constant(_Config):
    kind: Literal["constant"] = "constant"

    def factor(self, t: int) -> float:
        return 1.0


@SCHEDULES.register("step")
class StepDecay(_Config):
    """Multiply by ``gamma`` every ``every`` rounds (or at each of ``milestones``)."""

    kind: Literal["step"] = "step"
    gamma: float = Field(0.1, gt=0, le=1)
    every: int | None = Field(None, ge=1)
    milestones: list[int] = Field(default_factory=list)

    def factor(self, t: int) -> float:
        k = t // self.every if self.every else sum(1 for m in self.milestones if t >= m)
        return self.gamma ** k


@SCHEDULES.register("cosine")
class Cosine(_Config):
    """Cosine decay from 1 to ``final`` over ``rounds`` rounds (Loshchilov & Hutter 2017, no restarts)."""

    kind: Literal["cosine"] = "cosine"
    rounds: int = Field(ge=1)
    final: float = Field(0.0, ge=0, le=1)

    def factor(self, t: int) -> float:
        p = min(t, self.rounds) / self.rounds
        return self.final + (1 - self.final) * 0.5 * (1 + math.cos(math.pi * p))


@SCHEDULES.register("warmup")
class Warmup(_Config):
    """Linear warm-up from ``start`` to 1 over ``rounds`` rounds (Goyal et al. 2017), then ``then``."""

    kind: Literal["warmup"] = "warmup"
    rounds: int = Field(ge=1)
    start: float = Field(0.0, ge=0, le=1)
    then: Union[Constant, StepDecay, Cosine] = Field(default_factory=Constant, discriminator="kind")

    def factor(self, t: int) -> float:
        if t < self.rounds:
            return self.start + (1 - self.start) * t / self.rounds
        return self.then.factor(t - self.rounds)


ScheduleConfig = SCHEDULES.config_union()   # plugins' kinds too (sim/registry.py)
