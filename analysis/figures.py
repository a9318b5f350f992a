"""Figures of a run or sweep folder (PNG, matplotlib Agg + seaborn); the numbers
behind them come from ``analysis.report``.

Every figure has a title naming the scenario (its ``name``; a sweep's name for sweep
figures) and its seeds ("seed 0" or "3 seeds", :func:`figure_title`), and every axis
label ends with the unit its ticks are in: "simulated time (s)", "bytes on the wire,
up + down (MB)" (B, kB, MB or GB by the largest value), "training rounds (count)",
"test accuracy (fraction)", "uplink bandwidth (Mbps)" (a swept quantity's ticks are
written in one unit chosen per axis, :func:`display_unit`).

Run folder (one run: every algorithm under every seed):

- ``curves_time.png``, ``curves_bytes.png``, ``curves_rounds.png``: test accuracy
  and training loss against simulated time, bytes on the wire (up + down) and
  rounds; one line per algorithm.  With several seeds each seed's curve is
  interpolated linearly onto a common grid (the union of the seeds' evaluation
  points, where every seed has data); the line is the mean over seeds and the
  band spans min..max over seeds.  A seed that ran further than the others is
  drawn as a thin dotted tail.
- ``time_to_target.png``: time to the target accuracy per algorithm: each seed
  that reached it (dot), the mean over those seeds with its 95% Student-t
  interval, and how many seeds reached it.
- ``phases.png``: the critical path of a round split into download, compute,
  upload, server, exchange and wait, as a stacked bar per algorithm (mean
  seconds per round: over the rounds of each seed, then over seeds).

Sweep folder (``points/NNN`` run folders and ``sweep_summary.csv``), in addition:

- ``sweep_time_to_target_<axis>.png``: time to target against each swept axis
  (seed excluded), one line per algorithm, mean over seeds with its 95% band;
  one panel per value of the other axes.  Filled marker: every seed reached the
  target; open: only some did (mean of those); x at the top: none did.
- ``sweep_speedup_<a>_<b>.png`` (two ``network.*`` axes): heatmap over the two
  axes of each algorithm's speed-up over the baseline (mean time of the baseline
  / mean time of the algorithm), one panel per algorithm; cells where either did
  not reach the target on every seed are hatched and say why.
- ``sweep_winner_<a>_<b>.png``: the algorithm with the smallest mean time to
  target in each cell (name and time written in the cell).
- ``sweep_phases_<axis>.png``: the phase stacked bars along the first swept
  axis, one panel per algorithm, the other axes at their first value.

Zipped sweeps (sweep.yaml ``mode: zip``: the i-th values of every axis go together)
have one axis for all the swept fields (:func:`zip_axis`): one x position per
zipped point, each tick naming every field's value ("1 ms" over "2 ms"), the label
one line per field.  The x position is the first field's number (log scale over a
wide span) when the ticks fit there, else the points evenly spaced in point order.
So a zipped sweep has one ``sweep_time_to_target_<a>_<b>.png`` (a single panel) and
one ``sweep_phases_<a>_<b>.png`` (every point), and no heatmaps (the fields move
together: there is no 2-D grid).

Every function takes its data as arguments and writes one file through ``_save``
(tests wrap it to look at the Figure); nothing is kept between calls.
"""
from __future__ import annotations

import math
import re
import textwrap
from dataclasses import dataclass, replace
from pathlib import Path

import functools
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from sim import units

if TYPE_CHECKING:
    from matplotlib.figure import Figure

PHASES = ["download_s", "compute_s", "upload_s", "server_s", "exchange_s", "wait_s"]


@functools.cache
def _sns():
    """seaborn, with matplotlib on the Agg backend (files only, no display).

    Imported on the first figure, not with this module: ``run_sim.py validate``
    and the start of ``run`` never load matplotlib (about a second)."""
    import matplotlib

    matplotlib.use("Agg")
    import seaborn as sns

    return sns


@functools.cache
def _phase_colors() -> dict[str, tuple]:
    return dict(zip(PHASES, _sns().color_palette("Set2", len(PHASES))))
LOG_SPAN = 20.0          # a numeric axis spanning more than this factor is drawn on a log scale
DPI = 120
CHAR_IN = 0.085          # inches a tick-label character takes (10 pt)
X_AXES = {  # key -> (column, what it is); the unit is added by _x_values
    "time": ("sim_time_s", "simulated time"),
    "bytes": ("bytes", "bytes on the wire, up + down"),
    "rounds": ("round", "training rounds"),
}
Y_AXES = {"test_acc": "test accuracy (fraction)", "train_loss": "training loss (cross-entropy, nats)"}
# display units of a swept quantity, largest first: (unit, its value in the base unit)
_DISPLAY_UNITS = {
    "bandwidth": [("Tbps", 1e12), ("Gbps", 1e9), ("Mbps", 1e6), ("kbps", 1e3), ("bit/s", 1.0)],
    "time": [("h", 3600.0), ("min", 60.0), ("s", 1.0), ("ms", 1e-3), ("µs", 1e-6), ("ns", 1e-9)],
    "size": [("GB", 1e9), ("MB", 1e6), ("kB", 1e3), ("B", 1.0)],
}
_UNIT_KINDS = tuple(_DISPLAY_UNITS)
# plain-number fields that count something: (word in the field's last part, unit written)
_COUNTS = (("rounds", "rounds"), ("eval_every", "rounds"), ("batch", "samples"), ("workers", "count"),
           ("servers", "count"), ("racks", "count"), ("seeds", "count"), ("count", "count"))


# ---------------------------------------------------------------- swept axes

@dataclass(frozen=True)
class Axis:
    """A swept field: its values as written (``str`` of the YAML value, as in
    sweep_summary.csv), their numbers when they have any, and how to plot them.

    ``unit`` is the unit the tick labels are written in (chosen per axis, e.g. Mbps for
    10 Mbps .. 10 Gbps) and ``label`` = ``what (unit)``.  A zipped group of axes
    (:func:`zip_axis`) is one Axis too: ``parts`` holds its axes, each value is one zipped
    point and each tick has one line per part."""
    name: str
    values: tuple[str, ...]
    numbers: tuple[float, ...] | None   # None: categories
    kind: str                            # bandwidth | time | size | number | category | zip
    label: str
    log: bool
    shown: tuple[str, ...] = ()          # the values as titles write them ("10 Mbps", "ring")
    ticks: tuple[str, ...] = ()          # the values as tick labels write them, in ``unit`` ("10")
    unit: str | None = None
    what: str = ""                       # the label without its unit ("uplink bandwidth")
    parts: tuple["Axis", ...] = ()       # a zipped group: its axes

    def ordered(self) -> list[str]:
        """The values in plotting order: ascending numbers, else as written."""
        if self.numbers is None:
            return list(self.values)
        return [v for _, v in sorted(zip(self.numbers, self.values), key=lambda p: p[0])]

    def number(self, value: str) -> float:
        """The plotting coordinate of ``value``: its number, or its position for categories."""
        if self.numbers is None:
            return float(self.values.index(value))
        return self.numbers[self.values.index(value)]

    def show(self, value: str) -> str:
        """How titles write ``value`` ("10 Mbps"; zipped: "0.1 ms / 0.2 ms")."""
        return self.shown[self.values.index(value)] if self.shown else value

    def tick(self, value: str) -> str:
        """How tick labels write ``value``: in ``unit`` ("10"); zipped: one line per part."""
        return self.ticks[self.values.index(value)] if self.ticks else self.show(value)

    @property
    def slug(self) -> str:
        return re.sub(r"[^A-Za-z0-9]+", "_", self.name).strip("_")

    @property
    def columns(self) -> list[str]:
        """The sweep_summary.csv columns behind this axis (the parts' for a zipped group)."""
        return [p.name for p in self.parts] if self.parts else [self.name]

    @property
    def one_line(self) -> str:
        """``label`` on one line (for report.md)."""
        return self.label.replace("\n", " / ")


def _unit_hint(name: str) -> str | None:
    last = name.rsplit(".", 1)[-1].lower()
    if "bandwidth" in last:
        return "bandwidth"
    if any(w in last for w in ("latency", "time", "timeout", "period", "delay")):
        return "time"
    if "bytes" in last or "size" in last:
        return "size"
    return None


def _count_unit(name: str) -> str | None:
    last = name.rsplit(".", 1)[-1].lower()
    return next((unit for word, unit in _COUNTS if word in last), None)


def _parse_all(values: list, kind: str) -> list[float] | None:
    try:
        return [units.parse(v, kind) for v in values]
    except (ValueError, KeyError):
        return None


def display_unit(numbers, kind: str) -> tuple[str, float]:
    """(unit, scale) the ticks of a ``kind`` axis with these base-unit ``numbers`` are written
    in: the largest unit not above their geometric mean (10 Mbps .. 10 Gbps -> Mbps,
    0.1 .. 200 ms -> ms)."""
    table = _DISPLAY_UNITS[kind]
    pos = np.abs(np.asarray([x for x in numbers if x != 0], float))
    if not len(pos):
        return next((u, s) for u, s in table if s == 1.0)
    ref = float(np.exp(np.log(pos).mean()))
    return next(((u, s) for u, s in table if ref >= s * (1 - 1e-9)), table[-1])


def _number_text(x: float) -> str:
    return f"{x:.6g}"


def parse_axis(name: str, values: list) -> Axis:
    """An :class:`Axis` from a dotted field and its YAML values.

    Quantities with units (``"10 Mbps"``, ``"5 ms"``, ``"1 MB"``) are parsed with
    :func:`sim.units.parse` (the kind suggested by the field name first, then
    bandwidth, time, size); plain numbers stay numbers (in the base unit of the
    field's kind, if it has one); anything else is a category.  Ticks are written in
    one unit per axis (:func:`display_unit`), which the label names; plain numbers that
    count something (workers, rounds, batch size) say so ("(count)", "(rounds)").
    """
    hint = _unit_hint(name)
    what = name.removeprefix("network.").replace(".", " ").replace("_", " ")
    numeric = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)
    kind, numbers = "category", None
    if numeric:
        kind, numbers = (hint or "number"), [float(v) for v in values]
    elif all(isinstance(v, (str, int, float)) and not isinstance(v, bool) for v in values):
        for k in [hint] + [k for k in _UNIT_KINDS if k != hint]:
            if k is not None and (numbers := _parse_all(values, k)) is not None:
                kind = k
                break
    shown = tuple(_show(v, kind) for v in values)
    unit = None
    ticks = shown
    if kind in _UNIT_KINDS:
        unit, scale = display_unit(numbers, kind)
        ticks = tuple(_number_text(n / scale) for n in numbers)
    elif kind == "number":
        unit = _count_unit(name)
    label = f"{what} ({unit})" if unit else what
    log = bool(numbers) and min(numbers) > 0 and max(numbers) / min(numbers) > LOG_SPAN
    return Axis(name, tuple(str(v) for v in values), tuple(numbers) if numbers is not None else None,
                kind, label, log, shown, ticks, unit, what)


def zip_axis(parts: list[Axis], points: list[tuple[str, ...]]) -> Axis:
    """One axis for zipped ``parts`` (sweep.yaml ``mode: zip``): one value per distinct zipped
    point (``points``: the parts' values of each point, as written, in point order).

    The x position is the first part's number when it has distinct numbers at the points
    (log scale over a wide span), else the point's position; a tick has one line per part,
    "value unit" ("0.1 ms" over "0.2 ms"); the label has one line per part in the same order.
    Frames get the axis column from :func:`with_axis_column`."""
    points = list(dict.fromkeys(tuple(map(str, p)) for p in points))
    first = parts[0]
    numbers = None
    if first.numbers is not None and first.kind != "category":
        xs = [first.number(p[0]) for p in points]
        numbers = tuple(xs) if len(set(xs)) == len(xs) else None

    def line(axis: Axis, v: str) -> str:
        return f"{axis.tick(v)} {axis.unit}" if axis.kind in _UNIT_KINDS else axis.tick(v)

    axis = Axis(
        name=" + ".join(a.name for a in parts),
        values=tuple(" / ".join(p) for p in points),
        numbers=numbers, kind="zip",
        label="\n".join(a.label for a in parts),
        log=bool(numbers) and min(numbers) > 0 and max(numbers) / min(numbers) > LOG_SPAN,
        shown=tuple(" / ".join(a.show(v) for a, v in zip(parts, p)) for p in points),
        ticks=tuple("\n".join(line(a, v) for a, v in zip(parts, p)) for p in points),
        unit=None, what=" / ".join(a.what for a in parts), parts=tuple(parts))
    if numbers is not None and not _ticks_fit(axis):   # e.g. 100 ms and 200 ms on a log axis
        axis = replace(axis, numbers=None, log=False)
    return axis


def _ticks_fit(axis: Axis) -> bool:
    """Whether the tick labels of a numeric ``axis`` stay apart at their x positions in a panel
    of :func:`_panel_width`."""
    order = axis.ordered()
    pos = np.array([axis.number(v) for v in order], float)
    pos = np.log10(pos) if axis.log else pos
    span = pos[-1] - pos[0] if len(pos) > 1 else 0.0
    if span <= 0:
        return len(pos) <= 1
    inches = (_panel_width(axis) - 1.2) * np.diff(pos) / span
    need = np.array([max(len(s) for s in axis.tick(v).split("\n")) * CHAR_IN for v in order])
    return bool(np.all(inches >= (need[:-1] + need[1:]) / 2 + 0.1))


def with_axis_column(df: pd.DataFrame, axis: Axis) -> pd.DataFrame:
    """``df`` with the column of a zipped ``axis`` (its parts' columns joined); unchanged otherwise."""
    if not axis.parts:
        return df
    key = df[axis.parts[0].name].astype(str)
    for p in axis.parts[1:]:
        key = key + " / " + df[p.name].astype(str)
    return df.assign(**{axis.name: key})


def _show(value, kind: str) -> str:
    """A short text for a value: bare numbers of a unit kind with their unit, whole floats without
    ".0", ``{kind: ring}`` as ``ring``, other mappings as ``k=v``."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if kind in _UNIT_KINDS:
            return units.format(float(value), kind)
        return f"{value:g}"
    if isinstance(value, dict):
        if set(value) == {"kind"}:
            return str(value["kind"])
        return ", ".join(f"{k}={v}" for k, v in value.items())
    return str(value)


def _tick_chars(axis: Axis, order: list[str]) -> int:
    """Room the tick labels need side by side (characters of their longest lines, plus gaps)."""
    return sum(max(len(s) for s in axis.tick(v).split("\n")) + 2 for v in order)


def _panel_width(axis: Axis, base: float = 4.6) -> float:
    """A panel wide enough for ``axis``'s tick labels unrotated (up to 12 inches)."""
    return float(np.clip(1.2 + CHAR_IN * _tick_chars(axis, axis.ordered()), base, 12.0))


def _log_label(label: str, log: bool) -> str:
    """``what (unit)`` -> ``what (unit, log scale)`` when ``log``."""
    return label[:-1] + ", log scale)" if log and label.endswith(")") else label


def axis_label(axis: Axis) -> str:
    """The x label of ``axis`` in a figure: ``label``, with "log scale" in the parentheses of the
    axis that sets the x position when the scale is logarithmic (a zipped group: its first line)."""
    lines = axis.label.split("\n")
    if axis.log:
        first = axis.parts[0] if axis.parts else axis
        lines[0] = _log_label(lines[0], True) if first.unit else lines[0] + " (log scale)"
    return "\n".join(lines)


def _set_value_ticks(ax, axis: Axis, width: float = 4.6) -> None:
    """x ticks at the swept values, labelled in the axis unit ("10", zipped: one line per axis)."""
    from matplotlib.ticker import NullLocator

    order = axis.ordered()
    if axis.log:
        ax.set_xscale("log")
        ax.xaxis.set_minor_locator(NullLocator())
    if len(order) <= 16:
        crowded = CHAR_IN * _tick_chars(axis, order) > width - 1.2
        ax.set_xticks([axis.number(v) for v in order], [axis.tick(v) for v in order],
                      rotation=30 if crowded else 0, ha="right" if crowded else "center")
    if axis.numbers is None:
        ax.set_xlim(-0.5, len(order) - 0.5)


# ---------------------------------------------------------------- helpers

def palette(algorithms: list[str]) -> dict[str, tuple]:
    """One colour per algorithm, the same in every figure."""
    name = "tab10" if len(algorithms) <= 10 else "husl"
    return dict(zip(algorithms, _sns().color_palette(name, max(len(algorithms), 1))))


def _wrap(text: str, width_in: float, fontsize: float) -> str:
    """``text`` with each line wrapped to fit ``width_in`` inches at ``fontsize`` points."""
    chars = max(20, int(width_in * 72 / (0.56 * fontsize)))
    return "\n".join(textwrap.fill(line, chars, break_on_hyphens=False) for line in text.split("\n"))


def _figure(width: float, height: float) -> Figure:
    _sns()
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), layout="constrained")


def _save(fig: Figure, path: Path) -> Path:
    path = Path(path)
    fig.savefig(path, dpi=DPI)
    return path


def _time_unit(seconds: float) -> tuple[float, str]:
    """(scale, unit) that writes ``seconds`` legibly."""
    return (1e3, "ms") if 0 < seconds < 0.5 else (1.0, "s")


def _grid(n: int, max_cols: int = 3) -> tuple[int, int]:
    cols = min(n, max_cols)
    return math.ceil(n / cols), cols


def _want_log(values) -> bool:
    v = np.asarray([x for x in values if np.isfinite(x) and x > 0], float)
    return len(v) > 1 and v.max() / v.min() > LOG_SPAN


# ---------------------------------------------------------------- curves over seeds

def seed_band(metrics: pd.DataFrame, x: str, y: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Mean and min..max over seeds of ``y`` against ``x``, per algorithm.

    Each seed's points (sorted by x; repeated x keep the last evaluation) are
    interpolated linearly onto the union of all seeds' x values inside the range
    that every seed covers.  Returns (band: algorithm, x, mean, lo, hi, seeds;
    tails: algorithm, seed, x, y for the points of a seed beyond that range,
    preceded by its value at the range's end so the tail joins the band).
    """
    bands, tails = [], []
    for alg, g in metrics.groupby("algorithm", sort=False):
        per_seed = {}
        for seed, s in g.groupby("seed", sort=True):
            s = s[np.isfinite(s[x]) & np.isfinite(s[y])].sort_values(x, kind="stable")
            s = s.drop_duplicates(x, keep="last")
            if len(s):
                per_seed[seed] = (s[x].to_numpy(float), s[y].to_numpy(float))
        if not per_seed:
            continue
        lo_x = max(xs[0] for xs, _ in per_seed.values())
        hi_x = min(xs[-1] for xs, _ in per_seed.values())
        grid = np.unique(np.concatenate([xs for xs, _ in per_seed.values()]))
        grid = grid[(grid >= lo_x) & (grid <= hi_x)]
        ys = np.array([np.interp(grid, xs, vs) for xs, vs in per_seed.values()])
        bands.append(pd.DataFrame({"algorithm": alg, "x": grid, "mean": ys.mean(axis=0),
                                   "lo": ys.min(axis=0), "hi": ys.max(axis=0), "seeds": len(per_seed)}))
        for seed, (xs, vs) in per_seed.items():
            if xs[-1] > hi_x:
                keep = xs > hi_x
                tx = np.concatenate([[hi_x], xs[keep]])
                ty = np.concatenate([[np.interp(hi_x, xs, vs)], vs[keep]])
                tails.append(pd.DataFrame({"algorithm": alg, "seed": seed, "x": tx, "y": ty}))
    cols_b, cols_t = ["algorithm", "x", "mean", "lo", "hi", "seeds"], ["algorithm", "seed", "x", "y"]
    return (pd.concat(bands, ignore_index=True) if bands else pd.DataFrame(columns=cols_b),
            pd.concat(tails, ignore_index=True) if tails else pd.DataFrame(columns=cols_t))


def _x_values(metrics: pd.DataFrame, key: str) -> tuple[pd.DataFrame, str, str]:
    """(``metrics`` with the x of ``key`` in column ``_x``, the axis label with its unit,
    the label without it); bytes in B, kB, MB or GB by the largest value."""
    column, what = X_AXES[key]
    df = metrics.copy()
    if key == "bytes":
        total = (df["bytes_up"] + df["bytes_down"]).astype(float)
        unit, scale = display_unit([total.max() if len(total) and total.max() > 0 else 0.0], "size")
        df["_x"] = total / scale
    else:
        unit = "s" if key == "time" else "count"
        df["_x"] = df[column].astype(float)
    return df, f"{what} ({unit})", what


def figure_title(name: str, seeds) -> str:
    """The scenario (or sweep) ``name`` with its seeds: "tiny (seed 0)", "tiny (3 seeds)"."""
    seeds = sorted({int(s) for s in seeds})
    if len(seeds) == 1:
        return f"{name} (seed {seeds[0]})"
    return f"{name} ({len(seeds)} seeds)" if seeds else name


def _legend(fig: Figure, ax, tails: bool) -> None:
    from matplotlib.lines import Line2D

    handles, labels = ax.get_legend_handles_labels()
    if tails:
        tail = Line2D([], [], color="grey", lw=0.9, ls=":", label="one seed, beyond\nthe other seeds")
        handles, labels = [*handles, tail], [*labels, tail.get_label()]
    fig.legend(handles, labels, loc="outside right upper")


def draw_band(ax, metrics: pd.DataFrame, x: str, y: str, colors: dict, log_x: bool = False) -> bool:
    """Mean line, min..max band and dotted tails of ``y`` against ``x`` per algorithm;
    True when some tail was drawn."""
    df = metrics[metrics[x] > 0] if log_x else metrics
    band, tails = seed_band(df, x, y)
    for alg, b in band.groupby("algorithm", sort=False):
        c = colors.get(alg)
        ax.plot(b["x"], b["mean"], color=c, lw=1.8, marker="o", ms=2.5, label=alg)
        if b["seeds"].iloc[0] > 1:
            ax.fill_between(b["x"], b["lo"], b["hi"], color=c, alpha=0.2, lw=0)
    for (alg, _), t in tails.groupby(["algorithm", "seed"], sort=False):
        ax.plot(t["x"], t["y"], color=colors.get(alg), lw=0.9, ls=":", alpha=0.8)
    if log_x:
        ax.set_xscale("log")
    ax.grid(alpha=0.3)
    return len(tails) > 0


def _clip_loss(ax, metrics: pd.DataFrame) -> None:
    """Keep diverging losses from squashing the others: at most 1.5x the worst initial loss."""
    first = metrics.sort_values("round").groupby(["algorithm", "seed"])["train_loss"].first()
    finite = metrics["train_loss"][np.isfinite(metrics["train_loss"])]
    if len(first) and len(finite) and np.isfinite(first.max()) and finite.max() > 1.5 * first.max():
        ax.set_ylim(top=1.5 * first.max())


def plot_curves(metrics: pd.DataFrame, key: str, target: float | None, path: Path, colors: dict,
                title: str) -> Path:
    """Test accuracy and training loss against ``key`` (time | bytes | rounds), side by side;
    ``title`` names the scenario and its seeds (:func:`figure_title`)."""
    df, xlabel, what = _x_values(metrics, key)
    log_x = key == "bytes" and _want_log(df.groupby("algorithm")["_x"].max())
    fig = _figure(12, 4.4)
    axes = fig.subplots(1, 2)
    tails = False
    for ax, y in zip(axes, Y_AXES):
        tails |= draw_band(ax, df, "_x", y, colors, log_x=log_x)
        ax.set_xlabel(_log_label(xlabel, log_x))
        ax.set_ylabel(Y_AXES[y])
    if target is not None:
        axes[0].axhline(target, color="grey", ls="--", lw=1, label=f"target {target:g}")
    _clip_loss(axes[1], df)
    seeds = df["seed"].nunique()
    band = f"line: mean over {seeds} seeds, band: min..max" if seeds > 1 else "1 seed"
    fig.suptitle(_wrap(f"{title}: accuracy and loss against {what}\n({band})", 10, 11), fontsize=11)
    _legend(fig, axes[0], tails)
    return _save(fig, path)


def plot_accuracy(metrics: pd.DataFrame, key: str, target: float | None, path: Path, title: str) -> Path:
    """One panel: test accuracy against ``key`` (the per-run figures of ``plot_run``)."""
    df, xlabel, what = _x_values(metrics, key)
    algs = list(dict.fromkeys(df["algorithm"]))
    log_x = key == "bytes" and _want_log(df.groupby("algorithm")["_x"].max())
    fig = _figure(7.5, 4.5)
    ax = fig.subplots()
    tails = draw_band(ax, df, "_x", "test_acc", palette(algs), log_x=log_x)
    if target is not None:
        ax.axhline(target, color="grey", ls="--", lw=1, label=f"target {target:g}")
    ax.set_xlabel(_log_label(xlabel, log_x))
    ax.set_ylabel(Y_AXES["test_acc"])
    seeds = df["seed"].nunique()
    ax.set_title(_wrap(f"{title}: test accuracy against {what}" +
                       (f"\nmean over {seeds} seeds, band min..max" if seeds > 1 else ""), 5.6, 10), fontsize=10)
    _legend(fig, ax, tails)
    return _save(fig, path)


# ---------------------------------------------------------------- time to target

def plot_time_to_target(tt: pd.DataFrame, seeds: pd.DataFrame, colors: dict, target: float | None,
                        path: Path, title: str) -> Path:
    """Per algorithm (rows of ``tt``: algorithm, seeds, reached, mean_s, half_s): the seeds that
    reached (``seeds``: algorithm, time_to_target_s), mean and 95% t-interval, "k/n reached"."""
    algs = list(tt["algorithm"])
    fig = _figure(8, 1.45 + 0.55 * len(algs))
    ax = fig.subplots()
    right = np.nanmax([np.nanmax((tt["mean_s"] + tt["half_s"].fillna(0)).to_numpy(float), initial=0),
                       np.nanmax(seeds["time_to_target_s"].to_numpy(float), initial=0)])
    right = right if right > 0 else 1.0
    for i, row in enumerate(tt.itertuples()):
        c = colors.get(row.algorithm)
        pts = seeds.loc[seeds["algorithm"] == row.algorithm, "time_to_target_s"]
        ax.scatter(pts, np.full(len(pts), i) + 0.18, s=14, color=c, alpha=0.6, lw=0)
        note = f"{row.reached}/{row.seeds} seeds reached"
        if row.reached:
            err = None if math.isnan(row.half_s) else row.half_s
            ax.errorbar(row.mean_s, i, xerr=err, fmt="o", color=c, ms=7, capsize=4, lw=1.6)
            ax.annotate(note, (row.mean_s + (err or 0), i), xytext=(6, -3), textcoords="offset points",
                        fontsize=8)
        else:
            ax.text(0.02 * right, i, f"target not reached ({note})", va="center", fontsize=8, color="dimgrey")
    ax.set_yticks(range(len(algs)), algs)
    ax.set_ylim(len(algs) - 0.5, -0.6)
    ax.set_xlim(0, right * 1.35)
    what = f"{target:g} test accuracy" if target is not None else "the target"
    ax.set_xlabel(f"simulated time to {what} (s)")
    ax.grid(axis="x", alpha=0.3)
    ax.set_title(_wrap(f"{title}: time to target per algorithm\ndot = one seed; marker and bar = mean and "
                       "95% Student-t interval over the seeds that reached", 7, 9), fontsize=9)
    return _save(fig, path)


def plot_tt_vs_axis(tt: pd.DataFrame, axis: Axis, panels: list[Axis], algorithms: list[str],
                    colors: dict, target: float | None, path: Path, title: str) -> Path:
    """Time to target against ``axis`` (rows of ``tt``: the axis columns, algorithm, seeds,
    reached, mean_s, half_s), one panel per combination of the ``panels`` axes' values."""
    from matplotlib.lines import Line2D

    combos = _combos(tt, panels)
    rows, cols = _grid(len(combos))
    width = _panel_width(axis)
    fig = _figure(width * cols + 2.2, (3.8 + 0.25 * axis.label.count("\n")) * rows)
    axs = np.atleast_1d(fig.subplots(rows, cols, squeeze=False, sharey=True)).ravel()
    for ax in axs[len(combos):]:
        ax.set_visible(False)
    reached = tt.loc[tt["reached"] > 0, "mean_s"]
    log_y = _want_log(reached)
    for ax, combo in zip(axs, combos):
        sub = _select(tt, combo)
        for alg in algorithms:
            _tt_line(ax, sub[sub["algorithm"] == alg], axis, colors.get(alg))
        _set_value_ticks(ax, axis, width)
        if log_y:
            ax.set_yscale("log")
        ax.set_xlabel(axis_label(axis))
        ax.set_title(_combo_title(combo, panels), fontsize=9)
        ax.grid(alpha=0.3)
    axs[0].set_ylim(bottom=0.5 * reached.min() if log_y else 0)   # after every panel: y is shared
    what = f"{target:g} accuracy" if target is not None else "the target"
    for ax in axs[::cols]:
        ax.set_ylabel(f"time to {what} ({'s, log scale' if log_y else 's'})")
    handles = [Line2D([], [], color=colors.get(a), marker="o", label=a) for a in algorithms] + [
        Line2D([], [], ls="", marker="o", color="k", label="every seed reached"),
        Line2D([], [], ls="", marker="o", mfc="white", color="k", label="some seeds reached\n(mean of those)"),
        Line2D([], [], ls="", marker="x", color="k", label="no seed reached")]
    fig.legend(handles=handles, loc="outside right center", fontsize=8)
    zipped = "; axes zipped: they move together" if axis.parts else ""
    fig.suptitle(_wrap(f"{title}: time to target against {axis.what}\n"
                       f"(mean over the seeds that reached, band: 95% t-interval{zipped})",
                       width * cols + 1.8, 11), fontsize=11)
    return _save(fig, path)


def _tt_line(ax, rows: pd.DataFrame, axis: Axis, color) -> None:
    rows = rows.assign(_x=[axis.number(v) for v in rows[axis.name]]).sort_values("_x")
    y = rows["mean_s"].where(rows["reached"] > 0)
    ax.plot(rows["_x"], y, color=color, lw=1.6)
    ok = rows["half_s"].notna() & (rows["reached"] > 0)
    if ok.any():  # a time is positive: the band is cut at 0 (the tables keep the exact interval)
        ax.fill_between(rows["_x"], (y - rows["half_s"]).clip(lower=0).where(ok),
                        (y + rows["half_s"]).where(ok), color=color, alpha=0.18, lw=0)
    full = rows["reached"] == rows["seeds"]
    part = (rows["reached"] > 0) & ~full
    none = rows["reached"] == 0
    if full.any():
        ax.plot(rows["_x"][full], rows["mean_s"][full], "o", color=color, ms=5)
    if part.any():
        ax.plot(rows["_x"][part], rows["mean_s"][part], "o", mfc="white", color=color, ms=6)
    if none.any():  # at the top of the panel, whatever the y scale
        ax.plot(rows["_x"][none], np.full(int(none.sum()), 0.96), "x", color=color, ms=8, mew=2,
                transform=ax.get_xaxis_transform())


def _combos(df: pd.DataFrame, axes: list[Axis]) -> list[dict[str, str]]:
    """The value combinations of ``axes`` present in ``df``, in plotting order."""
    if not axes:
        return [{}]
    present = set(map(tuple, df[[a.name for a in axes]].astype(str).to_numpy()))
    out: list[dict[str, str]] = [{}]
    for a in axes:
        out = [{**c, a.name: v} for c in out for v in a.ordered()]
    return [c for c in out if tuple(c.values()) in present]


def _select(df: pd.DataFrame, combo: dict[str, str]) -> pd.DataFrame:
    mask = np.ones(len(df), bool)
    for k, v in combo.items():
        mask &= (df[k] == v).to_numpy()
    return df[mask]


def _combo_title(combo: dict[str, str], axes: list[Axis]) -> str:
    by_name = {a.name: a for a in axes}
    return ", ".join(f"{by_name[k].what} = {by_name[k].show(v)}" for k, v in combo.items())


# ---------------------------------------------------------------- heatmaps

def plot_speedup_heatmaps(cells: pd.DataFrame, xa: Axis, ya: Axis, algorithms: list[str], baseline: str,
                          path: Path, title: str) -> Path:
    """Speed-up over ``baseline`` per cell of ``xa`` x ``ya`` (rows of ``cells``: the two axis
    columns, algorithm, speedup (NaN when not comparable), note (why not)), one panel each."""
    others = [a for a in algorithms if a != baseline]
    rows, cols = _grid(max(len(others), 1))
    fig = _figure(5.2 * cols + 0.8, 3.6 * rows + 0.4)
    axs = np.atleast_1d(fig.subplots(rows, cols, squeeze=False)).ravel()
    for ax in axs[len(others):]:
        ax.set_visible(False)
    vals = np.log2(cells["speedup"].to_numpy(float))
    m = max(np.nanmax(np.abs(vals), initial=0.0), math.log2(1.5))
    nice = (1 / 16, 1 / 8, 1 / 4, 1 / 2, 1, 2, 4, 8, 16) if m > 1.5 else (1 / 2, 2 / 3, 1, 1.5, 2)
    ticks = [t for t in nice if abs(math.log2(t)) <= m]
    for ax, alg in zip(axs, others):
        sub = cells[cells["algorithm"] == alg]
        value = _matrix(sub, xa, ya, "speedup").astype(float)
        note = _matrix(sub, xa, ya, "note")
        annot = np.where(np.isnan(value), "", np.vectorize(lambda v: f"{v:.2f}x")(np.nan_to_num(value)))
        _sns().heatmap(np.log2(value), ax=ax, cmap="RdBu", center=0, vmin=-m, vmax=m, annot=annot, fmt="",
                    mask=np.isnan(value), linewidths=0.5, linecolor="white",
                    cbar_kws={"label": f"speed-up over {baseline} (×, log scale)", "ticks": np.log2(ticks)})
        ax.collections[0].colorbar.set_ticklabels([f"{t:.3g}x" for t in ticks])
        _mark_cells(ax, value, note)
        _heat_labels(ax, xa, ya)
        ax.set_title(f"{alg} vs {baseline}", fontsize=10)
    fig.suptitle(_wrap(f"{title}: speed-up over {baseline}\n(mean time to target of {baseline} / of the algorithm; "
                       "hatched: not comparable)", 5.2 * cols + 0.6, 10), fontsize=10)
    return _save(fig, path)


def plot_winner_heatmap(cells: pd.DataFrame, xa: Axis, ya: Axis, algorithms: list[str], colors: dict,
                        path: Path, title: str) -> Path:
    """Which algorithm reaches the target first in each cell (rows of ``cells``: the two axis
    columns, winner ("" when none reached on every seed), winner_s)."""
    fig = _figure(6.8, 4.6)
    from matplotlib.colors import ListedColormap
    from matplotlib.patches import Patch

    ax = fig.subplots()
    winner = _matrix(cells, xa, ya, "winner")
    secs = _matrix(cells, xa, ya, "winner_s").astype(float)
    idx = np.vectorize(lambda w: algorithms.index(w) if w in algorithms else np.nan, otypes=[float])(winner)
    annot = np.vectorize(lambda w, s: f"{w}\n{s:.3g} s" if w else "", otypes=[object])(winner, secs)
    cmap = ListedColormap([colors[a] for a in algorithms])
    _sns().heatmap(idx, ax=ax, cmap=cmap, vmin=-0.5, vmax=len(algorithms) - 0.5, annot=annot, fmt="",
                mask=np.isnan(idx), cbar=False, linewidths=0.5, linecolor="white")
    _mark_cells(ax, idx, np.where(np.isnan(idx), np.where(winner == "", "none reached\non every seed",
                                                              "no data"), ""))
    _heat_labels(ax, xa, ya)
    ax.legend(handles=[Patch(color=colors[a], label=a) for a in algorithms], loc="upper left",
              bbox_to_anchor=(1.01, 1), fontsize=8, title="algorithm")
    ax.set_title(_wrap(f"{title}: fastest to target (mean over seeds, every seed reached)", 5, 10), fontsize=10)
    return _save(fig, path)


def _matrix(df: pd.DataFrame, xa: Axis, ya: Axis, col: str) -> np.ndarray:
    """``col`` as a matrix: rows = ``ya`` values (largest first), columns = ``xa`` values;
    missing cells are NaN (numbers) or "no data" (text)."""
    ys, xs = list(reversed(ya.ordered())), xa.ordered()
    numeric = col in ("speedup", "winner_s")
    out = np.full((len(ys), len(xs)), np.nan if numeric else "no data", dtype=float if numeric else object)
    for _, r in df.iterrows():
        out[ys.index(r[ya.name]), xs.index(r[xa.name])] = r[col]
    return out


def _mark_cells(ax, value: np.ndarray, note: np.ndarray) -> None:
    from matplotlib.patches import Rectangle

    for i, j in zip(*np.where(np.isnan(value))):
        ax.add_patch(Rectangle((j, i), 1, 1, fill=False, hatch="//", edgecolor="lightgrey", lw=0))
        text = "\n".join(textwrap.fill(part, 16) for part in str(note[i, j]).split("; "))
        ax.text(j + 0.5, i + 0.5, text, ha="center", va="center", fontsize=7, color="dimgrey",
                bbox={"fc": "white", "ec": "none", "alpha": 0.8, "pad": 1})


def _heat_labels(ax, xa: Axis, ya: Axis) -> None:
    ax.set_xticks(np.arange(len(xa.values)) + 0.5, [xa.tick(v) for v in xa.ordered()], rotation=0)
    ax.set_yticks(np.arange(len(ya.values)) + 0.5, [ya.tick(v) for v in reversed(ya.ordered())], rotation=0)
    ax.set_xlabel(xa.label)
    ax.set_ylabel(ya.label)


# ---------------------------------------------------------------- phases

def _stack(ax, frame: pd.DataFrame, positions, scale: float, horizontal: bool, with_labels: bool) -> None:
    """Stacked bars of the PHASES columns of ``frame`` at ``positions``."""
    base = np.zeros(len(frame))
    for ph in PHASES:
        v = frame[ph].to_numpy(float) * scale
        label = ph.removesuffix("_s") if with_labels else None
        if horizontal:
            ax.barh(positions, v, left=base, color=_phase_colors()[ph], label=label, height=0.6)
        else:
            ax.bar(positions, v, bottom=base, color=_phase_colors()[ph], label=label, width=0.6)
        base += v


def plot_phases(ph: pd.DataFrame, path: Path, title: str) -> Path:
    """Mean seconds per round on the critical path, stacked by phase, one bar per algorithm
    (rows of ``ph``: algorithm and the PHASES columns)."""
    scale, unit = _time_unit(float(ph[PHASES].sum(axis=1).max()))
    fig = _figure(9, 1.4 + 0.5 * len(ph))
    ax = fig.subplots()
    _stack(ax, ph, np.arange(len(ph)), scale, horizontal=True, with_labels=True)
    totals = ph[PHASES].sum(axis=1).to_numpy(float) * scale
    for i, total in enumerate(totals):
        ax.annotate(f"{total:.3g} {unit}", (total, i), xytext=(4, 0), textcoords="offset points",
                    va="center", fontsize=8)
    ax.set_xlim(0, 1.15 * totals.max() if totals.max() > 0 else 1)
    ax.set_yticks(range(len(ph)), ph["algorithm"])
    ax.invert_yaxis()
    ax.set_xlabel(f"mean time per round on the critical path ({unit})")
    ax.grid(axis="x", alpha=0.3)
    ax.set_title(_wrap(f"{title}: where a round's time goes (mean over rounds, then seeds)", 7, 10), fontsize=10)
    fig.legend(*ax.get_legend_handles_labels(), loc="outside right upper", title="phase")
    return _save(fig, path)


def plot_phases_vs_axis(ph: pd.DataFrame, axis: Axis, algorithms: list[str], path: Path, title: str,
                        note: str) -> Path:
    """Phase stacked bars along ``axis`` (rows of ``ph``: the axis column, algorithm, PHASES), one
    bar per value (a zipped axis: per zipped point), one panel per algorithm; ``note`` says where
    the other axes are held ("" when none is)."""
    algs = [a for a in algorithms if (ph["algorithm"] == a).any()]
    scale, unit = _time_unit(float(ph[PHASES].sum(axis=1).max()))
    order = axis.ordered()
    width = float(np.clip(1.6 + CHAR_IN * _tick_chars(axis, order), 4.2, 12.0))
    crowded = CHAR_IN * _tick_chars(axis, order) > width - 1.6
    rows, cols = _grid(len(algs), max_cols=max(1, int(14 // width)))   # wide panels: fewer side by side
    fig = _figure(width * cols + 1.6, (3.4 + 0.25 * axis.label.count("\n")) * rows)
    # each panel its own y scale: a compressed algorithm's round is often 100x shorter than dense SGD's
    axs = np.atleast_1d(fig.subplots(rows, cols, squeeze=False)).ravel()
    for ax in axs[len(algs):]:
        ax.set_visible(False)
    for k, (ax, alg) in enumerate(zip(axs, algs)):
        sub = ph[ph["algorithm"] == alg].set_index(axis.name).reindex(order)
        sub[PHASES] = sub[PHASES].fillna(0.0)
        _stack(ax, sub, np.arange(len(order)), scale, horizontal=False, with_labels=k == 0)
        ax.set_xticks(range(len(order)), [axis.tick(v) for v in order], rotation=30 if crowded else 0,
                      ha="right" if crowded else "center")
        ax.set_xlabel(axis.label)
        ax.set_title(alg, fontsize=10)
        ax.grid(axis="y", alpha=0.3)
        ax.set_ylim(0, 1.08 * scale * float(sub[PHASES].sum(axis=1).max()) or 1)
        ax.set_ylabel(f"mean time per round ({unit})")
    fig.legend(*axs[0].get_legend_handles_labels(), loc="outside right center", title="phase")
    if axis.parts:
        note = "; ".join(filter(None, ["axes zipped: one bar per point, the axes move together", note]))
    fig.suptitle(_wrap(f"{title}: critical path of a round against {axis.what}" +
                       (f"\n({note})" if note else ""), width * cols + 1.2, 11), fontsize=11)
    return _save(fig, path)


# ---------------------------------------------------------------- event-driven runs

def plot_staleness(updates: pd.DataFrame, path: Path, title: str) -> Path:
    """Share of the applied messages at each staleness (versions between the
    parameters a message was computed at and the version it was applied to),
    one bar group per algorithm, all seeds pooled (updates.csv)."""
    algs = list(dict.fromkeys(updates["algorithm"]))
    colors = palette(algs)
    top = int(updates["staleness"].max()) if len(updates) else 0
    fig = _figure(7.5, 4.0)
    ax = fig.subplots()
    width = 0.8 / max(1, len(algs))
    for k, a in enumerate(algs):
        s = updates.loc[updates["algorithm"] == a, "staleness"].astype(int)
        share = s.value_counts(normalize=True).reindex(range(top + 1), fill_value=0.0)
        ax.bar(np.arange(top + 1) + (k - (len(algs) - 1) / 2) * width, share.values, width=width,
               color=colors[a], label=f"{a} (mean {s.mean():.2f})")
    ax.set_xlabel("staleness (server versions)")
    ax.set_ylabel("share of the messages")
    ax.set_title(_wrap(f"{title}: staleness of the applied messages", 5.6, 10), fontsize=10)
    ax.legend(fontsize=8)
    return _save(fig, path)


TIMELINE_PHASES = (("download", "params_sent_s", "compute_start_s", "download_s"),
                   ("compute", "compute_start_s", "upload_start_s", "compute_s"),
                   ("upload", "upload_start_s", "sim_time_s", "upload_s"))


def plot_timeline(updates: pd.DataFrame, path: Path, title: str, first_s: float | None = None) -> Path:
    """Gantt chart per worker: download, compute and upload intervals (idle is
    the blank between them) over the first ``first_s`` simulated seconds
    (default: the span of the first 3 n messages), one panel per algorithm,
    the first seed (updates.csv)."""
    from matplotlib.patches import Patch

    algs = list(dict.fromkeys(updates["algorithm"]))
    seed = sorted(updates["seed"].unique())[0]
    df = updates[updates["seed"] == seed]
    n = int(df["worker"].max()) + 1
    if first_s is None:
        first_s = float(df.sort_values("sim_time_s")["sim_time_s"].iloc[min(len(df) - 1, 3 * n - 1)])
    scale, unit = _time_unit(first_s)
    fig = _figure(7.5, 1.2 + 0.9 * len(algs) * max(1.0, n / 6))
    axes = fig.subplots(len(algs), 1, squeeze=False)[:, 0]
    for ax, a in zip(axes, algs):
        rows = df[(df["algorithm"] == a) & (df["params_sent_s"] < first_s)]
        for label, lo, hi, color in TIMELINE_PHASES:
            for w, g in rows.groupby("worker"):
                spans = [(scale * x, scale * (min(y, first_s) - x)) for x, y in zip(g[lo], g[hi]) if x < first_s]
                ax.broken_barh(spans, (w - 0.4, 0.8), color=_phase_colors()[color], label=label if w == 0 else None)
        ax.set_xlim(0, scale * first_s)
        ax.set_ylim(-0.6, n - 0.4)
        ax.set_yticks(range(n))
        ax.set_ylabel("worker")
        ax.set_title(a, fontsize=9)
    axes[-1].set_xlabel(f"simulated time ({unit})")
    handles = [Patch(color=_phase_colors()[c], label=label) for label, _, _, c in TIMELINE_PHASES]
    fig.legend(handles=handles + [Patch(facecolor="white", edgecolor="grey", label="idle")],
               loc="outside lower center", fontsize=8, ncols=4)
    fig.suptitle(_wrap(f"{title}: what each worker does (seed {seed})", 5.6, 10), fontsize=10)
    return _save(fig, path)


def plot_consensus(metrics: pd.DataFrame, path: Path, title: str) -> Path:
    """Decentralized algorithms: consensus distance (1/n) sum ||x_i - x_bar||^2
    (log scale) and the worst worker's test accuracy against simulated time,
    one line per algorithm and seed (metrics.csv rows that have them)."""
    rows = metrics[pd.to_numeric(metrics["consensus_distance"], errors="coerce").notna()]
    algs = list(dict.fromkeys(rows["algorithm"]))
    colors = palette(algs)
    fig = _figure(10.0, 4.0)
    left, right = fig.subplots(1, 2)
    for a in algs:
        for k, (_, r) in enumerate(rows[rows["algorithm"] == a].groupby("seed")):
            label = a if k == 0 else None
            dist = pd.to_numeric(r["consensus_distance"])
            left.plot(r["sim_time_s"], dist.where(dist > 0), color=colors[a], label=label)
            right.plot(r["sim_time_s"], pd.to_numeric(r["worker_acc_min"]), color=colors[a], label=label)
    left.set_yscale("log")
    left.set_xlabel("simulated time (s)")
    left.set_ylabel("consensus distance")
    right.set_xlabel("simulated time (s)")
    right.set_ylabel("worst worker's test accuracy")
    fig.suptitle(_wrap(f"{title}: decentralized algorithms", 9.0, 10), fontsize=10)
    right.legend(fontsize=8)
    return _save(fig, path)
