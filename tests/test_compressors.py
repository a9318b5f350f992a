"""Conformance over the compressor registry: every entry is tested the moment it is registered."""
from __future__ import annotations

import pytest
import torch

import algorithms
from algorithms.base import INDEX_BYTES, VALUE_BYTES, Context
from algorithms.compressors import ErrorFeedback, TopKConfig
from sim.models import Block
from sim.rng import WorkerStreams

N, D = 4, 103


def ctx(n=N, d=D) -> Context:
    return Context(d=d, n=n, blocks=(Block("w", 0, d - 3, (d - 3,)), Block("b", d - 3, d, (3,))),
                   device=torch.device("cpu"))


def x(seed=0, n=N, d=D) -> torch.Tensor:
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed))


# Example configs for every registered compressor; a new entry must be added here
# (the test below fails until it is).
COMPRESSOR_EXAMPLES = {
    "none": {},
    "topk": {"ratio": 0.1},
}

# Expected wire bytes per worker for the examples above (the formulas next to the code).
EXPECTED_BYTES = {
    "none": VALUE_BYTES * D,
    "topk": int(0.1 * D) * (VALUE_BYTES + INDEX_BYTES),
}


def test_every_compressor_has_an_example():
    assert sorted(COMPRESSOR_EXAMPLES) == algorithms.COMPRESSORS.names()


@pytest.mark.parametrize("kind", algorithms.COMPRESSORS.names())
def test_compressor_conformance(kind):
    comp = algorithms.COMPRESSORS[kind](**COMPRESSOR_EXAMPLES[kind]).build(ctx())
    streams = WorkerStreams(0, N)
    inp = x()
    p1 = comp.compress(inp, streams=streams, round=3)
    out = comp.decompress(p1)
    assert out.shape == inp.shape and out.dtype == inp.dtype                # shape and dtype kept
    assert p1.nbytes.tolist() == [EXPECTED_BYTES[kind]] * N                 # bytes match the formula
    again = comp.decompress(comp.compress(inp.clone(), streams=WorkerStreams(0, N), round=3))
    assert torch.equal(out, again)                                          # same seed, same output
    ef = ErrorFeedback(comp)
    e = x(1) * 0.1
    _, decoded, e_new = ef.step(inp, e, streams=streams, round=3)
    torch.testing.assert_close(decoded + e_new, inp + e, rtol=0, atol=1e-6)  # EF invariant


def test_none_is_exact():
    comp = algorithms.COMPRESSORS["none"]().build(ctx())
    inp = x()
    assert torch.equal(comp.decompress(comp.compress(inp)), inp)


def test_topk_keeps_the_k_largest_magnitudes():
    comp = TopKConfig(k=5).build(ctx())
    inp = x()
    out = comp.decompress(comp.compress(inp))
    for i in range(N):
        kept = out[i].nonzero().flatten()
        assert len(kept) == 5
        thresh = inp[i].abs().sort(descending=True).values[4]
        assert bool((inp[i, kept].abs() >= thresh).all())
        assert torch.equal(out[i, kept], inp[i, kept])


def test_topk_ratio_or_k_exactly_one():
    with pytest.raises(ValueError):
        TopKConfig()
    with pytest.raises(ValueError):
        TopKConfig(ratio=0.1, k=3)


