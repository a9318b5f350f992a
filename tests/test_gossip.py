"""Decentralized training (algorithms/gossip.py, sim/gossip.py): equivalences,
closed forms, exact wire bytes and refusals."""
from __future__ import annotations

import csv
import math
from pathlib import Path

import networkx as nx
import pytest
import torch

import algorithms
import run_sim
from algorithms.base import VALUE_BYTES, Context
from sim.engine import build_world, run_algorithm
from sim.gossip import run_ad_psgd
from sim.study.config import load_scenario
from sim.errors import ConfigError
from sim.learn.rng import WorkerStreams
from sim.net.wire import HEADER_BYTES
from topologies.gossip import spectral_gap

from test_algorithms import quadratic_problem

TINY = Path(__file__).resolve().parents[1] / "scenarios" / "tiny.yaml"
# equal workers, fixed compute, no stragglers: the timing is exact
EQUAL = ["compute={kind: fixed, step_time: 10 ms}", "stop.on_target=false", "eval_every=5",
         "stop.max_sim_time=null", "stop.max_rounds=20"]


def world(overrides: list[str] = (), seed: int = 0):
    return build_world(load_scenario(TINY, [*EQUAL, *overrides]), seed)


def cfg(kind: str, **kw):
    return algorithms.ALGORITHMS[kind](name=kind, **kw)


def ctx(n: int, d: int = 30, seed: int = 0) -> Context:
    from sim.learn.models import Block
    return Context(d=d, n=n, blocks=(Block("w", 0, d, (d,)),), device=torch.device("cpu"), seed=seed)


def close_rows(a, b, rel=1e-5):
    assert [r["round"] for r in a] == [r["round"] for r in b]
    for ra, rb in zip(a, b):
        for k in ("train_loss", "test_loss"):
            assert ra[k] == pytest.approx(rb[k], rel=rel), (ra["round"], k)
        assert ra["test_acc"] == rb["test_acc"]


# --- equivalences ----------------------------------------------------------------------------
def test_dpsgd_on_the_complete_graph_with_uniform_weights_is_synchronous_sgd():
    """W = 11^T / n: every row of W (X - lr G) is theta - lr mean(G), sync SGD's step (float rounding aside)."""
    w = world()
    sgd = run_algorithm(w, cfg("sgd", lr=0.1))
    d = run_algorithm(w, cfg("dpsgd", lr=0.1, graph={"kind": "complete"}, mixing="uniform"))
    close_rows(d.rows, sgd.rows)
    assert all(r["consensus_distance"] < 1e-12 for r in d.rows)           # every worker holds the same model
    assert all(r["worker_acc_min"] == r["test_acc"] for r in d.rows)
    assert d.spectral_gap == pytest.approx(1.0)


def test_choco_with_the_identity_and_gamma_1_is_dpsgd():
    grads, _ = quadratic_problem(n=6, d=30)
    c = ctx(6)
    a = cfg("dpsgd", lr=0.3, graph={"kind": "ring"}).build(c)
    b = cfg("choco_sgd", lr=0.3, gamma=1.0, graph={"kind": "ring"}, compressor={"kind": "none"}).build(c)
    sa, sb = a.init(torch.zeros(30)), b.init(torch.zeros(30))
    streams = WorkerStreams(0, 6)
    for t in range(50):
        sa, _ = a.round(sa, t, lambda h, th: grads(th), streams)
        sb, nb = b.round(sb, t, lambda h, th: grads(th), streams)
        assert nb == [VALUE_BYTES * 30] * 6
    assert torch.allclose(sa.x, sb.x, atol=1e-6, rtol=1e-6)
    assert not torch.allclose(sa.x[0], sa.x[1])           # not trivially so: the workers disagree
    w = world()
    close_rows(run_algorithm(w, cfg("choco_sgd", lr=0.1, gamma=1.0)).rows,
               run_algorithm(w, cfg("dpsgd", lr=0.1)).rows)


def test_consensus_contracts_at_the_rate_the_spectral_gap_predicts():
    """Noise-free (zero gradients): ||X_t - X_bar||^2 <= (1 - gap)^(2t) ||X_0 - X_bar||^2, and the
    ratio of successive distances tends to |lambda_2|^2 = (1 - gap)^2."""
    n, d = 12, 30
    for graph in ({"kind": "ring"}, {"kind": "torus"}, {"kind": "exponential"}):
        alg = cfg("dpsgd", lr=0.1, graph=graph).build(ctx(n, d))
        lam = 1.0 - alg.gap
        x = torch.randn(n, d, generator=torch.Generator().manual_seed(0), dtype=torch.float32)
        state = type(alg.init(torch.zeros(d)))(x)
        dist = lambda s: float(((s.x.double() - s.x.double().mean(0)) ** 2).sum())  # noqa: E731
        d0, prev, ratio = dist(state), dist(state), None
        rounds = min(40, int(math.log(1e-8) / math.log(lam ** 2)))   # above float32's floor
        assert rounds >= 8
        for t in range(1, rounds + 1):
            state, _ = alg.round(state, t, lambda h, th: torch.zeros_like(th), None)
            cur = dist(state)
            assert cur <= lam ** (2 * t) * d0 * (1 + 1e-4), (graph, t)
            ratio, prev = cur / prev, cur
        assert ratio == pytest.approx(lam ** 2, rel=0.06), graph      # the other modes die out faster
        assert torch.allclose(state.x.double().mean(0), x.double().mean(0), atol=1e-5)   # the mean is kept


def test_push_sum_weights_stay_positive_and_sum_to_n():
    n, d = 9, 30
    grads, loss = quadratic_problem(n=n, d=d)
    alg = cfg("sgp", lr=0.3, graph={"kind": "erdos_renyi", "p": 0.4, "seed": 3}).build(ctx(n, d))
    g = nx.gnp_random_graph(n, 0.4, seed=3)
    assert len({deg for _, deg in g.degree()}) > 1          # irregular: the weights do move
    state = alg.init(torch.zeros(d))
    start = loss(torch.zeros(d))
    for t in range(100):
        state, nbytes = alg.round(state, t, lambda h, th: grads(th), None)
        assert nbytes == [VALUE_BYTES * d + 8] * n          # 4 d values + the weight (float64)
        assert bool((state.w > 0).all())
        assert float(state.w.sum()) == pytest.approx(n, rel=1e-12)
    assert float(state.w.max() - state.w.min()) > 1e-3
    theta = torch.zeros(d)                                  # centralized gradient descent, same steps
    for t in range(100):
        theta = theta - 0.3 * grads(theta).mean(0)
    assert loss(alg.average(state)) == pytest.approx(loss(theta), rel=0.02) and loss(theta) < start


def test_ad_psgd_pairwise_averaging_conserves_the_sum_when_the_gradient_is_zero():
    w = world(["workers=6", "stop.max_rounds=10"])
    c = cfg("ad_psgd", lr=0.1, graph={"kind": "ring"})
    x0 = torch.randn(6, w.model.d, generator=torch.Generator().manual_seed(1))
    out: dict = {}
    res = run_ad_psgd(w, c, zero_gradients=True, x0=x0, state_out=out)
    assert res.rows[-1]["round"] == 60
    assert torch.allclose(out["x"].double().sum(0), x0.double().sum(0), atol=1e-4)
    dist = lambda x: float(((x.double() - x.double().mean(0)) ** 2).sum())  # noqa: E731
    assert dist(out["x"]) < 0.05 * dist(x0)                 # 60 averages moved them together
    assert res.rows[-1]["uploads"] == 2 * 60                # one model each way per average
    assert res.rows[-1]["bytes_up"] == 2 * 60 * (VALUE_BYTES * w.model.d + HEADER_BYTES)


def test_ad_psgd_lazy_batches_equal_the_one_at_a_time_reference():
    w = world(["workers=5", "compute={kind: fixed, step_time: 10 ms}", "network.uplink.bandwidth=[1 Gbps, "
               "200 Mbps, 1 Gbps, 50 Mbps, 1 Gbps]"])
    c = cfg("ad_psgd", lr=0.1, graph={"kind": "complete"})
    lazy, eager = run_ad_psgd(w, c), run_ad_psgd(w, c, eager=True)
    assert lazy.rows == eager.rows                          # bitwise, every column
    assert lazy.mean_batch > 1.5 and eager.mean_batch == 1.0


# --- wire bytes and timing ---------------------------------------------------------------------
@pytest.mark.parametrize("graph,n", [({"kind": "ring"}, 8), ({"kind": "torus", "rows": 3}, 9),
                                     ({"kind": "hypercube"}, 8), ({"kind": "complete"}, 5),
                                     ({"kind": "exponential"}, 8),
                                     ({"kind": "random_regular", "degree": 3, "seed": 2}, 8)])
def test_bytes_per_round_are_exact_for_each_topology(graph, n):
    w = world([f"workers={n}", "stop.max_rounds=10"])
    d, msg = w.model.d, VALUE_BYTES * w.model.d + HEADER_BYTES
    res = run_algorithm(w, cfg("dpsgd", lr=0.1, graph=graph))
    alg = cfg("dpsgd", lr=0.1, graph=graph).build(ctx(n, d))
    edges = sum(len(s) for s in alg.sends)                  # directed sends: each edge both ways
    g = nx.Graph([(i, j) for i, s in enumerate(alg.sends) for j in s])
    assert edges == 2 * g.number_of_edges()
    for r in res.rows:
        assert r["uploads"] == r["round"] * edges
        assert r["bytes_up"] == r["round"] * edges * msg and r["bytes_down"] == 0
    links = {row["link"]: row for row in res.links}
    for i, s in enumerate(alg.sends):                       # the star: w_i's uplink carries its sends,
        assert links[f"w{i}->switch"]["bytes_carried"] == 10 * len(s) * msg      # its downlink what it receives
        assert links[f"switch->w{i}"]["bytes_carried"] == 10 * sum(i in t for t in alg.sends) * msg
    assert links["switch->server"]["bytes_carried"] == 0    # nothing goes near the server


def test_choco_and_sgp_messages_are_the_formulas():
    w = world(["workers=6", "stop.max_rounds=4", "eval_every=2"])
    d = w.model.d
    k = max(1, int(0.1 * d))
    res = run_algorithm(w, cfg("choco_sgd", lr=0.1, gamma=0.5, compressor={"kind": "topk", "ratio": 0.1}))
    assert res.rows[-1]["bytes_up"] == 4 * 12 * (math.ceil(k * (32 + 32) / 8) + HEADER_BYTES)   # ring: 12 sends
    res = run_algorithm(w, cfg("sgp", lr=0.1))
    sends = sum(len(s) for s in cfg("sgp", lr=0.1).build(ctx(6, d)).sends)
    assert res.rows[-1]["bytes_up"] == 4 * sends * (VALUE_BYTES * d + 8 + HEADER_BYTES)


def test_a_ring_round_takes_the_closed_form_time_on_a_star():
    """4 equal workers, a ring: each sends 2 messages of S bytes at once; its uplink (B) and the
    receiver's downlink (B) each carry 2 flows, so each flow gets B / 2 and the round takes
    compute + 2 latency + 8 S / (B / 2)."""
    B, L = 100e6, 1e-3
    w = world(["network.uplink={bandwidth: 100 Mbps, latency: 1 ms}",
               "network.downlink={bandwidth: 100 Mbps, latency: 1 ms}"])
    res = run_algorithm(w, cfg("dpsgd", lr=0.1))
    S = VALUE_BYTES * w.model.d + HEADER_BYTES
    per_round = 0.010 + 2 * L + 8 * S / (B / 2)
    for r in res.rows:
        assert r["sim_time_s"] == pytest.approx(r["round"] * per_round, rel=1e-9)


def test_a_straggler_delays_its_neighbours_first():
    """No global barrier: worker 0 computes 10x slower; on a ring of 6, worker 3 (3 hops away) is
    never kept waiting in the first rounds by more than the hops between them allow."""
    w = world(["workers=6", "compute={kind: flops, device_tflops: 15, efficiency: 0.4, "
               "speed: [0.1, 1, 1, 1, 1, 1]}", "stop.max_rounds=2", "eval_every=1"])
    phases: list[dict] = []
    res = run_algorithm(w, cfg("dpsgd", lr=0.1), on_phase=phases.append)
    slow, fast = w.step_s[0], w.step_s[1]
    assert slow == pytest.approx(10 * fast)
    # round 0 ends when worker 0 has computed and its messages are through; every other worker
    # started round 0 at time 0, so the first row is at about worker 0's compute time
    assert res.rows[1]["sim_time_s"] > slow
    assert phases[0]["start_s"] == 0.0 and phases[0]["compute_s"] == pytest.approx(slow)


# --- refusals --------------------------------------------------------------------------------
def test_a_disconnected_graph_is_refused_naming_the_components(tmp_path, capsys):
    out = tmp_path / "out"
    code = run_sim.main(["run", str(TINY), "--out", str(out), "--set", "workers=8", "--set",
                         "algorithms=[{kind: dpsgd, lr: 0.1, graph: {kind: erdos_renyi, p: 0.05, seed: 1}}]"])
    err = capsys.readouterr().err
    assert code == 2 and not out.exists()
    assert "disconnected" in err and "components" in err and "{0" in err and "tiny.yaml" in err


def test_a_disconnected_graphml_file_is_refused(tmp_path, capsys):
    g = nx.Graph([("w0", "w1"), ("w2", "w3")])
    nx.write_graphml(g, tmp_path / "comm.graphml")
    scn = tmp_path / "s.yaml"
    scn.write_text(TINY.read_text().split("algorithms:")[0] +
                   "algorithms:\n  - {kind: dpsgd, lr: 0.1, graph: {kind: graphml, file: comm.graphml}}\n")
    code = run_sim.main(["run", str(scn), "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 2 and not (tmp_path / "out").exists()
    assert "2 components ({0, 1}; {2, 3})" in err and "graph.file" in err


def test_a_graphml_communication_graph_is_used(tmp_path):
    nx.write_graphml(nx.path_graph(4), tmp_path / "path.graphml")        # nodes 0 .. 3
    scn = tmp_path / "s.yaml"
    scn.write_text(TINY.read_text().split("algorithms:")[0] +
                   "algorithms:\n  - {kind: dpsgd, lr: 0.1, graph: {kind: graphml, file: path.graphml}}\n")
    s = load_scenario(scn, EQUAL)
    res = run_algorithm(build_world(s, 0), s.algorithms[0])
    assert res.rows[-1]["uploads"] == 20 * 6                # a path of 4: 3 edges, both ways
    assert res.spectral_gap == pytest.approx(spectral_gap(
        algorithms.gossip.mixing_matrix(nx.path_graph(4), "metropolis_hastings")))


def test_uniform_mixing_on_an_irregular_graph_is_refused():
    with pytest.raises(ConfigError, match="not doubly stochastic"):
        load_scenario(TINY, ["workers=6", "algorithms=[{kind: dpsgd, lr: 0.1, mixing: uniform, "
                                           "graph: {kind: erdos_renyi, p: 0.5, seed: 1}}]"])


def test_failures_are_refused_for_gossip():
    with pytest.raises(ConfigError, match="failures are not modelled"):
        load_scenario(TINY, ["failures=[{worker: 1, crash_at: 1 s}]", "algorithms=[{kind: dpsgd, lr: 0.1}]"])


def test_gossip_runs_write_the_decentralized_columns_and_refuse_replay(tmp_path, capsys):
    out = tmp_path / "run"
    assert run_sim.main(["run", str(TINY), "--out", str(out), "--set", "stop.max_rounds=10",
                         "--set", "algorithms=[{name: d, kind: dpsgd, lr: 0.1}, {name: a, kind: ad_psgd, lr: 0.1}]"]) == 0
    rows = list(csv.DictReader((out / "metrics.csv").open()))
    assert {r["algorithm"] for r in rows} == {"d", "a"}
    assert all(r["consensus_distance"] != "" and r["worker_acc_min"] != "" for r in rows)
    summary = list(csv.DictReader((out / "summary.csv").open()))
    assert all(0 < float(r["spectral_gap"]) <= 1 for r in summary)
    capsys.readouterr()
    assert run_sim.main(["replay", str(out), "--out", str(tmp_path / "re")]) == 2
    assert "decentralized" in capsys.readouterr().err


def test_a_link_down_for_good_stalls_gossip_with_a_row_only_for_a_state_every_worker_holds():
    """The uplinks go down at 25 ms for good: every worker waits forever for its neighbours; the
    run is stalled and its rows are of rounds every worker completed, each the same as without
    the outage (the state a row labels is that round's)."""
    w = world(["eval_every=1", "network.uplink={bandwidth: 1 Gbps, latency: 5 ms, "
               "schedule: [{at: 0 s, bandwidth: 1 Gbps}, {at: 25 ms, bandwidth: 0 bps}]}"])
    res = run_algorithm(w, cfg("dpsgd", lr=0.1))
    assert res.stalled.startswith("at simulated time") and "no message can ever be delivered" in res.stalled
    rounds = [r["round"] for r in res.rows]
    assert rounds == list(range(len(rounds))) and 0 < rounds[-1] < 20
    ref = run_algorithm(world(["eval_every=1"]), cfg("dpsgd", lr=0.1)).rows   # the same math, no outage
    assert [r["test_acc"] for r in res.rows] == [r["test_acc"] for r in ref[:len(rounds)]]
