"""Event-driven co-simulation (sim/eventsim.py) and async_sgd: exact staleness
sequences, closed-form update counts, SSP s = 0 equal to synchronous SGD, lazy
batched gradients equal to one at a time, contention in the predicted direction,
determinism, and bad input refused before anything is written."""
from __future__ import annotations

import csv
import math
from pathlib import Path

import pytest
import torch

import algorithms
import run_sim
from sim.study.config import load_scenario
from sim.engine import build_world, run_algorithm
from sim.errors import ConfigError
from sim.eventsim import LazyGrads, run_event_driven
from sim.learn.rng import TAG_BATCH, WorkerStreams

TINY = Path(__file__).resolve().parents[1] / "scenarios" / "tiny.yaml"
# equal workers, fixed compute, no stragglers: the timing is exact
EQUAL = ["compute={kind: fixed, step_time: 10 ms}", "stop.on_target=false", "eval_every=2",
         "stop.max_sim_time=null"]


def world(overrides: list[str], seed: int = 0):
    return build_world(load_scenario(TINY, [*EQUAL, *overrides]), seed)


def async_cfg(**kw):
    return algorithms.ALGORITHMS["async_sgd"](**{"name": "a", "lr": 0.1, **kw})


def run(w, cfg, eager=False):
    updates = []
    res = run_event_driven(w, cfg, on_update=updates.append, eager=eager)
    return res, updates


def test_rows_of_draws_equal_the_batched_draws():
    s = WorkerStreams(7, 5)
    workers, rounds = torch.tensor([3, 0, 3, 4]), torch.tensor([2, 9, 5, 2])
    got = s.bits_at(TAG_BATCH, workers, rounds, (6,))
    for r, (i, t) in enumerate(zip(workers.tolist(), rounds.tolist())):
        assert torch.equal(got[r], s.bits(TAG_BATCH, t, (6,))[i])
    high = torch.tensor([10, 20, 30, 40])
    got = s.randint_at(TAG_BATCH, workers, rounds, high, 4)
    for r, (i, t) in enumerate(zip(workers.tolist(), rounds.tolist())):
        assert torch.equal(got[r], s.randint(TAG_BATCH, t, torch.full((5,), int(high[r])), 4)[i])


def test_equal_workers_staleness_is_0_to_n_minus_1_then_n_minus_1():
    """Every worker computes for 10 ms on equal links: the first wave arrives at
    once and is applied in worker order (staleness 0, 1, ..., n - 1); each worker
    then gets the version just after its own update, so from the second wave on
    every gradient is n - 1 versions old."""
    w = world(["stop.max_rounds=5"])
    n = w.n
    _, up = run(w, async_cfg())
    assert [u["worker"] for u in up] == list(range(n)) * 5
    assert [u["staleness"] for u in up] == list(range(n)) + [n - 1] * (4 * n)
    assert [u["computed_at"] for u in up[n:2 * n]] == list(range(1, n + 1))
    assert [u["version"] for u in up] == list(range(1, 5 * n + 1))


def test_ssp_zero_staleness_is_0_to_n_minus_1_every_wave_and_equals_sgd():
    """SSP with s = 0: every worker waits for the whole wave, so all compute at the
    same version and the wave's n steps of lr / n are one synchronous SGD step."""
    w = world(["stop.max_rounds=6"])
    n = w.n
    res, up = run(w, async_cfg(max_staleness=0))
    assert [u["staleness"] for u in up] == list(range(n)) * 6
    assert [u["computed_at"] for u in up] == [n * (k // n) for k in range(6 * n)]
    sync = run_algorithm(w, algorithms.ALGORITHMS["sgd"](name="s", lr=0.1))
    assert [r["round"] for r in res.rows] == [n * r["round"] for r in sync.rows]
    for a, s in zip(res.rows, sync.rows):
        for key in ("train_loss", "test_loss"):
            assert a[key] == pytest.approx(s[key], rel=1e-5)
        assert a["test_acc"] == s["test_acc"]


def test_staleness_aware_step_divides_by_staleness():
    w = world(["stop.max_rounds=3"])
    _, up = run(w, async_cfg(staleness_lr=True))
    for u in up:
        assert u["step_size"] == pytest.approx(0.1 / w.n / max(1, u["staleness"]), rel=1e-12)


def test_one_straggler_ten_times_slower_update_counts_are_the_closed_form():
    """Worker 3 computes 10x longer.  On uncontended 1 Gbps links with 1 ms
    latency each message takes t = latency + 8 (4 d + header) / 1e9 (the server
    link is 1000x faster), so worker i's k-th gradient arrives at
    k step_i + (2 k - 1) t; counted up to T = 0.5 s."""
    T = 0.5
    w = world(["compute={kind: fixed, step_time: 10 ms, speed: [1, 1, 1, 0.1]}", "stop.max_rounds=100000",
               f"stop.max_sim_time={T} s", "network.uplink={bandwidth: 1 Gbps, latency: 1 ms}",
               "network.downlink={bandwidth: 1 Gbps, latency: 1 ms}",
               "network.server={bandwidth: 1000 Gbps, latency: 0 s}"])
    _, up = run(w, async_cfg())
    hdr, d = w.scenario.network.header_bytes, w.model.d
    t = 1e-3 + 8 * (4 * d + hdr) / 1e9
    want = []
    for step in w.step_s:
        k = 0
        while (k + 1) * step + (2 * (k + 1) - 1) * t < T:
            k += 1
        want.append(k)
    got = [sum(1 for u in up if u["worker"] == i and u["sim_time_s"] < T) for i in range(w.n)]
    assert w.step_s[3] == pytest.approx(10 * w.step_s[0])
    assert got == want and want[0] == 41 and want[3] == 4


def test_lazy_batched_gradients_equal_one_at_a_time():
    """The batched evaluation of every gradient fixed so far gives the same
    trajectory as evaluating each one alone when it is fixed."""
    w = world(["compute={kind: fixed, step_time: 10 ms, speed: [1, 0.7, 0.45, 0.3]}", "stop.max_rounds=8"])
    lazy, up_lazy = run(w, async_cfg(staleness_lr=True))
    eager, up_eager = run(w, async_cfg(staleness_lr=True), eager=True)
    assert up_lazy == up_eager
    for a, b in zip(lazy.rows, eager.rows):     # bitwise on CPU (vmap rows agree with single calls here)
        for key in ("train_loss", "test_loss", "test_acc"):
            assert a[key] == b[key]
    assert eager.mean_batch == 1.0
    assert lazy.mean_batch > 1.5        # gradients were evaluated several at a time


def test_contention_on_a_shared_link_lowers_the_slow_workers_staleness():
    """Two workers, one 5x slower.  The slow worker's gradient is as stale as the
    number of fast updates during its cycle, about (step_slow + 2 t) / (step_fast
    + 2 t) for a transfer time t.  When both share a slow server link, transfers
    take longer (t grows with the shared bandwidth), so that ratio falls toward
    1 and the slow worker's gradients are less stale."""
    base = ["workers=2", "compute={kind: fixed, step_time: 2 ms, speed: [1, 0.2]}", "stop.max_rounds=60",
            "network.uplink={bandwidth: 100 Mbps, latency: 0.1 ms}",
            "network.downlink={bandwidth: 100 Mbps, latency: 0.1 ms}"]
    stale = {}
    for name, server in (("fast server link", "{bandwidth: 100 Gbps, latency: 0 s}"),
                         ("shared slow link", "{bandwidth: 50 Mbps, latency: 0 s}")):
        w = world([*base, f"network.server={server}"])
        _, up = run(w, async_cfg())
        slow = [u["staleness"] for u in up if u["worker"] == 1]
        stale[name] = sum(slow) / len(slow)
    assert stale["shared slow link"] < stale["fast server link"]


def test_same_seed_same_files(tmp_path):
    algs = "[{name: a, kind: async_sgd, lr: 0.1, staleness_lr: true}, {name: s, kind: sgd, lr: 0.1}]"
    args = ["--set", "stop.max_rounds=4", "--set", f"algorithms={algs}", "--quiet"]
    for out in ("x", "y"):
        assert run_sim.main(["run", str(TINY), "--out", str(tmp_path / out), *args]) == 0
    for f in ("metrics.csv", "summary.csv", "updates.csv"):
        assert (tmp_path / "x" / f).read_bytes() == (tmp_path / "y" / f).read_bytes(), f
    rows = list(csv.DictReader((tmp_path / "x" / "updates.csv").open()))
    assert rows and {r["algorithm"] for r in rows} == {"a"}
    assert [int(r["version"]) for r in rows] == list(range(1, len(rows) + 1))


@pytest.mark.parametrize("override, words", [
    ("network.topology=ring", "one parameter server"),
    ("network.topology={kind: star, servers: 2}", "one parameter server"),
    ("round_timeout=50 ms", "round_timeout"),
])
def test_unsupported_settings_are_bad_input_and_write_nothing(tmp_path, capsys, override, words):
    out = tmp_path / "out"
    algs = "[{name: a, kind: async_sgd, lr: 0.1}]"
    code = run_sim.main(["run", str(TINY), "--out", str(out), "--set", f"algorithms={algs}", "--set", override])
    assert code == 2
    assert words in capsys.readouterr().err
    assert not out.exists()


def test_replay_is_refused_for_async(tmp_path):
    from sim.study.replay import refusal
    scn = load_scenario(TINY, ["algorithms=[{name: a, kind: async_sgd, lr: 0.1}]"])
    assert "not timing-independent" in refusal(scn, scn)


# --- FedBuff and FedAsync -------------------------------------------------------

def test_fedbuff_with_k_equal_c_equal_n_is_synchronous_fedavg():
    """Equal clients arrive together; the buffer of n is flushed once per wave
    and every client restarts from the flushed model: FedAvg with the same
    local steps (uniform weights, server step lr)."""
    w = world(["stop.max_rounds=6"])
    n = w.n
    buf, up = run(w, algorithms.ALGORITHMS["fedbuff"](name="b", lr=0.8, local_lr=0.1, local_steps=3, buffer=n))
    avg = run_algorithm(w, algorithms.ALGORITHMS["fedavg"](name="f", lr=0.8, local_lr=0.1, local_steps=3,
                                                           weighting="uniform"))
    assert [u["version"] for u in up] == [k // n + (1 if k % n == n - 1 else 0) for k in range(6 * n)]
    assert [r["round"] for r in buf.rows] == [r["round"] for r in avg.rows]
    for a, b in zip(buf.rows, avg.rows):
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-5)
        assert a["test_acc"] == b["test_acc"]


def test_fedbuff_with_one_client_at_a_time_is_sequential_in_closed_form():
    """C = 1: one job in flight; each takes a download, H steps and an upload:
    arrivals at H s + t, then every t + H s + t (t: one message alone)."""
    H, step = 2, 0.01
    w = world(["stop.max_rounds=2", "network.uplink={bandwidth: 1 Gbps, latency: 1 ms}",
               "network.downlink={bandwidth: 1 Gbps, latency: 1 ms}",
               "network.server={bandwidth: 1000 Gbps, latency: 0 s}"])
    _, up = run(w, algorithms.ALGORITHMS["fedbuff"](name="b", local_lr=0.1, local_steps=H, buffer=2,
                                                    concurrency=1))
    t = 1e-3 + 8 * (4 * w.model.d + w.scenario.network.header_bytes) / 1e9
    times = [u["sim_time_s"] for u in up]
    assert times[0] == pytest.approx(H * step + t, rel=1e-9)
    for a, b in zip(times, times[1:]):
        assert b - a == pytest.approx(2 * t + H * step, rel=1e-9)
    assert len({u["worker"] for u in up}) > 1          # the next client is drawn from the idle ones


def test_fedasync_mixes_with_the_staleness_function():
    cfg = algorithms.ALGORITHMS["fedasync"]
    poly = cfg(local_lr=0.1, alpha=0.5, staleness_fn="polynomial", a=0.5).build(ctx_small())
    hinge = cfg(local_lr=0.1, alpha=0.5, staleness_fn="hinge", a=2.0, b=3).build(ctx_small())
    assert [poly.weight(t) for t in (0, 3, 8)] == pytest.approx([1.0, 0.5, 1 / 3])
    assert [hinge.weight(t) for t in (0, 3, 4, 6)] == pytest.approx([1.0, 1.0, 1 / 3, 1 / 7])
    from sim.eventsim import Job
    theta, snap, delta = torch.full((4,), 2.0), torch.ones(4), torch.full((4,), 0.25)
    new, _, info = poly.receive(None, theta, delta, Job(0, 0, 0, snap), 3, 3)
    assert info["step_size"] == pytest.approx(0.25)
    torch.testing.assert_close(new, 0.75 * theta + 0.25 * (snap - delta))


def ctx_small():
    from algorithms.base import Context
    return Context(d=4, n=2, blocks=(), device=torch.device("cpu"))


# --- K-sync (wait_for) ----------------------------------------------------------

def test_ksync_with_k_equal_n_is_sync_and_with_k_less_keeps_the_first_k(tmp_path):
    base = ["compute={kind: fixed, step_time: 10 ms, speed: [1, 0.5, 0.25, 0.2]}", "stop.max_rounds=4",
            "network.uplink={bandwidth: 1 Gbps, latency: 1 ms}", "network.downlink={bandwidth: 1 Gbps, latency: 1 ms}",
            "network.server={bandwidth: 1000 Gbps, latency: 0 s}"]
    sgd = lambda k=None: algorithms.ALGORITHMS["sgd"](name="s", lr=0.1, wait_for=k)  # noqa: E731
    w = world(base)
    full = run_algorithm(w, sgd())
    same = run_algorithm(w, sgd(4))
    assert same.rows == full.rows
    phases = []
    k2 = run_algorithm(w, sgd(2), on_phase=phases.append)
    t = 1e-3 + 8 * (4 * w.model.d + w.scenario.network.header_bytes) / 1e9
    assert [p["arrived"] for p in phases] == [2, 2, 2, 2]
    assert phases[0]["end_s"] == pytest.approx(0.02 + t, rel=1e-9)       # the 2nd fastest: 20 ms + upload
    # every round: the broadcast, the 2nd fastest compute, the upload (the slow ones are interrupted)
    for p in phases[1:]:
        assert p["end_s"] - p["start_s"] == pytest.approx(t + 0.02 + t, rel=1e-9)
    assert k2.rows[-1]["sim_time_s"] < full.rows[-1]["sim_time_s"]
    assert k2.rows[-1]["train_loss"] != full.rows[-1]["train_loss"]       # fewer gradients a round


def test_wait_for_is_refused_by_replay_and_bounded_by_the_workers(capsys, tmp_path):
    from sim.study.replay import refusal
    scn = load_scenario(TINY, ["algorithms=[{name: k, kind: sgd, lr: 0.1, wait_for: 2}]"])
    assert "wait_for" in refusal(scn, scn)
    for algs, words in (("[{name: k, kind: sgd, lr: 0.1, wait_for: 9}]", "allowed: 1 .. workers = 4"),
                        ("[{name: k, kind: async_sgd, lr: 0.1, wait_for: 2}]", "needs a synchronous algorithm")):
        code = run_sim.main(["run", str(TINY), "--set", f"algorithms={algs}", "--out", str(tmp_path / "o")])
        assert code == 2 and words in capsys.readouterr().err
        assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("comp", [{"kind": "topk", "ratio": 0.1}, {"kind": "qsgd", "s": 4},
                                  {"kind": "scaled_sign"}])
def test_compressed_async_sgd_lazy_equals_one_at_a_time_and_bytes_are_the_formula(comp):
    """Error feedback per worker, batched over the rows of a lazy batch, with each
    row's draws from its own worker's stream at its step: the same trajectory and
    the same bytes as compressing every gradient alone when it is fixed."""
    from algorithms.base import Context
    w = world(["compute={kind: fixed, step_time: 10 ms, speed: [1, 0.7, 0.45, 0.3]}", "stop.max_rounds=6",
               "eval_every=3"])
    cfg = async_cfg(compressor=comp)
    lazy, up_lazy = run(w, cfg)
    eager, up_eager = run(w, cfg, eager=True)
    assert up_lazy == up_eager and [r["test_loss"] for r in lazy.rows] == [r["test_loss"] for r in eager.rows]
    assert lazy.mean_batch > 1.2
    comp_obj = cfg.build(Context(d=w.model.d, n=w.n, blocks=w.model.blocks, device=w.device)).compressor
    payload = comp_obj.compress(torch.randn(1, w.model.d), streams=WorkerStreams(0, 1), round=0)
    hdr = w.scenario.network.header_bytes
    per_msg = int(payload.nbytes[0]) + hdr
    assert lazy.rows[-1]["bytes_up"] == lazy.rows[-1]["uploads"] * per_msg
    dense, _ = run(w, async_cfg())
    assert lazy.rows[-1]["bytes_up"] < dense.rows[-1]["bytes_up"]


def test_shared_seed_randomk_is_refused_for_async():
    with pytest.raises(ValueError, match="no rounds"):
        async_cfg(compressor={"kind": "randomk", "ratio": 0.1, "shared_seed": True})



def test_a_crashed_worker_loses_its_computation_and_pulls_the_parameters_when_it_rejoins():
    """Worker 0 crashes at 25 ms (mid-computation of its third step) and rejoins at
    100 ms: the step it was computing never arrives, nothing of it starts while it is
    down, and after the rejoin it starts from parameters sent at the rejoin time."""
    crash, back = 0.025, 0.1
    w = world(["stop.max_rounds=12", "network.uplink={bandwidth: 100 Gbps, latency: 0 s}",
               "network.downlink={bandwidth: 100 Gbps, latency: 0 s}",
               "network.server={bandwidth: 1000 Gbps, latency: 0 s}",
               f"failures=[{{worker: 0, crash_at: {crash} s, rejoin_at: {back} s}}]"])
    res, up = run(w, async_cfg())
    mine = [u for u in up if u["worker"] == 0]
    assert all(not (crash <= u["compute_start_s"] < back) for u in mine)
    assert all(u["upload_start_s"] <= crash or u["compute_start_s"] >= back for u in mine)
    after = [u for u in mine if u["compute_start_s"] >= back]
    assert after and after[0]["params_sent_s"] == pytest.approx(back)
    assert len([u for u in mine if u["upload_start_s"] <= crash]) == 2      # steps at 10 and 20 ms
    others = [u for u in up if u["worker"] == 1]
    assert len(others) > len(mine)
    # never rejoining: it is never heard from again, the others go on
    w = world(["stop.max_rounds=6", f"failures=[{{worker: 0, crash_at: {crash} s}}]"])
    res, up = run(w, async_cfg())
    assert max(u["sim_time_s"] for u in up if u["worker"] == 0) < crash + 0.02
    assert not res.stalled and res.rows[-1]["round"] == 6 * w.n


def test_every_worker_gone_is_a_stall_with_the_reason():
    w = world(["stop.max_rounds=6", "failures=" + str([{"worker": i, "crash_at": "5 ms"} for i in range(4)])])
    res, up = run(w, async_cfg())
    assert res.stalled and "no message can ever be delivered" in res.stalled and up == []


# --- failures with a compressor: the lost job's error feedback is rolled back ---------

CRASH = ["compute={kind: fixed, step_time: 10 ms, speed: [1, 0.7, 0.45, 0.3]}", "stop.max_rounds=8",
         "eval_every=4", "network.uplink={bandwidth: 100 Gbps, latency: 0 s}",
         "network.downlink={bandwidth: 100 Gbps, latency: 0 s}", "network.server={bandwidth: 1000 Gbps, latency: 0 s}",
         "failures=[{worker: 0, crash_at: 25 ms, rejoin_at: 60 ms}, {worker: 2, crash_at: 70 ms, rejoin_at: 90 ms}]"]
TOPK = {"kind": "topk", "ratio": 0.1}


def run_watching_jobs(monkeypatch, w, cfg, eager=False):
    """A run whose LazyGrads is kept, with every job it was given and each drop
    (and whether that job had been evaluated, so its error feedback applied)."""
    import sim.eventsim as eventsim
    seen = {}

    class Watched(LazyGrads):
        def __init__(self, *a, **kw):
            super().__init__(*a, **kw)
            self.added, self.dropped, seen["lazy"] = [], [], self

        def add(self, job):
            self.added.append(job)
            job.snapshot = job.theta.clone()    # evaluated jobs drop theta (a version-ring row may be reused)
            super().add(job)

        def drop(self, job):
            self.dropped.append((job, job.message is not None))
            super().drop(job)

    monkeypatch.setattr(eventsim, "LazyGrads", Watched)
    res, up = run(w, cfg, eager=eager)
    return res, up, seen["lazy"]


def ef_memory_of(w, cfg, jobs, same_messages=True):
    """The error-feedback memories [n, d] after encoding ``jobs`` one at a time, in
    their order, from zero: the gradient at each job's snapshot on its minibatch,
    through the compressor with its worker's draws at its step (and, when
    ``same_messages``, checking that each decoded message is the one the run used)."""
    from algorithms.base import Context
    from sim.engine import grads_at
    from sim.learn.grads import GradFn
    from sim.learn.rng import RowStreams
    alg = cfg.build(Context(d=w.model.d, n=w.n, blocks=w.model.blocks, device=w.device))
    streams = WorkerStreams(w.seed, w.n, w.device)
    grad_fn = GradFn(w.model, w.scenario.gradients)
    errors = alg.init_workers(w.n, w.model.d, w.device)
    for job in jobs:
        rows, steps = torch.tensor([job.worker]), torch.tensor([job.step])
        g = grads_at(w, grad_fn, streams, job.snapshot[None], rows, steps, 0)
        errors, decoded, _ = alg.encode(errors, g, rows, RowStreams(streams, rows, steps))
        if same_messages:
            torch.testing.assert_close(decoded[0], job.message, rtol=0, atol=1e-6)
    return errors


def test_a_crash_rolls_back_the_lost_jobs_error_feedback(monkeypatch):
    """Two jobs are lost.  Worker 0's (started at 20 ms, crash at 25 ms) was not
    evaluated yet: it is simply removed.  Worker 2's (started at 66.7 ms, crash
    at 70 ms) was evaluated, so encoded with error feedback, when worker 0
    uploaded at 70 ms (the compressed size needs the encoded message): its
    memory row is rolled back.  After the run every worker's memory equals
    encoding, one at a time from zero, exactly the jobs that were not lost: as
    if the lost ones never existed.  With the lost job encoded too it would
    differ.  The one-at-a-time run (eager: every job evaluated when it starts,
    so both lost jobs are rolled back) gives the same updates, and the same rule
    holds for its memory."""
    w = world(CRASH)
    cfg = async_cfg(compressor=TOPK)
    res, up, lazy = run_watching_jobs(monkeypatch, w, cfg)
    assert [(job.worker, job.step, evaluated) for job, evaluated in lazy.dropped] == [(0, 2, False), (2, 3, True)]
    assert lazy.dropped[1][0].compute_start_s == pytest.approx(0.2 / 3, rel=1e-3)
    res_e, up_e, eager = run_watching_jobs(monkeypatch, w, cfg, eager=True)
    assert [(job.worker, job.step, evaluated) for job, evaluated in eager.dropped] == [(0, 2, True), (2, 3, True)]
    assert up_e == up and [r["test_loss"] for r in res_e.rows] == [r["test_loss"] for r in res.rows]
    for lg in (lazy, eager):      # (they differ in the jobs still in flight at the end: eager evaluated them)
        kept = [j for j in lg.added if j.message is not None and all(j is not x for x, _ in lg.dropped)]
        assert torch.allclose(lg.errors, ef_memory_of(w, cfg, kept), rtol=0, atol=1e-6)
        with_lost = [j for j in lg.added if j.message is not None]
        assert not torch.allclose(lg.errors, ef_memory_of(w, cfg, with_lost, False), rtol=0, atol=1e-3)


def test_failures_with_topk_lost_jobs_are_neither_uploaded_nor_applied(monkeypatch):
    """End to end with top-k and error feedback: every applied message is one
    upload of the top-k size, the lost jobs are never applied, and nothing of
    worker 0 starts while it is down (25 .. 60 ms) or of worker 2 (70 .. 90 ms)."""
    from algorithms.base import Context
    w = world(CRASH)
    cfg = async_cfg(compressor=TOPK)
    res, up, lazy = run_watching_jobs(monkeypatch, w, cfg)
    assert not res.stalled and res.rows[-1]["round"] == 8 * w.n == len(up)
    applied = {id(j) for j in lazy.added} - {id(j) for j, _ in lazy.dropped}
    assert len(lazy.dropped) == 2 and len(applied) >= len(up)
    comp = cfg.build(Context(d=w.model.d, n=w.n, blocks=w.model.blocks, device=w.device)).compressor
    per_msg = int(comp.compress(torch.randn(1, w.model.d), streams=WorkerStreams(0, 1), round=0).nbytes[0])
    assert res.rows[-1]["uploads"] == len(up)
    assert res.rows[-1]["bytes_up"] == len(up) * (per_msg + w.scenario.network.header_bytes)
    for worker, down, back in ((0, 0.025, 0.06), (2, 0.07, 0.09)):
        mine = [u for u in up if u["worker"] == worker]
        assert all(not (down <= u["compute_start_s"] < back) for u in mine)
        assert all(u["upload_start_s"] <= down or u["compute_start_s"] >= back for u in mine)
        lost = [j for j, _ in lazy.dropped if j.worker == worker]
        assert len(lost) == 1 and all(u["compute_start_s"] != lost[0].compute_start_s for u in mine)


# --- FedBuff with C < n and failures: the server draws from the clients that are up -------

FAST_1G = ["network.uplink={bandwidth: 1 Gbps, latency: 1 ms}", "network.downlink={bandwidth: 1 Gbps, latency: 1 ms}",
           "network.server={bandwidth: 1000 Gbps, latency: 0 s}"]


def fedbuff(C, H=2, K=2):
    return algorithms.ALGORITHMS["fedbuff"](name="b", local_lr=0.1, local_steps=H, buffer=K, concurrency=C)


@pytest.mark.parametrize("rejoin_1_s", [0.05, 0.025])
def test_fedbuff_a_crash_frees_the_slot_at_once_and_an_open_slot_waits_for_a_rejoin(rejoin_1_s):
    """Two clients, one slot, H = 2 steps of 10 ms, t one message alone.  Client 1 is
    down until ``rejoin_1_s``, so client 0 is drawn at 0 (it holds theta_0: no
    download) and again at its arrival (20 ms + t).  It crashes at 30 ms while
    training: its work is lost and the slot is free at once.  Client 1 rejoined
    at 25 ms: it gets the model sent at exactly 30 ms.  Client 1 down until 50
    ms: nobody is up, the slot stays open until client 1 rejoins and gets the
    model sent at exactly 50 ms.  At its arrival client 0 is still down (until
    80 ms), so client 1 is drawn again."""
    w = world(["workers=2", "stop.max_rounds=4", *FAST_1G,
               f"failures=[{{worker: 1, crash_at: 0 s, rejoin_at: {rejoin_1_s} s}}, "
               "{worker: 0, crash_at: 30 ms, rejoin_at: 80 ms}]"])
    res, up = run(w, fedbuff(1))
    t = 1e-3 + 8 * (4 * w.model.d + w.scenario.network.header_bytes) / 1e9
    sent = max(0.03, rejoin_1_s)
    assert [u["worker"] for u in up[:3]] == [0, 1, 1]
    assert up[0]["params_sent_s"] == 0.0 and up[0]["sim_time_s"] == pytest.approx(0.02 + t, rel=1e-9)
    assert up[1]["params_sent_s"] == sent and up[1]["compute_start_s"] == pytest.approx(sent + t, rel=1e-9)
    assert up[1]["sim_time_s"] == pytest.approx(sent + 0.02 + 2 * t, rel=1e-9)
    assert up[2]["params_sent_s"] == pytest.approx(sent + 0.02 + 2 * t, rel=1e-9)
    assert all(not (0.03 <= u["compute_start_s"] < 0.08) for u in up if u["worker"] == 0)
    assert [u["version"] for u in up[:4]] == [0, 1, 1, 2]          # K = 2: the lost job is never buffered
    assert not res.stalled and res.rows[-1]["uploads"] == len(up) == 4 * w.n


def test_fedbuff_a_client_down_for_the_whole_run_is_never_drawn():
    w = world(["stop.max_rounds=8", "failures=[{worker: 3, crash_at: 0 s}]"])
    res, up = run(w, fedbuff(2, H=1))
    assert {u["worker"] for u in up} == {0, 1, 2}
    assert not res.stalled and len(up) == 8 * w.n


def test_fedbuff_failures_that_never_touch_the_run_change_nothing():
    """The draws are from the idle clients that are up: with every client up they
    are the draws without failures, bit for bit (same generator, same lists)."""
    w0 = world(["stop.max_rounds=6"])
    w1 = world(["stop.max_rounds=6", "failures=[{worker: 2, crash_at: 1000 s}]"])
    for C in (1, 3):
        a, up_a = run(w0, fedbuff(C))
        b, up_b = run(w1, fedbuff(C))
        assert up_a == up_b and a.rows == b.rows and len({u["worker"] for u in up_a}) > 1


def test_fedbuff_every_client_gone_leaves_the_slots_open_a_stall():
    w = world(["stop.max_rounds=4", "failures=" + str([{"worker": i, "crash_at": "5 ms"} for i in range(4)])])
    res, up = run(w, fedbuff(2, H=1))
    assert up == [] and res.stalled and "no message can ever be delivered" in res.stalled


# --- late: apply ------------------------------------------------------------------

def test_late_uploads_join_the_next_rounds_mean():
    """algorithms/ps.py: with late workers, g_bar = (sum_arrived D_i + sum_late D_i^prev) / (|A| + |L|)."""
    from algorithms.base import Context
    ctx = Context(d=3, n=3, blocks=(), device=torch.device("cpu"))
    alg = algorithms.ALGORITHMS["sgd"](lr=1.0).build(ctx)
    import dataclasses
    alg = dataclasses.replace(alg, keep_late=True)
    state = alg.init(torch.zeros(3))
    g1 = torch.tensor([[1.0, 0, 0], [0, 2.0, 0], [0, 0, 4.0]])
    up, state = alg.worker_encode(state, g1, 0, WorkerStreams(0, 3))
    theta, _, state = alg.server_update(state, torch.zeros(3), up, torch.tensor([True, True, False]), 0,
                                        late=torch.tensor([False, False, False]))
    torch.testing.assert_close(theta, -torch.tensor([0.5, 1.0, 0.0]))
    g2 = torch.full((3, 3), 8.0)
    up, state = alg.worker_encode(state, g2, 1, WorkerStreams(0, 3))
    new, _, _ = alg.server_update(state, theta, up, torch.tensor([True, True, False]), 1,
                                  late=torch.tensor([False, False, True]))
    torch.testing.assert_close(new, theta - (8.0 + 8.0 + torch.tensor([0, 0, 4.0])) / 3)   # worker 2's round 0


def test_round_timeout_with_late_apply_counts_the_straggler_one_round_late():
    """Worker 3 computes 20 ms, the others 10 ms; round_timeout 15 ms drops its upload
    from every round; with late: apply it joins the next round's mean instead."""
    base = ["compute={kind: fixed, step_time: 10 ms, speed: [1, 1, 1, 0.5]}", "stop.max_rounds=6",
            "eval_every=1", "round_timeout=15 ms", "network.uplink={bandwidth: 100 Gbps, latency: 0.1 ms}",
            "network.downlink={bandwidth: 100 Gbps, latency: 0.1 ms}",
            "network.server={bandwidth: 1000 Gbps, latency: 0 s}"]
    w = world(base)
    drop, diag, phases = [], [], []
    res_drop = run_algorithm(w, algorithms.ALGORITHMS["sgd"](name="s", lr=0.1), on_phase=drop.append)
    res = run_algorithm(w, algorithms.ALGORITHMS["sgd"](name="s", lr=0.1, late="apply"), on_phase=phases.append,
                        on_diag=diag.append)
    assert [p["arrived"] for p in drop] == [3] * 6 and [p["arrived"] for p in phases] == [3] * 6
    assert [d["value"] for d in diag if d["quantity"] == "late_applied"] == [0.0] + [1.0] * 5
    assert res.rows[1] == res_drop.rows[1]                      # round 0: nothing late yet
    assert res.rows[-1]["train_loss"] != res_drop.rows[-1]["train_loss"]


def test_ksync_with_late_apply_does_not_interrupt_and_applies_the_late_ones():
    base = ["compute={kind: fixed, step_time: 10 ms, speed: [1, 1, 1, 0.8]}", "stop.max_rounds=4",
            "network.uplink={bandwidth: 100 Gbps, latency: 0.1 ms}",
            "network.downlink={bandwidth: 100 Gbps, latency: 0.1 ms}",
            "network.server={bandwidth: 1000 Gbps, latency: 0 s}"]
    w = world(base)
    diag = []
    interrupted = run_algorithm(w, algorithms.ALGORITHMS["sgd"](name="s", lr=0.1, wait_for=3))
    res = run_algorithm(w, algorithms.ALGORITHMS["sgd"](name="s", lr=0.1, wait_for=3, late="apply"),
                        on_diag=diag.append)
    assert sum(d["value"] for d in diag if d["quantity"] == "late_applied") >= 2
    assert res.rows[-1]["bytes_up"] > interrupted.rows[-1]["bytes_up"]     # the late uploads were sent


@pytest.mark.parametrize("algs, words", [
    ("[{name: a, kind: sgd, lr: 0.1, late: apply}]", "with wait_for or round_timeout"),
    ("[{name: a, kind: powersgd, lr: 0.1, wait_for: 2, late: apply}]", "needs a parameter-server algorithm"),
])
def test_late_apply_is_refused_where_it_has_no_meaning(tmp_path, capsys, algs, words):
    code = run_sim.main(["run", str(TINY), "--out", str(tmp_path / "o"), "--set", f"algorithms={algs}"])
    assert code == 2 and words in capsys.readouterr().err and not (tmp_path / "o").exists()


def _same_run(a, up_a, b, up_b):
    assert up_a == up_b
    assert [{k: r[k] for k in ("round", "sim_time_s", "train_loss", "test_loss", "test_acc")} for r in a.rows] == \
        [{k: r[k] for k in ("round", "sim_time_s", "train_loss", "test_loss", "test_acc")} for r in b.rows]


def test_version_ring_slices_batches_and_changes_nothing():
    """async_sgd keeps its versions in a ring (sim/eventsim.py VersionRing): most
    batches of snapshots are a slice of it, and the trajectory is bitwise the
    one without the ring (every snapshot stacked, as before)."""
    w = world(["compute={kind: fixed, step_time: 10 ms, speed: [1, 0.9, 0.8, 0.7]}", "stop.max_rounds=12"])
    ring, up_ring = run_with(w, async_cfg(staleness_lr=True))
    plain, up_plain = run_with(w, async_cfg(staleness_lr=True), ring_rows=0)
    _same_run(ring, up_ring, plain, up_plain)
    assert plain.ring_batches == 0 and ring.ring_batches > 0
    assert ring.ring_evacuated == 0             # 2 n + 2 rows: nobody held a version that long


def test_version_ring_copies_out_versions_held_longer_than_it_is():
    """A straggler 10x slower holds its version while the others make many: with
    a ring of 3 rows its snapshot (and pending ones) must be copied out before
    their rows are reused.  The run is bitwise the one without the ring; the
    copies happened; and evaluated jobs dropped their snapshot."""
    over = ["compute={kind: fixed, step_time: 10 ms, speed: [1, 1, 1, 0.1]}", "stop.max_rounds=15"]
    w = world(over)
    small, up_small = run_with(w, async_cfg(), ring_rows=3)
    plain, up_plain = run_with(w, async_cfg(), ring_rows=0)
    _same_run(small, up_small, plain, up_plain)
    assert small.ring_evacuated > 0
    eager, up_eager = run_with(w, async_cfg(), ring_rows=2, eager=True)   # the smallest ring, one at a time
    _same_run(eager, up_eager, plain, up_plain)


def test_version_ring_refuses_a_row_that_was_overwritten():
    """The check that keeps a wrong snapshot from ever being used: a job whose
    ring row no longer holds its version raises instead of computing."""
    from sim.eventsim import Job, VersionRing
    theta = torch.arange(4.0)
    ring = VersionRing(theta, 2, lambda: [])           # nobody registered as a holder
    row, slot = ring.row(0)
    job = Job(0, 0, 0, row, slot=slot)
    ring.claim(1)
    ring.claim(2)                                      # version 2 takes row 0, version 0 is gone
    with pytest.raises(AssertionError, match="no longer holds version 0"):
        LazyGrads._snapshots([job], torch.tensor([0]), torch.tensor([0]))


def run_with(w, cfg, eager=False, ring_rows=None):
    updates = []
    res = run_event_driven(w, cfg, on_update=updates.append, eager=eager, ring_rows=ring_rows)
    return res, updates
