"""Execution backends (sim/backends.py): the local backend (in process and in
spawned processes) and Ray (one private local instance for the whole module)
write the same files and report the same results; failures become results."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

from sim.backends import Job, resources, run_jobs
from sim.errors import ConfigError

TINY = Path(__file__).resolve().parents[1] / "scenarios" / "tiny.yaml"
SET = ["stop.max_rounds=4", "eval_every=2", "stop.on_target=false",
       "algorithms=[{name: sgd, kind: sgd, lr: 0.1}]"]
BANDWIDTHS = ["100 Mbps", "1 Gbps"]


# --- job functions (module level: pickled by reference into the workers) -------
def write_job(name: str, size: int, out_dir: str) -> dict:
    out = Path(out_dir)
    (out / "sub" / "deeper").mkdir(parents=True, exist_ok=True)
    (out / "result.txt").write_text(f"job {name}\n")
    (out / "sub" / "deeper" / "data.bin").write_bytes(bytes(range(256)) * size)
    (out / "done").write_text("ok\n")
    return {"status": "done", "error": "", "name": name, "size": size}


def raising_job(out_dir: str) -> dict:
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    (Path(out_dir) / "partial.txt").write_text("before the error\n")
    raise ValueError("boom")


def point(base: str, overrides: list[str], quiet: bool, out_dir: str) -> dict:
    """A sweep point (sim.sweep.run_point, whichever of its two signatures is there)."""
    import inspect
    import sim.sweep
    if "out" in inspect.signature(sim.sweep.run_point).parameters:    # run_point(base, overrides, out, quiet)
        return sim.sweep.run_point(base, overrides, out_dir, quiet)
    return sim.sweep.run_point(base, overrides, quiet, out_dir=out_dir)


def toy_jobs(root: Path, **resources_) -> list[Job]:
    jobs = [Job(i, write_job, (f"j{i}", i + 1), str(root / "points" / f"{i:03d}"), **resources_) for i in range(3)]
    return jobs + [Job(3, raising_job, (), str(root / "points" / "003"), **resources_)]


def point_jobs(root: Path) -> list[Job]:
    return [Job(10 + i, point, (str(TINY), [*SET, f"network.uplink.bandwidth={bw}"], True),
                str(root / "points" / f"{i:03d}"), *resources({"device": "cpu"}))
            for i, bw in enumerate(BANDWIDTHS)]


def tree(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def run(jobs: list[Job], **kw) -> dict[int, dict]:
    results: dict[int, dict] = {}

    def on_done(key: int, result: dict) -> None:
        assert key not in results
        results[key] = result
    run_jobs(jobs, on_done=on_done, **kw)
    return results


EXPECTED = {i: {"status": "done", "error": "", "name": f"j{i}", "size": i + 1} for i in range(3)} | \
           {3: {"status": "failed", "error": "ValueError: boom"}}


# --- Ray: one private local instance for every Ray job of this module ---------
@pytest.fixture(scope="module")
def ray_run(tmp_path_factory):
    ray = pytest.importorskip("ray")
    root = tmp_path_factory.mktemp("ray")
    toy = toy_jobs(root / "toy")
    points = point_jobs(root / "sweep")
    # no node has 64 GPUs: reported failed at once rather than waiting forever
    greedy = Job(99, write_job, ("g", 1), str(root / "greedy"), num_gpus=64)
    results = run(toy + points + [greedy], backend="ray", workers=2)
    return {"root": root, "results": results, "still_initialized": ray.is_initialized()}


# --- tests ------------------------------------------------------------------------
def test_local_in_process_and_spawned_processes_agree(tmp_path):
    one, two = tmp_path / "one", tmp_path / "two"
    assert run(toy_jobs(one), workers=1) == EXPECTED
    assert run(toy_jobs(two), workers=2) == EXPECTED
    files = tree(one)
    assert files == tree(two)
    assert files["points/002/sub/deeper/data.bin"] == bytes(range(256)) * 3
    assert files["points/003/partial.txt"] == b"before the error\n"      # written before it raised


def test_ray_gathers_the_same_files_and_results(tmp_path, ray_run):
    local = tmp_path / "local"
    assert run(toy_jobs(local), workers=1) == EXPECTED
    results = ray_run["results"]
    assert {k: results[k] for k in range(4)} == EXPECTED          # the failed job included
    assert tree(ray_run["root"] / "toy") == tree(local)           # same layout, same bytes
    assert not ray_run["still_initialized"]                       # the private instance was shut down


def test_ray_job_asking_for_more_than_the_local_instance_has_fails_at_once(ray_run):
    res = ray_run["results"][99]
    assert res["status"] == "failed" and "64 GPU(s)" in res["error"]
    assert not (ray_run["root"] / "greedy").exists()


def test_sweep_points_on_ray_match_the_local_backend(tmp_path, ray_run):
    local = tmp_path / "local"
    assert run(point_jobs(local), workers=1) == {10: {"status": "done", "error": ""}, 11: {"status": "done", "error": ""}}
    assert {k: ray_run["results"][k] for k in (10, 11)} == {10: {"status": "done", "error": ""},
                                                            11: {"status": "done", "error": ""}}
    remote = ray_run["root"] / "sweep"
    for i in range(2):
        for name in ("metrics.csv", "summary.csv"):
            a = (local / "points" / f"{i:03d}" / name).read_bytes()
            assert a == (remote / "points" / f"{i:03d}" / name).read_bytes(), (i, name)
    a, b = tree(local), tree(remote)
    assert sorted(a) == sorted(b)                                   # the same files
    assert [name for name in a if a[name] != b[name]] == []         # with the same bytes, all of them
    # the slower uplink takes longer in simulated time (the points are not mixed up)
    t = [(remote / "points" / f"{i:03d}" / "summary.csv").read_text().splitlines()[1] for i in range(2)]
    assert t[0] != t[1]


def test_ray_missing_says_how_to_install(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)       # `import ray` raises ImportError
    with pytest.raises(ConfigError, match="pip install") as err:
        run_jobs(toy_jobs(tmp_path), backend="ray")
    assert err.value.field == "--backend"
    assert not (tmp_path / "points").exists()


def test_bad_backend_or_workers():
    with pytest.raises(ConfigError, match="unknown backend"):
        run_jobs([], backend="dask")
    with pytest.raises(ConfigError, match="workers"):
        run_jobs([], workers=0)


def test_resources(monkeypatch, tiny_dict):
    import torch
    from sim.config import validate
    scn = validate(tiny_dict, "tiny.yaml")                  # device: cpu
    assert resources(scn) == (1.0, 0.0)
    assert resources(scn.model_copy(update={"device": "cuda"})) == (1.0, 1.0)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resources({"device": "auto"}) == (1.0, 1.0)
    assert resources({}) == (1.0, 1.0)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resources({"device": "auto"}) == (1.0, 0.0)
