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
