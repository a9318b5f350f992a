"""bench/bench_flower.py: its three ways do the same round (issue 15, goal 4).

No timing is asserted (only that every timed round is counted): the figures
are taken by ``make bench-flower`` on a quiet machine.
"""
from __future__ import annotations

import importlib
import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

BENCH = Path(__file__).resolve().parents[1] / "bench"
if str(BENCH) not in sys.path:
    sys.path.insert(0, str(BENCH))
bf = importlib.import_module("bench_flower")

HAS_FLWR = importlib.util.find_spec("flwr") is not None


@pytest.fixture(scope="module")
def setup2():
    return bf.make_setup(2, 3)


def test_commsim_and_plain_loops_agree_after_one_round(setup2):
    check = bf.round1_check(setup2)
    assert check["max_abs_step"] > 1e-4                       # the round moved the parameters
    assert check["max_abs_diff_commsim_plain"] < 1e-6
    assert check["max_abs_diff_commsim_plain_vmap"] < 1e-6
    # and it is dense SGD: theta1 = theta0 - lr * mean_i grad_i on round 0's batches
    world = setup2.world
    x, y = bf.batches(world, bf.WorkerStreams(world.seed, 2), 0, bf.BATCH)
    g = torch.stack([torch.func.grad(world.model.loss)(setup2.theta0, x[i], y[i]) for i in range(2)]).mean(0)
    assert torch.allclose(check["commsim"], setup2.theta0 - setup2.lr * g, atol=1e-6, rtol=0)


def test_each_way_times_rounds_after_the_first(setup2):
    thetas = {}
    for fn in (bf.run_commsim, bf.run_plain, bf.run_plain_vmap):
        secs, thetas[fn] = fn(setup2, 3)
        assert len(secs) == 2 and all(s > 0 for s in secs)
        assert thetas[fn].shape == (setup2.d,)
    assert float((thetas[bf.run_commsim] - thetas[bf.run_plain]).abs().max()) < 1e-5
    assert float((thetas[bf.run_commsim] - thetas[bf.run_plain_vmap]).abs().max()) < 1e-6


def test_tiling_gives_every_client_a_full_batch():
    assert [bf.tiles(n) for n in (10, 100, 125, 126, 1000)] == [1, 1, 1, 2, 8]
    ds = bf.bench_dataset(1000)
    assert ds.num_train == 32000 and ds.name == "mnist5k x8"
    assert torch.equal(ds.x_train[4000:8000], ds.x_train[:4000])
    assert torch.equal(ds.y_train[-4000:], ds.y_train[:4000])


@pytest.mark.skipif(HAS_FLWR, reason="flwr is installed: this checks the report without it")
def test_without_flwr_flower_is_reported_unavailable(tmp_path):
    ok, why = bf.flower_available()
    assert not ok and "bench extra" in why
    out = bf.bench([2], rounds=2, flower_rounds=2, rounds_1000=2, repeats=1, client_cpus=1.0, device="cpu",
                   flower_timeout_s=60, log=lambda s: None)
    assert out["flower_available"] is False
    row = out["sizes"][0]
    assert set(row["per_round"]) == {"commsim", "plain", "plain_vmap"}
    assert set(row["ratios"]) == {"commsim/plain", "commsim/plain_vmap"}
    assert row["per_round"]["commsim"]["rounds_timed"] == 1
    assert out["goals"] == {"measured": False, "why": "N = 100 was not run"}
    assert "Flower unavailable" in bf.table(out)
    assert len(out["machine"]["load_before"]) == 3 and len(out["machine"]["load_after"]) == 3


@pytest.mark.slow
@pytest.mark.skipif(not HAS_FLWR, reason="flwr[simulation] is not installed (the optional bench extra)")
def test_flower_round_agrees_with_commsim(setup2, tmp_path):
    ref = tmp_path / "theta1.npy"
    np.save(ref, bf.round1_check(setup2)["commsim"].numpy())
    row = bf.run_flower(2, 2, 1.0, ref, timeout_s=600)
    assert "error" not in row, row.get("error")
    assert len(row["per_round_s"]) == 1
    assert row["round1_max_abs_diff_vs_commsim"] < 1e-6
