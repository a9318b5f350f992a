"""analysis.report / analysis.figures: the numbers in report.md for known inputs (t-intervals,
seeds that did not reach, phases), speed-up and winner tables of a known grid, axis units,
the figures written, a folder that is neither a run nor a sweep."""
from __future__ import annotations

import csv
import math
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from scipy import stats

import run_sim
from analysis import figures, report
from analysis.plots import plot_run
from sim.errors import ConfigError
from sim.study.results import METRICS_COLUMNS, PHASE_COLUMNS, SUMMARY_COLUMNS

TINY = Path(__file__).resolve().parents[1] / "scenarios" / "tiny.yaml"
PNG = b"\x89PNG\r\n\x1a\n"


# ---------------------------------------------------------------- synthetic folders

def write_csv(path: Path, columns: list[str], rows: list[dict]) -> None:
    with path.open("w", newline="") as fh:
        w = csv.writer(fh, lineterminator="\n")
        w.writerow(columns)
        for r in rows:
            w.writerow([r.get(c, "") for c in columns])


def summary_row(alg: str, seed: int, time: float | None, status: str = "done", target: float = 0.8) -> dict:
    return {"algorithm": alg, "seed": seed, "model_params": 10, "target_acc": target,
            "reached": time is not None, "time_to_target_s": "" if time is None else time,
            "rounds_to_target": "" if time is None else 10, "final_test_acc": 0.9, "diverged": status == "diverged",
            "status": status}


def write_run(folder: Path, algorithms: list[dict], summary: list[dict], phases: list[dict] | None = None) -> Path:
    """A run folder: scenario.yaml with ``algorithms``, summary.csv, metrics.csv (three
    evaluations per algorithm and seed), phases.csv."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "scenario.yaml").write_text(yaml.safe_dump({"name": "synthetic", "algorithms": algorithms}))
    write_csv(folder / "summary.csv", SUMMARY_COLUMNS, summary)
    metrics = [{"algorithm": s["algorithm"], "seed": s["seed"], "round": r, "sim_time_s": r * (1 + s["seed"]),
                "uploads": 4 * r, "bytes_up": 1000 * r, "bytes_down": 1000 * r, "train_loss": 2.0 - r / 10,
                "test_loss": 2.0, "test_acc": 0.1 + r / 25} for s in summary for r in (0, 10, 20)]
    write_csv(folder / "metrics.csv", METRICS_COLUMNS, metrics)
    if phases is None:
        phases = [{"algorithm": s["algorithm"], "seed": s["seed"], "round": r, "download_s": 0.1,
                   "compute_s": 0.2, "upload_s": 0.3} for s in summary for r in range(3)]
    write_csv(folder / "phases.csv", PHASE_COLUMNS, phases)
    return folder


def md_row(md: str, *cells: str) -> str:
    """The line of report.md's tables that starts with ``cells``."""
    start = "| " + " | ".join(cells) + " |"
    hits = [line for line in md.splitlines() if line.startswith(start)]
    assert len(hits) == 1, f"no single row starting {start!r} in\n{md}"
    return hits[0]


def assert_pngs(paths: list[Path]) -> None:
    for p in paths:
        if p.suffix == ".png":
            assert p.is_file() and p.read_bytes()[:8] == PNG and p.stat().st_size > 5000, p


@pytest.fixture
def drawn(monkeypatch) -> dict:
    """file name -> matplotlib Figure of every figure written while the test runs (every
    figure of analysis.figures is written by figures._save, wrapped here)."""
    out: dict = {}
    save = figures._save

    def record(fig, path):
        out[Path(path).name] = fig
        return save(fig, path)
    monkeypatch.setattr(figures, "_save", record)
    return out


def titles(fig) -> list[str]:
    return [fig.get_suptitle()] + [ax.get_title() for ax in fig.axes]


def assert_titled_with_units(figs: dict, name: str, seeds: str) -> None:
    """Every figure has a title naming ``name`` and ``seeds`` ("2 seeds", "seed 0"), and every
    line of every axis label ends with its unit in parentheses."""
    assert figs
    for file, fig in figs.items():
        assert any(name in t and seeds in t for t in titles(fig)), (file, titles(fig))
        for ax in fig.axes:
            if not ax.get_visible():
                continue
            for label in (ax.get_xlabel(), ax.get_ylabel()):
                for line in filter(None, label.split("\n")):
                    assert re.search(r" \([^()]+\)$", line), (file, line)


def ticks(ax) -> list[str]:
    return [t.get_text() for t in ax.get_xticklabels()]


def panels(fig) -> list:
    """The visible axes of a figure that hold data (not colorbars)."""
    return [ax for ax in fig.axes if ax.get_visible() and (ax.lines or ax.patches or ax.collections)
            and ax.get_label() != "<colorbar>"]


# ---------------------------------------------------------------- run folder

def test_t_interval_matches_student_t():
    mean, half = report.t_interval([1.0, 2.0, 3.0])
    assert mean == 2.0
    assert half == pytest.approx(stats.t.ppf(0.975, 2) / math.sqrt(3)) and half == pytest.approx(2.48414, abs=1e-5)
    lo, hi = stats.t.interval(0.95, 4, loc=np.mean([1, 5, 2, 8, 3]), scale=stats.sem([1, 5, 2, 8, 3]))
    assert report.t_interval([1, 5, 2, 8, 3])[1] == pytest.approx((hi - lo) / 2)
    mean, half = report.t_interval([4.5])
    assert mean == 4.5 and math.isnan(half)


def test_run_report_intervals_unreached_seeds_and_phases(tmp_path, drawn):
    algs = [{"name": "fast", "kind": "topk_ef_sgd"}, {"name": "dense", "kind": "sgd"}]
    summary = [summary_row("dense", 0, 1.0), summary_row("dense", 1, 2.0), summary_row("dense", 2, 3.0),
               summary_row("fast", 0, 0.5), summary_row("fast", 1, 1.0), summary_row("fast", 2, None, "diverged")]
    # dense: seed 0 has one round (upload 1 s), seed 1 three rounds (upload 0): the mean over rounds
    # of each seed, then over seeds, is 0.5 (pooling all rounds would give 0.25)
    phases = [{"algorithm": "dense", "seed": 0, "round": 0, "upload_s": 1.0, "download_s": 0.2}] + \
             [{"algorithm": "dense", "seed": 1, "round": r, "upload_s": 0.0, "download_s": 0.2} for r in range(3)] + \
             [{"algorithm": "fast", "seed": s, "round": 0, "upload_s": 0.1, "compute_s": 0.3} for s in (0, 1, 2)]
    folder = write_run(tmp_path / "run", algs, summary, phases)
    paths = report.make_report(folder)
    assert paths[-1] == folder / "report.md"
    assert {p.name for p in paths} == {"report.md", "time_to_target.png", "curves_time.png", "curves_bytes.png",
                                       "curves_rounds.png", "phases.png"}
    assert_pngs(paths)
    md = (folder / "report.md").read_text()
    assert "target test accuracy: 0.8" in md and "seeds: 3 (0, 1, 2)" in md and "Student-t" in md
    assert "speed-up baseline: dense" in md          # the first algorithm of kind sgd, not the first one
    # dense: times 1, 2, 3 -> mean 2, half-width t(0.975, 2) / sqrt(3) = 2.484
    assert md_row(md, "dense", "3/3", "2", "2.484", "[-0.4841, 4.484]", "10", "1x", "–")
    # fast: the diverged seed is reported, not averaged in: mean of 0.5 and 1.0, t(0.975, 1) * 0.25
    half = stats.t.ppf(0.975, 1) * 0.25
    assert f"{half:.4g}" == "3.177"
    assert md_row(md, "fast", "2/3", "0.75", "3.177", "[-2.427, 3.927]", "10", "fast 2/3 seeds reached",
                  "seed 2 (diverged)")
    assert md_row(md, "dense", "0.2", "0", "0.5", "0", "0", "0", "0.7")
    assert md_row(md, "fast", "0", "0.3", "0.1", "0", "0", "0", "0.4")
    for png in ("time_to_target.png", "curves_time.png", "curves_bytes.png", "curves_rounds.png", "phases.png"):
        assert f"]({png})" in md
    assert set(drawn) == {p.name for p in paths if p.suffix == ".png"}
    assert_titled_with_units(drawn, "synthetic", "3 seeds")
    # bytes in kB (at most 40 kB on the wire), rounds counted, phases in ms (0.6 s at most: s)
    assert [ax.get_xlabel() for ax in drawn["curves_bytes.png"].axes[:2]] == ["bytes on the wire, up + down (kB)"] * 2
    assert drawn["curves_bytes.png"].axes[0].get_xlim()[1] == pytest.approx(40, rel=0.1)
    assert drawn["curves_rounds.png"].axes[0].get_xlabel() == "training rounds (count)"
    assert drawn["curves_time.png"].axes[1].get_ylabel() == "training loss (cross-entropy, nats)"
    assert drawn["phases.png"].axes[0].get_xlabel() == "mean time per round on the critical path (s)"
    assert drawn["time_to_target.png"].axes[0].get_xlabel() == "simulated time to 0.8 test accuracy (s)"


def test_explicit_and_unknown_baseline(tmp_path):
    algs = [{"name": "a", "kind": "adam"}, {"name": "b", "kind": "adam"}]
    folder = write_run(tmp_path / "run", algs, [summary_row("a", 0, 2.0), summary_row("b", 0, 1.0)])
    assert report.resolve_baseline(["a", "b"], {"algorithms": algs}, None, folder) == "a"   # no sgd: the first
    report.make_report(folder, baseline="b")
    md = (folder / "report.md").read_text()
    assert "speed-up baseline: b" in md
    assert md_row(md, "a", "1/1", "2", "–", "–", "10", "0.5x")   # one seed: no interval
    with pytest.raises(ConfigError, match="'c' is not one of the algorithms: a, b"):
        report.make_report(folder, baseline="c")


def test_seed_band_interpolates_onto_the_common_range():
    m = pd.DataFrame({"algorithm": "a", "seed": [0, 0, 0, 1, 1, 1],
                      "t": [0.0, 2.0, 4.0, 0.0, 1.0, 3.0], "acc": [0.0, 0.2, 0.4, 0.0, 0.2, 0.4]})
    band, tails = figures.seed_band(m, "t", "acc")
    assert band["x"].tolist() == [0.0, 1.0, 2.0, 3.0]          # union of the x values up to 3 (both seeds)
    assert band["mean"].tolist() == pytest.approx([0.0, 0.15, 0.25, 0.35])
    assert band["lo"].tolist() == pytest.approx([0.0, 0.1, 0.2, 0.3])
    assert band["hi"].tolist() == pytest.approx([0.0, 0.2, 0.3, 0.4])
    assert tails["seed"].tolist() == [0, 0] and tails["x"].tolist() == [3.0, 4.0]
    assert tails["y"].tolist() == pytest.approx([0.3, 0.4])


def test_plot_run_writes_the_two_run_figures(tmp_path, drawn):
    folder = write_run(tmp_path / "run", [{"name": "a", "kind": "sgd"}], [summary_row("a", 0, 1.0)])
    paths = plot_run(folder)
    assert [p.name for p in paths] == ["time_to_accuracy.png", "accuracy_vs_bytes.png"]
    assert_pngs(paths)
    assert_titled_with_units(drawn, "synthetic", "seed 0")    # the scenario's name and its one seed
    assert drawn["accuracy_vs_bytes.png"].axes[0].get_xlabel() == "bytes on the wire, up + down (kB)"
    assert drawn["time_to_accuracy.png"].axes[0].get_xlabel() == "simulated time (s)"
    assert drawn["time_to_accuracy.png"].axes[0].get_ylabel() == "test accuracy (fraction)"


# ---------------------------------------------------------------- axes

def test_parse_axis_units_numbers_and_categories():
    bw = figures.parse_axis("network.uplink.bandwidth", ["1 Gbps", "10 Mbps", "100 Mbps"])
    assert bw.kind == "bandwidth" and bw.numbers == (1e9, 1e7, 1e8) and bw.log
    # ticks are written in one unit, the one the label names
    assert bw.label == "uplink bandwidth (Mbps)" and bw.unit == "Mbps"
    assert [bw.tick(v) for v in bw.ordered()] == ["10", "100", "1000"]
    assert bw.show("1 Gbps") == "1 Gbps"                                   # titles keep the value as written
    assert bw.ordered() == ["10 Mbps", "100 Mbps", "1 Gbps"]
    lat = figures.parse_axis("network.uplink.latency", ["1 ms", "10 ms"])
    assert lat.kind == "time" and lat.numbers == pytest.approx((1e-3, 1e-2)) and not lat.log   # factor 10
    assert lat.label == "uplink latency (ms)" and [lat.tick(v) for v in lat.values] == ["1", "10"]
    wide = figures.parse_axis("network.uplink.latency", ["0.1 ms", "200 ms"])
    assert wide.label == "uplink latency (ms)" and [wide.tick(v) for v in wide.values] == ["0.1", "200"]
    size = figures.parse_axis("network.header_bytes", ["1 kB", "64 B"])
    assert size.numbers == (1000.0, 64.0) and size.label == "header bytes (B)"
    bare = figures.parse_axis("network.uplink.bandwidth", [1e8, 1e9])     # bare numbers: base unit
    assert bare.kind == "bandwidth" and bare.numbers == (1e8, 1e9) and bare.label.endswith("(Mbps)")
    assert [bare.tick(v) for v in bare.values] == ["100", "1000"]
    mixed = figures.parse_axis("network.uplink.bandwidth", [1e8, "1 Gbps"])
    assert mixed.kind == "bandwidth" and mixed.numbers == (1e8, 1e9)
    workers = figures.parse_axis("workers", [4, 16])
    assert workers.kind == "number" and workers.numbers == (4.0, 16.0) and workers.label == "workers (count)"
    assert figures.parse_axis("stop.max_rounds", [10, 20]).label == "stop max rounds (rounds)"
    topo = figures.parse_axis("network.topology", ["star", "ring"])
    assert topo.kind == "category" and topo.numbers is None and topo.ordered() == ["star", "ring"]
    assert topo.number("ring") == 1.0 and topo.label == "topology"
    ring = figures.parse_axis("network.topology", [{"kind": "ring"}, {"kind": "star", "servers": 2}])
    assert ring.values == ("{'kind': 'ring'}", "{'kind': 'star', 'servers': 2}")   # as in sweep_summary.csv
    assert [ring.show(v) for v in ring.values] == ["ring", "kind=star, servers=2"]
    assert [bare.show(v) for v in bare.values] == ["100 Mbps", "1 Gbps"]


def test_zip_axis_ticks_positions_and_column():
    up = figures.parse_axis("network.uplink.latency", ["1 ms", "10 ms", "100 ms"])
    down = figures.parse_axis("network.downlink.latency", ["2 ms", "20 ms", "200 ms"])
    z = figures.zip_axis([up, down], [("1 ms", "2 ms"), ("10 ms", "20 ms"), ("100 ms", "200 ms"),
                                      ("1 ms", "2 ms")])             # a point repeated (zip over seeds)
    assert z.values == ("1 ms / 2 ms", "10 ms / 20 ms", "100 ms / 200 ms")
    assert [z.tick(v) for v in z.ordered()] == ["1 ms\n2 ms", "10 ms\n20 ms", "100 ms\n200 ms"]
    assert z.numbers == pytest.approx((1e-3, 1e-2, 1e-1)) and z.log       # x: the first axis, log scale
    assert z.label == "uplink latency (ms)\ndownlink latency (ms)"
    assert figures.axis_label(z) == "uplink latency (ms, log scale)\ndownlink latency (ms)"
    assert z.show("10 ms / 20 ms") == "10 ms / 20 ms" and z.columns == [up.name, down.name]
    df = pd.DataFrame({up.name: ["1 ms", "100 ms"], down.name: ["2 ms", "200 ms"]})
    assert figures.with_axis_column(df, z)[z.name].tolist() == ["1 ms / 2 ms", "100 ms / 200 ms"]
    # 100 ms and 200 ms would print on top of each other on a log axis: even positions instead
    up2 = figures.parse_axis("network.uplink.latency", ["0.1 ms", "1 ms", "100 ms", "200 ms"])
    bw = figures.parse_axis("network.uplink.bandwidth", ["10 Mbps", "100 Mbps", "10 Gbps", "20 Gbps"])
    tight = figures.zip_axis([up2, bw], list(zip(up2.values, bw.values)))
    assert tight.numbers is None and not tight.log and tight.ordered() == list(tight.values)
    # a first axis without numbers: positions in point order
    topo = figures.parse_axis("network.topology", ["star", "ring"])
    cat = figures.zip_axis([topo, up], [("star", "1 ms"), ("ring", "10 ms")])
    assert cat.numbers is None and [cat.tick(v) for v in cat.values] == ["star\n1 ms", "ring\n10 ms"]


# ---------------------------------------------------------------- sweep folder

BW, LAT = ["10 Mbps", "100 Mbps", "1 Gbps"], ["1 ms", "10 ms"]
# time to target per (bandwidth, latency) and seed 0, 1; None: not reached; 100 Mbps failed
TIMES = {("10 Mbps", "1 ms"): {"dense": (4, 4), "topk": (1, 1)},
         ("10 Mbps", "10 ms"): {"dense": (6, 6), "topk": (2, None)},
         ("1 Gbps", "1 ms"): {"dense": (1, 1), "topk": (2, 2)},
         ("1 Gbps", "10 ms"): {"dense": (None, None), "topk": (3, 3)}}


def write_sweep(folder: Path) -> Path:
    """A 3 x 2 x 2-seed grid written like run_sim.py sweep, with the lead's run_mode and
    replay_note columns after error; the 100 Mbps points failed."""
    axes = {"network.uplink.bandwidth": BW, "network.uplink.latency": LAT, "seed": [0, 1]}
    folder.mkdir(parents=True)
    (folder / "sweep.yaml").write_text(yaml.safe_dump({"name": "grid", "base": "tiny.yaml", "mode": "grid",
                                                       "axes": axes, "set": {}}, sort_keys=False))
    cols = ["point", "network.uplink.bandwidth", "network.uplink.latency", "point_status", "error", "run_mode",
            "replay_note", *SUMMARY_COLUMNS]
    algs = [{"name": "topk", "kind": "topk_ef_sgd"}, {"name": "dense", "kind": "sgd"}]
    rows, i = [], 0
    for bw in BW:
        for lat in LAT:
            for seed in (0, 1):
                point = f"{i:03d}"
                head = {"point": point, "network.uplink.bandwidth": bw, "network.uplink.latency": lat,
                        "run_mode": "full"}
                if bw == "100 Mbps":
                    rows.append({**head, "point_status": "failed", "error": "ValueError: boom"})
                else:
                    summary = [summary_row(a, seed, TIMES[bw, lat][a][seed]) for a in ("topk", "dense")]
                    upload = {"10 Mbps": 1.0, "1 Gbps": 0.001}[bw]
                    phases = [{"algorithm": a, "seed": seed, "round": 0, "upload_s": upload, "download_s": 0.1}
                              for a in ("topk", "dense")]
                    write_run(folder / "points" / point, algs, summary, phases)
                    rows += [{**head, "point_status": "done", **s} for s in summary]
                i += 1
    write_csv(folder / "sweep_summary.csv", cols, rows)
    return folder


def test_sweep_speedup_and_winner_tables(tmp_path):
    sw = report.read_sweep(write_sweep(tmp_path / "sweep"))
    assert [a.name for a in sw.axes] == ["network.uplink.bandwidth", "network.uplink.latency"]
    by = [a.name for a in sw.axes]
    tt = report.time_to_target(sw.summary, by, sw.algorithms)
    comp = report.comparison(tt, by, sw.algorithms, "dense")
    cell = {(r[by[0]], r[by[1]], r["algorithm"]): r for _, r in comp.iterrows()}
    assert cell["10 Mbps", "1 ms", "topk"]["speedup"] == 4.0
    assert cell["1 Gbps", "1 ms", "topk"]["speedup"] == 0.5
    assert math.isnan(cell["10 Mbps", "10 ms", "topk"]["speedup"])
    assert cell["10 Mbps", "10 ms", "topk"]["note"] == "topk 1/2 seeds reached"
    assert math.isnan(cell["1 Gbps", "10 ms", "topk"]["speedup"])
    assert cell["1 Gbps", "10 ms", "topk"]["note"] == "dense not reached"
    winners = {(bw, lat): cell[bw, lat, "dense"]["winner"] for bw, lat in TIMES}
    assert winners == {("10 Mbps", "1 ms"): "topk", ("10 Mbps", "10 ms"): "dense",
                       ("1 Gbps", "1 ms"): "dense", ("1 Gbps", "10 ms"): "topk"}
    assert cell["10 Mbps", "10 ms", "dense"]["winner_s"] == 6.0
    # another baseline turns the speed-ups around, not the winners
    other = report.comparison(tt, by, sw.algorithms, "topk").set_index([*by, "algorithm"])
    assert other.loc[("10 Mbps", "1 ms", "dense"), "speedup"] == 0.25
    assert other.loc[("10 Mbps", "10 ms", "dense"), "note"] == "topk 1/2 seeds reached"
    assert other.loc[("1 Gbps", "10 ms", "dense"), "note"] == "dense not reached"


def test_sweep_report(tmp_path, drawn):
    folder = write_sweep(tmp_path / "sweep")
    paths = report.make_report(folder)
    names = {p.name for p in paths}
    assert names == {"report.md", "sweep_time_to_target_network_uplink_bandwidth.png",
                     "sweep_time_to_target_network_uplink_latency.png",
                     "sweep_speedup_network_uplink_bandwidth_network_uplink_latency.png",
                     "sweep_winner_network_uplink_bandwidth_network_uplink_latency.png",
                     "sweep_phases_network_uplink_bandwidth.png"}
    assert_pngs(paths)
    md = (folder / "report.md").read_text()
    assert "seeds: 2 (0, 1)" in md and "points: 12 (8 done, 4 failed)" in md and "run mode: 8 full" in md
    assert md_row(md, "004", "100 Mbps", "1 ms", "failed", "ValueError: boom")
    # time to target per cell and algorithm, with the seeds that did not reach
    assert md_row(md, "10 Mbps", "10 ms", "topk", "1/2", "2", "–", "–", "10", "topk 1/2 seeds reached",
                  "seed 1")
    assert md_row(md, "1 Gbps", "10 ms", "dense", "0/2", "–")
    # the speed-up / winner table: topk (s), dense (s), speed-up topk, winner
    assert md_row(md, "10 Mbps", "1 ms", "1", "4", "4x", "topk")
    assert md_row(md, "10 Mbps", "10 ms", "1/2 seeds reached", "6", "topk 1/2 seeds reached", "dense")
    assert md_row(md, "1 Gbps", "1 ms", "2", "1", "0.5x", "dense")
    assert md_row(md, "1 Gbps", "10 ms", "3", "not reached", "dense not reached", "topk")
    # phases along the first axis, latency held at 1 ms: upload 1 s at 10 Mbps, 1 ms at 1 Gbps
    assert "uplink latency = 1 ms" in md
    assert md_row(md, "10 Mbps", "topk", "0.1", "0", "1", "0", "0", "0", "1.1")
    assert md_row(md, "1 Gbps", "dense", "0.1", "0", "0.001", "0", "0", "0", "0.101")
    # figures: titled with the sweep's name and seed count, ticks in the unit the label names;
    # a grid keeps one panel per value of the other axis
    assert_titled_with_units(drawn, "grid", "2 seeds")
    fig = drawn["sweep_time_to_target_network_uplink_bandwidth.png"]
    assert [ax.get_title() for ax in panels(fig)] == ["uplink latency = 1 ms", "uplink latency = 10 ms"]
    assert ticks(panels(fig)[0]) == ["10", "100", "1000"]
    assert panels(fig)[0].get_xlabel() == "uplink bandwidth (Mbps, log scale)"
    heat = drawn["sweep_speedup_network_uplink_bandwidth_network_uplink_latency.png"]
    assert ticks(heat.axes[0]) == ["10", "100", "1000"] and heat.axes[0].get_ylabel() == "uplink latency (ms)"
    assert ticks(drawn["sweep_phases_network_uplink_bandwidth.png"].axes[0]) == ["10", "100", "1000"]


def test_seed_only_sweep_gets_the_per_algorithm_figure(tmp_path, drawn):
    folder = tmp_path / "sweep"
    folder.mkdir()
    (folder / "sweep.yaml").write_text(yaml.safe_dump({"name": "s", "base": "b.yaml", "axes": {"seed": [0, 1]}}))
    rows = [{"point": f"{s:03d}", "point_status": "done", **summary_row(a, s, t)}
            for s, ts in ((0, (1.0, 2.0)), (1, (3.0, None))) for a, t in zip(("x", "y"), ts)]
    write_csv(folder / "sweep_summary.csv", ["point", "point_status", "error", *SUMMARY_COLUMNS], rows)
    paths = report.make_report(folder)
    assert [p.name for p in paths] == ["time_to_target.png", "report.md"]
    assert_pngs(paths)
    md = paths[-1].read_text()
    assert md_row(md, "x", "2/2", "2", f"{stats.t.ppf(0.975, 1):.4g}")
    assert md_row(md, "y", "1/2", "2", "–")
    assert_titled_with_units(drawn, "s", "2 seeds")


# ---------------------------------------------------------------- zipped sweep, end to end

UP, DOWN = ["1 ms", "10 ms", "100 ms"], ["2 ms", "20 ms", "200 ms"]
ZIP_SLUG = "network_uplink_latency_network_downlink_latency"


@pytest.fixture(scope="module")
def zip_sweep(tmp_path_factory) -> Path:
    """A real sweep of scenarios/tiny.yaml, ``mode: zip`` over uplink and downlink latency
    (1 ms with 2 ms, 10 ms with 20 ms, 100 ms with 200 ms), two seeds, two algorithms, four
    rounds (the first point trains, the others are re-timed from its trace)."""
    tmp = tmp_path_factory.mktemp("zip")
    spec = {"name": "zipped", "base": str(TINY), "mode": "zip",
            "axes": {"network.uplink.latency": UP, "network.downlink.latency": DOWN},
            "set": {"seeds": [0, 1], "stop.max_rounds": 4, "eval_every": 2, "stop.target_accuracy": 0.13,
                    "algorithms": [{"name": "sgd", "kind": "sgd", "lr": 0.1},
                                   {"name": "topk-ef", "kind": "topk_ef_sgd", "lr": 0.1, "ratio": 0.1}]}}
    (tmp / "sweep.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
    assert run_sim.main(["sweep", str(tmp / "sweep.yaml"), "--out", str(tmp / "out"), "--quiet"]) == 0
    return tmp / "out"


def test_zip_sweep_draws_one_figure_over_the_zipped_points(zip_sweep, drawn):
    paths = report.make_report(zip_sweep)
    # one time-to-target and one phase figure over the zipped points; no figure per axis, no heatmap
    assert {p.name for p in paths} == {"report.md", f"sweep_time_to_target_{ZIP_SLUG}.png",
                                       f"sweep_phases_{ZIP_SLUG}.png"}
    assert_pngs(paths)
    assert set(drawn) == {p.name for p in paths if p.suffix == ".png"}
    assert_titled_with_units(drawn, "zipped", "2 seeds")
    both = ["1 ms\n2 ms", "10 ms\n20 ms", "100 ms\n200 ms"]

    tt = drawn[f"sweep_time_to_target_{ZIP_SLUG}.png"]
    (ax,) = panels(tt)                                          # one panel: no panel per downlink latency
    assert ax.get_title() == "" and ticks(ax) == both
    assert ax.get_xscale() == "log" and list(ax.get_xticks()) == pytest.approx([1e-3, 1e-2, 1e-1])
    assert ax.get_xlabel() == "uplink latency (ms, log scale)\ndownlink latency (ms)"
    assert ax.get_ylabel() == "time to 0.13 accuracy (s, log scale)"
    lines = [ln for ln in ax.lines if ln.get_label() in ("sgd", "topk-ef") or len(ln.get_xdata()) == 3]
    xs = {tuple(np.round(ln.get_xdata(), 6)) for ln in lines if len(ln.get_xdata()) == 3}
    assert xs == {(0.001, 0.01, 0.1)}                          # each algorithm: a point at every zipped value
    times = [np.asarray(ln.get_ydata(), float) for ln in ax.lines if len(ln.get_xdata()) == 3]
    assert times and all(np.all(np.diff(t) > 0) for t in times)   # slower links, later at the target

    ph = drawn[f"sweep_phases_{ZIP_SLUG}.png"]
    assert [a.get_title() for a in panels(ph)] == ["sgd", "topk-ef"]     # a panel per algorithm only
    for a in panels(ph):
        assert ticks(a) == both and a.get_xlabel() == "uplink latency (ms)\ndownlink latency (ms)"
        assert a.get_ylabel() == "mean time per round (ms)"
        per_point = np.zeros(3)
        for bar in a.patches:
            per_point[round(bar.get_x() + bar.get_width() / 2)] += bar.get_height()
        # every zipped point has its bar (the downlink is not held at 2 ms), growing with the latency
        assert np.all(per_point > 0) and np.all(np.diff(per_point) > 0)
        assert per_point[2] > 150              # in ms: more than the 100 ms uplink, the downlink is 200 ms
    assert "downlink latency = " not in ph.get_suptitle()

    md = (zip_sweep / "report.md").read_text()
    assert "mode zip" in md and "uplink latency (ms) / downlink latency (ms)" in md
    assert md_row(md, "100 ms", "200 ms", "sgd", "2/2")         # tables keep one column per axis


# ---------------------------------------------------------------- errors, end to end

def test_neither_run_nor_sweep_folder(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="no metrics.csv or sweep_summary.csv") as exc:
        report.make_report(tmp_path / "empty")
    assert exc.value.file == str(tmp_path / "empty") and str(tmp_path / "empty") in str(exc.value)
    with pytest.raises(ConfigError, match="not a folder"):
        report.make_report(tmp_path / "missing")


def test_report_of_a_real_tiny_run(tmp_path):
    out = tmp_path / "run"
    algs = "[{name: sgd, kind: sgd, lr: 0.1}, {name: topk-ef, kind: topk_ef_sgd, lr: 0.1, ratio: 0.1}]"
    assert run_sim.main(["run", str(TINY), "--out", str(out), "--quiet", "--set", "seeds=[0,1]",
                         "--set", "stop.max_rounds=6", "--set", "eval_every=3", "--set", f"algorithms={algs}",
                         "--set", "stop.on_target=false"]) == 0
    paths = report.make_report(out)
    assert_pngs(paths)
    md = (out / "report.md").read_text()
    assert "seeds: 2 (0, 1)" in md and "algorithms: sgd (sgd), topk-ef (topk_ef_sgd)" in md
    assert md.count("| sgd |") == 2 and md.count("| topk-ef |") == 2   # time to target and phases


def test_plot_removes_report_figures_it_did_not_draw(tmp_path):
    """A figure left by an earlier plot of another layout would describe something else."""
    import run_sim
    out = tmp_path / "run"
    assert run_sim.main(["run", str(TINY), "--out", str(out), "--quiet", "--set", "stop.max_rounds=4",
                         "--set", "eval_every=2", "--set", "algorithms=[{name: sgd, kind: sgd, lr: 0.1}]"]) == 0
    stale = out / "sweep_time_to_target_old_axis.png"
    stale.write_bytes(b"\x89PNG old")
    mine = out / "notes.png"
    mine.write_bytes(b"\x89PNG mine")
    assert run_sim.main(["plot", str(out)]) == 0
    assert not stale.exists() and mine.exists() and (out / "phases.png").is_file()
