"""Skip rules (LAG / LASG / SASG): the rule, reuse of stored messages, and honest costs."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

import algorithms
from algorithms.base import Context
from sim.learn.models import Block
from sim.learn.rng import WorkerStreams

N, D = 4, 50


def ctx():
    return Context(d=D, n=N, blocks=(Block("w", 0, D, (D,)),), device=torch.device("cpu"))


def step(alg, state, theta, g, t, aux=None):
    up, state = alg.worker_encode(state, g, t, WorkerStreams(0, N), aux_grad=aux or (lambda th: g))
    theta, down, state = alg.server_update(state, theta, up, torch.ones(N, dtype=torch.bool), t)
    return up, theta, state


def test_threshold_formula_lasg_and_sasg_scalings():
    lasg = algorithms.ALGORITHMS["lasg_wk2"](lr=0.1, D=3).build(ctx())
    sasg = algorithms.ALGORITHMS["sasg"](lr=0.1, D=3).build(ctx())
    s = lasg.init(torch.zeros(D))
    s = type(s)(**{**s.__dict__, "history": (4.0, 1.0, 2.0, 3.0)})     # newest last
    # LASG: the last D = 3 changes 3, 2, 1 with xi = 1/3 each, over lr^2 M^2
    assert lasg.threshold(s, 5) == pytest.approx((1 / (0.1 ** 2 * N ** 2)) * (3 + 2 + 1) / 3)
    # SASG (the notebook): the D = 3 stored iterates have 2 changes between them, 3 and 2,
    # summed with no 1/D, over 2 lr M^2
    assert sasg.threshold(s, 5) == pytest.approx((1 / (2 * 0.1 * N ** 2)) * (3 + 2))


def _toy_threshold_run(kind: str, **kw):
    """Three workers, d = 2, constant gradients g_m: three rounds of the rule
    with D = 3, recording the threshold each round sees."""
    n, d, lr = 3, 2, 0.5
    c = Context(d=d, n=n, blocks=(Block("w", 0, d, (d,)),), device=torch.device("cpu"))
    alg = algorithms.ALGORITHMS[kind](lr=lr, D=3, **kw).build(c)
    g = torch.tensor([[1.0, 0.0], [0.0, 2.0], [1.0, 1.0]])
    theta, state, seen, thetas = torch.zeros(d), alg.init(torch.zeros(d)), [], [torch.zeros(d)]
    for t in range(4):
        seen.append(alg.threshold(state, t))
        up, state = alg.worker_encode(state, g, t, WorkerStreams(0, n), aux_grad=lambda th: g)
        theta, _, state = alg.server_update(state, theta, up, torch.ones(n, dtype=torch.bool), t)
        thetas.append(theta.clone())
    return seen, thetas, lr, n


def test_threshold_by_hand_on_a_three_worker_toy():
    """Every worker uploads in rounds 0..2 (LASG: threshold 0 then a constant
    gradient never differs by more than it; SASG: all communicate while k < D).
    LASG-WK2 (mean, dense): each step is -lr * mean(g) = -0.5 * (2/3, 1), so each
    change is ||.||^2 = 0.25 * (4/9 + 1) = 13/36; round 3's threshold is
    (1/3)(3 * 13/36) / (lr^2 M^2) = (13/36) / (0.25 * 9)."""
    seen, thetas, lr, m = _toy_threshold_run("lasg_wk2")
    change = 0.25 * (4 / 9 + 1)
    assert [float((b - a).pow(2).sum()) for a, b in zip(thetas, thetas[1:4])] == pytest.approx([change] * 3)
    assert seen[:2] == [0.0, pytest.approx(change / 3 / (lr ** 2 * m ** 2))]
    assert seen[3] == pytest.approx((3 * change / 3) / (lr ** 2 * m ** 2))
    # SASG (sum of messages, top-k of lr g + e with ratio 1 = exact): each step is
    # -lr * sum(g) = -0.5 * (2, 3), change 0.25 * 13 = 3.25; round 3 sees the two
    # changes between the D = 3 newest iterates, summed: 2 * 3.25 / (2 lr M^2)
    seen, thetas, lr, m = _toy_threshold_run("sasg", ratio=1.0)
    change = 0.25 * 13
    assert [float((b - a).pow(2).sum()) for a, b in zip(thetas, thetas[1:4])] == pytest.approx([change] * 3)
    assert seen[1] == pytest.approx(change / (2 * lr * m ** 2))          # one change so far, weight 1
    assert seen[3] == pytest.approx(2 * change / (2 * lr * m ** 2))


def test_worker_whose_gradient_does_not_change_skips_and_server_reuses_it():
    alg = algorithms.ALGORITHMS["lasg_wk2"](lr=0.1, max_delay=3).build(ctx())
    theta = torch.zeros(D)
    state = alg.init(theta)
    g = torch.randn(N, D, generator=torch.Generator().manual_seed(0))
    up, theta1, state = step(alg, state, theta, g, 0)
    assert up.carries_gradient.all()                        # threshold 0: everyone uploads first
    torch.testing.assert_close(theta1, -0.1 * g.mean(0))
    # Round 1: worker 0's gradient at theta^1 equals its gradient at theta_hat (constant
    # gradients); the threshold is positive, so it skips; the others' gradients change a lot.
    g2 = g.clone()
    g2[1:] += 100.0
    aux = lambda thetas: g                                  # noqa: E731 gradients at theta_hat
    up, theta2, state = step(alg, state, theta1, g2, 1, aux)
    assert up.carries_gradient.tolist() == [False, True, True, True]
    assert up.payload.nbytes[0] == 0                        # a header-only skip notice
    assert up.compute_factor.tolist() == [2.0] * N          # the auxiliary gradient is charged
    expect = torch.cat([g[:1], g2[1:]]).mean(0)             # worker 0's stored gradient reused
    torch.testing.assert_close(theta2, theta1 - 0.1 * expect)
    assert state.delay.tolist() == [1, 0, 0, 0]
    # the delay bound forces an upload
    for t in (2, 3):
        up, theta2, state = step(alg, state, theta2, g2 * 0 + g, t, aux)
    assert bool(up.carries_gradient[0]) or int(state.delay[0]) <= 3
    assert int(state.delay.max()) <= 3


def test_sasg_skipping_worker_keeps_its_error_and_stored_sparse_message():
    alg = algorithms.ALGORITHMS["sasg"](lr=0.1, ratio=0.1, D=1).build(ctx())
    theta = torch.zeros(D)
    state = alg.init(theta)
    g = torch.randn(N, D, generator=torch.Generator().manual_seed(1))
    up, theta, state = step(alg, state, theta, g, 0)        # k < D: everyone communicates
    err0 = state.inner.error.clone()
    stored0 = state.stored.clone()
    assert int((stored0[0] != 0).sum()) == 5                # top-10% of 50
    g2 = g.clone()
    g2[1:] *= 50.0
    up, theta, state = step(alg, state, theta, g2, 1, lambda th: g)
    assert up.carries_gradient.tolist() == [False, True, True, True]
    torch.testing.assert_close(state.inner.error[0], err0[0])      # error untouched
    torch.testing.assert_close(state.stored[0], stored0[0])        # stored sparse message reused
    assert alg.server_state_bytes(state) == sum(
        min(int((state.stored[i] != 0).sum()) * 8, 4 * D) for i in range(N))


def test_lasg_ps_workers_not_asked_send_and_compute_nothing():
    alg = algorithms.ALGORITHMS["lasg_ps"](lr=0.1, smoothness=1e-12).build(ctx())
    theta = torch.zeros(D)
    state = alg.init(theta)
    g = torch.randn(N, D, generator=torch.Generator().manual_seed(2))
    up, theta, state = step(alg, state, theta, g, 0)
    assert up.sends.all()
    up, theta, state = step(alg, state, theta, g, 1)
    assert not up.sends.any() and up.compute_factor.tolist() == [0.0] * N
    assert alg.skipped_fraction(state) == pytest.approx(0.5)
    assert alg.server_state_bytes(state) == 4 * D * N        # dense stored gradients


@pytest.fixture(scope="module")
def tiny():
    from sim.study.config import load_scenario
    from sim.engine import build_world
    p = Path(__file__).resolve().parents[1] / "scenarios" / "tiny.yaml"
    return build_world(load_scenario(p, ["stop.max_rounds=30", "eval_every=10", "stop.on_target=false"]), 0)


def test_skips_cost_a_header_and_are_not_uploads_in_the_engine(tiny):
    from sim.engine import run_algorithm
    phases = []
    cfg = algorithms.ALGORITHMS["lasg_wk2"](name="lasg", lr=0.1)
    res = run_algorithm(tiny, cfg, on_phase=phases.append)
    n, rounds = tiny.n, 30
    skips = round(res.skipped_fraction * n * rounds)
    assert 0 < skips < n * rounds
    last = res.rows[-1]
    assert last["uploads"] == n * rounds - skips
    payload = 4 * tiny.model.d
    assert last["bytes_up"] == (n * rounds - skips) * (payload + 64) + skips * 64
    # the auxiliary gradient doubles the compute time of the round's critical worker
    assert all(p["compute_s"] == pytest.approx(2 * tiny.step_s[0]) for p in phases if p["arrived"])
    assert res.server_state_bytes == 4 * tiny.model.d * n


def test_first_round_always_uploads_even_with_a_strict_rule():
    alg = algorithms.ALGORITHMS["lasg_wk2"](lr=0.1, strict=True).build(ctx())
    state = alg.init(torch.zeros(D))
    g = torch.randn(N, D, generator=torch.Generator().manual_seed(3))
    up, _, _ = step(alg, state, torch.zeros(D), g, 0)
    assert up.carries_gradient.all()
