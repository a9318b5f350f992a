"""Topology registry: ``network.topology`` -> a config class whose ``build``
returns a networkx DiGraph.

Workers are nodes ``"w0" .. "w{n-1}"``; parameter servers are ``"server"``
(or ``"server0" ..`` when sharded); every directed edge carries
``bandwidth_bps``, ``latency_s`` and optionally a bandwidth ``schedule``.
``collective`` says how a round moves gradients: ``"ps"`` (upload to the
servers, broadcast back) or ``"ring"`` (ring all-reduce / all-gather).
"""
from __future__ import annotations

from sim.registry import Registry

TOPOLOGIES: Registry = Registry("topology")


def worker_name(i: int) -> str:
    return f"w{i}"


from . import graph, hierarchical, ring, star  # noqa: E402,F401  (register the topologies)
