"""Topologies, heterogeneity and bad network input, through the scenario loader."""
from __future__ import annotations

import math

import pytest
import yaml

from sim.study.config import load_scenario
from sim.engine import build_graph, build_world, run_algorithm
from sim.errors import ConfigError

BASE = {
    "name": "t", "seed": 0, "workers": 4, "batch_size": 4, "device": "cpu",
    "data": {"dataset": "synthetic", "partition": {"kind": "iid"}},
    "model": {"kind": "logreg"},
    "network": {"topology": "star", "uplink": {"bandwidth": "1 Gbps", "latency": "5 ms"},
                "downlink": {"bandwidth": "1 Gbps", "latency": "5 ms"}, "server": {"bandwidth": "10 Gbps"}},
    "stop": {"target_accuracy": 0.99, "max_rounds": 6, "on_target": False},
    "eval_every": 3,
    "algorithms": [{"name": "sgd", "kind": "sgd", "lr": 0.1}],
}


def scenario(tmp_path, **network):
    data = yaml.safe_load(yaml.safe_dump(BASE))
    data["network"].update(network)
    p = tmp_path / "s.yaml"
    p.write_text(yaml.safe_dump(data))
    return load_scenario(p), p


def test_hierarchical_rack_uplink_is_oversubscribed(tmp_path):
    scn, _ = scenario(tmp_path, topology={"kind": "hierarchical", "rack_size": 2, "oversubscription": 4})
    g = build_graph(scn, 0)
    assert g.edges["tor0", "core"]["bandwidth_bps"] == pytest.approx(2 * 1e9 / 4)
    assert g.edges["tor1", "core"]["bandwidth_bps"] == pytest.approx(2 * 1e9 / 4)
    assert g.edges["core", "server"]["bandwidth_bps"] == 1e10
    assert set(g.successors("w3")) == {"tor1"}


def test_star_with_three_servers(tmp_path):
    scn, _ = scenario(tmp_path, topology={"kind": "star", "servers": 3})
    g = build_graph(scn, 0)
    assert {"server0", "server1", "server2"} <= set(g.nodes)


def test_inline_graph_and_unreachable_worker_named(tmp_path):
    edges = [{"src": f"w{i}", "dst": "sw", "bandwidth": "1 Gbps", "latency": "1 ms"} for i in range(3)]
    edges.append({"src": "sw", "dst": "server", "bandwidth": "10 Gbps"})
    scn, _ = scenario(tmp_path, topology={"kind": "graph", "edges": edges})
    with pytest.raises(ConfigError, match="w3"):
        build_graph(scn, 0)
    edges.append({"src": "w3", "dst": "sw", "bandwidth": "1 Gbps", "bidirectional": False})
    scn, _ = scenario(tmp_path, topology={"kind": "graph", "edges": edges})
    with pytest.raises(ConfigError, match="cannot reach worker w3"):
        build_graph(scn, 0)
    edges[-1]["bidirectional"] = True
    scn, _ = scenario(tmp_path, topology={"kind": "graph", "edges": edges})
    g = build_graph(scn, 0)
    assert g.edges["w0", "sw"]["latency_s"] == 0.001 and g.edges["sw", "w0"]["bandwidth_bps"] == 1e9


def test_graph_unknown_node_in_an_edge(tmp_path):
    edges = [{"src": "w0", "dst": "swx", "bandwidth": "1 Gbps"}]
    scn, _ = scenario(tmp_path, topology={"kind": "graph", "nodes": ["w0", "sw", "server"], "edges": edges})
    with pytest.raises(ConfigError, match="unknown node 'swx'") as e:
        build_graph(scn, 0)
    assert e.value.field == "network.topology.edges.0"


def test_graphml_file(tmp_path):
    import networkx as nx
    g = nx.Graph()
    for i in range(4):
        g.add_edge(f"w{i}", "sw", bandwidth_bps=1e9, latency_s=0.002)
    g.add_edge("sw", "server", bandwidth_bps=1e10, latency_s=0.0)
    nx.write_graphml(g, tmp_path / "net.graphml")
    scn, _ = scenario(tmp_path, topology={"kind": "graph", "graphml": "net.graphml"})
    built = build_graph(scn, 0)
    assert built.edges["server", "sw"]["bandwidth_bps"] == 1e10
    assert built.edges["w2", "sw"]["latency_s"] == 0.002
    with pytest.raises(ConfigError, match="not found") as e:   # found missing when the scenario loads
        scenario(tmp_path, topology={"kind": "graph", "graphml": "missing.graphml"})
    assert e.value.field == "network.topology.graphml"


def test_per_worker_lists_and_distributions_are_seeded(tmp_path):
    scn, _ = scenario(tmp_path, uplink={"bandwidth": ["1 Gbps", "100 Mbps", "10 Mbps", "1 Gbps"],
                                        "latency": {"dist": "uniform", "low": "1 ms", "high": "9 ms"}})
    g = build_graph(scn, 0)
    assert [g.edges[f"w{i}", "switch"]["bandwidth_bps"] for i in range(4)] == [1e9, 1e8, 1e7, 1e9]
    lat = [g.edges[f"w{i}", "switch"]["latency_s"] for i in range(4)]
    assert all(0.001 <= x <= 0.009 for x in lat) and len(set(lat)) == 4
    assert lat == [build_graph(scn, 0).edges[f"w{i}", "switch"]["latency_s"] for i in range(4)]
    assert lat != [build_graph(scn, 1).edges[f"w{i}", "switch"]["latency_s"] for i in range(4)]
    scn, _ = scenario(tmp_path, uplink={"bandwidth": {"dist": "lognormal", "median": "1 Gbps", "sigma": 1.0}})
    bws = [build_graph(scn, 0).edges[f"w{i}", "switch"]["bandwidth_bps"] for i in range(4)]
    assert len(set(bws)) == 4 and all(b > 0 for b in bws)


@pytest.mark.parametrize("network,field", [
    ({"uplink": {"bandwidth": "0 Gbps"}}, "network.uplink.bandwidth"),
    ({"uplink": {"bandwidth": "-5 Mbps"}}, "network.uplink.bandwidth"),
    ({"uplink": {"bandwidth": ["1 Gbps", "1 Gbps"]}}, "network.uplink.bandwidth"),
    ({"uplink": {"bandwidth": "1 Gbps", "schedule": [{"at": "2 s", "bandwidth": "1 Gbps"},
                                                     {"at": "1 s", "bandwidth": "2 Gbps"}]}}, "network.uplink"),
    ({"uplink": {"bandwidth": "1 Gbps", "trace": "missing.csv"}}, "network.uplink.trace"),
    ({"topology": "moebius"}, "network.topology"),
    ({"sharing": "lottery"}, "network.sharing"),
    ({"uplink": {"bandwidth": "1 Gbps", "down": [{"start": "2 s", "end": "1 s"}]}}, "network.uplink.down.0"),
])
def test_bad_network_input_names_the_field(tmp_path, network, field):
    with pytest.raises(ConfigError) as e:
        scenario(tmp_path, **network)
    assert e.value.field == field, str(e.value)


def test_malformed_trace_names_the_file_line(tmp_path):
    (tmp_path / "tr.csv").write_text("time_s,bandwidth_bps\n0,1e9\n5,oops\n")
    with pytest.raises(ConfigError, match=r"tr.csv:3") as e:
        scenario(tmp_path, uplink={"bandwidth": "1 Gbps", "trace": "tr.csv"})
    assert e.value.field == "network.uplink.trace"


def run(tmp_path, **kw):
    data = yaml.safe_load(yaml.safe_dump(BASE))
    for k, v in kw.items():
        data[k] = v
    p = tmp_path / "r.yaml"
    p.write_text(yaml.safe_dump(data))
    scn = load_scenario(p)
    world = build_world(scn, 0)
    phases = []
    res = run_algorithm(world, scn.algorithms[0], on_phase=phases.append)
    return scn, world, res, phases


def test_links_carry_what_the_counters_say(tmp_path):
    scn, world, res, phases = run(tmp_path)
    last = res.rows[-1]
    up = sum(l["bytes_carried"] for l in res.links if l["src"].startswith("w"))
    down = sum(l["bytes_carried"] for l in res.links if l["src"] == "switch" and l["dst"] != "server")
    assert up == last["bytes_up"] == 6 * 4 * (4 * world.model.d + 64)
    assert res.links and all(l["busy_s"] <= last["sim_time_s"] + 1e-12 for l in res.links)
    # the last broadcast is still in flight when the run ends: 5 of 6 broadcasts delivered
    assert down == 5 * 4 * (64 + 4 * world.model.d) or down == last["bytes_down"]
    for ph in phases:
        parts = ph["download_s"] + ph["compute_s"] + ph["upload_s"] + ph["server_s"] + ph["wait_s"]
        assert parts == pytest.approx(ph["end_s"] - ph["start_s"], abs=1e-12)


def test_ring_topology_runs_and_counts_ring_messages(tmp_path):
    data_net = dict(BASE["network"], topology="ring")
    scn, world, res, phases = run(tmp_path, network=data_net)
    n = 4
    assert res.rows[-1]["uploads"] == 6 * n * 2 * (n - 1)
    assert res.rows[-1]["bytes_down"] == 0


def test_failures_and_timeout_change_who_arrives(tmp_path):
    _, _, res, phases = run(tmp_path, failures=[{"worker": 2, "crash_at": "0 s", "rejoin_at": "0.05 s"}],
                            stop={"max_rounds": 12, "target_accuracy": 0.99, "on_target": False})
    arrived = [p["arrived"] for p in phases]
    assert arrived[0] == 3 and arrived[-1] == 4
    _, _, res, phases = run(tmp_path, compute={"kind": "fixed", "step_time": "1 ms", "speed": [1, 1, 1, 0.01]},
                            round_timeout="50 ms")
    assert all(p["arrived"] == 3 for p in phases)                  # worker 3 always 100 ms late
    assert all(p["end_s"] - p["start_s"] == pytest.approx(0.05) for p in phases)


def test_nothing_hangs_when_no_worker_can_deliver(tmp_path):
    net = dict(BASE["network"], uplink={"bandwidth": "1 Gbps", "schedule": [{"at": "0 s", "bandwidth": "0 bps"}]})
    _, _, res, _ = run(tmp_path, network=net)
    assert "no message can ever be delivered" in res.stalled
    _, _, res, phases = run(tmp_path, network=net, round_timeout="10 ms",
                            stop={"max_rounds": 100, "target_accuracy": 0.9})
    assert "no upload arrived" in res.stalled and len(phases) == 10
    assert math.isclose(res.rows[-1]["sim_time_s"], 0.1)
