"""Racks of workers behind top-of-rack switches, joined by a core switch.

    w_i --uplink--> tor_k --rack uplink--> core --server NIC--> server
    (and the reverse for the downlink)

Workers are put in racks of ``rack_size`` in index order.  A rack's uplink to
the core carries ``rack_size * uplink bandwidth / oversubscription`` (the
oversubscription ratio: host-facing capacity over core-facing capacity, e.g.
4 for a 4:1 oversubscribed rack), using the mean of the rack's worker uplinks
when they differ.
"""
from __future__ import annotations

from typing import ClassVar, Literal

import networkx as nx
import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from sim.unitfields import Duration

from . import TOPOLOGIES
from .spec import link_attrs
from .star import add_servers, add_worker_links, server_names


@TOPOLOGIES.register("hierarchical")
class HierarchicalTopology(BaseModel):
    model_config = ConfigDict(extra="forbid", defer_build=True)
    kind: Literal["hierarchical"] = "hierarchical"
    rack_size: int = Field(ge=1, description="workers per rack")
    oversubscription: float = Field(1.0, gt=0, description="host-facing over core-facing bandwidth of a rack")
    core_latency: Duration = Field(0.0, description="one-way latency of a rack's link to the core")
    servers: int = Field(1, ge=1)
    collective: ClassVar[str] = "ps"

    def server_names(self) -> list[str]:
        return server_names(self.servers)

    def build(self, net, n: int, rng: np.random.Generator) -> nx.DiGraph:
        g = nx.DiGraph()
        add_worker_links(g, net, n, rng, lambda i: f"tor{i // self.rack_size}")
        for k in range(-(-n // self.rack_size)):
            members = range(k * self.rack_size, min(n, (k + 1) * self.rack_size))
            up = [g.edges[f"w{i}", f"tor{k}"]["bandwidth_bps"] for i in members]
            down = [g.edges[f"tor{k}", f"w{i}"]["bandwidth_bps"] for i in members]
            # capacity of a full rack (rack_size hosts) over the oversubscription ratio
            g.add_edge(f"tor{k}", "core", **link_attrs(
                self.rack_size * float(np.mean(up)) / self.oversubscription, self.core_latency, None))
            g.add_edge("core", f"tor{k}", **link_attrs(
                self.rack_size * float(np.mean(down)) / self.oversubscription, self.core_latency, None))
        add_servers(g, net, self.server_names(), rng, "core")
        return g
