"""Experiment tracking (sim/study/tracking.py): ``--log tensorboard`` on run and sweep.

The event files are read back with TensorBoard's own EventAccumulator and
compared with metrics.csv value for value; the results files are the same
bytes with and without ``--log``.
"""
from __future__ import annotations

import csv
import importlib.util
from pathlib import Path

import pytest
import yaml

from sim.study import tracking
from tests.test_cli import TINY, cli
from tests.test_sweep import sweep_file

HAVE_TB = importlib.util.find_spec("tensorboard") is not None
needs_tb = pytest.mark.skipif(not HAVE_TB, reason="tensorboard is not installed (pip install 'commsim[tensorboard]')")
RESULTS = ["scenario.yaml", "metrics.csv", "summary.csv", "phases.csv", "links.csv", "diagnostics.csv",
           "updates.csv", "trace.jsonl"]
ARGS = ["--set", "stop.max_rounds=6", "--set", "eval_every=2", "--set", "seeds=[0, 1]", "--quiet"]


def read_events(run: Path) -> dict[str, list[tuple[int, float, float]]]:
    """tag -> [(step, wall_time, value)] of one TensorBoard run folder."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.util import tensor_util
    acc = EventAccumulator(str(run), size_guidance={"tensors": 0, "scalars": 0})
    acc.Reload()
    assert acc.Tags()["scalars"] == []           # every value is a float64 tensor (new_style)
    out = {}
    for tag in acc.Tags()["tensors"]:
        events = acc.Tensors(tag)
        for e in events:
            assert e.tensor_proto.dtype == 2      # DT_DOUBLE
        out[tag] = [(e.step, e.wall_time, float(tensor_util.make_ndarray(e.tensor_proto))) for e in events]
    return out


def metrics_rows(out: Path) -> list[dict[str, str]]:
    with open(out / "metrics.csv", newline="") as fh:
        return list(csv.DictReader(fh))


def assert_events_equal_metrics(out: Path) -> int:
    """Every (algorithm, seed) of metrics.csv is one run folder whose series equal the rows; returns runs."""
    rows = metrics_rows(out)
    keys = sorted({(r["algorithm"], r["seed"]) for r in rows})
    runs = sorted(p for p in (out / "tensorboard").glob("*/seed_*") if p.is_dir())
    assert len(runs) == len(keys)
    for algorithm, seed in keys:
        mine = [r for r in rows if (r["algorithm"], r["seed"]) == (algorithm, seed)]
        events = read_events(out / "tensorboard" / tracking._safe(algorithm) / f"seed_{seed}")
        quantities = [q for q in tracking.QUANTITIES if mine[0].get(q, "") != ""]
        assert set(events) == {f"{axis}/{q}" for axis in ("by_round", "by_sim_time_us") for q in quantities}
        for q in quantities:
            want_round = [(int(r["round"]), float(r["sim_time_s"]), float(r[q])) for r in mine]
            want_time = [(round(float(r["sim_time_s"]) * 1_000_000), float(r["sim_time_s"]), float(r[q]))
                         for r in mine]
            assert events[f"by_round/{q}"] == want_round, q
            assert events[f"by_sim_time_us/{q}"] == want_time, q
    return len(keys)


@needs_tb
def test_run_log_tensorboard_equals_metrics_and_keeps_results_identical(tmp_path: Path) -> None:
    plain, logged = tmp_path / "plain", tmp_path / "logged"
    assert cli("run", TINY, "--out", plain, *ARGS)[0] == 0
    rc, _, err = cli("run", TINY, "--out", logged, *ARGS, "--log", "tensorboard")
    assert rc == 0, err
    for name in RESULTS:
        assert (plain / name).read_bytes() == (logged / name).read_bytes(), name
    assert not (plain / "tensorboard").exists()
    assert assert_events_equal_metrics(logged) == 3 * 2           # 3 algorithms x 2 seeds
    assert len(metrics_rows(logged)) == 3 * 2 * 4                 # rounds 0, 2, 4, 6
    # writing again replaces the folder (one event file per run, not two)
    tracking.write("tensorboard", logged)
    assert all(len(list(p.iterdir())) == 1 for p in (logged / "tensorboard").glob("*/seed_*"))
    assert assert_events_equal_metrics(logged) == 6


@needs_tb
def test_sweep_log_tensorboard_per_point(tmp_path: Path) -> None:
    p = sweep_file(tmp_path)     # 2 bandwidths x 2 seeds: the second bandwidth's points are replays
    out = tmp_path / "out"
    rc, _, err = cli("sweep", p, "--out", out, "--quiet", "--log", "tensorboard")
    assert rc == 0, err
    points = sorted((out / "points").iterdir())
    assert len(points) == 4
    modes = [yaml.safe_load((pt / "done").read_text())["mode"] for pt in points]
    assert sorted(modes) == ["full", "full", "replay", "replay"]
    for pt in points:
        assert assert_events_equal_metrics(pt) == 1
    # a resumed sweep logs points done before without --log
    out2 = tmp_path / "out2"
    assert cli("sweep", p, "--out", out2, "--quiet")[0] == 0
    assert not any((pt / "tensorboard").exists() for pt in (out2 / "points").iterdir())
    assert cli("sweep", p, "--out", out2, "--quiet", "--log", "tensorboard")[0] == 0
    for pt in (out2 / "points").iterdir():
        assert assert_events_equal_metrics(pt) == 1


def test_without_the_package_exit_2_naming_the_extra_and_nothing_written(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(tracking, "_available", lambda pkg: False)
    out = tmp_path / "out"
    rc, _, err = cli("run", TINY, "--out", out, "--quiet", "--log", "tensorboard")
    assert rc == 2 and "--log: --log tensorboard needs the Python package 'tensorboard'" in err
    assert "pip install 'commsim[tensorboard]'" in err and "Traceback" not in err
    assert not out.exists()
    rc, _, err = cli("sweep", sweep_file(tmp_path), "--out", out, "--quiet", "--log", "tensorboard")
    assert rc == 2 and "commsim[tensorboard]" in err and not out.exists()


def test_unknown_tracker_is_refused(tmp_path: Path) -> None:
    rc, _, err = cli("run", TINY, "--out", tmp_path / "o", "--log", "wandb")
    assert rc == 2 and "invalid choice: 'wandb'" in err and not (tmp_path / "o").exists()
    with pytest.raises(Exception) as e:
        tracking.check("wandb")
    assert "allowed: tensorboard" in str(e.value)


def test_the_cli_offers_every_registered_tracker() -> None:
    import run_sim
    assert run_sim.LOG_CHOICES == tracking.TRACKERS.names()


def test_folder_names_from_labels() -> None:
    assert tracking._safe("comp-ams") == "comp-ams"
    assert tracking._safe("topk 1%/ef") == "topk_1__ef"
    assert tracking._safe("..") == "_"
