"""The network model against closed forms and exact traces."""
from __future__ import annotations

import networkx as nx
import numpy as np
import pytest
import simpy
from hypothesis import given, settings
from hypothesis import strategies as st

from sim.net.network import Flow, Link, Network, max_min_rates
from sim.net.wire import Message


def line(*hops: tuple[str, str, float, float]) -> nx.DiGraph:
    g = nx.DiGraph()
    for u, v, bw, lat in hops:
        g.add_edge(u, v, bandwidth_bps=bw, latency_s=lat)
    return g


def run_model(graph, sends, sharing="fair", until=100.0):
    """sends: list of (start_s, src, dst, payload_bytes). Returns the arrival time of
    each (None: never arrived), in order, and the network."""
    env = simpy.Environment()
    net = Network(env, graph, sharing)
    arrivals = [None] * len(sends)

    def sender(i, start, src, dst, size):
        yield env.timeout(start)
        yield net.send(Message(src, dst, "x", 0, size, header_bytes=0))
        arrivals[i] = env.now

    for i, s in enumerate(sends):
        env.process(sender(i, *s))
    env.run(until=until)  # a looping schedule never runs out of events
    return arrivals, net


run_sends = run_model


def test_one_message_latency_plus_size_over_bandwidth():
    # 1 MB over 1 Gbit/s with 10 ms latency arrives at 0.018 s (design sketch trace).
    arr, _ = run_sends(line(("a", "b", 1e9, 0.010)), [(0.0, "a", "b", 1_000_000)])
    assert arr[0] == pytest.approx(0.018, rel=1e-12)


def test_header_counts_on_the_wire():
    env = simpy.Environment()
    net = Network(env, line(("a", "b", 8e3, 0.0)))  # 1000 bytes/s
    done = net.send(Message("a", "b", "x", 0, payload_bytes=936, header_bytes=64))
    env.run()
    assert done.processed and env.now == pytest.approx(1.0)
    assert net.links[("a", "b")].bytes_carried == 1000


def test_path_latency_adds_over_hops_and_bottleneck_sets_rate():
    g = line(("a", "s", 1e9, 0.001), ("s", "b", 1e8, 0.002))
    arr, _ = run_sends(g, [(0.0, "a", "b", 125_000)])  # 1 Mbit
    assert arr[0] == pytest.approx(0.003 + 1e6 / 1e8, rel=1e-12)


@pytest.mark.parametrize("k", [1, 2, 3, 7])
def test_k_equal_flows_share_a_link_equally(k):
    size, bw, lat = 250_000, 1e9, 0.005
    arr, _ = run_sends(line(("a", "b", bw, lat)), [(0.0, "a", "b", size)] * k)
    # each gets bw / k: all finish together at k * size * 8 / bw
    for t in arr:
        assert t == pytest.approx(lat + k * size * 8 / bw, rel=1e-12)


def test_late_flow_slows_the_first_then_speeds_it_up_again():
    # B = 8000 bit/s = 1000 B/s. Flow A: 1000 B from t=0; flow B: 250 B from t=0.5.
    # 0..0.5: A alone, 500 B sent.  Then both at 500 B/s: B done at 1.0 (250 B),
    # A has 250 B left at 1.0 and finishes alone at 1.25.
    arr, _ = run_sends(line(("a", "b", 8000.0, 0.0)), [(0.0, "a", "b", 1000), (0.5, "a", "b", 250)])
    assert arr == [pytest.approx(1.25), pytest.approx(1.0)]


def test_flow_limited_elsewhere_leaves_its_share_to_the_others():
    # Two flows share link s->d (capacity 10 units); flow 1 is limited to 2 units by
    # its own first hop, so flow 2 gets 8 (max-min), not 5 (equal split).
    g = line(("x1", "s", 16.0, 0.0), ("x2", "s", 1000.0, 0.0), ("s", "d", 80.0, 0.0))
    env = simpy.Environment()
    net = Network(env, g)
    f1 = Flow(Message("x1", "d", "x", 0, 100, 0), net.route("x1", "d"), 100.0, env.event(), 0.0)
    f2 = Flow(Message("x2", "d", "x", 0, 100, 0), net.route("x2", "d"), 100.0, env.event(), 0.0)
    max_min_rates([f1, f2])
    assert f1.rate_Bps == pytest.approx(2.0)
    assert f2.rate_Bps == pytest.approx(8.0)


def test_parking_lot_textbook_rates():
    # Bertsekas & Gallager parking lot: links L1..L3 of capacity 1; a long flow
    # crosses all three, one short flow per link: every flow gets 1/2.
    links = [Link(f"n{i}", f"n{i+1}", 8.0, 0.0) for i in range(3)]
    ev = simpy.Environment().event()
    long = Flow(Message("n0", "n3", "x", 0, 1, 0), tuple(links), 1.0, ev, 0.0)
    shorts = [Flow(Message(l.src, l.dst, "x", 0, 1, 0), (l,), 1.0, ev, 0.0) for l in links]
    max_min_rates([long, *shorts])
    assert [f.rate_Bps for f in [long, *shorts]] == pytest.approx([0.5] * 4)
    # Make L1 twice as fast: its short flow takes the spare capacity, others unchanged.
    links[0].bandwidth_bps = 16.0
    max_min_rates([long, *shorts])
    assert [f.rate_Bps for f in [long, *shorts]] == pytest.approx([0.5, 1.5, 0.5, 0.5])


def test_star_upload_through_shared_server_nic():
    import numpy as np

    from topologies.spec import LinkSpec
    from topologies.star import StarTopology

    class Net:
        uplink = LinkSpec(bandwidth="1 Gbps", latency="5 ms")
        downlink = LinkSpec(bandwidth="1 Gbps", latency="5 ms")
        server = LinkSpec(bandwidth="1 Gbps")

    n, size = 10, 1_000_000
    g = StarTopology().build(Net, n, np.random.default_rng(0))
    arr, net = run_sends(g, [(0.0, f"w{i}", "server", size) for i in range(n)])
    # Every uplink could carry 1 Gbps but the server NIC (1 Gbps) is shared by 10:
    # each flow runs at 100 Mbps -> 80 ms, plus 5 ms latency.
    for t in arr:
        assert t == pytest.approx(0.005 + n * size * 8 / 1e9)
    nic = net.links[("switch", "server")]
    assert nic.bytes_carried == n * size
    assert nic.busy_s == pytest.approx(n * size * 8 / 1e9)


def test_exact_trace_of_interleaved_sends():
    env = simpy.Environment()
    net = Network(env, line(("a", "b", 8000.0, 0.1)))
    net.trace = True

    def go(start, size, tag):
        yield env.timeout(start)
        yield net.send(Message("a", "b", tag, 0, size, 0))

    env.process(go(0.0, 500, "m0"))
    env.process(go(0.2, 100, "m1"))
    env.run()
    # m0 alone 0..0.2 (200 B), then both at 500 B/s: m1 done at 0.4, m0 has 200 B left
    # -> alone at 1000 B/s -> done at 0.6; +0.1 latency each.
    trace = [(round(s, 9), round(a, 9), m.kind) for s, a, m in net.delivered]
    assert trace == [(0.2, 0.5, "m1"), (0.0, 0.7, "m0")]


@settings(max_examples=60, deadline=None)
@given(st.data())
def test_max_min_properties_on_random_flow_sets(data):
    n_links = data.draw(st.integers(1, 6))
    caps = data.draw(st.lists(st.floats(1.0, 100.0), min_size=n_links, max_size=n_links))
    links = [Link(f"a{i}", f"b{i}", 8 * c, 0.0) for i, c in enumerate(caps)]
    n_flows = data.draw(st.integers(1, 8))
    ev = simpy.Environment().event()
    flows = []
    for _ in range(n_flows):
        idx = data.draw(st.lists(st.integers(0, n_links - 1), min_size=1, max_size=n_links, unique=True))
        flows.append(Flow(Message("a", "b", "x", 0, 1, 0), tuple(links[i] for i in sorted(idx)), 1.0, ev, 0.0))
    max_min_rates(flows)
    load = {l: 0.0 for l in links}
    for f in flows:
        assert f.rate_Bps > 0
        for l in f.path:
            load[l] += f.rate_Bps
            assert f.rate_Bps <= l.bandwidth_bps / 8 * (1 + 1e-9)   # never above any link on its path
    for l in links:
        assert load[l] <= l.bandwidth_bps / 8 * (1 + 1e-9)          # no link over capacity
    # max-min: every flow has a saturated bottleneck on which it has the largest rate
    for f in flows:
        assert any(load[l] >= l.bandwidth_bps / 8 * (1 - 1e-9) and
                   all(g.rate_Bps <= f.rate_Bps * (1 + 1e-9) for g in flows if l in g.path)
                   for l in f.path)


@settings(max_examples=30, deadline=None)
@given(st.lists(st.tuples(st.floats(0.0, 2.0), st.integers(1, 5000)), min_size=1, max_size=8))
def test_bytes_delivered_equal_bytes_sent_and_work_conserving(sends):
    bw = 8000.0  # 1000 B/s
    arr, net = run_sends(line(("a", "b", bw, 0.0)), [(s, "a", "b", b) for s, b in sends])
    assert all(t is not None for t in arr)
    link = net.links[("a", "b")]
    assert link.bytes_carried == sum(b for _, b in sends)
    # one link, work conserving: the last arrival is when a FIFO queue would empty
    t = 0.0
    for s, b in sorted(sends):
        t = max(t, s) + b / 1000.0
    assert max(arr) == pytest.approx(t, rel=1e-9, abs=1e-9)
    assert link.busy_s == pytest.approx(sum(b for _, b in sends) / 1000.0, rel=1e-9, abs=1e-9)


# --- fifo, schedules, down intervals ------------------------------------------
from sim.net.schedule import Schedule, read_trace, with_down_intervals  # noqa: E402


@pytest.mark.parametrize("sharing", ["fair", "fifo"])
def test_lone_message_same_time_in_both_models(sharing):
    g = line(("a", "s", 1e9, 0.001), ("s", "t", 1e8, 0.002), ("t", "b", 5e8, 0.003))
    arr, _ = run_model(g, [(0.25, "a", "b", 125_000)], sharing)
    assert arr[0] == pytest.approx(0.25 + 0.006 + 1e6 / 1e8, rel=1e-12)


def test_fifo_one_link_is_the_sum_of_serialization_times():
    sizes = [1000, 250, 4000, 10]
    arr, net = run_model(line(("a", "b", 8000.0, 0.5)), [(0.0, "a", "b", s) for s in sizes], "fifo")
    t, expect = 0.0, []
    for s in sizes:
        t += s / 1000.0
        expect.append(t + 0.5)
    assert arr == pytest.approx(expect)
    assert net.links[("a", "b")].busy_s == pytest.approx(sum(sizes) / 1000.0)


def test_fifo_pipelines_across_links_instead_of_store_and_forward():
    # two equal links: pipelined = S/B + 2 lat, store-and-forward would be 2 S/B + 2 lat
    g = line(("a", "s", 8000.0, 0.1), ("s", "b", 8000.0, 0.1))
    arr, _ = run_model(g, [(0.0, "a", "b", 1000)], "fifo")
    assert arr[0] == pytest.approx(1.0 + 0.2)
    # a slow first hop: the second link cannot finish before the tail arrives
    g = line(("a", "s", 4000.0, 0.0), ("s", "b", 8000.0, 0.0))
    arr, _ = run_model(g, [(0.0, "a", "b", 1000), (0.0, "a", "b", 1000)], "fifo")
    assert arr == pytest.approx([2.0, 4.0])


def sched_line(schedule, lat=0.0, nominal=8000.0):
    g = nx.DiGraph()
    g.add_edge("a", "b", bandwidth_bps=nominal, latency_s=lat, schedule=schedule)
    return g


@pytest.mark.parametrize("sharing", ["fair", "fifo"])
def test_bandwidth_step_mid_transfer_gives_the_piecewise_answer(sharing):
    # 1000 B/s until t=0.5, then 250 B/s: 1000 B -> 500 B by 0.5, 500 B more take 2 s.
    s = Schedule((0.0, 0.5), (8000.0, 2000.0))
    arr, _ = run_model(sched_line(s, lat=0.01), [(0.0, "a", "b", 1000)], sharing)
    assert arr[0] == pytest.approx(2.5 + 0.01)


@pytest.mark.parametrize("sharing", ["fair", "fifo"])
def test_down_interval_delays_a_transfer_by_exactly_its_length(sharing):
    base, _ = run_model(sched_line(None), [(0.0, "a", "b", 1000)], sharing)
    down = with_down_intervals(None, 8000.0, [(0.3, 0.8)])
    arr, _ = run_model(sched_line(down), [(0.0, "a", "b", 1000)], sharing)
    assert arr[0] == pytest.approx(base[0] + 0.5)


def test_looping_trace_repeats():
    s = Schedule((0.0, 1.0), (8000.0, 0.0), period_s=2.0)  # up 1 s, down 1 s, repeat
    assert [s.rate_at(t) for t in (0.0, 0.5, 1.0, 1.5, 2.0, 3.5, 4.2)] == \
        [8000.0, 8000.0, 0.0, 0.0, 8000.0, 0.0, 8000.0]
    # 2500 B at 1000 B/s while up: 1000 in [0,1), 1000 in [2,3), 500 in [4,4.5)
    assert s.finish_time(0.0, 8 * 2500) == pytest.approx(4.5)
    arr, _ = run_model(sched_line(s), [(0.0, "a", "b", 2500)], "fair")
    assert arr[0] == pytest.approx(4.5)


def test_link_that_never_comes_back_never_delivers():
    s = Schedule((0.0, 0.5), (8000.0, 0.0))
    assert s.finish_time(0.0, 8 * 1000) == float("inf")
    for sharing in ("fair", "fifo"):
        arr, _ = run_model(sched_line(s), [(0.0, "a", "b", 1000)], sharing)
        assert arr == [None]


@pytest.mark.parametrize("bad", [((0.0, 0.0), (1.0, 2.0)), ((0.0, 2.0, 1.0), (1.0, 1.0, 1.0)),
                                 ((1.0,), (1.0,)), ((0.0,), (-1.0,))])
def test_schedule_rejects_bad_points(bad):
    with pytest.raises(ValueError):
        Schedule(*bad)


def test_trace_csv_errors_name_the_line(tmp_path):
    from sim.errors import ConfigError
    p = tmp_path / "t.csv"
    p.write_text("time_s,bandwidth_bps\n0,1e9\n1,5e8\n")
    assert read_trace(p, "f") == ([0.0, 1.0], [1e9, 5e8])
    p.write_text("time_s,bandwidth_bps\n0,1e9\n1,abc\n")
    with pytest.raises(ConfigError, match=r"t.csv:3"):
        read_trace(p, "f")
    p.write_text("time_s,bandwidth_bps\n0,1e9\n0,2e9\n")
    with pytest.raises(ConfigError, match=r"t.csv:3: time_s"):
        read_trace(p, "f")
    with pytest.raises(ConfigError, match="not found"):
        read_trace(tmp_path / "missing.csv", "f")


def test_looping_schedule_never_freezes_time():
    s = Schedule((0.0, 0.0504, 0.1251, 0.3667), (1e6, 0.0, 1e9, 0.0), period_s=1.0)
    t = 0.0
    for _ in range(200):
        nxt = s.next_change(t)
        assert nxt > t
        t = nxt
    assert s.next_change(2.0504) > 2.0504


@pytest.mark.parametrize("nic_bps, varying", [(1e10, False), (1e12, False), (1e10, True)])
def test_many_flows_vectorised_path_equals_max_min_rates(nic_bps, varying):
    """The numpy path (>= 64 active flows) gives bitwise the rates of max_min_rates,
    also while the NIC's bandwidth follows a schedule (the rows keep their own
    copy of each link's capacity, which the schedule must update)."""
    n = 150
    g = nx.DiGraph()
    for i in range(n):
        g.add_edge(f"w{i}", "sw", bandwidth_bps=1e9 * (1 + (i % 7) / 7), latency_s=0.001)
    g.add_edge("sw", "server", bandwidth_bps=nic_bps, latency_s=0.0)
    if varying:     # 10 Gbps, 3 Gbps from 5 ms, 0.7 Gbps from 20 ms, back to 10 Gbps from 60 ms
        g.edges["sw", "server"]["schedule"] = Schedule((0.0, 0.005, 0.02, 0.06), (1e10, 3e9, 7e8, 1e10))
    env = simpy.Environment()
    net = Network(env, g)
    checks = {"max_active": 0, "compared": 0}
    original = net._reschedule

    def checked():
        original()
        flows = net._flows
        checks["max_active"] = max(checks["max_active"], len(flows))
        if getattr(net, "_rem", None) is not None and len(flows):
            rates = list(net._rate)
            fresh = [Flow(f.msg, f.path, 1.0, f.done, 0.0) for f in flows]
            max_min_rates(fresh)
            assert [f.rate_Bps for f in fresh] == rates
            checks["compared"] += 1
    net._reschedule = checked

    def sender(i):
        yield env.timeout(i * 1e-5)
        yield net.send(Message(f"w{i}", "server", "g", 0, 1_000_000 + 1000 * i, 0))

    for i in range(n):
        env.process(sender(i))
    env.run()
    assert checks["max_active"] >= 64 and checks["compared"] > 0
    if varying:
        assert net.links[("sw", "server")].bandwidth_bps == 1e10 and env.now > 0.06
    assert net.links[("sw", "server")].bytes_carried == sum(1_000_000 + 1000 * i for i in range(n))


@settings(max_examples=40, deadline=None)
@given(st.data())
def test_random_small_graphs_conserve_bytes_and_respect_capacity(data):
    """Random connected graphs, random flows between random node pairs, routed by
    the network itself: every message arrives, each link carries exactly the
    bytes of the messages routed over it, and at every rate recomputation no
    link is over capacity and no flow is faster than any link on its path."""
    n_nodes = data.draw(st.integers(2, 6))
    g = nx.DiGraph()
    nodes = [f"n{i}" for i in range(n_nodes)]
    for i in range(1, n_nodes):                         # a random spanning tree, both directions
        j = data.draw(st.integers(0, i - 1))
        bw = data.draw(st.sampled_from([1e3, 8e3, 5e4]))
        lat = data.draw(st.sampled_from([0.0, 0.01]))
        g.add_edge(nodes[i], nodes[j], bandwidth_bps=bw, latency_s=lat)
        g.add_edge(nodes[j], nodes[i], bandwidth_bps=bw, latency_s=lat)
    for _ in range(data.draw(st.integers(0, 3))):     # a few extra edges
        a, b = data.draw(st.sampled_from(nodes)), data.draw(st.sampled_from(nodes))
        if a != b:
            g.add_edge(a, b, bandwidth_bps=data.draw(st.sampled_from([2e3, 1e4])), latency_s=0.0)
    sends = data.draw(st.lists(st.tuples(st.floats(0, 1), st.sampled_from(nodes), st.sampled_from(nodes),
                                         st.integers(1, 2000)), min_size=1, max_size=10))
    sends = [s for s in sends if s[1] != s[2]]
    env = simpy.Environment()
    net = Network(env, g)
    original = net._reschedule

    def checked():
        original()
        flows = net._flows
        rates = list(net._rate) if getattr(net, "_rem", None) is not None else [f.rate_Bps for f in flows]
        load = {}
        for f, r in zip(flows, rates):
            for link in f.path:
                assert r <= link.bandwidth_bps / 8 * (1 + 1e-9)
                load[link] = load.get(link, 0.0) + r
        for link, total in load.items():
            assert total <= link.bandwidth_bps / 8 * (1 + 1e-9)
    net._reschedule = checked
    arrived = []

    def sender(start, src, dst, size):
        yield env.timeout(start)
        yield net.send(Message(src, dst, "x", 0, size, 0))
        arrived.append(size)

    expect = {}
    for start, src, dst, size in sends:
        env.process(sender(start, src, dst, size))
        for link in net.route(src, dst):
            expect[link.name] = expect.get(link.name, 0) + size
    env.run()
    assert sorted(arrived) == sorted(s[3] for s in sends)
    for link in net.links.values():
        assert link.bytes_carried == expect.get(link.name, 0)


def _filling_reference(flows):
    """The progressive filling of max_min_rates without its shortcut (_one_shared_link)."""
    cap, users = {}, {}
    for f in flows:
        for link in f.path:
            cap.setdefault(link, link.bandwidth_bps / 8.0)
            users.setdefault(link, []).append(f)
    count = {link: len(fs) for link, fs in users.items()}
    fixed = set()
    while count:
        link = min(count, key=lambda l: cap[l] / count[l])
        share = max(cap[link] / count[link], 0.0)
        for f in users[link]:
            if id(f) in fixed:
                continue
            fixed.add(id(f))
            f.rate_Bps = share
            for other in f.path:
                cap[other] -= share
                count[other] -= 1
                if count[other] == 0:
                    del count[other]


@given(st.data())
def test_disjoint_paths_shortcut_is_bitwise_the_filling(data):
    """Flows on disjoint paths (no link shared, as on a star's own links) take
    max_min_rates' one-shared-link shortcut (with no shared link); it gives bitwise the rates of the full filling,
    down links (0 bps) and empty paths included."""
    n_flows = data.draw(st.integers(1, 12))
    caps = st.one_of(st.just(0.0), st.floats(1e-3, 1e12, allow_nan=False))
    ev = simpy.Environment().event()
    fast, slow = [], []
    for i in range(n_flows):
        hops = data.draw(st.integers(0, 3))
        links = tuple(Link(f"f{i}h{h}", f"f{i}h{h + 1}", data.draw(caps), 0.0) for h in range(hops))
        for out in (fast, slow):
            out.append(Flow(Message("a", "b", "x", 0, 1, 0), links, 1.0, ev, 0.0, rate_Bps=-1.0))
    max_min_rates(fast)
    _filling_reference(slow)
    assert [f.rate_Bps for f in fast] == [f.rate_Bps for f in slow]
    assert all(f.rate_Bps == -1.0 for f in fast if not f.path)       # an empty path keeps its rate


@settings(max_examples=1500, deadline=None)     # cheap examples; 100 missed a planted stale-entry bug
@given(st.data())
def test_heap_filling_is_bitwise_the_linear_search(data):
    """max_min_rates picks the bottleneck from a heap; on random flow sets with
    shared links, equal capacities (ties go to the link seen first) and down
    links, its rates are bitwise those of the plain O(L) search each step."""
    n_links = data.draw(st.integers(1, 7))
    caps = data.draw(st.lists(st.sampled_from([0.0, 8.0, 16.0, 24.0, 1e9, 3.3e9]) | st.floats(1.0, 1e10),
                              min_size=n_links, max_size=n_links))
    links = [Link(f"a{i}", f"b{i}", c, 0.0) for i, c in enumerate(caps)]
    ev = simpy.Environment().event()
    fast, slow = [], []
    for _ in range(data.draw(st.integers(1, 10))):
        idx = data.draw(st.lists(st.integers(0, n_links - 1), min_size=1, max_size=n_links, unique=True))
        path = tuple(links[i] for i in data.draw(st.permutations(idx)))
        for out in (fast, slow):
            out.append(Flow(Message("a", "b", "x", 0, 1, 0), path, 1.0, ev, 0.0))
    max_min_rates(fast)
    _filling_reference(slow)
    assert [f.rate_Bps for f in fast] == [f.rate_Bps for f in slow]


@settings(max_examples=1500, deadline=None)
@given(st.data())
def test_one_shared_link_shortcut_is_bitwise_the_filling(data):
    """Flows that each cross at most one shared link (a star: own links plus the
    server NIC; up and down NICs give two groups) take max_min_rates' one-shared-
    link shortcut; its rates are bitwise those of the plain filling, with ties
    between own links and the NIC (first-seen wins), down links (0 bps), flows
    with no own link, and the NIC the bottleneck part-way."""
    # Own links of a base bandwidth b and NICs of b times a small integer make the
    # NIC's share tie with an own link's, where the order of the picks decides
    # how the NIC's remaining capacity rounds.
    b = data.draw(st.floats(1.0, 1e10))
    caps = st.sampled_from([b, b, 2 * b, 0.0, 8.0]) | st.floats(1.0, 1e10)
    nic_caps = st.builds(lambda m: b * m, st.integers(1, 6)) | caps
    nics = [Link(f"sw{i}", "srv", data.draw(nic_caps), 0.0) for i in range(data.draw(st.integers(1, 3)))]
    ev = simpy.Environment().event()
    fast, slow = [], []
    for i in range(data.draw(st.integers(2, 8))):
        own = [Link(f"w{i}h{h}", f"w{i}h{h + 1}", data.draw(caps), 0.0) for h in range(data.draw(st.integers(0, 2)))]
        nic = data.draw(st.sampled_from([None, *nics]))
        path = own + ([nic] if nic is not None else [])
        path = tuple(path[k] for k in data.draw(st.permutations(range(len(path)))))
        for out in (fast, slow):
            out.append(Flow(Message("a", "b", "x", 0, 1, 0), path, 1.0, ev, 0.0, rate_Bps=-1.0))
    max_min_rates(fast)
    _filling_reference(slow)
    assert [f.rate_Bps for f in fast] == [f.rate_Bps for f in slow]


def test_one_shared_link_shortcut_takes_the_star():
    """The shortcut is what runs on a star (so the test above checks the code
    that runs), and it leaves a path with two shared links to the filling."""
    import sim.net.network as network
    calls = []
    real = network._one_shared_link

    def spy(*a):
        calls.append(real(*a))
        return calls[-1]
    ev = simpy.Environment().event()
    nic, core = Link("sw", "srv", 8e9, 0.0), Link("core", "sw", 8e9, 0.0)
    star = [Flow(Message("a", "b", "x", 0, 1, 0), (Link(f"w{i}", "sw", 4e9, 0.0), nic), 1.0, ev, 0.0)
            for i in range(3)]
    two = [Flow(Message("a", "b", "x", 0, 1, 0), (core, nic), 1.0, ev, 0.0) for _ in range(2)]
    try:
        network._one_shared_link = spy
        max_min_rates(star)
        max_min_rates(two)
    finally:
        network._one_shared_link = real
    assert calls == [True, False]
    lone = Flow(Message("a", "b", "x", 0, 1, 0), (Link("x", "y", 8.0, 0.0),), 1.0, ev, 0.0, rate_Bps=-1.0)
    mixed = [lone, *two]
    cap = {link: link.bandwidth_bps / 8 for f in mixed for link in f.path}
    count = {core: 2, nic: 2, lone.path[0]: 1}
    assert not real(mixed, cap, count) and lone.rate_Bps == -1.0      # refused: nothing set
    assert [f.rate_Bps for f in star] == [1e9 / 3] * 3          # the NIC's 1 GB/s in three
    assert [f.rate_Bps for f in two] == [5e8, 5e8]


@pytest.mark.parametrize("nic_first", [False, True])
def test_one_shared_link_tie_goes_to_the_link_seen_first(nic_first):
    """A NIC whose share ties exactly with the own links' (1774.6868446989079 / 3
    == 591.5622815663027 B/s): the first flow's own link, seen before the NIC,
    is picked first and the NIC's remaining capacity rounds one way; with the
    NIC seen first it is picked first.  The two orders give different rates."""
    ev = simpy.Environment().event()
    u, cap_s = 591.5622815663027, 1774.6868446989079
    assert cap_s / 3 == u and (cap_s - u) / 2 != u          # a tie whose order shows
    results = []
    for fill in (max_min_rates, _filling_reference):
        nic = Link("sw", "srv", 8 * cap_s, 0.0)
        flows = []
        for i in range(3):
            own = Link(f"w{i}", "sw", 8 * u, 0.0)
            flows.append(Flow(Message("a", "b", "x", 0, 1, 0), (nic, own) if nic_first else (own, nic), 1.0, ev, 0.0))
        fill(flows)
        results.append([f.rate_Bps for f in flows])
    assert results[0] == results[1]
    assert (results[0] == [u] * 3) == nic_first


def test_remembered_filling_is_the_filling_and_forgets_a_changed_bandwidth():
    """Network._fill reuses a filling for the same paths in the same order only
    while every link involved keeps its bandwidth: after a change it gives what
    max_min_rates gives on fresh flows, and a reused filling is bitwise the same."""
    g = line(("x1", "s", 16.0, 0.0), ("x2", "s", 1000.0, 0.0), ("s", "d", 80.0, 0.0))
    env = simpy.Environment()
    net = Network(env, g)

    def flows(order=("x1", "x2")):
        return [Flow(Message(src, "d", "x", 0, 100, 0), net.route(src, "d"), 100.0, env.event(), 0.0)
                for src in order]

    def rates(fs):
        return [f.rate_Bps for f in fs]

    first = flows()
    net._fill(first)
    again = flows()
    net._fill(again)
    assert rates(again) == rates(first) == [2.0, 8.0]
    swapped = flows(("x2", "x1"))               # another order is another key
    net._fill(swapped)
    assert rates(swapped) == [8.0, 2.0]
    net.links[("x1", "s")].bandwidth_bps = 40.0   # x1's own link: 5 B/s, the server link 10 B/s
    changed, fresh = flows(), flows()
    net._fill(changed)
    max_min_rates(fresh)
    assert rates(changed) == rates(fresh) == [5.0, 5.0]
    net.links[("s", "d")].bandwidth_bps = 800.0   # the shared link, touched by both
    changed, fresh = flows(), flows()
    net._fill(changed)
    max_min_rates(fresh)
    assert rates(changed) == rates(fresh) == [5.0, 95.0]


def _arrivals_trace(carry: bool, latencies, actions, stop_at=None):
    """Messages from w_i to s that end at one instant (equal sizes, equal parallel links) and
    arrive after latencies[i]; each arrival's callback logs and then does actions[i]: starts a
    process (an URGENT event due now), schedules a timeout(0), sends a reply, raises, or
    nothing.  ``stop_at``: run until that arrival first, then on.  Returns every logged step."""
    g = nx.DiGraph()
    for i, lat in enumerate(latencies):
        g.add_edge(f"w{i}", "s", bandwidth_bps=8e3, latency_s=lat)
        g.add_edge("s", f"w{i}", bandwidth_bps=8e3, latency_s=lat)
    env = simpy.Environment()
    net = Network(env, g)
    net.carry, net.trace = carry, True
    log = []

    def child(i):
        log.append(("child", i, env.now))
        yield env.timeout(0)
        log.append(("child after", i, env.now))

    def on(i):
        def arrived(ev):
            log.append(("arrive", i, env.now, ev.value.src))
            a = actions[i]
            if a == "process":
                env.process(child(i))
            elif a == "timeout":
                env.timeout(0).callbacks.append(lambda _e: log.append(("timeout", i, env.now)))
            elif a == "send":
                net.send(Message("s", f"w{i}", "x", 0, 10, header_bytes=0)).callbacks.append(
                    lambda _e: log.append(("reply", i, env.now)))
            elif a == "raise":
                raise ValueError(i)
        return arrived

    dones = [net.send(Message(f"w{i}", "s", "x", 0, 1000, header_bytes=0)) for i in range(len(latencies))]
    for i, d in enumerate(dones):
        d.callbacks.append(on(i))
        d.callbacks.append(lambda _e, i=i: log.append(("second callback", i, env.now)))
    if stop_at is not None:
        try:
            env.run(until=dones[stop_at])
            log.append(("stopped", env.now))
        except ValueError as exc:
            log.append(("raised", exc.args[0], env.now))
    while env.peek() < float("inf"):     # on after a raise, or a stop left by the run above
        try:
            env.run()
        except ValueError as exc:
            log.append(("raised", exc.args[0], env.now))
    return log + [("delivered", s, t, m.src, m.dst) for s, t, m in net.delivered]


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_arrivals_at_one_instant_share_an_entry_in_simpys_exact_order(data):
    """Deliveries due at one instant are carried by one queue entry (Network._deliver):
    the trace (every callback, its time, in order) is the one of one SimPy event per delivery,
    also when a callback starts a process (URGENT, due now), schedules more, raises, or is the
    event a run stops at."""
    n = data.draw(st.integers(2, 7))
    latencies = data.draw(st.lists(st.sampled_from([0.0, 0.001, 0.25]), min_size=n, max_size=n))
    actions = data.draw(st.lists(st.sampled_from(["none", "process", "timeout", "send", "raise"]),
                                 min_size=n, max_size=n))
    stop_at = data.draw(st.none() | st.integers(0, n - 1))
    one_each = _arrivals_trace(False, latencies, actions, stop_at)
    assert _arrivals_trace(True, latencies, actions, stop_at) == one_each
    assert sum(1 for e in one_each if e[0] == "arrive") == n


def test_arrivals_at_one_instant_take_one_queue_entry():
    """The saving itself: 4 uploads ending together with one latency cost one queue entry, not
    4 (the trace is checked equal above)."""
    def entries(carry):
        env = simpy.Environment()
        g = nx.DiGraph()
        for i in range(4):
            g.add_edge(f"w{i}", "s", bandwidth_bps=8e3, latency_s=0.01)
        net = Network(env, g)
        net.carry = carry
        for i in range(4):
            net.send(Message(f"w{i}", "s", "x", 0, 1000, header_bytes=0))
        env.run(until=1.0 + 0.001)        # every flow has ended; the deliveries are queued
        return [(t, type(e).__name__) for t, _, _, e in env._queue if t == 1.0 + 0.01]
    assert entries(True) == [(1.01, "Batch")]
    assert entries(False) == [(1.01, "Event")] * 4


def _timeouts_trace(batched: bool, program, until):
    """Run ``program`` (a tree: each node a list of actions taken when its event fires) with
    the timeouts made by sim.net.batch.Timeouts (``batched``) or env.timeout; other events,
    processes (URGENT, due now) and raises are mixed in.  Returns every logged step."""
    from sim.net.batch import Timeouts
    env = simpy.Environment()
    timeouts = Timeouts(env)
    log = []

    def proc(node, name):
        log.append((name, "start", env.now))
        yield env.timeout(0)
        fire(node, name)(None)

    def fire(node, name):
        def cb(_ev):
            log.append((name, env.now))
            for k, (kind, delay, child) in enumerate(node):
                if kind == "timeout":
                    (timeouts.timeout(delay) if batched else env.timeout(delay)).callbacks.append(
                        fire(child, f"{name}.{k}"))
                elif kind == "other":
                    env.timeout(delay).callbacks.append(fire(child, f"{name}.{k}o"))
                elif kind == "process":
                    env.process(proc(child, f"{name}.{k}p"))
                elif kind == "raise":
                    raise ValueError(name)
        return cb

    env.timeout(0).callbacks.append(fire(program, "root"))
    if until is not None:
        try:
            env.run(until=until)
        except ValueError as exc:
            log.append(("raised", exc.args[0], env.now))
        log.append(("stopped", env.now))
    while env.peek() < float("inf"):
        try:
            env.run()
        except ValueError as exc:
            log.append(("raised", exc.args[0], env.now))
    return log


_PROGRAM = st.recursive(
    st.just([]),
    lambda kids: st.lists(st.tuples(st.sampled_from(["timeout", "timeout", "timeout", "other", "process", "raise"]),
                                    st.sampled_from([0.0, 1.0, 2.5]), kids), max_size=4),
    max_leaves=25)


@settings(max_examples=300, deadline=None)
@given(_PROGRAM, st.none() | st.sampled_from([0.0, 1.0, 2.5, 3.0]))
def test_timeouts_sharing_an_entry_fire_in_simpys_exact_order(program, until):
    """Timeouts made one after another for one instant share a queue entry only when nothing
    was scheduled between them; every callback runs at the time and in the order it would
    with one env.timeout each (also around other events, processes starting, raises, stops)."""
    assert _timeouts_trace(True, program, until) == _timeouts_trace(False, program, until)


def test_timeouts_for_one_instant_share_an_entry():
    from sim.net.batch import Timeouts
    env = simpy.Environment()
    timeouts = Timeouts(env)
    for _ in range(3):
        timeouts.timeout(1.0)
    env.timeout(1.0)                 # something else scheduled: the next one starts a new entry
    timeouts.timeout(1.0)
    assert [(t, type(e).__name__, len(getattr(e, "events", ()))) for t, _, _, e in sorted(env._queue)] == \
        [(1.0, "Batch", 3), (1.0, "Timeout", 0), (1.0, "Batch", 1)]
    with pytest.raises(ValueError, match="Negative delay"):
        timeouts.timeout(-1.0)
