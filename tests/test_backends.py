"""Execution backends (sim/study/backends.py): the local backend (in process and in
spawned processes) and Ray (one private local instance for the whole module)
write the same files and report the same results; failures become results; an
interruption stops the local workers (and reports them) and cancels Ray tasks."""
from __future__ import annotations

import sys
import time
from pathlib import Path

import pytest

from sim.study.backends import Job, resources, run_jobs
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
    """A sweep point (sim.study.sweep.run_point, whichever of its two signatures is there)."""
    import inspect
    import sim.study.sweep
    if "out" in inspect.signature(sim.study.sweep.run_point).parameters:    # run_point(base, overrides, out, quiet)
        return sim.study.sweep.run_point(base, overrides, out_dir, quiet)
    return sim.study.sweep.run_point(base, overrides, quiet, out_dir=out_dir)


def beating_job(name: str, seconds: float, beats: str, out_dir: str) -> dict:
    """Touch BEATS/NAME every 50 ms for ``seconds``; BEATS/NAME.stopped once it ends, however it ends."""
    beat = Path(beats) / name
    try:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            beat.write_text(f"{time.time()}\n")
            time.sleep(0.05)
        return {"status": "done", "error": ""}
    finally:
        (Path(beats) / f"{name}.stopped").write_text("")


def threads_job(out_dir: str) -> dict:
    import torch
    return {"status": "done", "error": "", "threads": torch.get_num_threads()}


def dying_job(out_dir: str) -> dict:
    import os
    os._exit(1)                     # as if killed (out of memory)


def late_dying_job(after_s: float, out_dir: str) -> dict:
    time.sleep(after_s)
    return dying_job(out_dir)


def interrupted_job(out_dir: str) -> dict:
    return {"status": "interrupted", "error": ""}


def toy_jobs(root: Path, **resources_) -> list[Job]:
    jobs = [Job(i, write_job, (f"j{i}", i + 1), str(root / "points" / f"{i:03d}"), **resources_) for i in range(3)]
    return jobs + [Job(3, raising_job, (), str(root / "points" / "003"), **resources_)]


def point_jobs(root: Path) -> list[Job]:
    return [Job(10 + i, point, (str(TINY), [*SET, f"network.uplink.bandwidth={bw}"], True),
                str(root / "points" / f"{i:03d}"), *resources({"device": "cpu"}))
            for i, bw in enumerate(BANDWIDTHS)]


def tree(root: Path) -> dict[str, bytes]:
    # host.yaml says what ran it (torch threads differ between backends); every results file must match
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file() and p.name != "host.yaml"}


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
    # nor a petabyte of memory: refused with the estimate before it is scheduled
    huge = Job(98, write_job, ("h", 1), str(root / "huge"), memory_bytes=10 ** 15)
    results = run(toy + points + [greedy, huge], backend="ray", workers=2)
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


def test_ray_job_needing_more_memory_than_any_node_offers_is_refused_with_the_estimate(ray_run):
    res = ray_run["results"][98]
    assert res["status"] == "failed"
    assert res["error"].startswith("the point needs at least 9.31e+05 GiB of memory (the estimate 4 * d * (n + 4) "
                                   "bytes of sim/learn/memory.py), more than the ")
    assert "that the local Ray instance offers tasks" in res["error"]
    assert not (ray_run["root"] / "huge").exists()


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


def test_gathered_files_land_whole_or_not_at_all(tmp_path, monkeypatch):
    from sim.study.backends import _write_files
    files = {"a.txt": b"a", "sub/b.bin": b"\x00" * 10, "done": b"ok\n"}
    _write_files(str(tmp_path / "p" / "000"), files)
    assert {p.relative_to(tmp_path / "p" / "000").as_posix(): p.read_bytes()
            for p in (tmp_path / "p" / "000").rglob("*") if p.is_file()} == files
    assert sorted(p.name for p in (tmp_path / "p").iterdir()) == ["000"]          # no staging folder left
    (tmp_path / "p" / "001").mkdir()                                                # an empty folder is replaced
    _write_files(str(tmp_path / "p" / "001"), files)
    assert (tmp_path / "p" / "001" / "sub" / "b.bin").read_bytes() == b"\x00" * 10
    # the driver fails half-way (disk full): nothing of the point appears
    real = Path.write_bytes

    def failing(self, data):
        if self.name.startswith("b.bin"):
            raise OSError(28, "No space left on device")
        return real(self, data)
    monkeypatch.setattr(Path, "write_bytes", failing)
    with pytest.raises(OSError):
        _write_files(str(tmp_path / "p" / "002"), files)
    assert sorted(p.name for p in (tmp_path / "p").iterdir()) == ["000", "001"]
    with pytest.raises(ValueError, match="outside"):
        _write_files(str(tmp_path / "p" / "003"), {"../escape": b""})


def test_a_task_lost_with_its_node_is_failed_with_the_node_error_and_the_retries():
    from sim.study.backends import _ray_error

    class NodeDiedError(Exception):
        pass
    res = _ray_error(NodeDiedError("Task failed due to the node (where this task was running) was dead.\nmore"),
                     retries=2)
    assert res == {"status": "failed", "error": "NodeDiedError: the node or worker running it was lost, 3 time(s) "
                   "(--retries 2): Task failed due to the node (where this task was running) was dead.\n"
                   "Task failed due to the node (where this task was running) was dead.\nmore"}
    with pytest.raises(ConfigError, match="--retries -1 is not allowed"):
        run_jobs([], retries=-1)


def test_point_resources_options(tmp_path):
    from sim.study.backends import check_point_resources
    from sim.study.sweep import RayOptions, run_sweep
    assert resources({"device": "cuda"}, gpus_per_point=0.25) == (1.0, 0.25)
    assert resources({"device": "cuda"}, gpus_per_point=2, cpus_per_point=4) == (4.0, 2.0)
    assert resources({"device": "cpu"}, gpus_per_point=0.25, cpus_per_point=2) == (2.0, 0.0)
    check_point_resources(0.5, 1, 0)
    for args, field in (((1.5, 1, 2), "--gpus-per-point"), ((0, 1, 2), "--gpus-per-point"),
                        ((1, 0, 2), "--cpus-per-point"), ((1, 2.5, 2), "--cpus-per-point"),
                        ((1, 1, -1), "--retries")):
        with pytest.raises(ConfigError) as err:
            check_point_resources(*args)
        assert err.value.field == field
    sweep = tmp_path / "s.yaml"
    sweep.write_text(f"name: s\nbase: {TINY}\naxes: {{seed: [0]}}\n")
    with pytest.raises(ConfigError, match="--gpus-per-point 1.5 is not allowed") as err:
        run_sweep(str(sweep), str(tmp_path / "out"), backend="ray", ray_options=RayOptions(gpus_per_point=1.5))
    assert err.value.file == str(sweep)
    assert not (tmp_path / "out").exists()


def test_resources(monkeypatch, tiny_dict):
    import torch
    from sim.study.config import validate
    scn = validate(tiny_dict, "tiny.yaml")                  # device: cpu
    assert resources(scn) == (1.0, 0.0)
    assert resources(scn.model_copy(update={"device": "cuda"})) == (1.0, 1.0)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resources({"device": "auto"}) == (1.0, 1.0)
    assert resources({}) == (1.0, 1.0)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resources({"device": "auto"}) == (1.0, 0.0)


# --- interruption ---------------------------------------------------------------
def beating_jobs(beats: Path) -> list[Job]:
    """Job 0 ends at once; jobs 1-3 beat for a minute (unless stopped)."""
    beats.mkdir(parents=True, exist_ok=True)
    return [Job(i, beating_job, (f"b{i}", 0.0 if i == 0 else 60.0, str(beats)), str(beats / "out" / str(i)))
            for i in range(4)]


def wait_until(cond, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def interrupt_after_first(beats: Path, results: dict):
    """on_done: record; on the first result, wait until job 1 is running, then Ctrl-C."""
    def on_done(key: int, result: dict) -> None:
        results[key] = result
        if len(results) == 1:
            wait_until(lambda: (beats / "b1").exists())
            raise KeyboardInterrupt
    return on_done


def still_beating(beats: Path, name: str, quiet_s: float = 1.0, windows: int = 10) -> bool:
    """Whether BEATS/NAME is still touched in every one of ``windows`` windows
    of ``quiet_s``: a task that was killed goes quiet within a few windows (a
    loaded machine can take more than one second to deliver a kill, and a
    single window then failed in CI); one that keeps running never does."""
    path = beats / name
    for _ in range(windows):
        before = path.stat().st_mtime_ns if path.exists() else None
        time.sleep(quiet_s)
        if not (path.exists() and path.stat().st_mtime_ns != before):
            return False
    return True


def test_a_job_returning_interrupted_stops_the_run(tmp_path):
    results: dict[int, dict] = {}
    jobs = [Job(0, interrupted_job, (), str(tmp_path / "0")), Job(1, write_job, ("j1", 1), str(tmp_path / "1"))]
    with pytest.raises(KeyboardInterrupt):
        run_jobs(jobs, workers=1, on_done=results.__setitem__)
    assert results == {0: {"status": "interrupted", "error": ""}}
    assert not (tmp_path / "1").exists()


def test_a_dead_local_worker_fails_its_job_and_the_others_go_on(tmp_path):
    jobs = [Job(0, dying_job, (), str(tmp_path / "0"))] + \
        [Job(i, write_job, (f"j{i}", 1), str(tmp_path / str(i))) for i in range(1, 4)]
    results = run(jobs, workers=2)
    assert results[0]["status"] == "failed" and "BrokenProcessPool" in results[0]["error"]
    # the jobs beside it in the broken pool run once more, alone, and finish
    assert [results[i]["status"] for i in (1, 2, 3)] == ["done"] * 3


def test_a_job_started_beside_a_dying_one_is_not_failed_with_it(tmp_path):
    """Job 0 dies after 2 s; jobs 1 and 2 start and finish beside it, and job 3 is
    in the pool when it breaks: job 3 runs again and finishes."""
    jobs = [Job(0, late_dying_job, (2.0,), str(tmp_path / "0")),
            Job(1, write_job, ("j1", 1), str(tmp_path / "1")), Job(2, write_job, ("j2", 1), str(tmp_path / "2")),
            Job(3, beating_job, ("b3", 4.0, str(tmp_path)), str(tmp_path / "3"))]
    results = run(jobs, workers=2)
    assert results[0]["status"] == "failed" and "BrokenProcessPool" in results[0]["error"]
    assert [results[i]["status"] for i in (1, 2, 3)] == ["done"] * 3


def test_local_workers_are_interrupted_and_reported(tmp_path):
    beats = tmp_path / "beats"
    results: dict[int, dict] = {}
    with pytest.raises(KeyboardInterrupt):
        run_jobs(beating_jobs(beats), workers=2, on_done=interrupt_after_first(beats, results))
    assert results == {0: {"status": "done", "error": ""}, 1: {"status": "interrupted", "error": ""}}
    assert (beats / "b1.stopped").exists()                   # it ran its finally (flushed) and returned
    assert not (beats / "b2").exists() and not (beats / "b3").exists()     # never started
    assert not still_beating(beats, "b1")


def test_ray_cancels_unfinished_tasks_when_interrupted(tmp_path, monkeypatch):
    ray = pytest.importorskip("ray")
    import logging
    from sim.study.backends import _driver_pythonpath
    assert not ray.is_initialized()
    ray.init(address="local", num_cpus=2, include_dashboard=False, object_store_memory=256 * 1024 ** 2,
             log_to_driver=False, logging_level=logging.ERROR,
             runtime_env={"env_vars": {"PYTHONPATH": _driver_pythonpath()}})
    try:
        cancelled = []
        real_cancel = ray.cancel

        def cancel(ref, *args, **kw):
            cancelled.append(kw.get("force"))
            return real_cancel(ref, *args, **kw)
        monkeypatch.setattr(ray, "cancel", cancel)
        beats = tmp_path / "beats"
        results: dict[int, dict] = {}
        with pytest.raises(KeyboardInterrupt):
            run_jobs(beating_jobs(beats), backend="ray", on_done=interrupt_after_first(beats, results))
        assert cancelled == [True, True, True]                 # jobs 1-3, forcefully
        assert results[0] == {"status": "done", "error": ""}
        assert {k: r["status"] for k, r in results.items() if k} == {1: "interrupted", 2: "interrupted",
                                                                     3: "interrupted"}
        assert ray.is_initialized()                            # a connection opened before is left open
        assert not any(still_beating(beats, f"b{i}") for i in (1, 2, 3))   # no task keeps running
        assert not (beats / "out" / "1").exists()              # nothing gathered from a cancelled task
    finally:
        ray.shutdown()


def test_local_worker_processes_share_the_cores_out_as_torch_threads(tmp_path):
    """n processes with every core each would oversubscribe the machine."""
    import os
    results = {}
    jobs = [Job(i, threads_job, (), str(tmp_path / f"j{i}")) for i in range(2)]
    run_jobs(jobs, workers=2, on_done=results.__setitem__)
    assert [results[i]["threads"] for i in range(2)] == [max(1, (os.cpu_count() or 1) // 2)] * 2


def test_each_spawned_point_records_its_share_of_the_cores_as_torch_threads(tmp_path):
    """Two local processes on this machine: each sets cores // 2 torch threads (at least 1),
    and a point's host.yaml says so; in-process, the driver's own thread count."""
    import os

    import torch
    import yaml
    assert run(point_jobs(tmp_path / "two"), workers=2) == {10: {"status": "done", "error": ""},
                                                             11: {"status": "done", "error": ""}}
    for i in (0, 1):
        host = yaml.safe_load((tmp_path / "two" / "points" / f"{i:03d}" / "host.yaml").read_text())
        assert host["torch_threads"] == max(1, (os.cpu_count() or 1) // 2) and host["device"] == "cpu"
    assert run(point_jobs(tmp_path / "one"), workers=1)[10]["status"] == "done"
    host = yaml.safe_load((tmp_path / "one" / "points" / "000" / "host.yaml").read_text())
    assert host["torch_threads"] == torch.get_num_threads()
