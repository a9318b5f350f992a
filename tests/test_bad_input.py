"""The bad-input corpus: every class of input or environment fault gives one
message naming the file (and line or field), exit 2 (input) or 1 (a fault of
the disk while writing), no traceback, and leaves the output folder untouched.

Runs go through ``run_sim.main`` in-process (``cli`` of test_cli.py); one
subprocess checks the real exit code and that no traceback reaches the user.
"""
from __future__ import annotations

import csv
import errno
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from sim.study.results import METRICS_COLUMNS, LineFile

from test_cli import TINY, cli, read_csv

REPO = Path(__file__).resolve().parents[1]
FAST = ["--set", "stop.max_rounds=4", "--set", "eval_every=2", "--set", "stop.on_target=false",
        "--set", "algorithms=[{name: sgd, kind: sgd, lr: 0.1}, {name: topk, kind: topk_ef_sgd, lr: 0.1, ratio: 0.1}]"]


def tree(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` (relative path -> bytes): 'untouched' means equal trees."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def expect_bad(args: list, *needles: str, out: Path | None = None, code: int = 2) -> str:
    """Run the CLI; assert the exit code, that stderr names every needle, that
    it is one 'error:' message without a traceback, and that ``out`` is untouched."""
    before = tree(out) if out is not None and out.is_dir() else None
    existed = out.exists() if out is not None else None
    rc, stdout, err = cli(*args)
    assert rc == code, (rc, err)
    assert err.startswith("error: ") and "Traceback" not in err, err
    for needle in needles:
        assert needle in err, (needle, err)
    if out is not None:
        assert out.exists() == existed, f"{out} was created"
        if before is not None:
            assert tree(out) == before, f"{out} was changed"
    return err


@pytest.fixture
def tiny_text() -> str:
    return TINY.read_text()


# --------------------------------------------------------------------------- #
# The file itself
# --------------------------------------------------------------------------- #

@pytest.mark.parametrize("content, needle", [
    (b"name: t\nworkers: 4\n\x80\x81 binary \x00\xff", "not UTF-8 text: byte 0x80 at line 3"),
    (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", "not UTF-8"),
    ("name: t\nworkers: 4\n".encode("utf-16"), "UTF-16"),
    (b"name: t\nworkers: 4\x00\n", "NUL byte at line 2"),
])
def test_a_file_that_is_not_utf8_text(tmp_path, content, needle):
    p = tmp_path / "s.yaml"
    p.write_bytes(content)
    out = tmp_path / "out"
    expect_bad(["run", p, "--out", out], str(p), needle, "UTF-8", out=out)
    expect_bad(["validate", p], str(p), needle)


def test_a_directory_given_as_a_file(tmp_path):
    d = tmp_path / "scenario.yaml"
    d.mkdir()
    out = tmp_path / "out"
    expect_bad(["run", d, "--out", out], str(d), "is a folder", out=out)


def test_a_missing_file(tmp_path):
    out = tmp_path / "out"
    expect_bad(["run", tmp_path / "nope.yaml", "--out", out], "nope.yaml", "no such file", out=out)


def test_an_unreadable_file(tmp_path, monkeypatch, tiny_text):
    p = tmp_path / "s.yaml"
    p.write_text(tiny_text)
    if os.geteuid() == 0:      # root reads a mode-000 file: make the read fail as it would for a user
        real = Path.read_bytes

        def denied(self):
            if self == p:
                raise PermissionError(errno.EACCES, "Permission denied", str(self))
            return real(self)
        monkeypatch.setattr(Path, "read_bytes", denied)
    else:
        p.chmod(0)
    out = tmp_path / "out"
    expect_bad(["run", p, "--out", out], str(p), "cannot be read", "errno 13", out=out)


def test_a_duplicate_key_is_refused_with_both_lines(tmp_path, tiny_text):
    p = tmp_path / "s.yaml"
    p.write_text(tiny_text.replace("seed: 0\n", "seed: 0\nworkers: 2\nseed: 3\n"))
    line = tiny_text.splitlines().index("seed: 0") + 1
    out = tmp_path / "out"
    expect_bad(["run", p, "--out", out], str(p), "duplicate key 'seed'", f"line {line + 2}",
               f"first given at line {line}", out=out)
    # nested mappings too, and inside --set values
    q = tmp_path / "q.yaml"
    q.write_text(tiny_text.replace("uplink:   {bandwidth: 1 Gbps,", "uplink:   {bandwidth: 1 Gbps, bandwidth: 1 Mbps,"))
    expect_bad(["validate", q], str(q), "duplicate key 'bandwidth'")
    expect_bad(["validate", TINY, "--set", "algorithms=[{name: a, kind: sgd, lr: 0.1, lr: 1}]"],
               "duplicate key 'lr'")


def test_yaml_merge_keys_may_be_overridden(tmp_path, tiny_text):
    """`<<: *anchor` then an explicit key is not a duplicate: the explicit key is meant to win."""
    p = tmp_path / "s.yaml"
    p.write_text(tiny_text.replace("uplink:   {bandwidth: 1 Gbps, latency: 5 ms}",
                                   "uplink: &up {bandwidth: 1 Gbps, latency: 5 ms}")
                 .replace("downlink: {bandwidth: 1 Gbps, latency: 5 ms}", "downlink: {<<: *up, latency: 2 ms}"))
    rc, out, err = cli("validate", p)
    assert rc == 0, err


# --------------------------------------------------------------------------- #
# Values
# --------------------------------------------------------------------------- #

@pytest.mark.parametrize("override, needles", [
    ("seed=-1", ["seed", "greater than or equal to 0"]),
    ("seed=1.5", ["seed", "valid integer"]),
    ("seed=abc", ["seed", "valid integer"]),
    ("seed=true", ["seed", "valid integer"]),
    (f"seed={2 ** 32}", ["seed", "less than or equal to 4294967295"]),
    ("seeds=[]", ["seeds", "at least 1 item"]),
    ("seeds=[0, 1, 1]", ["seeds", "repeated seeds [1]"]),
    ("seeds=[0, -2]", ["seeds.1", "greater than or equal to 0"]),
    (f"seeds=[{', '.join(str(i) for i in range(1001))}]", ["seeds", "at most 1000 items"]),
    ("workers=0", ["workers", "greater than or equal to 1"]),
    ("workers=1000000", ["workers", "less than or equal to 100000"]),
    ("model.hidden=[100000000, 100000000]", ["model", "needs at least", "GiB", "available here"]),
    ("name=..", ["name", "not a valid name"]),
    ("name=.", ["name", "not a valid name"]),
    ("name=a/b", ["name", "not a valid name"]),
    ("name=.hidden", ["name", "not a valid name"]),
    ("stop.divergence_factor=1", ["stop.divergence_factor", "greater than 1"]),
])
def test_bad_values_name_the_field(tmp_path, override, needles):
    out = tmp_path / "out"
    err = expect_bad(["run", TINY, "--out", out, "--set", override], str(TINY), *needles, out=out)
    assert "Value error" not in err


def test_the_memory_estimate_comes_before_any_allocation(monkeypatch, tmp_path):
    """The absurd model is refused from its parameter count alone (the meta
    device), before a byte of it is allocated."""
    import sim.engine
    called = []
    monkeypatch.setattr(sim.engine, "build_model", lambda *a, **k: called.append(a))
    out = tmp_path / "out"
    expect_bad(["run", TINY, "--out", out, "--set", "model.hidden=[1000000, 1000000]"],
               "d = 1,000,076,000,010 parameters", out=out)
    assert called == []


def test_errors_never_show_pydantic_prefixes(tmp_path, tiny_text):
    p = tmp_path / "s.yaml"
    for bad in ["uplink:   {bandwidth: 1 Gbps, latency: -5 ms}", "uplink:   {bandwidth: fast, latency: 5 ms}"]:
        p.write_text(tiny_text.replace("uplink:   {bandwidth: 1 Gbps, latency: 5 ms}", bad))
        err = expect_bad(["validate", p], str(p), "network.uplink")
        assert "Value error" not in err and "Assertion failed" not in err


def test_yaml_11_booleans_are_words_where_words_are_allowed(tmp_path, tiny_text):
    """`on_target: no` still reads as False (a bool field); a word field sees the word."""
    p = tmp_path / "s.yaml"
    p.write_text(tiny_text.replace("stop: {target_accuracy: 0.5,", "stop: {on_target: no, target_accuracy: 0.5,"))
    from sim.study.config import load_scenario
    assert load_scenario(p).stop.on_target is False
    from sim.study.config import read_yaml
    q = tmp_path / "q.yaml"
    q.write_text("replay: off\na: on\nb: yes\nc: true\nd: False\n")
    assert read_yaml(q) == {"replay": "off", "a": "on", "b": "yes", "c": True, "d": False}


# --------------------------------------------------------------------------- #
# Files a scenario names
# --------------------------------------------------------------------------- #

def _graphml(tmp_path: Path, latency: str, typ: str = "double") -> Path:
    p = tmp_path / "net.graphml"
    edges = "".join(f'<edge source="w{i}" target="sw"><data key="b">1e9</data><data key="l">'
                    f'{latency if i == 2 else "0.001"}</data></edge>' for i in range(4))
    p.write_text('<?xml version="1.0" encoding="utf-8"?>\n'
                 '<graphml xmlns="http://graphml.graphdrawing.org/xmlns">\n'
                 f'<key id="b" for="edge" attr.name="bandwidth_bps" attr.type="{typ}"/>\n'
                 f'<key id="l" for="edge" attr.name="latency_s" attr.type="{typ}"/>\n'
                 '<graph edgedefault="undirected">\n' + edges +
                 '<edge source="sw" target="server"><data key="b">1e10</data><data key="l">0</data></edge>\n'
                 '</graph></graphml>\n')
    return p


@pytest.mark.parametrize("typ", ["double", "string"])
def test_a_graphml_attribute_that_is_not_a_number_names_the_edge(tmp_path, tiny_dict, write_scenario, typ):
    g = _graphml(tmp_path, "fast", typ)
    tiny_dict["network"]["topology"] = {"kind": "graph", "graphml": g.name}
    p = write_scenario(tiny_dict)
    out = tmp_path / "out"
    expect_bad(["run", p, "--out", out], "network.topology.graphml", "w2", "latency_s", "'fast'",
               "not a number", out=out)


@pytest.mark.parametrize("content, needle", [
    ("time_s,bandwidth_bps\n0,1e9\n1,fast\n", ":3: not numbers"),
    ("time_s,bandwidth_bps\n0,1e9\n".encode("utf-16"), "UTF-16"),
    (b"time_s,bandwidth_bps\n0,1e9\n\xff\xfe\xfd\n", "not UTF-8"),
    ("time_s,bw\n0,1e9\n", "expected the header"),
])
def test_a_bad_bandwidth_trace_names_the_file_and_line(tmp_path, tiny_dict, write_scenario, content, needle):
    t = tmp_path / "bw.csv"
    t.write_bytes(content if isinstance(content, bytes) else content.encode())
    tiny_dict["network"]["uplink"] = {"trace": "bw.csv", "latency": "5 ms"}
    p = write_scenario(tiny_dict)
    out = tmp_path / "out"
    expect_bad(["run", p, "--out", out], "network.uplink.trace", str(t), needle, out=out)


# --------------------------------------------------------------------------- #
# Replay: malformed or edited traces, --out
# --------------------------------------------------------------------------- #

@pytest.fixture(scope="module")
def recorded(tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("rec") / "run"
    rc, _, err = cli("run", TINY, "--out", run, "--quiet", *FAST)
    assert rc == 0, err
    return run


def _copy_run(src: Path, dst: Path) -> Path:
    dst.mkdir()
    for name in ("scenario.yaml", "trace.jsonl", "metrics.csv", "summary.csv"):
        (dst / name).write_bytes((src / name).read_bytes())
    return dst


def _edit_line(path: Path, kind: str, edit) -> int:
    lines = path.read_text().splitlines(keepends=True)
    i = next(k for k, line in enumerate(lines) if json.loads(line)["e"] == kind)
    lines[i] = edit(lines[i])
    path.write_text("".join(lines))
    return i + 1


def _set_json(field_path: list, value):
    def edit(line: str) -> str:
        ev = json.loads(line)
        node = ev
        for k in field_path[:-1]:
            node = node[k]
        node[field_path[-1]] = value
        return json.dumps(ev, separators=(",", ":")) + "\n"
    return edit


@pytest.mark.parametrize("kind, edit, needles", [
    ("plan", lambda line: line[: len(line) // 2] + "\n", ["not a JSON event"]),
    ("plan", _set_json(["out", "sizes"], "many"), ["out.sizes"]),
    ("plan", _set_json(["out", "sending"], "10x1"), ["out.sending", "'10x1'"]),
    ("plan", _set_json(["out", "step_s"], [-1.0, 0.1, 0.1, 0.1]), ["out.step_s"]),
    ("plan", _set_json(["t"], "zero"), ["t: 'zero'"]),
    ("update", _set_json(["out", "down"], [-5]), ["out.down"]),
    ("evaluate", _set_json(["out", "test_acc"], None), ["out.test_acc: None"]),
    ("start", _set_json(["n"], 0), ["n: 0"]),
    ("start", _set_json(["e"], "begin"), ["e: 'begin'"]),
    ("stats", _set_json(["out", "server_state_bytes"], "x"), ["out.server_state_bytes"]),
    # a value that is well-formed but not what was recorded: the segment's checksum catches it
    ("plan", lambda line: line.replace('"sizes":[[', '"sizes":[[1', 1), ["edited after the run", "sha256"]),
])
def test_a_malformed_or_edited_trace_names_the_line_and_field(recorded, tmp_path, kind, edit, needles):
    run = _copy_run(recorded, tmp_path / "run")
    lineno = _edit_line(run / "trace.jsonl", kind, edit)
    out = tmp_path / "replayed"
    err = expect_bad(["replay", run, "--out", out, "--set", "network.uplink.latency=50 ms"],
                     "trace.jsonl", *needles, out=out)
    if "edited after the run" not in needles:
        assert f"trace.jsonl:{lineno}:" in err
    assert not out.exists()


def test_a_trace_cut_short_by_an_interruption_is_incomplete_not_malformed(recorded, tmp_path):
    run = _copy_run(recorded, tmp_path / "run")
    text = (run / "trace.jsonl").read_text()
    (run / "trace.jsonl").write_text(text[: len(text) - 7])    # the last (stats) line cut short
    out = tmp_path / "replayed"
    expect_bad(["replay", run, "--out", out], "no complete trace of 'topk'", "interrupted", out=out)


def test_replay_out_pointing_at_a_file(recorded, tmp_path):
    f = tmp_path / "a-file"
    f.write_text("mine\n")
    expect_bad(["replay", recorded, "--out", f], "--out", "is a file", out=f)
    assert f.read_text() == "mine\n"
    expect_bad(["replay", recorded, "--out", f / "below"], "is below", out=f)
    expect_bad(["run", TINY, "--out", f / "below", *FAST], "is below", out=f)


def test_replay_of_a_folder_that_is_not_a_run(tmp_path):
    expect_bad(["replay", tmp_path], "not a results folder")
    f = tmp_path / "x.txt"
    f.write_text("x")
    expect_bad(["replay", f], "not a results folder")


# --------------------------------------------------------------------------- #
# The disk: read-only folder, full disk mid-run (exit 1, whole lines kept)
# --------------------------------------------------------------------------- #

def test_a_full_disk_at_the_first_write_names_the_path_and_errno(tmp_path):
    if not os.path.exists("/dev/full"):
        pytest.skip("no /dev/full here")
    out = tmp_path / "out"
    out.mkdir()
    (out / "metrics.csv").symlink_to("/dev/full")
    expect_bad(["run", TINY, "--out", out, "--quiet", "--overwrite", *FAST],
               f"cannot write {out / 'metrics.csv'}", "errno 28 ENOSPC", code=1)


def test_a_read_only_folder_names_the_path_and_errno(tmp_path, monkeypatch):
    """The folder refuses new files (EROFS): one line, exit 1.  Root ignores
    mode bits, so the refusal is the kernel's answer made by a patched os.open."""
    import sim.study.results
    real = os.open

    def read_only(path, flags, *a):
        if str(path).startswith(str(tmp_path / "ro")) and flags & os.O_CREAT:
            raise OSError(errno.EROFS, "Read-only file system", str(path))
        return real(path, flags, *a)
    monkeypatch.setattr(sim.study.results.os, "open", read_only)
    out = tmp_path / "ro"
    out.mkdir()
    expect_bad(["run", TINY, "--out", out, "--quiet", *FAST], f"cannot write {out / 'scenario.yaml'}",
               "errno 30 EROFS", out=out, code=1)


def test_a_disk_that_fills_up_mid_run_keeps_every_whole_row(tmp_path, monkeypatch):
    """After 9 writes to metrics.csv the disk is full: the 10th write puts half
    its bytes down and fails.  The file is cut back to its last whole row, the
    message names the path and the errno, exit 1."""
    calls = {"n": 0}
    real = LineFile._raw_write

    def filling(self, data):
        if self.path.name != "metrics.csv":
            return real(self, data)
        calls["n"] += 1
        if calls["n"] < 10:
            return real(self, data)
        if calls["n"] == 10:
            return real(self, data[: len(data) // 2])       # part of the row reaches the disk
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(LineFile, "_raw_write", filling)
    out = tmp_path / "out"
    err = expect_bad(["run", TINY, "--out", out, "--quiet", "--set", "stop.max_rounds=40",
                      "--set", "eval_every=2", "--set", "stop.on_target=false"],
                     f"cannot write {out / 'metrics.csv'}", "errno 28 ENOSPC", code=1)
    assert err.count("\n") == 1
    text = (out / "metrics.csv").read_text()
    assert text.endswith("\n")
    rows = list(csv.reader(text.splitlines()))
    assert len(rows) == 9 and all(len(r) == len(rows[0]) for r in rows)     # the header and 8 whole rows
    assert [r[2] for r in rows[1:]] == [str(i) for i in range(0, 16, 2)]


# --------------------------------------------------------------------------- #
# Names stay inside the results folder
# --------------------------------------------------------------------------- #

def test_the_default_results_folder_is_inside_results(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    rc, _, err = cli("run", TINY, "--quiet", "--set", "name=my.run-1", *FAST)
    assert rc == 0, err
    made = [p for p in tmp_path.rglob("scenario.yaml")]
    assert len(made) == 1 and made[0].parent.parent == tmp_path / "results" / "my.run-1"


@pytest.mark.parametrize("name", ["..", ".", "../x", "a/../../b", "a\\b", "/abs", ".hidden", "", "x" * 129])
def test_names_that_would_leave_the_results_folder_are_refused(tmp_path, monkeypatch, name):
    monkeypatch.chdir(tmp_path)
    expect_bad(["run", TINY, "--set", f"name={yaml.safe_dump(name, default_style=chr(34)).strip()}", *FAST],
               "name", "not a valid name")
    assert list(tmp_path.iterdir()) == []


def test_out_with_a_name_writes_exactly_into_out(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "here"
    rc, _, err = cli("run", TINY, "--out", out, "--quiet", "--set", "name=elsewhere", *FAST)
    assert rc == 0, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["here"]
    assert (out / "scenario.yaml").is_file() and read_csv(out / "summary.csv")


# --------------------------------------------------------------------------- #
# The real process
# --------------------------------------------------------------------------- #

def test_the_process_exit_code_and_no_traceback(tmp_path):
    p = tmp_path / "s.yaml"
    p.write_bytes(b"\xff\xfe\x00garbage")
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, str(REPO / "run_sim.py"), "run", str(p), "--out", str(out)],
                          capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr and str(p) in proc.stderr
    assert not out.exists()


def test_sigterm_of_a_run_keeps_its_rows_and_exits_130(tmp_path):
    """`kill PID` of a single run: like Ctrl-C, the rows written so far stay whole, exit 130."""
    import signal
    import time
    out = tmp_path / "out"
    proc = subprocess.Popen([sys.executable, str(REPO / "run_sim.py"), "run", str(TINY), "--out", str(out),
                             "--quiet", "--set", "stop.max_rounds=100000", "--set", "stop.on_target=false",
                             "--set", "eval_every=5"], cwd=tmp_path, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while not ((out / "metrics.csv").exists() and len((out / "metrics.csv").read_text().splitlines()) > 3):
            assert time.monotonic() < deadline and proc.poll() is None, "the run did not start"
            time.sleep(0.1)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 130, err
    assert "interrupted" in err and "Traceback" not in err
    text = (out / "metrics.csv").read_text()
    assert text.endswith("\n") and all(len(r) == len(METRICS_COLUMNS) for r in csv.reader(text.splitlines()))
