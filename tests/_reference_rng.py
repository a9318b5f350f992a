"""Frozen copy of sim/learn/rng.py as of commit aeb2e23 (the int64 lowbias32 before
issue 15's 32-bit hash), the reference the fast streams must match bit for bit
(tests/test_fast_paths.py).  Do not edit.
"""
from __future__ import annotations

import torch

_MASK32 = 0xFFFFFFFF
_C1 = 0x7FEB352D
_C2 = 0x846CA68B

# Purpose tags keep streams for different uses independent.
TAG_BATCH = 1
TAG_DROPOUT = 2
TAG_COMPRESS = 3
TAG_STRAGGLER = 4
TAG_SAMPLE = 5          # client sampling (algorithms/federated.py)
TAG_LOCAL = 6           # minibatches of local steps h >= 1 (sim/engine.py LocalSteps)


def _mul32_(x: torch.Tensor, c: int) -> torch.Tensor:
    """x <- (x * c) mod 2^32 in place, for 0 <= x < 2^32, exact in int64."""
    lo, hi = c & 0xFFFF, c >> 16
    t = x * hi
    t.bitwise_and_(0xFFFF).bitwise_left_shift_(16)
    return x.mul_(lo).add_(t).bitwise_and_(_MASK32)


def hash32(x: torch.Tensor) -> torch.Tensor:
    """lowbias32 on int64 tensors holding values in [0, 2^32) (a new tensor;
    the work is done in place on it to halve the temporaries)."""
    x = x.bitwise_and(_MASK32)
    x.bitwise_xor_(x >> 16)
    _mul32_(x, _C1)
    x.bitwise_xor_(x >> 15)
    _mul32_(x, _C2)
    x.bitwise_xor_(x >> 16)
    return x


def _absorb(h: torch.Tensor, word) -> torch.Tensor:
    return hash32(h ^ (word & _MASK32 if isinstance(word, torch.Tensor) else (int(word) & _MASK32)))


class RowStreams:
    """The WorkerStreams interface over rows of (worker, step) pairs: row r draws
    what ``workers[r]``'s stream draws for ``steps[r]``, whatever ``round`` the
    caller passes (compressors called by the event-driven engine, where the
    rows are at different steps)."""

    def __init__(self, streams: "WorkerStreams", workers: torch.Tensor, steps: torch.Tensor) -> None:
        self.streams, self.workers, self.steps = streams, workers, steps
        self.seed, self.device, self.n = streams.seed, streams.device, int(workers.shape[0])

    def bits(self, tag: int, round: int, shape: tuple[int, ...]) -> torch.Tensor:
        return self.streams.bits_at(tag, self.workers, self.steps, shape)

    def uniform(self, tag: int, round: int, shape: tuple[int, ...]) -> torch.Tensor:
        return to_uniform(self.bits(tag, round, shape))


def to_uniform(bits: torch.Tensor) -> torch.Tensor:
    """32-bit draws -> uniform floats in [0, 1), float32 (24 random bits, so every
    value is exact in float32 and 1.0 never occurs)."""
    return (bits >> 8).to(torch.float32) * (1.0 / 2**24)


class WorkerStreams:
    """Seeded random streams for n workers; every method is batched over workers."""

    def __init__(self, seed: int, n: int, device: torch.device | str = "cpu") -> None:
        self.seed = int(seed)
        self.n = int(n)
        self.device = torch.device(device)
        w = torch.arange(self.n, dtype=torch.int64, device=self.device)
        base = hash32(torch.full_like(w, self.seed & _MASK32) ^ 0x9E3779B9)
        self.keys = _absorb(base, w)  # [n] one key per worker

    def bits(self, tag: int, round: int, shape: tuple[int, ...]) -> torch.Tensor:
        """Uniform 32-bit integers, shape [n, *shape], as int64 in [0, 2^32)."""
        numel = 1
        for s in shape:
            numel *= s
        j = torch.arange(numel, dtype=torch.int64, device=self.device).view(1, *shape) if shape else \
            torch.zeros((1,), dtype=torch.int64, device=self.device)
        k = self.keys.view(self.n, *([1] * len(shape)))
        h = _absorb(_absorb(k, tag), round)
        return hash32(h ^ j)

    def bits_at(self, tag: int, workers: torch.Tensor, rounds: torch.Tensor, shape: tuple[int, ...],
                sub: int | None = None) -> torch.Tensor:
        """Row r is ``bits(tag, rounds[r], shape)[workers[r]]``: the draws of
        (worker, round) pairs in one call, shape [m, *shape] (event-driven
        runs, where workers are at different steps).  ``sub``: a further
        counter word absorbed after the round (local step h of a round)."""
        numel = 1
        for s in shape:
            numel *= s
        m = int(workers.shape[0])
        j = torch.arange(numel, dtype=torch.int64, device=self.device).view(1, *shape) if shape else \
            torch.zeros((1,), dtype=torch.int64, device=self.device)
        k = self.keys[workers.to(self.device)].view(m, *([1] * len(shape)))
        r = rounds.to(device=self.device, dtype=torch.int64).view(m, *([1] * len(shape)))
        h = _absorb(_absorb(k, tag), r)
        if sub is not None:
            h = _absorb(h, sub)
        return hash32(h ^ j)

    def randint_at(self, tag: int, workers: torch.Tensor, rounds: torch.Tensor, high: torch.Tensor,
                   count: int, sub: int | None = None) -> torch.Tensor:
        """Row r is ``randint(tag, rounds[r], high, count)[workers[r]]``; ``high`` [m]."""
        b = self.bits_at(tag, workers, rounds, (count,), sub)
        return (b * high.view(-1, 1).to(torch.int64)) >> 32

    def uniform(self, tag: int, round: int, shape: tuple[int, ...]) -> torch.Tensor:
        """Uniform floats in [0, 1), shape [n, *shape] (:func:`to_uniform`)."""
        return to_uniform(self.bits(tag, round, shape))

    def randint(self, tag: int, round: int, high: torch.Tensor, count: int) -> torch.Tensor:
        """For each worker i, ``count`` integers uniform in [0, high[i]) (with
        replacement), shape [n, count].  Lemire's multiply-shift: bias below
        high / 2^32, negligible for shard sizes."""
        b = self.bits(tag, round, (count,))
        return (b * high.view(-1, 1).to(torch.int64)) >> 32
