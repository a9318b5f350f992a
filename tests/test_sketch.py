"""Count sketch: hashes, linearity, heavy-hitter recovery (groundwork of issue 5)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from algorithms.sketch import P, CountSketch


def test_hashes_match_the_formulas_and_are_shared_by_seed():
    cs = CountSketch(d=1000, rows=3, cols=50, seed=7)
    again = CountSketch(d=1000, rows=3, cols=50, seed=7)
    assert torch.equal(cs.buckets, again.buckets) and torch.equal(cs.signs, again.signs)
    other = CountSketch(d=1000, rows=3, cols=50, seed=8)
    assert not torch.equal(cs.buckets, other.buckets)
    assert int(cs.buckets.min()) >= 0 and int(cs.buckets.max()) < 50
    assert set(cs.signs.unique().tolist()) == {-1, 1}
    # recompute row 0 with Python integers (arbitrary precision) from the same coefficients
    rng = np.random.default_rng([7, 0x5CE7C4])
    a, b, c3, c2, c1, c0 = (int(v) for v in rng.integers(1, P, size=(3, 6), dtype=np.int64)[0])
    for i in (0, 1, 2, 999):
        assert int(cs.buckets[0, i]) == ((a * i + b) % P) % 50
        g = (c3 * i ** 3 + c2 * i ** 2 + c1 * i + c0) % P
        assert int(cs.signs[0, i]) == 1 - 2 * (g & 1)


def test_sketch_is_linear_and_batched():
    cs = CountSketch(d=500, rows=5, cols=64, seed=0)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(4, 500, generator=g)
    tables = cs.sketch(x)
    assert tables.shape == (4, 5, 64)
    torch.testing.assert_close(tables.sum(0), cs.sketch(x.sum(0)), rtol=1e-5, atol=1e-5)
    for i in range(4):
        torch.testing.assert_close(tables[i], cs.sketch(x[i]))
    assert cs.nbytes == 4 * 5 * 64


def test_collision_free_sketch_recovers_every_coordinate_exactly():
    d = 64
    cs = CountSketch(d=d, rows=1, cols=d, seed=0)
    # force distinct buckets: a permutation (a collision-free sketch)
    cs.buckets = torch.randperm(d, generator=torch.Generator().manual_seed(1)).to(torch.int32).view(1, d)
    x = torch.randn(d, generator=torch.Generator().manual_seed(2))
    torch.testing.assert_close(cs.estimate(cs.sketch(x)), x)
    v = torch.rand(d, generator=torch.Generator().manual_seed(3)) + 0.5
    torch.testing.assert_close(cs.estimate(cs.sketch(x), scale=v.sqrt()), x / v.sqrt())


def planted(d, k, seed, noise=0.01):
    g = torch.Generator().manual_seed(seed)
    x = noise * torch.randn(d, generator=g)
    idx = torch.randperm(d, generator=g)[:k]
    x[idx] = 10.0 * torch.sign(torch.randn(k, generator=g))
    return x, set(idx.tolist())


def test_heavy_hitters_recovered_when_the_sketch_is_wide_enough():
    d, k = 20000, 20
    x, truth = planted(d, k, 0)
    cs = CountSketch(d=d, rows=5, cols=200 * k, seed=1)   # a bucket holds a heavy hitter w.p. 0.5%
    idx, est = cs.heavy_hitters(cs.sketch(x), k)
    assert set(idx.tolist()) == truth
    assert torch.allclose(est.abs(), torch.full((k,), 10.0), atol=0.5)


def test_recall_falls_as_the_sketch_narrows():
    d, k = 20000, 50
    recalls = []
    for cols in (10000, 1000, 200, 50):
        hits = 0
        for seed in range(3):
            x, truth = planted(d, k, 10 + seed, noise=0.3)
            cs = CountSketch(d=d, rows=5, cols=cols, seed=seed)
            idx, _ = cs.heavy_hitters(cs.sketch(x), k)
            hits += len(truth & set(idx.tolist()))
        recalls.append(hits / (3 * k))
    assert recalls[0] == 1.0
    assert recalls == sorted(recalls, reverse=True) and recalls[-1] < 0.5


def test_rejects_bad_sizes():
    with pytest.raises(ValueError):
        CountSketch(d=P, rows=1, cols=1, seed=0)
    with pytest.raises(ValueError):
        CountSketch(d=10, rows=0, cols=4, seed=0)


@pytest.mark.parametrize("kind", ["sketched_sgd", "sketched_amsgrad_pa", "sketched_amsgrad_ga"])
def test_bytes_per_round_match_the_formulas(kind):
    """Every round's messages go through the network in order: sketches up (4 r c),
    the candidate request down (P k indices), P k values up, k values + indices down,
    and for GA the h_t values up (k values, from the second round on)."""
    from pathlib import Path

    import algorithms
    from sim.study.config import load_scenario
    from sim.engine import build_world, run_algorithm
    tiny = Path(__file__).resolve().parents[1] / "scenarios" / "tiny.yaml"
    world = build_world(load_scenario(tiny, ["stop.max_rounds=4", "eval_every=1", "stop.on_target=false"]), 0)
    r, c, k, P, hdr, n = 3, 100, 20, 4, 64, world.n
    cfg = algorithms.ALGORITHMS[kind](name=kind, lr=0.01, rows=r, cols=c, k=k, P=P)
    res = run_algorithm(world, cfg)
    rows = res.rows
    for t in range(1, 5):
        up = rows[t]["bytes_up"] - rows[t - 1]["bytes_up"]
        down = rows[t]["bytes_down"] - rows[t - 1]["bytes_down"]
        h = 4 * k if (kind == "sketched_amsgrad_ga" and t > 1) else 0
        assert up == n * (4 * r * c + h + hdr) + n * (4 * P * k + hdr)
        assert down == n * (4 * P * k + hdr) + n * (8 * k + hdr)
        assert rows[t]["uploads"] - rows[t - 1]["uploads"] == 2 * n
    extra = k if kind.endswith("ga") else 0
    assert res.compression_rate == pytest.approx(2 * world.model.d / (r * c + P * k + k + extra))


def test_sketched_amsgrad_pa_collision_free_is_exact_top_k_of_the_mean():
    import algorithms
    from algorithms.base import Context
    from sim.learn.rng import WorkerStreams
    n, d, k, lr, b1, b2, eps = 3, 40, 6, 0.05, 0.9, 0.999, 1e-8
    ctx = Context(d=d, n=n, blocks=(), device=torch.device("cpu"))
    alg = algorithms.ALGORITHMS["sketched_amsgrad_pa"](lr=lr, rows=1, cols=d, k=k, P=d // k + 1).build(ctx)
    alg.sketch.buckets = torch.randperm(d, generator=torch.Generator().manual_seed(0)).to(torch.int32).view(1, d)
    gen = torch.Generator().manual_seed(1)
    theta, ref = torch.zeros(d), torch.zeros(d)
    state = alg.init(theta)
    m, v, vh, e = torch.zeros(n, d), torch.full((n, d), eps), torch.full((n, d), eps), torch.zeros(n, d)
    ones = torch.ones(n, dtype=torch.bool)
    for t in range(6):
        g = torch.randn(n, d, generator=gen)
        up, state = alg.worker_encode(state, g, t, WorkerStreams(0, n))
        _, state = alg.second_round(state, ones, t)
        theta, _, state = alg.server_update(state, theta, up, ones, t)
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        vh = torch.maximum(vh, v)
        p = m / vh.sqrt() + e
        mean = p.mean(0)
        idx = torch.topk(mean.abs(), k).indices
        ref = ref.clone()
        ref[idx] -= lr * mean[idx]
        e = p.clone()
        e[:, idx] = 0.0
        torch.testing.assert_close(theta, ref, rtol=1e-5, atol=1e-6)


def test_sketched_amsgrad_ga_second_moment_by_hand_over_two_rounds():
    """Algorithm 2: v_t = beta2 v_{t-1} + (1 - beta2) h_t^2 with h_t = mean_i g_t^(i) at
    I_{t-1} and 0 elsewhere.  d = 4, k = 1, two workers, a collision-free sketch.
    Round 1: I_0 is empty, so v_1 = beta2 eps at every coordinate, v_hat_1 = eps.
    The top-1 of m / sqrt(v_hat) is coordinate 2 (|mean m| = 0.1 * 3), so I_1 = {2}.
    Round 2: h_2 = mean g_2 at coordinate 2 = (1 + 3) / 2 = 2:
    v_2 = beta2^2 eps everywhere, plus (1 - beta2) * 4 at coordinate 2."""
    import algorithms
    from algorithms.base import Context
    from sim.learn.rng import WorkerStreams
    n, d, b2, eps = 2, 4, 0.5, 1e-8
    ctx = Context(d=d, n=n, blocks=(), device=torch.device("cpu"))
    alg = algorithms.ALGORITHMS["sketched_amsgrad_ga"](lr=0.1, rows=1, cols=d, k=1, P=4, beta2=b2,
                                                       eps=eps).build(ctx)
    alg.sketch.buckets = torch.arange(d, dtype=torch.int32).view(1, d)          # no collisions
    ones = torch.ones(n, dtype=torch.bool)
    theta, state = torch.zeros(d), alg.init(torch.zeros(d))
    g1 = torch.tensor([[1.0, 0.0, 2.0, 0.0], [-1.0, 1.0, 4.0, 0.0]])
    g2 = torch.tensor([[5.0, 7.0, 1.0, 9.0], [5.0, 7.0, 3.0, 9.0]])
    up, state = alg.worker_encode(state, g1, 0, WorkerStreams(0, n))
    _, state = alg.second_round(state, ones, 0)
    torch.testing.assert_close(state.v, torch.full((d,), b2 * eps))              # decayed everywhere
    torch.testing.assert_close(state.v_hat, torch.full((d,), eps))
    theta, _, state = alg.server_update(state, theta, up, ones, 0)
    assert state.index.tolist() == [2]
    up, state = alg.worker_encode(state, g2, 1, WorkerStreams(0, n))
    torch.testing.assert_close(state.h, torch.tensor([[1.0], [3.0]]))             # g_2 at I_1, k values
    _, state = alg.second_round(state, ones, 1)
    expect = torch.full((d,), b2 * b2 * eps)
    expect[2] += (1 - b2) * 2.0 ** 2
    torch.testing.assert_close(state.v, expect)
    torch.testing.assert_close(state.v_hat, torch.maximum(torch.full((d,), eps), expect))


@pytest.mark.parametrize("kind", ["sketched_sgd", "sketched_amsgrad_pa", "sketched_amsgrad_ga"])
def test_recall_diagnostics_against_a_direct_computation(kind):
    """sketch_recall: the sketch's own top-k against the exact vector's top-k,
    recomputed here from the state the algorithm saw; update_recall: the updated
    coordinates against the same top-k.  With P k >= d every coordinate is a
    candidate, so the update recall is exactly 1 while the sketch's is not."""
    import algorithms
    from algorithms.base import Context
    from sim.learn.rng import WorkerStreams
    n, d, k = 3, 500, 10
    ctx = Context(d=d, n=n, blocks=(), device=torch.device("cpu"))
    for P, want_update in ((d // k, 1.0), (2, None)):
        alg = algorithms.ALGORITHMS[kind](lr=0.01, rows=3, cols=16, k=k, P=P).build(ctx)
        gen = torch.Generator().manual_seed(4)
        theta, state = torch.zeros(d), alg.init(torch.zeros(d))
        ones = torch.ones(n, dtype=torch.bool)
        seen = []
        for t in range(4):
            g = torch.randn(n, d, generator=gen)
            up, state = alg.worker_encode(state, g, t, WorkerStreams(0, n))
            _, state = alg.second_round(state, ones, t)
            if kind == "sketched_sgd":
                exact = state.v.sum(0)
            else:
                exact = state.p.mean(0) / (state.v_hat.sqrt() if kind.endswith("ga") else 1.0)
            true = set(torch.topk(exact.abs(), k).indices.tolist())
            scale = state.v_hat.sqrt() if kind.endswith("ga") else None
            est = alg.sketch.estimate(alg.sketch.sketch(state.v.sum(0) if kind == "sketched_sgd"
                                                        else state.p.mean(0)), scale)
            own = set(torch.topk(est.abs(), k).indices.tolist())
            before = theta.clone()
            theta, _, state = alg.server_update(state, theta, up, ones, t)
            updated = set(torch.nonzero(theta != before).view(-1).tolist())
            diag = alg.diagnostics(state)
            assert diag["sketch_recall"] == pytest.approx(len(own & true) / k)
            assert diag["update_recall"] == pytest.approx(len(updated & true) / k)
            upd_idx = torch.tensor(sorted(updated))
            top_idx = torch.tensor(sorted(true))
            assert diag["update_mass"] == pytest.approx(float(exact[upd_idx].square().sum())
                                                        / float(exact[top_idx].square().sum()), rel=1e-6)
            if want_update is not None:
                assert diag["update_mass"] == pytest.approx(1.0)
            if t == 0:
                assert "repeat_share" not in diag
            else:
                assert diag["repeat_share"] == pytest.approx(len(updated & last) / k)
            last = updated
            if want_update is not None:
                assert diag["update_recall"] == want_update
            seen.append(diag["sketch_recall"])
        assert min(seen) < 1.0          # 16 buckets for 500 coordinates: the sketch misses some


def test_diagnostics_file_is_written_and_empty_for_other_algorithms(tmp_path):
    import csv

    from sim.study.config import load_scenario
    from sim.engine import build_world
    from sim.study.runner import execute
    tiny = Path(__file__).resolve().parents[1] / "scenarios" / "tiny.yaml"
    algs = "[{name: sk, kind: sketched_amsgrad_pa, lr: 0.01, rows: 3, cols: 100, k: 20, P: 4}, {name: sgd, kind: sgd, lr: 0.1}]"
    scn = load_scenario(tiny, ["stop.max_rounds=5", "stop.on_target=false", f"algorithms={algs}"])
    execute(scn, {0: build_world(scn, 0)}, tmp_path, quiet=True, plots=False)
    with (tmp_path / "diagnostics.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert [(r["algorithm"], r["round"], r["quantity"]) for r in rows] == \
        [("sk", "0", "sketch_recall"), ("sk", "0", "update_recall"), ("sk", "0", "update_mass")] + \
        [("sk", str(t), q) for t in range(1, 5)
         for q in ("sketch_recall", "update_recall", "update_mass", "repeat_share")]
    assert all(0.0 <= float(r["value"]) <= 1.0 + 1e-9 for r in rows)
