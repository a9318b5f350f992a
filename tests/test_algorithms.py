"""Conformance over the compressor and algorithm registries, plus reference checks."""
from __future__ import annotations

import math

import pytest
import torch

import algorithms
from algorithms.base import INDEX_BYTES, VALUE_BYTES, Context
from algorithms.compressors import ErrorFeedback, TopKConfig
from algorithms.ps import mean_over_arrived, update_bytes
from sim.models import Block
from sim.rng import WorkerStreams

N, D = 4, 103


def ctx(n=N, d=D) -> Context:
    return Context(d=d, n=n, blocks=(Block("w", 0, d - 3, (d - 3,)), Block("b", d - 3, d, (3,))),
                   device=torch.device("cpu"))


def x(seed=0, n=N, d=D) -> torch.Tensor:
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed))


# --- algorithms ----------------------------------------------------------------
ALGORITHM_EXAMPLES = {
    "sgd": {"lr": 0.5},
    "topk_ef_sgd": {"lr": 0.5, "ratio": 0.25},
    "comp_ams": {"lr": 0.05, "compressor": {"kind": "topk", "ratio": 0.25}},
}


def test_every_algorithm_has_an_example():
    assert sorted(ALGORITHM_EXAMPLES) == algorithms.ALGORITHMS.names()


def quadratic_problem(n=N, d=D, seed=0):
    """f_i(theta) = 0.5 ||A_i theta - b_i||^2 / m: a convex synthetic task."""
    g = torch.Generator().manual_seed(seed)
    A = torch.randn(n, 20, d, generator=g) / math.sqrt(d)
    b = torch.randn(n, 20, generator=g)

    def grads(theta):  # [n, d]
        r = torch.einsum("nmd,d->nm", A, theta) - b
        return torch.einsum("nmd,nm->nd", A, r) / 20

    def loss(theta):
        r = torch.einsum("nmd,d->nm", A, theta) - b
        return float(0.5 * (r ** 2).sum(1).mean() / 20)

    return grads, loss


@pytest.mark.parametrize("kind", algorithms.ALGORITHMS.names())
def test_algorithm_decreases_loss_on_a_convex_task(kind):
    cfg = algorithms.ALGORITHMS[kind](**ALGORITHM_EXAMPLES[kind])
    alg = cfg.build(ctx())
    grads, loss = quadratic_problem()
    theta = torch.zeros(D)
    state = alg.init(theta)
    streams = WorkerStreams(0, N)
    start = loss(theta)
    arrived = torch.ones(N, dtype=torch.bool)
    for t in range(200):
        up, state = alg.worker_encode(state, grads(theta), t, streams)
        assert up.payload.nbytes.shape == (N,)
        theta, down, state = alg.server_update(state, theta, up, arrived, t)
        assert 0 < down.nbytes <= VALUE_BYTES * D
    assert loss(theta) < 0.5 * start


def test_comp_ams_with_identity_is_single_process_amsgrad():
    """comp-ams.txt Algorithm 2 with C = identity equals AMSGrad (Algorithm 1 with
    eps inside the root, as in Alg. 2 line 16) run on the mean gradient."""
    lr, b1, b2, eps = 0.01, 0.9, 0.999, 1e-8
    cfg = algorithms.ALGORITHMS["comp_ams"](lr=lr, compressor={"kind": "none"})
    alg = cfg.build(ctx())
    grads, _ = quadratic_problem()
    theta = torch.zeros(D)
    state = alg.init(theta)
    ref = theta.clone()
    m = torch.zeros(D); v = torch.zeros(D); vh = torch.zeros(D)
    for t in range(25):
        up, state = alg.worker_encode(state, grads(theta), t, WorkerStreams(0, N))
        theta, _, state = alg.server_update(state, theta, up, torch.ones(N, dtype=torch.bool), t)
        g = grads(ref).mean(0)
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        vh = torch.maximum(vh, v)
        ref = ref - lr * m / torch.sqrt(vh + eps)
        torch.testing.assert_close(theta, ref, rtol=1e-5, atol=1e-7)


def test_topk_ef_sgd_equals_ef_with_lr_inside_for_constant_lr():
    """EF on gradients with the server applying lr equals the p = lr g + e form."""
    lr = 0.3
    alg = algorithms.ALGORITHMS["topk_ef_sgd"](lr=lr, ratio=0.1).build(ctx())
    comp = TopKConfig(ratio=0.1).build(ctx())
    grads, _ = quadratic_problem()
    theta = torch.zeros(D); state = alg.init(theta)
    ref = theta.clone(); e = torch.zeros(N, D)
    for t in range(20):
        up, state = alg.worker_encode(state, grads(theta), t, WorkerStreams(0, N))
        theta, _, state = alg.server_update(state, theta, up, torch.ones(N, dtype=torch.bool), t)
        p = lr * grads(ref) + e
        sent = comp.decompress(comp.compress(p))
        e = p - sent
        ref = ref - sent.mean(0)
        torch.testing.assert_close(theta, ref, rtol=1e-5, atol=1e-6)


def test_missing_workers_are_left_out_of_the_mean():
    dec = torch.tensor([[1.0, 2.0], [3.0, 4.0], [100.0, 100.0]])
    arrived = torch.tensor([True, True, False])
    assert mean_over_arrived(dec, arrived).tolist() == [2.0, 3.0]
    assert mean_over_arrived(dec, torch.zeros(3, dtype=torch.bool)).tolist() == [0.0, 0.0]


def test_update_bytes_picks_the_cheaper_encoding():
    d = torch.zeros(1000)
    d[:10] = 1.0
    assert update_bytes(d) == 10 * 8            # sparse: value + index each
    d[:600] = 1.0
    assert update_bytes(d) == 4 * 1000          # dense is cheaper
