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


def run(w, entry, rows, monkeypatch, store="device"):
    """run_algorithm with the plan forced to ``rows`` workers per chunk (None:
    unchunked) and the state in ``store``; result.state: the per-worker state
    rows at the end, float32 (read before a disk store is removed)."""
    real = engine.plan_round

    def forced(world_, alg, theta):
        plan, leaves = real(world_, alg, theta)
        return Plan(rows, 0, 0, 0, "forced by the test", store=store), leaves
    monkeypatch.setattr(engine, "plan_round", forced)
    made, trainers = spy(monkeypatch, "ChunkedRound"), spy(monkeypatch, "Trainer")
    kept, close = {}, chunked.ChunkedRound.close

    def closing(self):
        kept.update(worker_state(trainers[0]))
        close(self)
    monkeypatch.setattr(chunked.ChunkedRound, "close", closing)
    result = engine.run_algorithm(w, config(entry))
    monkeypatch.undo()
    result.trainer = trainers[0]              # its final theta and state
    result.state = kept if made else worker_state(trainers[0])
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
    a, b = parts.state, whole.state
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_bfloat16_state_is_the_same_in_one_chunk_or_many_and_differs_from_float32(monkeypatch):
    entry = ALGS[1]
    w16 = world(**{"compute.state_dtype": "bfloat16"})
    one, made1 = run(w16, entry, None, monkeypatch)             # bfloat16: always the chunked path, one chunk
    many, made2 = run(w16, entry, 8, monkeypatch)
    assert made1[0].chunks() == [(0, 20)] and made2[0].chunks() == [(0, 8), (8, 20)]
    assert made1[0].store["error"].rows.dtype == torch.bfloat16
    assert one.rows == many.rows and torch.equal(one.trainer.theta, many.trainer.theta)
    assert torch.equal(one.state["error"], many.state["error"])
    f32, _ = run(world(), entry, None, monkeypatch)
    assert not torch.equal(one.trainer.theta, f32.trainer.theta)
    assert torch.equal(one.state["error"].bfloat16().float(), one.state["error"])


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
    for patch in ({"compute.memory_budget": "8 GiB"}, {"compute.state_dtype": "bfloat16"},
                  {"compute.state_store": "disk"}):
        with pytest.raises(ConfigError, match="synchronous round only") as err:
            engine.run_algorithm(world(**patch), cfg)
        assert err.value.field == "compute.memory_budget"


# ---- where the state lives: compute.state_store (sim/learn/rowstore.py) ----

STORE_ALGS = [ALGS[1], ALGS[3], ALGS[4]]      # top-k EF (error), qadam (two leaves), dist-ef (two-way)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("store", ["host", "disk"])
@pytest.mark.parametrize("entry", STORE_ALGS, ids=[a["name"] for a in STORE_ALGS])
def test_every_store_gives_the_device_store_results_bit_for_bit(entry, store, dtype, monkeypatch, tmp_path):
    """On this CPU the host store is a second tensor copied chunk by chunk (the
    GPU's pinned path is the same code with pin_memory); disk goes through files."""
    ref, _ = run(world(**{"compute.state_dtype": dtype}), entry, 8, monkeypatch)
    at = {"compute.state_store": "disk", "compute.state_dir": str(tmp_path)} if store == "disk" else {}
    got, made = run(world(**{"compute.state_dtype": dtype, **at}), entry, 8, monkeypatch, store=store)
    assert [ch.where for ch in made] == [store]
    assert {type(v).__name__ for v in made[0].store.values()} == {"HostRows" if store == "host" else "DiskRows"}
    assert got.rows == ref.rows and torch.equal(got.trainer.theta, ref.trainer.theta)
    assert got.state.keys() == ref.state.keys() and all(torch.equal(got.state[k], ref.state[k]) for k in ref.state)
    assert list(tmp_path.iterdir()) == []          # the disk store's folder is gone with the run


def test_the_disk_store_holds_the_rows_in_files_and_the_uploads_in_a_spill(monkeypatch, tmp_path):
    w = world(**{"compute.state_store": "disk", "compute.state_dir": str(tmp_path)})
    seen = []
    real_aggregate = chunked.ChunkedRound.aggregate

    def look(self, theta, arrived, t):         # during the run, before the server decodes
        files = sorted(p.name for p in tmp_path.glob("commsim-state-*/*"))
        sizes = {p.name: p.stat().st_size for p in tmp_path.glob("commsim-state-*/*")}
        seen.append((files, sizes, [type(k).__name__ for _, _, k in self.payloads]))
        return real_aggregate(self, theta, arrived, t)
    monkeypatch.setattr(chunked.ChunkedRound, "aggregate", look)
    res, made = run(w, ALGS[1], 8, monkeypatch, store="disk")
    files, sizes, kinds = seen[0]
    d = w.model.d
    assert files == ["error.rows", "uploads.bin"]
    assert sizes["error.rows"] == 20 * d * 4          # n rows of itemsize * d
    k = round(0.1 * d)
    assert sizes["uploads.bin"] == 20 * k * (4 + 8)   # top-k: a float32 value and an int64 index per entry
    assert kinds == ["tuple", "tuple"]                 # the kept payloads are places in the spill, not tensors
    assert all(s == seen[0][1] for _, s, _ in seen)    # each round starts the spill again at byte 0


def test_the_row_files_read_back_every_bit_in_pieces(monkeypatch, tmp_path):
    from sim.learn import rowstore
    monkeypatch.setattr(rowstore, "_IO_MAX", 7)        # every read and write in pieces of 7 bytes
    g = torch.Generator().manual_seed(1)
    template = torch.randn(1, 5, 3, generator=g)
    for dtype in (torch.float32, torch.bfloat16):
        rows = rowstore.DiskRows(template, 11, dtype, torch.device("cpu"), str(tmp_path), f"x{dtype}")
        assert torch.equal(rows.all(), template.to(dtype).float().expand(11, 5, 3))   # written, not sparse
        new = torch.randn(4, 5, 3, generator=g)
        rows.write(3, 7, new)
        got = rows.all()
        assert torch.equal(got[3:7], new.to(dtype).float()) and torch.equal(got[7:], template.to(dtype).float()
                                                                            .expand(4, 5, 3))
        rows.close()
    zeros = rowstore.DiskRows(torch.zeros(1, 9), 6, torch.float32, torch.device("cpu"), str(tmp_path), "z")
    assert torch.equal(zeros.all(), torch.zeros(6, 9)) and (tmp_path / "z.rows").stat().st_size == 6 * 9 * 4
    spill = rowstore.Spill(str(tmp_path), torch.device("cpu"))
    parts = {"v": torch.randn(3, 4, generator=g).bfloat16(), "i": torch.arange(12).reshape(3, 4),
             "m": torch.tensor([True, False, True]), "s": torch.randn(3, generator=g)[::2]}   # non-contiguous too
    where = spill.put(parts)
    back = spill.take(where)
    assert back.keys() == parts.keys() and all(torch.equal(back[k], parts[k]) and back[k].dtype == parts[k].dtype
                                               for k in parts)
    with pytest.raises(OSError, match="short read"):
        rowstore.read_into(spill.fd, torch.empty(100), spill.end)        # past the end of the file


def test_the_plan_puts_the_state_on_disk_only_when_asked_and_counts_what_stays(tmp_path, monkeypatch):
    w = world()
    alg = config(ALGS[1]).build(engine.Context(d=w.model.d, n=w.n, blocks=w.model.blocks, device=w.device))
    d, n = w.model.d, w.n
    act = chunked.activation_bytes(w.model, w.model.init_params(0), w.x_train[:8], w.y_train[:8])
    payload = chunked.payload_bytes(alg, d, w.device)
    row = 4 * d * chunked.ROUND_ROWS + act
    disk_row = row + 4 * d + payload                    # + the chunk's float32 state buffer and one upload
    budget = 4 * d * chunked.SERVER_VECTORS + 9 * disk_row          # no room for the state or the uploads

    def scn(**compute):
        return w.scenario.model_copy(update={"compute": w.scenario.compute.model_copy(
            update={"memory_budget": float(budget), **compute})})
    with pytest.raises(ConfigError, match=r"allowed: .*state_store: disk \(then memory_budget >= ") as err:
        make_plan(scn(), alg, d, n, w.device, act, 1, payload)          # auto on a CPU: the device, refused
    assert err.value.field == "compute.memory_budget"
    plan = make_plan(scn(state_store="disk", state_dir=str(tmp_path)), alg, d, n, w.device, act, 1, payload)
    assert (plan.store, plan.rows, plan.row_bytes) == ("disk", 8, disk_row)
    with pytest.raises(ConfigError, match="in float32 on the device"):          # on a CPU the host is the device
        make_plan(scn(state_store="host"), alg, d, n, w.device, act, 1, payload)
    with pytest.raises(ConfigError, match="is not a folder") as err:
        make_plan(scn(state_store="disk", state_dir=str(tmp_path / "nowhere")), alg, d, n, w.device, act, 1, payload)
    assert err.value.field == "compute.state_dir"
    from sim.learn import rowstore
    monkeypatch.setattr(rowstore, "free_disk_bytes", lambda parent: 4 * d * n)   # room for the state, not the uploads
    with pytest.raises(ConfigError, match="need .* on disk, more than") as err:
        make_plan(scn(state_store="disk"), alg, d, n, w.device, act, 1, payload)
    assert err.value.field == "compute.state_dir"


def test_a_disk_store_runs_from_the_scenario_and_leaves_nothing_behind(tmp_path, monkeypatch):
    """From the scenario's fields (no forced plan): the results of the device
    store; the folder is removed when the run ends and when it fails."""
    w = world(**{"compute.state_store": "disk", "compute.state_dir": str(tmp_path)})
    tr = engine.Trainer(w, config(ALGS[1]))
    assert tr.chunked.where == "disk" and tr.chunked.chunks() == [(0, 20)]      # everything fits: one chunk
    assert len(list(tmp_path.iterdir())) == 1
    tr.chunked.close()
    assert list(tmp_path.iterdir()) == []
    assert engine.run_algorithm(w, config(ALGS[1])).rows == engine.run_algorithm(world(), config(ALGS[1])).rows
    assert list(tmp_path.iterdir()) == []

    def broken(*a, **k):
        assert len(list(tmp_path.iterdir())) == 1     # the store exists while the run does
        raise KeyboardInterrupt
    monkeypatch.setattr(engine, "simulate", broken)
    with pytest.raises(KeyboardInterrupt):
        engine.run_algorithm(w, config(ALGS[1]))
    assert list(tmp_path.iterdir()) == []


def test_auto_puts_the_state_on_the_host_when_a_gpu_is_short(monkeypatch):
    """The plan's arithmetic for a GPU (nothing is allocated: the budget is given)."""
    w = world()
    alg = config(ALGS[1]).build(engine.Context(d=w.model.d, n=w.n, blocks=w.model.blocks, device=w.device))
    d, n, gpu = w.model.d, w.n, torch.device("cuda")
    act, payload = 1000, 12 * round(0.1 * d)
    row = 4 * d * chunked.ROUND_ROWS + act
    host_row = row + 4 * d                              # + the chunk's state rows, float32 on the device
    budget = 4 * d * chunked.SERVER_VECTORS + payload * n + 9 * host_row

    def scn(**compute):
        return w.scenario.model_copy(update={"compute": w.scenario.compute.model_copy(
            update={"memory_budget": float(budget), **compute})})
    plan = make_plan(scn(), alg, d, n, gpu, act, 1, payload)
    assert (plan.store, plan.rows, plan.row_bytes) == ("host", 8, host_row)
    with pytest.raises(ConfigError, match="in float32 on the device"):
        make_plan(scn(state_store="device"), alg, d, n, gpu, act, 1, payload)      # asked for: not moved
    monkeypatch.setattr(chunked, "available_bytes", lambda dev: (4 * d * n - 1, "the test's host"))
    with pytest.raises(ConfigError, match="does not fit in the host's") as err:
        make_plan(scn(state_store="host"), alg, d, n, gpu, act, 1, payload)
    assert err.value.field == "compute.state_store"
    with pytest.raises(ConfigError, match="in float32 on the device"):     # auto: no room on the host either
        make_plan(scn(), alg, d, n, gpu, act, 1, payload)
    roomy = w.scenario.model_copy(update={"compute": w.scenario.compute.model_copy(
        update={"memory_budget": float(budget * 100)})})
    assert make_plan(roomy, alg, d, n, gpu, act, 1, payload).rows is None    # the round fits: unchunked


def test_a_state_dir_without_the_disk_store_is_refused_naming_the_field():
    from pathlib import Path

    from sim.errors import ScenarioError
    from sim.study.config import load_scenario
    quick = Path(__file__).resolve().parents[1] / "scenarios" / "quickstart.yaml"
    with pytest.raises(ScenarioError, match=r"compute.*state_dir is the folder of state_store: disk") as err:
        load_scenario(quick, ["compute.state_dir=/tmp"])
    assert "quickstart.yaml" in str(err.value)
    assert load_scenario(quick, ["compute.state_dir=/tmp", "compute.state_store=disk"]).compute.state_dir == "/tmp"


def test_the_chunked_round_hands_freed_heap_pages_back_above_the_budget(monkeypatch, tmp_path):
    """sim/alloc.py keep_within: malloc_trim(0) only when the resident set is
    above the limit; the chunked round asks after every chunk and every decode,
    with the plan's budget less one chunk (on a CPU device)."""
    from sim import alloc
    trims = []

    class FakeLibc:
        def malloc_trim(self, pad):
            trims.append(pad)
    monkeypatch.setattr(alloc, "_libc", FakeLibc())
    monkeypatch.setattr(alloc, "resident_bytes", lambda: 100)
    assert alloc.keep_within(100) is False and trims == []
    assert alloc.keep_within(99) is True and trims == [0]
    asked = []
    monkeypatch.setattr(chunked, "keep_within", lambda limit: asked.append(limit))
    w = world(**{"compute.state_store": "disk", "compute.state_dir": str(tmp_path), "compute.memory_budget": "1 GiB",
                 "stop.max_rounds": 2})
    made = spy(monkeypatch, "ChunkedRound")
    real_plan = engine.plan_round
    plans = []
    monkeypatch.setattr(engine, "plan_round", lambda *a: plans.append(real_plan(*a)) or plans[-1])
    engine.run_algorithm(w, config(ALGS[1]))
    plan = plans[0][0]
    assert made[0].chunks() == [(0, 20)] and plan.rows == 20
    assert set(asked) == {2 ** 30 - 20 * plan.row_bytes} and plan.trim_above == 2 ** 30 - 20 * plan.row_bytes
    assert len(asked) == 2 * 2             # rounds x (one chunk encoded + one decoded)
