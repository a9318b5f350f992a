"""Deep Gradient Compression (algorithms/dgc.py; Lin et al., ICLR 2018): hand-computed
rounds, clipping, the sparsity warm-up, wire sizes, missing workers, and the
density-1 equivalences with SGD and momentum SGD."""
from __future__ import annotations

import math

import pytest
import torch

import algorithms
import test_algorithms as ta
from algorithms.base import Context
from algorithms.dgc import DgcConfig, warmup_density
from sim.learn.rng import WorkerStreams

DGC_EXAMPLE = {"lr": 0.5, "density": 0.25, "warmup_rounds": 20}


def flat_ctx(n: int, d: int) -> Context:
    return Context(d=d, n=n, blocks=(), device=torch.device("cpu"))


def step(alg, state, theta, g, t, arrived=None, active=None):
    n = g.shape[0]
    up, state = alg.worker_encode(state, g, t, WorkerStreams(0, n), active=active)
    arrived = torch.ones(n, dtype=torch.bool) if arrived is None else arrived
    theta, down, state = alg.server_update(state, theta, up, arrived, t)
    return up, down, theta, state


def sent_of(up) -> dict[int, float]:
    """{index: value} of a one-worker slice of a payload."""
    return dict(zip(up["indices"].tolist(), up["values"].tolist()))


def payload_row(up, i):
    return {k: v[i] for k, v in up.payload.tensors.items()}


G0 = torch.tensor([[1.0, -4.0, 2.0, 0.5, 3.0, -1.0],
                   [-2.0, 1.0, 0.5, 5.0, -1.0, 3.0]])
G1 = torch.tensor([[0.5, 1.0, -3.0, 1.0, 0.0, 2.0],
                   [1.0, -1.0, 0.0, -1.5, 4.0, 0.5]])


def test_two_rounds_by_hand():
    """n = 2, d = 6, m = 0.5, lr = 0.5, k = floor(0.4 * 6) = 2 per worker, index_bits log2d
    (ceil(log2 6) = 3 bits: 35 bits an entry).  All values are binary fractions: exact."""
    cfg = DgcConfig(lr=0.5, momentum=0.5, density=0.4, scope="vector", index_bits="log2d")
    alg = cfg.build(flat_ctx(2, 6))
    theta = torch.zeros(6)
    state = alg.init(theta)

    # round 0: u = v = g; worker 0 sends {1: -4, 4: 3}, worker 1 sends {3: 5, 5: 3}
    up, down, theta, state = step(alg, state, theta, G0, 0)
    assert sent_of(payload_row(up, 0)) == {1: -4.0, 4: 3.0}
    assert sent_of(payload_row(up, 1)) == {3: 5.0, 5: 3.0}
    left = torch.tensor([[1.0, 0.0, 2.0, 0.5, 0.0, -1.0],
                         [-2.0, 1.0, 0.5, 0.0, -1.0, 0.0]])
    assert torch.equal(state.v, left) and torch.equal(state.u, left)   # masking zeroes u and v
    assert torch.equal(theta, torch.tensor([0.0, 1.0, 0.0, -1.25, -0.75, -0.75]))
    assert up.payload.nbytes.tolist() == [9, 9]            # ceil(2 * 35 / 8)
    assert down.nbytes == 18                               # union {1, 3, 4, 5}: ceil(4 * 35 / 8) < 4 * 6

    # round 1: u = 0.5 u + g;  v = v + u
    up, down, theta, state = step(alg, state, theta, G1, 1)
    # worker 0: u = [1, 1, -2, 1.25, 0, 1.5], v = [2, 1, 0, 1.75, 0, 0.5] -> sends {0: 2, 3: 1.75}
    # worker 1: u = [0, -0.5, 0.25, -1.5, 3.5, 0.5], v = [-2, 0.5, 0.75, -1.5, 2.5, 0.5] -> {4: 2.5, 0: -2}
    assert sent_of(payload_row(up, 0)) == {0: 2.0, 3: 1.75}
    assert sent_of(payload_row(up, 1)) == {0: -2.0, 4: 2.5}
    assert torch.equal(state.v, torch.tensor([[0.0, 1.0, 0.0, 0.0, 0.0, 0.5],
                                              [0.0, 0.5, 0.75, -1.5, 0.0, 0.5]]))
    assert torch.equal(state.u, torch.tensor([[0.0, 1.0, -2.0, 0.0, 0.0, 1.5],
                                              [0.0, -0.5, 0.25, -1.5, 0.0, 0.5]]))
    # mean = [0, 0, 0, 0.875, 1.25, 0] (coordinate 0 cancels); theta -= 0.5 mean
    assert torch.equal(theta, torch.tensor([0.0, 1.0, 0.0, -1.6875, -1.375, -0.75]))
    assert down.nbytes == 14                               # union {0, 3, 4} (not nnz = 2): ceil(3 * 35 / 8)


def test_without_momentum_masking_u_keeps_the_sent_coordinates():
    cfg = DgcConfig(lr=0.5, momentum=0.5, density=0.4, scope="vector", momentum_masking=False)
    alg = cfg.build(flat_ctx(2, 6))
    theta = torch.zeros(6)
    _, _, _, state = step(alg, alg.init(theta), theta, G0, 0)
    assert torch.equal(state.u, G0)                        # u untouched
    assert torch.equal(state.v, torch.tensor([[1.0, 0.0, 2.0, 0.5, 0.0, -1.0],
                                              [-2.0, 1.0, 0.5, 0.0, -1.0, 0.0]]))


def test_wire_bytes_for_each_index_encoding():
    """Up: ceil(k (32 + ib) / 8) per worker; down: min(4 d, ceil(|union| (32 + ib) / 8))."""
    for ib, up_b, down_b in [(32, 16, 24), (0, 8, 16), ("log2d", 9, 18)]:
        alg = DgcConfig(lr=0.5, momentum=0.5, density=0.4, scope="vector", index_bits=ib).build(flat_ctx(2, 6))
        theta = torch.zeros(6)
        up, down, _, _ = step(alg, alg.init(theta), theta, G0, 0)
        assert up.payload.nbytes.tolist() == [up_b] * 2
        assert down.nbytes == down_b                       # 32: 4 * 8 = 32 > 24, dense wins
        assert down.kind == "update"
    # a large d: sparse downlink, per-layer k_b = max(1, floor(density d_b))
    d, n = 10_000, 3
    ctx = ta.ctx(n=n, d=d)                                 # layers of 9997 and 3
    alg = DgcConfig(lr=0.1, density=0.01).build(ctx)
    assert alg.k_at(0) == (99, 1)
    g = torch.randn(n, d, generator=torch.Generator().manual_seed(1))
    theta = torch.zeros(d)
    up, down, _, state = step(alg, alg.init(theta), theta, g, 0)
    assert up.payload.nbytes.tolist() == [100 * 8] * n
    idx = up.payload.tensors["indices"]
    union = len(set(idx.flatten().tolist()))
    assert down.nbytes == 8 * union
    assert int((idx >= d - 3).sum(1).max()) == 1           # one entry of the 3-entry layer each


def test_local_clipping_threshold_scales_with_one_over_sqrt_n():
    """clip_norm c = 2 with N = 4: each worker clips its gradient at 2 / sqrt(4) = 1."""
    g = torch.tensor([[3.0, 4.0, 0.0],        # norm 5 -> [0.6, 0.8, 0]
                      [0.3, 0.4, 0.0],        # norm 0.5 -> unchanged
                      [0.0, 0.0, 0.0],        # zero stays zero
                      [0.0, 0.0, -1.0]])      # norm exactly 1 -> unchanged
    alg = DgcConfig(lr=1.0, momentum=0.0, density=1.0, clip_norm=2.0, momentum_masking=False,
                    scope="vector").build(flat_ctx(4, 3))
    theta = torch.zeros(3)
    up, _, new, state = step(alg, alg.init(theta), theta, g, 0)
    want = torch.tensor([[3 / 5, 4 / 5, 0.0], [0.3, 0.4, 0.0], [0.0, 0.0, 0.0], [0.0, 0.0, -1.0]])
    torch.testing.assert_close(state.u, want, rtol=0, atol=0)
    torch.testing.assert_close(new, -want.mean(0), rtol=0, atol=1e-7)
    # the same gradients with N = 16 (threshold 0.5): 16 workers, rows repeated
    alg16 = DgcConfig(lr=1.0, momentum=0.0, density=1.0, clip_norm=2.0, momentum_masking=False,
                      scope="vector").build(flat_ctx(16, 3))
    _, _, _, s16 = step(alg16, alg16.init(theta), theta, g.repeat(4, 1), 0)
    want16 = torch.tensor([[0.3, 0.4, 0.0], [0.3, 0.4, 0.0], [0.0, 0.0, 0.0], [0.0, 0.0, -0.5]])
    torch.testing.assert_close(s16.u[:4], want16, rtol=0, atol=1e-7)
    with pytest.raises(ValueError):
        DgcConfig(lr=0.1, clip_norm=0.0)


def test_sparsity_warmup_schedule():
    """Sec. 3.3: density ** ((j + 1) / (S + 1)) in stage j = floor(t S / W), then density."""
    cfg = DgcConfig(lr=0.1, density=0.001, warmup_rounds=8, scope="vector")
    alg = cfg.build(flat_ctx(2, 10_000))
    rho = [alg.density_at(t) for t in range(10)]
    stages = [0.001 ** (1 / 5), 0.001 ** (2 / 5), 0.001 ** (3 / 5), 0.001 ** (4 / 5)]
    assert rho == [s for s in stages for _ in range(2)] + [0.001, 0.001]
    # the paper's sparsities 75%, 93.75%, 98.4375%, 99.6%, 99.9% within 0.2 points
    paper = [0.75, 0.9375, 0.984375, 0.996, 0.999]
    for ours, theirs in zip(stages + [0.001], paper):
        assert abs((1 - ours) - theirs) < 2e-3
    assert [alg.k_at(t)[0] for t in range(0, 10, 2)] == [2511, 630, 158, 39, 10]
    # a warm-up that does not divide into the stages: floor(4 t / 10)
    assert [round(math.log(warmup_density(t, 0.001, 10, 4), 0.001) * 5) for t in range(11)] == \
        [1, 1, 1, 2, 2, 3, 3, 3, 4, 4, 5]
    assert all(DgcConfig(lr=0.1, density=0.01).build(flat_ctx(2, 100)).density_at(t) == 0.01 for t in (0, 5))
    # the wire follows the schedule, round by round
    theta = torch.zeros(10_000)
    state = alg.init(theta)
    g = torch.randn(2, 10_000, generator=torch.Generator().manual_seed(0))
    sizes = []
    for t in range(10):
        up, _, theta, state = step(alg, state, theta, g, t)
        sizes.append(int(up.payload.nbytes[0]))
    assert sizes == [8 * k for k in (2511, 2511, 630, 630, 158, 158, 39, 39, 10, 10)]


def test_missing_worker_is_left_out_and_masks_as_if_delivered():
    cfg = DgcConfig(lr=0.5, momentum=0.5, density=0.4, scope="vector", index_bits=0)
    alg = cfg.build(flat_ctx(2, 6))
    theta = torch.zeros(6)
    _, _, _, all_state = step(alg, alg.init(theta), theta, G0, 0)
    up, down, new, state = step(alg, alg.init(theta), theta, G0, 0, arrived=torch.tensor([True, False]))
    # worker 1 zeroed its sent coordinates anyway (it cannot know its message was lost)
    assert torch.equal(state.v, all_state.v) and torch.equal(state.u, all_state.u)
    # the mean is over the arrived worker only: theta = -0.5 * {1: -4, 4: 3}
    assert torch.equal(new, torch.tensor([0.0, 2.0, 0.0, 0.0, -1.5, 0.0]))
    assert down.nbytes == 2 * 4                            # union of the arrived worker's indices
    # nothing arrives: no step, header-only broadcast
    _, down, new, _ = step(alg, alg.init(theta), theta, G0, 0, arrived=torch.zeros(2, dtype=torch.bool))
    assert torch.equal(new, theta) and down.nbytes == 0


def test_inactive_worker_keeps_its_state_and_sends_nothing():
    cfg = DgcConfig(lr=0.5, momentum=0.5, density=0.4, scope="vector")
    alg = cfg.build(flat_ctx(2, 6))
    theta = torch.zeros(6)
    _, _, theta, state = step(alg, alg.init(theta), theta, G0, 0)
    active = torch.tensor([True, False])
    up, _, _, new = step(alg, state, theta, G1, 1, arrived=active, active=active)
    assert up.sends.tolist() == [True, False] and up.carries_gradient.tolist() == [True, False]
    assert torch.equal(new.u[1], state.u[1]) and torch.equal(new.v[1], state.v[1])
    assert not torch.equal(new.v[0], state.v[0])


@pytest.mark.parametrize("masking, nesterov, ref", [
    (True, False, {"kind": "sgd"}),
    (False, False, {"kind": "momentum_sgd", "momentum": 0.9}),
    (False, True, {"kind": "momentum_sgd", "momentum": 0.9, "nesterov": True}),
])
def test_density_one_equals_sgd_or_momentum_sgd(masking, nesterov, ref):
    """Density 1, no clipping: every coordinate is sent and v is zeroed each round.  With
    momentum masking u is zeroed too, so the sent value is g: plain SGD.  Without it the sent
    value is u_i = m u_i + g_i and the mean of the u_i is the server momentum of the mean
    gradient: heavy-ball momentum SGD (PyTorch convention; Nesterov: u = m (u + g), sent u + g)."""
    schedule = {"kind": "step", "milestones": [7], "gamma": 0.5}
    grads, _ = ta.quadratic_problem()
    cfg = algorithms.ALGORITHMS["dgc"](lr=0.1, momentum=0.9, density=1.0, momentum_masking=masking,
                                       nesterov=nesterov, lr_schedule=schedule)
    want = algorithms.ALGORITHMS[ref["kind"]](lr=0.1, lr_schedule=schedule,
                                              **{k: v for k, v in ref.items() if k != "kind"})
    a, _ = ta.run_steps(cfg, 15, grads, torch.zeros(ta.D))
    b, _ = ta.run_steps(want, 15, grads, torch.zeros(ta.D))
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_config_rejects_unknown_fields_and_bad_values():
    with pytest.raises(ValueError):
        DgcConfig(lr=0.1, sparsity=0.99)
    for bad in ({"density": 0.0}, {"density": 1.5}, {"momentum": 1.0}, {"warmup_rounds": -1},
                {"warmup_stages": 0}, {"index_bits": 16}, {"scope": "tensor"}):
        with pytest.raises(ValueError):
            DgcConfig(lr=0.1, **bad)


# --- the registry conformance checks of tests/test_algorithms.py, for dgc ------------
# (its ALGORITHM_EXAMPLES needs a "dgc" entry for its own parametrized tests to run dgc;
# these run the same checks with DGC_EXAMPLE meanwhile.)
def test_conformance_convex_task(monkeypatch):
    monkeypatch.setitem(ta.ALGORITHM_EXAMPLES, "dgc", ta.ALGORITHM_EXAMPLES.get("dgc", DGC_EXAMPLE))
    ta.test_algorithm_decreases_loss_on_a_convex_task("dgc")


def test_conformance_short_scenario(monkeypatch):
    from pathlib import Path

    from sim.study.config import load_scenario
    from sim.engine import build_world
    tiny = Path(ta.__file__).resolve().parents[1] / "scenarios" / "tiny.yaml"
    world = build_world(load_scenario(tiny, ["stop.max_rounds=6", "eval_every=3", "stop.on_target=false"]), 0)
    monkeypatch.setitem(ta.ALGORITHM_EXAMPLES, "dgc", ta.ALGORITHM_EXAMPLES.get("dgc", DGC_EXAMPLE))
    ta.test_every_algorithm_runs_a_short_scenario("dgc", world)
