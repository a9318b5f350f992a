"""A unidirectional ring of workers for all-reduce algorithms.

    w_0 -> w_1 -> ... -> w_{n-1} -> w_0,   link w_i -> w_{i+1} from network.uplink

A round is a ring all-reduce (reduce-scatter, then all-gather: 2(n-1) steps of
S/n bytes, Patarasuk & Yuan 2009) when the algorithm's messages can be summed
in transit, and an all-gather of every worker's message otherwise (n-1 steps,
each worker forwarding the message it just received).  There is no server.
"""
from __future__ import annotations

from typing import ClassVar, Literal

import networkx as nx
import numpy as np
from pydantic import BaseModel, ConfigDict

from . import TOPOLOGIES, worker_name
from .spec import link_attrs


@TOPOLOGIES.register("ring")
class RingTopology(BaseModel):
    model_config = ConfigDict(extra="forbid", defer_build=True)
    kind: Literal["ring"] = "ring"
    collective: ClassVar[str] = "ring"

    def server_names(self) -> list[str]:
        return []

    def build(self, net, n: int, rng: np.random.Generator) -> nx.DiGraph:
        g = nx.DiGraph()
        g.add_nodes_from(worker_name(i) for i in range(n))
        bw = net.uplink.nominal(n, rng, "network.uplink")
        lat = net.uplink.latencies(n, rng, "network.uplink")
        if n > 1:
            for i in range(n):
                g.add_edge(worker_name(i), worker_name((i + 1) % n),
                           **link_attrs(bw[i], lat[i], net.uplink.make_schedule(bw[i])))
        return g
