"""A Ray cluster of several nodes on this machine, for the tests: ``ray.cluster_utils.Cluster`` in a child process.

    with LocalCluster(nodes=3, auth=True) as cluster:
        cluster.address          # "127.0.0.1:PORT", the head's GCS
        cluster.env()            # the environment of a driver that joins it (token included, or a wrong one)
        cluster.node_ids         # [head, worker 1, worker 2]
        cluster.node_tmp(1)      # node 1's TMPDIR: the job folders its tasks make are there
        cluster.kill(1)          # every process of node 1 killed (SIGKILL), as when a machine is lost

Every node has 1 CPU, an 80 MiB object store, no dashboard, and the address
127.0.0.1, to which Ray then binds its servers (nothing listens on another
interface).  Ray rewrites a driver's ``127.0.0.1`` into the machine's network
address unless ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`` (the "single-machine"
switch of ``ray._private.ray_constants``), which :meth:`LocalCluster.env`
sets.  Everything the cluster writes is under one fresh folder in /tmp (short:
Ray's socket paths must stay under 108 characters), given to the cluster as
``HOME``, ``TMPDIR`` and ``RAY_TMPDIR``; so the user's ``~/.ray/auth_token``
and ``/tmp/ray`` are never touched.  The cluster is shut down at the end
however the block ends; the processes it leaves (none, normally) are found
by that folder in their command line and killed by their pid.
"""
from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
FAST_HEALTH = {"health_check_initial_delay_ms": 0, "health_check_period_ms": 500,
               "health_check_timeout_ms": 500, "health_check_failure_threshold": 3}


def _child(spec: dict) -> None:
    """Runs in the child process: start the nodes, print their ids, obey stdin."""
    from ray.cluster_utils import Cluster
    cluster = Cluster(shutdown_at_exit=True)
    nodes = []
    try:
        for k in range(spec["nodes"]):
            tmp = Path(spec["dir"]) / f"node{k}"
            tmp.mkdir()
            args = dict(num_cpus=1, object_store_memory=80 * 1024 ** 2, node_ip_address="127.0.0.1",
                        include_dashboard=False, env_vars={"TMPDIR": str(tmp)})
            if k == 0:
                args["_system_config"] = FAST_HEALTH
            nodes.append(cluster.add_node(**args))
        cluster.wait_for_nodes()
        print(json.dumps({"address": cluster.address, "nodes": [n.node_id for n in nodes]}), flush=True)
        for line in sys.stdin:
            cmd = line.split()
            if cmd[:1] == ["kill"]:
                cluster.remove_node(nodes[int(cmd[1])], allow_graceful=False)
                print(json.dumps({"killed": int(cmd[1])}), flush=True)
            elif cmd[:1] == ["quit"]:
                break
    finally:
        cluster.shutdown()


def _kill_leftovers(folder: str) -> list[int]:
    """Kill (by pid) every process whose command line names ``folder``."""
    found = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit() or int(pid) == os.getpid():
            continue
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if folder in cmd:
            found.append(int(pid))
    for pid in found:
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass
    return found


class LocalCluster:
    def __init__(self, nodes: int = 3, auth: bool = False, start_timeout: float = 120.0) -> None:
        self.nodes, self.auth, self.start_timeout = nodes, auth, start_timeout
        self.dir = tempfile.mkdtemp(prefix="csray-", dir="/tmp")
        self.home = Path(self.dir) / "home"
        self.token = secrets.token_hex(32) if auth else None
        self.proc: subprocess.Popen | None = None
        self.address = ""
        self.node_ids: list[str] = []

    def base_env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
        env |= {"HOME": str(self.home), "RAY_TMPDIR": self.dir, "TMPDIR": self.dir,
                "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_USAGE_STATS_ENABLED": "0",
                "RAY_AUTH_MODE": "token" if self.auth else "disabled",
                # the tests' job functions are importable on the nodes (commsim itself travels with the tasks)
                "PYTHONPATH": str(REPO / "tests")}
        return env

    def env(self, token: str | None = "cluster", mode: str | None = "default") -> dict[str, str]:
        """A driver's environment: the cluster's token in RAY_AUTH_TOKEN (``token="cluster"``),
        another one, or none (``None``); ``mode`` sets RAY_AUTH_MODE (``None``: unset)."""
        env = self.base_env()
        env.pop("PYTHONPATH")
        if mode != "default":
            env.pop("RAY_AUTH_MODE")
            if mode is not None:
                env["RAY_AUTH_MODE"] = mode
        if token is not None and self.auth:
            env["RAY_AUTH_TOKEN"] = self.token if token == "cluster" else token
        return env

    def node_tmp(self, k: int) -> Path:
        return Path(self.dir) / f"node{k}"

    def __enter__(self) -> "LocalCluster":
        self.home.mkdir()
        if self.auth:
            (self.home / ".ray").mkdir()
            (self.home / ".ray" / "auth_token").write_text(self.token)
        spec = {"nodes": self.nodes, "dir": self.dir}
        try:
            self.proc = subprocess.Popen([sys.executable, __file__, json.dumps(spec)], stdin=subprocess.PIPE,
                                         stdout=subprocess.PIPE, stderr=open(Path(self.dir) / "cluster.log", "w"),
                                         env=self.base_env(), cwd=self.dir, text=True)
            info = self._read(self.start_timeout)
            self.address, self.node_ids = info["address"], info["nodes"]
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def _read(self, timeout: float) -> dict:
        import select
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            ready, _, _ = select.select([self.proc.stdout], [], [], 0.5)
            if ready:
                line = self.proc.stdout.readline()
                if not line:
                    break
                if line.startswith("{"):
                    return json.loads(line)
            elif self.proc.poll() is not None:
                break
        log = (Path(self.dir) / "cluster.log").read_text(errors="replace")[-3000:]
        raise RuntimeError(f"the test cluster did not answer within {timeout:g} s:\n{log}")

    def kill(self, k: int) -> None:
        assert 0 < k < self.nodes, "the head stays"
        self.proc.stdin.write(f"kill {k}\n")
        self.proc.stdin.flush()
        assert self._read(60.0) == {"killed": k}

    def task_pids(self, prefix: str = "ray::commsim-job") -> list[int]:
        """The processes of this cluster running a task named ``prefix...`` (Ray
        titles a worker process by its task; its parent is its node's raylet)."""
        out = []
        for pid in os.listdir("/proc"):
            if not pid.isdigit():
                continue
            try:
                cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
                ppid = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1]
                parent = Path(f"/proc/{ppid}/cmdline").read_bytes().decode(errors="replace")
            except (OSError, IndexError):
                continue
            if cmd.startswith(prefix) and self.dir in parent:
                out.append(int(pid))
        return out

    def __exit__(self, *exc) -> None:
        try:
            if self.proc is not None and self.proc.poll() is None:
                try:
                    self.proc.stdin.write("quit\n")
                    self.proc.stdin.close()
                except OSError:
                    pass
                try:
                    self.proc.wait(timeout=60)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait()
        finally:
            _kill_leftovers(self.dir)
            shutil.rmtree(self.dir, ignore_errors=True)


if __name__ == "__main__":
    _child(json.loads(sys.argv[1]))
