"""Counter-based random streams, one per simulated worker, batched over workers.

Each worker owns a stream keyed by (scenario seed, worker index); a draw is a
pure function of (key, purpose tag, round, element index), so

* no global RNG is touched, and nothing is shared between workers;
* all n workers' draws come from one batched tensor expression (no loop over
  workers), on whatever device the data live;
* the numbers are identical on CPU and GPU and independent of how many other
  draws happened before (replaying round t needs no history).

The mixing function is Chris Wellons' ``lowbias32`` integer hash
(https://nullprogram.com/blog/2018/07/31/), chained over the counter words.
Why hand-written: torch.Generator is one scalar stream per object; a batch of
per-worker generators would force a Python loop over workers on the hot path.
The reference arithmetic is exact int64 (a 32-bit by 32-bit product split
into two products below 2^48).  The hot path computes the same function in
32-bit lanes (int32 tensors holding the 32 bits; issue 15), half the bytes and
fewer passes: multiplication mod 2^32 as int32 multiplication (two's
complement wrap, as the vector units do), the logical shift x >>> s as
(x >> s) & (2^(32-s) - 1), and x ^= x >>> 16 as one xor of the 16-bit halves.
The first xor-shift is linear over xor, so for the counter draws
hash32(h ^ j) it is applied to the per-row word h and the counter j before
they are combined.  Each device is checked once (:func:`fast32_ok`) against
the int64 reference on edge and random words; a device that fails uses the
int64 path, so the numbers never change.
"""
from __future__ import annotations

import sys

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


def hash32_int64(x: torch.Tensor) -> torch.Tensor:
    """lowbias32 on int64 tensors holding values in [0, 2^32): the reference
    arithmetic (exact int64; a new tensor, the work done in place on it)."""
    x = x.bitwise_and(_MASK32)
    x.bitwise_xor_(x >> 16)
    _mul32_(x, _C1)
    x.bitwise_xor_(x >> 15)
    _mul32_(x, _C2)
    x.bitwise_xor_(x >> 16)
    return x


# --- the same hash in 32-bit lanes ----------------------------------------------

def _signed32(v: int) -> int:
    """The int32 whose bits are the 32-bit word v."""
    v &= _MASK32
    return v - (1 << 32) if v >= 1 << 31 else v


_C1_I32, _C2_I32 = _signed32(_C1), _signed32(_C2)
_LITTLE = sys.byteorder == "little"


def _xorshift16_(x: torch.Tensor) -> torch.Tensor:
    """x ^= x >>> 16 in place on a contiguous int32 tensor: the low 16-bit half
    of every word ^= its high half (little-endian halves), one strided op."""
    halves = x.view(-1).view(torch.int16).view(-1, 2)
    halves[:, 0].bitwise_xor_(halves[:, 1])
    return x


def _xorshift_(x: torch.Tensor, s: int, tmp: torch.Tensor) -> torch.Tensor:
    """x ^= x >>> s in place (logical shift) on int32, ``tmp`` a scratch like x."""
    torch.bitwise_right_shift(x, s, out=tmp)
    tmp.bitwise_and_((1 << (32 - s)) - 1)
    return x.bitwise_xor_(tmp)


def _rounds32_(x: torch.Tensor, tmp: torch.Tensor | None = None) -> torch.Tensor:
    """The lowbias32 steps after the first xor-shift, in place on a contiguous
    int32 tensor: x *= C1; x ^= x >>> 15; x *= C2; x ^= x >>> 16 (mod 2^32);
    ``tmp``: a scratch tensor like x (a new one if None)."""
    x.mul_(_C1_I32)
    _xorshift_(x, 15, torch.empty_like(x) if tmp is None else tmp)
    x.mul_(_C2_I32)
    return _xorshift16_(x)


# Row chunks on the CPU: a chunk's words stay in the core's cache through all
# the rounds, and the scratch is one chunk, not a second [n, d] tensor (a
# fresh [n, d] tensor costs about one pass in page faults alone).  Elementwise
# work only, so chunking never changes a value; other devices get one chunk.
CHUNK_WORDS = 1 << 19          # 2 MiB of int32 words per chunk


def chunk_rows(rows: int, row_elems: int, device) -> int:
    """Rows per chunk: about CHUNK_WORDS elements on the CPU, all rows elsewhere."""
    if torch.device(device).type != "cpu":
        return max(1, rows)
    return max(1, min(rows, CHUNK_WORDS // max(1, row_elems)))


def _first32(v: torch.Tensor) -> torch.Tensor:
    """int64 words in [0, 2^32) -> L(v) = v ^ (v >>> 16) as int32 bits (small tensors)."""
    v = v.bitwise_and(_MASK32)
    return _to_int32_exact(v.bitwise_xor_(v >> 16))


def hash32_i32(x: torch.Tensor) -> torch.Tensor:
    """lowbias32 of int32 words (the 32 bits, read unsigned), as int32 bits; a
    new contiguous tensor.  Only on a device where :func:`fast32_ok` holds."""
    x = x.clone(memory_format=torch.contiguous_format)
    return _rounds32_(_xorshift16_(x))


def to_int64(bits32: torch.Tensor) -> torch.Tensor:
    """int32 bits -> the int64 in [0, 2^32) they spell (a new tensor)."""
    return bits32.to(torch.int64).bitwise_and_(_MASK32)


def _to_int32_exact(v: torch.Tensor) -> torch.Tensor:
    """int64 words in [0, 2^32) -> int32 bits, by value (no reliance on wrap)."""
    return torch.where(v >= 1 << 31, v - (1 << 32), v).to(torch.int32)


def to_uniform(bits: torch.Tensor) -> torch.Tensor:
    """32-bit draws -> uniform floats in [0, 1), float32 (24 random bits, so every
    value is exact in float32 and 1.0 never occurs)."""
    return (bits >> 8).to(torch.float32) * (1.0 / 2**24)


def _uniform_shift32(bits32: torch.Tensor) -> torch.Tensor:
    v = bits32 >> 8
    return v.bitwise_and_(0xFFFFFF).to(torch.float32).mul_(1.0 / 2**24)


def uniform_from32_(bits32: torch.Tensor) -> torch.Tensor:
    """:func:`to_uniform` of draws given as int32 bits, consuming ``bits32``
    (it may be overwritten).  u & ~0xFF is a multiple of 256 below 2^32, so its
    float32 is exact, and times 2^-32 it is (u >>> 8) 2^-24 exactly."""
    if _fast32(bits32.device)["u32float"]:
        return bits32.bitwise_and_(-256).view(torch.uint32).to(torch.float32).mul_(1.0 / 2**32)
    return _uniform_shift32(bits32)


_FAST32: dict[str, dict[str, bool]] = {}


def _check_words(device) -> torch.Tensor:
    edges = [0, 1, 2, 0xFF, 0x100, 0x7FFF, 0x8000, 0xFFFF, 0x10000, 0x1FFFF, 0x7FFFFFFF, 0x80000000,
             0x80000001, 0xFFFF0000, 0xFFFFFF00, 0xFFFFFFFE, 0xFFFFFFFF, _C1, _C2]
    g = torch.Generator().manual_seed(15)
    rnd = torch.randint(0, 1 << 32, (70001,), dtype=torch.int64, generator=g)  # vector body, tail, threads
    return torch.cat([torch.tensor(edges, dtype=torch.int64), rnd]).to(device)


def _fast32(device) -> dict[str, bool]:
    """Which 32-bit paths give the int64 reference's results on ``device``,
    checked once per device type on 70,020 edge and random words (whatever
    raises or differs is not used): ``hash``, the 32-bit hash (int32
    multiplication wrap and int64 -> int32 conversion included), and
    ``u32float``, uint32 -> float32 conversion (rounded as int64 -> float32
    rounds; exact for the uniforms) and uint32 -> float64 (exact)."""
    key = torch.device(device).type
    if key not in _FAST32:
        res = {"hash": False, "u32float": False}
        w = _check_words(device)
        ref = hash32_int64(w)
        if _LITTLE:
            try:
                ok = torch.equal(to_int64(hash32_i32(w.to(torch.int32))), ref)
                h, j = w[:2].view(2, 1), w[2:].view(1, -1)                  # the split first round
                x = torch.bitwise_xor(_first32(h), _first32(j))
                res["hash"] = bool(ok and torch.equal(to_int64(_rounds32_(x)), hash32_int64(h ^ j)))
            except (RuntimeError, NotImplementedError, TypeError):
                pass
        try:
            b = _to_int32_exact(ref)
            u64 = torch.empty(b.shape, dtype=torch.float64, device=b.device).copy_(b.view(torch.uint32))
            u32 = b.view(torch.uint32).to(torch.float32)
            b.bitwise_and_(-256)
            res["u32float"] = bool(torch.equal(b.view(torch.uint32).to(torch.float32).mul_(1.0 / 2**32),
                                               to_uniform(ref)) and torch.equal(u64, ref.double())
                                   and torch.equal(u32, ref.to(torch.float32)))
        except (RuntimeError, NotImplementedError, TypeError):
            pass
        _FAST32[key] = res
    return _FAST32[key]


def fast32_ok(device) -> bool:
    """Whether the 32-bit hash is used on ``device`` (see :func:`_fast32`)."""
    return _fast32(device)["hash"]


def hash32(x: torch.Tensor) -> torch.Tensor:
    """lowbias32 on int64 tensors holding values in [0, 2^32) (a new tensor):
    in 32-bit lanes where :func:`fast32_ok` (large tensors), else the int64
    reference; the same words either way."""
    if x.numel() >= 4096 and fast32_ok(x.device):
        return to_int64(hash32_i32(x.bitwise_and(_MASK32).to(torch.int32)))
    return hash32_int64(x)


def counter_bits32(h: torch.Tensor, j: torch.Tensor) -> torch.Tensor:
    """hash32(h ^ j) as int32 bits, for int64 words in [0, 2^32) that broadcast
    (h: one per row, [m, 1, ...] or [m]; j: the element counter [1, *shape]
    or [1]); a new contiguous tensor."""
    if not fast32_ok(h.device):
        return _to_int32_exact(hash32_int64(h ^ j))
    x = torch.bitwise_xor(_first32(h), _first32(j))          # L(h ^ j) = L(h) ^ L(j)
    x = x if x.is_contiguous() else x.contiguous()
    m = x.shape[0] if x.dim() else 1
    flat = x.view(m, -1)
    r = chunk_rows(m, flat.shape[1], x.device)
    tmp = torch.empty((r, flat.shape[1]), dtype=torch.int32, device=x.device)
    for a in range(0, m, r):
        b = min(m, a + r)
        _rounds32_(flat[a:b], tmp[: b - a])
    return x


def counter_chunks32(h: torch.Tensor, j: torch.Tensor):
    """:func:`counter_bits32` row chunk by row chunk: yields (start, stop,
    words), words the rows start..stop as int32 [stop - start, *shape] in a
    scratch buffer that the next chunk overwrites (copy what must outlive it)."""
    shape = tuple(j.shape[1:])
    m = int(h.shape[0])
    if not fast32_ok(h.device):
        full = counter_bits32(h, j)
        r = chunk_rows(m, full[0].numel() if m else 1, h.device)
        for a in range(0, m, r):
            yield a, min(m, a + r), full[a:a + r]
        return
    numel = j.numel()
    hw, jw = _first32(h).reshape(m, 1), _first32(j).reshape(1, numel)
    r = chunk_rows(m, numel, h.device)
    buf = torch.empty((min(r, m), numel), dtype=torch.int32, device=h.device)
    tmp = torch.empty_like(buf)
    for a in range(0, m, r):
        b = min(m, a + r)
        w = buf[: b - a]
        torch.bitwise_xor(hw[a:b], jw, out=w)
        _rounds32_(w, tmp[: b - a])
        yield a, b, w.view(b - a, *shape) if shape else w.view(b - a)


def _absorb(h: torch.Tensor, word) -> torch.Tensor:
    return hash32_int64(h ^ (word & _MASK32 if isinstance(word, torch.Tensor) else (int(word) & _MASK32)))


def _counter(shape: tuple[int, ...], device) -> torch.Tensor:
    numel = 1
    for s in shape:
        numel *= s
    return torch.arange(numel, dtype=torch.int64, device=device).view(1, *shape) if shape else \
        torch.zeros((1,), dtype=torch.int64, device=device)


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

    def bits32(self, tag: int, round: int, shape: tuple[int, ...]) -> torch.Tensor:
        return self.streams.bits_at32(tag, self.workers, self.steps, shape)

    def bits32_chunks(self, tag: int, round: int, shape: tuple[int, ...]):
        return self.streams.bits_at32_chunks(tag, self.workers, self.steps, shape)

    def uniform(self, tag: int, round: int, shape: tuple[int, ...]) -> torch.Tensor:
        return uniform_from32_(self.bits32(tag, round, shape))


def bits32_of(streams, tag: int, round: int, shape: tuple[int, ...]) -> torch.Tensor:
    """``streams.bits32(...)`` where the streams object has it, else its
    ``bits(...)`` (int64 in [0, 2^32)) as int32 bits: any object with the
    WorkerStreams ``bits`` method works."""
    f = getattr(streams, "bits32", None)
    return f(tag, round, shape) if f is not None else _to_int32_exact(streams.bits(tag, round, shape))


def chunks32_of(streams, tag: int, round: int, shape: tuple[int, ...]):
    """``streams.bits32_chunks(...)`` where the streams object has it, else
    one chunk of :func:`bits32_of`: (start, stop, int32 words) per row chunk."""
    f = getattr(streams, "bits32_chunks", None)
    if f is not None:
        yield from f(tag, round, shape)
        return
    w = bits32_of(streams, tag, round, shape)
    yield 0, int(w.shape[0]), w


class WorkerStreams:
    """Seeded random streams for n workers; every method is batched over workers."""

    def __init__(self, seed: int, n: int, device: torch.device | str = "cpu") -> None:
        self.seed = int(seed)
        self.n = int(n)
        self.device = torch.device(device)
        w = torch.arange(self.n, dtype=torch.int64, device=self.device)
        base = hash32_int64(torch.full_like(w, self.seed & _MASK32) ^ 0x9E3779B9)
        self.keys = _absorb(base, w)  # [n] one key per worker

    def rows(self, a: int, b: int) -> "WorkerStreams":
        """The streams of workers a .. b-1 as a stream set of b - a workers
        (row r is worker a + r): every draw of row r is worker a + r's draw, so
        a round processed in chunks of workers (sim/learn/chunked.py) draws
        what the [n]-row call draws."""
        out = object.__new__(WorkerStreams)
        out.seed, out.n, out.device = self.seed, int(b - a), self.device
        out.keys = self.keys[a:b]
        return out

    def _words(self, tag: int, round: int, ndim: int) -> torch.Tensor:
        k = self.keys.view(self.n, *([1] * ndim))
        return _absorb(_absorb(k, tag), round)

    def bits32(self, tag: int, round: int, shape: tuple[int, ...]) -> torch.Tensor:
        """:meth:`bits` as int32 bits (the same 32 bits in half the memory)."""
        return counter_bits32(self._words(tag, round, len(shape)), _counter(shape, self.device))

    def bits32_chunks(self, tag: int, round: int, shape: tuple[int, ...]):
        """:meth:`bits32` by row chunks (:func:`counter_chunks32`)."""
        return counter_chunks32(self._words(tag, round, len(shape)), _counter(shape, self.device))

    def bits(self, tag: int, round: int, shape: tuple[int, ...]) -> torch.Tensor:
        """Uniform 32-bit integers, shape [n, *shape], as int64 in [0, 2^32)."""
        return to_int64(self.bits32(tag, round, shape))

    def bits_at32(self, tag: int, workers: torch.Tensor, rounds: torch.Tensor, shape: tuple[int, ...],
                  sub: int | None = None) -> torch.Tensor:
        """:meth:`bits_at` as int32 bits."""
        return counter_bits32(self._words_at(tag, workers, rounds, len(shape), sub), _counter(shape, self.device))

    def bits_at32_chunks(self, tag: int, workers: torch.Tensor, rounds: torch.Tensor, shape: tuple[int, ...],
                         sub: int | None = None):
        """:meth:`bits_at32` by row chunks (:func:`counter_chunks32`)."""
        return counter_chunks32(self._words_at(tag, workers, rounds, len(shape), sub), _counter(shape, self.device))

    def _words_at(self, tag: int, workers: torch.Tensor, rounds: torch.Tensor, ndim: int,
                  sub: int | None) -> torch.Tensor:
        m = int(workers.shape[0])
        k = self.keys[workers.to(self.device)].view(m, *([1] * ndim))
        r = rounds.to(device=self.device, dtype=torch.int64).view(m, *([1] * ndim))
        h = _absorb(_absorb(k, tag), r)
        return _absorb(h, sub) if sub is not None else h

    def bits_at(self, tag: int, workers: torch.Tensor, rounds: torch.Tensor, shape: tuple[int, ...],
                sub: int | None = None) -> torch.Tensor:
        """Row r is ``bits(tag, rounds[r], shape)[workers[r]]``: the draws of
        (worker, round) pairs in one call, shape [m, *shape] (event-driven
        runs, where workers are at different steps).  ``sub``: a further
        counter word absorbed after the round (local step h of a round)."""
        return to_int64(self.bits_at32(tag, workers, rounds, shape, sub))

    def randint_at(self, tag: int, workers: torch.Tensor, rounds: torch.Tensor, high: torch.Tensor,
                   count: int, sub: int | None = None) -> torch.Tensor:
        """Row r is ``randint(tag, rounds[r], high, count)[workers[r]]``; ``high`` [m]."""
        b = self.bits_at(tag, workers, rounds, (count,), sub)
        return (b * high.view(-1, 1).to(torch.int64)) >> 32

    def uniform(self, tag: int, round: int, shape: tuple[int, ...]) -> torch.Tensor:
        """Uniform floats in [0, 1), shape [n, *shape] (:func:`to_uniform`)."""
        return uniform_from32_(self.bits32(tag, round, shape))

    def randint(self, tag: int, round: int, high: torch.Tensor, count: int) -> torch.Tensor:
        """For each worker i, ``count`` integers uniform in [0, high[i]) (with
        replacement), shape [n, count].  Lemire's multiply-shift: bias below
        high / 2^32, negligible for shard sizes."""
        b = self.bits(tag, round, (count,))
        return (b * high.view(-1, 1).to(torch.int64)) >> 32
