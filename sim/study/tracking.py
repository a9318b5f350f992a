"""Experiment tracking (optional): ``run ... --log tensorboard`` and ``sweep ... --log tensorboard``.

A tracker turns a results folder's ``metrics.csv`` into another tool's format,
after the run (or the sweep point) has written it: the results files are the
same bytes with and without ``--log``, and the tracked values are exactly the
rows of metrics.csv (an interrupted run logs the rows it kept).

``tensorboard`` writes ``<run folder>/tensorboard/<algorithm>/seed_<seed>/``,
one TensorBoard run per algorithm and seed (the same tags in each, so
TensorBoard overlays the algorithms), with two series per quantity of
:data:`QUANTITIES` (empty cells are skipped):

* ``by_round/<quantity>``: step = the round;
* ``by_sim_time_us/<quantity>``: step = the simulated time in microseconds,
  ``round(sim_time_s * 1e6)`` (a TensorBoard step is an integer).

Every event's wall time is the *simulated* time in seconds (so TensorBoard's
"relative" horizontal axis is simulated time too; its "wall" axis shows it as
seconds after 1970-01-01).  Values are stored as float64 tensors
(``add_scalar(..., new_style=True, double_precision=True)``), so they read back
equal to metrics.csv's.  Writing again replaces the folder.

Needs the ``tensorboard`` package (``pip install 'commsim[tensorboard]'``);
without it ``--log tensorboard`` is bad input: one message naming the extra,
exit 2, before anything is written.
"""
from __future__ import annotations

import csv
import importlib.util
import re
import shutil
from pathlib import Path
from typing import Callable

from sim.errors import ConfigError, OutputError
from sim.registry import Registry

QUANTITIES = ("test_acc", "train_loss", "test_loss", "bytes_up", "bytes_down", "uploads",
              "worker_acc_mean", "worker_acc_min", "consensus_distance")
FOLDER = "tensorboard"
US_PER_S = 1_000_000


class Tracker:
    """What ``--log NAME`` does: ``check()`` before anything is written (a
    missing package is a ConfigError), ``write(run_dir)`` after the run."""

    def __init__(self, name: str, package: str, extra: str, write: Callable[[Path], None]) -> None:
        self.name, self.package, self.extra, self._write = name, package, extra, write

    def check(self) -> None:
        if not _available(self.package):
            raise ConfigError(f"--log {self.name} needs the Python package {self.package!r}, which is not "
                              f"installed here; install the extra: pip install 'commsim[{self.extra}]' "
                              f"(or pip install {self.package})", field="--log")

    def write(self, run_dir: Path) -> None:
        self._write(Path(run_dir))


TRACKERS: Registry[Tracker] = Registry("tracker")


def _available(package: str) -> bool:
    """Whether ``package`` can be imported (tests replace this to hide one)."""
    try:
        return importlib.util.find_spec(package) is not None
    except (ImportError, ValueError):
        return False


def check(name: str | None) -> None:
    """Refuse ``--log NAME`` before anything is written: an unknown tracker or a missing package."""
    if name is None:
        return
    if name not in TRACKERS:
        raise ConfigError(f"unknown tracker {name!r}; allowed: {', '.join(TRACKERS.names())}", field="--log")
    TRACKERS[name].check()


def write(name: str | None, run_dir: Path) -> None:
    """Log the run folder ``run_dir`` (its metrics.csv) with tracker ``name``; None does nothing."""
    if name is not None:
        TRACKERS[name].write(Path(run_dir))


def _safe(text: str) -> str:
    """A folder name from an algorithm label (names are free text)."""
    return re.sub(r"[^A-Za-z0-9_.-]", "_", text).lstrip(".") or "_"


def _runs(metrics: Path) -> dict[tuple[str, str], list[dict[str, str]]]:
    with open(metrics, newline="") as fh:
        out: dict[tuple[str, str], list[dict[str, str]]] = {}
        for row in csv.DictReader(fh):
            out.setdefault((row["algorithm"], row["seed"]), []).append(row)
    return out


def write_tensorboard(run_dir: Path) -> None:
    """``run_dir/tensorboard/`` from ``run_dir/metrics.csv`` (module docstring)."""
    from torch.utils.tensorboard import SummaryWriter

    metrics = run_dir / "metrics.csv"
    if not metrics.is_file():
        return
    folder = run_dir / FOLDER
    try:
        if folder.exists():
            shutil.rmtree(folder)
        for (algorithm, seed), rows in _runs(metrics).items():
            writer = SummaryWriter(log_dir=str(folder / _safe(algorithm) / f"seed_{seed}"), max_queue=1000)
            try:
                for row in rows:
                    step, t = int(row["round"]), float(row["sim_time_s"])
                    us = round(t * US_PER_S)
                    for q in QUANTITIES:
                        if row.get(q, "") == "":
                            continue
                        v = float(row[q])
                        writer.add_scalar(f"by_round/{q}", v, step, walltime=t, new_style=True,
                                          double_precision=True)
                        writer.add_scalar(f"by_sim_time_us/{q}", v, us, walltime=t, new_style=True,
                                          double_precision=True)
            finally:
                writer.close()
    except OSError as exc:
        raise OutputError(exc.filename or folder, exc) from None


TRACKERS.add("tensorboard", Tracker("tensorboard", "tensorboard", "tensorboard", write_tensorboard))
