"""The synchronous round in chunks of workers under a memory budget
(sim/learn/chunked.py, issue 15 goal 6): the same results, bit for bit, as
the unchunked round; the budget arithmetic; the refusals."""
from __future__ import annotations

import pytest
import torch

import algorithms
import sim.engine as engine
from algorithms.ps import REDUCE_ROWS, fold_rows, mean_over_arrived
from sim import conformance
from sim.errors import ConfigError
from sim.learn import chunked
from sim.learn.chunked import Plan, bounds, make_plan

ALGS = [
    {"name": "sgd", "kind": "sgd", "lr": 0.1},
    {"name": "topk-ef", "kind": "topk_ef_sgd", "lr": 0.1, "ratio": 0.1},
    {"name": "comp-ams", "kind": "comp_ams", "lr": 0.01, "compressor": {"kind": "qsgd", "s": 4}},
    {"name": "qadam", "kind": "qadam", "lr": 0.01},                   # LocalAdam: two state leaves per worker
    {"name": "dist-ef", "kind": "dist_ef_sgd", "lr": 0.1},            # local momentum + two-way compression
]
PATCH = {"workers": 20, "data.partition": {"kind": "iid"}, "model": {"kind": "mlp", "hidden": [16]}}


def world(**extra):
    return conformance.short_world({**PATCH, **extra})


def config(entry):
    return algorithms.ALGORITHMS[entry["kind"]](**{k: v for k, v in entry.items() if k != "kind"})


def spy(monkeypatch, name: str) -> list:
    """Replace engine.<name> by a wrapper that keeps every object it makes."""
    made, real = [], getattr(engine, name)

    def keep(*a, **k):
        made.append(real(*a, **k))
        return made[-1]
    monkeypatch.setattr(engine, name, keep)
    return made


def run(w, entry, rows, monkeypatch):
    """run_algorithm with the plan forced to ``rows`` workers per chunk (None: unchunked)."""
    real = engine.plan_round

    def forced(world_, alg, theta):
        plan, leaves = real(world_, alg, theta)
        return Plan(rows, 0, 0, 0, "forced by the test"), leaves
    monkeypatch.setattr(engine, "plan_round", forced)
    made, trainers = spy(monkeypatch, "ChunkedRound"), spy(monkeypatch, "Trainer")
    result = engine.run_algorithm(w, config(entry))
    monkeypatch.undo()
    result.trainer = trainers[0]              # its final theta and state
    return result, made


def worker_state(trainer) -> dict[str, torch.Tensor]:
    """The per-worker state rows at the end of a run, float32."""
    state = trainer.state if trainer.chunked is None else trainer.chunked.full_state()
    return {k: v.float() for k, v in chunked.state_rows(state).items()}


@pytest.mark.parametrize("entry", ALGS, ids=[a["name"] for a in ALGS])
def test_chunks_give_the_unchunked_results_bit_for_bit(entry, monkeypatch):
    w = world()
    whole, none = run(w, entry, None, monkeypatch)
    assert none == []                                           # unchunked: the classic path
    parts, made = run(w, entry, 8, monkeypatch)
    assert [ch.chunks() for ch in made] == [[(0, 8), (8, 20)]]  # 8 + 12: the last 4 merged into a chunk of 12
    assert parts.rows == whole.rows and len(whole.rows) >= 2
    # the metrics are float32 sums that an ulp of theta may leave unchanged: theta and the state, bit for bit
    assert torch.equal(parts.trainer.theta, whole.trainer.theta)
    a, b = worker_state(parts.trainer), worker_state(whole.trainer)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_bfloat16_state_is_the_same_in_one_chunk_or_many_and_differs_from_float32(monkeypatch):
    entry = ALGS[1]
    w16 = world(**{"compute.state_dtype": "bfloat16"})
    one, made1 = run(w16, entry, None, monkeypatch)             # bfloat16: always the chunked path, one chunk
    many, made2 = run(w16, entry, 8, monkeypatch)
    assert made1[0].chunks() == [(0, 20)] and made2[0].chunks() == [(0, 8), (8, 20)]
    assert made1[0].store["error"].dtype == torch.bfloat16
    assert one.rows == many.rows and torch.equal(one.trainer.theta, many.trainer.theta)
    assert torch.equal(worker_state(one.trainer)["error"], worker_state(many.trainer)["error"])
    f32, _ = run(world(), entry, None, monkeypatch)
    assert not torch.equal(one.trainer.theta, f32.trainer.theta)
    assert torch.equal(worker_state(one.trainer)["error"].bfloat16().float(), worker_state(one.trainer)["error"])


def test_a_budget_that_binds_chunks_the_round_and_keeps_the_results():
    """The real plan, from compute.memory_budget: big enough for chunks of 8, not for the whole round."""
    w = world()
    alg = config(ALGS[1]).build(engine.Context(d=w.model.d, n=w.n, blocks=w.model.blocks, device=w.device))
    theta = w.model.init_params(0)
    d, n = w.model.d, w.n
    act = chunked.activation_bytes(w.model, theta, w.x_train[:8], w.y_train[:8])
    row = 4 * d * chunked.ROUND_ROWS + act
    payload = chunked.payload_bytes(alg, d, w.device)
    assert payload == 12 * round(0.1 * d)          # top-k 10% as held: a float32 value and an int64 index per entry
    budget = 4 * d * chunked.SERVER_VECTORS + 4 * d * n + payload * n + 9 * row   # state, payloads, 9 rows
    scn = w.scenario.model_copy(update={"compute": w.scenario.compute.model_copy(
        update={"memory_budget": float(budget)})})
    plan = make_plan(scn, alg, d, n, w.device, act, 1, payload)
    assert plan.rows == 8                          # 9 rows fit; chunks are whole blocks of REDUCE_ROWS
    scn7 = scn.model_copy(update={"compute": scn.compute.model_copy(update={"memory_budget": float(budget - 2 * row)})})
    with pytest.raises(ConfigError, match="in chunks of 8 workers"):
        make_plan(scn7, alg, d, n, w.device, act, 1, payload)   # 7 rows: less than one block
    w2 = world(**{"compute.memory_budget": float(budget)})
    tr = engine.Trainer(w2, config(ALGS[1]))
    assert tr.chunked is not None and tr.chunked.chunks() == [(0, 8), (8, 20)]
    assert engine.run_algorithm(w2, config(ALGS[1])).rows == engine.run_algorithm(w, config(ALGS[1])).rows


def test_a_budget_below_one_chunk_is_refused_with_the_figures():
    with pytest.raises(ConfigError, match=r"need at least .* GiB in chunks of 8 workers.*allowed: memory_budget >="):
        engine.Trainer(world(**{"compute.memory_budget": "20 kB"}), config(ALGS[1]))


def test_an_algorithm_that_cannot_run_in_chunks_is_refused_when_it_would_need_to():
    cfg = algorithms.ALGORITHMS["signsgd_mv"](name="p", lr=0.01)
    with pytest.raises(ConfigError, match="cannot run in chunks") as err:
        engine.Trainer(world(**{"compute.memory_budget": "20 kB"}), cfg)
    assert err.value.field == "compute.memory_budget"
    with pytest.raises(ConfigError, match="bfloat16"):
        engine.Trainer(world(**{"compute.state_dtype": "bfloat16"}), cfg)
    assert engine.Trainer(world(**{"compute.memory_budget": "8 GiB"}), cfg).chunked is None   # fits: unchanged


def test_chunks_start_on_blocks_and_no_chunk_is_smaller_than_the_threads(monkeypatch):
    assert bounds(20, 8) == [(0, 8), (8, 20)]
    assert bounds(24, 8) == [(0, 8), (8, 16), (16, 24)]
    assert bounds(33, 16) == [(0, 16), (16, 33)]
    monkeypatch.setattr(torch, "get_num_threads", lambda: 16)
    assert chunked.min_rows(100) == 16 and bounds(40, 16) == [(0, 16), (16, 40)]
    assert all(a % REDUCE_ROWS == 0 for a, _ in bounds(1000, 64))


def test_the_fold_is_the_same_in_chunks_and_means_over_the_arrived_workers():
    x = torch.randn(21, 37, generator=torch.Generator().manual_seed(3))
    arrived = torch.ones(21, dtype=torch.bool)
    arrived[[2, 9, 20]] = False
    whole = fold_rows(x, arrived, None)
    acc = None
    for a, b in ((0, 8), (8, 16), (16, 21)):
        acc = fold_rows(x[a:b], arrived[a:b], acc, start=a)
    assert torch.equal(acc, whole)
    ref = x[arrived].double().sum(0) / 18
    assert torch.allclose(mean_over_arrived(x, arrived).double(), ref, atol=1e-6)
    assert torch.equal(mean_over_arrived(x, torch.zeros(21, dtype=torch.bool)), torch.zeros(37))
    with pytest.raises(AssertionError, match="block boundary"):
        fold_rows(x[3:8], None, None, start=3)


@pytest.mark.parametrize("kind,extra", [("async_sgd", {}), ("dpsgd", {})])
def test_the_event_driven_and_gossip_engines_refuse_a_budget(kind, extra):
    cfg = algorithms.ALGORITHMS[kind](name="x", lr=0.1, **extra)
    for patch in ({"compute.memory_budget": "8 GiB"}, {"compute.state_dtype": "bfloat16"}):
        with pytest.raises(ConfigError, match="synchronous round only") as err:
            engine.run_algorithm(world(**patch), cfg)
        assert err.value.field == "compute.memory_budget"
