"""FedAvg / local SGD (algorithms/federated.py): equal to sgd at H = 1, the closed
form of local SGD on a quadratic, seeded client sampling from the available
clients, shard weights, the server optimizers, compute and bytes per round."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

import algorithms
from algorithms.base import Context
from algorithms.optim import Adam
from sim.study.config import load_scenario
from sim.engine import build_world, run_algorithm
from sim.learn.models import Block
from sim.learn.rng import WorkerStreams

TINY = Path(__file__).resolve().parents[1] / "scenarios" / "tiny.yaml"
SHORT = ["stop.max_rounds=6", "eval_every=2", "stop.on_target=false"]


def ctx(n, d, sizes=None):
    return Context(d=d, n=n, blocks=(Block("w", 0, d, (d,)),), device=torch.device("cpu"), shard_sizes=sizes)


class Local:
    """local steps on f_i(x) = 0.5 sum_j a_ij (x_j - b_ij)^2 (exact gradients)."""

    def __init__(self, a, b, theta):
        self.a, self.b, self.theta = a, b, theta

    def grad(self, h, thetas, rows):
        return self.a[rows] * (thetas - self.b[rows])


def test_fedavg_with_one_local_step_and_every_client_is_sgd():
    world = build_world(load_scenario(TINY, SHORT), 0)
    fed = run_algorithm(world, algorithms.ALGORITHMS["fedavg"](name="f", local_lr=0.1, weighting="uniform"))
    sgd = run_algorithm(world, algorithms.ALGORITHMS["sgd"](name="s", lr=0.1))
    assert [r["round"] for r in fed.rows] == [r["round"] for r in sgd.rows]
    for a, b in zip(fed.rows, sgd.rows):
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-5)
        assert a["test_acc"] == b["test_acc"]
        assert a["bytes_up"] == b["bytes_up"] and a["uploads"] == b["uploads"]


def test_local_sgd_on_a_quadratic_matches_the_closed_form():
    """x_i^(H) = b_i + (1 - lr a_i)^H (x - b_i) per coordinate, then the mean."""
    n, d, H, lr = 3, 5, 4, 0.3
    g = torch.Generator().manual_seed(0)
    a, b = torch.rand(n, d, generator=g) + 0.5, torch.randn(n, d, generator=g)
    alg = algorithms.ALGORITHMS["local_sgd"](lr=lr, local_steps=H).build(ctx(n, d))
    theta, ref = torch.zeros(d), torch.zeros(d, dtype=torch.float64)
    state = alg.init(theta)
    ones = torch.ones(n, dtype=torch.bool)
    for t in range(5):
        loc = Local(a, b, theta)
        up, state = alg.worker_encode(state, loc.grad(0, theta.expand(n, d), torch.arange(n)), t,
                                      WorkerStreams(0, n), local=loc)
        theta, _, state = alg.server_update(state, theta, up, ones, t)
        A, B = a.double(), b.double()
        ref = (B + (1 - lr * A) ** H * (ref - B)).mean(0)
        torch.testing.assert_close(theta.double(), ref, rtol=1e-5, atol=1e-6)
        assert up.compute_factor.tolist() == [float(H)] * n


def test_shard_weights_and_the_adam_server():
    """Delta = sum w_i Delta_i / sum w_i with w = shard sizes; FedAdam applies
    Adam to Delta as its gradient."""
    n, d = 3, 4
    sizes = (10, 30, 60)
    a, b = torch.ones(n, d), torch.arange(n * d, dtype=torch.float32).view(n, d)
    alg = algorithms.ALGORITHMS["fedavg"](lr=0.01, local_lr=0.5, server_optimizer="adam",
                                          eps=1e-3).build(ctx(n, d, sizes))
    theta = torch.zeros(d)
    state = alg.init(theta)
    loc = Local(a, b, theta)
    up, state = alg.worker_encode(state, loc.grad(0, theta.expand(n, d), torch.arange(n)), 0,
                                  WorkerStreams(0, n), local=loc)
    new, _, _ = alg.server_update(state, theta, up, torch.ones(n, dtype=torch.bool), 0)
    deltas = theta - (theta - 0.5 * (theta - b))                     # one local step each
    w = torch.tensor(sizes, dtype=torch.float32)
    mean = (w @ deltas) / w.sum()
    adam = Adam(lambda t: 0.01, 0.9, 0.99, 1e-3)
    step, _ = adam.update(mean, adam.init(theta), 0)
    torch.testing.assert_close(new, theta + step)


def test_client_sampling_is_seeded_from_the_available_and_only_they_send():
    world = build_world(load_scenario(TINY, [*SHORT, "workers=6", "eval_every=1"]), 0)
    cfg = algorithms.ALGORITHMS["fedavg"](name="f", local_lr=0.1, clients_per_round=2, local_steps=3)
    alg = cfg.build(ctx(6, 10))
    streams = WorkerStreams(0, 6)
    avail = torch.tensor([True, True, False, True, True, False])
    picks = [alg.sample(t, avail, streams) for t in range(20)]
    assert all(int(p.sum()) == 2 and not bool((p & ~avail).any()) for p in picks)
    assert len({tuple(p.tolist()) for p in picks}) > 3                 # it varies by round
    assert [p.tolist() for p in picks] == [alg.sample(t, avail, WorkerStreams(0, 6)).tolist() for t in range(20)]
    phases = []
    res = run_algorithm(world, cfg, on_phase=phases.append)
    hdr, d = world.scenario.network.header_bytes, world.model.d
    for prev, row in zip(res.rows, res.rows[1:]):                      # 2 uploads of 4 d + header a round
        assert row["uploads"] - prev["uploads"] == 2
        assert row["bytes_up"] - prev["bytes_up"] == 2 * (4 * d + hdr)
    assert all(p["arrived"] == 2 for p in phases)
    assert all(p["compute_s"] == pytest.approx(3 * world.step_s[0]) for p in phases)


def test_fedavg_replays_exactly(tmp_path):
    """Synchronous with local steps: timing-independent, so a trace replay is exact."""
    from sim.study.replay import replay_run
    from sim.study.runner import execute
    algs = "[{name: f, kind: fedavg, local_lr: 0.1, local_steps: 2, clients_per_round: 2}]"
    scn = load_scenario(TINY, [*SHORT, f"algorithms={algs}"])
    execute(scn, {0: build_world(scn, 0)}, tmp_path / "a", quiet=True, plots=False)
    slow = ["network.uplink.bandwidth=10 Mbps"]
    scn2 = load_scenario(TINY, [*SHORT, f"algorithms={algs}", *slow])
    execute(scn2, {0: build_world(scn2, 0)}, tmp_path / "b", quiet=True, plots=False)
    replay_run(tmp_path / "a", scn2, tmp_path / "r", plots=False)
    for f in ("metrics.csv", "summary.csv", "phases.csv", "links.csv"):
        assert (tmp_path / "b" / f).read_bytes() == (tmp_path / "r" / f).read_bytes(), f
