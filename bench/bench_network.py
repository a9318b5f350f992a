"""Network benchmark (issue 3): host cost of the flow-level network model.

A network-only run (no gradients): n workers on the star topology each upload
one gradient message to the server through the server's shared NIC, and once
all have arrived the server sends every worker a message back (the
broadcast).  That is one round, 2 n messages.  Links: uplinks and downlinks
1 Gbps / 5 ms, server NIC 10 Gbps / 0 s each way (``--nic-gbps``); every
message carries the dense float32 gradient of the 407,050-parameter MLP
(1,628,200 B) plus the 64 B header.

Two variants of the upload:

  sync       every worker sends at the start of the round: n flows start at
             one instant (one rate recomputation for all of them)
  staggered  worker i sends after a compute time of i * 10 us: n starts at n
             instants, each while up to n flows are active (n recomputations
             of n rates: the hard case for ``fair``)

Three simulators of the same messages:

  fair      sim.net.network.Network(env, graph, "fair")  (max-min fluid sharing)
  fifo      sim.net.network.Network(env, graph, "fifo")  (pipelined, one message
            at a time per link)
  baseline  plain SimPy: one process per message, holding a
            simpy.Resource(capacity=1) per link in turn (store and forward:
            uplink then NIC, NIC then downlink) for size * 8 / bandwidth;
            no latency (it would only add events, i.e. make it slower)

All three are driven by the same light harness (no process of its own per
message): uploads start at the round's start (sync) or from a timeout
callback (staggered), a delivery callback counts arrivals, and the last
upload starts the broadcast.

Each configuration runs in one environment: a warm-up round (it also
computes and caches the 2 n routes; reported as "cold"), then at least
``--repeats`` timed rounds, and more until they add up to ``--min-time``
host seconds.  Reported per round: host seconds (perf_counter around
env.run; median and minimum), CPU seconds of this process (process_time;
median, less disturbed by other load on the machine), messages per host
second (2 n / median host s), and the simulated upload and round times,
each checked against an independent reference (relative error <= 1e-9):

  fair      k active flows each get min(bw_up, bw_nic / k) (all uplinks are
            equal, so all active flows drain at one pace and finish in
            start order); sync: upload = 5 ms + 8 S / min(bw_up, bw_nic / n)
  fifo      the NIC takes message heads in arrival order, and a message
            leaves it no earlier than its tail has crossed the uplink; sync:
            upload = 5 ms + max(8 S / bw_up - 8 S / bw_nic, 0) + n 8 S / bw_nic
  baseline  store and forward; sync: upload = 8 S / bw_up + n 8 S / bw_nic

The broadcast (n messages leave the server at one instant) is the mirror
image of the sync upload.

    .venv/bin/python bench/bench_network.py [--workers 1 10 100 1000]
        [--variants sync staggered] [--repeats 5] [--min-time 0.2]
        [--nic-gbps 10] [--json OUT]
"""
from __future__ import annotations

import _report
from _machine import cpu_model  # bench/_machine.py (scripts run from bench/)

import argparse
import json
import math
import os
import platform
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import simpy  # noqa: E402

from sim.net.network import Network  # noqa: E402
from sim.net.wire import HEADER_BYTES, Message  # noqa: E402
from topologies import TOPOLOGIES  # noqa: E402

PAYLOAD_BYTES = 407_050 * 4          # dense float32 gradient of the MLP 784-512-10
NBYTES = PAYLOAD_BYTES + HEADER_BYTES
STAGGER_S = 10e-6                     # staggered: worker i sends at i * 10 us
TARGET_N = 1000                       # the targets are at 1000 workers:
TARGET_FAIR_S = 0.5                   #   a fair round under 0.5 s host time
TARGET_FIFO_X = 2.0                   #   fifo at least 2x the baseline's messages/s
REL_TOL = 1e-9                        # simulated times vs their references
MAX_ROUNDS = 2000                     # timed rounds per configuration, at most
MODELS = ("fair", "fifo", "baseline")


@dataclass(frozen=True)
class LinkSpec:
    """A constant link: ``bandwidth`` in bit/s, ``latency`` in s.  Also offers the
    per-worker interface of a scenario's link spec (nominal/latencies/
    make_schedule), so the star builder can take it in either calling style."""

    bandwidth: float
    latency: float

    def nominal(self, n, rng=None, field=""):
        return [self.bandwidth] * n

    def latencies(self, n, rng=None, field=""):
        return [self.latency] * n

    def make_schedule(self, nominal_bps):
        return None


@dataclass(frozen=True)
class Setup:
    """The links of the benchmark (``network:`` section in miniature)."""

    uplink: LinkSpec
    downlink: LinkSpec
    server: LinkSpec

    @property
    def t_up(self) -> float:   # one message alone on an uplink (= on a downlink)
        return 8.0 * NBYTES / self.uplink.bandwidth

    @property
    def t_nic(self) -> float:  # one message alone on the NIC
        return 8.0 * NBYTES / self.server.bandwidth

    @property
    def lat(self) -> float:    # path latency, either way
        return self.uplink.latency + self.server.latency


def make_setup(nic_gbps: float) -> Setup:
    return Setup(uplink=LinkSpec(1e9, 5e-3), downlink=LinkSpec(1e9, 5e-3), server=LinkSpec(nic_gbps * 1e9, 0.0))


def star_graph(n: int, setup: Setup):
    """The star topology from the registry: ``TOPOLOGIES["star"](n, uplink,
    downlink, server)``, or, where "star" is a config class, its ``build``."""
    star = TOPOLOGIES["star"]
    if hasattr(star, "build"):
        g = star().build(setup, n, np.random.default_rng(0))
    else:
        g = star(n, setup.uplink, setup.downlink, setup.server)
    # the references below assume exactly this graph
    expect = [("switch", "server", setup.server), ("server", "switch", setup.server)]
    expect += [(f"w{i}", "switch", setup.uplink) for i in range(n)]
    expect += [("switch", f"w{i}", setup.downlink) for i in range(n)]
    assert g.number_of_edges() == len(expect), g.number_of_edges()
    for u, v, spec in expect:
        d = g.edges[u, v]
        assert (d["bandwidth_bps"], d["latency_s"]) == (spec.bandwidth, spec.latency), (u, v, d)
        assert d.get("schedule") is None, (u, v, d)
    return g


# --- one round of each simulator ------------------------------------------------
def one_round(env: simpy.Environment, upload, broadcast, n: int, stagger_s: float) -> tuple[float, float, float, float]:
    """Run one round; return (host s, CPU s, simulated upload s, simulated round s).

    ``upload(i)`` / ``broadcast(i)`` start message i (worker i -> server /
    server -> worker i) and return the event that fires on its delivery."""
    t0 = env.now
    finished = env.event()
    state = {"left": n, "upload_s": None}

    def broadcast_done(_ev) -> None:
        state["left"] -= 1
        if state["left"] == 0:
            finished.succeed()

    def upload_done(_ev) -> None:
        state["left"] -= 1
        if state["left"] == 0:
            state["upload_s"] = env.now - t0
            state["left"] = n
            for i in range(n):
                broadcast(i).callbacks.append(broadcast_done)

    def start(i: int) -> None:
        upload(i).callbacks.append(upload_done)

    h0, c0 = time.perf_counter(), time.process_time()
    for i in range(n):
        if stagger_s:
            env.timeout(i * stagger_s).callbacks.append(lambda _ev, i=i: start(i))
        else:
            start(i)
    env.run(until=finished)
    host, cpu = time.perf_counter() - h0, time.process_time() - c0
    return host, cpu, state["upload_s"], env.now - t0


class NetworkRound:
    """sim.net.network.Network (fair or fifo), one environment for all rounds."""

    def __init__(self, n: int, sharing: str, setup: Setup) -> None:
        self.n = n
        self.env = simpy.Environment()
        self.net = Network(self.env, star_graph(n, setup), sharing)
        self.workers = [f"w{i}" for i in range(n)]

    def run(self, r: int, stagger_s: float):
        send, w = self.net.send, self.workers
        return one_round(self.env,
                         lambda i: send(Message(w[i], "server", "grad", r, PAYLOAD_BYTES)),
                         lambda i: send(Message("server", w[i], "params", r, PAYLOAD_BYTES)),
                         self.n, stagger_s)


class BaselineRound:
    """Plain SimPy: one process per message, a Resource(capacity=1) per link,
    held for size * 8 / bandwidth, link after link (store and forward)."""

    def __init__(self, n: int, setup: Setup) -> None:
        self.n = n
        self.env = env = simpy.Environment()
        up, down, nic = setup.uplink.bandwidth, setup.downlink.bandwidth, setup.server.bandwidth
        nic_in, nic_out = simpy.Resource(env, capacity=1), simpy.Resource(env, capacity=1)
        self.up_paths = [((simpy.Resource(env, capacity=1), up), (nic_in, nic)) for _ in range(n)]
        self.down_paths = [((nic_out, nic), (simpy.Resource(env, capacity=1), down)) for _ in range(n)]

    def run(self, r: int, stagger_s: float):
        env = self.env
        bits = 8.0 * NBYTES

        def message(path):
            for res, bw in path:
                with res.request() as req:
                    yield req
                    yield env.timeout(bits / bw)

        return one_round(env,
                         lambda i: env.process(message(self.up_paths[i])),
                         lambda i: env.process(message(self.down_paths[i])),
                         self.n, stagger_s)


# --- references for the simulated times ------------------------------------------
def ref_fair_upload(s: list[float], setup: Setup) -> float:
    """Last arrival of n equal flows on the star, flow i starting at s[i] (sorted).

    Every active flow crosses its own uplink and the shared NIC, and all uplinks
    are equal, so the k active flows all get min(bw_up, bw_nic / k) and drain at
    one pace: flow i is done when W(t), the bytes each active flow has drained
    since 0, reaches W(s_i) + S.  Flows therefore finish in start order."""
    S, n = float(NBYTES), len(s)
    t, W, k = 0.0, 0.0, 0
    w_start = [0.0] * n
    nxt_start = nxt_end = 0
    last = 0.0
    while nxt_end < n:
        rate = min(setup.uplink.bandwidth, setup.server.bandwidth / k) / 8.0 if k else 0.0
        t_end = t + (w_start[nxt_end] + S - W) / rate if k else math.inf
        t_start = s[nxt_start] if nxt_start < n else math.inf
        if t_start <= t_end:
            W += rate * (t_start - t)
            t = t_start
            w_start[nxt_start] = W
            nxt_start += 1
            k += 1
        else:
            W = w_start[nxt_end] + S
            t = last = t_end
            nxt_end += 1
            k -= 1
    return last + setup.lat


def ref_fifo_upload(s: list[float], setup: Setup) -> float:
    """Pipelined fifo: the NIC takes heads in arrival order (s_i + uplink
    latency) and a message leaves it no earlier than its tail has crossed the
    uplink."""
    free = 0.0
    for si in sorted(s):
        begin = max(si + setup.uplink.latency, free)
        free = max(begin + setup.t_nic, si + setup.t_up + setup.uplink.latency)
    return free + setup.server.latency


def ref_baseline_upload(s: list[float], setup: Setup) -> float:
    """Store and forward: the NIC takes whole messages in uplink-finish order."""
    free = 0.0
    for si in sorted(s):
        free = max(si + setup.t_up, free) + setup.t_nic
    return free


REFERENCES = {"fair": ref_fair_upload, "fifo": ref_fifo_upload, "baseline": ref_baseline_upload}


def reference(model: str, n: int, stagger_s: float, setup: Setup) -> tuple[float, float]:
    """(upload, round) simulated seconds; the broadcast mirrors the sync upload."""
    f = REFERENCES[model]
    up = f([i * stagger_s for i in range(n)], setup)
    return up, up + f([0.0] * n, setup)


def closed_form_sync(model: str, n: int, setup: Setup) -> float:
    """The sync upload in closed form (a check on the references)."""
    if model == "fair":
        return setup.lat + 8.0 * NBYTES / min(setup.uplink.bandwidth, setup.server.bandwidth / n)
    if model == "fifo":
        return setup.lat + max(setup.t_up - setup.t_nic, 0.0) + n * setup.t_nic
    return setup.t_up + n * setup.t_nic


# --- driver ---------------------------------------------------------------------
def bench_one(model: str, n: int, variant: str, setup: Setup, repeats: int, min_time_s: float) -> dict:
    sim = BaselineRound(n, setup) if model == "baseline" else NetworkRound(n, model, setup)
    stagger_s = STAGGER_S if variant == "staggered" else 0.0
    cold, _, up, rnd = sim.run(0, stagger_s)            # warm-up: routes are computed here
    hosts, cpus, ups, rounds = [], [], [up], [rnd]
    while len(hosts) < repeats or (sum(hosts) < min_time_s and len(hosts) < MAX_ROUNDS):
        h, c, up, rnd = sim.run(len(hosts) + 1, stagger_s)
        hosts.append(h)
        cpus.append(c)
        ups.append(up)
        rounds.append(rnd)
    ref_up, ref_round = reference(model, n, stagger_s, setup)
    err = max(max(abs(u - ref_up) for u in ups) / ref_up, max(abs(x - ref_round) for x in rounds) / ref_round)
    med = statistics.median(hosts)
    return {
        "model": model, "n": n, "variant": variant, "messages": 2 * n, "rounds_timed": len(hosts),
        "host_s_median": med, "host_s_min": min(hosts), "cpu_s_median": statistics.median(cpus),
        "host_s_cold": cold, "msgs_per_s": 2 * n / med,
        "sim_upload_s": ups[0], "sim_round_s": rounds[0],
        "ref_upload_s": ref_up, "ref_round_s": ref_round, "sim_rel_err": err, "sim_ok": err <= REL_TOL,
    }


def machine_info() -> dict:
    cpu = cpu_model()
    try:
        load = [round(v, 2) for v in os.getloadavg()]
    except OSError:
        load = None
    return {"cpu": cpu, "nproc": os.cpu_count(), "python": platform.python_version(),
            "simpy": simpy.__version__, "numpy": np.__version__, "platform": platform.platform(),
            "loadavg": load}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 10, 100, 1000])
    ap.add_argument("--variants", nargs="+", default=["sync", "staggered"], choices=["sync", "staggered"])
    ap.add_argument("--repeats", type=int, default=5,
                    help="timed rounds per configuration, at least (after one warm-up round)")
    ap.add_argument("--min-time", type=float, default=0.2,
                    help=f"and more rounds (up to {MAX_ROUNDS}) until they took this many host seconds")
    ap.add_argument("--nic-gbps", type=float, default=10.0, help="server NIC bandwidth, Gbit/s each way")
    ap.add_argument("--json", type=Path, help="write all figures here")
    args = ap.parse_args(argv)
    setup = make_setup(args.nic_gbps)
    load_before = os.getloadavg()

    for model in MODELS:                  # the references agree with the closed forms
        for n in args.workers:
            cf, ref = closed_form_sync(model, n, setup), reference(model, n, 0.0, setup)[0]
            assert abs(cf - ref) <= REL_TOL * cf, (model, n, cf, ref)

    info = machine_info()
    print(f"# {info['cpu']}, {info['nproc']} CPUs, Python {info['python']}, SimPy {info['simpy']}, "
          f"numpy {info['numpy']}, load {info['loadavg']}")
    print(f"# star, uplinks/downlinks 1 Gbps 5 ms, NIC {args.nic_gbps:g} Gbps; {NBYTES} B per message, "
          f"2 n per round; per round: median over >= {args.repeats} rounds and >= {args.min_time} s")
    print(f"{'variant':9} {'n':>5} {'model':8} {'host s':>10} {'min':>10} {'cpu s':>10} {'cold s':>8} "
          f"{'msgs/s':>9} {'sim round s':>12} {'check':>6}")
    rows = []
    for variant in args.variants:
        for n in args.workers:
            for model in MODELS:
                row = bench_one(model, n, variant, setup, args.repeats, args.min_time)
                rows.append(row)
                print(f"{variant:9} {n:5d} {model:8} {row['host_s_median']:10.6f} {row['host_s_min']:10.6f} "
                      f"{row['cpu_s_median']:10.6f} {row['host_s_cold']:8.3f} {row['msgs_per_s']:9.0f} "
                      f"{row['sim_round_s']:12.6f} {'ok' if row['sim_ok'] else 'WRONG':>6}", flush=True)

    def get(model, n, variant):
        return next(r for r in rows if (r["model"], r["n"], r["variant"]) == (model, n, variant))

    print(f"\n{'variant':9} {'n':>5}  fifo/baseline msgs/s")
    for variant in args.variants:
        for n in args.workers:
            print(f"{variant:9} {n:5d}  {get('fifo', n, variant)['msgs_per_s'] / get('baseline', n, variant)['msgs_per_s']:.2f}x")
    targets = []
    if TARGET_N in args.workers:
        for variant in args.variants:
            fair = get("fair", TARGET_N, variant)["host_s_median"]
            targets.append({"target": f"fair, {TARGET_N} workers, {variant}: host s per round < {TARGET_FAIR_S}",
                            "value": fair, "met": fair < TARGET_FAIR_S})
        for variant in args.variants:
            x = get("fifo", TARGET_N, variant)["msgs_per_s"] / get("baseline", TARGET_N, variant)["msgs_per_s"]
            targets.append({"target": f"fifo, {TARGET_N} workers, {variant}: msgs/s >= {TARGET_FIFO_X}x baseline",
                            "value": x, "met": x >= TARGET_FIFO_X})
        print()
        for t in targets:
            print(f"{'met   ' if t['met'] else 'MISSED'}  {t['target']}: {t['value']:.3f}")
    ok = all(r["sim_ok"] for r in rows)
    if not ok:
        print("simulated times disagree with their references", file=sys.stderr)
    if args.json:
        goals = []
        if TARGET_N in args.workers:
            for variant in args.variants:
                goals.append(_report.goal(f"fair, {TARGET_N} workers, {variant}: host s per round",
                                          get("fair", TARGET_N, variant)["host_s_median"], "<=", TARGET_FAIR_S, " s"))
            for variant in args.variants:
                goals.append(_report.goal(f"fifo, {TARGET_N} workers, {variant}: messages per s over the baseline",
                                          get("fifo", TARGET_N, variant)["msgs_per_s"] /
                                          get("baseline", TARGET_N, variant)["msgs_per_s"], ">=", TARGET_FIFO_X))
        _report.write("network", {"info": info, "args": {k: (str(v) if isinstance(v, Path) else v)
                                                          for k, v in vars(args).items()},
                                  "nbytes": NBYTES, "rows": rows}, path=args.json, load_before=load_before,
                      title="Network model: host cost of a round (issue 3)",
                      command="cd bench && ../.venv/bin/python bench_network.py --workers "
                              f"{' '.join(map(str, args.workers))} --repeats {args.repeats} --nic-gbps "
                              f"{args.nic_gbps:g} --json results/network.json",
                      about=f"Host time of one parameter-server round (n uploads of {NBYTES:,} B, then n "
                            f"downloads) on a star with 1 Gbps / 5 ms links and a {args.nic_gbps:g} Gbps server NIC, "
                            "through sim/net/network.py with max-min fair sharing (`fair`) and store-and-forward "
                            "queues (`fifo`), and through `baseline`, a plain SimPy model with one Resource per "
                            "link. `sync`: every upload starts at once; `staggered`: worker i starts at i x 1 ms. "
                            "Median per round over the timed rounds; `cold` is the first round (routing). Every "
                            "simulated round is checked against its closed-form reference (`check`).",
                      tables=[_report.table("", ["variant", "n", "model", "host ms per round", "min ms",
                                                 "cold ms", "messages / s", "simulated round s", "check"],
                                            [[r["variant"], r["n"], r["model"], f"{1e3 * r['host_s_median']:.3f}",
                                              f"{1e3 * r['host_s_min']:.3f}", f"{1e3 * r['host_s_cold']:.1f}",
                                              f"{r['msgs_per_s']:,.0f}", f"{r['sim_round_s']:.6f}",
                                              "ok" if r["sim_ok"] else "WRONG"] for r in rows])],
                      goals=goals)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
