"""Stopping a sweep stops it (SIGINT, SIGTERM, kill -9 of the driver: no
orphans), a rerun resumes, and one sweep at a time per folder (the lock).

The signal tests run ``run_sim.py sweep`` as a real subprocess in its own
session (its process group is killed in cleanup, whatever happens)."""
from __future__ import annotations

import csv
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

import run_sim

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "scenarios" / "tiny.yaml"
WAIT_S = 120          # bound on any wait for a subprocess (starting one imports torch: seconds)


def sweep_file(tmp_path: Path, rounds: list[int] | None = None, seeds: list[int] | None = None) -> Path:
    """Tiny, one algorithm, no replays: one point per entry of ``rounds``
    (stop.max_rounds) or of ``seeds`` (then 100,000 rounds: until stopped)."""
    axes = {"stop.max_rounds": rounds} if rounds else {"seed": seeds}
    spec = {"name": "s", "base": str(TINY), "axes": axes, "replay": "off",
            "set": {"eval_every": 5, "stop.on_target": False, "stop.max_rounds": 100_000,
                    "algorithms": [{"name": "sgd", "kind": "sgd", "lr": 0.1}]}}
    p = tmp_path / "sweep.yaml"
    p.write_text(yaml.safe_dump(spec))
    return p


def _sigint_default() -> None:
    """In the child before exec: SIGINT back to its default.  A test run started in
    the background by a non-interactive shell (as CI may be) inherits SIGINT
    ignored, and Python installs no KeyboardInterrupt handler for an ignored
    SIGINT: Ctrl-C would be lost, as it is for any `cmd &` in a script."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@pytest.fixture
def start(tmp_path):
    """start(sweep, out, *args) -> a running ``run_sim.py sweep`` (killed with its group at the end)."""
    procs: list[subprocess.Popen] = []

    def go(sweep: Path, out: Path, *args: str) -> subprocess.Popen:
        log = open(tmp_path / f"sweep{len(procs)}.log", "w+")
        p = subprocess.Popen([sys.executable, "run_sim.py", "sweep", str(sweep), "--out", str(out), "--quiet", *args],
                             cwd=ROOT, start_new_session=True, stdout=log, stderr=subprocess.STDOUT,
                             preexec_fn=_sigint_default)
        p.log = log
        procs.append(p)
        return p

    yield go
    for p in procs:
        try:
            os.killpg(p.pid, signal.SIGKILL)
        except OSError:
            pass
        try:
            p.wait(10)
        except subprocess.TimeoutExpired:
            pass
        p.log.close()


def output(p: subprocess.Popen) -> str:
    p.log.flush()
    p.log.seek(0)
    return p.log.read()


def wait_for(cond, what: str, proc: subprocess.Popen | None = None, timeout: float = WAIT_S) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if proc is not None and proc.poll() is not None:
            pytest.fail(f"the sweep exited ({proc.returncode}) before {what}:\n{output(proc)}")
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}" + (f":\n{output(proc)}" if proc else ""))
        time.sleep(0.05)


def evaluating(point: Path) -> bool:
    """The point is in its training loop: metrics.csv has a row."""
    try:
        return len((point / "metrics.csv").read_text().splitlines()) >= 2
    except OSError:
        return False


def status(out: Path) -> list[str]:
    with (out / "sweep_summary.csv").open() as fh:
        return [r["point_status"] for r in csv.DictReader(fh)]


def children(pid: int) -> list[int]:
    """Live (not zombie) processes whose parent is ``pid``, from /proc."""
    found = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit() and int(d.name) != pid:
            stat = _stat(int(d.name))
            if stat and stat[1] == pid and stat[0] != "Z":
                found.append(int(d.name))
    return found


def _stat(pid: int) -> tuple[str, int] | None:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2:].split()
    return fields[0], int(fields[1])


def alive(pid: int) -> bool:
    stat = _stat(pid)
    return stat is not None and stat[0] != "Z"


needs_proc = pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads /proc")


# --- signals -----------------------------------------------------------------------
def test_ctrl_c_interrupts_the_running_point_and_a_rerun_resumes(tmp_path, start, capsys):
    out = tmp_path / "out"
    sweep = sweep_file(tmp_path, [4, 1500])      # 000 finishes at once; 001 takes seconds (150 rounds: 0.2 s,
    #                                              too short to be sure the signal lands while it runs)
    p = start(sweep, out)
    wait_for(lambda: evaluating(out / "points" / "001"), "point 001 was running", p)
    os.killpg(p.pid, signal.SIGINT)               # Ctrl-C in a terminal: the whole process group
    assert p.wait(WAIT_S) == 130, output(p)
    assert status(out) == ["done", "interrupted"]
    assert (out / "points" / "000" / "done").exists() and not (out / "points" / "001" / "done").exists()
    assert not (out / ".lock").exists()
    assert "run the same command again to resume" in output(p)
    kept = (out / "points" / "000" / "metrics.csv").stat().st_mtime_ns
    # the rerun skips the done point and runs the interrupted one from scratch
    assert run_sim.main(["sweep", str(sweep), "--out", str(out), "--quiet"]) == 0
    assert "point 001: it did not finish in an earlier run" in capsys.readouterr().err
    assert status(out) == ["done", "done"]
    assert (out / "points" / "000" / "metrics.csv").stat().st_mtime_ns == kept
    rows = list(csv.DictReader((out / "points" / "001" / "metrics.csv").open()))
    assert [int(r["round"]) for r in rows][-1] == 1500 and len(rows) == len({r["round"] for r in rows})


@needs_proc
def test_sigterm_to_the_driver_alone_reaches_the_workers(tmp_path, start):
    out = tmp_path / "out"
    p = start(sweep_file(tmp_path, seeds=[0, 1, 2]), out, "--workers", "2")
    wait_for(lambda: evaluating(out / "points" / "000") and evaluating(out / "points" / "001"),
             "both workers were running a point", p)
    workers = children(p.pid)
    assert len(workers) >= 2
    os.kill(p.pid, signal.SIGTERM)                # not the group: the driver must pass it on
    assert p.wait(WAIT_S) == 130, output(p)
    assert status(out) == ["interrupted", "interrupted", "pending"]
    assert not any((out / "points" / f"00{i}" / "done").exists() for i in range(3))
    assert not (out / "points" / "002").exists()  # never started
    wait_for(lambda: not any(alive(w) for w in workers), "the workers exited", timeout=10)
    # each worker flushed its rows: whole lines, the last evaluation included
    for i in range(2):
        text = (out / "points" / f"00{i}" / "metrics.csv").read_text()
        assert text.endswith("\n") and len(text.splitlines()) >= 2


@needs_proc
def test_kill_9_of_the_driver_leaves_no_worker_behind(tmp_path, start):
    out = tmp_path / "out"
    p = start(sweep_file(tmp_path, seeds=[0, 1]), out, "--workers", "2")
    wait_for(lambda: evaluating(out / "points" / "000") and evaluating(out / "points" / "001"),
             "both workers were running a point", p)
    workers = children(p.pid)
    assert len(workers) >= 2
    os.kill(p.pid, signal.SIGKILL)
    p.wait(WAIT_S)
    wait_for(lambda: not any(alive(w) for w in workers), "every worker exited after its parent died", timeout=10)


def test_a_worker_exits_when_its_parent_dies_without_pdeathsig(tmp_path):
    """The polling half of the parent-death check (kill -9 above mostly exercises PR_SET_PDEATHSIG)."""
    pidfile = tmp_path / "grandchild.pid"
    grandchild = (f"import os, sys, time; sys.path.insert(0, {str(ROOT)!r}); import sim.study.backends as b; "
                  f"b.sys.platform = 'no-prctl'; b._exit_with_parent(os.getppid()); "
                  f"open({str(pidfile)!r}, 'w').write(str(os.getpid())); time.sleep(60)")
    middle = (f"import subprocess, sys, time; subprocess.Popen([sys.executable, '-c', {grandchild!r}]); "
              "time.sleep(60)")
    p = subprocess.Popen([sys.executable, "-c", middle], start_new_session=True)
    try:
        wait_for(lambda: pidfile.exists() and pidfile.read_text().strip(), "the grandchild started", timeout=30)
        pid = int(pidfile.read_text())
        assert alive(pid)
        p.kill()
        p.wait(10)
        wait_for(lambda: not alive(pid), "the grandchild noticed its parent died", timeout=10)
    finally:
        try:
            os.killpg(p.pid, signal.SIGKILL)
        except OSError:
            pass


# --- the lock ------------------------------------------------------------------------
def test_a_second_sweep_on_the_same_folder_refuses_and_writes_nothing(tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    lock = out / ".lock"
    lock.write_text(json.dumps({"pid": os.getpid(), "host": socket.gethostname()}))   # a live process
    assert run_sim.main(["sweep", str(sweep_file(tmp_path, [4])), "--out", str(out), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert str(lock) in err and f"pid {os.getpid()}" in err and "another sweep" in err
    assert sorted(p.name for p in out.iterdir()) == [".lock"]
    assert json.loads(lock.read_text())["pid"] == os.getpid()       # left alone


def test_a_lock_whose_process_is_gone_is_taken_over(tmp_path, capsys):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    out = tmp_path / "out"
    out.mkdir()
    (out / ".lock").write_text(json.dumps({"pid": dead.pid, "host": socket.gethostname()}))
    assert run_sim.main(["sweep", str(sweep_file(tmp_path, [4])), "--out", str(out), "--quiet"]) == 0
    err = capsys.readouterr().err
    assert f"taking over the lock of pid {dead.pid}" in err
    assert status(out) == ["done"] and not (out / ".lock").exists()


def _raise_while_interrupted(*_a, **_k):
    """What Ctrl-C inside a torch.func transform looked like once (a flaky run of the test
    above): functorch's clean-up raised a RuntimeError while the KeyboardInterrupt unwound."""
    try:
        raise KeyboardInterrupt
    except KeyboardInterrupt:
        raise RuntimeError("!dynamicLayerStack.empty() INTERNAL ASSERT FAILED") from None


def test_interrupted_by_follows_the_exception_chain():
    from sim.errors import interrupted_by
    with pytest.raises(RuntimeError) as info:
        _raise_while_interrupted()
    assert interrupted_by(info.value) and interrupted_by(KeyboardInterrupt())
    assert not interrupted_by(RuntimeError("a real failure")) and not interrupted_by(ValueError())
    a, b = RuntimeError("a"), RuntimeError("b")
    a.__context__, b.__context__ = b, a          # a cycle ends the walk
    assert not interrupted_by(a)


def test_an_error_raised_while_ctrl_c_unwinds_is_an_interruption_not_a_failure(tmp_path, monkeypatch, capsys):
    """run (execute) exits 130 and keeps the rows written so far; a sweep's point is
    'interrupted' (re-run on resume), not 'failed'."""
    import sim.study.runner as runner
    from sim.engine import build_world
    from sim.study.config import load_scenario
    from sim.study.sweep import run_point
    scn = load_scenario(TINY, ["stop.max_rounds=4"])
    worlds = {0: build_world(scn, 0)}
    monkeypatch.setattr(runner, "run_algorithm", _raise_while_interrupted)
    status, rows = runner.execute(scn, worlds, tmp_path / "run", quiet=True, plots=False)
    assert (status, rows) == (130, [])
    assert (tmp_path / "run" / "metrics.csv").read_text().startswith("algorithm,seed,round")
    assert "interrupted: the rows written so far are kept" in capsys.readouterr().err
    assert run_point(str(TINY), ["stop.max_rounds=4"], True, str(tmp_path / "point")) == \
        {"status": "interrupted", "error": ""}
    monkeypatch.setattr(runner, "run_algorithm", lambda *a, **k: (_ for _ in ()).throw(RuntimeError("real")))
    assert run_point(str(TINY), ["stop.max_rounds=4"], True, str(tmp_path / "p2"))["status"] == "failed"
