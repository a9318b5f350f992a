"""Conformance over the compressor and algorithm registries, plus reference checks."""
from __future__ import annotations

import math

import pytest
import torch

import algorithms
from algorithms.base import INDEX_BYTES, VALUE_BYTES, Context
from algorithms.compressors import TopKConfig
from algorithms.ps import mean_over_arrived, update_bytes
from sim.learn.models import Block
from sim.learn.rng import WorkerStreams

N, D = 4, 103


def ctx(n=N, d=D) -> Context:
    return Context(d=d, n=n, blocks=(Block("w", 0, d - 3, (d - 3,)), Block("b", d - 3, d, (3,))),
                   device=torch.device("cpu"))


def x(seed=0, n=N, d=D) -> torch.Tensor:
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed))


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


class QuadraticLocal:
    """``local`` for algorithms with local steps on the quadratic problem."""

    def __init__(self, grads, theta):
        self.grads, self.theta = grads, theta

    def grad(self, h, thetas, rows):
        full = torch.zeros(N, thetas.shape[1])
        full[rows] = thetas
        return self.grads(full)[rows]


def test_every_algorithm_has_an_example():
    assert sorted(ALGORITHM_EXAMPLES) == algorithms.ALGORITHMS.names()


def quadratic_problem(n=N, d=D, seed=0):
    """f_i(theta) = 0.5 ||A_i theta - b_i||^2 / m: a convex synthetic task."""
    g = torch.Generator().manual_seed(seed)
    A = torch.randn(n, 20, d, generator=g) / math.sqrt(d)
    b = torch.randn(n, 20, generator=g)

    def grads(theta):  # [n, d]; theta [d], or [n, d] (each worker at its own parameters)
        if theta.dim() == 2:
            r = torch.einsum("nmd,nd->nm", A, theta) - b
        else:
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
    if getattr(cfg, "decentralized", False):     # every worker its own model; the averaged model's loss
        state = alg.init(theta)
        pairs = torch.Generator().manual_seed(1)
        for t in range(200 if hasattr(alg, "round") else 200 * N):   # ad_psgd: N steps a round
            if hasattr(alg, "round"):
                state, nbytes = alg.round(state, t, lambda h, th: grads(th), streams)
                assert len(nbytes) == N and all(0 < b <= VALUE_BYTES * D + 8 for b in nbytes)
            else:                                # ad_psgd: one random pair a step, then the gradient
                i = t % N
                g = grads(state.x)[i]
                j = alg.neighbours[i][int(torch.randint(len(alg.neighbours[i]), (1,), generator=pairs))]
                alg.pair_average(state.x, i, j)
                state.x[i] -= alg.lr(t // N) * g     # each worker steps its own model by lr
        assert loss(alg.average(state)) < 0.5 * start
        return
    if getattr(cfg, "event_driven", False):      # one message at a time, round robin, one version stale
        from sim.eventsim import Job
        version, stale = 0, theta
        for t in range(200 * N):
            i = t % N
            msg = grads(stale)[i]
            if alg.local_steps:                  # Delta = theta - theta^(H) of H local steps
                th = stale.expand(N, D).clone()
                for _ in range(alg.local_steps):
                    th = th - alg.local_lr(t // N) * grads(th)
                msg = stale - th[i]
            theta, state, info = alg.receive(state, theta, msg, Job(i, t // N, version, stale), 1, version)
            assert info["step_size"] >= 0
            if info["applied"]:
                stale, version = theta, version + 1
        assert loss(theta) < 0.5 * start
        return
    for t in range(200):
        kw = {"local": QuadraticLocal(grads, theta)} if getattr(alg, "wants_local_steps", False) else {}
        up, state = alg.worker_encode(state, grads(theta), t, streams, aux_grad=grads, **kw)
        assert up.payload.nbytes.shape == (N,)
        if hasattr(alg, "second_round"):
            _, state = alg.second_round(state, arrived, t)
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
    from sim.engine import run_algorithm
    cfg = algorithms.ALGORITHMS[kind](name=kind, **ALGORITHM_EXAMPLES[kind])
    res = run_algorithm(tiny_world, cfg)
    assert not res.diverged and not res.stalled
    if getattr(cfg, "decentralized", False):     # gossip: one message per graph edge, no server
        alg = cfg.build(Context(d=tiny_world.model.d, n=tiny_world.n, blocks=tiny_world.model.blocks,
                                device=tiny_world.device, seed=tiny_world.seed))
        sends = sum(len(s) for s in getattr(alg, "sends", ())) or 2 * tiny_world.n   # ad_psgd: 2 per step
        per = 1 if hasattr(alg, "sends") else tiny_world.n
        assert [r["round"] for r in res.rows] == [0, 3 * per, 6 * per]
        assert res.rows[-1]["uploads"] == 6 * sends and res.rows[-1]["bytes_down"] == 0
        assert 0 <= res.rows[-1]["consensus_distance"] and res.rows[0]["consensus_distance"] == 0
        assert 0 < res.spectral_gap <= 1
        return
    per = 1
    if getattr(cfg, "event_driven", False):      # versions: one per applied message (FedBuff: per K)
        per = tiny_world.n // getattr(cfg, "buffer", 1)
    assert [r["round"] for r in res.rows] == [0, 3 * per, 6 * per]
    last = res.rows[-1]
    skipped = round(res.skipped_fraction * 6 * tiny_world.n)
    per_round = 2 if kind.startswith("sketched") or kind == "powersgd" else 1   # sketches / P, then exact
    # values / Q (second round)
    assert last["uploads"] == per_round * 6 * tiny_world.n - skipped
    assert last["bytes_up"] > 0 and last["bytes_down"] > 0
    assert math.isfinite(last["train_loss"])


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
