"""Conformance over the compressor and algorithm registries, plus reference checks."""
from __future__ import annotations

import pytest
import torch

import algorithms
from algorithms.base import INDEX_BYTES, VALUE_BYTES
from algorithms.compressors import TopKConfig
from algorithms.ps import mean_over_arrived, update_bytes
from sim import conformance
from sim.conformance import D, N, quadratic_problem
from sim.conformance import context as ctx
from sim.conformance import randn as x
from sim.learn.rng import WorkerStreams


# --- algorithms ----------------------------------------------------------------
ALGORITHM_EXAMPLES = {
    "sgd": {"lr": 0.5},
    "momentum_sgd": {"lr": 0.2, "momentum": 0.5},
    "adam": {"lr": 0.05},
    "amsgrad": {"lr": 0.05},
    "topk_ef_sgd": {"lr": 0.5, "ratio": 0.25},
    "comp_ams": {"lr": 0.05, "compressor": {"kind": "topk", "ratio": 0.25}},
    "qadam": {"lr": 0.05, "compressor": {"kind": "topk", "ratio": 0.25}},
    "efficient_adam": {"lr": 0.05, "compressor": {"kind": "topk", "ratio": 0.25}},
    "dist_ef_sgd": {"lr": 0.1, "momentum": 0.5},
    "onebit_adam": {"lr": 0.05, "freeze_step": 20},
    "dgc": {"lr": 0.5, "density": 0.25, "warmup_rounds": 20},
    "signsgd_mv": {"lr": 0.01, "momentum": 0.9},
    "lasg_wk2": {"lr": 0.5},
    "lasg_wk1": {"lr": 0.5},
    "lasg_ps": {"lr": 0.5},
    "lag": {"lr": 0.5},
    "sasg": {"lr": 0.1, "ratio": 0.25},
    "lazy": {"lr": 0.5, "rule": {"kind": "lasg_wk2"}, "compressor": {"kind": "topk", "ratio": 0.5},
             "error_feedback": True},
    "sketched_sgd": {"lr": 0.5, "rows": 3, "cols": 80, "k": 25, "P": 2},
    "fetchsgd": {"lr": 0.5, "rows": 3, "cols": 80, "k": 25, "momentum": 0.5},
    "sketched_amsgrad_pa": {"lr": 0.05, "rows": 3, "cols": 80, "k": 25, "P": 2},
    "sketched_amsgrad_ga": {"lr": 0.05, "rows": 3, "cols": 80, "k": 25, "P": 2},
    "powersgd": {"lr": 0.5, "rank": 2, "momentum": 0.5},
    "async_sgd": {"lr": 0.5, "staleness_lr": True},
    "fedavg": {"local_lr": 0.5, "local_steps": 2, "compressor": {"kind": "topk", "ratio": 0.25}},
    "local_sgd": {"lr": 0.5, "local_steps": 3},
    "fedbuff": {"local_lr": 0.3, "local_steps": 2, "buffer": 2},
    "fedasync": {"local_lr": 0.3, "local_steps": 2, "staleness_fn": "polynomial"},
    "dpsgd": {"lr": 0.5, "local_steps": 2},
    "choco_sgd": {"lr": 0.5, "gamma": 0.5, "compressor": {"kind": "topk", "ratio": 0.25}},
    "sgp": {"lr": 0.5},
    "ad_psgd": {"lr": 0.5},
}


def test_every_algorithm_has_an_example():
    assert sorted(ALGORITHM_EXAMPLES) == algorithms.ALGORITHMS.names()


@pytest.mark.parametrize("kind", algorithms.ALGORITHMS.names())
def test_algorithm_decreases_loss_on_a_convex_task(kind):
    """The checks of sim/conformance.py (also `run_sim.py check` for plugins): message
    shapes on the way, then the loss of a convex least-squares task halved in 200 rounds."""
    conformance.algorithm_convex(algorithms.ALGORITHMS[kind](**ALGORITHM_EXAMPLES[kind]))


@pytest.mark.parametrize("kind", ["sgd", "topk_ef_sgd", "qadam", "sketched_sgd", "dgc", "fedavg", "async_sgd",
                                  "choco_sgd", "ad_psgd", "powersgd", "sasg"])
def test_algorithm_is_deterministic(kind):
    conformance.algorithm_determinism(algorithms.ALGORITHMS[kind](**ALGORITHM_EXAMPLES[kind]))


def test_the_convex_check_fails_an_algorithm_that_does_not_learn():
    with pytest.raises(AssertionError, match="below half"):
        conformance.algorithm_convex(algorithms.ALGORITHMS["sgd"](lr=1e-6))


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


def run_steps(cfg, rounds, grads_fn, theta0):
    alg = cfg.build(ctx())
    theta, state = theta0.clone(), alg.init(theta0.clone())
    downs = []
    for t in range(rounds):
        up, state = alg.worker_encode(state, grads_fn(theta), t, WorkerStreams(0, N), aux_grad=grads_fn)
        if hasattr(alg, "second_round"):
            _, state = alg.second_round(state, torch.ones(N, dtype=torch.bool), t)
        theta, down, state = alg.server_update(state, theta, up, torch.ones(N, dtype=torch.bool), t)
        downs.append(down)
    return theta, downs


def test_adam_and_momentum_match_torch_optim():
    grads, _ = quadratic_problem()
    for cfg, make in [
        (algorithms.ALGORITHMS["adam"](lr=0.01), lambda p: torch.optim.Adam([p], lr=0.01, eps=1e-8)),
        (algorithms.ALGORITHMS["momentum_sgd"](lr=0.1, momentum=0.9),
         lambda p: torch.optim.SGD([p], lr=0.1, momentum=0.9)),
        (algorithms.ALGORITHMS["momentum_sgd"](lr=0.1, momentum=0.9, nesterov=True),
         lambda p: torch.optim.SGD([p], lr=0.1, momentum=0.9, nesterov=True)),
    ]:
        theta, _ = run_steps(cfg, 15, grads, torch.zeros(D))
        p = torch.zeros(D, requires_grad=True)
        opt = make(p)
        for _ in range(15):
            p.grad = grads(p.detach()).mean(0)
            opt.step()
        torch.testing.assert_close(theta, p.detach(), rtol=1e-5, atol=1e-6)


def test_lr_schedules():
    from algorithms.schedules import Cosine, StepDecay, Warmup
    cfg = algorithms.ALGORITHMS["sgd"](lr=1.0, lr_schedule={"kind": "step", "gamma": 0.5, "every": 10})
    assert [cfg.lr_at(t) for t in (0, 9, 10, 25)] == [1.0, 1.0, 0.5, 0.25]
    assert StepDecay(milestones=[3, 5]).factor(4) == pytest.approx(0.1)
    c = Cosine(rounds=100, final=0.1)
    assert c.factor(0) == 1.0 and c.factor(100) == pytest.approx(0.1) and c.factor(50) == pytest.approx(0.55)
    w = Warmup(rounds=4, start=0.0, then={"kind": "cosine", "rounds": 10})
    assert [w.factor(t) for t in (0, 2, 4)] == [0.0, 0.5, 1.0]
    # the schedule reaches the optimizer: a step decay to 0 stops sgd
    grads, _ = quadratic_problem()
    cfg = algorithms.ALGORITHMS["sgd"](lr=0.5, lr_schedule={"kind": "step", "milestones": [3], "gamma": 1e-30})
    a, _ = run_steps(cfg, 3, grads, torch.zeros(D))
    b, _ = run_steps(cfg, 8, grads, torch.zeros(D))
    torch.testing.assert_close(a, b)


def test_qadam_with_identity_is_local_adam_directions_averaged():
    grads, _ = quadratic_problem()
    lr, b1, b2, eps = 0.01, 0.9, 0.999, 1e-8
    cfg = algorithms.ALGORITHMS["qadam"](lr=lr, compressor={"kind": "none"})
    theta, downs = run_steps(cfg, 10, grads, torch.zeros(D))
    ref, m, v = torch.zeros(D), torch.zeros(N, D), torch.zeros(N, D)
    for _ in range(10):
        g = grads(ref)
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        ref = ref - lr * (m / (v.sqrt() + eps)).mean(0)
    torch.testing.assert_close(theta, ref, rtol=1e-5, atol=1e-6)


def test_efficient_adam_broadcast_is_compressed_with_server_error_feedback():
    grads, _ = quadratic_problem()
    cfg = algorithms.ALGORITHMS["efficient_adam"](lr=0.01, compressor={"kind": "topk", "k": 7})
    alg = cfg.build(ctx())
    theta = torch.zeros(D)
    state = alg.init(theta)
    for t in range(5):
        up, state = alg.worker_encode(state, grads(theta), t, WorkerStreams(0, N))
        g_bar = state.decoded.mean(0)
        e_old = state.server_error.clone()
        new, down, state = alg.server_update(state, theta, up, torch.ones(N, dtype=torch.bool), t)
        sent = theta - new                               # what the workers applied
        assert int(torch.count_nonzero(sent)) <= 7
        assert down.nbytes == 7 * (VALUE_BYTES + INDEX_BYTES)
        # server EF invariant: D(sent) + e_new == lr g_bar + e_old
        torch.testing.assert_close(sent / 1.0 + state.server_error, 0.01 * g_bar + e_old, rtol=0, atol=1e-6)
        theta = new


def test_onebit_adam_warmup_is_dense_adam_without_bias_correction_then_compressed():
    grads, _ = quadratic_problem()
    lr, b1, b2, eps = 0.01, 0.9, 0.999, 1e-8
    cfg = algorithms.ALGORITHMS["onebit_adam"](lr=lr, freeze_step=5)
    theta, downs = run_steps(cfg, 5, grads, torch.zeros(D))
    ref, m, v = torch.zeros(D), torch.zeros(D), torch.zeros(D)
    for _ in range(5):
        g = grads(ref).mean(0)
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        ref = ref - lr * m / (v.sqrt() + eps)
    torch.testing.assert_close(theta, ref, rtol=1e-5, atol=1e-7)
    _, downs = run_steps(cfg, 8, grads, torch.zeros(D))
    blocks = ctx().blocks
    one_bit = sum(-(-(b.stop - b.start) // 8) + 4 for b in blocks)
    assert [d.nbytes for d in downs[5:]] == [one_bit] * 3


@pytest.fixture(scope="module")
def tiny_world():
    from pathlib import Path

    from sim.study.config import load_scenario
    from sim.engine import build_world
    tiny = Path(__file__).resolve().parents[1] / "scenarios" / "tiny.yaml"
    scn = load_scenario(tiny, ["stop.max_rounds=6", "eval_every=3", "stop.on_target=false"])
    return build_world(scn, 0)


@pytest.mark.parametrize("kind", algorithms.ALGORITHMS.names())
def test_every_algorithm_runs_a_short_scenario(kind, tiny_world):
    cfg = algorithms.ALGORITHMS[kind](name=kind, **ALGORITHM_EXAMPLES[kind])
    # sketches / P, then exact values / Q (second round)
    per_round = 2 if kind.startswith("sketched") or kind == "powersgd" else 1
    conformance.algorithm_short_scenario(cfg, tiny_world, uploads_per_round=per_round)


def test_sketched_sgd_with_a_collision_free_sketch_is_global_topk_with_error_feedback():
    """c >= d with distinct buckets and P k >= d: the exact top-k of the sum of the
    workers' accumulators, zeroed on every worker at the chosen coordinates (not each
    worker's own top-k)."""
    lr, rho, k = 0.1, 0.9, 7
    cfg = algorithms.ALGORITHMS["sketched_sgd"](lr=lr, rows=1, cols=D, k=k, P=D, momentum=rho)
    alg = cfg.build(ctx())
    alg.sketch.buckets = torch.randperm(D, generator=torch.Generator().manual_seed(0)).to(torch.int32).view(1, D)
    grads, _ = quadratic_problem()
    theta = torch.zeros(D)
    state = alg.init(theta)
    ref, u, v = torch.zeros(D), torch.zeros(N, D), torch.zeros(N, D)
    ones = torch.ones(N, dtype=torch.bool)
    for t in range(15):
        up, state = alg.worker_encode(state, grads(theta), t, WorkerStreams(0, N))
        ask, state = alg.second_round(state, ones, t)
        assert ask == (4 * D, 4 * D)                       # P k indices down, P k values up
        theta, down, state = alg.server_update(state, theta, up, ones, t)
        assert down.nbytes == 8 * k and up.payload.nbytes.tolist() == [4 * D] * N
        u = rho * u + grads(ref)
        v = v + lr * u
        total = v.sum(0)
        idx = torch.topk(total.abs(), k).indices
        ref = ref.clone()
        ref[idx] -= total[idx] / N
        u[:, idx] = 0.0
        v[:, idx] = 0.0
        torch.testing.assert_close(theta, ref, rtol=1e-5, atol=1e-6)


def test_server_sketch_of_the_sum_equals_the_sum_of_worker_sketches():
    alg = algorithms.ALGORITHMS["sketched_sgd"](lr=0.1, rows=3, cols=40, k=5).build(ctx())
    v = x(5)
    torch.testing.assert_close(alg.sketch.sketch(v).sum(0), alg.sketch.sketch(v.sum(0)), rtol=1e-5, atol=1e-5)
