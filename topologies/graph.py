"""Any topology, given inline in YAML or loaded from a GraphML file.

    topology:
      kind: graph
      edges:
        - {src: w0, dst: sw, bandwidth: 1 Gbps, latency: 1 ms}      # both directions by default
        - {src: sw, dst: server, bandwidth: 10 Gbps, bidirectional: true}
      graphml: my_net.graphml    # or: edges from a file (attributes bandwidth_bps, latency_s)

Workers must be nodes ``w0 .. w{n-1}`` and the server ``server`` (or
``server0 ..`` with ``servers: S``).  Routes are latency-shortest paths.
Validation rejects a graph in which a worker cannot reach a server or a
server cannot reach a worker, naming the worker.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import ClassVar, Literal

import networkx as nx
import numpy as np
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr

from sim.errors import ConfigError
from sim.study.inputs import SHA256_PATTERN, local_path, pin

from . import TOPOLOGIES, worker_name
from .spec import LinkSpec, link_attrs
from .star import server_names


class EdgeSpec(LinkSpec):
    src: str
    dst: str
    bidirectional: bool = True


@TOPOLOGIES.register("graph")
class GraphTopology(BaseModel):
    model_config = ConfigDict(extra="forbid", defer_build=True)
    kind: Literal["graph"] = "graph"
    nodes: list[str] | None = Field(None, description="optional: the node names edges may use")
    edges: list[EdgeSpec] = Field(default_factory=list)
    graphml: str | None = Field(None, description="GraphML file; edge attributes bandwidth_bps and latency_s")
    graphml_sha256: str | None = Field(None, pattern=SHA256_PATTERN,
                                       description="the file's SHA-256 (a run writes it; a changed file is refused)")
    servers: int = Field(1, ge=1)
    collective: ClassVar[str] = "ps"
    _base: Path = PrivateAttr(Path("."))

    def server_names(self) -> list[str]:
        return server_names(self.servers)

    def load_files(self, base: Path) -> None:
        """Pin the GraphML file (absolute path and hash, sim/study/inputs.py) and read the edges' traces."""
        self._base = base
        if self.graphml is not None:
            path, digest = pin(self.graphml, base, self.graphml_sha256, "network.topology.graphml", "GraphML file")
            self.graphml, self.graphml_sha256 = str(path), digest
        for i, e in enumerate(self.edges):
            e.load_trace(base, f"network.topology.edges.{i}.trace")

    def _graphml(self) -> nx.DiGraph:
        path = Path(self.graphml)
        if not path.is_absolute():   # load_files made it absolute; a topology built in code may not have
            path = self._base / path
        if not local_path(path).is_file():
            raise ConfigError(f"GraphML file {str(path)!r} not found", field="network.topology.graphml")
        try:
            src = nx.read_graphml(local_path(path))
        except Exception as exc:  # networkx raises several types for bad XML
            culprit = _bad_number(local_path(path))
            raise ConfigError(culprit or f"{path}: not a readable GraphML file ({exc})",
                              field="network.topology.graphml") from None
        g = nx.DiGraph()
        edges = list(src.edges(data=True))
        for u, v, data in edges:
            values = {}
            for key in ("bandwidth_bps", "latency_s"):
                if key not in data:
                    raise ConfigError(f"{path}: edge {u}->{v} has no {key} attribute",
                                      field="network.topology.graphml")
                try:
                    values[key] = float(data[key])
                except (TypeError, ValueError):
                    raise ConfigError(f"{path}: edge {u}->{v}: {key} is {data[key]!r}, not a number; allowed: "
                                      f"a number in {'bit/s' if key == 'bandwidth_bps' else 'seconds'}",
                                      field="network.topology.graphml") from None
            bw, lat = values["bandwidth_bps"], values["latency_s"]
            if not (bw > 0 and math.isfinite(bw)) or not (lat >= 0 and math.isfinite(lat)):
                raise ConfigError(f"{path}: edge {u}->{v} needs bandwidth_bps > 0 and latency_s >= 0 (finite), "
                                  f"got bandwidth_bps={bw!r}, latency_s={lat!r}",
                                  field="network.topology.graphml")
            g.add_edge(str(u), str(v), **link_attrs(bw, lat, None))
            if not src.is_directed():
                g.add_edge(str(v), str(u), **link_attrs(bw, lat, None))
        return g

    def build(self, net, n: int, rng: np.random.Generator) -> nx.DiGraph:
        g = self._graphml() if self.graphml else nx.DiGraph()
        if self.nodes is not None:
            g.add_nodes_from(self.nodes)
        for i, e in enumerate(self.edges):
            field = f"network.topology.edges.{i}"
            if self.nodes is not None:
                for end in (e.src, e.dst):
                    if end not in self.nodes:
                        raise ConfigError(f"unknown node {end!r}; allowed: the nodes listed in "
                                          f"network.topology.nodes", field=field)
            bw = e.nominal(1, rng, field)[0]
            lat = e.latencies(1, rng, field)[0]
            attrs = link_attrs(bw, lat, e.make_schedule(bw))
            g.add_edge(e.src, e.dst, **attrs)
            if e.bidirectional:
                g.add_edge(e.dst, e.src, **attrs)
        check_reachable(g, n, self.server_names(), "network.topology")
        return g


def _bad_number(path: Path) -> str | None:
    """The first edge attribute declared numeric whose value is not a number
    (networkx's reader fails on it without naming the edge), or None."""
    import xml.etree.ElementTree as ET
    try:
        root = ET.parse(path).getroot()
    except (ET.ParseError, OSError, UnicodeError):
        return None
    ns = root.tag[: root.tag.index("}") + 1] if root.tag.startswith("{") else ""
    numeric = {k.get("id"): (k.get("attr.name"), k.get("attr.type")) for k in root.iter(f"{ns}key")
               if k.get("attr.type") in ("int", "long", "float", "double")}
    for edge in root.iter(f"{ns}edge"):
        for data in edge.iter(f"{ns}data"):
            if data.get("key") in numeric:
                name, typ = numeric[data.get("key")]
                try:
                    float(data.text or "")
                except ValueError:
                    return (f"{path}: edge {edge.get('source')}->{edge.get('target')}: {name} is {data.text!r}, "
                            f"not a number (declared {typ}); allowed: a number")
    return None


def check_reachable(g: nx.DiGraph, n: int, servers: list[str], field: str) -> None:
    """Every worker must reach every server and back; errors name the node."""
    for node in [worker_name(i) for i in range(n)] + servers:
        if node not in g:
            raise ConfigError(f"node {node!r} is not in the graph (workers are w0..w{n - 1}, "
                              f"servers {', '.join(servers)})", field=field)
    for s in servers:
        for i in range(n):
            w = worker_name(i)
            if not nx.has_path(g, w, s):
                raise ConfigError(f"worker {w} cannot reach {s}", field=field)
            if not nx.has_path(g, s, w):
                raise ConfigError(f"{s} cannot reach worker {w}", field=field)
