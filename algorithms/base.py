"""Shared shapes of the algorithm layer.

An algorithm is built from a config and a :class:`Context`; it exposes the
parameter-server round as pure-ish functions with explicit state (Optax
style): worker state is batched ``[n, ...]``, server state is per-run, and
each call returns the new state.  The engine moves the messages through the
simulated network between the calls.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Literal, Mapping, Protocol

import torch
from pydantic import BaseModel, ConfigDict, Field

from sim.learn.models import Block
from sim.learn.rng import WorkerStreams

from .schedules import Constant, ScheduleConfig

# Bytes of one float32 value on the wire.
VALUE_BYTES = 4
# Bytes of one coordinate index on the wire (uint32; enough for d < 2^32).
INDEX_BYTES = 4


@dataclass(frozen=True)
class Context:
    """What an algorithm may know about the run when it is built."""

    d: int                          # number of parameters
    n: int                          # number of workers
    blocks: tuple[Block, ...]       # layer layout of theta (for per-layer compressors)
    device: torch.device
    shard_sizes: tuple[int, ...] | None = None   # [n] training samples per worker (federated weights)
    seed: int = 0                   # the run's seed (seeded communication graphs, algorithms/gossip.py)


@dataclass(frozen=True)
class Payload:
    """An encoded batch of worker messages (row i is worker i's message).

    ``tensors`` is what the receiver decodes; ``nbytes[i]`` is the size of
    worker i's encoding on the wire, from the encoder's formula (headers are
    added by the network layer).
    """

    tensors: Mapping[str, torch.Tensor]
    nbytes: torch.Tensor  # [n] int64


@dataclass(frozen=True)
class Upload:
    """What the workers send this round.

    ``carries_gradient[i]`` False with ``sends[i]`` True is a skip notice (a
    header-only message); ``sends[i]`` False: worker i sends nothing at all.
    ``compute_factor[i]`` multiplies worker i's compute time this round (2 when
    it computed an auxiliary gradient, 0 when it computed nothing).
    """

    payload: Payload
    carries_gradient: torch.Tensor   # [n] bool: counts as an upload (not a skip notice)
    sends: torch.Tensor | None = None           # [n] bool, default all
    compute_factor: torch.Tensor | None = None  # [n] float, default 1


@dataclass(frozen=True)
class Downlink:
    """What the server broadcasts this round (the same message to every worker).

    ``delta`` [d], when the message is a parameter update, lets sharded servers
    size their slice exactly (each sends the cheaper of dense and sparse).
    """

    nbytes: int
    kind: str   # "params" | "update"
    delta: torch.Tensor | None = None

    def slice_bytes(self, bounds: list[tuple[int, int]], encode) -> list[int]:
        if len(bounds) == 1:
            return [self.nbytes]
        if self.delta is not None:
            return [encode(self.delta[a:b]) for a, b in bounds]
        d = bounds[-1][1]
        per = [self.nbytes * (b - a) // d for a, b in bounds]
        per[-1] += self.nbytes - sum(per)
        return per


class Algorithm(Protocol):
    name: str

    def init(self, theta: torch.Tensor) -> Any: ...

    summable: bool   # messages can be summed in transit (ring all-reduce)

    def worker_encode(self, state: Any, grads: torch.Tensor, round: int,
                      streams: WorkerStreams, active: torch.Tensor | None = None,
                      aux_grad: Any = None) -> tuple[Upload, Any]: ...
    # aux_grad(thetas [n, d]) -> [n, d]: each worker's gradient at its own
    # parameters on this round's minibatch (skip rules); its compute is charged
    # through Upload.compute_factor.

    def server_update(self, state: Any, theta: torch.Tensor, upload: Upload,
                      arrived: torch.Tensor, round: int) -> tuple[torch.Tensor, Downlink, Any]: ...


class AlgorithmConfig(BaseModel):
    """Fields every algorithm entry in a scenario has."""

    model_config = ConfigDict(extra="forbid", defer_build=True)
    name: str | None = Field(None, description="label in results and plots (default: kind)")
    lr: float = Field(gt=0, description="learning rate")
    lr_schedule: ScheduleConfig = Field(default_factory=Constant, description="lr_t = lr * factor(t)")
    wait_for: int | None = Field(
        None, ge=1, description="K-sync (Dutta et al. 2018): the synchronous server proceeds with the first K "
                                "uploads of a round; the other workers are interrupted, their work dropped")
    late: Literal["apply"] | None = Field(
        None, description="with round_timeout or wait_for: uploads that miss a round are applied in the next one, "
                          "one round stale (default: dropped; K-sync then interrupts the late workers)")
    # The parameter-server algorithms (algorithms/ps.py) can apply late uploads; set on their configs.
    late_apply: ClassVar[bool] = False

    # False for an algorithm whose math depends on when messages arrive
    # (asynchronous updates, deadlines inside the algorithm): trace replay
    # (sim/study/replay.py) refuses it: async_sgd, fedbuff and fedasync (event-driven, sim/eventsim.py).
    timing_independent: ClassVar[bool] = True

    @property
    def timing_dependent_why(self) -> str | None:
        """Why this entry's math depends on timing (replay refuses it), or None."""
        if not self.timing_independent:
            return f"algorithm {self.label!r} is not timing-independent (its updates depend on arrival times)"
        if self.wait_for is not None:
            return (f"algorithm {self.label!r} has wait_for: the first K uploads are kept, which ones depends "
                    "on timing")
        return None

    @property
    def label(self) -> str:
        return self.name or self.kind  # type: ignore[attr-defined]

    def lr_at(self, t: int) -> float:
        """The learning rate of round t."""
        return self.lr * self.lr_schedule.factor(t)

    def build(self, ctx: Context) -> Algorithm:  # pragma: no cover - abstract
        raise NotImplementedError
