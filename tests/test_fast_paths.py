"""Issue 15 (goal 2): the cheaper streams and compressors give bit for bit what
the code gave before them.  The references are frozen copies of the old code
(tests/_reference_rng.py, tests/_reference_compressors.py); every payload
tensor, nbytes and decoded output is compared bitwise (floats as their int32
bits, so NaN payloads and the sign of zero count), on several shapes, seeds,
rounds and edge inputs.
"""
from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _reference_compressors as REF  # noqa: E402
import _reference_rng as REF_RNG  # noqa: E402

from sim.learn import rng  # noqa: E402


def same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Equal dtype, shape and bits (floats compared as integers of their width)."""
    if a.dtype != b.dtype or a.shape != b.shape:
        return False
    if a.dtype.is_floating_point:
        view = {torch.float32: torch.int32, torch.float64: torch.int64, torch.float16: torch.int16,
                torch.bfloat16: torch.int16}[a.dtype]
        a, b = a.contiguous().view(view), b.contiguous().view(view)
    return torch.equal(a, b)


# --- the 32-bit hash ----------------------------------------------------------------

EDGE_WORDS = [0, 1, 2, 0x7FFF, 0x8000, 0xFFFF, 0x10000, 0x1FFFF, 0x20000, 0x7FFFFFFF, 0x80000000,
              0x80000001, 0xFFFF0000, 0xFFFF7FFF, 0xFFFFFF00, 0xFFFFFFFE, 0xFFFFFFFF]


def test_cpu_uses_the_32_bit_paths():
    # the self-check passes on this machine, so the tests below test the fast code
    assert rng._fast32("cpu") == {"hash": True, "u32float": True}


def test_hash32_in_32_bit_lanes_is_the_int64_hash():
    g = torch.Generator().manual_seed(1)
    words = torch.cat([torch.tensor(EDGE_WORDS, dtype=torch.int64),
                       torch.randint(0, 1 << 32, (200_003,), dtype=torch.int64, generator=g),
                       torch.arange(0, 1 << 32, 65_537, dtype=torch.int64)])         # a sweep of [0, 2^32)
    ref = REF_RNG.hash32(words)
    assert torch.equal(rng.hash32(words), ref)
    assert torch.equal(rng.to_int64(rng.hash32_i32(rng._to_int32_exact(words))), ref)
    # the split first round: hash32(h ^ j) from L(h) ^ L(j), h per row, j a counter
    h = torch.tensor(EDGE_WORDS, dtype=torch.int64).view(-1, 1)
    j = torch.cat([torch.arange(5000), torch.tensor(EDGE_WORDS)]).view(1, -1)
    assert torch.equal(rng.to_int64(rng.counter_bits32(h, j)), REF_RNG.hash32(h ^ j))
    # the edge words in every lane position of a vector (body, tail, odd lengths)
    for length in (1, 7, 16, 17, 33):
        w = torch.tensor(EDGE_WORDS * length, dtype=torch.int64)[: len(EDGE_WORDS) * length - length // 2]
        assert torch.equal(rng.hash32(w.repeat(300)), REF_RNG.hash32(w.repeat(300)))


def test_uniforms_from_32_bit_words_are_the_old_uniforms():
    words = torch.cat([torch.tensor(EDGE_WORDS + [0xFF, 0x100, 0x1FF], dtype=torch.int64),
                       torch.randint(0, 1 << 32, (100_000,), generator=torch.Generator().manual_seed(2))])
    ref = REF_RNG.to_uniform(words)
    assert same_bits(rng.uniform_from32_(rng._to_int32_exact(words)), ref)
    assert same_bits(rng._uniform_shift32(rng._to_int32_exact(words)), ref)      # the fallback path
    assert float(ref.max()) < 1.0


@pytest.mark.parametrize("seed,n,shape", [(0, 32, (40_705,)), (3, 5, ()), (7, 1, (3, 5)), (2**40 + 5, 4, (70_001,)),
                                          (11, 3, (2, 3, 4)), (5, 2, (0,))])
def test_streams_give_the_old_draws(seed, n, shape):
    new, old = rng.WorkerStreams(seed, n), REF_RNG.WorkerStreams(seed, n)
    assert torch.equal(new.keys, old.keys)
    for tag, rnd in [(rng.TAG_COMPRESS, 1), (rng.TAG_BATCH, 0), (rng.TAG_LOCAL, 2**33 + 7)]:
        b = old.bits(tag, rnd, shape)
        assert torch.equal(new.bits(tag, rnd, shape), b)
        assert torch.equal(rng.to_int64(new.bits32(tag, rnd, shape)), b)
        assert new.bits32(tag, rnd, shape).dtype == torch.int32
        assert same_bits(new.uniform(tag, rnd, shape), old.uniform(tag, rnd, shape))
        w, r = torch.tensor([0, n - 1, 0]), torch.tensor([5, 0, 2**32 + 1])
        for sub in (None, 3):
            b = old.bits_at(tag, w, r, shape, sub=sub)
            assert torch.equal(new.bits_at(tag, w, r, shape, sub=sub), b)
            assert torch.equal(rng.to_int64(new.bits_at32(tag, w, r, shape, sub=sub)), b)
        rows_new, rows_old = rng.RowStreams(new, w, r), REF_RNG.RowStreams(old, w, r)
        assert torch.equal(rows_new.bits(tag, 9, shape), rows_old.bits(tag, 9, shape))
        assert torch.equal(rng.to_int64(rows_new.bits32(tag, 9, shape)), rows_old.bits(tag, 9, shape))
        assert same_bits(rows_new.uniform(tag, 9, shape), rows_old.uniform(tag, 9, shape))
    high = torch.tensor([1, 2, 7, 1000, 2**31, 2**32 - 1][:n] + [3] * max(0, n - 6))
    assert torch.equal(new.randint(1, 4, high, 999), old.randint(1, 4, high, 999))


def test_a_device_failing_the_self_check_uses_the_int64_path(monkeypatch):
    monkeypatch.setitem(rng._FAST32, "cpu", {"hash": False, "u32float": False})
    new, old = rng.WorkerStreams(4, 3), REF_RNG.WorkerStreams(4, 3)
    assert torch.equal(new.bits(3, 2, (5000,)), old.bits(3, 2, (5000,)))
    assert same_bits(new.uniform(3, 2, (5000,)), old.uniform(3, 2, (5000,)))
    words = torch.tensor(EDGE_WORDS * 300, dtype=torch.int64)
    assert torch.equal(rng.hash32(words), REF_RNG.hash32(words))


def test_bits32_of_reads_any_streams_object():
    class OnlyBits:              # a streams object of a plugin, without bits32
        def bits(self, tag, round, shape):
            return REF_RNG.WorkerStreams(8, 2).bits(tag, round, shape)
    got = rng.bits32_of(OnlyBits(), 3, 1, (1000,))
    assert got.dtype == torch.int32
    assert torch.equal(rng.to_int64(got), REF_RNG.WorkerStreams(8, 2).bits(3, 1, (1000,)))


def test_chunks_cover_the_draws_row_by_row(monkeypatch):
    monkeypatch.setattr(rng, "CHUNK_WORDS", 1000)          # several rows per chunk, and one row per chunk
    for n, shape in [(5, (300,)), (7, (2, 150)), (3, (4000,)), (4, ())]:
        new, old = rng.WorkerStreams(9, n), REF_RNG.WorkerStreams(9, n)
        got, stops = [], []
        for a, b, w in new.bits32_chunks(3, 2, shape):
            assert w.shape == (b - a, *shape) and w.dtype == torch.int32
            got.append(rng.to_int64(w)), stops.append((a, b))   # to_int64 copies: the buffer is reused
        assert stops[0][0] == 0 and stops[-1][1] == n and all(p[1] == q[0] for p, q in zip(stops, stops[1:]))
        assert torch.equal(torch.cat(got), old.bits(3, 2, shape))
        assert torch.equal(new.bits(3, 2, shape), old.bits(3, 2, shape))
        w, r = torch.tensor([1, 0, n - 1]), torch.tensor([3, 3, 8])
        got = [rng.to_int64(c) for _, _, c in rng.RowStreams(new, w, r).bits32_chunks(3, 0, shape)]
        assert torch.equal(torch.cat(got), REF_RNG.RowStreams(old, w, r).bits(3, 0, shape))


# --- compressors against the frozen reference ----------------------------------------

import algorithms.compressors as NEW  # noqa: E402


def pair(cls_name: str, **fields):
    """The new compressor and the reference one with the same fields."""
    new = getattr(NEW, cls_name)(**fields)
    ref = getattr(REF, cls_name)(**{f.name: getattr(new, f.name) for f in dataclasses.fields(new)})
    return new, ref


def assert_same(new, ref, x, seed=0, round=1, streams=None):
    """Payload tensors, nbytes and decoded output bit for bit (``streams``: a
    function (module) -> streams object, default WorkerStreams(seed, n))."""
    n = x.shape[0]
    make = streams or (lambda mod: mod.WorkerStreams(seed, n))
    a = new.compress(x.clone(), streams=make(rng), round=round)
    b = ref.compress(x.clone(), streams=make(REF_RNG), round=round)
    assert sorted(a.tensors) == sorted(b.tensors)
    for key in b.tensors:
        assert same_bits(a.tensors[key], b.tensors[key]), key
    assert same_bits(a.nbytes, b.nbytes)
    assert same_bits(new.decompress(a), ref.decompress(b))
    return a


def gaussian(n, d, seed=0, scale=1.0):
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed)) * scale


@pytest.mark.parametrize("n,d,k", [(32, 40_705, 407), (3, 70_001, 1), (1, 4096, 64), (5, 6400, 100), (4, 64, 1),
                                   (2, 63, 1), (3, 1000, 16), (3, 1000, 17), (6, 1000, 500), (2, 5, 5), (2, 1, 1)])
@pytest.mark.parametrize("unbiased,shared", [(False, False), (True, False), (False, True)])
def test_randomk_keeps_the_same_indices_in_the_same_order(n, d, k, unbiased, shared):
    new, ref = pair("RandomK", d=d, k=k, unbiased=unbiased, shared_seed=shared)
    for seed, round in [(0, 1), (7, 0), (3, 2**33)]:
        assert_same(new, ref, gaussian(n, d, seed), seed=seed, round=round)


def test_randomk_rows_short_of_candidates_take_the_full_topk(monkeypatch):
    # too few candidates expected: every row (or many) falls back, same result
    new, ref = pair("RandomK", d=20_000, k=300)
    for sigmas in (-3.0, -1.0, -100.0):
        monkeypatch.setattr(NEW, "RANDK_SIGMAS", sigmas)
        assert_same(new, ref, gaussian(6, 20_000, 1), seed=1)


def test_randomk_with_row_streams_and_small_chunks(monkeypatch):
    monkeypatch.setattr(rng, "CHUNK_WORDS", 5000)
    new, ref = pair("RandomK", d=3000, k=40)
    w, r = torch.tensor([2, 0, 1, 2]), torch.tensor([4, 1, 1, 9])
    assert_same(new, ref, gaussian(4, 3000), streams=lambda mod: mod.RowStreams(mod.WorkerStreams(5, 3), w, r))

    class OnlyBits:              # a streams object without bits32 / bits32_chunks
        seed, device, n = 5, torch.device("cpu"), 4

        def __init__(self, mod):
            self.inner = mod.WorkerStreams(5, 4)

        def bits(self, tag, round, shape):
            return self.inner.bits(tag, round, shape)
    assert_same(new, ref, gaussian(4, 3000), streams=OnlyBits)


def edge_inputs(n, d, seed=0):
    """Gaussian rows, and rows of zeros, ties, huge (norms overflow), tiny and
    subnormal values, +-0 and infinities, in one batch of n >= 8 rows."""
    x = gaussian(n, d, seed)
    x[1] = 0.0
    x[2] = torch.where(torch.arange(d) % 3 == 0, -1.5, 1.5)               # ties
    x[3] *= 1e30                                                           # squares overflow
    x[4] *= 1e-41                                                          # subnormal
    x[5, ::2] = -0.0
    x[6, ::7] = float("inf")
    x[6, 1::7] = float("-inf")
    x[7] = 3.4e38
    return x


@pytest.mark.parametrize("n,d,bucket", [(32, 40_705, 512), (3, 1024, 512), (1, 1000, 512), (2, 700, 1000),
                                        (8, 700, 1000), (8, 5000, 7), (8, 257, 1)])
@pytest.mark.parametrize("levels", [1, 3, 255])
def test_qsgd_is_bit_identical(n, d, bucket, levels):
    new, ref = pair("Qsgd", d=d, s=levels, bucket_size=bucket)
    for seed, round in [(0, 1), (5, 2**32 + 3)]:
        assert_same(new, ref, gaussian(n, d, seed), seed=seed, round=round)
    if n >= 8:
        assert_same(new, ref, edge_inputs(n, d), seed=2, round=4)


@pytest.mark.parametrize("words", [1000, 700, 100_000])
def test_qsgd_in_small_chunks_and_with_row_streams(monkeypatch, words):
    monkeypatch.setattr(rng, "CHUNK_WORDS", words)                        # 1 and several rows per chunk
    for d, bucket in [(700, 128), (700, 1000)]:
        new, ref = pair("Qsgd", d=d, s=2, bucket_size=bucket)
        assert_same(new, ref, edge_inputs(9, d, 1), seed=3)
        w, r = torch.tensor([2, 0, 1, 2]), torch.tensor([4, 1, 1, 9])
        assert_same(new, ref, gaussian(4, d), streams=lambda mod: mod.RowStreams(mod.WorkerStreams(5, 3), w, r))


def test_qsgd_without_the_uint32_conversion(monkeypatch):
    monkeypatch.setitem(rng._FAST32, "cpu", {"hash": True, "u32float": False})
    new, ref = pair("Qsgd", d=3000, s=3, bucket_size=512)
    assert_same(new, ref, edge_inputs(8, 3000), seed=1)


def skewed(n, d, seed=0):
    """Heavy-tailed rows, so that mvss saturates entries over several passes."""
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g) * torch.rand(n, d, generator=g).pow(8) * 100


@pytest.mark.parametrize("n,d", [(32, 40_705), (1, 1000), (8, 257), (3, 5)])
@pytest.mark.parametrize("rho,iters", [(0.01, 20), (0.3, 20), (0.5, 3), (1.0, 20), (0.2, 0)])
def test_mvss_is_bit_identical(n, d, rho, iters):
    new, ref = pair("Mvss", d=d, rho=rho, max_iters=iters)
    for seed, round in [(0, 1), (4, 7)]:
        for x in (gaussian(n, d, seed), skewed(n, d, seed)):
            assert same_bits(new.probabilities(x), ref.probabilities(x))
            assert_same(new, ref, x, seed=seed, round=round)
    if n >= 8:
        x = edge_inputs(n, d)
        x[6:8] = skewed(2, d)                         # finite rows (infinite ones: below)
        assert same_bits(new.probabilities(x), ref.probabilities(x))
        assert_same(new, ref, x, seed=1)


def test_mvss_rows_with_infinities_or_nan_take_the_general_code():
    new, ref = pair("Mvss", d=300, rho=0.1)
    x = edge_inputs(8, 300)
    x[0, 3] = float("nan")
    assert same_bits(new.probabilities(x), ref.probabilities(x))
    assert_same(new, ref, x, seed=2)


class FixedBits:
    """A streams object whose draws are given words (int64 in [0, 2^32))."""

    def __init__(self, words: torch.Tensor) -> None:
        self.words, self.n, self.seed, self.device = words, words.shape[0], 0, torch.device("cpu")

    def bits(self, tag, round, shape):
        return self.words.clone()


def test_mvss_ties_of_float32_u_and_m_are_decided_exactly():
    # draws within +-130 of m = ceil(p 2^32): float32(u) == m for many of them
    d = 5000
    new, ref = pair("Mvss", d=d, rho=0.6, max_iters=2)
    x = skewed(4, d, 2)
    m = torch.ceil(ref.probabilities(x).double() * 2.0**32).to(torch.int64)
    off = torch.randint(-130, 131, (4, d), generator=torch.Generator().manual_seed(0))
    words = (m + off).clamp(0, 2**32 - 1)
    uf, mf = rng._to_int32_exact(words).view(torch.uint32).to(torch.float32), m.to(torch.float32)
    assert int((uf == mf).sum()) > 1000 and int(((uf == mf) & (words >= m)).sum()) > 100
    assert_same(new, ref, x, streams=lambda mod: FixedBits(words))


def test_mvss_with_row_streams_and_small_chunks(monkeypatch):
    monkeypatch.setattr(rng, "CHUNK_WORDS", 3000)
    new, ref = pair("Mvss", d=2000, rho=0.3)
    w, r = torch.tensor([2, 0, 1]), torch.tensor([4, 1, 1])
    assert_same(new, ref, skewed(3, 2000), streams=lambda mod: mod.RowStreams(mod.WorkerStreams(5, 3), w, r))
    assert_same(new, ref, skewed(7, 2000), seed=3)


@pytest.mark.parametrize("words", [1, 60_000, 1 << 19])
def test_float64_row_sums_by_chunks_are_the_sums_of_the_whole(monkeypatch, words):
    monkeypatch.setattr(rng, "CHUNK_WORDS", words)
    for n, d in [(1, 100_000), (2, 50_000), (3, 50_000), (5, 40_001), (32, 4070), (7, 1)]:
        a = skewed(n, d, n).abs()
        assert same_bits(NEW._sum_rows_f64(a), a.sum(1, keepdim=True, dtype=torch.float64))
        assert all(b - a_ >= 2 or n == 1 for a_, b in NEW._row_ranges(n, d, "cpu"))


def with_nan(x):
    x = x.clone()
    x[0, x.shape[1] // 2] = float("nan")
    return x


@pytest.mark.parametrize("words", [1000, 1 << 19])
@pytest.mark.parametrize("n,d", [(32, 40_705), (1, 1000), (9, 777), (8, 5)])
def test_sign_block_sign_and_scaled_sign_are_bit_identical(monkeypatch, words, n, d):
    monkeypatch.setattr(rng, "CHUNK_WORDS", words)
    cuts = sorted({0, d // 3, d // 3 + 1, d - 1, d})
    layers = tuple((a, b) for a, b in zip(cuts, cuts[1:]) if b > a)
    comps = [pair("Sign", d=d), pair("BlockSign", d=d, bounds=((0, d),)), pair("BlockSign", d=d, bounds=layers)]
    comps += [pair("BlockSign", d=d, block_size=bs) for bs in {1, 7, 512, d} if bs <= d]
    inputs = [gaussian(n, d, 3)] + ([edge_inputs(n, d), with_nan(edge_inputs(n, d))] if n >= 8 else [])
    for new, ref in comps:
        for x in inputs:
            assert_same(new, ref, x)


def layers_of(d):
    cuts = sorted({0, 1, d // 3, d // 2, d - 1, d} & set(range(d + 1)))
    return tuple((a, b) for a, b in zip(cuts, cuts[1:]) if b > a)


@pytest.mark.parametrize("words", [1000, 1 << 19])
@pytest.mark.parametrize("n,d", [(32, 40_705), (1, 1000), (9, 10_000), (8, 3)])
@pytest.mark.parametrize("clip", [None, 2.5])
def test_terngrad_is_bit_identical(monkeypatch, words, n, d, clip):
    monkeypatch.setattr(rng, "CHUNK_WORDS", words)
    for bounds in [((0, d),), layers_of(d)]:
        new, ref = pair("TernGrad", d=d, bounds=bounds, clip_sigma=clip)
        inputs = [gaussian(n, d, 1), skewed(n, d, 2)] + ([edge_inputs(n, d), with_nan(gaussian(n, d))] if n >= 8 else [])
        for i, x in enumerate(inputs):
            assert_same(new, ref, x, seed=i, round=i + 1)
    w, r = torch.tensor([0, 0, 1]), torch.tensor([4, 1, 1])
    assert_same(new, ref, gaussian(3, d), streams=lambda mod: mod.RowStreams(mod.WorkerStreams(5, 2), w, r))


def test_terngrad_without_the_uint32_conversion(monkeypatch):
    monkeypatch.setitem(rng._FAST32, "cpu", {"hash": True, "u32float": False})
    new, ref = pair("TernGrad", d=3000, bounds=layers_of(3000))
    assert_same(new, ref, edge_inputs(8, 3000), seed=1)


@pytest.mark.parametrize("words", [1000, 1 << 19])
@pytest.mark.parametrize("n,d", [(32, 40_705), (1, 1000), (9, 10_000), (8, 3)])
@pytest.mark.parametrize("stochastic", [False, True])
def test_int8_is_bit_identical(monkeypatch, words, n, d, stochastic):
    monkeypatch.setattr(rng, "CHUNK_WORDS", words)
    for bounds in [((0, d),), layers_of(d)]:
        new, ref = pair("Int8", d=d, bounds=bounds, stochastic=stochastic)
        inputs = [gaussian(n, d, 1), skewed(n, d, 2)]
        if n >= 8:
            tiny = edge_inputs(n, d)
            tiny[4] = 1e-43                                  # max |x| / 127 underflows to a 0 scale
            tiny[5] = (torch.arange(d) % 254) - 126.5         # ties of round half to even (scale 1)
            tiny[5, 0] = 127.0
            inputs += [edge_inputs(n, d), tiny, with_nan(gaussian(n, d))]
        for i, x in enumerate(inputs):
            assert_same(new, ref, x, seed=i, round=i + 1)


@pytest.mark.parametrize("words", [1000, 1 << 19])
@pytest.mark.parametrize("n,d", [(32, 40_705), (1, 1000), (9, 777), (8, 3)])
@pytest.mark.parametrize("tau", [2.58, 0.1, 1e-45, 1.0000001])
def test_threshold_is_bit_identical(monkeypatch, words, n, d, tau):
    monkeypatch.setattr(rng, "CHUNK_WORDS", words)
    new, ref = pair("Threshold", d=d, tau=tau)
    x = gaussian(n, d, 1)
    x[0, : d // 2] = 1.0000001                               # at tau (ties of >=)
    inputs = [x] + ([edge_inputs(n, d), with_nan(gaussian(n, d))] if n >= 8 else [])
    for x in inputs:
        assert_same(new, ref, x)
