"""Communication graphs and mixing matrices (topologies/gossip.py, issue 14 groundwork):
sizes and degrees, doubly stochastic Metropolis-Hastings weights, push-sum columns,
consensus contracting at the rate the spectral gap predicts, disconnected graphs refused."""
from __future__ import annotations

import numpy as np
import pytest

from topologies import gossip as G

GRAPHS = {
    "ring": lambda: G.ring(8),
    "torus": lambda: G.torus(3, 4),
    "hypercube": lambda: G.hypercube(4),
    "complete": lambda: G.complete(6),
    "random_regular": lambda: G.random_regular(10, 3, seed=1),
    "erdos_renyi": lambda: G.erdos_renyi(12, 0.5, seed=2),
}


def test_sizes_and_degrees():
    assert {d for _, d in G.ring(8).degree()} == {2}
    assert G.torus(3, 4).number_of_nodes() == 12 and {d for _, d in G.torus(3, 4).degree()} == {4}
    assert G.hypercube(4).number_of_nodes() == 16 and {d for _, d in G.hypercube(4).degree()} == {4}
    assert G.complete(6).number_of_edges() == 15
    assert {d for _, d in G.random_regular(10, 3, seed=1).degree()} == {3}
    e = G.exponential(8)                          # i -> i + 1, 2, 4
    assert sorted(e.successors(0)) == [1, 2, 4] and all(e.out_degree(i) == 3 for i in range(8))
    assert G.random_regular(10, 3, seed=1).edges() == G.random_regular(10, 3, seed=1).edges()   # seeded


@pytest.mark.parametrize("name", list(GRAPHS))
def test_metropolis_hastings_is_doubly_stochastic_with_a_positive_gap(name):
    g = GRAPHS[name]()
    w = G.metropolis_hastings(g)
    G.check_doubly_stochastic(w)
    np.testing.assert_allclose(w, w.T)
    assert 0 < G.spectral_gap(w) <= 1
    assert all(w[i, j] > 0 for i, j in g.edges())


def test_uniform_weights_of_a_complete_graph_average_in_one_step():
    w = G.uniform(G.complete(5))
    np.testing.assert_allclose(w, np.full((5, 5), 0.2))
    assert G.spectral_gap(w) == pytest.approx(1.0)


def test_uniform_weights_on_an_irregular_graph_are_refused_by_the_check():
    import networkx as nx
    star = nx.star_graph(4)                        # the hub has degree 4, the leaves 1
    with pytest.raises(G.GraphError, match="not doubly stochastic"):
        G.check_doubly_stochastic(G.uniform(star))
    G.check_doubly_stochastic(G.metropolis_hastings(star))


def test_push_sum_columns_sum_to_one_and_keep_the_total_mass():
    p = G.push_sum(G.exponential(8))
    np.testing.assert_allclose(p.sum(axis=0), 1.0)
    x = np.arange(8.0)
    for _ in range(5):
        x = p @ x
    assert x.sum() == pytest.approx(28.0)


def test_consensus_contracts_at_the_rate_of_the_spectral_gap():
    """x <- W x keeps the mean and shrinks the deviation by |lambda_2| per step
    (asymptotically exact for a start along the second eigenvector)."""
    w = G.metropolis_hastings(G.ring(10))
    vals, vecs = np.linalg.eigh(w)
    v2 = vecs[:, np.argsort(-np.abs(vals))[1]]
    x = 3.0 + v2
    lam = 1 - G.spectral_gap(w)
    for t in range(1, 30):
        x = w @ x
        np.testing.assert_allclose(np.linalg.norm(x - x.mean()), lam ** t * np.linalg.norm(v2), rtol=1e-9)
    assert x.mean() == pytest.approx(3.0)


def test_a_disconnected_graph_is_refused_naming_the_components():
    with pytest.raises(G.GraphError, match=r"disconnected: \d+ components \(\{0"):
        G.erdos_renyi(12, 0.05, seed=0)
    with pytest.raises(G.GraphError, match="no 3-regular graph on 7 nodes"):
        G.random_regular(7, 3, seed=0)
