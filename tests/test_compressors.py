"""Conformance over the compressor registry: every entry is tested the moment it is registered.

Expected wire sizes are computed here from the formulas in algorithms/compressors.py,
independently of the code (math.ceil / math.log2 on Python ints, counts taken from the
input or the decoded output).
"""
from __future__ import annotations

import math

import pytest
import torch
from pydantic import ValidationError

import algorithms
from algorithms.base import INDEX_BYTES, VALUE_BYTES, Context, Payload
from algorithms.compressors import CompressorConfig, ErrorFeedback, TopKConfig
from sim import conformance
from sim.conformance import D, N
from sim.conformance import context as ctx
from sim.conformance import randn as x
from sim.learn.models import Block
from sim.learn.rng import WorkerStreams


def build(kind, c=None, **over):
    return algorithms.COMPRESSORS[kind](**{**COMPRESSOR_EXAMPLES[kind], **over}).build(c or ctx())


def ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def sparse_expected(nnz: int, d: int, index_bits) -> int:
    """ceil(nnz (32 + ib) / 8) with ib = 32, ceil(log2 d) or 0."""
    ib = {32: 32, 0: 0, "log2d": math.ceil(math.log2(d))}[index_bits]
    return math.ceil(nnz * (32 + ib) / 8)


# Example configs for every registered compressor; a new entry must be added here
# (the test below fails until it is).
COMPRESSOR_EXAMPLES = {
    "none": {},
    "topk": {"ratio": 0.1},
    "randomk": {"ratio": 0.1, "unbiased": True},
    "threshold": {"tau": 1.0},
    "mvss": {"rho": 0.25},
    "block_sign": {},
    "scaled_sign": {},
    "sign": {},
    "qsgd": {"s": 4, "bucket_size": 32},
    "terngrad": {},
    "fp16": {},
    "bf16": {},
    "int8": {},
}

RANDOM = {"randomk", "mvss", "qsgd", "terngrad"}   # draw from the workers' streams
TAU = COMPRESSOR_EXAMPLES["threshold"]["tau"]

# Expected wire bytes per worker for the examples above (the formulas next to the code):
# an int, or f(input, decoded) -> list of n ints where the size varies per worker.
EXPECTED_BYTES = {
    "none": VALUE_BYTES * D,
    "topk": int(0.1 * D) * (VALUE_BYTES + INDEX_BYTES),
    "randomk": int(0.1 * D) * (VALUE_BYTES + INDEX_BYTES),
    "threshold": lambda inp, out: [8 * int((r.abs() >= TAU).sum()) for r in inp],
    "mvss": lambda inp, out: [8 * int(torch.count_nonzero(r)) for r in out],
    "block_sign": math.ceil(D / 8) + 4 * 2,                           # 2 layers
    "scaled_sign": math.ceil(D / 8) + 4,
    "sign": math.ceil(D / 8),
    "qsgd": math.ceil(D * (1 + math.ceil(math.log2(4 + 1))) / 8) + 4 * math.ceil(D / 32),
    "terngrad": math.ceil(2 * D / 8) + 4 * 2,                         # 2 bits each, a scaler per layer
    "fp16": 2 * D,
    "bf16": 2 * D,
    "int8": D + 4 * 2,                                                # an int8 each, a scale per layer
}


def expected_bytes(kind, inp, out) -> list[int]:
    e = EXPECTED_BYTES[kind]
    return e(inp, out) if callable(e) else [e] * inp.shape[0]


def test_every_compressor_has_an_example():
    assert sorted(COMPRESSOR_EXAMPLES) == algorithms.COMPRESSORS.names()
    assert sorted(EXPECTED_BYTES) == algorithms.COMPRESSORS.names()


@pytest.mark.parametrize("kind", algorithms.COMPRESSORS.names())
def test_compressor_conformance(kind):
    """The checks of sim/conformance.py (also `run_sim.py check` for plugins)."""
    conformance.compressor_shapes(build(kind))                              # shapes, dtype, nbytes [n] int64
    conformance.compressor_bytes(build(kind), lambda inp, out: expected_bytes(kind, inp, out))   # the formula
    conformance.compressor_determinism(build(kind), random=kind in RANDOM)  # same seed, same output; RNG
    conformance.compressor_error_feedback(build(kind))                      # EF invariant, every round
    conformance.compressor_chunks(build(kind))                              # row-wise (chunked rounds)


def test_the_conformance_checks_catch_what_they_check():
    """Each check fails on the fault it is about (they cannot pass vacuously)."""
    comp = build("topk")
    with pytest.raises(AssertionError, match="the formula gives"):
        conformance.compressor_bytes(comp, lambda inp, out: [1] * N)

    class Drifting:                 # draws from the global RNG: not reproducible
        linear = False

        def compress(self, x, *, streams=None, round=0):
            return Payload({"x": x + torch.rand(x.shape)}, torch.full((x.shape[0],), 4 * x.shape[1]))

        def decompress(self, p):
            return p.tensors["x"]
    with pytest.raises(AssertionError, match="global torch RNG"):
        conformance.compressor_determinism(Drifting())

    class Mutating(Drifting):       # decodes in place: the server's decode differs from the worker's
        def compress(self, x, *, streams=None, round=0):
            return Payload({"x": x.clone()}, torch.full((x.shape[0],), 4 * x.shape[1], dtype=torch.int64))

        def decompress(self, p):
            return p.tensors["x"].mul_(0.5)

    conformance.compressor_shapes(Mutating())
    with pytest.raises(AssertionError, match="decoded again"):
        conformance.compressor_error_feedback(Mutating())
    class OneSize(Mutating):        # one size for the whole batch, not one per worker
        def compress(self, x, *, streams=None, round=0):
            return Payload({"x": x.clone()}, torch.tensor([4 * x.shape[1]]))
    with pytest.raises(AssertionError, match=r"int64 tensor of shape \(4,\)"):
        conformance.compressor_shapes(OneSize())

    class BatchScaled(Mutating):    # one scale for the whole batch: a worker's message depends on the others
        def compress(self, x, *, streams=None, round=0):
            return Payload({"x": x / x.abs().max()}, torch.full((x.shape[0],), 4 * x.shape[1], dtype=torch.int64))

        def decompress(self, p):
            return p.tensors["x"].clone()
    with pytest.raises(AssertionError, match="own row"):
        conformance.compressor_chunks(BatchScaled())


@pytest.mark.parametrize("kind", algorithms.COMPRESSORS.names())
def test_config_is_in_the_union_and_strict(kind):
    conformance.config_strict(CompressorConfig, algorithms.COMPRESSORS[kind], kind, COMPRESSOR_EXAMPLES[kind])


@pytest.mark.parametrize("kind,bad", [
    ("topk", {"ratio": 0}), ("topk", {"ratio": 1.5}), ("topk", {"k": 0}),
    ("topk", {"k": 3, "scope": "layer"}), ("topk", {"ratio": 0.1, "index_bits": 16}),
    ("randomk", {"ratio": 0}), ("randomk", {}), ("randomk", {"ratio": 0.1, "k": 3}),
    ("threshold", {"tau": 0}), ("threshold", {}),
    ("mvss", {"rho": 0}), ("mvss", {"rho": 1.1}),
    ("block_sign", {"block_size": 0}),
    ("qsgd", {"s": 0}), ("qsgd", {"s": 4, "bucket_size": 0}), ("qsgd", {}),
    ("terngrad", {"clip_sigma": 0}), ("terngrad", {"clip_sigma": -1.0}),
    ("int8", {"stochastic": "sometimes"}), ("fp16", {"dtype": "bf16"}),
])
def test_config_validation(kind, bad):
    with pytest.raises(ValidationError):
        algorithms.COMPRESSORS[kind](**bad)


@pytest.mark.parametrize("kind", algorithms.COMPRESSORS.names())
def test_linear_compressors_sum_in_compressed_form(kind):
    comp = build(kind, shared_seed=True) if kind == "randomk" else build(kind)
    conformance.compressor_linear(comp)          # a no-op for the ones that are not linear


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


def test_topk_per_layer_keeps_k_b_in_every_block():
    sizes = [50, 30, 17, 3, 3]
    starts = [sum(sizes[:i]) for i in range(len(sizes))]
    blocks = tuple(Block(f"l{i}", a, a + s, (s,)) for i, (a, s) in enumerate(zip(starts, sizes)))
    c = ctx(blocks=blocks)
    comp = TopKConfig(ratio=0.1, scope="layer").build(c)
    inp = x()
    p = comp.compress(inp)
    out = comp.decompress(p)
    ks = [max(1, math.floor(0.1 * s)) for s in sizes]                      # 5, 3, 1, 1, 1
    assert p.nbytes.tolist() == [8 * sum(ks)] * N
    for (a, s), k in zip(zip(starts, sizes), ks):
        blk_in, blk_out = inp[:, a:a + s], out[:, a:a + s]
        for i in range(N):
            kept = blk_out[i].nonzero().flatten()
            assert len(kept) == k
            assert torch.equal(blk_out[i, kept], blk_in[i, kept])
            thresh = blk_in[i].abs().sort(descending=True).values[k - 1]
            assert bool((blk_in[i, kept].abs() >= thresh).all())
    # scope: vector on the same input keeps the global top-k instead
    vec = TopKConfig(ratio=0.1).build(c)
    assert vec.decompress(vec.compress(inp)).count_nonzero(1).tolist() == [math.floor(0.1 * D)] * N


@pytest.mark.parametrize("index_bits", [32, "log2d", 0])
@pytest.mark.parametrize("kind,cfg", [("topk", {"ratio": 0.1}), ("topk", {"k": 7, "scope": "vector"}),
                                      ("topk", {"ratio": 0.1, "scope": "layer"}),
                                      ("randomk", {"k": 9}), ("threshold", {"tau": 0.5}), ("mvss", {"rho": 0.3})])
def test_index_bits_change_bytes_as_the_formula_says(kind, cfg, index_bits):
    comp = algorithms.COMPRESSORS[kind](**cfg, index_bits=index_bits).build(ctx())
    inp = x()
    p = comp.compress(inp, streams=WorkerStreams(0, N), round=1)
    nnz = [int(torch.count_nonzero(r)) for r in comp.decompress(p)]         # no kept entry is 0 here
    assert p.nbytes.tolist() == [sparse_expected(k, D, index_bits) for k in nnz]


def test_index_bits_log2d_rounds_up_once_per_message():
    # d = 103 -> ceil(log2 103) = 7 bits per index; 10 entries of 32 + 7 bits = 390 bits -> 49 bytes.
    comp = TopKConfig(k=10, index_bits="log2d").build(ctx())
    assert comp.compress(x()).nbytes.tolist() == [49] * N
    assert TopKConfig(k=10, index_bits=0).build(ctx()).compress(x()).nbytes.tolist() == [40] * N
    # d = 1: an index needs no bits
    one = TopKConfig(k=1, index_bits="log2d").build(ctx(d=1, blocks=()))
    assert one.compress(x(d=1)).nbytes.tolist() == [4] * N


def test_randomk_draws_k_distinct_coordinates_per_worker():
    comp = build("randomk", unbiased=False)
    k = math.floor(0.1 * D)
    inp = x()
    p = comp.compress(inp, streams=WorkerStreams(0, N), round=0)
    idx = p.tensors["indices"]
    assert idx.shape == (N, k)
    assert all(len(set(r.tolist())) == k for r in idx)                     # without replacement
    assert len({tuple(sorted(r.tolist())) for r in idx}) == N               # workers draw independently
    out = comp.decompress(p)
    assert torch.equal(torch.gather(out, 1, idx), torch.gather(inp, 1, idx))
    unb = build("randomk").decompress(p)
    torch.testing.assert_close(torch.gather(unb, 1, idx), torch.gather(inp, 1, idx) * (D / k))


def test_randomk_shared_seed_is_linear_and_shares_indices():
    comp = build("randomk", shared_seed=True)
    assert comp.linear and not build("randomk").linear
    s = WorkerStreams(7, N)
    a, b = x(1), x(2)
    pa = comp.compress(a, streams=s, round=2)
    idx = pa.tensors["indices"]
    assert all(torch.equal(idx[i], idx[0]) for i in range(N))
    torch.testing.assert_close(comp.decompress(comp.compress(a, streams=s, round=2))
                               + comp.decompress(comp.compress(b, streams=s, round=2)),
                               comp.decompress(comp.compress(a + b, streams=s, round=2)))


def test_threshold_keeps_exactly_the_large_entries():
    comp = build("threshold")
    inp = x()
    inp[0, 0] = TAU                                                         # |x| == tau is kept
    out = comp.decompress(comp.compress(inp))
    keep = inp.abs() >= TAU
    assert torch.equal(out, torch.where(keep, inp, torch.zeros(())))
    assert len(set(comp.compress(inp).nbytes.tolist())) > 1                # varies per worker


def test_block_sign_magnitudes_are_block_l1_means():
    c = ctx()
    inp = x()
    inp[0, :5] = 0.0                                                        # sign(0) = +1
    comp = build("block_sign", c)
    out = comp.decompress(comp.compress(inp))
    for blk in c.blocks:
        xb, ob = inp[:, blk.start:blk.stop], out[:, blk.start:blk.stop]
        scale = xb.abs().sum(1, keepdim=True) / (blk.stop - blk.start)
        torch.testing.assert_close(ob.abs(), scale.expand_as(ob))
        assert torch.equal(ob >= 0, xb >= 0)
    assert bool((out[0, :5] > 0).all())


def test_block_sign_fixed_block_size():
    comp = build("block_sign", block_size=10)                               # 11 blocks, the last of 3
    inp = x()
    p = comp.compress(inp)
    assert p.nbytes.tolist() == [math.ceil(D / 8) + 4 * math.ceil(D / 10)] * N
    out = comp.decompress(p)
    for a in range(0, D, 10):
        xb = inp[:, a:a + 10]
        torch.testing.assert_close(out[:, a:a + 10].abs(), (xb.abs().sum(1, keepdim=True) / xb.shape[1]).expand_as(xb))


def test_scaled_sign_is_l1_mean_times_sign():
    inp = x()
    inp[1, 3] = 0.0
    comp = build("scaled_sign")
    out = comp.decompress(comp.compress(inp))
    scale = inp.abs().sum(1, keepdim=True) / D
    sgn = torch.where(inp >= 0, 1.0, -1.0)                                  # sign(0) = +1
    torch.testing.assert_close(out, scale * sgn)


def test_sign_is_plus_minus_one():
    inp = x()
    inp[2, 7] = 0.0
    comp = build("sign")
    out = comp.decompress(comp.compress(inp))
    assert torch.equal(out, torch.where(inp >= 0, 1.0, -1.0))


def test_qsgd_levels_are_in_range_and_on_the_grid():
    s, b = 4, 32
    comp = build("qsgd")
    inp = x()
    p = comp.compress(inp, streams=WorkerStreams(0, N), round=0)
    lv = p.tensors["levels"]
    assert int(lv.min()) >= 0 and int(lv.max()) <= s and int(lv.max()) > 0
    out = comp.decompress(p)
    for a in range(0, D, b):
        norm = torch.linalg.vector_norm(inp[:, a:a + b], dim=1, keepdim=True)
        torch.testing.assert_close(out[:, a:a + b], norm / s * lv[:, a:a + b] * torch.where(inp[:, a:a + b] >= 0, 1.0, -1.0))
        # stochastic rounding: the level is floor or ceil of s |x| / norm
        r = s * inp[:, a:a + b].abs() / norm
        assert bool(((lv[:, a:a + b] - r) > -1 - 1e-5).all() and ((lv[:, a:a + b] - r) < 1 + 1e-5).all())


ROUNDS = 2000


def _mean_and_se(comp, inp):
    s = WorkerStreams(3, N)
    acc = torch.zeros_like(inp, dtype=torch.float64)
    acc2 = torch.zeros_like(acc)
    nnz = 0.0
    for t in range(ROUNDS):
        out = comp.decompress(comp.compress(inp, streams=s, round=t)).double()
        acc += out
        acc2 += out * out
        nnz += float(torch.count_nonzero(out)) / N
    mean = acc / ROUNDS
    se = ((acc2 / ROUNDS - mean ** 2).clamp_min(0) / ROUNDS).sqrt()
    return mean, se, nnz / ROUNDS


@pytest.mark.parametrize("kind,over", [("randomk", {}), ("qsgd", {}), ("mvss", {}), ("terngrad", {}),
                                       ("int8", {"stochastic": True})])
def test_unbiased_compressors_average_to_x(kind, over):
    comp = build(kind, **over)
    inp = x()
    mean, se, _ = _mean_and_se(comp, inp)
    err = (mean - inp.double()).abs()
    assert bool((err <= 5 * se + 1e-4).all()), float((err / (se + 1e-12)).max())
    assert float(err.norm() / inp.double().norm()) < 0.1


def test_biased_randomk_averages_to_k_over_d_x():
    comp = build("randomk", unbiased=False)
    inp = x()
    mean, se, _ = _mean_and_se(comp, inp)
    k = math.floor(0.1 * D)
    assert bool(((mean - k / D * inp.double()).abs() <= 5 * se + 1e-4).all())


def test_mvss_expected_nnz_is_rho_d():
    rho = COMPRESSOR_EXAMPLES["mvss"]["rho"]
    comp = build("mvss")
    inp = x()
    p = comp.probabilities(inp)
    assert bool(((p >= 0) & (p <= 1)).all())
    torch.testing.assert_close(p.sum(1), torch.full((N,), rho * D), rtol=1e-4, atol=0)
    _, _, nnz = _mean_and_se(comp, inp)
    assert abs(nnz - rho * D) < 0.05 * rho * D
    # the unsaturated entries share one value g_i / p_i = +-||g||_1 / (c rho d) (minimal variance)
    out = comp.decompress(comp.compress(inp, streams=WorkerStreams(0, N), round=0))
    unsat = (p < 1) & (out != 0)
    mags = out.abs()[0][unsat[0]]
    torch.testing.assert_close(mags, mags[:1].expand_as(mags), rtol=1e-5, atol=0)


@pytest.mark.parametrize("kind", algorithms.COMPRESSORS.names())
@pytest.mark.parametrize("error_feedback", [True, False])
def test_comp_ams_runs_with_every_compressor(kind, error_feedback):
    """EF is generic: the compressed method works with and without it."""
    cfg = algorithms.ALGORITHMS["comp_ams"](lr=0.01, error_feedback=error_feedback,
                                            compressor={"kind": kind, **COMPRESSOR_EXAMPLES[kind]})
    alg = cfg.build(ctx())
    theta = torch.zeros(D)
    state = alg.init(theta)
    streams = WorkerStreams(0, N)
    for t in range(5):
        up, state = alg.worker_encode(state, x(t) + theta, t, streams)
        theta, _, state = alg.server_update(state, theta, up, torch.ones(N, dtype=torch.bool), t)
    assert bool(torch.isfinite(theta).all()) and bool((theta != 0).any())


# --- TernGrad, 16-bit casts, int8 ------------------------------------------------

def _layer_of(c):
    """Per coordinate, the (start, stop) of its layer in ctx c."""
    return [(b.start, b.stop) for b in c.blocks if b.stop > b.start]


def test_terngrad_values_are_ternary_with_the_per_layer_max_as_scaler():
    c = ctx()
    inp = x()
    inp[1, 5] = 0.0
    comp = build("terngrad", c)
    p = comp.compress(inp, streams=WorkerStreams(0, N), round=0)
    out = comp.decompress(p)
    assert p.tensors["ternary"].dtype == torch.int8
    for j, (a, b) in enumerate(_layer_of(c)):
        s = inp[:, a:b].abs().amax(1)                                      # s = max |g| per layer
        assert torch.equal(p.tensors["scales"][:, j], s)
        ob, xb = out[:, a:b], inp[:, a:b]
        assert bool(((ob == 0) | (ob == s[:, None]) | (ob == -s[:, None])).all())   # {-s, 0, s}
        assert bool(((ob == 0) | ((ob > 0) == (xb > 0))).all())           # sign kept where nonzero
        amax = xb.abs().argmax(1)                                          # |g| = s: kept with probability 1
        assert torch.equal(ob.gather(1, amax[:, None]), xb.gather(1, amax[:, None]))
    assert float(out[1, 5]) == 0.0                                         # P(b = 1) = 0 for a 0 entry
    assert p.nbytes.tolist() == [math.ceil(2 * D / 8) + 4 * len(c.blocks)] * N


def test_terngrad_bytes_follow_ceil_2d_over_8_plus_4_per_layer():
    sizes = [50, 30, 17, 3, 3]
    starts = [sum(sizes[:i]) for i in range(len(sizes))]
    blocks = tuple(Block(f"l{i}", a, a + s, (s,)) for i, (a, s) in enumerate(zip(starts, sizes)))
    for d, c in [(D, ctx(blocks=blocks)), (D, ctx(blocks=())), (5, ctx(d=5, blocks=()))]:
        comp = algorithms.COMPRESSORS["terngrad"]().build(c)
        L = max(1, len(c.blocks))
        p = comp.compress(x(d=d), streams=WorkerStreams(0, N), round=0)
        assert p.nbytes.tolist() == [math.ceil(2 * d / 8) + 4 * L] * N          # 103 -> 26 + 4 L; 5 -> 2 + 4


def test_terngrad_clipping_clamps_each_layer_to_c_sigma():
    c = ctx()
    inp = x()
    inp[0, 0] = 50.0                                                        # an outlier
    comp = build("terngrad", c, clip_sigma=2.5)
    p = comp.compress(inp, streams=WorkerStreams(0, N), round=0)
    for j, (a, b) in enumerate(_layer_of(c)):
        xb = inp[:, a:b]
        cs = 2.5 * xb.std(1, correction=0)
        clipped = torch.maximum(torch.minimum(xb, cs[:, None]), -cs[:, None])
        torch.testing.assert_close(p.tensors["scales"][:, j], clipped.abs().amax(1), rtol=0, atol=0)
    assert float(p.tensors["scales"][0, 0]) < 50.0


def test_terngrad_same_stream_same_draw_and_no_global_rng():
    comp = build("terngrad")
    inp = x()
    before = torch.random.get_rng_state()
    a = comp.decompress(comp.compress(inp, streams=WorkerStreams(5, N), round=9))
    b = comp.decompress(comp.compress(inp, streams=WorkerStreams(5, N), round=9))
    assert torch.equal(a, b) and torch.equal(torch.random.get_rng_state(), before)


@pytest.mark.parametrize("kind,cast", [("fp16", lambda t: t.half().float()), ("bf16", lambda t: t.bfloat16().float())])
def test_16bit_casts_decode_to_the_torch_cast_exactly(kind, cast):
    inp = x() * torch.logspace(-6, 4, D)                                   # a wide range of magnitudes
    inp[0, :3] = torch.tensor([1e5, -7e4, 1 + 2 ** -11])                   # fp16 overflow; a tie (to even: 1.0)
    comp = build(kind)
    p = comp.compress(inp)
    out = comp.decompress(p)
    assert out.dtype == torch.float32 and torch.equal(out, cast(inp))
    assert p.nbytes.tolist() == [2 * D] * N
    if kind == "fp16":
        assert out[0, 0].item() == float("inf") and out[0, 1].item() == float("-inf")
        assert out[0, 2].item() == 1.0                                     # round to nearest even
    assert not comp.linear


def test_int8_round_to_nearest_error_is_at_most_half_a_step():
    c = ctx()
    inp = x()
    inp[2, :4] = 0.0
    inp[3, c.blocks[1].start:] = 0.0                                        # a layer of zeros: scale 0
    comp = build("int8", c)
    p = comp.compress(inp)
    out = comp.decompress(p)
    q = p.tensors["q"]
    assert q.dtype == torch.int8 and int(q.min()) >= -127 and int(q.max()) <= 127
    for j, (a, b) in enumerate(_layer_of(c)):
        scale = inp[:, a:b].abs().amax(1) / 127                             # max |x| / 127 per layer
        torch.testing.assert_close(p.tensors["scales"][:, j], scale, rtol=0, atol=0)
        err = (out[:, a:b] - inp[:, a:b]).abs()
        assert bool((err <= scale[:, None] / 2 * (1 + 1e-5) + 1e-12).all())
        torch.testing.assert_close(out[:, a:b], q[:, a:b].float() * scale[:, None], rtol=0, atol=0)
    assert torch.equal(out[3, c.blocks[1].start:], torch.zeros(3))
    assert bool((out[2, :4] == 0).all())
    assert p.nbytes.tolist() == [D + 4 * 2] * N
    assert torch.equal(comp.decompress(comp.compress(inp)), out)            # deterministic, no streams needed


def test_int8_stochastic_rounding_is_floor_or_ceil_and_needs_streams():
    comp = build("int8", stochastic=True)
    inp = x()
    p = comp.compress(inp, streams=WorkerStreams(0, N), round=0)
    s = p.tensors["scales"]
    v = inp / torch.repeat_interleave(s, torch.tensor([D - 3, 3]), dim=1)
    d = p.tensors["q"].float() - v
    assert bool(((d > -1 - 1e-4) & (d < 1 + 1e-4)).all())
    assert p.nbytes.tolist() == [D + 8] * N
    with pytest.raises(ValueError, match="streams"):
        comp.compress(inp)


# --- top-k fast path (issue 15): exactly the results of the torch.topk implementation ---------

from algorithms import compressors as C  # noqa: E402


def reference_topk_compress(x, k, d, index_bits=32):
    """TopK.compress before issue 15 (torch.topk of |x| on the full row)."""
    n = x.shape[0]
    idx = torch.topk(x.abs(), k, dim=1, sorted=False).indices
    return torch.gather(x, 1, idx), idx, C.sparse_bytes(torch.full((n,), k), d, index_bits)


def reference_layer_topk_compress(x, blocks, d, index_bits=32):
    """LayerTopK.compress before issue 15."""
    n = x.shape[0]
    idx = torch.cat([torch.topk(x[:, a:b].abs(), k, dim=1, sorted=False).indices + a
                     for a, b, k in blocks], dim=1)
    return torch.gather(x, 1, idx), idx, C.sparse_bytes(torch.full((n,), sum(k for _, _, k in blocks)), d,
                                                        index_bits)


def reference_decompress(vals, idx, d):
    return torch.zeros(vals.shape[0], d, dtype=vals.dtype, device=vals.device).scatter_(1, idx, vals)


def _same_payload(got, vals, idx, nbytes):
    """Per row the same set of (index, value) pairs (bitwise), and the same nbytes."""
    assert got.tensors["indices"].shape == idx.shape
    gi, order = got.tensors["indices"].sort(1)
    ri, rorder = idx.sort(1)
    assert torch.equal(gi, ri)
    gv = torch.gather(got.tensors["values"], 1, order)
    rv = torch.gather(vals, 1, rorder)
    assert torch.equal(gv.view(torch.int32), rv.view(torch.int32))      # bitwise, -0.0 included
    assert torch.equal(got.nbytes, nbytes)


def _inputs(n, d, seed):
    """Normal rows, rows of different scales, ties, zeros, extreme finite values, inf, -0.0."""
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(n, d, generator=g)
    scales = 10.0 ** torch.linspace(-30, 30, n).view(n, 1)
    ints = torch.randint(-4, 5, (n, d), generator=g).float()              # many ties
    sparse = base * (torch.rand(n, d, generator=g) < 0.005)               # mostly (+-)0
    extreme = base.clone()
    extreme[:, :: 97] = 3.0e38
    extreme[:, 5:: 131] = -3.0e38
    extreme[:, 7:: 89] = 1e-45                                            # subnormal
    extreme[0, 3] = float("inf")
    extreme[-1, -1] = float("-inf")
    negzero = -torch.zeros(n, d)
    negzero[:, :: 50] = base[:, :: 50]
    tailbig = base.clone()
    tailbig[:, -(d % 8 or 1):] = 1e6                                       # the ragged end is in the top k
    dup = torch.randn(1, d, generator=g).round(decimals=1).expand(n, d).contiguous()   # ties at the k-th
    return {"normal": base, "scaled": base * scales, "ties": ints, "sparse": sparse, "extreme": extreme,
            "negzero": negzero, "tailbig": tailbig, "dup": dup, "zeros": torch.zeros(n, d)}


@pytest.mark.parametrize("n,d", [(1, 20000), (3, 16387), (5, 20001), (2, 40960)])
@pytest.mark.parametrize("density", [None, 0.0001, 0.003, 0.01, 1 / 32])
def test_topk_fast_path_equals_reference(n, d, density):
    for seed in range(2):
        for name, inp in _inputs(n, d, seed).items():
            k = 1 if density is None else max(1, int(density * d))
            comp = C.TopK(d, k)
            p = comp.compress(inp)
            vals, idx, nbytes = reference_topk_compress(inp, k, d)
            _same_payload(p, vals, idx, nbytes)
            out = comp.decompress(p)
            assert torch.equal(out.view(torch.int32), reference_decompress(vals, idx, d).view(torch.int32)), name


@pytest.mark.parametrize("sample,sigmas", [(4096, 4.0), (64, 0.0), (16, -50.0), (10 ** 6, 10.0)])
def test_topk_fast_path_threshold_settings_never_change_the_result(sample, sigmas):
    """A threshold placed too high (sigmas < 0: too few blocks reach it, the exact fallback) or
    too low, from tiny or whole-row samples: the same indices."""
    d, n = 30011, 4
    for name, inp in _inputs(n, d, 7).items():
        for k in (1, 17, 300, d // 32):
            got = C.topk_abs_indices(inp, k, sample=sample, sigmas=sigmas)
            ref = torch.topk(inp.abs(), k, dim=1, sorted=False).indices
            assert torch.equal(got.sort(1).values, ref.sort(1).values), (name, k)


def test_topk_fast_path_is_taken_and_small_or_dense_cases_fall_back(monkeypatch):
    calls = []
    real = torch.topk

    def spy(t, k, *a, **kw):
        calls.append(tuple(t.shape))
        return real(t, k, *a, **kw)

    monkeypatch.setattr(torch, "topk", spy)
    inp = torch.randn(4, 40000, generator=torch.Generator().manual_seed(1))
    C.topk_abs_indices(inp, 400)
    assert (4, 40000) not in calls                     # never torch.topk on the full rows
    calls.clear()
    C.topk_abs_indices(inp, 40000 // 16)               # k > d / 32: torch.topk directly
    assert calls == [(4, 40000)]
    calls.clear()
    C.topk_abs_indices(inp[:, :1000], 10)              # d < TOPK_MIN_D: torch.topk directly
    assert calls == [(4, 1000)]


def test_topk_k_equals_d_and_forced_fast_path_on_small_rows(monkeypatch):
    monkeypatch.setattr(C, "TOPK_MIN_D", 0)
    monkeypatch.setattr(C, "TOPK_MAX_DENSITY", 1.0)
    for d in (16, 17, 103, 999):
        for name, inp in _inputs(3, d, 3).items():
            for k in sorted({1, 2, d // 8, d // 9 + 1, d // 2, d}):
                if k < 1:
                    continue
                got = C.topk_abs_indices(inp, k)
                ref = torch.topk(inp.abs(), k, dim=1, sorted=False).indices
                assert torch.equal(got.sort(1).values, ref.sort(1).values), (d, name, k)


def test_layer_topk_fast_path_equals_reference(monkeypatch):
    sizes = [20000, 512, 17000, 10]
    starts = [sum(sizes[:i]) for i in range(len(sizes))]
    d = sum(sizes)
    blocks = tuple(Block(f"l{i}", a, a + s, (s,)) for i, (a, s) in enumerate(zip(starts, sizes)))
    c = ctx(n=3, d=d, blocks=blocks)
    for ratio in (0.001, 0.01, 0.03):
        comp = TopKConfig(ratio=ratio, scope="layer").build(c)
        for name, inp in _inputs(3, d, 11).items():
            vals, idx, nbytes = reference_layer_topk_compress(inp, comp.blocks, d)
            p = comp.compress(inp)
            _same_payload(p, vals, idx, nbytes)
            assert torch.equal(comp.decompress(p).view(torch.int32),
                               reference_decompress(vals, idx, d).view(torch.int32)), name
        # non-contiguous input rows (a column slice of a wider tensor)
        wide = torch.randn(3, d + 5, generator=torch.Generator().manual_seed(2))[:, 5:]
        vals, idx, nbytes = reference_layer_topk_compress(wide, comp.blocks, d)
        _same_payload(comp.compress(wide), vals, idx, nbytes)


def test_topk_fast_path_float64_and_error_feedback():
    d = 20000
    inp = torch.randn(2, d, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    ref = torch.topk(inp.abs(), 200, dim=1, sorted=False).indices
    assert torch.equal(C.topk_abs_indices(inp, 200).sort(1).values, ref.sort(1).values)
    comp = C.TopK(d, 200)
    ef = ErrorFeedback(comp)
    g = torch.randn(2, d, generator=torch.Generator().manual_seed(5))
    e = torch.randn(2, d, generator=torch.Generator().manual_seed(6)) * 0.1
    _, decoded, e2 = ef.step(g, e)
    vals, idx, _ = reference_topk_compress(g + e, 200, d)
    want = reference_decompress(vals, idx, d)
    assert torch.equal(decoded, want) and torch.equal(e2, (g + e) - want)


# --- sign decoders (issue 15): one write, exactly the values of the old decoders ----------------

def reference_block_sign_decompress(comp, p):
    scales, pos = p.tensors["scales"], p.tensors["positive"]
    if comp.block_size is not None:
        mag = torch.repeat_interleave(scales, comp.block_size, dim=1)[:, : comp.d]
    else:
        mag = torch.repeat_interleave(scales, comp._sizes(scales.device), dim=1, output_size=comp.d)
    return torch.where(pos, mag, -mag)


def reference_sign_decompress(p):
    return p.tensors["positive"].to(torch.float32) * 2 - 1


@pytest.mark.parametrize("d", [1, 7, 64, 103, 4099])
def test_sign_decoders_equal_reference_bitwise(d):
    bounds3 = ((0, d - d // 2), (d - d // 2, d)) if d > 1 else ((0, 1),)
    comps = [C.BlockSign(d, bounds=((0, d),)), C.BlockSign(d, bounds=bounds3)]
    comps += [C.BlockSign(d, block_size=b) for b in {1, 3, 8, 64, d} if b <= d]
    for seed in range(3):
        g = torch.Generator().manual_seed(seed)
        inputs = [torch.randn(3, d, generator=g), torch.zeros(3, d), -torch.zeros(3, d),
                  torch.randint(-2, 3, (3, d), generator=g).float() * 1e30, torch.randn(1, d, generator=g)]
        for inp in inputs:
            for comp in comps:
                p = comp.compress(inp)
                got, want = comp.decompress(p), reference_block_sign_decompress(comp, p)
                assert got.dtype == want.dtype and torch.equal(got.view(torch.int32), want.view(torch.int32))
            sp = C.Sign(d).compress(inp)
            got, want = C.Sign(d).decompress(sp), reference_sign_decompress(sp)
            assert got.dtype == want.dtype and torch.equal(got.view(torch.int32), want.view(torch.int32))
