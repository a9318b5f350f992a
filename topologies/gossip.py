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
