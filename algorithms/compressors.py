"""Gradient compressors, batched over workers, with exact wire sizes.

A compressor maps x [n, d] (row i is worker i's vector) to a :class:`Payload`
(what would be sent, and its size in bytes per worker from the formula next to
the code) and decodes a payload back to [n, d] (what the receiver
reconstructs).  ``linear`` says whether payloads can be summed in compressed
form (ring all-reduce).  Every compressor works on all n workers in one tensor
expression; randomness comes only from the workers' counter-based streams
(``streams.bits/uniform(TAG_COMPRESS, round, ...)``), so a round replays
exactly and no global RNG is touched.  Error feedback is a wrapper
(:class:`ErrorFeedback`), not a subclass.

Wire sizes per worker message (headers are added by the network layer; a value
is a float32, VALUE_BYTES = 4; ``ceil`` rounds a bit count up to whole bytes
once per message):

==============  ==============================================================
none            4 d
topk            ceil(k (32 + ib) / 8);  k = max(1, floor(ratio d)) or the given
                k; scope: layer -> k = sum_b max(1, floor(ratio d_b))
randomk         ceil(k (32 + ib) / 8)
threshold       ceil(nnz_i (32 + ib) / 8),  nnz_i = #{j : |x_ij| >= tau}
mvss            ceil(nnz_i (32 + ib) / 8),  nnz_i = #{j : Z_ij = 1} (random)
block_sign      ceil(d / 8) + 4 M           (M blocks)
scaled_sign     ceil(d / 8) + 4
sign            ceil(d / 8)
qsgd            ceil(d (1 + ceil(log2(s + 1))) / 8) + 4 ceil(d / bucket_size)
terngrad        ceil(2 d / 8) + 4 L         (L layers; 2-bit ternary symbols)
fp16, bf16      2 d
int8            d + 4 L                     (L layers)
==============  ==============================================================

``L`` is the number of non-empty layers (the blocks of ``ctx.blocks``; 1 when
the context has no layout).  ``linear`` is False for every entry but none and
randomk with shared_seed (fp16 partial sums would round at every hop).

``ib`` is the index cost per kept entry, the ``index_bits`` setting of every
index-based compressor: 32 (a uint32 per index, so 8 bytes per kept entry, the
SASG/GRACE convention; default), "log2d" (ceil(log2 d) bits per index into the
flat d-vector, bit-packed together with the 32-bit values), or 0 (indices not
counted, as some papers assume, e.g. comp-ams.txt's ~100x for top-k 1%).  With
32 or 0 the rounding never bites (whole bytes per entry).  The number of kept
entries of a variable-size message (threshold, mvss) is implied by the
message length, which the header carries.

Sign convention: one bit cannot encode three values, so every sign-based
compressor (block_sign, scaled_sign, sign, and qsgd's sign bit) sends bit 1 for
x >= 0 and bit 0 for x < 0, i.e. sign(0) = +1, and decodes exactly what the bit
says (a 0 input decodes to +scale, not to 0 as torch.sign would give).

Fast paths (issue 15): every compressor gives, bit for bit, what its first,
plain tensor expression gave (frozen in tests/_reference_compressors.py and
checked by tests/test_fast_paths.py).  The per-element work runs by row chunks
that stay in the core's cache (:func:`sim.learn.rng.chunk_rows`; one chunk on
other devices, i.e. the old whole-tensor ops), in place on the outputs, with
the random draws as int32 words straight from the stream's 32-bit hash
(:func:`sim.learn.rng.chunks32_of`); mixed-dtype ops run on float64 copies of
chunks; a reduction runs on the old shape, or per chunk where each reduced
slice is summed alone as it was among the others (never one output alone out
of several, which torch may split across threads).  Inputs where an equivalence needs finite values (a NaN or an
infinity in mvss, terngrad, int8; non-finite qsgd norms) take the old code.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar, Literal, Protocol

import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator

from sim.registry import Registry
from sim.learn.rng import (TAG_COMPRESS, WorkerStreams, _fast32, _uniform_shift32, chunk_rows, chunks32_of,
                           to_int64)

from .base import INDEX_BYTES, VALUE_BYTES, Context, Payload

COMPRESSORS: Registry = Registry("compressor")  # kind -> config class with .build(ctx)

IndexBits = Literal[32, "log2d", 0]


class Compressor(Protocol):
    linear: bool   # can payloads be summed in compressed form?

    def compress(self, x: torch.Tensor, *, streams: WorkerStreams | None = None,
                 round: int = 0) -> Payload: ...

    def decompress(self, p: Payload) -> torch.Tensor: ...


# --- shared pieces ---------------------------------------------------------------

def ceil_log2(d: int) -> int:
    """ceil(log2 d) for d >= 1 (0 for d = 1: a single index needs no bits)."""
    return max(0, int(d) - 1).bit_length()


def index_bits_per_entry(index_bits: IndexBits, d: int) -> int:
    """Bits of one index on the wire: 32 (uint32), ceil(log2 d) ("log2d") or 0."""
    if index_bits == "log2d":
        return ceil_log2(d)
    if index_bits == 32:
        return 8 * INDEX_BYTES
    if index_bits == 0:
        return 0
    raise ValueError(f"index_bits must be 32, 'log2d' or 0, got {index_bits!r}")


def sparse_bytes(nnz: torch.Tensor | int, d: int, index_bits: IndexBits) -> torch.Tensor:
    """Bytes of a message of ``nnz`` (value, index) pairs, bit-packed, rounded up
    to whole bytes once per message:  ceil(nnz (32 + ib) / 8).

    ib = 32 gives nnz (4 + 4) = nnz (VALUE_BYTES + INDEX_BYTES); ib = 0 gives 4 nnz."""
    bits = 8 * VALUE_BYTES + index_bits_per_entry(index_bits, d)
    nnz = torch.as_tensor(nnz, dtype=torch.int64).cpu()
    return (nnz * bits + 7) // 8


def sign_bytes(d: int) -> int:
    """d sign bits packed into whole bytes: ceil(d / 8)."""
    return (d + 7) // 8


def _full(n: int, nbytes: int) -> torch.Tensor:
    return torch.full((n,), int(nbytes), dtype=torch.int64)


def _scatter(d: int, vals: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    out = torch.zeros(vals.shape[0], d, dtype=vals.dtype, device=vals.device)
    return out.scatter_(1, idx, vals)


def _plus_minus_one(pos: torch.Tensor, dtype: torch.dtype, then=None) -> torch.Tensor:
    """+1.0 where ``pos`` [n, ...], else -1.0 (exactly pos.to(dtype) * 2 - 1), in
    one new tensor: the bools read as int8 (0 / 1), doubled and shifted to -1 / +1
    in int8 (exact, a quarter of the bytes of the float passes it replaces), then
    converted once into the output, row chunk by row chunk so that each chunk is
    in cache for every step; ``then(chunk, lo, hi)``, if given, finishes rows
    lo..hi in place (elementwise steps only: chunking never changes a value)."""
    out = torch.empty(pos.shape, dtype=dtype, device=pos.device)
    if pos.dim() < 2:
        out.copy_(torch.mul(pos.view(torch.int8), 2).sub_(1))
        if then is not None:
            then(out, 0, out.shape[0] if pos.dim() else 1)
        return out
    n = pos.shape[0]
    r = chunk_rows(n, out[0].numel() if n else 1, pos.device)
    s8 = torch.empty((min(r, n),) + tuple(pos.shape[1:]), dtype=torch.int8, device=pos.device)
    for lo in range(0, n, r):
        hi = min(n, lo + r)
        oc, sc = out[lo:hi], s8[: hi - lo]
        torch.mul(pos[lo:hi].view(torch.int8), 2, out=sc).sub_(1)
        oc.copy_(sc)
        if then is not None:
            then(oc, lo, hi)
    return out


def _need_streams(streams: WorkerStreams | None, who: str) -> WorkerStreams:
    if streams is None:
        raise ValueError(f"{who} is random: pass the workers' streams (streams=WorkerStreams(...))")
    return streams


def layer_bounds(ctx: Context) -> tuple[tuple[int, int], ...]:
    """The (start, stop) of every non-empty block of ``ctx.blocks`` (the layers);
    one block [0, d) when the context has no layout.  The blocks must tile [0, d)."""
    if not ctx.blocks:
        return ((0, ctx.d),)
    bounds, pos = [], 0
    for b in ctx.blocks:
        if b.start != pos or b.stop < b.start:
            raise ValueError(f"blocks must tile [0, d) in order; block {b.name!r} is [{b.start}, {b.stop})")
        if b.stop > b.start:
            bounds.append((b.start, b.stop))
        pos = b.stop
    if pos != ctx.d:
        raise ValueError(f"blocks cover [0, {pos}) but d = {ctx.d}")
    return tuple(bounds)


def _padded_view(x: torch.Tensor, size: int) -> torch.Tensor:
    """x [n, d] -> [n, ceil(d/size), size], zero-padded at the end."""
    n, d = x.shape
    m = -(-d // size)
    if m * size != d:
        x = torch.nn.functional.pad(x, (0, m * size - d))
    return x.view(n, m, size)


# --- exact top-k of |x| per row, fast path --------------------------------------

TOPK_BLOCK = 8           # entries per block of the candidate search
TOPK_SAMPLE = 4096       # block maxima sampled per row to place the threshold
TOPK_SIGMAS = 4.0        # margin of the sampled threshold, in binomial standard deviations
TOPK_MIN_D = 1 << 14     # below this row length torch.topk is used directly
TOPK_MAX_DENSITY = 1 / 32   # and above this k / d too (nearly every block would be a candidate)


def topk_abs_indices(x: torch.Tensor, k: int, *, sample: int | None = None, sigmas: float | None = None
                     ) -> torch.Tensor:
    """The indices [n, k] of the k largest |x_ij| of every row: the same set, per
    row, as ``torch.topk(x.abs(), k, dim=1).indices`` (including torch.topk's
    choice among ties at the k-th value), in an unspecified order.

    Fast path (rows of at least TOPK_MIN_D entries and k <= d / 32; all rows at
    once, no loop over rows, the same ops on every device): split row i into
    L = floor(d / B) blocks {j + b L : b < B} and take the block maxima m_ij of
    |x| (two reductions that read x once).  A threshold t_i (a high order
    statistic of a sample of row i's block maxima) is accepted once at least k
    blocks have m_ij >= t_i (else t_i is the k-th largest block maximum, exact);
    then row i has at least k entries with |x| >= t_i, so its top k are all
    >= t_i and all lie in the candidate blocks.  The candidates (entries >= t_i
    of those blocks, plus the d - B L entries of the ragged end) are packed into
    a padded [n, m] matrix and torch.topk picks k of them.  If the k-th value
    among the candidates is tied (more than k candidates reach it), the choice
    among the tied entries would be torch.topk's on a different input, so those
    rows are recomputed with torch.topk on the full row: ties never change the
    result.  Otherwise the top-k set is unique and equal to torch.topk's.
    ``sample`` and ``sigmas`` override TOPK_SAMPLE and TOPK_SIGMAS (they only
    change the speed, never the result).
    """
    n, d = x.shape
    B = TOPK_BLOCK
    L = d // B
    if d < max(TOPK_MIN_D, 2 * B) or k > d * TOPK_MAX_DENSITY or k > L:
        return torch.topk(x.abs(), k, dim=1, sorted=False).indices
    sample = TOPK_SAMPLE if sample is None else sample
    sigmas = TOPK_SIGMAS if sigmas is None else sigmas
    if x.stride(1) != 1:
        x = x.contiguous()
    dev = x.device
    v = x[:, : B * L].view(n, B, L)                                  # block j of row i: x[i, j + b L]
    bm = torch.maximum(v.amax(1), v.amin(1).neg_())                  # [n, L] max |x| per block
    bs = bm[:, :: max(1, L // sample)]                               # [n, S] sampled block maxima
    S, q = bs.shape[1], k / L
    r = max(1, min(S, math.ceil(q * S + sigmas * math.sqrt(q * S)) + 1))
    t = torch.topk(bs, r, dim=1, sorted=False).values.amin(1, keepdim=True)     # [n, 1]
    rb, blk = (bm >= t).nonzero(as_tuple=True)                       # candidate blocks, row-major
    short = torch.bincount(rb, minlength=n) < k
    if bool(short.any()):                                            # too few blocks reach t_i
        rows = short.nonzero().squeeze(1)
        t[rows] = torch.topk(bm[rows], k, dim=1, sorted=False).values.amin(1, keepdim=True)
        rb, blk = (bm >= t).nonzero(as_tuple=True)
    a = v.permute(0, 2, 1)[rb, blk].abs_()                           # [Cb, B] |x| of the candidate blocks
    p = (a >= t.index_select(0, rb)).view(-1).nonzero().squeeze(1)    # the entries >= t_i
    bi = p // B
    row = rb.index_select(0, bi)
    col = blk.index_select(0, bi) + (p - bi * B) * L
    counts = torch.bincount(row, minlength=n)
    pos = torch.arange(row.numel(), device=dev) - (counts.cumsum(0) - counts).index_select(0, row)
    m, tail = int(counts.max()), d - B * L
    cand = torch.full((n, m + tail), -1.0, dtype=x.dtype, device=dev)     # -1: padding, below any |x|
    cand.index_put_((row, pos), a.view(-1).index_select(0, p))
    where = torch.empty((n, m + tail), dtype=torch.int64, device=dev)
    where.index_put_((row, pos), col)
    if tail:                                                         # the ragged end: always candidates
        cand[:, m:] = x[:, B * L:].abs()
        where[:, m:] = torch.arange(B * L, d, device=dev)
    top, sel = torch.topk(cand, k, dim=1, sorted=False)
    idx = torch.gather(where, 1, sel)
    tied = (cand >= top.amin(1, keepdim=True)).sum(1) != k
    if bool(tied.any()):
        rows = tied.nonzero().squeeze(1)
        idx[rows] = torch.topk(x[rows].abs(), k, dim=1, sorted=False).indices
    return idx


# --- the k largest random keys per row (RandomK), fast path ---------------------

RANDK_SIGMAS = 4.0       # candidates expected beyond k, in binomial standard deviations


def largest_keys(chunks, d: int, k: int, device) -> torch.Tensor:
    """For the 32-bit draws u [m, d] of ``chunks`` ((start, stop, int32 words)
    row chunks, :func:`sim.learn.rng.chunks32_of`), the columns [m, k] of the
    k largest keys u_ij d + j of every row (all distinct): what
    ``torch.topk(keys, k, dim=1, sorted=False).indices`` gives, in its order.

    When 64 k <= d, torch.topk on the CPU partial-sorts (TopKImpl.h), so its
    order is by decreasing key.  Then a threshold t >= 2^31 with about
    k + 4 sqrt(k) + 16 draws expected at or above it picks the candidates
    (u >= t, read off the int32 words w as t - 2^32 <= w < 0, chunk by chunk),
    whose keys are packed into a padded [m, c] matrix and sorted by
    torch.topk(sorted=True).  Since u dominates the key, the top k keys all
    have u >= t when at least k draws do, so the set and the order are
    torch.topk's; a row with fewer than k candidates (probability about 3e-5)
    takes torch.topk over all its keys.  When 64 k > d all keys go to
    torch.topk, as before.
    """
    ar = torch.arange(d, dtype=torch.int64, device=device)

    def full(words: torch.Tensor) -> torch.Tensor:
        keys = to_int64(words.to(device)).mul_(d).add_(ar)
        return torch.topk(keys, k, dim=1, sorted=False).indices

    if 64 * k > d:
        tops = [full(w) for _, _, w in chunks]
        return torch.cat(tops) if tops else torch.empty((0, k), dtype=torch.int64, device=device)
    q = min(0.5, (k + RANDK_SIGMAS * math.sqrt(k) + 16) / d)
    ts = -math.ceil(q * 2**32)                        # t - 2^32 for t = 2^32 - ceil(q 2^32) >= 2^31
    rows, cols, words, short, m = [], [], [], {}, 0
    for a, b, w in chunks:
        m = b
        rr, cc = (w >= ts).logical_and_(w < 0).nonzero(as_tuple=True)          # row-major
        rows.append(rr + a), cols.append(cc), words.append(w[rr, cc].to(device))
        few = (torch.bincount(rr, minlength=b - a) < k).nonzero().squeeze(1).tolist()
        if few:
            short.update(zip((a + i for i in few), full(w[few])))
    if not rows:
        return torch.empty((0, k), dtype=torch.int64, device=device)
    row, col = torch.cat(rows).to(device), torch.cat(cols).to(device)
    counts = torch.bincount(row, minlength=m)
    pos = torch.arange(row.numel(), device=device) - (counts.cumsum(0) - counts).index_select(0, row)
    width = max(k, int(counts.max())) if m else k
    keys = torch.full((m, width), -1, dtype=torch.int64, device=device)      # -1: padding, below any key
    keys.index_put_((row, pos), to_int64(torch.cat(words)).mul_(d).add_(col))
    where = torch.zeros((m, width), dtype=torch.int64, device=device)
    where.index_put_((row, pos), col)
    idx = torch.gather(where, 1, torch.topk(keys, k, dim=1, sorted=True).indices)
    for i, top in short.items():
        idx[i] = top
    return idx


# --- compressors -------------------------------------------------------------------

@dataclass(frozen=True)
class Identity:
    """No compression: d float32 values.  nbytes = 4 d.  Exact and linear."""

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

    Wire: k float32 values and k indices, nbytes = ceil(k (32 + ib) / 8), ib the
    index bits (32 -> k (4 + 4), "log2d" -> ceil(log2 d), 0 -> 4 k).
    Ties are broken by torch.topk; a kept entry that is exactly 0 is still sent.
    """

    d: int
    k: int
    linear: bool = False
    index_bits: IndexBits = 32

    def compress(self, x, *, streams=None, round=0) -> Payload:
        n = x.shape[0]
        idx = topk_abs_indices(x, self.k)                                   # [n, k]
        vals = torch.gather(x, 1, idx)                                      # [n, k]
        nbytes = sparse_bytes(torch.full((n,), self.k), self.d, self.index_bits)
        return Payload({"values": vals, "indices": idx}, nbytes)

    def decompress(self, p: Payload) -> torch.Tensor:
        return _scatter(self.d, p.tensors["values"], p.tensors["indices"])


@dataclass(frozen=True)
class LayerTopK:
    """Top-k per block (scope: layer), as in the SASG reference code: in block b
    of size d_b keep k_b = max(1, floor(ratio d_b)) largest magnitudes.

    Wire: one message of K = sum_b k_b (value, index) pairs, indices into the
    flat d-vector: nbytes = ceil(K (32 + ib) / 8) (ib as in :class:`TopK`).
    """

    d: int
    blocks: tuple[tuple[int, int, int], ...]   # (start, stop, k_b)
    index_bits: IndexBits = 32
    linear: ClassVar[bool] = False

    @property
    def k(self) -> int:
        return sum(k for _, _, k in self.blocks)

    def compress(self, x, *, streams=None, round=0) -> Payload:
        n = x.shape[0]
        idx = torch.cat([topk_abs_indices(x[:, a:b], k) + a
                         for a, b, k in self.blocks], dim=1)               # [n, K]
        vals = torch.gather(x, 1, idx)
        nbytes = sparse_bytes(torch.full((n,), self.k), self.d, self.index_bits)
        return Payload({"values": vals, "indices": idx}, nbytes)

    def decompress(self, p: Payload) -> torch.Tensor:
        return _scatter(self.d, p.tensors["values"], p.tensors["indices"])


@dataclass(frozen=True)
class RandomK:
    """k coordinates drawn uniformly at random without replacement, per worker
    from its own stream (``streams.bits(TAG_COMPRESS, round, (d,))``: the k
    coordinates with the largest key bits * d + j, keys all distinct, so the
    choice is the same on every device).

    ``unbiased``: decoded values are scaled by d / k (E[decoded] = x); otherwise
    decoded = x on the kept coordinates (biased, as in the EF literature).
    ``shared_seed``: every worker uses worker 0's draw, so all workers keep the
    same coordinates and payloads can be summed in compressed form
    (``linear = True``).  A receiver that knows the seed could regenerate the
    indices; set ``index_bits: 0`` to model that.

    Wire: nbytes = ceil(k (32 + ib) / 8), ib = index bits (32, ceil(log2 d), 0).
    """

    d: int
    k: int
    unbiased: bool = False
    shared_seed: bool = False
    index_bits: IndexBits = 32

    @property
    def linear(self) -> bool:
        return self.shared_seed

    def _indices(self, n: int, streams: WorkerStreams, round: int, device) -> torch.Tensor:
        if self.shared_seed:
            # Worker 0's stream: a 1-worker stream with the same seed has worker 0's key.
            one = WorkerStreams(streams.seed, 1, streams.device)
            idx = largest_keys(one.bits32_chunks(TAG_COMPRESS, round, (self.d,)), self.d, self.k, device)
            return idx.expand(n, -1)
        chunks = chunks32_of(streams, TAG_COMPRESS, round, (self.d,))        # [n, d] int32 words
        return largest_keys(chunks, self.d, self.k, device)

    def compress(self, x, *, streams=None, round=0) -> Payload:
        streams = _need_streams(streams, "randomk")
        n = x.shape[0]
        idx = self._indices(n, streams, round, x.device)                     # [n, k]
        vals = torch.gather(x, 1, idx)
        nbytes = sparse_bytes(torch.full((n,), self.k), self.d, self.index_bits)
        return Payload({"values": vals, "indices": idx}, nbytes)

    def decompress(self, p: Payload) -> torch.Tensor:
        # scaling the k values before the scatter is out * (d / k) value by value
        # (the zeros stay +0), without a second [n, d] tensor
        vals = p.tensors["values"]
        return _scatter(self.d, vals * (self.d / self.k) if self.unbiased else vals, p.tensors["indices"])


@dataclass(frozen=True)
class Threshold:
    """Keep the entries with |x_ij| >= tau (hard threshold); biased.

    Wire: nnz_i (value, index) pairs, nnz_i = #{j : |x_ij| >= tau} varies per
    worker: nbytes_i = ceil(nnz_i (32 + ib) / 8) (0 when nothing passes).
    """

    d: int
    tau: float
    index_bits: IndexBits = 32
    linear: ClassVar[bool] = False

    def compress(self, x, *, streams=None, round=0) -> Payload:
        # kept = |x| >= tau, values = where(kept, x, 0), nnz = kept.sum(1), row
        # chunk by row chunk in cache (the values as x with the rest set to +0,
        # the counts as int32 sums of the bools read as uint8: exact integers)
        n, d = x.shape
        kept = torch.empty((n, d), dtype=torch.bool, device=x.device)
        vals = torch.empty((n, d), dtype=x.dtype, device=x.device)
        nnz = torch.empty((n,), dtype=torch.int64, device=x.device)
        r = chunk_rows(n, d, x.device)
        a = drop = None
        for lo in range(0, n, r):
            hi = min(n, lo + r)
            if a is None:
                a = torch.empty((hi - lo, d), dtype=x.dtype, device=x.device)
                drop = torch.empty((hi - lo, d), dtype=torch.bool, device=x.device)
            kc = kept[lo:hi]
            torch.ge(torch.abs(x[lo:hi], out=a[: hi - lo]), self.tau, out=kc)             # [rows, d]
            vals[lo:hi].copy_(x[lo:hi]).masked_fill_(torch.logical_not(kc, out=drop[: hi - lo]), 0.0)
            nnz[lo:hi] = kc.view(torch.uint8).sum(1, dtype=torch.int32)
        return Payload({"values": vals, "kept": kept}, sparse_bytes(nnz, self.d, self.index_bits))

    def decompress(self, p: Payload) -> torch.Tensor:
        return p.tensors["values"]


def _row_ranges(n: int, row_elems: int, device) -> list[tuple[int, int]]:
    """Row chunks of :func:`sim.learn.rng.chunk_rows` size, but never a single
    row out of several (a reduction over a lone row may be split across
    threads, which sums in another order than the same row among others)."""
    r = max(2, chunk_rows(n, row_elems, device))
    bounds = [(a, min(n, a + r)) for a in range(0, n, r)]
    if len(bounds) > 1 and bounds[-1][1] - bounds[-1][0] == 1:
        bounds[-2:] = [(bounds[-2][0], n)]
    return bounds


def _rows_f64(a: torch.Tensor):
    """Yields (lo, hi, buf): buf a float64 scratch [hi - lo, d] for the rows
    lo..hi of ``a`` (reused; float32 -> float64 work on a chunk in cache
    instead of mixed-dtype ops over all of ``a``, which are slow on the CPU)."""
    n, d = a.shape
    ranges = _row_ranges(n, 2 * d, a.device)
    buf = torch.empty((max((hi - lo for lo, hi in ranges), default=0), d), dtype=torch.float64, device=a.device)
    for lo, hi in ranges:
        yield lo, hi, buf[: hi - lo]


def _sum_f64(a: torch.Tensor, buf: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """out <- a.sum(1, keepdim=True, dtype=torch.float64) bit for bit, ``buf``
    a float64 scratch like a.  On the CPU that call sums a float64 copy of a
    (tests/test_fast_paths.py checks it), so it sums buf <- a; other devices
    make the call itself."""
    if a.device.type != "cpu":
        return torch.sum(a, 1, keepdim=True, dtype=torch.float64, out=out)
    return torch.sum(buf.copy_(a), 1, keepdim=True, out=out)


def _sum_rows_f64(a: torch.Tensor) -> torch.Tensor:
    """a.sum(1, keepdim=True, dtype=torch.float64) bit for bit, by row chunks."""
    out = torch.empty((a.shape[0], 1), dtype=torch.float64, device=a.device)
    for lo, hi, buf in _rows_f64(a):
        _sum_f64(a[lo:hi], buf, out[lo:hi])
    return out


def _saturate_(q: torch.Tensor) -> torch.Tensor:
    """Entries of q at 1 or above -> -0.0 (the saturated mark), in place; their
    count per row, [rows, 1] int64."""
    if q.numel() == 0 or float(q.max()) < 1:                     # nothing saturates (one read, no mask)
        return torch.zeros((q.shape[0], 1), dtype=torch.int64, device=q.device)
    sat = q >= 1
    q.masked_fill_(sat, -0.0)
    return sat.sum(1, keepdim=True)


@dataclass(frozen=True)
class Mvss:
    """Minimal-variance stochastic sparsification (Wangni et al. 2018), unbiased.

    p_i = min(rho d |g_i| / ||g||_1, 1); then, with I the unsaturated set
    {p_i < 1}, repeat  c = (rho d - d + |I|) / sum_{i in I} p_i,  p_I <- min(c p_I, 1)
    until c <= 1 for every worker (at most ``max_iters`` passes, all workers at
    once; c >= 1 always, so a converged worker is left unchanged; if the cap
    stops it early, sum_i p_i is somewhat below rho d).  Z_i ~
    Bernoulli(p_i) from the worker's stream; decoded Q_i = Z_i g_i / p_i.
    Exactly unbiased w.r.t. the stream: p_i is rounded up to the 2^-32 grid,
    p_i' = ceil(p_i 2^32) / 2^32, Z_i = [bits_i < p_i' 2^32], value g_i / p_i'.
    E[nnz] = sum_i p_i' ~= rho d (less when g has fewer than rho d nonzeros).

    Wire: nbytes_i = ceil(nnz_i (32 + ib) / 8), nnz_i = #{Z_i = 1} varies.
    """

    d: int
    rho: float
    max_iters: int = 20
    index_bits: IndexBits = 32
    linear: ClassVar[bool] = False

    def probabilities(self, x: torch.Tensor) -> torch.Tensor:
        """The keep probabilities p [n, d] of the greedy algorithm (sums in
        float64; a worker counts as done once c <= 1 + 1e-6, since float
        rounding makes c hover around 1 once nothing new saturates)."""
        got = self._unsaturated(x)
        if got is None:
            return self._probabilities_general(x)
        q, any_sat = got
        return q.masked_fill_(torch.signbit(q), 1.0) if any_sat else q

    def _unsaturated(self, x: torch.Tensor) -> tuple[torch.Tensor, bool] | None:
        """The greedy algorithm of :meth:`_probabilities_general`, value for
        value, in fewer passes, as q [n, d]: p where p < 1, and -0.0 where p
        saturated at 1, and whether any entry saturated.  None if some row has
        a non-finite l1 norm (then the general code runs).  With finite rows no p is NaN, so: the unsaturated
        count is d minus the saturated count; the masked sum where(p < 1, p, 0)
        is the sum of q (a -0.0 term changes no sum but an all-zero one's sign,
        and den > 0 reads both zeros alike); c p for the unsaturated entries is
        q times c (c = 1 for done rows, c > 1 keeps -0.0 at -0.0); and the
        float32 result of a float64 product, then min(., 1), is min(float64
        result, 1) in float32, since rounding is monotone and 1 is exact.  The
        first p is float32(float64(target |x|) / l1) clamped to 1 (a zero row
        gives +0 as the old where did).  The float64 sums and products run on
        float64 copies of row chunks (:func:`_rows_f64`, :func:`_sum_f64`), one
        pass over the chunks per iteration."""
        n = x.shape[0]
        q = torch.empty_like(x)
        l1, den = (torch.empty((n, 1), dtype=torch.float64, device=x.device) for _ in range(2))
        nsat = torch.empty((n, 1), dtype=torch.int64, device=x.device)
        chunks = list(_rows_f64(q))
        for lo, hi, buf in chunks:
            _sum_f64(torch.abs(x[lo:hi], out=q[lo:hi]), buf, l1[lo:hi])
        if not bool(torch.isfinite(l1).all()):
            return None
        target = self.rho * self.d
        l1 = l1.clamp_min(1e-300)
        for lo, hi, buf in chunks:                                           # p0, float32
            qc = q[lo:hi].mul_(target)
            qc.copy_(buf.copy_(qc).div_(l1[lo:hi])).clamp_(max=1.0)
            nsat[lo:hi] = _saturate_(qc)
            _sum_f64(qc, buf, den[lo:hi])
        for _ in range(self.max_iters):
            num = target - self.d + (self.d - nsat).to(torch.float64)
            c = torch.where(den > 0, num / den.clamp_min(1e-300), torch.ones_like(den))
            busy = c > 1 + 1e-6                                              # [n, 1]
            if not bool(busy.any()):
                break
            c = torch.where(busy, c, torch.ones_like(c))
            for lo, hi, buf in chunks:                                       # float64 products, to float32
                qc = q[lo:hi]
                qc.copy_(buf.copy_(qc).mul_(c[lo:hi]))
                nsat[lo:hi] += _saturate_(qc)
                _sum_f64(qc, buf, den[lo:hi])
        return q, bool(nsat.any())

    def compress(self, x, *, streams=None, round=0) -> Payload:
        # The old code: m = ceil(p 2^32) (int64), Z = [u < m], value x / (max(m, 1) / 2^32)
        # in float64.  Here m stays float32 (p 2^32 is exact in float32 and so is
        # its ceil, an integer <= 2^32), saturated entries get m = inf (always
        # kept, as u < 2^32), and u < m is read off float32(u) (rounded to nearest,
        # monotone): float32(u) > m means u > m; the entries with float32(u) <= m
        # (the kept ones and the rare ties) are compared exactly in int64, and
        # their values computed, chunk by chunk with the stream's words.
        streams = _need_streams(streams, "mvss")
        got = self._unsaturated(x) if _fast32(x.device)["u32float"] else None
        if got is None:
            return self._compress_general(x, streams, round)
        q, any_sat = got
        n, d = x.shape
        m = q.mul_(2.0**32).ceil_()                                          # float32 m; -0.0: saturated
        if any_sat:
            m.masked_fill_(torch.signbit(m), math.inf)
        kept = torch.empty((n, d), dtype=torch.bool, device=x.device)
        vals = m                      # each chunk of m, once read, becomes that chunk of the values
        counts = torch.empty((n,), dtype=torch.int64, device=x.device)
        uf = None
        for lo, hi, w in chunks32_of(streams, TAG_COMPRESS, round, (d,)):
            w = w.to(x.device)
            uf = torch.empty((hi - lo, d), dtype=torch.float32, device=x.device) if uf is None else uf[: hi - lo]
            uf.copy_(w.view(torch.uint32))                                   # float32(u), rounded to nearest
            mc, kc = m[lo:hi], kept[lo:hi]
            torch.le(uf, mc, out=kc)                                         # kept, or float32(u) == m
            at = kc.view(-1).nonzero().squeeze(1)
            mk = mc.reshape(-1)[at].double().nan_to_num_(posinf=2.0**32)      # m as float64 (saturated: 2^32)
            keep = to_int64(w.reshape(-1)[at]) < mk.to(torch.int64)          # u < m exactly
            if not bool(keep.all()):
                kc.view(-1)[at[~keep]] = False
                at, mk = at[keep], mk[keep]
            mc.zero_().view(-1)[at] = (x[lo:hi].reshape(-1)[at].double() / (mk / 2.0**32)).to(x.dtype)
            counts[lo:hi] = torch.bincount(at // d, minlength=hi - lo)          # kept per row
        return Payload({"values": vals, "kept": kept}, sparse_bytes(counts, self.d, self.index_bits))

    def _probabilities_general(self, x: torch.Tensor) -> torch.Tensor:
        """The keep probabilities p [n, d] of the greedy algorithm (sums in
        float64; a worker counts as done once c <= 1 + 1e-6, since float
        rounding makes c hover around 1 once nothing new saturates)."""
        a = x.abs()
        l1 = a.sum(1, keepdim=True, dtype=torch.float64)
        target = self.rho * self.d
        zero = torch.zeros((), dtype=a.dtype, device=a.device)
        p = torch.where(l1 > 0, (target * a / l1.clamp_min(1e-300)).clamp(max=1.0).to(a.dtype), zero)
        for _ in range(self.max_iters):
            unsat = p < 1
            num = target - self.d + unsat.sum(1, keepdim=True).to(torch.float64)
            den = torch.where(unsat, p, zero).sum(1, keepdim=True, dtype=torch.float64)
            c = torch.where(den > 0, num / den.clamp_min(1e-300), torch.ones_like(den))
            busy = c > 1 + 1e-6                                              # [n, 1]
            if not bool(busy.any()):
                break
            p = torch.where(unsat & busy, (c * p).clamp(max=1.0).to(p.dtype), p)
        return p

    def _compress_general(self, x, streams, round) -> Payload:
        p = self._probabilities_general(x)
        m = torch.ceil(p.double() * 2.0 ** 32).to(torch.int64)                # P(keep) = m / 2^32
        bits = streams.bits(TAG_COMPRESS, round, (self.d,)).to(x.device)     # [n, d] in [0, 2^32)
        kept = bits < m
        scale = m.double().clamp_min(1.0) / 2.0 ** 32
        vals = torch.where(kept, (x.double() / scale).to(x.dtype), torch.zeros((), dtype=x.dtype, device=x.device))
        return Payload({"values": vals, "kept": kept}, sparse_bytes(kept.sum(1), self.d, self.index_bits))

    def decompress(self, p: Payload) -> torch.Tensor:
        return p.tensors["values"]


@dataclass(frozen=True)
class BlockSign:
    """Block-Sign (comp-ams.txt Definition 2): for each block B,
    C(x)_B = sign(x_B) ||x_B||_1 / |B|.  Blocks are the layers (``bounds``,
    from ``ctx.blocks``) or fixed-size blocks (``block_size``; the last block
    shorter if it does not divide d); one block [0, d) is Scaled-Sign
    (sketched-amsgrad.txt eq. 3: ||x||_1 / d sign(x)).

    Wire: d sign bits, packed: ceil(d / 8) bytes, plus one float32 scale per
    block: nbytes = ceil(d / 8) + 4 M.  sign(0) = +1 (bit 1 means x >= 0), and
    a 0 entry decodes to +||x_B||_1 / |B|, what the bit encodes.
    """

    d: int
    bounds: tuple[tuple[int, int], ...] | None = None   # (start, stop) of each block, tiling [0, d)
    block_size: int | None = None                        # or fixed-size blocks
    linear: ClassVar[bool] = False

    def __post_init__(self):
        if (self.bounds is None) == (self.block_size is None):
            raise ValueError("BlockSign needs exactly one of bounds or block_size")

    @property
    def n_blocks(self) -> int:
        return len(self.bounds) if self.bounds is not None else -(-self.d // self.block_size)

    @property
    def nbytes(self) -> int:
        return sign_bytes(self.d) + VALUE_BYTES * self.n_blocks

    def _sizes(self, device) -> torch.Tensor:
        if self.bounds is not None:
            return torch.tensor([b - a for a, b in self.bounds], dtype=torch.int64, device=device)
        m = self.n_blocks
        sizes = torch.full((m,), self.block_size, dtype=torch.int64, device=device)
        sizes[-1] = self.d - (m - 1) * self.block_size
        return sizes

    def compress(self, x, *, streams=None, round=0) -> Payload:
        # ||x_B||_1 per block: the sums of |x| (zero-padded to whole blocks with
        # block_size), as before, but of |x| made chunk by chunk of rows into one
        # small buffer (the same reduction per row; chunks of two rows or more,
        # :func:`_row_ranges`), not of a second [n, d] tensor
        n, d = x.shape
        m = self.n_blocks
        width = m * self.block_size if self.block_size is not None else d
        l1 = torch.empty((n, m), dtype=x.dtype, device=x.device)
        positive = torch.empty((n, d), dtype=torch.bool, device=x.device)
        ranges = _row_ranges(n, width, x.device)
        buf = torch.empty((max((hi - lo for lo, hi in ranges), default=0), width), dtype=x.dtype, device=x.device)
        for lo, hi in ranges:
            a = buf[: hi - lo]
            torch.ge(x[lo:hi], 0, out=positive[lo:hi])
            torch.abs(x[lo:hi], out=a[:, :d])
            if self.block_size is not None:
                a[:, d:].zero_()
                torch.sum(a.view(hi - lo, m, self.block_size), -1, out=l1[lo:hi])      # [rows, M]
            else:  # a loop over the layers (a handful), deterministic on every device
                for j, (s, e) in enumerate(self.bounds):
                    torch.sum(a[:, s:e], 1, out=l1[lo:hi, j])
        scales = l1 / self._sizes(x.device).to(x.dtype)
        return Payload({"positive": positive, "scales": scales}, _full(n, self.nbytes))

    def decompress(self, p: Payload) -> torch.Tensor:
        # +-1 from the bits, then times each block's scale, in place on one [n, d]
        # buffer: (+-1) * s is exactly +-s (also for s = 0, giving -0.0 as -mag did,
        # and s = inf), the values of repeat_interleave + where(pos, mag, -mag).
        scales, pos = p.tensors["scales"], p.tensors["positive"]

        def scale(out: torch.Tensor, lo: int, hi: int) -> None:     # rows lo..hi, in cache
            sc, n = scales[lo:hi], hi - lo
            if self.block_size is not None:
                b, full = self.block_size, self.d // self.block_size
                if full:
                    out[:, : full * b].view(n, full, b).mul_(sc[:, :full].unsqueeze(-1))
                if full * b < self.d:
                    out[:, full * b:].mul_(sc[:, full:full + 1])
            else:   # a loop over the layers (a handful)
                for j, (a, e) in enumerate(self.bounds):
                    out[:, a:e].mul_(sc[:, j:j + 1])
        return _plus_minus_one(pos, scales.dtype, scale)


@dataclass(frozen=True)
class Sign:
    """Plain sign (signSGD; for majority vote): decoded = +1 or -1 (float32).

    Wire: d sign bits, nbytes = ceil(d / 8).  sign(0) = +1 (bit 1 means x >= 0).
    """

    d: int
    linear: ClassVar[bool] = False

    def compress(self, x, *, streams=None, round=0) -> Payload:
        return Payload({"positive": x >= 0}, _full(x.shape[0], sign_bytes(self.d)))

    def decompress(self, p: Payload) -> torch.Tensor:
        return _plus_minus_one(p.tensors["positive"], torch.float32)


@dataclass(frozen=True)
class Qsgd:
    """QSGD (Alistarh et al. 2017) with s levels and buckets of ``bucket_size``
    entries (the last bucket shorter if it does not divide d).

    Per bucket v: norm = ||v||_2; per entry l_i = floor(s |v_i| / norm + u_i),
    u_i ~ U[0, 1) from the worker's stream (stochastic rounding, clamped to s);
    decoded = norm sign(v_i) l_i / s.  Unbiased up to the 2^-24 grid of the
    uniforms (|bias| <= 2^-24 norm / s per entry).  sign(0) = +1 for the bit;
    a 0 entry has level 0, so it decodes to 0 either way.

    Wire: per entry a sign bit and a level in 0..s, bit-packed:
    bits = 1 + ceil(log2(s + 1)); plus one float32 norm per bucket:
    nbytes = ceil(d bits / 8) + 4 ceil(d / bucket_size).
    """

    d: int
    s: int
    bucket_size: int = 512
    linear: ClassVar[bool] = False

    @property
    def n_buckets(self) -> int:
        return -(-self.d // self.bucket_size)

    @property
    def bits_per_entry(self) -> int:
        return 1 + ceil_log2(self.s + 1)

    @property
    def nbytes(self) -> int:
        return (self.d * self.bits_per_entry + 7) // 8 + VALUE_BYTES * self.n_buckets

    def compress(self, x, *, streams=None, round=0) -> Payload:
        # The old expression, value for value: v = x zero-padded to [n, M, b];
        # norms = ||v||_2 per bucket; r = |v| / safe * s; levels = clamp(floor(r + u), 0, s).
        # Here, row chunk by row chunk (the chunks of the stream's words, so a
        # chunk stays in cache): |x| is padded instead of x (|x|^2 = x^2: the
        # same reduction over the same values), r is formed in place, and u is
        # added as exact multiples of 2^-32 straight from the int32 words.  floor
        # is dropped: r + u >= 0 (or NaN), which the conversion to int32
        # truncates exactly as floor would (and clamp commutes with both).
        streams = _need_streams(streams, "qsgd")
        n, d, b, m = x.shape[0], self.d, self.bucket_size, self.n_buckets
        levels = torch.empty((n, d), dtype=torch.int32, device=x.device)
        norms = torch.empty((n, m), dtype=x.dtype, device=x.device)
        tiny = torch.finfo(x.dtype).tiny
        if m == 1 and n > 1:   # one bucket per row: the norms of all rows in one reduction, as before
            torch.linalg.vector_norm(_padded_view(x, b), dim=-1, out=norms)
        a = u = None
        for lo, hi, w in chunks32_of(streams, TAG_COMPRESS, round, (d,)):
            if a is None or a.shape[0] < hi - lo:
                a = torch.empty((hi - lo, m * b), dtype=x.dtype, device=x.device)
                u = torch.empty((hi - lo, d), dtype=x.dtype, device=x.device)
            ac, uc = a[: hi - lo], u[: hi - lo]
            torch.abs(x[lo:hi], out=ac[:, :d])
            ac[:, d:].zero_()
            v = ac.view(hi - lo, m, b)
            if not (m == 1 and n > 1):
                torch.linalg.vector_norm(v, dim=-1, out=norms[lo:hi])            # [rows, M]
            v.div_(norms[lo:hi].clamp_min(tiny).unsqueeze(-1))
            if self.s != 1:                                                     # (x * 1 is x)
                v.mul_(self.s)
            _uniform_times_2_32(w.to(x.device), out=uc)                         # u 2^32, exact
            torch.add(ac[:, :d], uc, alpha=1.0 / 2**32, out=uc).clamp_(0, self.s)   # r + u
            levels[lo:hi].copy_(uc)
        return Payload({"norms": norms, "levels": levels, "positive": x >= 0}, _full(n, self.nbytes))

    def decompress(self, p: Payload) -> torch.Tensor:
        norms, levels, pos = p.tensors["norms"], p.tensors["levels"], p.tensors["positive"]
        if not bool(torch.isfinite(norms).all()):
            per = torch.repeat_interleave(norms, self.bucket_size, dim=1)[:, : self.d] / self.s
            mag = per * levels.to(per.dtype)
            return torch.where(pos, mag, -mag)
        # Finite norms: per = norm / s is finite and >= 0 and levels are in [0, s],
        # so mag = l per is +0, finite or +inf, never NaN, and -mag is mag * -1:
        # where(pos, mag, -mag) = (l per) * (+-1), in place on one [n, d] tensor.
        n, d, b = levels.shape[0], self.d, self.bucket_size
        per = norms / self.s                                                 # [n, M]
        out = levels.to(norms.dtype)
        full = d // b
        if full:
            out[:, : full * b].view(n, full, b).mul_(per[:, :full].unsqueeze(-1))
        if full * b < d:
            out[:, full * b:].mul_(per[:, full:full + 1])
        return _times_plus_minus_one_(out, pos)


def _times_plus_minus_one_(out: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
    """out <- out * (+1 where pos, -1 elsewhere) in place, by row chunks (the
    +-1 of a chunk made in a small buffer, :func:`_plus_minus_one`'s values)."""
    n = out.shape[0]
    r = chunk_rows(n, out[0].numel() if n else 1, out.device)
    sg = None
    for lo in range(0, n, r):
        hi = min(n, lo + r)
        sg = torch.empty_like(out[lo:hi]) if sg is None else sg[: hi - lo]
        sg.copy_(pos[lo:hi].view(torch.uint8)).mul_(2).sub_(1)
        out[lo:hi].mul_(sg)
    return out


def _uniform_times_2_32(w: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """out <- float32(u & ~0xFF) for the int32 words w (overwritten): the
    stream's uniform times 2^32, exactly (:func:`sim.learn.rng.uniform_from32_`)."""
    if _fast32(w.device)["u32float"]:
        return out.copy_(w.bitwise_and_(-256).view(torch.uint32))
    return out.copy_(_uniform_shift32(w)).mul_(2.0**32)


def layer_ids(bounds: tuple[tuple[int, int], ...], device=None) -> torch.Tensor:
    """The layer index of every coordinate, [d] int64, for ``bounds`` tiling [0, d)."""
    sizes = torch.tensor([b - a for a, b in bounds], dtype=torch.int64, device=device)
    return torch.repeat_interleave(torch.arange(len(bounds), device=device), sizes)


def _layer_absmax(a: torch.Tensor, ids: torch.Tensor, n_layers: int) -> torch.Tensor:
    """a [n, d] >= 0 -> per-layer max [n, L] (one batched scatter; a max is exact
    in any order, so this is the same on every device)."""
    out = torch.zeros(a.shape[0], n_layers, dtype=a.dtype, device=a.device)
    return out.scatter_reduce_(1, ids.expand(a.shape[0], -1), a, reduce="amax", include_self=True)


def _layer_absmax_fast(x: torch.Tensor, bounds: tuple[tuple[int, int], ...]) -> torch.Tensor | None:
    """:func:`_layer_absmax` of |x| by one amax per layer (a max is exact in any
    order): the same [n, L] scales, or None if any is NaN (NaN inputs: the
    caller runs its old code, whose scatter_reduce handles NaN its own way)."""
    out = torch.stack([x[:, a:b].abs().amax(1) if b - a < 4096 else
                       torch.maximum(x[:, a:b].amax(1), x[:, a:b].amin(1).neg_()).abs_()
                       for a, b in bounds], dim=1).clamp_min_(0.0)
    return None if bool(torch.isnan(out).any()) else out


def _times_layer_scales(q: torch.Tensor, scales: torch.Tensor, bounds) -> torch.Tensor:
    """q.to(float) * scales.index_select(1, layer_ids(bounds)) value for value
    (the same products q_k s_L), as one converted tensor scaled in place per
    layer, row chunk by row chunk in cache."""
    out = torch.empty(q.shape, dtype=scales.dtype, device=scales.device)
    n = q.shape[0]
    r = chunk_rows(n, q.shape[1] if n else 1, q.device)
    for lo in range(0, n, r):
        oc = out[lo:lo + r].copy_(q[lo:lo + r])
        for j, (a, b) in enumerate(bounds):
            oc[:, a:b].mul_(scales[lo:lo + r, j:j + 1])
    return out


@dataclass(frozen=True)
class TernGrad:
    """TernGrad (Wen et al., NeurIPS 2017, arXiv:1705.07878): stochastic
    ternarization, Eq. (2)-(4), with the layer-wise scaler of Sec. 3.3
    ("layer-wise ternarizing") and the optional gradient clipping of the same
    section:

        s_L = ||g_L||_inf = max_k |g_k| over layer L          (one scaler per layer)
        g~_k = s_L sign(g_k) b_k,   b_k ~ Bernoulli(|g_k| / s_L)

    so g~_k is in {-s_L, 0, +s_L} and E[g~] = g (unbiased).  ``clip_sigma`` c:
    before ternarizing, g_k <- clamp(g_k, -c sigma_L, c sigma_L) with sigma_L
    the (population) standard deviation of layer L's entries (the paper
    suggests c = 2.5); the result is then unbiased for the clipped gradient,
    not for g.  A 0 entry has P(b = 1) = 0 and decodes to 0 (the ternary
    alphabet has a 0, so the sign-bit convention does not apply here).

    Randomness: b_k = [bits_k < p_k 2^32] with bits_k the worker's 32-bit
    stream ``streams.bits(TAG_COMPRESS, round, (d,))`` and p_k in float64, so
    P(b_k = 1) = ceil(p_k 2^32) / 2^32: unbiased up to +s_L 2^-32 per entry.

    Wire: 2 bits per coordinate (a ternary symbol in {-1, 0, +1}) packed, and
    one float32 scaler per layer:  nbytes = ceil(2 d / 8) + 4 L  (L = number of
    non-empty layers of ctx.blocks; 1 without a layout).  (log2 3 = 1.58 bits
    would need an arithmetic code; 2 bits is what the paper's implementation
    sends.)
    """

    d: int
    bounds: tuple[tuple[int, int], ...]     # (start, stop) of each layer, tiling [0, d)
    clip_sigma: float | None = None
    linear: ClassVar[bool] = False

    @property
    def nbytes(self) -> int:
        return (2 * self.d + 7) // 8 + VALUE_BYTES * len(self.bounds)

    def _clip(self, x: torch.Tensor) -> torch.Tensor:
        # a loop over the layers (a handful), deterministic on every device
        parts = []
        for a, b in self.bounds:
            xb = x[:, a:b]
            c = self.clip_sigma * xb.std(dim=1, correction=0, keepdim=True)     # [n, 1]
            parts.append(torch.maximum(torch.minimum(xb, c), -c))
        return torch.cat(parts, dim=1)

    def compress(self, x, *, streams=None, round=0) -> Payload:
        # The old expression (:meth:`_compress_general`), value for value, by row
        # chunks of the stream's words: s_L by per-layer amax (a max is exact in
        # any order; NaN anywhere takes the old code), p = float64(|g|) / s_L
        # and u < p 2^32 on float64 copies of the chunk (u exact in float64;
        # s_L > 0 or |g| = 0 there, so the old where and clamp change nothing),
        # and the ternary symbol as the integer (2 [g >= 0] - 1) [u < p 2^32].
        streams = _need_streams(streams, "terngrad")
        g = self._clip(x) if self.clip_sigma is not None else x
        scales = _layer_absmax_fast(g, self.bounds)
        if scales is None or not _fast32(x.device)["u32float"]:
            return self._compress_general(x, g, streams, round)
        n, d = g.shape
        tern = torch.empty((n, d), dtype=torch.int8, device=x.device)
        pf = uf = None
        for lo, hi, w in chunks32_of(streams, TAG_COMPRESS, round, (d,)):
            if pf is None:
                pf, uf = (torch.empty((hi - lo, d), dtype=torch.float64, device=x.device) for _ in range(2))
            pc, uc, tc, gc = pf[: hi - lo], uf[: hi - lo], tern[lo:hi], g[lo:hi]
            pc.copy_(gc).abs_()
            for j, (a, e) in enumerate(self.bounds):
                pc[:, a:e].div_(scales[lo:hi, j:j + 1].double().clamp_min(1e-300))
            uc.copy_(w.to(x.device).view(torch.uint32))
            b = uc < pc.mul_(2.0**32)                                        # Bernoulli(p)
            torch.ge(gc, 0, out=tc.view(torch.bool))                         # 0 / 1 as int8
            tc.mul_(2).sub_(1).mul_(b.view(torch.int8))                      # in {-1, 0, 1}
        # nbytes = ceil(2 d / 8) + 4 L
        return Payload({"ternary": tern, "scales": scales}, _full(n, self.nbytes))

    def _compress_general(self, x, g, streams, round) -> Payload:
        n = x.shape[0]
        ids = layer_ids(self.bounds, x.device)                                # [d]
        a = g.abs()
        scales = _layer_absmax(a, ids, len(self.bounds))                      # [n, L] s_L
        s = scales.index_select(1, ids).double()                              # [n, d]
        p = torch.where(s > 0, a.double() / s.clamp_min(1e-300), torch.zeros((), dtype=torch.float64, device=x.device))
        bits = streams.bits(TAG_COMPRESS, round, (self.d,)).to(x.device)     # [n, d] in [0, 2^32)
        b = bits.double() < p * 2.0 ** 32                                      # Bernoulli(p)
        tern = torch.where(b, torch.where(g >= 0, 1, -1), 0).to(torch.int8)  # [n, d] in {-1, 0, 1}
        # nbytes = ceil(2 d / 8) + 4 L
        return Payload({"ternary": tern, "scales": scales}, _full(n, self.nbytes))

    def decompress(self, p: Payload) -> torch.Tensor:
        return _times_layer_scales(p.tensors["ternary"], p.tensors["scales"], self.bounds)


@dataclass(frozen=True)
class Cast:
    """Cast to a 16-bit float and back: ``float16`` (IEEE 754 binary16) or
    ``bfloat16``.  torch's .half() / .bfloat16() round to nearest, ties to even;
    float16 overflows to +-inf beyond 65504 and flushes below its subnormal
    range, as a real cast does.  Decoded values are float32:
    decoded = x.half().float() (or x.bfloat16().float()) exactly.

    Wire: d 16-bit values, nbytes = 2 d.

    Not linear: summing fp16 payloads in fp16 along a ring rounds every partial
    sum, which is not the fp16 cast of the float32 sum (and the simulator would
    not model that rounding), so the ring gathers instead of reducing.
    """

    d: int
    dtype: torch.dtype = torch.float16
    linear: ClassVar[bool] = False

    def compress(self, x, *, streams=None, round=0) -> Payload:
        # nbytes = 2 d (16 bits per value)
        return Payload({"values": x.to(self.dtype)}, _full(x.shape[0], 2 * self.d))

    def decompress(self, p: Payload) -> torch.Tensor:
        return p.tensors["values"].to(torch.float32)


@dataclass(frozen=True)
class Int8:
    """Linear symmetric 8-bit quantization with one float32 scale per layer:

        scale_L = max_k |x_k| / 127 over layer L,   q_k = R(x_k / scale_L) in [-127, 127],
        decoded_k = q_k scale_L (float32)

    R is round to nearest, ties to even (torch.round), so |decoded - x| <=
    scale_L / 2 per coordinate (up to float32 rounding of x / scale_L); or,
    with ``stochastic``, R(v) = floor(v + u), u ~ U[0, 1) from the worker's
    stream (``streams.uniform(TAG_COMPRESS, round, (d,))``), unbiased up to the
    2^-24 grid of the uniforms, |error| < scale_L.  A layer of zeros has
    scale 0 and decodes to 0.  -128 is never used (symmetric range).

    Wire: one int8 per coordinate and one float32 scale per layer:
    nbytes = d + 4 L  (L = number of non-empty layers of ctx.blocks).

    Not linear: each worker has its own scales, so int8 payloads cannot be
    added in compressed form.
    """

    d: int
    bounds: tuple[tuple[int, int], ...]     # (start, stop) of each layer, tiling [0, d)
    stochastic: bool = False
    linear: ClassVar[bool] = False

    @property
    def nbytes(self) -> int:
        return self.d + VALUE_BYTES * len(self.bounds)

    def compress(self, x, *, streams=None, round=0) -> Payload:
        # The old expression (:meth:`_compress_general`), value for value, row
        # chunk by row chunk in cache: the scales from per-layer amax (exact in
        # any order; NaN takes the old code), v = x / scale per layer (0 in a
        # layer whose scale is not > 0, as the old where), then R(v): round half
        # to even, or floor(v + u) with u added as an exact multiple of 2^-32
        # from the stream's int32 words.
        if self.stochastic:
            streams = _need_streams(streams, "int8 (stochastic)")
        amax = _layer_absmax_fast(x, self.bounds)
        if amax is None:
            return self._compress_general(x, streams=streams, round=round)
        n, d = x.shape
        scales = amax / 127.0                                                # [n, L]
        safe = scales.clamp_min(torch.finfo(x.dtype).tiny)
        bad = ~(scales > 0)
        q = torch.empty((n, d), dtype=torch.int8, device=x.device)
        if self.stochastic:
            chunks = chunks32_of(streams, TAG_COMPRESS, round, (d,))
        else:
            r = chunk_rows(n, d, x.device)
            chunks = ((lo, min(n, lo + r), None) for lo in range(0, n, r))
        v = u = None
        for lo, hi, w in chunks:
            if v is None or v.shape[0] < hi - lo:
                v = torch.empty((hi - lo, d), dtype=x.dtype, device=x.device)
                u = torch.empty_like(v) if self.stochastic else None
            vc = v[: hi - lo]
            for j, (a, b) in enumerate(self.bounds):
                torch.div(x[lo:hi, a:b], safe[lo:hi, j:j + 1], out=vc[:, a:b])
                rows = bad[lo:hi, j].nonzero().squeeze(1).tolist() if bool(bad[lo:hi, j].any()) else ()
                for i in rows:
                    vc[i, a:b] = 0.0
            if self.stochastic:
                uc = _uniform_times_2_32(w.to(x.device), out=u[: hi - lo])    # u 2^32, exact
                torch.add(vc, uc, alpha=1.0 / 2**32, out=vc).floor_()
            else:
                vc.round_()                                                  # half to even
            q[lo:hi].copy_(vc.clamp_(-127, 127))
        # nbytes = d + 4 L (an int8 per coordinate, a float32 scale per layer)
        return Payload({"q": q, "scales": scales}, _full(n, self.nbytes))

    def _compress_general(self, x, *, streams=None, round=0) -> Payload:
        n = x.shape[0]
        ids = layer_ids(self.bounds, x.device)                                # [d]
        scales = _layer_absmax(x.abs(), ids, len(self.bounds)) / 127.0       # [n, L]
        s = scales.index_select(1, ids)                                      # [n, d]
        v = torch.where(s > 0, x / s.clamp_min(torch.finfo(x.dtype).tiny), torch.zeros((), dtype=x.dtype, device=x.device))
        if self.stochastic:
            streams = _need_streams(streams, "int8 (stochastic)")
            u = streams.uniform(TAG_COMPRESS, round, (self.d,)).to(device=x.device, dtype=v.dtype)
            q = torch.floor(v + u)
        else:
            q = torch.round(v)                                               # half to even
        q = q.clamp_(-127, 127).to(torch.int8)
        # nbytes = d + 4 L (an int8 per coordinate, a float32 scale per layer)
        return Payload({"q": q, "scales": scales}, _full(n, self.nbytes))

    def decompress(self, p: Payload) -> torch.Tensor:
        return _times_layer_scales(p.tensors["q"], p.tensors["scales"], self.bounds)


# --- configs -----------------------------------------------------------------------

class _Config(BaseModel):
    model_config = ConfigDict(extra="forbid", defer_build=True)


def _index_bits_field():
    return Field(32, description='bits per index on the wire: 32 (uint32), "log2d" '
                                 '(ceil(log2 d), bit-packed) or 0 (indices not counted)')


def _ratio_or_k(ratio: float | None, k: int | None, d: int) -> int:
    # k = max(1, floor(ratio d)), as in the SASG reference code; capped at d.
    k = k if k is not None else max(1, int(ratio * d))
    return min(k, d)


def _check_one_of(ratio, k) -> None:
    if (ratio is None) == (k is None):
        raise ValueError("give exactly one of ratio (in (0, 1]) or k (>= 1)")


@COMPRESSORS.register("none")
class NoneConfig(_Config):
    """No compression (4 d bytes)."""

    kind: Literal["none"] = "none"

    def build(self, ctx: Context) -> Compressor:
        return Identity(ctx.d)


@COMPRESSORS.register("topk")
class TopKConfig(_Config):
    """Top-k by magnitude; scope: vector (k of d) or layer (k_b of each layer)."""

    kind: Literal["topk"] = "topk"
    ratio: float | None = Field(None, gt=0, le=1, description="fraction of coordinates kept, in (0, 1]")
    k: int | None = Field(None, ge=1, description="number of coordinates kept (instead of ratio)")
    scope: Literal["vector", "layer"] = Field(
        "vector", description="vector: k of the whole vector; layer: max(1, floor(ratio d_b)) of each layer")
    index_bits: IndexBits = _index_bits_field()

    @model_validator(mode="after")
    def _one_of(self):
        _check_one_of(self.ratio, self.k)
        if self.scope == "layer" and self.k is not None:
            raise ValueError("k: not allowed with scope: layer; give ratio (each layer keeps max(1, floor(ratio d_b)))")
        return self

    def build(self, ctx: Context) -> Compressor:
        if self.scope == "layer":
            blocks = tuple((a, b, min(b - a, max(1, int(self.ratio * (b - a))))) for a, b in layer_bounds(ctx))
            return LayerTopK(ctx.d, blocks, self.index_bits)
        return TopK(ctx.d, _ratio_or_k(self.ratio, self.k, ctx.d), index_bits=self.index_bits)


@COMPRESSORS.register("randomk")
class RandomKConfig(_Config):
    """k uniformly random coordinates per worker (its own stream, or a shared seed)."""

    kind: Literal["randomk"] = "randomk"
    ratio: float | None = Field(None, gt=0, le=1, description="fraction of coordinates kept, in (0, 1]")
    k: int | None = Field(None, ge=1, description="number of coordinates kept (instead of ratio)")
    unbiased: bool = Field(False, description="scale decoded values by d / k")
    shared_seed: bool = Field(False, description="same coordinates on every worker (then linear)")
    index_bits: IndexBits = _index_bits_field()

    @model_validator(mode="after")
    def _one_of(self):
        _check_one_of(self.ratio, self.k)
        return self

    def build(self, ctx: Context) -> Compressor:
        return RandomK(ctx.d, _ratio_or_k(self.ratio, self.k, ctx.d), self.unbiased, self.shared_seed,
                       self.index_bits)


@COMPRESSORS.register("threshold")
class ThresholdConfig(_Config):
    """Keep |x_i| >= tau; the message size varies per worker."""

    kind: Literal["threshold"] = "threshold"
    tau: float = Field(gt=0, description="keep entries with |x_i| >= tau (> 0)")
    index_bits: IndexBits = _index_bits_field()

    def build(self, ctx: Context) -> Compressor:
        return Threshold(ctx.d, self.tau, self.index_bits)


@COMPRESSORS.register("mvss")
class MvssConfig(_Config):
    """Minimal-variance stochastic sparsification (Wangni et al. 2018), unbiased."""

    kind: Literal["mvss"] = "mvss"
    rho: float = Field(gt=0, le=1, description="expected fraction of coordinates kept, in (0, 1]")
    max_iters: int = Field(20, ge=0, description="passes of the greedy rescaling (stops early when done)")
    index_bits: IndexBits = _index_bits_field()

    def build(self, ctx: Context) -> Compressor:
        return Mvss(ctx.d, self.rho, self.max_iters, self.index_bits)


@COMPRESSORS.register("block_sign")
class BlockSignConfig(_Config):
    """Block-Sign (comp-ams.txt Definition 2): per block sign(x_B) ||x_B||_1 / |B|."""

    kind: Literal["block_sign"] = "block_sign"
    block_size: int | None = Field(None, ge=1, description="fixed block size (default: the model's layers)")

    def build(self, ctx: Context) -> Compressor:
        if self.block_size is not None:
            return BlockSign(ctx.d, block_size=min(self.block_size, ctx.d))
        return BlockSign(ctx.d, bounds=layer_bounds(ctx))


@COMPRESSORS.register("scaled_sign")
class ScaledSignConfig(_Config):
    """||x||_1 / d * sign(x) (sketched-amsgrad.txt eq. 3)."""

    kind: Literal["scaled_sign"] = "scaled_sign"

    def build(self, ctx: Context) -> Compressor:
        return BlockSign(ctx.d, bounds=((0, ctx.d),))


@COMPRESSORS.register("sign")
class SignConfig(_Config):
    """Plain sign (decoded +-1), e.g. for signSGD with majority vote."""

    kind: Literal["sign"] = "sign"

    def build(self, ctx: Context) -> Compressor:
        return Sign(ctx.d)


@COMPRESSORS.register("qsgd")
class QsgdConfig(_Config):
    """QSGD: s levels, stochastic rounding, one L2 norm per bucket; unbiased."""

    kind: Literal["qsgd"] = "qsgd"
    s: int = Field(ge=1, description="number of quantization levels (>= 1)")
    bucket_size: int = Field(512, ge=1, description="entries per bucket (one float32 norm each)")

    def build(self, ctx: Context) -> Compressor:
        return Qsgd(ctx.d, self.s, min(self.bucket_size, ctx.d))


@COMPRESSORS.register("terngrad")
class TernGradConfig(_Config):
    """TernGrad (Wen et al. 2017): stochastic ternary {-s, 0, s}, s = max|g| per layer; unbiased."""

    kind: Literal["terngrad"] = "terngrad"
    clip_sigma: float | None = Field(
        None, gt=0, description="clip each layer to +-c sigma (its std) before ternarizing (paper: 2.5); "
                                "default off")

    def build(self, ctx: Context) -> Compressor:
        return TernGrad(ctx.d, layer_bounds(ctx), self.clip_sigma)


@COMPRESSORS.register("fp16")
class Fp16Config(_Config):
    """Cast to IEEE half precision (round to nearest even), 2 d bytes."""

    kind: Literal["fp16"] = "fp16"

    def build(self, ctx: Context) -> Compressor:
        return Cast(ctx.d, torch.float16)


@COMPRESSORS.register("bf16")
class Bf16Config(_Config):
    """Cast to bfloat16 (round to nearest even), 2 d bytes."""

    kind: Literal["bf16"] = "bf16"

    def build(self, ctx: Context) -> Compressor:
        return Cast(ctx.d, torch.bfloat16)


@COMPRESSORS.register("int8")
class Int8Config(_Config):
    """Linear 8-bit quantization, scale = max|x| / 127 per layer, d + 4 L bytes."""

    kind: Literal["int8"] = "int8"
    stochastic: bool = Field(False, description="stochastic rounding from the workers' streams "
                                                "(unbiased) instead of round to nearest even")

    def build(self, ctx: Context) -> Compressor:
        return Int8(ctx.d, layer_bounds(ctx), self.stochastic)


# built-ins by the static union; kinds registered later (plugins) looked up at validation
CompressorConfig = COMPRESSORS.config_union()


@dataclass(frozen=True)
class ErrorFeedback:
    """Error feedback around any compressor (comp-ams.txt Algorithm 2, lines 7-8):

        p = x + e;   sent = C(p);   e' = p - D(sent)   (= e + x - x~)

    so ``D(sent) + e' == x + e`` exactly up to float rounding; the state ``e``
    ([n, d], one row per worker) goes in and comes out explicitly.  It is
    generic: it only uses ``compress``/``decompress``, so it works with every
    registered compressor.  An algorithm with ``error_feedback: false`` skips
    this wrapper and runs the plain compressed method (sent = C(x)).
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
