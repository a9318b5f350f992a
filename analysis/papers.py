"""results/papers/report.md: each reproduction's table beside the paper's numbers.

    write_report(OUT, quick=False) -> path        # run_sim.py papers writes it after the runs

Every number comes from the sweep folders under OUT (one per reproduction,
sim/study/papers.py): a point counts only when its row in sweep_summary.csv is
``done`` (its done marker matches its scenario, sim/study/sweep.py), and the
table says how many seeds that is.  Intervals are 95% Student-t intervals
over the seeds, mean ± t(0.975, k−1)·s/√k (analysis/report.py
``t_interval``); ratios against a baseline are taken per seed (both methods
ran on the same seed's data and initial weights) and then averaged.

A run that diverged (summary.csv ``diverged``) is listed by seed and round
in its row and left out of that row's means, never averaged in.  The
paper's numbers are quoted with where they come from; a verdict line
under each table says whether the paper's direction and ratio hold here,
computed from the same numbers (never written by hand).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from .report import md_table, t_interval


# ---------------------------------------------------------------- reading

@dataclass
class Study:
    """The done points of one reproduction's sweep folder."""

    folder: Path
    points: pd.DataFrame                     # sweep_summary.csv, one row per point (all statuses)
    summary: pd.DataFrame                    # summary.csv rows of the done points, with their axes
    metrics: pd.DataFrame                    # metrics.csv rows of the done points, + workers
    diagnostics: pd.DataFrame                # diagnostics.csv rows of the done points
    scenario: dict = field(default_factory=dict)   # the first done point's scenario.yaml

    @property
    def seeds(self) -> int:
        return int(self.summary["seed"].nunique()) if len(self.summary) else 0

    @property
    def status(self) -> str:
        st = self.points["point_status"].value_counts().to_dict() if len(self.points) else {}
        total = int(sum(st.values()))
        return f"{st.get('done', 0)} of {total} points done" + \
            "".join(f", {v} {k}" for k, v in sorted(st.items()) if k != "done")


def read_study(folder: str | Path) -> Study | None:
    folder = Path(folder)
    table = folder / "sweep_summary.csv"
    if not table.is_file():
        return None
    raw = pd.read_csv(table, dtype=str, keep_default_na=False)
    points = raw.drop_duplicates("point")
    done = points.loc[points["point_status"] == "done", "point"].tolist()
    summary, metrics, diags, scenario = [], [], [], {}
    for p in done:
        d = folder / "points" / p
        scn = yaml.safe_load((d / "scenario.yaml").read_text())
        scenario = scenario or scn
        s = pd.read_csv(d / "summary.csv", dtype={"algorithm": str})
        m = pd.read_csv(d / "metrics.csv", dtype={"algorithm": str})
        for df in (s, m):
            df["point"], df["workers"] = p, int(scn["workers"])
        summary.append(s)
        metrics.append(m)
        if (d / "diagnostics.csv").is_file():
            g = pd.read_csv(d / "diagnostics.csv", dtype={"algorithm": str})
            g["point"] = p
            diags.append(g)
    cat = lambda frames: pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()  # noqa: E731
    return Study(folder, points, cat(summary), cat(metrics), cat(diags), scenario)


# ---------------------------------------------------------------- formatting

def _f(x: float, digits: int = 3) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "–"
    if abs(x) >= 1e7:
        return f"{x:.{digits}g}"
    if abs(x) >= 1000:
        return f"{x:,.0f}"
    return f"{x:.{digits}g}"


def ci(values, digits: int = 3) -> str:
    """'mean [lo, hi]' (95% t-interval), or just the mean with one value."""
    vals = [float(v) for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    if not vals:
        return "–"
    mean, half = t_interval(vals)
    if math.isnan(half):
        return _f(mean, digits)
    return f"{_f(mean, digits)} [{_f(mean - half, digits)}, {_f(mean + half, digits)}]"


def _interval(values) -> tuple[float, float, float]:
    vals = [float(v) for v in values if not math.isnan(float(v))]
    mean, half = t_interval(vals)
    return mean, mean - half, mean + half


def _inside(x: float, lo: float, hi: float) -> bool:
    return not (math.isnan(lo) or math.isnan(hi)) and lo <= x <= hi


def _order(scenario: dict, df: pd.DataFrame) -> list[str]:
    names = [a.get("name") or a["kind"] for a in scenario.get("algorithms", [])]
    return [n for n in names if n in set(df["algorithm"])] if len(df) else []


def _diverged(st: Study) -> dict[str, dict[int, int]]:
    """algorithm -> {seed: the round it stopped at} for the runs that diverged."""
    s = st.summary
    if not len(s) or "diverged" not in s:
        return {}
    bad = s[s["diverged"].astype(str) == "True"]
    out: dict[str, dict[int, int]] = {}
    for a, seed, rnd in zip(bad["algorithm"], bad["seed"], bad["final_round"]):
        out.setdefault(str(a), {})[int(seed)] = int(float(rnd))
    return out


def _diverged_cell(bad: dict[int, int]) -> str:
    return ", ".join(f"seed {k} at round {v}" for k, v in sorted(bad.items())) or "–"


def _healthy(metrics: pd.DataFrame, bad: dict[str, dict[int, int]]) -> pd.DataFrame:
    """metrics without the (algorithm, seed) runs that diverged: they are listed, never averaged."""
    drop = {(a, s) for a, seeds in bad.items() for s in seeds}
    keep = [(a, s) not in drop for a, s in zip(metrics["algorithm"], metrics["seed"])]
    return metrics[keep]


def _at_round(metrics: pd.DataFrame, rnd: int) -> pd.Series:
    """train_loss of each (algorithm, seed) at the last evaluation at or before ``rnd``."""
    m = metrics[metrics["round"] <= rnd].sort_values("round")
    return m.groupby(["algorithm", "seed"])["train_loss"].last()


# ---------------------------------------------------------------- the tables

# sasg.txt Table II, "FC MNIST": rounds (worker uploads) to 98% test accuracy.
SASG_PAPER = {"sgd": 60400, "sparse": 67400, "lasg": 33853, "sasg": 22823}
# The SASG notebook FullConnect_MNIST.ipynb (the source of Table II), mean over its seeds
# 1, 19, 31, 44, 80 (../shared/notes/algorithm-details.md).
SASG_NOTEBOOK = {"sgd": 61000, "sparse": 62200, "lasg": 34269, "sasg": 23775}


def sasg_table(st: Study) -> list[str]:
    s = st.summary
    algs = _order(st.scenario, s)
    base = "sgd"
    reached = s[s["reached"].astype(str) == "True"]
    by_seed = reached.pivot_table(index="seed", columns="algorithm", values="uploads_to_target")
    rows, verdict = [], []
    ratios = {}
    for a in algs:
        g = s[s["algorithm"] == a]
        r = reached[reached["algorithm"] == a]
        ratio = (by_seed[a] / by_seed[base]).dropna() if a in by_seed and base in by_seed else pd.Series([])
        ratios[a] = _interval(ratio) if len(ratio) else (math.nan,) * 3
        rows.append({
            "method": a, "reached": f"{len(r)}/{len(g)}",
            "rounds": ci(r["rounds_to_target"], 4),
            "uploads": ci(r["uploads_to_target"], 4),
            "uploads vs sgd (per seed)": ci(ratio, 2) if len(ratio) else "–",
            "paper Table II": f"{SASG_PAPER[a] / SASG_PAPER[base]:.2f}" if a in SASG_PAPER else "–",
            "notebook, 5 seeds": f"{SASG_NOTEBOOK[a] / SASG_NOTEBOOK[base]:.2f}" if a in SASG_NOTEBOOK else "–",
            "bits up to target": ci(8 * r["bytes_up_to_target"], 3),
            "skipped": ci(100 * g["skipped_fraction"], 2) + " %",
            "simulated time to target (s)": ci(r["time_to_target_s"], 3),
        })
    m = {a: ratios[a][0] for a in algs}
    if {"sgd", "sparse", "lasg", "sasg"} <= set(m):
        order = m["sasg"] < m["lasg"] < m["sgd"]
        verdict.append(f"Direction (uploads SASG < LASG < SGD, as in Table II): "
                       f"{'holds' if order else 'does not hold'} "
                       f"(SASG {m['sasg']:.2f}, LASG {m['lasg']:.2f} of SGD's).")
        for a in ("sasg", "lasg", "sparse"):
            paper = SASG_PAPER[a] / SASG_PAPER[base]
            _, lo, hi = ratios[a]
            where = "inside" if _inside(paper, lo, hi) else ("below" if paper < lo else "above")
            verdict.append(f"Ratio {a}: the paper's {paper:.2f} is {where} our 95% interval "
                           f"[{_f(lo, 2)}, {_f(hi, 2)}].")
    return [md_table(pd.DataFrame(rows)), "", *verdict]


# comp-ams.txt Sec. 5.2: iterations to a training loss of 0.5 for n = 1, 2, 4, 8.
SPEEDUP_PAPER = {1: 700, 2: 400, 4: 240, 8: 120}
SPEEDUP_LOSS = 0.5


def speedup_table(st: Study) -> list[str]:
    m = st.metrics
    hits = {}
    for (n, seed), g in m.groupby(["workers", "seed"]):
        hit = g[g["train_loss"] <= SPEEDUP_LOSS].sort_values("round")
        hits[(int(n), int(seed))] = float(hit["round"].iloc[0]) if len(hit) else math.nan
    ns = sorted({n for n, _ in hits})
    base = {s: r for (n, s), r in hits.items() if n == ns[0]} if ns else {}
    rows, rel_mean = [], {}
    for n in ns:
        r = [v for (k, _), v in hits.items() if k == n]
        rel = [v / base[s] for (k, s), v in hits.items() if k == n and s in base and base[s] > 0]
        rel_mean[n] = _interval(rel) if rel else (math.nan,) * 3
        paper = SPEEDUP_PAPER.get(n)
        rows.append({"n": n, "seeds reaching loss 0.5": f"{sum(not math.isnan(v) for v in r)}/{len(r)}",
                     "rounds to loss 0.5": ci(r, 3), "relative to n = 1 (per seed)": ci(rel, 2),
                     "paper (CNN, full MNIST)": f"~{paper}" if paper else "–",
                     "paper relative": f"{paper / SPEEDUP_PAPER[1]:.2f}" if paper else "–",
                     "linear: 1/n": f"{1 / n:.2f}"})
    verdict = []
    if len(ns) > 1:
        dec = all(rel_mean[a][0] > rel_mean[b][0] for a, b in zip(ns, ns[1:]))
        verdict.append(f"Direction (fewer rounds as n grows): {'holds' if dec else 'does not hold'}.")
        for n in ns[1:]:
            paper = SPEEDUP_PAPER[n] / SPEEDUP_PAPER[1] if n in SPEEDUP_PAPER else math.nan
            _, lo, hi = rel_mean[n]
            where = "inside" if _inside(paper, lo, hi) else ("below" if paper < lo else "above")
            verdict.append(f"n = {n}: the paper's relative {paper:.2f} is {where} our interval "
                           f"[{_f(lo, 2)}, {_f(hi, 2)}] (evaluations every {st.scenario.get('eval_every')} rounds "
                           "limit the resolution).")
    return [md_table(pd.DataFrame(rows)), "", *verdict]


def ef_table(st: Study) -> list[str]:
    """comp-ams.txt Sec. 5.1 / Figure 1: with EF, compressed AMSGrad approaches
    full-gradient AMSGrad; without EF it does worse; MVSS (unbiased) loses to
    the EF-corrected biased compressors.  The paper has no table: directions only."""
    s = st.summary
    bad = _diverged(st)
    m = _healthy(st.metrics, bad)
    algs = _order(st.scenario, s)
    last = int(st.metrics["round"].max())
    final = m[m["round"] == last].set_index(["algorithm", "seed"])
    rows = []
    for a in algs:
        f = final.loc[a] if a in final.index.get_level_values(0) else pd.DataFrame()
        rows.append({"method": a, "seeds (not diverged)": len(f), "diverged": _diverged_cell(bad.get(a, {})),
                     f"test acc. round {last}": ci(f["test_acc"], 3),
                     f"train loss round {last}": ci(f["train_loss"], 2),
                     "MB up": ci(f["bytes_up"] / 1e6, 3)})
    verdict = []
    for ef, no in (("topk-ef-0.01", "topk-0.01"), ("bksign-ef", "bksign")):
        if ef in algs and no in algs:
            d = (final.loc[ef]["test_acc"] - final.loc[no]["test_acc"]).dropna()
            mean, lo, hi = _interval(d)
            sign = "better" if lo > 0 else ("worse" if hi < 0 else "not distinguishable")
            verdict.append(f"{ef} minus {no}, test accuracy at round {last} (paired by seed): "
                           f"{mean:+.4f} [{lo:+.4f}, {hi:+.4f}]: with EF is {sign} "
                           "(the paper: without EF 'performs very poorly').")
    if "mvss-0.01" in algs and "topk-ef-0.01" in algs:
        d = (final.loc["topk-ef-0.01"]["test_acc"] - final.loc["mvss-0.01"]["test_acc"]).dropna()
        mean, lo, hi = _interval(d)
        verdict.append(f"topk-ef-0.01 minus mvss-0.01: {mean:+.4f} [{lo:+.4f}, {hi:+.4f}] "
                       "(the paper: MVSS is outperformed by the EF-corrected biased compressors).")
    return [md_table(pd.DataFrame(rows)), "", *verdict]


SKETCHING = ("sketched_amsgrad_pa", "sketched_amsgrad_ga", "sketched_sgd")


def sketch_table(st: Study) -> list[str]:
    """sketched-amsgrad.txt Sec. V / Fig. 1: 'the three sketching methods converge
    faster than other algorithms' in training loss.  No table in the paper."""
    s = st.summary
    bad = _diverged(st)
    m = _healthy(st.metrics, bad)
    algs = _order(st.scenario, s)
    kinds = {(a.get("name") or a["kind"]): a["kind"] for a in st.scenario.get("algorithms", [])}
    last = int(st.metrics["round"].max())
    marks = sorted({max(1, last // 12), last // 3, 2 * last // 3, last})
    at = {r: _at_round(m, r) for r in marks}
    final = m[m["round"] == last].set_index(["algorithm", "seed"])
    rows = []
    for a in algs:
        row = {"method": a}
        for r in marks:
            row[f"train loss round {r}"] = ci(at[r].loc[a] if a in at[r].index.get_level_values(0) else [], 3)
        row[f"test acc. round {last}"] = ci(final.loc[a]["test_acc"] if a in final.index.get_level_values(0)
                                            else [], 3)
        row["diverged (left out)"] = _diverged_cell(bad.get(a, {}))
        rows.append(row)
    out = [md_table(pd.DataFrame(rows)), ""]
    means = {a: float(at[last].loc[a].mean()) for a in algs if a in at[last].index.get_level_values(0)}
    rate = pd.to_numeric(s.groupby("algorithm")["compression_rate"].first(), errors="coerce") \
        if "compression_rate" in s else pd.Series(dtype=float)
    # the sketching methods that compress (a reference sketch wider than d is not one of them)
    sk = [a for a in means if kinds.get(a) in SKETCHING and float(rate.get(a, 2.0)) > 1.0]
    others = [a for a in means if a not in sk and kinds.get(a) not in SKETCHING]
    if sk and others:
        best_other = min(others, key=means.get)
        faster = [a for a in sk if means[a] < means[best_other]]
        out.append(f"Direction (the sketching methods reach the lowest training loss): "
                   f"{'holds' if len(faster) == len(sk) else 'does not hold'}: at round {last} "
                   f"{len(faster)} of {len(sk)} sketching methods are below the best other method "
                   f"({best_other}, {means[best_other]:.3g}).")
    out += ["", *recall_lines(st)]
    return out


def recall_lines(st: Study) -> list[str]:
    """The measured recovery of the sketches: the recall of the true top-k, per round."""
    g = st.diagnostics
    if not len(g):
        return []
    last = int(g["round"].max())
    tenth = max(1, (last + 1) // 10)
    early, late = g[g["round"] < tenth], g[g["round"] >= last + 1 - tenth]
    windows = (("all rounds", g), (f"rounds 0-{tenth - 1}", early), (f"last {tenth} rounds", late))
    labels = (("sketch_recall", "sketch recall"), ("update_recall", "update recall"),
              ("update_mass", "update mass"), ("repeat_share", "repeat share"))
    rows = []
    for a in _order(st.scenario, g):
        for q, label in labels:
            row = {"method": a, "quantity": label}
            for name, part in windows:
                per_seed = part[(part["algorithm"] == a) & (part["quantity"] == q)].groupby("seed")["value"].mean()
                row[name] = ci(per_seed, 2)
            rows.append(row)
    sc = st.scenario.get("algorithms", [])
    sizes = {(a.get("name") or a["kind"]): (a.get("rows"), a.get("cols"), a.get("k"), a.get("P"))
             for a in sc if a["kind"] in SKETCHING}
    desc = "; ".join(f"{a}: {r} x {c} sketch, k = {k}, P = {p}" for a, (r, c, k, p) in sizes.items())
    return ["Recovery (diagnostics.csv): the share of the true top-k of the exact vector that the sketch's "
            "own top-k finds (sketch recall) and that the update contains (update recall, after the "
            f"second round's exact values at the P k candidates), the squared mass of the exact vector on the "
            "updated coordinates over its mass on the true top-k (update mass: 1 when the update is as good "
            "as the exact top-k), and the share of the updated coordinates "
            "that were also updated the round before (repeat share; their error was just zeroed, so they are "
            "rarely in the true top-k). Chance level: k / d for the sketch recall, P k / d for the update "
            f"recall. Per seed the mean over rounds, then the 95% interval over seeds. {desc}.", "",
            md_table(pd.DataFrame(rows))]


# ---------------------------------------------------------------- the report

def write_report(out: str | Path, reproductions, quick: bool = False) -> Path:
    """report.md in ``out`` from the sweep folders of ``reproductions``
    (sim/study/papers.py REPRODUCTIONS entries)."""
    out = Path(out)
    md = ["# Paper reproductions", "",
          ("**Quick mode** (`--quick`): fewer seeds and rounds, a check that the pipeline runs; "
           "the numbers are not the reproduction. Run `run_sim.py papers` for those." if quick else
           "Written by `run_sim.py papers` from the folders next to this file."), "",
          "Intervals: 95% Student-t over seeds, mean [lo, hi]; ratios per seed against the "
          "baseline run on the same seed, then averaged.", ""]
    for rep in reproductions:
        st = read_study(out / rep.name)
        md += [f"## {rep.title}", "", f"Source: {rep.source}. Sweep: `{rep.sweep}`.", ""]
        if st is None:
            md += ["Not run.", ""]
            continue
        md += [f"Status: {st.status}; {st.seeds} seeds in the numbers below.", ""]
        if st.seeds == 0:
            continue
        md += [*rep.table(st), ""]
    path = out / "report.md"
    part = path.with_name("report.md.part")
    part.write_text("\n".join(md).rstrip() + "\n")
    part.replace(path)
    return path
