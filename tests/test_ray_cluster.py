"""Sweeps on a real Ray cluster of three nodes on this machine (tests/raycluster.py:
ray.cluster_utils.Cluster, every server bound to 127.0.0.1, token authentication
on), driven as a user drives them: ``run_sim.py sweep --backend ray --address``.

In the default run: the sweep spreads over the three nodes and writes the same
files as the local backend.  Marked slow (each starts its own cluster): a node
killed mid-sweep loses no point and repeats none, and with --retries 0 its point
is failed with the node's error; a missing or wrong token gives one clear
message; killing the driver cancels the cluster's tasks; the nodes run the
driver's own code and read the files it sent.
"""
from __future__ import annotations

import csv
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

pytest.importorskip("ray")

from raycluster import REPO, LocalCluster  # noqa: E402  (tests/ is on the path)

TINY = REPO / "scenarios" / "tiny.yaml"
DONE_LINE = re.compile(r"^point (\d{3}) done \(full[^)]*\) on node ([0-9a-f]{12})$", re.M)


def write_sweep(folder: Path, seeds: list[int], max_rounds: int = 4, bandwidths: list[str] | None = None) -> Path:
    axes: dict = {"seed": seeds}
    if bandwidths:
        axes["network.uplink.bandwidth"] = bandwidths
    spec = {"name": "nodes", "base": str(TINY), "axes": axes,
            "set": {"stop.max_rounds": max_rounds, "eval_every": 2, "stop.on_target": False}}
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "sweep.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def sweep_cmd(sweep: Path, out: Path, address: str, *extra: str) -> list[str]:
    return [sys.executable, str(REPO / "run_sim.py"), "sweep", str(sweep), "--out", str(out), "--backend", "ray",
            "--address", address, *extra]


def run_driver(cmd: list[str], env: dict, timeout: float = 400) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL)


def tree(root: Path) -> dict[str, bytes]:
    """Every file, but the two that differ by design: the done marker's run id, host.yaml's threads."""
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file() and p.name not in ("done", "host.yaml", ".lock")}


def statuses(out: Path) -> dict[str, set[str]]:
    with (out / "sweep_summary.csv").open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    found: dict[str, set[str]] = {}
    for r in rows:
        found.setdefault(r["point"], set()).add(r["point_status"])
    return found


# --- in the default run ------------------------------------------------------
def test_a_sweep_spreads_over_three_nodes_and_writes_what_the_local_backend_writes(tmp_path):
    from sim.study.sweep import run_sweep
    sweep = write_sweep(tmp_path, seeds=[0, 1, 2], bandwidths=["100 Mbps", "1 Gbps"])
    local = tmp_path / "local"
    assert run_sweep(str(sweep), str(local), quiet=True) == 0
    with LocalCluster(nodes=3, auth=True) as cluster:
        out = tmp_path / "cluster"
        proc = run_driver(sweep_cmd(sweep, out, cluster.address), cluster.env())
        assert proc.returncode == 0, proc.stderr
        ran = dict(DONE_LINE.findall(proc.stderr))
        # the three full points ran once each, one on every node (the replays run in the driver)
        assert sorted(ran) == ["000", "002", "004"], proc.stderr
        assert sorted(ran.values()) == sorted(n[:12] for n in cluster.node_ids)
    a, b = tree(local), tree(out)
    for name in a:                      # a replay names its source folder, which is the sweep's own
        if name.endswith("replay.yaml"):
            a[name] = a[name].replace(str(local).encode(), str(out).encode())
    assert sorted(a) == sorted(b)
    assert [name for name in a if a[name] != b[name]] == []          # byte for byte, sweep_summary.csv included
    for i in range(6):
        marker = yaml.safe_load((out / "points" / f"{i:03d}" / "done").read_text())
        assert marker["hash"] == yaml.safe_load((local / "points" / f"{i:03d}" / "done").read_text())["hash"]
    for i in (0, 2, 4):                 # each task ran torch on the one CPU it was given
        assert yaml.safe_load((out / "points" / f"{i:03d}" / "host.yaml").read_text())["torch_threads"] == 1
    assert not list((out / "points").glob(".*"))                      # no half-gathered folder left


# --- slow ----------------------------------------------------------------------
@pytest.mark.slow
def test_a_node_killed_mid_sweep_loses_no_point_and_repeats_none(tmp_path):
    sweep = write_sweep(tmp_path, seeds=list(range(6)), max_rounds=40)
    with LocalCluster(nodes=3, auth=True) as cluster:
        out = tmp_path / "cluster"
        driver = subprocess.Popen(sweep_cmd(sweep, out, cluster.address), cwd=REPO, env=cluster.env(),
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            deadline = time.monotonic() + 300
            while not list(cluster.node_tmp(1).glob("commsim-job*")):     # a point is running on node 1
                assert driver.poll() is None and time.monotonic() < deadline, driver.communicate()
                time.sleep(0.1)
            cluster.kill(1)
            _, err = driver.communicate(timeout=400)
        finally:
            if driver.poll() is None:
                driver.kill()
        assert driver.returncode == 0, err
        # the point killed on node 1 left its job folder there; it ran again, on another node
        lost = [int(p.name.split("-")[1].removeprefix("job")) for p in cluster.node_tmp(1).glob("commsim-job*")]
        assert len(lost) == 1
        ran = DONE_LINE.findall(err)
        assert sorted(i for i, _ in ran) == [f"{i:03d}" for i in range(6)]          # each point done once
        assert dict(ran)[f"{lost[0]:03d}"] != cluster.node_ids[1][:12]
        assert statuses(out) == {f"{i:03d}": {"done"} for i in range(6)}
        markers = [yaml.safe_load((out / "points" / f"{i:03d}" / "done").read_text()) for i in range(6)]
        assert len({m["run"] for m in markers}) == 6

        # the same command again finds every point done and runs none
        again = run_driver(sweep_cmd(sweep, out, cluster.address), cluster.env())
        assert again.returncode == 0 and "6 already done" in again.stderr and "done (full" not in again.stderr

        # with --retries 0, the point whose node is lost is failed with the node's error
        out0 = tmp_path / "retries0"
        sweep0 = write_sweep(tmp_path / "s0", seeds=[10, 11], max_rounds=40)
        driver = subprocess.Popen(sweep_cmd(sweep0, out0, cluster.address, "--retries", "0"), cwd=REPO,
                                  env=cluster.env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            deadline = time.monotonic() + 300
            while not list(cluster.node_tmp(2).glob("commsim-job*")):
                assert driver.poll() is None and time.monotonic() < deadline, driver.communicate()
                time.sleep(0.1)
            cluster.kill(2)
            _, err = driver.communicate(timeout=400)
        finally:
            if driver.poll() is None:
                driver.kill()
    assert driver.returncode == 1, err
    found = statuses(out0)
    assert sorted(found.values(), key=sorted) == [{"done"}, {"failed"}]
    failed = next(p for p, s in found.items() if s == {"failed"})
    assert re.search(rf"point {failed} failed \(full\): \w+Error: the node or worker running it was lost, 1 time\(s\) "
                     r"\(--retries 0\)", err), err
    assert not (out0 / "points" / failed / "done").exists()


@pytest.mark.slow
def test_a_missing_or_wrong_token_gives_one_clear_message_and_writes_nothing(tmp_path):
    sweep = write_sweep(tmp_path, seeds=[0])
    with LocalCluster(nodes=1, auth=True) as cluster:
        cases = {
            # RAY_AUTH_MODE unset: Ray sends no token to an explicit address, even with ~/.ray/auth_token there
            "unset": (cluster.env(token=None, mode=None), "requires token authentication and this driver sent no "
                      "token (a token is in"),
            "wrong": (cluster.env(token="0" * 64), "refused the token from RAY_AUTH_TOKEN (InvalidAuthToken"),
            "none": ({**cluster.env(token=None), "HOME": str(tmp_path / "nohome")},
                     "RAY_AUTH_MODE=token but no token was found"),
        }
        for name, (env, says) in cases.items():
            out = tmp_path / name
            start = time.monotonic()
            proc = run_driver(sweep_cmd(sweep, out, cluster.address, "--connect-timeout", "5"), env, timeout=120)
            took = time.monotonic() - start
            assert proc.returncode == 2, (name, proc.stderr)
            lines = proc.stderr.strip().splitlines()
            assert len(lines) == 1 and lines[0].startswith("error: ") and says in lines[0], (name, proc.stderr)
            assert cluster.address in lines[0] or name == "none"
            assert "RAY_AUTH_TOKEN" in lines[0] and "~/.ray/auth_token" in lines[0]      # the fix
            assert not out.exists(), name
            assert took < 60, (name, took)
        # --address auto finds the cluster started on this machine and, with RAY_AUTH_MODE unset, sends the
        # token of ~/.ray/auth_token (as ray.init does)
        proc = run_driver(sweep_cmd(sweep, tmp_path / "auto", "auto"), cluster.env(token=None, mode=None))
        assert proc.returncode == 0, proc.stderr


@pytest.mark.slow
def test_killing_the_driver_cancels_the_clusters_tasks(tmp_path):
    sweep = write_sweep(tmp_path, seeds=list(range(4)), max_rounds=400)
    with LocalCluster(nodes=2, auth=True) as cluster:
        out = tmp_path / "cluster"
        driver = subprocess.Popen(sweep_cmd(sweep, out, cluster.address), cwd=REPO, env=cluster.env(),
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            deadline = time.monotonic() + 300
            while len(cluster.task_pids()) < 2:                 # a point running on each node
                assert driver.poll() is None and time.monotonic() < deadline, driver.communicate()
                time.sleep(0.2)
            driver.send_signal(signal.SIGTERM)
            _, err = driver.communicate(timeout=120)
        finally:
            if driver.poll() is None:
                driver.kill()
        assert driver.returncode == 130, err
        deadline = time.monotonic() + 30
        while cluster.task_pids():
            assert time.monotonic() < deadline, "tasks still running after the driver stopped"
            time.sleep(0.2)
        assert "interrupted" in err and "Traceback" not in err
        assert not any((out / "points" / f"{i:03d}" / "done").exists() for i in range(4))

        # a driver killed outright (kill -9) takes its tasks with it too: Ray ends a dead driver's job
        driver = subprocess.Popen(sweep_cmd(sweep, tmp_path / "killed", cluster.address), cwd=REPO,
                                  env=cluster.env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            deadline = time.monotonic() + 300
            while len(cluster.task_pids()) < 2:
                assert driver.poll() is None and time.monotonic() < deadline
                time.sleep(0.2)
        finally:
            driver.kill()
            driver.wait()
        deadline = time.monotonic() + 30
        while cluster.task_pids():
            assert time.monotonic() < deadline, "tasks still running after the driver was killed"
            time.sleep(0.2)


def where_job(trace: str, out_dir: str) -> dict:
    """On a node: where commsim was imported from and where the trace is read."""
    import sim
    from sim.study.inputs import local_path
    here = local_path(trace)
    return {"status": "done", "error": "", "sim": sim.__file__, "trace": str(here), "text": here.read_text()}


DRIVER = """
import json, sys
from sim.study.backends import Job, run_jobs
from test_ray_cluster import where_job
trace, missing, address, out = sys.argv[1:5]
results = {}
jobs = [Job(0, where_job, (trace,), out + "/0", paths=(("network.uplink.trace", trace),)),
        Job(1, where_job, (missing,), out + "/1", paths=(("data.root", missing),))]
run_jobs(jobs, backend="ray", address=address, on_done=results.__setitem__)
print(json.dumps(results))
"""


@pytest.mark.slow
def test_the_nodes_run_the_drivers_code_and_read_the_files_it_sent(tmp_path):
    trace = tmp_path / "trace.csv"
    trace.write_text("time_s,bandwidth_bps\n0,1e9\n")
    with LocalCluster(nodes=2, auth=True) as cluster:
        env = {**cluster.env(), "PYTHONPATH": f"{REPO}{os.pathsep}{REPO / 'tests'}"}
        proc = run_driver([sys.executable, "-c", DRIVER, str(trace), str(tmp_path / "nowhere"), cluster.address,
                           str(tmp_path / "out")], env)
    assert proc.returncode == 0, proc.stderr
    results = json.loads(proc.stdout.strip().splitlines()[-1])
    sent = results["0"]
    assert sent["status"] == "done" and sent["text"] == trace.read_text()
    for key in ("sim", "trace"):                # the copies Ray unpacked on the node, not the driver's files
        assert "runtime_resources" in sent[key] and not sent[key].startswith(str(REPO)), sent
    assert sent["trace"].endswith("trace.csv") and sent["trace"] != str(trace)
    missing = results["1"]
    assert missing["status"] == "failed"
    assert missing["error"].startswith(f"data.root: {tmp_path / 'nowhere'} is not on this node (node ")
    assert "was not sent with the task" in missing["error"]
