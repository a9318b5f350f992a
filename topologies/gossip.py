"""Communication graphs and mixing matrices for decentralized training (issue 14 groundwork).

A *communication graph* says who averages with whom (logical edges between
workers ``0 .. n-1``); the physical network (topologies/*.py) says how those
messages travel.  Generators, all deterministic given ``seed``:

    ring(n)                 i ~ i +- 1 (mod n)
    torus(rows, cols)       2-D torus, 4 neighbours (rows, cols >= 3; n = rows cols)
    hypercube(dim)          n = 2^dim, i ~ i xor 2^k
    complete(n)             everyone
    random_regular(n, d)    networkx random d-regular graph (seeded)
    erdos_renyi(n, p)       G(n, p) (seeded); refused when disconnected
    exponential(n)          directed: i -> i + 2^k (mod n), k = 0 .. floor(log2(n - 1))
                            (Assran et al., ICML 2019, "Stochastic Gradient Push", Sec. 5)

Mixing matrices W (n x n, row i = the weights worker i gives its neighbours
and itself):

    metropolis_hastings(G)  W_ij = 1 / (1 + max(deg_i, deg_j)) for an edge,
                            W_ii = 1 - sum_j W_ij (Xiao & Boyd 2004; symmetric,
                            so doubly stochastic)
    uniform(G)              W_ij = 1 / (deg_i + 1) on i's closed neighbourhood
                            (doubly stochastic for regular graphs; for directed
                            graphs the column-stochastic push-sum weights of SGP
                            use out-degrees, see ``push_sum``)
    push_sum(G)             column-stochastic P_ji = 1 / (outdeg_i + 1) for
                            i -> j and i itself (Assran et al. 2019, Alg. 1)

``spectral_gap(W)`` = 1 - |lambda_2(W)|, the second-largest eigenvalue
modulus; consensus error contracts by |lambda_2| per mixing step, i.e.
(1 - gap)^t after t steps (the test checks it on a noise-free quadratic).
``check_doubly_stochastic`` raises when rows or columns do not sum to 1
within 1e-9, or when a weight is negative.
"""
from __future__ import annotations

import math

import networkx as nx
import numpy as np

TOL = 1e-9


class GraphError(ValueError):
    """A communication graph that cannot be used (disconnected, wrong size)."""


def _undirected(n: int, edges) -> nx.Graph:
    g = nx.Graph()
    g.add_nodes_from(range(n))
    g.add_edges_from(edges)
    return g


def ring(n: int) -> nx.Graph:
    if n < 2:
        raise GraphError(f"a ring needs at least 2 workers, got {n}")
    return _undirected(n, [(i, (i + 1) % n) for i in range(n)])


def torus(rows: int, cols: int) -> nx.Graph:
    if rows < 3 or cols < 3:
        raise GraphError(f"a 2-D torus needs rows, cols >= 3 (4 distinct neighbours), got {rows} x {cols}")
    idx = lambda r, c: (r % rows) * cols + (c % cols)  # noqa: E731
    return _undirected(rows * cols, [(idx(r, c), idx(r, c + 1)) for r in range(rows) for c in range(cols)] +
                       [(idx(r, c), idx(r + 1, c)) for r in range(rows) for c in range(cols)])


def hypercube(dim: int) -> nx.Graph:
    n = 2 ** dim
    return _undirected(n, [(i, i ^ (1 << k)) for i in range(n) for k in range(dim) if i < i ^ (1 << k)])


def complete(n: int) -> nx.Graph:
    return _undirected(n, [(i, j) for i in range(n) for j in range(i + 1, n)])


def random_regular(n: int, d: int, seed: int) -> nx.Graph:
    if (n * d) % 2 or d >= n:
        raise GraphError(f"no {d}-regular graph on {n} nodes (n d must be even and d < n)")
    g = nx.random_regular_graph(d, n, seed=int(seed))
    return connected(_undirected(n, g.edges()), f"random {d}-regular graph (seed {seed})")


def erdos_renyi(n: int, p: float, seed: int) -> nx.Graph:
    g = nx.gnp_random_graph(n, p, seed=int(seed))
    return connected(_undirected(n, g.edges()), f"Erdos-Renyi G({n}, {p}) (seed {seed})")


def exponential(n: int) -> nx.DiGraph:
    g = nx.DiGraph()
    g.add_nodes_from(range(n))
    if n > 1:
        for i in range(n):
            for k in range(int(math.floor(math.log2(n - 1))) + 1):
                j = (i + 2 ** k) % n
                if j != i:
                    g.add_edge(i, j)
    return g


def connected(g: nx.Graph | nx.DiGraph, what: str) -> nx.Graph | nx.DiGraph:
    """``g`` itself, or GraphError naming the components."""
    parts = list(nx.weakly_connected_components(g) if g.is_directed() else nx.connected_components(g))
    if len(parts) > 1:
        shown = "; ".join("{" + ", ".join(map(str, sorted(c)[:8])) + (", ..." if len(c) > 8 else "") + "}"
                          for c in sorted(parts, key=min)[:4])
        raise GraphError(f"{what} is disconnected: {len(parts)} components ({shown}); gossip could never "
                         "reach consensus")
    return g


def metropolis_hastings(g: nx.Graph) -> np.ndarray:
    n = g.number_of_nodes()
    deg = dict(g.degree())
    w = np.zeros((n, n))
    for i, j in g.edges():
        w[i, j] = w[j, i] = 1.0 / (1.0 + max(deg[i], deg[j]))
    w[np.diag_indices(n)] = 1.0 - w.sum(axis=1)
    return w


def _spread(n: int, neighbours) -> np.ndarray:
    """Row i: weight 1 / (|N(i)| + 1) on i and each of ``neighbours(i)``."""
    w = np.zeros((n, n))
    for i in range(n):
        nb = [i, *neighbours(i)]
        w[i, nb] = 1.0 / len(nb)
    return w


def uniform(g: nx.Graph) -> np.ndarray:
    return _spread(g.number_of_nodes(), g.neighbors)


def push_sum(g: nx.DiGraph) -> np.ndarray:
    """Column-stochastic P: column i spreads worker i's mass over itself and its out-neighbours."""
    return _spread(g.number_of_nodes(), g.successors).T


def check_doubly_stochastic(w: np.ndarray, what: str = "mixing matrix") -> None:
    if (w < -TOL).any():
        raise GraphError(f"{what} has negative weights")
    rows, cols = w.sum(axis=1), w.sum(axis=0)
    if not (np.allclose(rows, 1.0, atol=TOL) and np.allclose(cols, 1.0, atol=TOL)):
        bad = int(np.argmax(np.maximum(abs(rows - 1), abs(cols - 1))))
        raise GraphError(f"{what} is not doubly stochastic: row {bad} sums to {rows[bad]:.12g}, column "
                         f"{bad} to {cols[bad]:.12g} (use metropolis_hastings for irregular graphs)")


def spectral_gap(w: np.ndarray) -> float:
    """1 - |lambda_2|: the second-largest eigenvalue modulus of W."""
    ev = np.sort(np.abs(np.linalg.eigvals(w)))[::-1]
    return float(1.0 - ev[1]) if len(ev) > 1 else 1.0


# --- the ``graph:`` setting of a decentralized algorithm ------------------------------
import warnings  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Literal  # noqa: E402

import torch  # noqa: E402
from pydantic import BaseModel, ConfigDict, Field, model_validator  # noqa: E402

from sim.study.inputs import local_path  # noqa: E402

GRAPH_KINDS = ("ring", "torus", "hypercube", "complete", "random_regular", "erdos_renyi", "exponential", "graphml")


class GossipGraph(BaseModel):
    """Who exchanges with whom (the logical graph over workers ``0 .. n-1``)::

        graph: {kind: ring}
        graph: {kind: torus, rows: 4}            # rows x (n / rows); default: the squarest split
        graph: {kind: random_regular, degree: 4, seed: 1}
        graph: {kind: erdos_renyi, p: 0.2, seed: 1}
        graph: {kind: exponential}               # directed, i -> i + 2^k (Assran et al. 2019)
        graph: {kind: graphml, file: comm.graphml}   # nodes 0 .. n-1 or w0 .. w{n-1}

    The messages of an edge travel over the physical network's route between
    the two workers (``network.topology``), sharing its links with every
    other flow.  A seeded generator uses ``seed`` (default: the scenario seed)."""

    model_config = ConfigDict(extra="forbid", defer_build=True)
    kind: Literal["ring", "torus", "hypercube", "complete", "random_regular", "erdos_renyi", "exponential",
                  "graphml"] = "ring"
    rows: int | None = Field(None, ge=3, description="torus: rows (n must be a multiple)")
    degree: int | None = Field(None, ge=1, description="random_regular: the degree")
    p: float | None = Field(None, gt=0, le=1, description="erdos_renyi: the edge probability")
    seed: int | None = Field(None, description="random graphs: the seed (default: the scenario seed)")
    file: str | None = Field(None, description="graphml: the file (relative to the scenario's folder)")

    @model_validator(mode="after")
    def _needs(self) -> "GossipGraph":
        need = {"random_regular": "degree", "erdos_renyi": "p", "graphml": "file"}.get(self.kind)
        if need and getattr(self, need) is None:
            raise ValueError(f"graph kind {self.kind} needs `{need}`")
        return self

    def build(self, n: int, seed: int, base: Path = Path(".")) -> nx.Graph | nx.DiGraph:
        """The graph on nodes 0 .. n-1; GraphError (a ValueError) when it cannot be built or is disconnected."""
        s = seed if self.seed is None else self.seed
        if self.kind == "ring":
            g = ring(n)
        elif self.kind == "torus":
            rows = self.rows or next(r for r in range(int(math.isqrt(n)), 0, -1) if n % r == 0)
            if n % rows:
                raise GraphError(f"torus rows = {rows} does not divide workers = {n}")
            g = torus(rows, n // rows)
        elif self.kind == "hypercube":
            dim = n.bit_length() - 1
            if 2 ** dim != n:
                raise GraphError(f"a hypercube needs a power of 2 workers, got {n}")
            g = hypercube(dim)
        elif self.kind == "complete":
            g = complete(n)
        elif self.kind == "random_regular":
            g = random_regular(n, int(self.degree), s)
        elif self.kind == "erdos_renyi":
            g = erdos_renyi(n, float(self.p), s)
        elif self.kind == "exponential":
            g = exponential(n)
        else:
            g = read_graphml(local_path(base / str(self.file)), n)   # a Ray node reads the copy it received
        return connected(g, f"the {self.kind} communication graph")

    def describe(self) -> str:
        extra = {"torus": self.rows, "random_regular": self.degree, "erdos_renyi": self.p}.get(self.kind)
        return self.kind if extra is None else f"{self.kind}({extra})"


def read_graphml(path: Path, n: int) -> nx.Graph | nx.DiGraph:
    """A communication graph from GraphML: nodes ``0 .. n-1`` or ``w0 .. w{n-1}``."""
    try:
        raw = nx.read_graphml(path)
    except FileNotFoundError:
        raise GraphError(f"graph file {path} does not exist") from None
    except Exception as exc:  # noqa: BLE001 - networkx raises many kinds for a malformed file
        raise GraphError(f"graph file {path} is not valid GraphML: {exc}") from None
    names = {str(v): int(str(v).removeprefix("w")) if str(v).removeprefix("w").isdigit() else None for v in raw}
    bad = sorted(v for v, i in names.items() if i is None or not 0 <= i < n)
    if bad or len(names) != n:
        raise GraphError(f"graph file {path}: nodes must be 0 .. {n - 1} or w0 .. w{n - 1} (workers = {n}); "
                         f"got {len(names)} nodes" + (f", bad names {bad[:5]}" if bad else ""))
    g = nx.DiGraph() if raw.is_directed() else nx.Graph()
    g.add_nodes_from(range(n))
    g.add_edges_from((names[str(u)], names[str(v)]) for u, v in raw.edges() if u != v)
    return g


def symmetric(g: nx.Graph | nx.DiGraph) -> nx.Graph:
    """The undirected graph of ``g`` (a directed edge becomes an edge both ways)."""
    return g.to_undirected() if g.is_directed() else g


def mixing_matrix(g: nx.Graph, rule: str) -> np.ndarray:
    """W for a symmetric gossip rule, checked doubly stochastic."""
    w = metropolis_hastings(g) if rule == "metropolis_hastings" else uniform(g)
    check_doubly_stochastic(w, f"the {rule} mixing matrix")
    return w


def sparse_rows(w: np.ndarray, device: torch.device, dense_from: float = 1 / 8) -> torch.Tensor:
    """W as a float32 tensor [n, n] for the mixing step ``W @ X`` (X [n, d]), one
    matmul a round.  A CSR sparse matrix, whose cost is (edges + n) d, when at
    most ``dense_from`` of its entries are non-zero; a dense one otherwise.  Why
    the threshold (measured at n = 64, d = 407,050 on the 2-core development
    machine, bench/bench_gossip.py, docs/performance-history.md): torch's CSR @ dense
    kernel is memory-bound at about 4 passes over X for a ring (27 ms against
    40 ms for the dense GEMM) but slower than the GEMM from about 1/8 non-zeros
    on (the symmetrized exponential graph, 19%: 55 ms against 38 ms; the
    complete graph: 266 ms against 40 ms).  Both give the same sums up to float
    rounding."""
    dense = torch.tensor(w, dtype=torch.float32)
    if np.count_nonzero(w) > dense_from * w.size:
        return dense.to(device)
    with warnings.catch_warnings():     # "sparse CSR support is in beta": CSR @ dense is what we use
        warnings.simplefilter("ignore", UserWarning)
        return dense.to_sparse_csr().to(device)
