"""The star (parameter-server) topology, optionally with S sharded servers.

    w_i --uplink_i--> switch --NIC in of server j--> server j
    w_i <--downlink_i-- switch <--NIC out of server j-- server j

Each worker has its own uplink and downlink; each server's NIC is one link per
direction (full duplex), shared by every flow to or from that server.  With
``servers: S`` the parameters are split into S contiguous slices and every
worker sends each server its slice (as in BytePS).
"""
from __future__ import annotations

from typing import ClassVar, Literal

import networkx as nx
import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from . import TOPOLOGIES, worker_name
from .spec import link_attrs


def server_names(s: int) -> list[str]:
    return ["server"] if s == 1 else [f"server{j}" for j in range(s)]


def add_worker_links(g: nx.DiGraph, net, n: int, rng: np.random.Generator, hub) -> None:
    """uplink_i: w_i -> hub(i); downlink_i: hub(i) -> w_i, per-worker values."""
    up_bw = net.uplink.nominal(n, rng, "network.uplink")
    up_lat = net.uplink.latencies(n, rng, "network.uplink")
    down_bw = net.downlink.nominal(n, rng, "network.downlink")
    down_lat = net.downlink.latencies(n, rng, "network.downlink")
    for i in range(n):
        w, h = worker_name(i), hub(i)
        g.add_edge(w, h, **link_attrs(up_bw[i], up_lat[i], net.uplink.make_schedule(up_bw[i])))
        g.add_edge(h, w, **link_attrs(down_bw[i], down_lat[i], net.downlink.make_schedule(down_bw[i])))


def add_servers(g: nx.DiGraph, net, names: list[str], rng: np.random.Generator, at: str) -> None:
    s = len(names)
    bw = net.server.nominal(s, rng, "network.server")
    lat = net.server.latencies(s, rng, "network.server")
    for j, name in enumerate(names):
        sched = net.server.make_schedule(bw[j])
        g.add_edge(at, name, **link_attrs(bw[j], lat[j], sched))
        g.add_edge(name, at, **link_attrs(bw[j], lat[j], sched))


@TOPOLOGIES.register("star")
class StarTopology(BaseModel):
    model_config = ConfigDict(extra="forbid", defer_build=True)
    kind: Literal["star"] = "star"
    servers: int = Field(1, ge=1, description="shard the parameters over this many servers")
    collective: ClassVar[str] = "ps"

    def server_names(self) -> list[str]:
        return server_names(self.servers)

    def build(self, net, n: int, rng: np.random.Generator) -> nx.DiGraph:
        g = nx.DiGraph()
        add_worker_links(g, net, n, rng, lambda i: "switch")
        add_servers(g, net, self.server_names(), rng, "switch")
        return g
