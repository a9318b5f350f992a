"""Report of a results folder: the figures of ``analysis.figures`` and ``report.md``
with the numbers behind each of them.

    make_report(DIR, baseline=None) -> [paths written]     # python run_sim.py plot DIR

DIR is a run folder (``metrics.csv``, ``summary.csv``, ``phases.csv``,
``scenario.yaml``) or a sweep folder (``sweep.yaml``, ``sweep_summary.csv``,
``points/NNN/``).  Columns are read by name, never by position.

Statistics
- Time to target, per algorithm (and per sweep cell): over the k seeds that
  reached the target, the mean and the 95% Student-t interval
  mean +- t(0.975, k-1) * s / sqrt(k), s the sample standard deviation; no
  interval when k = 1.  Seeds that did not reach the target are counted and
  listed with their status, never averaged in.
- Comparisons (speed-up over the baseline, the winner of a cell) use a mean
  only when every seed of that algorithm reached the target there; other cells
  are marked with the reason.  Speed-up = mean time of the baseline / mean time
  of the algorithm.  The baseline is ``baseline`` if given, else the first
  algorithm of kind ``sgd`` in the scenario, else the first algorithm.
- Phases: mean seconds per round over the rounds of each seed, then over seeds.

Sweeps: ``mode`` is read from sweep.yaml (``grid`` when absent) and applies to the
whole sweep.  Grid: a time-to-target figure per axis with a panel per value of the
other axes, heatmaps over the first two ``network.*`` axes, phase bars along the
first axis (the others held at their first value).  Zip: the axes move together, so
one time-to-target figure and one phase figure over the zipped points (every point,
nothing held; see ``analysis.figures.zip_axis``) and no heatmaps; the tables keep one
column per axis.  Figure titles name the scenario (the sweep's name for a sweep) and
the seeds ("seed 0", "3 seeds").
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import yaml
from scipy import stats

from sim.errors import ConfigError
from sim.study.results import SUMMARY_COLUMNS

from . import figures
from .figures import PHASES, Axis, parse_axis

CONFIDENCE = 0.95
INTERVAL = ("95% Student-t interval over the seeds that reached the target: "
            "mean ± t(0.975, k−1)·s/√k (s: sample standard deviation, k: seeds that reached); "
            "none with a single seed")


# ---------------------------------------------------------------- statistics

def t_interval(values, confidence: float = CONFIDENCE) -> tuple[float, float]:
    """(mean, half-width of the Student-t interval); half-width NaN for fewer than 2 values."""
    x = np.asarray(list(values), float)
    if len(x) == 0:
        return math.nan, math.nan
    if len(x) == 1:
        return float(x[0]), math.nan
    half = stats.t.ppf((1 + confidence) / 2, len(x) - 1) * x.std(ddof=1) / math.sqrt(len(x))
    return float(x.mean()), float(half)


def clean_summary(df: pd.DataFrame) -> pd.DataFrame:
    """summary rows read as text -> typed (seed int, reached bool, times float); rows without an
    algorithm (failed or pending sweep points) dropped."""
    df = df[df["algorithm"].fillna("").astype(str) != ""].copy()
    df["seed"] = pd.to_numeric(df["seed"]).astype(int)
    df["reached"] = df["reached"].astype(str).str.lower() == "true"
    for col in ("target_acc", "time_to_target_s", "rounds_to_target", "final_test_acc"):
        df[col] = pd.to_numeric(df[col], errors="coerce")
    df["status"] = df["status"].fillna("").astype(str)
    return df


def time_to_target(summary: pd.DataFrame, by: list[str], algorithms: list[str]) -> pd.DataFrame:
    """One row per group of ``by`` + algorithm: seeds, reached, mean_s, half_s, lo_s, hi_s,
    rounds (mean rounds to target of the seeds that reached) and not_reached ("seed 2 (diverged)")."""
    rows = []
    for key, g in summary.groupby(by + ["algorithm"], sort=False):
        hit = g[g["reached"]]
        mean, half = t_interval(hit["time_to_target_s"])
        miss = g[~g["reached"]].sort_values("seed")
        rows.append({**dict(zip(by + ["algorithm"], key)), "seeds": len(g), "reached": len(hit),
                     "mean_s": mean, "half_s": half, "lo_s": mean - half, "hi_s": mean + half,
                     "rounds": hit["rounds_to_target"].mean() if len(hit) else math.nan,
                     "not_reached": ", ".join(f"seed {s.seed}" + (f" ({s.status})" if s.status not in ("", "done")
                                                                      else "") for s in miss.itertuples())})
    out = pd.DataFrame(rows, columns=[*by, "algorithm", "seeds", "reached", "mean_s", "half_s", "lo_s",
                                      "hi_s", "rounds", "not_reached"])
    return _sort(out, by, algorithms)


def _sort(df: pd.DataFrame, by: list[str], algorithms: list[str], axes: dict[str, Axis] | None = None
          ) -> pd.DataFrame:
    keys = {"algorithm": lambda s: s.map({a: i for i, a in enumerate(algorithms)})}
    for name, axis in (axes or {}).items():
        keys[name] = lambda s, a=axis: s.map({v: i for i, v in enumerate(a.ordered())})
    cols = [c for c in [*by, "algorithm"] if c in df.columns]
    if df.empty:
        return df.reset_index(drop=True)
    return df.sort_values(cols, key=lambda s: keys[s.name](s) if s.name in keys else s,
                          kind="stable").reset_index(drop=True)


def _cell_status(row) -> str:
    """Why a cell's mean cannot be compared ("" when it can)."""
    if row is None:
        return "no data"
    if row.reached == row.seeds:
        return ""
    if row.reached == 0:
        return "not reached"
    return f"{row.reached}/{row.seeds} seeds reached"


def comparison(tt: pd.DataFrame, by: list[str], algorithms: list[str], baseline: str) -> pd.DataFrame:
    """Per cell of ``by`` and algorithm: mean_s (only when every seed reached), speedup over
    ``baseline`` and note (why not comparable); plus per cell the winner (smallest mean time,
    among algorithms where every seed reached; "" when none) and winner_s."""
    rows = []
    cells = tt.groupby(by, sort=False) if by else [((), tt)]
    for key, g in cells:
        key = key if isinstance(key, tuple) else (key,)
        lookup = {r.algorithm: r for r in g.itertuples()}
        status = {a: _cell_status(lookup.get(a)) for a in algorithms}
        means = {a: lookup[a].mean_s for a in algorithms if status[a] == ""}
        winner = min(means, key=means.get) if means else ""
        for a in algorithms:
            note = "; ".join(f"{who} {status[who]}" for who in dict.fromkeys([baseline, a]) if status[who])
            speedup = means[baseline] / means[a] if not note and a in means and baseline in means else math.nan
            rows.append({**dict(zip(by, key)), "algorithm": a, "mean_s": means.get(a, math.nan),
                         "speedup": speedup, "note": note, "winner": winner,
                         "winner_s": means.get(winner, math.nan)})
    return pd.DataFrame(rows, columns=[*by, "algorithm", "mean_s", "speedup", "note", "winner", "winner_s"])


def phase_means(phases: pd.DataFrame, by: list[str]) -> pd.DataFrame:
    """Mean seconds per round of each phase: over the rounds of each seed, then over seeds
    (a phase left empty or missing took no time)."""
    phases = phases.reindex(columns=list(dict.fromkeys([*by, "seed", *phases.columns, *PHASES])))
    phases[PHASES] = phases[PHASES].fillna(0.0)
    per_seed = phases.groupby([*by, "seed"], sort=False)[PHASES].mean().reset_index()
    out = per_seed.groupby(by, sort=False)[PHASES].mean().reset_index()
    out["round_s"] = out[PHASES].sum(axis=1)
    return out


# ---------------------------------------------------------------- reading folders

@dataclass
class Run:
    folder: Path
    scenario: dict
    metrics: pd.DataFrame
    summary: pd.DataFrame
    phases: pd.DataFrame
    algorithms: list[str]


@dataclass
class Sweep:
    folder: Path
    spec: dict
    axes: list[Axis]            # swept fields other than seed
    summary: pd.DataFrame       # typed rows of the points that finished
    points: pd.DataFrame        # one row per point: point, the axes, point_status, error
    scenario: dict
    algorithms: list[str]

    @property
    def zipped(self) -> bool:
        """sweep.yaml ``mode: zip``: the i-th values of every axis go together (the whole sweep)."""
        return self.spec.get("mode", "grid") == "zip"

    def plot_axes(self) -> list[tuple[Axis, list[Axis]]]:
        """(x axis, panel axes) of each figure against the swept values: grid: every axis, one
        panel per value combination of the others; zip: one axis for all of them together
        (:func:`analysis.figures.zip_axis`), one x position per zipped point, no panels."""
        if self.zipped and len(self.axes) > 1:
            pts = self.points[[a.name for a in self.axes]].astype(str).itertuples(index=False, name=None)
            return [(figures.zip_axis(self.axes, list(pts)), [])]
        return [(a, [b for b in self.axes if b is not a] if not self.zipped else []) for a in self.axes]


def _read_csv(path: Path, **kw) -> pd.DataFrame:
    return pd.read_csv(path, **kw) if path.is_file() and path.stat().st_size else pd.DataFrame()


def _read_yaml(path: Path) -> dict:
    return (yaml.safe_load(path.read_text()) or {}) if path.is_file() else {}


def _algorithm_order(scenario: dict, *frames: pd.DataFrame) -> list[str]:
    names = [str(a.get("name") or a.get("kind")) for a in scenario.get("algorithms", []) if isinstance(a, dict)]
    for f in frames:
        if "algorithm" in f.columns:
            names += [str(a) for a in f["algorithm"].dropna() if str(a) != ""]
    return list(dict.fromkeys(names))


def read_run(folder: str | Path) -> Run:
    folder = Path(folder)
    scenario = _read_yaml(folder / "scenario.yaml")
    metrics = _read_csv(folder / "metrics.csv", dtype={"algorithm": str})
    summary = _read_csv(folder / "summary.csv", dtype=str)
    summary = clean_summary(summary) if len(summary) else summary
    phases = _read_csv(folder / "phases.csv", dtype={"algorithm": str})
    return Run(folder, scenario, metrics, summary, phases, _algorithm_order(scenario, summary, metrics))


def read_sweep(folder: str | Path) -> Sweep:
    folder = Path(folder)
    spec = _read_yaml(folder / "sweep.yaml")
    raw = pd.read_csv(folder / "sweep_summary.csv", dtype=str, keep_default_na=False)
    axes_spec = spec.get("axes") or _axes_from_columns(raw)
    axes = [parse_axis(k, _with_csv_values(list(v), raw[k])) for k, v in axes_spec.items()
            if k not in SUMMARY_COLUMNS and k in raw.columns]
    points = raw.drop_duplicates("point").reindex(
        columns=["point", *[a.name for a in axes], "point_status", "error", "run_mode"], fill_value="")
    done = raw[raw["point_status"] == "done"]
    summary = clean_summary(done.replace("", np.nan)) if len(done) else done
    scenario = {}
    for p in points.loc[points["point_status"] == "done", "point"]:
        if (scenario := _read_yaml(folder / "points" / p / "scenario.yaml")):
            break
    return Sweep(folder, spec, axes, summary, points.reset_index(drop=True), scenario,
                 _algorithm_order(scenario, summary))


def _with_csv_values(values: list, column: pd.Series) -> list:
    """The axis values of sweep.yaml, plus any value found only in sweep_summary.csv."""
    known = {str(v) for v in values}
    return values + [yaml.safe_load(v) for v in dict.fromkeys(column) if v != "" and v not in known]


def _axes_from_columns(raw: pd.DataFrame) -> dict[str, list]:
    """Without sweep.yaml: the columns between ``point`` and ``point_status``."""
    cols = list(raw.columns)
    names = cols[cols.index("point") + 1:cols.index("point_status")]
    return {n: [yaml.safe_load(v) for v in dict.fromkeys(raw[n])] for n in names}


def resolve_baseline(algorithms: list[str], scenario: dict, requested: str | None, folder: Path) -> str:
    """``requested`` if given (must be one of ``algorithms``), else the first algorithm of kind
    ``sgd`` in the scenario, else the first algorithm."""
    if requested is not None:
        if requested not in algorithms:
            raise ConfigError(f"baseline {requested!r} is not one of the algorithms: {', '.join(algorithms)}",
                              field="baseline", file=str(folder))
        return requested
    for a in scenario.get("algorithms", []):
        if isinstance(a, dict) and a.get("kind") == "sgd" and str(a.get("name")) in algorithms:
            return str(a["name"])
    return algorithms[0]


# ---------------------------------------------------------------- Markdown

def _num(x, digits: int = 4) -> str:
    return "–" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}g}"


def _md_cell(v) -> str:
    return (_num(v) if isinstance(v, float) else str(v)).replace("|", "\\|").replace("\n", " ")


def md_table(df: pd.DataFrame) -> str:
    """A DataFrame of strings/numbers as a Markdown table."""
    lines = ["| " + " | ".join(map(str, df.columns)) + " |", "|" + "---|" * len(df.columns)]
    lines += ["| " + " | ".join(_md_cell(v) for v in row) + " |" for row in df.itertuples(index=False)]
    return "\n".join(lines)


def tt_markdown(tt: pd.DataFrame, by: list[str], comp: pd.DataFrame | None = None,
                baseline: str | None = None) -> str:
    out = tt[[*by, "algorithm"]].copy()
    out["reached"] = [f"{r}/{n}" for r, n in zip(tt["reached"], tt["seeds"])]
    out["mean (s)"] = tt["mean_s"].map(_num)
    out["± (s)"] = tt["half_s"].map(_num)
    out["95% CI (s)"] = [f"[{_num(lo)}, {_num(hi)}]" if not math.isnan(hi) else "–"
                         for lo, hi in zip(tt["lo_s"], tt["hi_s"])]
    out["mean rounds"] = tt["rounds"].map(lambda v: _num(v, 5))
    if comp is not None and baseline is not None:
        m = tt[[*by, "algorithm"]].merge(comp, on=[*by, "algorithm"], how="left")
        out[f"speed-up over {baseline}"] = [f"{s:.3g}x" if not math.isnan(s) else (n or "–")
                                           for s, n in zip(m["speedup"], m["note"].fillna(""))]
    out["not reached"] = tt["not_reached"].replace("", "–")
    return md_table(out)


def _image(path: Path, caption: str) -> str:
    return f"![{caption}]({path.name})\n\n*{caption}*\n"


def _target(summary: pd.DataFrame) -> float | None:
    t = summary["target_acc"].dropna().unique() if "target_acc" in summary else []
    return float(t[0]) if len(t) == 1 else None


def _target_text(summary: pd.DataFrame) -> str:
    t = sorted(summary["target_acc"].dropna().unique()) if "target_acc" in summary else []
    return ", ".join(f"{v:g}" for v in t) or "unknown"


# ---------------------------------------------------------------- run folder

def _run_report(folder: Path, baseline: str | None) -> list[Path]:
    run = read_run(folder)
    name = str(run.scenario.get("name", folder.name))
    title = figures.figure_title(name, _seeds_of(run.summary, run.metrics, run.phases))
    algs, colors = run.algorithms, figures.palette(run.algorithms)
    written: list[Path] = []
    md = [f"# Report: {name}", "", f"Run folder `{folder}`."]
    if run.summary.empty and run.metrics.empty:
        md += ["", "No evaluations or summary rows yet: nothing to plot."]
    target = _target(run.summary) if len(run.summary) else None
    if len(run.summary):
        base = resolve_baseline(algs, run.scenario, baseline, folder)
        seeds = sorted(run.summary["seed"].unique())
        md += ["", f"- target test accuracy: {_target_text(run.summary)}",
               f"- seeds: {len(seeds)} ({', '.join(map(str, seeds))})",
               f"- algorithms: {_kinds(run.scenario, algs)}",
               f"- interval: {INTERVAL}", f"- speed-up baseline: {base}"]
        tt = time_to_target(run.summary, [], algs)
        comp = comparison(tt, [], algs, base)
        p = figures.plot_time_to_target(tt, run.summary[run.summary["reached"]], colors, target,
                                        folder / "time_to_target.png", title)
        written.append(p)
        md += ["", "## Time to target", "", tt_markdown(tt, [], comp, base), "",
               _image(p, "Time to target per algorithm: dots are seeds, bars the 95% t-interval.")]
    if len(run.metrics):
        md += ["", "## Learning curves", "",
               ("Each seed is interpolated linearly onto the union of the seeds' evaluation points "
                "where every seed has data; line = mean over seeds, band = min..max over seeds; "
                "dotted: a seed that ran further than the others."), ""]
        for key in figures.X_AXES:
            p = figures.plot_curves(run.metrics, key, target, folder / f"curves_{key}.png", colors, title)
            written.append(p)
            md.append(_image(p, f"Test accuracy and training loss against {figures.X_AXES[key][1]}."))
    if len(run.phases):
        ph = _sort(phase_means(run.phases, ["algorithm"]), [], algs)
        p = figures.plot_phases(ph, folder / "phases.png", title)
        written.append(p)
        md += ["", "## Where the time of a round goes", "",
               ("Critical path of a round (the worker whose upload completed last), mean seconds per "
                "round over the rounds of each seed, then over seeds."), "", _phase_markdown(ph, []), "",
               _image(p, "Phase breakdown of a round per algorithm.")]
    md += _event_driven_markdown(folder, title, written)
    md += _decentralized_markdown(run, title, folder, written)
    return [*written, _write(folder, md)]


def _decentralized_markdown(run: Run, title: str, folder: Path, written: list[Path]) -> list[str]:
    """Gossip algorithms (sim/gossip.py): the last evaluation of each run and the consensus figure."""
    m = run.metrics
    if "consensus_distance" not in m.columns or not pd.to_numeric(m["consensus_distance"], errors="coerce").notna().any():
        return []
    rows = m[pd.to_numeric(m["consensus_distance"], errors="coerce").notna()]
    last = rows.sort_values("round").groupby(["algorithm", "seed"], sort=False).tail(1)
    gaps = run.summary[["algorithm", "seed", "spectral_gap"]] if "spectral_gap" in run.summary.columns else None
    table = last[["algorithm", "seed", "round", "sim_time_s", "test_acc", "worker_acc_mean", "worker_acc_min",
                  "consensus_distance"]]
    if gaps is not None:
        table = table.merge(gaps, on=["algorithm", "seed"], how="left")
    table = table.rename(columns={"test_acc": "averaged model acc"})
    for c in table.columns[3:]:
        table[c] = table[c].map(lambda v: _num(float(v)) if pd.notna(v) and v != "" else "")
    p = figures.plot_consensus(m, folder / "consensus.png", title)
    written.append(p)
    return ["", "## Decentralized algorithms", "",
            ("Last evaluation of each run: the averaged model's test accuracy, the mean and worst over the "
             "workers' own models, the consensus distance (1/n) sum ||x_i - x_bar||^2, and the spectral gap "
             "1 - |lambda_2| of the mixing matrix (AD-PSGD: of the expected pairwise averaging)."), "",
            md_table(table), "", _image(p, "Consensus distance and the worst worker's accuracy over time.")]


def _event_driven_markdown(folder: Path, title: str, written: list[Path]) -> list[str]:
    """Staleness and the per-worker timeline of event-driven algorithms (updates.csv)."""
    path = folder / "updates.csv"
    if not path.exists():
        return []
    up = pd.read_csv(path, dtype={"algorithm": str})
    if not len(up):
        return []
    stats = up.groupby("algorithm", sort=False).agg(
        messages=("staleness", "size"), mean_staleness=("staleness", "mean"),
        max_staleness=("staleness", "max"), versions=("version", "max")).reset_index()
    a = figures.plot_staleness(up, folder / "staleness.png", title)
    b = figures.plot_timeline(up, folder / "timeline.png", title)
    written += [a, b]
    return ["", "## Event-driven algorithms", "",
            ("Per message processed by the server (updates.csv, all seeds): staleness = the server version "
             "it was applied to minus the version it was computed at."), "", md_table(stats), "",
            _image(a, "Share of the messages at each staleness."),
            _image(b, "What each worker does over the first simulated seconds: download, compute, upload; "
                      "blank: idle (waiting for the server or for the slowest worker).")]


def _seeds_of(*frames: pd.DataFrame) -> list[int]:
    """The seeds found in the first of ``frames`` that has any."""
    for f in frames:
        if "seed" in f.columns and f["seed"].notna().any():
            return sorted({int(v) for v in pd.to_numeric(f["seed"], errors="coerce").dropna()})
    return []


def _kinds(scenario: dict, algs: list[str]) -> str:
    kinds = {str(a.get("name")): a.get("kind") for a in scenario.get("algorithms", []) if isinstance(a, dict)}
    return ", ".join(f"{a} ({kinds[a]})" if kinds.get(a) else a for a in algs)


def _phase_markdown(ph: pd.DataFrame, by: list[str]) -> str:
    out = ph[[*by, "algorithm"]].copy()
    for c in [*PHASES, "round_s"]:
        out[f"{c.removesuffix('_s')} (s)"] = ph[c].map(_num)
    return md_table(out)


def _write(folder: Path, md: list[str]) -> Path:
    path = folder / "report.md"
    path.write_text("\n".join(md).rstrip() + "\n")
    return path


# ---------------------------------------------------------------- sweep folder

def _sweep_report(folder: Path, baseline: str | None) -> list[Path]:
    sw = read_sweep(folder)
    name = str(sw.spec.get("name", folder.name))
    md = [f"# Sweep report: {name}", "", f"Sweep folder `{folder}`.", ""]
    md += _sweep_header(sw)
    if sw.summary.empty:
        return [_write(folder, md + ["", "No finished point yet: nothing to plot."])]
    algs, colors = sw.algorithms, figures.palette(sw.algorithms)
    base = resolve_baseline(algs, sw.scenario, baseline, folder)
    by = [a.name for a in sw.axes]
    axes = {a.name: a for a in sw.axes}
    seeds = sorted(sw.summary["seed"].unique())
    title = figures.figure_title(name, seeds)
    target = _target(sw.summary)
    md += [f"- target test accuracy: {_target_text(sw.summary)}",
           f"- seeds: {len(seeds)} ({', '.join(map(str, seeds))})",
           f"- algorithms: {_kinds(sw.scenario, algs)}; speed-up baseline: {base}",
           f"- interval: {INTERVAL}",
           ("- comparisons (speed-up, winner) use a mean only where every seed reached the target; "
            "other cells say why"), ""]
    tt = _sort(time_to_target(sw.summary, by, algs), by, algs, axes)
    comp = _sort(comparison(tt, by, algs, base), by, algs, axes)
    written: list[Path] = []
    md += ["## Time to target", "", tt_markdown(tt, by, comp, base), ""]
    if not by:
        p = figures.plot_time_to_target(tt, sw.summary[sw.summary["reached"]], colors, target,
                                        folder / "time_to_target.png", title)
        written.append(p)
        md.append(_image(p, "Time to target per algorithm: dots are seeds, bars the 95% t-interval."))
    plot_axes = sw.plot_axes()
    for axis, panels in plot_axes:
        p = figures.plot_tt_vs_axis(figures.with_axis_column(tt, axis), axis, panels, algs, colors, target,
                                    folder / f"sweep_time_to_target_{axis.slug}.png", title)
        written.append(p)
        md.append(_image(p, f"Time to target against {axis.one_line}; band: 95% t-interval over seeds."))
    if by:
        md += ["", "## Speed-up and winner per cell", "", _comparison_markdown(comp, by, algs, base), ""]
    written += _heatmaps(sw, comp, algs, base, colors, title, md)
    if plot_axes:
        written += _sweep_phases(sw, *plot_axes[0], algs, title, md)
    return [*written, _write(folder, md)]


def _sweep_header(sw: Sweep) -> list[str]:
    md = [f"- base scenario: `{sw.spec.get('base', '?')}`, mode {sw.spec.get('mode', 'grid')}"]
    for k, v in (sw.spec.get("axes") or {}).items():
        md.append(f"- axis `{k}`: {', '.join(map(str, v))}")
    for k, v in (sw.spec.get("set") or {}).items():
        md.append(f"- set `{k}` = {v}")
    counts = sw.points["point_status"].value_counts()
    md.append(f"- points: {len(sw.points)} ({', '.join(f'{n} {s}' for s, n in counts.items())})")
    modes = sw.points.loc[sw.points["point_status"] == "done", "run_mode"].replace("", np.nan).dropna()
    if len(modes):
        md.append(f"- run mode: {', '.join(f'{n} {m}' for m, n in modes.value_counts().items())} "
                  "(replay: re-timed from another point's trace, see sweep_summary.csv replay_note)")
    bad = sw.points[sw.points["point_status"] != "done"].drop(columns="run_mode")
    if len(bad):
        md += ["", "Points left out (not finished):", "", md_table(bad), ""]
    return md


def _comparison_markdown(comp: pd.DataFrame, by: list[str], algs: list[str], base: str) -> str:
    """One row per cell: each algorithm's mean time (or why not), speed-ups, the winner."""
    rows = []
    for key, g in comp.groupby(by, sort=False):
        key = key if isinstance(key, tuple) else (key,)
        r = dict(zip(by, key))
        for a in g.itertuples():
            r[f"{a.algorithm} (s)"] = _num(a.mean_s) if not math.isnan(a.mean_s) else _why(a.note, a.algorithm)
        for a in g.itertuples():
            if a.algorithm != base:
                r[f"speed-up {a.algorithm}"] = f"{a.speedup:.3g}x" if not math.isnan(a.speedup) else a.note
        first = g.iloc[0]
        r["winner"] = first["winner"] or "none reached on every seed"
        rows.append(r)
    return md_table(pd.DataFrame(rows))


def _why(note: str, alg: str) -> str:
    for part in note.split("; "):
        if part.startswith(alg + " "):
            return part.removeprefix(alg + " ")
    return "–"


def _heatmaps(sw: Sweep, comp: pd.DataFrame, algs: list[str], base: str, colors: dict, name: str,
              md: list[str]) -> list[Path]:
    net = [a for a in sw.axes if a.name.startswith("network.")]
    if len(net) < 2 or sw.zipped:   # zipped axes move together: no 2-D grid
        return []
    xa, ya = net[0], net[1]
    rest = [a for a in sw.axes if a not in (xa, ya)]
    written = []
    md += ["", f"## Heatmaps over {xa.one_line} and {ya.one_line}", ""]
    for i, combo in enumerate(figures._combos(comp, rest)):
        sub = figures._select(comp, combo)
        suffix = f"_{i}" if rest else ""
        where = f" ({figures._combo_title(combo, rest)})" if rest else ""
        slug = f"{xa.slug}_{ya.slug}{suffix}"
        if len(algs) > 1:
            p = figures.plot_speedup_heatmaps(sub, xa, ya, algs, base, sw.folder / f"sweep_speedup_{slug}.png",
                                              name + where)
            written.append(p)
            md.append(_image(p, f"Speed-up over {base}{where}; hatched cells are not comparable."))
        winners = sub.drop_duplicates([xa.name, ya.name])
        p = figures.plot_winner_heatmap(winners, xa, ya, algs, colors, sw.folder / f"sweep_winner_{slug}.png",
                                        name + where)
        written.append(p)
        md.append(_image(p, f"Fastest algorithm to the target per cell{where}."))
    return written


def _sweep_phases(sw: Sweep, axis: Axis, rest: list[Axis], algs: list[str], title: str,
                  md: list[str]) -> list[Path]:
    """Phase bars along ``axis`` (grid: the first axis, the ``rest`` held at their first value;
    zip: the zipped axis, every point)."""
    held = {a.name: a.values[0] for a in rest}
    pts = figures._select(sw.points[sw.points["point_status"] == "done"], held)
    cols = axis.columns
    frames = []
    for _, p in pts.iterrows():
        f = _read_csv(sw.folder / "points" / p["point"] / "phases.csv", dtype={"algorithm": str})
        if len(f):
            frames.append(f.assign(**{c: p[c] for c in cols}))
    if not frames:
        return []
    ph = phase_means(pd.concat(frames, ignore_index=True), [*cols, "algorithm"])
    ph = _sort(figures.with_axis_column(ph, axis), [axis.name], algs, {axis.name: axis})
    note = ", ".join(f"{a.what} = {a.show(held[a.name])}" for a in rest)
    path = figures.plot_phases_vs_axis(ph, axis, algs, sw.folder / f"sweep_phases_{axis.slug}.png", title, note)
    md += ["", f"## Where the time of a round goes, against {axis.one_line}", "",
           "Mean seconds per round on the critical path (over the rounds of each seed, then seeds)" +
           (f"; {note}." if note else "."), "", _phase_markdown(ph, cols), "",
           _image(path, f"Phase breakdown of a round against {axis.one_line}, one panel per algorithm.")]
    return [path]


# ---------------------------------------------------------------- entry point

# The report's own figures (the run's time_to_accuracy.png and accuracy_vs_bytes.png are plot_run's)
REPORT_FIGURES = ("time_to_target.png", "curves_*.png", "phases.png", "sweep_*.png")


def _drop_stale(folder: Path, written: list[Path]) -> list[Path]:
    """Remove report figures an earlier ``plot`` left that this one did not draw
    (another sweep layout, an axis since removed): a figure in the folder must
    describe what is in it now."""
    keep = {Path(p).resolve() for p in written}
    for pattern in REPORT_FIGURES:
        for old in folder.glob(pattern):
            if old.resolve() not in keep:
                old.unlink()
    return written


def make_report(path: str | Path, baseline: str | None = None) -> list[Path]:
    """Write the figures (PNG) and report.md of a run or sweep folder into it; returns the paths
    written.  ConfigError when ``path`` is neither."""
    folder = Path(path)
    if not folder.is_dir():
        raise ConfigError(f"{folder} is not a folder (expected a run or sweep results folder)", file=str(path))
    if (folder / "sweep_summary.csv").is_file():
        return _drop_stale(folder, _sweep_report(folder, baseline))
    if (folder / "metrics.csv").is_file():
        return _drop_stale(folder, _run_report(folder, baseline))
    raise ConfigError(f"no metrics.csv or sweep_summary.csv in {folder}: expected a run folder "
                      "(run_sim.py run) or a sweep folder (run_sim.py sweep)", file=str(path))
