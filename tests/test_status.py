"""A run's status says what happened: every worker down is a stall (or a wait
for the first rejoin), a round_timeout stall names the times that exceeded it,
and a diverged run stops at its round (tests/test_cli.py checks the CLI side)."""
from __future__ import annotations

from pathlib import Path

from sim.study.config import load_scenario
from sim.engine import build_world, run_algorithm, summarize

TINY = Path(__file__).resolve().parents[1] / "scenarios" / "tiny.yaml"
SGD = "algorithms=[{name: sgd, kind: sgd, lr: 0.1}]"


def run(*overrides: str):
    scn = load_scenario(TINY, [SGD, "stop.on_target=false", "stop.max_rounds=20", "eval_every=5", *overrides])
    world = build_world(scn, 0)
    phases: list[dict] = []
    result = run_algorithm(world, scn.algorithms[0], on_phase=phases.append)
    return world, result, summarize(result, scn.stop.target_accuracy), phases


def test_every_worker_down_from_the_start_is_stalled_not_done():
    crash = ", ".join(f"{{worker: {i}, crash_at: 0 s}}" for i in range(4))
    _, result, summary, phases = run(f"failures=[{crash}]")
    assert summary["status"] == "stalled" and summary["final_round"] == 0
    assert "every worker is down and none rejoins" in result.stalled
    assert phases == []        # no round was run (before: 20 empty rounds at t = 0, status done)


def test_every_worker_down_waits_for_the_first_rejoin():
    """Workers 0-2 down for good, worker 3 back at 0.5 s: the first round starts
    at 0.5 s (it first pulls the parameters), and training goes on with worker 3."""
    crash = ", ".join(f"{{worker: {i}, crash_at: 0 s}}" for i in range(3))
    _, result, summary, phases = run(f"failures=[{crash}, {{worker: 3, crash_at: 0 s, rejoin_at: 0.5 s}}]")
    assert summary["status"] == "done" and summary["final_round"] == 20
    assert phases[0]["start_s"] == 0.5 and all(p["arrived"] == 1 for p in phases)


def test_a_round_timeout_stall_names_the_timeout_compute_and_transfer_times():
    world, result, summary, _ = run("round_timeout=8 ms")
    assert summary["status"] == "stalled"
    # the closed form, each message alone on its path: downlink latency 5 ms (server NIC 0 ms);
    # upload 5 ms + 8 * (4 d + 64 header) bytes / 1 Gbps (the bottleneck of uplink and server NIC)
    d = world.model.d
    nbytes = 4 * d + 64
    up = 0.005 + 8 * nbytes / 1e9
    comp = world.step_s[0]
    total = 0.005 + comp + up
    msg = result.stalled
    assert "no upload arrived in 10 consecutive rounds" in msg
    assert "round_timeout = 8 ms is shorter than any worker's round" in msg
    assert f"needs at least {total * 1e3:.4g} ms" in msg
    assert f"download latency 5 ms + compute {comp * 1e9:.4g} ns + upload {up * 1e3:.4g} ms" in msg
    assert f"for {nbytes:,} bytes" in msg


def test_a_round_timeout_stall_from_contention_says_so():
    """Alone, a worker's round fits in 10.5 ms (10.39 ms); four workers sharing a
    200 Mbps server NIC do not, and the message says that the links are shared."""
    _, result, summary, _ = run("round_timeout=10.5 ms", "network.server.bandwidth=200 Mbps",
                                "network.uplink.bandwidth=100 Gbps", "network.downlink.bandwidth=100 Gbps")
    assert summary["status"] == "stalled"
    assert "alone on its links the quickest worker, w0, would need 10.39 ms" in result.stalled
    assert "contention" in result.stalled and "round_timeout = 10.5 ms" in result.stalled
