"""Round protocols against closed forms, and the network features end to end."""
from __future__ import annotations


import networkx as nx
import pytest
import simpy
import torch

from algorithms.base import Payload
from sim.net.network import Network
from sim.net.protocols import Failures, ParameterServer, Ring, slice_bounds, slice_bytes


def ring_graph(n, bw, lat):
    g = nx.DiGraph()
    for i in range(n):
        g.add_edge(f"w{i}", f"w{(i + 1) % n}", bandwidth_bps=bw, latency_s=lat)
    return g


def dense_payload(n, d):
    return Payload({"values": torch.zeros(n, d)}, torch.full((n,), 4 * d, dtype=torch.int64))


def run_round(proto, payload, n, step_s=0.0, timeout=None):
    """Run one round; returns its timing and the simulated time it ended."""
    env = proto.env
    box = {}

    def go():
        box["t"] = yield from proto.round(0, proto.sizes(payload), proto.begin(0), [step_s] * n, timeout)
        box["end"] = env.now
    env.process(go())
    env.run()
    return box["t"], box["end"]


@pytest.mark.parametrize("n", [2, 4, 5, 8])
@pytest.mark.parametrize("sharing", ["fair", "fifo"])
def test_ring_allreduce_closed_form(n, sharing):
    # S bytes over n workers, link bandwidth B, latency a: 2 (n - 1) (a + S / (n B)).
    d, bw, lat = 1000 * n, 1e9, 0.002
    env = simpy.Environment()
    proto = Ring(env, Network(env, ring_graph(n, bw, lat), sharing), n, d, header=0, summable=True)
    timing, end = run_round(proto, dense_payload(n, d), n)
    S = 4 * d
    assert end == pytest.approx(2 * (n - 1) * (lat + 8 * S / (n * bw)), rel=1e-12)
    assert timing.messages_up == 2 * (n - 1) * n
    assert timing.bytes_up == 2 * (n - 1) * S          # each worker sends 2 (n - 1) chunks of S / n
    ph = timing.phase
    assert ph["download_s"] + ph["compute_s"] + ph["upload_s"] + ph["server_s"] + ph["wait_s"] == \
        pytest.approx(ph["end_s"] - ph["start_s"])


@pytest.mark.parametrize("n", [2, 3, 5])
def test_ring_second_phase_closed_form(n):
    """exchange(): a second all-reduce of S bytes per worker, started when the
    first phase is done everywhere: 2 (n - 1) (a + 8 (S / n + header) / B) more."""
    d, bw, lat, hdr, S = 1000 * n, 1e9, 0.002, 40, 4 * 600 * n
    env = simpy.Environment()
    proto = Ring(env, Network(env, ring_graph(n, bw, lat)), n, d, header=hdr, summable=True)
    box = {}

    def go():
        yield from proto.round(0, proto.sizes(dense_payload(n, d)), proto.begin(0), [0.0] * n, None)
        box["t1"] = env.now
        box["ex"] = yield from proto.exchange(0, 12345, S, [True] * n)
        box["t2"] = env.now
    env.process(go())
    env.run()
    assert box["t1"] == pytest.approx(2 * (n - 1) * (lat + 8 * (4 * d / n + hdr) / bw), rel=1e-12)
    assert box["t2"] - box["t1"] == pytest.approx(2 * (n - 1) * (lat + 8 * (S / n + hdr) / bw), rel=1e-12)
    assert box["ex"] == {"bytes_up": 2 * (n - 1) * (S + n * hdr), "messages_up": 2 * (n - 1) * n}
    assert proto.ready_at == [box["t2"]] * n        # the next round's compute starts from the second phase
    assert proto.bytes_down == 0                    # the request is never sent on a ring


def test_ring_allgather_for_messages_that_cannot_be_summed():
    n, d, bw, lat = 4, 1000, 8000.0, 0.0
    env = simpy.Environment()
    proto = Ring(env, Network(env, ring_graph(n, bw, lat)), n, d, header=0, summable=False)
    sizes = torch.tensor([100, 200, 300, 400])
    payload = Payload({"values": torch.zeros(n, 4), "indices": torch.zeros(n, 4, dtype=torch.long)}, sizes)
    timing, end = run_round(proto, payload, n)
    # n - 1 steps; each worker forwards every other worker's message once
    assert timing.messages_up == n * (n - 1)
    assert timing.bytes_up == (n - 1) * int(sizes.sum())
    # equal messages move in lockstep: n - 1 steps of one message time each
    env = simpy.Environment()
    proto = Ring(env, Network(env, ring_graph(n, bw, lat)), n, d, header=0, summable=False)
    payload = Payload(payload.tensors, torch.full((n,), 400))
    _, end = run_round(proto, payload, n)
    assert end == pytest.approx((n - 1) * 400 / 1000.0)


def test_slices_split_index_coded_payloads_exactly():
    bounds = slice_bounds(10, 3)
    assert bounds == [(0, 4), (4, 7), (7, 10)]
    idx = torch.tensor([[0, 1, 5, 9], [4, 5, 6, 7]])
    p = Payload({"values": torch.zeros(2, 4), "indices": idx}, torch.tensor([32, 32]))
    assert slice_bytes(p.tensors, p.nbytes, 10, bounds) == [[16, 8, 8], [0, 24, 8]]
    dense = dense_payload(2, 10)
    assert slice_bytes(dense.tensors, dense.nbytes, 10, bounds) == [[16, 12, 12]] * 2


def star(n, up_bw=1e9, lat=0.0, servers=("server",), nic=1e10):
    g = nx.DiGraph()
    for i in range(n):
        g.add_edge(f"w{i}", "switch", bandwidth_bps=up_bw, latency_s=lat)
        g.add_edge("switch", f"w{i}", bandwidth_bps=up_bw, latency_s=lat)
    for s in servers:
        g.add_edge("switch", s, bandwidth_bps=nic, latency_s=0.0)
        g.add_edge(s, "switch", bandwidth_bps=nic, latency_s=0.0)
    return g


def test_sharded_servers_each_get_their_slice():
    n, d = 4, 3000
    servers = ["server0", "server1", "server2"]
    env = simpy.Environment()
    net = Network(env, star(n, servers=servers))
    net.trace = True
    proto = ParameterServer(env, net, n, servers, d, header=0, failures=Failures())
    timing, end = run_round(proto, dense_payload(n, d), n)
    per_server = {s: sum(m.nbytes for _, _, m in net.delivered if m.dst == s) for s in servers}
    assert per_server == {s: n * 4 * 1000 for s in servers}
    assert timing.messages_up == n * 3 and timing.bytes_up == n * 4 * d
    # each worker's 3 slices share its 1 Gbps uplink: 12 kB at 1 Gbps
    assert end == pytest.approx(8 * 4 * d / 1e9)


def test_round_timeout_drops_the_late_worker():
    n = 3
    env = simpy.Environment()
    g = star(n)
    g.edges["w2", "switch"]["bandwidth_bps"] = 1e6   # worker 2 is on a slow uplink
    proto = ParameterServer(env, Network(env, g), n, ["server"], 1000, header=0, failures=Failures())
    timing, end = run_round(proto, dense_payload(n, 1000), n, timeout=0.01)
    assert timing.arrived == [True, True, False]
    assert end == pytest.approx(0.01)
    assert timing.phase["wait_s"] > 0


def test_crashed_worker_takes_no_part_and_pulls_parameters_when_it_rejoins():
    n = 3
    env = simpy.Environment()
    fail = Failures({1: [(0.0, 0.5)]})
    net = Network(env, star(n))
    proto = ParameterServer(env, net, n, ["server"], 1000, header=0, failures=fail)
    timing, _ = run_round(proto, dense_payload(n, 1000), n)
    assert timing.arrived == [True, False, True]
    proto.finish(0, [4000])
    env.run(until=1.0)
    before = proto.bytes_down
    assert proto.begin(1) == [True, True, True]          # worker 1 is back
    assert proto.bytes_down - before == 4 * 1000          # and pulls the full parameters


def test_failures_up_through():
    f = Failures({0: [(1.0, 2.0)]})
    assert f.up(0, 0.5) and not f.up(0, 1.0) and f.up(0, 2.0)
    assert f.up_through(0, 0.0, 0.9) and not f.up_through(0, 0.0, 1.5) and f.up_through(0, 2.0, 3.0)
    assert not f.up_through(0, 1.5, 3.0)
