"""signSGD / Signum with majority vote (algorithms/majority.py; Bernstein et al.,
ICLR 2019, arXiv:1810.05291, Algorithm 1): hand-computed rounds, wire bytes,
ties, missing workers."""
from __future__ import annotations

import math

import pytest
import torch
from pydantic import ValidationError

import algorithms
from algorithms.base import Context
from algorithms.majority import majority_vote, vote_bytes
from sim.learn.models import Block
from sim.learn.rng import WorkerStreams


def ctx(n, d) -> Context:
    return Context(d=d, n=n, blocks=(Block("w", 0, d, (d,)),), device=torch.device("cpu"))


def build(n, d, **kw):
    return algorithms.ALGORITHMS["signsgd_mv"](**{"lr": 0.1, **kw}).build(ctx(n, d))


def step(alg, state, theta, grads, t, arrived=None, active=None):
    n = grads.shape[0]
    up, state = alg.worker_encode(state, grads, t, WorkerStreams(0, n), active)
    arrived = torch.ones(n, dtype=torch.bool) if arrived is None else arrived
    theta, down, state = alg.server_update(state, theta, up, arrived, t)
    return theta, up, down, state


G0 = torch.tensor([[1.0, -2.0, 0.0, -0.5],      # signs + - + -   (sign(0) = +1)
                   [-1.0, -3.0, 2.0, 0.1],      #       - - + +
                   [3.0, 1.0, -1.0, -0.2]])     #       + + - -
# sums of signs: [1, -1, 1, -1] -> vote [+1, -1, +1, -1]


def test_three_workers_hand_computed_vote_and_update():
    alg = build(3, 4)
    theta0 = torch.full((4,), 0.5)
    theta, up, down, _ = step(alg, alg.init(theta0), theta0, G0, 0)
    assert up.payload.tensors["positive"].tolist() == [[True, False, True, False],
                                                       [False, False, True, True],
                                                       [True, True, False, False]]
    assert theta.tolist() == pytest.approx([0.4, 0.6, 0.4, 0.6], abs=1e-7)
    # the vote itself
    signs = up.payload.tensors["positive"].float() * 2 - 1
    assert majority_vote(signs, torch.ones(3, dtype=torch.bool)).tolist() == [1.0, -1.0, 1.0, -1.0]


def test_weight_decay_is_inside_the_step():
    alg = build(3, 4, weight_decay=0.1)
    theta0 = torch.full((4,), 0.5)
    theta, *_ = step(alg, alg.init(theta0), theta0, G0, 0)
    # theta - lr (vote + lambda theta): 0.5 - 0.1 (+-1 + 0.05)
    assert theta.tolist() == pytest.approx([0.395, 0.595, 0.395, 0.595], abs=1e-7)


def test_signum_momentum_hand_computed_second_round():
    """v = (1 - beta) g + beta v with beta = 0.5: the momentum, not the new
    gradient, decides the sign."""
    alg = build(3, 4, momentum=0.5)
    theta = torch.zeros(4)
    state = alg.init(theta)
    theta, _, _, state = step(alg, state, theta, G0, 0)                   # v = 0.5 g0, same signs as g0
    torch.testing.assert_close(state.momentum, 0.5 * G0)
    G1 = torch.tensor([[-0.3, -1.0, 1.0, 1.0],      # v1 = 0.5 g1 + 0.25 g0: [0.1, -1, 0.5, 0.375]     + - + +
                       [-1.0, 4.0, 1.0, 1.0],       #                       [-0.75, 1.25, 1, 0.525]   - + + +
                       [-8.0, 1.0, -1.0, -1.0]])    #                       [-3.25, 0.75, -0.75, -0.55] - + - -
    theta, up, _, state = step(alg, state, theta, G1, 1)
    assert up.payload.tensors["positive"].tolist() == [[True, False, True, True],
                                                       [False, True, True, True],
                                                       [False, True, False, False]]
    # votes round 0 [+1, -1, +1, -1], round 1 sums [-1, 1, 1, 1] -> [-1, +1, +1, +1]
    assert theta.tolist() == pytest.approx([0.0, 0.0, -0.2, 0.0], abs=1e-7)
    torch.testing.assert_close(state.momentum, 0.5 * G1 + 0.25 * G0)


def test_sign_of_zero_is_plus_one_on_the_workers():
    alg = build(3, 4)
    theta, up, *_ = step(alg, alg.init(torch.zeros(4)), torch.zeros(4), torch.zeros(3, 4), 0)
    assert bool(up.payload.tensors["positive"].all())
    assert theta.tolist() == pytest.approx([-0.1] * 4)


@pytest.mark.parametrize("d", [1, 4, 8, 20, 103])
@pytest.mark.parametrize("tie", ["positive", "zero"])
def test_wire_bytes_up_and_down(d, tie):
    n = 3
    alg = build(n, d, tie=tie)
    g = torch.randn(n, d, generator=torch.Generator().manual_seed(d))
    _, up, down, _ = step(alg, alg.init(torch.zeros(d)), torch.zeros(d), g, 0)
    assert up.payload.nbytes.dtype == torch.int64
    assert up.payload.nbytes.tolist() == [math.ceil(d / 8)] * n             # 1 bit per coordinate up
    expect_down = math.ceil(d / 8) if tie == "positive" else math.ceil(2 * d / 8)   # 1 bit, or ternary 2 bits
    assert down.nbytes == expect_down == vote_bytes(d, tie)
    assert down.kind == "update" and down.delta is None
    assert not alg.summable


G_TIE = torch.tensor([[1.0, -1.0, 2.0],
                      [-1.0, -1.0, -2.0]])       # sums [0, -2, 0]


def test_tie_positive_moves_a_tied_coordinate_by_minus_lr():
    alg = build(2, 3)
    theta, _, down, _ = step(alg, alg.init(torch.zeros(3)), torch.zeros(3), G_TIE, 0)
    assert theta.tolist() == pytest.approx([-0.1, 0.1, -0.1])               # vote [+1, -1, +1]
    assert down.nbytes == 1


def test_tie_zero_leaves_a_tied_coordinate_in_place():
    alg = build(2, 3, tie="zero", weight_decay=0.5)
    theta0 = torch.tensor([1.0, 1.0, -2.0])
    theta, _, down, _ = step(alg, alg.init(theta0), theta0, G_TIE, 0)
    # vote [0, -1, 0]; weight decay still applies: theta - 0.1 (vote + 0.5 theta)
    assert theta.tolist() == pytest.approx([0.95, 1.05, -1.9])
    assert down.nbytes == 1                                                 # ceil(2 * 3 / 8)


def test_missing_workers_are_left_out_of_the_vote():
    # all three: sums [1, -1, 1, -1]; without worker 2: [0, -2, 2, 0] -> tie positive [+1, -1, +1, +1]
    alg = build(3, 4)
    theta, _, down, _ = step(alg, alg.init(torch.zeros(4)), torch.zeros(4), G0, 0,
                             arrived=torch.tensor([True, True, False]))
    assert theta.tolist() == pytest.approx([-0.1, 0.1, -0.1, -0.1])
    # only worker 2 arrived: its signs are the vote
    theta, *_ = step(alg, alg.init(torch.zeros(4)), torch.zeros(4), G0, 0,
                     arrived=torch.tensor([False, False, True]))
    assert theta.tolist() == pytest.approx([-0.1, -0.1, 0.1, 0.1])
    # a worker that did not arrive cannot outvote: 100 copies of it change nothing
    g = torch.cat([G0[:2], G0[2:].expand(3, -1)])
    alg5 = build(5, 4)
    theta5, *_ = step(alg5, alg5.init(torch.zeros(4)), torch.zeros(4), g, 0,
                      arrived=torch.tensor([True, True, False, False, False]))
    assert theta5.tolist() == pytest.approx([-0.1, 0.1, -0.1, -0.1])


def test_no_worker_arrived_means_no_step_and_nothing_broadcast():
    alg = build(3, 4, weight_decay=0.1)
    theta0 = torch.full((4,), 0.5)
    theta, _, down, _ = step(alg, alg.init(theta0), theta0, G0, 0, arrived=torch.zeros(3, dtype=torch.bool))
    assert torch.equal(theta, theta0) and down.nbytes == 0


def test_workers_not_taking_part_keep_their_momentum():
    alg = build(3, 4, momentum=0.9)
    state = alg.init(torch.zeros(4))
    _, up, _, state = step(alg, state, torch.zeros(4), G0, 0)
    m0 = state.momentum.clone()
    active = torch.tensor([True, False, True])
    _, up, _, state = step(alg, state, torch.zeros(4), G0 * 2, 1, arrived=active, active=active)
    assert up.carries_gradient.tolist() == [True, False, True]
    assert torch.equal(state.momentum[1], m0[1])
    torch.testing.assert_close(state.momentum[0], 0.1 * 2 * G0[0] + 0.9 * m0[0])


def test_one_worker_signsgd_is_sign_descent_and_global_rng_untouched():
    alg = build(1, 6, lr=0.05)
    g = torch.tensor([[0.3, -0.2, 0.0, 5.0, -1e-9, 1e-9]])
    before = torch.random.get_rng_state()
    theta, *_ = step(alg, alg.init(torch.zeros(6)), torch.zeros(6), g, 0)
    assert torch.equal(torch.random.get_rng_state(), before)
    assert theta.tolist() == pytest.approx([-0.05, 0.05, -0.05, -0.05, 0.05, -0.05])


def test_registered_and_in_the_conformance_suite():
    import test_algorithms as ta
    assert "signsgd_mv" in algorithms.ALGORITHMS.names()
    assert "signsgd_mv" in ta.ALGORITHM_EXAMPLES        # so the registry-wide tests there run it
    ta.test_algorithm_decreases_loss_on_a_convex_task("signsgd_mv")


def test_config_validation():
    cfg = algorithms.ALGORITHMS["signsgd_mv"]
    assert cfg(lr=0.1).momentum == 0.0 and cfg(lr=0.1).tie == "positive"
    for bad in [{"momentum": 1.0}, {"momentum": -0.1}, {"weight_decay": -1.0}, {"tie": "negative"},
                {"bogus": 1}]:
        with pytest.raises(ValidationError):
            cfg(lr=0.1, **bad)
