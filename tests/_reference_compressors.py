"""Frozen copy of algorithms/compressors.py as of commit aeb2e23 (before issue 15's
fast paths), the reference the fast paths must match bit for bit
(tests/test_fast_paths.py).  Only the compressor classes and their helpers are
kept (no configs, no registry); randomness comes from tests/_reference_rng.py.
Do not edit: it is what "today's results" means.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar, Literal, Protocol

import torch

from _reference_rng import TAG_COMPRESS, WorkerStreams

from algorithms.base import INDEX_BYTES, VALUE_BYTES, Context, Payload

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


def _plus_minus_one(pos: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """+1.0 where ``pos``, else -1.0 (exactly pos.to(dtype) * 2 - 1), in one new
    tensor: the bools read as uint8 (0 / 1; torch converts uint8 to float much
    faster than bool), then doubled and shifted in place."""
    return pos.view(torch.uint8).to(dtype).mul_(2).sub_(1)


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
            bits = WorkerStreams(streams.seed, 1, streams.device).bits(TAG_COMPRESS, round, (self.d,))
        else:
            bits = streams.bits(TAG_COMPRESS, round, (self.d,))              # [n, d]
        keys = bits * self.d + torch.arange(self.d, dtype=torch.int64, device=bits.device)
        idx = torch.topk(keys, self.k, dim=1, sorted=False).indices.to(device)
        return idx.expand(n, -1) if self.shared_seed else idx

    def compress(self, x, *, streams=None, round=0) -> Payload:
        streams = _need_streams(streams, "randomk")
        n = x.shape[0]
        idx = self._indices(n, streams, round, x.device)                     # [n, k]
        vals = torch.gather(x, 1, idx)
        nbytes = sparse_bytes(torch.full((n,), self.k), self.d, self.index_bits)
        return Payload({"values": vals, "indices": idx}, nbytes)

    def decompress(self, p: Payload) -> torch.Tensor:
        out = _scatter(self.d, p.tensors["values"], p.tensors["indices"])
        return out * (self.d / self.k) if self.unbiased else out


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
        kept = x.abs() >= self.tau                                           # [n, d]
        vals = torch.where(kept, x, torch.zeros((), dtype=x.dtype, device=x.device))
        return Payload({"values": vals, "kept": kept}, sparse_bytes(kept.sum(1), self.d, self.index_bits))

    def decompress(self, p: Payload) -> torch.Tensor:
        return p.tensors["values"]


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

    def compress(self, x, *, streams=None, round=0) -> Payload:
        streams = _need_streams(streams, "mvss")
        p = self.probabilities(x)
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
        n = x.shape[0]
        a = x.abs()
        if self.block_size is not None:
            l1 = _padded_view(a, self.block_size).sum(-1)                     # [n, M]
        else:  # a loop over the layers (a handful), deterministic on every device
            l1 = torch.stack([a[:, s:e].sum(1) for s, e in self.bounds], dim=1)
        scales = l1 / self._sizes(x.device).to(x.dtype)
        return Payload({"positive": x >= 0, "scales": scales}, _full(n, self.nbytes))

    def decompress(self, p: Payload) -> torch.Tensor:
        # +-1 from the bits, then times each block's scale, in place on one [n, d]
        # buffer: (+-1) * s is exactly +-s (also for s = 0, giving -0.0 as -mag did,
        # and s = inf), the values of repeat_interleave + where(pos, mag, -mag).
        scales, pos = p.tensors["scales"], p.tensors["positive"]
        n = scales.shape[0]
        out = _plus_minus_one(pos, scales.dtype)
        if self.block_size is not None:
            b, full = self.block_size, self.d // self.block_size
            if full:
                out[:, : full * b].view(n, full, b).mul_(scales[:, :full].unsqueeze(-1))
            if full * b < self.d:
                out[:, full * b:].mul_(scales[:, full:full + 1])
        else:   # a loop over the layers (a handful)
            for j, (a, e) in enumerate(self.bounds):
                out[:, a:e].mul_(scales[:, j:j + 1])
        return out


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
        streams = _need_streams(streams, "qsgd")
        n = x.shape[0]
        v = _padded_view(x, self.bucket_size)                                # [n, M, b]
        norms = torch.linalg.vector_norm(v, dim=-1)                          # [n, M]
        safe = norms.clamp_min(torch.finfo(x.dtype).tiny).unsqueeze(-1)
        r = (v.abs() / safe * self.s).reshape(n, -1)[:, : self.d]            # s |v_i| / norm in [0, s]
        u = streams.uniform(TAG_COMPRESS, round, (self.d,)).to(device=x.device, dtype=r.dtype)
        levels = torch.floor(r + u).clamp_(0, self.s).to(torch.int32)
        return Payload({"norms": norms, "levels": levels, "positive": x >= 0}, _full(n, self.nbytes))

    def decompress(self, p: Payload) -> torch.Tensor:
        norms, levels, pos = p.tensors["norms"], p.tensors["levels"], p.tensors["positive"]
        per = torch.repeat_interleave(norms, self.bucket_size, dim=1)[:, : self.d] / self.s
        mag = per * levels.to(per.dtype)
        return torch.where(pos, mag, -mag)


def layer_ids(bounds: tuple[tuple[int, int], ...], device=None) -> torch.Tensor:
    """The layer index of every coordinate, [d] int64, for ``bounds`` tiling [0, d)."""
    sizes = torch.tensor([b - a for a, b in bounds], dtype=torch.int64, device=device)
    return torch.repeat_interleave(torch.arange(len(bounds), device=device), sizes)


def _layer_absmax(a: torch.Tensor, ids: torch.Tensor, n_layers: int) -> torch.Tensor:
    """a [n, d] >= 0 -> per-layer max [n, L] (one batched scatter; a max is exact
    in any order, so this is the same on every device)."""
    out = torch.zeros(a.shape[0], n_layers, dtype=a.dtype, device=a.device)
    return out.scatter_reduce_(1, ids.expand(a.shape[0], -1), a, reduce="amax", include_self=True)


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
        streams = _need_streams(streams, "terngrad")
        n = x.shape[0]
        g = self._clip(x) if self.clip_sigma is not None else x
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
        scales = p.tensors["scales"]
        return p.tensors["ternary"].to(scales.dtype) * scales.index_select(1, layer_ids(self.bounds, scales.device))


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
        scales = p.tensors["scales"]
        return p.tensors["q"].to(scales.dtype) * scales.index_select(1, layer_ids(self.bounds, scales.device))
