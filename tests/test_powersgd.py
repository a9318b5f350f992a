"""PowerSGD (algorithms/powersgd.py): exact recovery, wire bytes, error feedback, missing workers."""
from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

import algorithms
from algorithms.base import Context
from sim.learn.models import Block
from sim.learn.rng import WorkerStreams

TINY = Path(__file__).resolve().parents[1] / "scenarios" / "tiny.yaml"


def build(n, blocks, d, **kw):
    cfg = algorithms.ALGORITHMS["powersgd"](**{"lr": 1.0, **kw})
    return cfg.build(Context(d=d, n=n, blocks=blocks, device=torch.device("cpu")))


def step(alg, state, theta, grads, arrived=None, active=None, t=0):
    """One whole round; returns (Delta', new theta, state) with lr = 1 and no momentum."""
    n = grads.shape[0]
    arrived = torch.ones(n, dtype=torch.bool) if arrived is None else arrived
    up, state = alg.worker_encode(state, grads, t, WorkerStreams(0, n), active)
    _, state = alg.second_round(state, arrived, t)
    new, down, state = alg.server_update(state, theta, up, arrived, t)
    return theta - new, new, state


def rank2(rows=6, cols=5, s=(3.0, 1.0), seed=0):
    g = torch.Generator().manual_seed(seed)
    u, _ = torch.linalg.qr(torch.randn(rows, 2, generator=g))
    v, _ = torch.linalg.qr(torch.randn(cols, 2, generator=g))
    return u @ torch.diag(torch.tensor(s)) @ v.T


def svd_trunc(m, r):
    u, s, vh = torch.linalg.svd(m)
    return u[:, :r] @ torch.diag(s[:r]) @ vh[:r]


@pytest.mark.parametrize("rank", [2, 3])
def test_rank_r_recovers_a_rank_2_gradient_exactly(rank):
    n, G = 3, rank2()
    blocks = (Block("w", 0, 30, (6, 5)),)
    alg = build(n, blocks, 30, rank=rank)
    state = alg.init(torch.zeros(30))
    grads = G.reshape(1, -1).repeat(n, 1)
    delta, _, state = step(alg, state, torch.zeros(30), grads)        # random seeded Q: spans generically
    torch.testing.assert_close(delta.view(6, 5), svd_trunc(G, rank), atol=1e-5, rtol=0)
    torch.testing.assert_close(delta.view(6, 5), G, atol=1e-5, rtol=0)
    # a warm start spanning exactly the row space gives the same
    _, _, vh = torch.linalg.svd(G)
    state = alg.init(torch.zeros(30))
    q = torch.cat([vh[:2].T, torch.zeros(5, rank - 2)], 1) if rank > 2 else vh[:2].T @ torch.tensor([[2.0, 1.0], [0.5, 3.0]])
    state = type(state)((q,), state.e, state.mom)
    delta, _, _ = step(alg, state, torch.zeros(30), grads)
    torch.testing.assert_close(delta.view(6, 5), G, atol=1e-5, rtol=0)


def test_rank_1_converges_to_the_best_rank_1_approximation():
    n, G = 2, rank2()
    alg = build(n, (Block("w", 0, 30, (6, 5)),), 30, rank=1, error_feedback=False)
    state = alg.init(torch.zeros(30))
    grads = G.reshape(1, -1).repeat(n, 1)
    for t in range(30):             # subspace iteration, error (sigma2/sigma1)^2t = 9^-t
        delta, _, state = step(alg, state, torch.zeros(30), grads, t=t)
    torch.testing.assert_close(delta.view(6, 5), svd_trunc(G, 1), atol=1e-5, rtol=0)
    assert state.e is None


def test_conv_shaped_block_is_viewed_as_rows_by_the_rest_and_rank_is_clamped():
    alg = build(2, (Block("c", 0, 24, (2, 3, 2, 2)), Block("b", 24, 26, (2,))), 26, rank=4)
    assert [(L.rows, L.cols, L.rank) for L in alg.layers] == [(2, 12, 2)]
    assert alg.dense.tolist() == [24, 25]
    assert alg.upload_bytes == 4 * (2 * 2 + 2) and alg.reply_bytes == 4 * 12 * 2
    assert alg.broadcast_bytes == 4 * (12 * 2 + 2) and alg.request_bytes == 4 * 2 * 2


def test_bytes_per_round_match_the_formulas():
    """P and the dense vectors up, P_hat down, Q up, Q_bar and the dense vectors down."""
    from sim.study.config import load_scenario
    from sim.engine import build_world, run_algorithm
    world = build_world(load_scenario(TINY, ["stop.max_rounds=3", "eval_every=1", "stop.on_target=false"]), 0)
    n, hdr, r = world.n, world.scenario.network.header_bytes, 2
    mats = [b for b in world.model.blocks if len(b.shape) >= 2]
    dense = sum(b.stop - b.start for b in world.model.blocks if len(b.shape) < 2)
    assert len(mats) == 2 and dense == 42
    P = sum(b.shape[0] * min(r, b.shape[0], math.prod(b.shape[1:])) for b in mats)
    Q = sum(math.prod(b.shape[1:]) * min(r, b.shape[0], math.prod(b.shape[1:])) for b in mats)
    res = run_algorithm(world, algorithms.ALGORITHMS["powersgd"](name="p", lr=0.05, rank=r))
    rows = res.rows
    for t in range(1, 4):
        up = rows[t]["bytes_up"] - rows[t - 1]["bytes_up"]
        down = rows[t]["bytes_down"] - rows[t - 1]["bytes_down"]
        assert up == n * (4 * (P + dense) + hdr) + n * (4 * Q + hdr)
        assert down == n * (4 * P + hdr) + n * (4 * (Q + dense) + hdr)
        assert rows[t]["uploads"] - rows[t - 1]["uploads"] == 2 * n
    assert res.compression_rate == pytest.approx(world.model.d / (P + Q + dense))


@pytest.mark.parametrize("kind, extra", [("powersgd", {"rank": 2}),
                                         ("sketched_sgd", {"rows": 3, "cols": 64, "k": 20, "P": 2})])
def test_ring_runs_two_all_reduce_phases_with_the_same_math_as_a_star(kind, extra):
    """On a ring the first phase all-reduces P (or the sketches), the second Q
    (or the exact values at the candidates): every worker derives the request
    itself, so the trajectory equals the star's, and each phase moves
    2 (n - 1) (S + n header) bytes (reduce-scatter + all-gather, S per worker)."""
    from sim.study.config import load_scenario
    from sim.engine import build_world, run_algorithm
    base = ["stop.max_rounds=3", "eval_every=1", "stop.on_target=false"]
    cfg = algorithms.ALGORITHMS[kind](name="p", lr=0.05, **extra)
    star = run_algorithm(build_world(load_scenario(TINY, base), 0), cfg)
    world = build_world(load_scenario(TINY, [*base, "network.topology=ring"]), 0)
    ring = run_algorithm(world, cfg)
    keys = ("train_loss", "test_loss", "test_acc")
    assert [[r[k] for k in keys] for r in ring.rows] == [[r[k] for k in keys] for r in star.rows]
    n, hdr = world.n, world.scenario.network.header_bytes
    alg = cfg.build(Context(d=world.model.d, n=n, blocks=world.model.blocks, device=torch.device("cpu")))
    if kind == "powersgd":
        first, second = alg.upload_bytes, alg.reply_bytes
    else:
        first, second = alg.sketch.nbytes, 4 * alg.P * alg.k
    for t in range(1, 4):
        up = ring.rows[t]["bytes_up"] - ring.rows[t - 1]["bytes_up"]
        assert up == 2 * (n - 1) * (first + n * hdr) + 2 * (n - 1) * (second + n * hdr)
        assert ring.rows[t]["bytes_down"] == 0


def test_error_feedback_hand_computed():
    """2x2 layer + a 1-D bias, 2 workers, rank 1, Q = [1, 0]^T."""
    blocks = (Block("w", 0, 4, (2, 2)), Block("b", 4, 5, (1,)))
    alg = build(2, blocks, 5, rank=1)
    state = alg.init(torch.zeros(5))
    state = type(state)((torch.tensor([[1.0], [0.0]]),), state.e, state.mom)
    G = torch.tensor([[1.0, 2.0, 3.0, 4.0, 5.0], [1.0, 0.0, 0.0, 1.0, 7.0]])
    delta, _, state = step(alg, state, torch.zeros(5), G)
    # P_1 = [1, 3], P_2 = [1, 0]; mean [1, 1.5]; P_hat = [1, 1.5] / sqrt(3.25)
    # Q_1 = [5.5, 8] / s, Q_2 = [1, 1.5] / s; Q_bar = [3.25, 4.75] / s; Delta' = P_hat Q_bar^T
    want = torch.tensor([[1.0, 4.75 / 3.25], [1.5, 1.5 * 4.75 / 3.25]])
    torch.testing.assert_close(delta[:4].view(2, 2), want)
    assert float(delta[4]) == pytest.approx(6.0)                      # bias: exact mean
    e = G.clone()
    e[:, :4] -= want.reshape(1, 4)
    e[:, 4] = 0.0                                                      # sent exactly
    torch.testing.assert_close(state.e, e)
    torch.testing.assert_close(state.q[0], torch.tensor([[3.25], [4.75]]) / math.sqrt(3.25))
    # next round: M = G + e is what gets compressed
    up, s2 = alg.worker_encode(state, G, 1, WorkerStreams(0, 2))
    torch.testing.assert_close(s2.M, G + e)


def test_missing_workers_are_left_out_and_keep_their_message_as_memory():
    blocks = (Block("w", 0, 30, (6, 5)), Block("b", 30, 32, (2,)))
    g = torch.Generator().manual_seed(3)
    G = torch.randn(3, 32, generator=g)
    arrived = torch.tensor([True, True, False])
    alg3, alg2 = build(3, blocks, 32, rank=2), build(2, blocks, 32, rank=2)
    s3, s2 = alg3.init(torch.zeros(32)), alg2.init(torch.zeros(32))
    d3, _, s3 = step(alg3, s3, torch.zeros(32), G, arrived=arrived)
    d2, _, s2 = step(alg2, s2, torch.zeros(32), G[:2])
    torch.testing.assert_close(d3, d2)                                 # the means are over the arrived
    torch.testing.assert_close(s3.e[:2], s2.e)
    torch.testing.assert_close(s3.e[2], G[2])                          # e = M: nothing got through
    # a worker that does not take part keeps its memory as it was
    old = s3.e.clone()
    active = torch.tensor([True, False, True])
    _, _, s3 = step(alg3, s3, torch.zeros(32), G, arrived=active, active=active, t=1)
    torch.testing.assert_close(s3.e[1], old[1])


def test_momentum_and_nesterov_follow_the_formulas():
    blocks = (Block("b", 0, 3, (3,)),)                                 # dense only: Delta' = mean G
    G = torch.tensor([[1.0, 2.0, 3.0], [3.0, 2.0, 1.0]])
    for nesterov in (False, True):
        alg = build(2, blocks, 3, lr=0.1, momentum=0.5, nesterov=nesterov)
        theta, state, m, ref = torch.zeros(3), alg.init(torch.zeros(3)), torch.zeros(3), torch.zeros(3)
        for t in range(3):
            up, state = alg.worker_encode(state, G * (t + 1), t, WorkerStreams(0, 2))
            ask, state = alg.second_round(state, torch.ones(2, dtype=torch.bool), t)
            assert ask is None                                          # no matrix: one round
            theta, down, state = alg.server_update(state, theta, up, torch.ones(2, dtype=torch.bool), t)
            assert down.nbytes == 12
            u = G.mean(0) * (t + 1)
            m = 0.5 * m + u
            ref = ref - 0.1 * (u + 0.5 * m if nesterov else m)
            torch.testing.assert_close(theta, ref)


def test_q_init_uses_its_own_seeded_generator():
    blocks = (Block("w", 0, 30, (6, 5)),)
    torch.manual_seed(123)
    a = build(2, blocks, 30, seed=4).init(torch.zeros(30)).q[0]
    torch.manual_seed(999)
    b = build(2, blocks, 30, seed=4).init(torch.zeros(30)).q[0]
    c = build(2, blocks, 30, seed=5).init(torch.zeros(30)).q[0]
    assert torch.equal(a, b) and not torch.equal(a, c)
    with pytest.raises(Exception):
        algorithms.ALGORITHMS["powersgd"](lr=0.1, ranks=2)             # extra fields are forbidden
