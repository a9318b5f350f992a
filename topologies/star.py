"""The star (parameter-server) topology.

    w_i --uplink_i--> switch --server NIC in--> server
    w_i <--downlink_i-- switch <--server NIC out-- server

Each worker has its own uplink and downlink; the server's NIC is one link per
direction (full duplex) shared by every flow to or from the server.
"""
from __future__ import annotations

import networkx as nx

from . import TOPOLOGIES


@TOPOLOGIES.register("star")
def build_star(n: int, uplink, downlink, server) -> nx.DiGraph:
    """uplink/downlink/server: objects with ``bandwidth`` (bit/s) and ``latency`` (s);
    uplink/downlink may be lists of n such objects (per-worker links)."""
    g = nx.DiGraph()
    up = uplink if isinstance(uplink, list) else [uplink] * n
    down = downlink if isinstance(downlink, list) else [downlink] * n
    g.add_edge("switch", "server", bandwidth_bps=server.bandwidth, latency_s=server.latency)
    g.add_edge("server", "switch", bandwidth_bps=server.bandwidth, latency_s=server.latency)
    for i in range(n):
        w = f"w{i}"
        g.add_edge(w, "switch", bandwidth_bps=up[i].bandwidth, latency_s=up[i].latency)
        g.add_edge("switch", w, bandwidth_bps=down[i].bandwidth, latency_s=down[i].latency)
    return g
