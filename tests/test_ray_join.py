"""Joining a Ray cluster (sim/study/rayconnect.py) when it cannot be done, and what
travels to the nodes with the tasks (sim/study/shipping.py, sim/study/inputs.py):
no cluster is started here (tests/test_ray_cluster.py starts them)."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from sim.errors import ConfigError
from sim.study.backends import Job
from sim.study.inputs import local_path, located, scenario_inputs
from sim.study.shipping import FILES_DIR, INDEX, MissingInput, node_paths, runtime_env_for

REPO = Path(__file__).resolve().parents[1]
TINY = REPO / "scenarios" / "tiny.yaml"


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --- what travels ----------------------------------------------------------------
def test_the_paths_a_scenario_reads(tmp_path, write_scenario, tiny_dict):
    from sim.study.config import load_scenario
    (tmp_path / "up.csv").write_text("time_s,bandwidth_bps\n0,1e9\n")
    tiny_dict["network"]["uplink"] = {"trace": "up.csv", "latency": "5 ms"}
    tiny_dict["data"]["root"] = str(tmp_path / "data")
    path = write_scenario(tiny_dict)
    scn = load_scenario(path)
    assert scenario_inputs(scn, path) == [("base", str(path)), ("network.uplink.trace", str(tmp_path / "up.csv")),
                                          ("data.root", str(tmp_path / "data"))]


def test_runtime_env_sends_the_code_and_every_needed_path_once(tmp_path):
    trace = tmp_path / "trace.csv"
    trace.write_text("time_s,bandwidth_bps\n0,1e9\n")
    data = tmp_path / "data"
    (data / "sub").mkdir(parents=True)
    (data / "sub" / "x.bin").write_bytes(b"x" * 2000)
    plugin = tmp_path / "my_plugin.py"
    plugin.write_text("X = 1\n")
    jobs = [Job(i, print, (), str(tmp_path / str(i)),
                paths=(("base", str(TINY)), ("network.uplink.trace", str(trace)), ("data.root", str(data))))
            for i in range(3)]
    jobs.append(Job(3, print, (), "", paths=(("data.root", str(tmp_path / "only-on-the-nodes")),)))
    ship = runtime_env_for(jobs, extra_paths=[str(plugin)], max_bytes=1000)
    try:
        root = ship.staging
        assert ship.runtime_env["working_dir"] == str(root)
        for name in ("sim", "algorithms", "topologies", "analysis", "run_sim.py"):
            assert (root / name).resolve() == (REPO / name).resolve()          # the driver's own commsim
        index = json.loads((root / FILES_DIR / INDEX).read_text())
        assert index == ship.index
        sent = {p: (root / rel).resolve() for p, rel in index.items()}
        assert sent[str(TINY)] == TINY.resolve() and sent[str(trace)] == trace and sent[str(plugin)] == plugin
        assert len(set(index.values())) == 3                                     # each path once
        assert ship.not_sent == [
            ("data.root", str(data), "0 MiB is more than the 0 MiB sent with the tasks"),
            ("data.root", str(tmp_path / "only-on-the-nodes"), "it does not exist on the driver")]

        # on a node: the task's working directory is what was sent
        os.chdir(root)
        try:
            where = node_paths([("base", str(TINY)), ("network.uplink.trace", str(trace)),
                                ("data.root", str(data))], "node 1234")
            assert where[str(trace)] == str(root / index[str(trace)])
            assert str(data) not in where                    # not sent, but this "node" has it at the same path
            with pytest.raises(MissingInput) as err:
                node_paths([("data.root", str(tmp_path / "only-on-the-nodes"))], "node 1234")
        finally:
            os.chdir(REPO)
        assert str(err.value).startswith(f"data.root: {tmp_path / 'only-on-the-nodes'} is not on this node "
                                         "(node 1234) and was not sent with the task")
    finally:
        ship.close()
    assert not root.exists()


def test_a_point_reads_the_copies_but_records_the_drivers_paths(tmp_path, tiny_dict, write_scenario):
    """load_scenario through a mapping writes the same resolved scenario as without one."""
    from sim.study.config import load_scenario
    (tmp_path / "up.csv").write_text("time_s,bandwidth_bps\n0,1e9\n5,1e8\n")
    tiny_dict["network"]["uplink"] = {"trace": "up.csv", "latency": "5 ms"}
    path = write_scenario(tiny_dict)
    here = load_scenario(path).dump()
    copies = tmp_path / "node"
    copies.mkdir()
    os.replace(path, copies / "s.yaml")                      # the driver's files are gone "on the node"
    os.replace(tmp_path / "up.csv", copies / "up.csv")
    with located({str(path): str(copies / "s.yaml"), str(tmp_path / "up.csv"): str(copies / "up.csv")}):
        assert local_path(tmp_path / "up.csv") == copies / "up.csv"
        there = load_scenario(path).dump()
    assert there == here and there["network"]["uplink"]["trace"] == str(tmp_path / "up.csv")
    assert local_path(tmp_path / "up.csv") == tmp_path / "up.csv"               # outside the block: itself
    with located({str(tmp_path / "d"): str(copies)}):
        assert local_path(tmp_path / "d" / "up.csv") == copies / "up.csv"       # inside a folder that was sent


# --- joining: what fails, at which address, and the fix ---------------------------------
@pytest.fixture(autouse=True)
def loopback_stays(monkeypatch):
    """Ray rewrites 127.0.0.1 into this machine's network address unless it is told
    that this machine is a single-node setup; every address here is loopback."""
    monkeypatch.setenv("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    pytest.importorskip("ray")
    import ray._private.ray_constants as constants
    monkeypatch.setattr(constants, "ENABLE_RAY_CLUSTER", False)


def join(address: str, timeout: float = 5.0):
    from sim.study.rayconnect import connect
    start = time.monotonic()
    with pytest.raises(ConfigError) as err:
        connect(address, timeout)
    assert err.value.field == "--address"
    return err.value.message, time.monotonic() - start


def test_nothing_listening_is_said_at_once():
    port = closed_port()
    msg, took = join(f"127.0.0.1:{port}")
    assert msg.startswith(f"cannot reach the Ray cluster at 127.0.0.1:{port}") and "connection refused" in msg
    assert took < 5


def test_an_address_that_never_answers_is_given_up_at_the_deadline():
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(8)
    port = srv.getsockname()[1]
    held = []
    stop = threading.Event()

    def accept():                       # accepts and says nothing
        srv.settimeout(0.2)
        while not stop.is_set():
            try:
                held.append(srv.accept()[0])
            except OSError:
                pass
    t = threading.Thread(target=accept, daemon=True)
    t.start()
    try:
        msg, took = join(f"127.0.0.1:{port}", timeout=3.0)
    finally:
        stop.set()
        t.join()
        for c in held:
            c.close()
        srv.close()
    assert f"the Ray cluster at 127.0.0.1:{port} did not answer" in msg
    assert took < 3.0 + 6.0                            # the deadline, plus starting the probe


def test_token_mode_without_a_token_is_refused_before_ray_is_asked(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("RAY_AUTH_MODE", "token")
    monkeypatch.delenv("RAY_AUTH_TOKEN", raising=False)
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(tmp_path / "missing"))
    msg, took = join(f"127.0.0.1:{closed_port()}")
    assert msg.startswith("RAY_AUTH_MODE=token but no token was found to join 127.0.0.1:")
    assert "RAY_AUTH_TOKEN_PATH" in msg and "~/.ray/auth_token" in msg and took < 1


@pytest.mark.parametrize("address, says", [
    ("nonsense", "'nonsense' is not an address; allowed: auto, HOST:PORT"),
    ("ray://nohost", "is not an address; allowed: auto, HOST:PORT"),
])
def test_a_malformed_address(address, says, monkeypatch):
    monkeypatch.setitem(sys.modules, "grpc", sys.modules.get("grpc") or type(sys)("grpc"))
    msg, _ = join(address)
    assert says in msg


def test_ray_client_without_its_extra_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "grpc", None)
    msg, _ = join("ray://127.0.0.1:10001")
    assert msg.startswith("ray://127.0.0.1:10001 is a Ray Client address, which needs Ray Client: pip install "
                          "'ray[client]'")


def test_the_sweep_cli_says_it_in_one_line_and_writes_nothing(tmp_path):
    pytest.importorskip("ray")
    sweep = tmp_path / "s.yaml"
    sweep.write_text(f"name: s\nbase: {TINY}\naxes: {{seed: [0, 1]}}\n")
    port = closed_port()
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, "run_sim.py", "sweep", str(sweep), "--out", str(out), "--backend", "ray",
                           "--address", f"127.0.0.1:{port}"], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        f"error: {sweep}: --address: cannot reach the Ray cluster at 127.0.0.1:{port}: connection refused: nothing "
        "listens there; start the head (`ray start --head`), or give the address it printed (auto, HOST:PORT, "
        "ray://HOST:10001)"]
    assert not out.exists()
