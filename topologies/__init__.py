"""Topology registry: ``network.topology`` -> a builder of a networkx DiGraph.

Nodes are ``"server"``, ``"switch"`` and workers ``"w0" .. "w{n-1}"``; every
directed edge carries ``bandwidth_bps`` and ``latency_s``.
"""
from __future__ import annotations

from sim.registry import Registry

TOPOLOGIES: Registry = Registry("topology")

from . import star  # noqa: E402,F401  (registers "star")


def worker_name(i: int) -> str:
    return f"w{i}"


SERVER = "server"
