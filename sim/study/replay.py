"""Exact trace replay: re-time a recorded run under another network.

    python run_sim.py replay RUN_DIR --set network.uplink.bandwidth="100 Mbps" [--out DIR]

For a synchronous algorithm the math of every round (gradients, skips,
message sizes, compute demands) is fixed by the data, the model, the
algorithm and the seed; the network only decides *when* things arrive.  A
run's trace (sim/study/trace.py) holds everything the network carried;
:func:`replay_run` feeds it through the same :func:`sim.engine.simulate`
under the new network, computing no gradient, and writes the same results
files a full run would (metrics, summary, phases, links, diagnostics), byte for byte.

Replay is refused, with the reason, when timing can change the math:

* a field outside ``network`` differs (data, model, algorithms, seeds, compute...);
* the topology's protocol changes (parameter server vs ring, the set of servers);
* ``round_timeout``, or an algorithm with ``wait_for`` (late workers are dropped: who arrives
  depends on timing);
* ``failures`` (who takes part depends on the clock);
* an algorithm that declares ``timing_independent = False`` (asynchronous);
* at run time: ``stop.max_sim_time`` ends the run at a round the trace did not
  evaluate, or later than the recorded run went (:class:`ReplayUnavailable`).
"""
from __future__ import annotations

import gc
import hashlib
import pickle
import sys
from contextlib import contextmanager
from pathlib import Path

import simpy
import yaml

from sim.study import yamlfile
from sim.study.config import Scenario, load_network_files, validate
from sim.errors import ConfigError
from sim.engine import build_graph, make_protocol, simulate, summarize
from sim.net.network import Network
from sim.study.results import RESULT_COLUMNS, write_csv
from sim.study.trace import TRACE_FILE, Replayer, ReplayUnavailable, TraceError, read_trace

REPLAY_FILE = "replay.yaml"   # in a replayed folder: where its trace lives


def _diff(a, b, prefix: str = "") -> list[str]:
    """Dotted paths at which two dumped scenarios differ."""
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for k in sorted(set(a) | set(b), key=str):
            out += _diff(a.get(k), b.get(k), f"{prefix}{k}.")
        return out
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        return [p for i, (x, y) in enumerate(zip(a, b)) for p in _diff(x, y, f"{prefix}{i}.")]
    return [] if a == b else [prefix.rstrip(".")]


def math_fields(scn: Scenario) -> dict:
    """The scenario without ``network`` and ``name``: what fixes the learning trajectory."""
    d = scn.dump()
    d.pop("network", None)
    d.pop("name", None)
    return d


def refusal(recorded: Scenario, new: Scenario) -> str | None:
    """Why ``new`` cannot be obtained by replaying a trace of ``recorded``, or None."""
    diff = _diff(math_fields(recorded), math_fields(new))
    if diff:
        shown = ", ".join(diff[:4]) + (f" and {len(diff) - 4} more" if len(diff) > 4 else "")
        return (f"{shown} differ{'s' if len(diff) == 1 else ''} from the recorded run; replay re-times the "
                "network only, the math must be the same")
    ta, tb = recorded.network.topology, new.network.topology
    if ta.collective != tb.collective or ta.server_names() != tb.server_names():
        return (f"network.topology: the protocol changes ({ta.collective} with servers {ta.server_names()} -> "
                f"{tb.collective} with servers {tb.server_names()}); the messages would be cut differently")
    if recorded.round_timeout is not None:
        return "round_timeout drops late workers: which uploads arrive depends on timing, so the math does too"
    if recorded.failures:
        return "failures: which workers take part depends on the simulated clock"
    for cfg in recorded.algorithms:
        why = cfg.timing_dependent_why
        if why:
            return why
    return None


def trace_source(run_dir: str | Path) -> Path:
    """The folder holding the trace of ``run_dir`` (itself, or the folder a replay came from)."""
    run_dir = Path(run_dir)
    if (run_dir / TRACE_FILE).exists():
        return run_dir
    meta = run_dir / REPLAY_FILE
    if meta.exists():
        data = yamlfile.read(meta, "replay.yaml")
        if not (isinstance(data, dict) and isinstance(data.get("source"), str)):
            raise ReplayUnavailable(f"{meta}: source: allowed: the folder of the run this replay came from")
        source = Path(data["source"])
        if not (source / TRACE_FILE).is_file():
            raise ReplayUnavailable(f"{meta}: source: {source} has no {TRACE_FILE} (moved or deleted?)")
        return source
    raise ReplayUnavailable(f"{run_dir} has no {TRACE_FILE} (runs record it since commsim 0.1; "
                            "re-run the scenario)")


_RECORDED: dict[str, tuple[str, bytes]] = {}   # scenario.yaml path -> (its text, pickle of its data)


def recorded_scenario(run_dir: str | Path) -> Scenario:
    """The scenario a run recorded (its scenario.yaml), validated, with its network files
    read and checked against their pinned hashes.  The YAML is parsed once per process and
    text (a sweep replays every point from one source): the parsed data is kept pickled,
    so each call validates fresh objects from the same data."""
    path = Path(run_dir) / "scenario.yaml"
    text = yamlfile.read_text(path)
    key = str(path.resolve())
    hit = _RECORDED.get(key)
    if hit is not None and hit[0] == text:
        data = pickle.loads(hit[1])
    else:
        data = yamlfile.loads(text, str(path))        # libyaml's parser when present: 10x faster
        if len(_RECORDED) >= 8:
            _RECORDED.clear()
        _RECORDED[key] = (text, pickle.dumps(data))
    scn = validate(data, str(path))
    try:
        load_network_files(scn, path.parent)         # pinned paths: the files must be the ones recorded
    except ConfigError as exc:
        raise exc.with_file(str(path))
    return scn


@contextmanager
def frozen_heap():
    """Replays run inside this: what exists now (torch, the data sets, the
    scenario objects) is moved out of the garbage collector's generations
    (gc.freeze, after one collection), so the collections that a replay's
    many small objects trigger do not walk the whole heap each time (a tenth
    of a replayed point).  The replays' own garbage is collected as usual;
    the heap is unfrozen afterwards."""
    gc.collect()
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


_PARSED: dict[str, tuple[str, dict]] = {}   # trace path -> (sha256 of its bytes, read_trace of them)


def _segments(path: Path) -> dict:
    """:func:`read_trace` of ``path``, parsed once per process and content: a
    sweep replays many points from one trace, and parsing it was a tenth of a
    replayed point.  Keyed by the SHA-256 of the file's bytes, read every time,
    so an edited or replaced trace is parsed (and checked) again.  The result
    is shared: replay only reads it (the Replayer hands out the recorded
    values, which simulate does not modify; tests/test_replay.py checks)."""
    try:
        data = path.read_bytes()
    except OSError:
        return read_trace(path)                 # it words the error
    digest = hashlib.sha256(data).hexdigest()
    key = str(path.resolve())
    hit = _PARSED.get(key)
    if hit is not None and hit[0] == digest:
        return hit[1]
    segments = read_trace(path, data)          # these bytes, the ones hashed
    if len(_PARSED) >= 8:
        _PARSED.clear()
    _PARSED[key] = (digest, segments)
    return segments


def replay_results(source_dir: str | Path, scn: Scenario, on_round=None) -> dict[str, list[dict]]:
    """Re-time every algorithm and seed of ``scn`` from the trace in
    ``source_dir``; returns the rows of each results file, in the order a full
    run writes them.  Raises ReplayUnavailable (nothing is written)."""
    source_dir = trace_source(source_dir)
    why = refusal(recorded_scenario(source_dir), scn)
    if why:
        raise ReplayUnavailable(why)
    segments = _segments(source_dir / TRACE_FILE)
    rows: dict[str, list[dict]] = {name: [] for name in RESULT_COLUMNS}
    for seed in scn.run_seeds:
        graph = build_graph(scn, seed)
        for cfg in scn.algorithms:
            if (cfg.label, seed) not in segments:
                raise ReplayUnavailable(f"{source_dir / TRACE_FILE} has no complete trace of {cfg.label!r} "
                                        f"seed {seed} (the run was interrupted before it finished)")
            header, events = segments[(cfg.label, seed)]
            if header.get("event_driven"):      # refused above by its algorithm; a trace says so too
                raise ReplayUnavailable(f"{source_dir / TRACE_FILE}: {header['replay']}")
            if int(header["n"]) != scn.workers:
                raise TraceError(f"{source_dir / TRACE_FILE}: n: the trace of {cfg.label!r} seed {seed} has "
                                 f"{header['n']} workers, the scenario {scn.workers}")
            env = simpy.Environment()
            net = Network(env, graph, scn.network.sharing)
            proto = make_protocol(scn, env, net, int(header["d"]), bool(header["summable"]))
            widths = (len(proto.servers) if hasattr(proto, "servers") else (scn.workers if header["summable"] else 1),
                      len(proto.bounds))
            source = Replayer(header, events, widths, str(source_dir / TRACE_FILE))
            result = simulate(scn, env, net, proto, source, cfg.label, seed, int(header["d"]),
                              on_row=rows["metrics"].append, on_phase=rows["phases"].append,
                              on_diag=rows["diagnostics"].append,
                              on_round=on_round or (lambda r, t: None))
            rows["links"] += result.links
            rows["summary"].append(summarize(result, scn.stop.target_accuracy))
    return rows


def replay_run(source_dir: str | Path, scn: Scenario, out: str | Path, plots: bool = True) -> list[dict]:
    """Replay into ``out`` (scenario.yaml, the five CSVs, replay.yaml, plots);
    returns the summary rows.  Nothing is written when the replay is refused."""
    from sim.study.results import write_text
    from sim.study.runner import make_out_dir, write_scenario
    src = trace_source(source_dir)
    rows = replay_results(src, scn)
    out = Path(out)
    make_out_dir(out)
    write_scenario(out, scn)
    write_text(out / REPLAY_FILE, yaml.safe_dump({"source": str(src.resolve())}, sort_keys=False))
    for name, cols in RESULT_COLUMNS.items():
        write_csv(out / f"{name}.csv", cols, rows[name])
    if plots and rows["summary"]:
        from analysis.plots import plot_run
        plot_run(out)
    for s in rows["summary"]:
        if s["status"] == "stalled":
            print(f"{s['algorithm']} (seed {s['seed']}) stalled under this network", file=sys.stderr)
    return rows["summary"]
