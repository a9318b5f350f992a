"""The paper reproductions as one command.

    python run_sim.py papers [--quick] [--workers N] [--out results/papers] [--only NAME ...]
    make papers            (the full set, --workers 2)

Each reproduction is a sweep file in ``scenarios/papers/reproduce/`` whose
points are the seeds (and, for the speed-up, the worker counts) of one CPU-scale
paper scenario in ``scenarios/papers/``.  They run one after another into
``OUT/<name>/`` through the sweep machinery (sim/study/sweep.py: ``--workers``
processes, resume by scenario hash, Ctrl-C keeps what finished), then
``OUT/report.md`` puts each table beside the paper's numbers with 95%
intervals (analysis/papers.py).  Running the same command again resumes:
points already done with the same scenario are kept.

``--quick`` changes every reproduction as its ``quick`` entry says (fewer seeds
and rounds, a smaller target) and writes to ``results/papers-quick`` by
default: a check that the whole pipeline runs in a few minutes, not a
reproduction (report.md says so).  Quick and full points differ in their
scenarios, so one never stands in for the other, even in the same folder.

The full-scale scenarios (``comp_ams_cifar10.yaml``, ``comp_ams_imdb.yaml``,
``resnet18_cifar10.yaml``, ``sketched_amsgrad_full.yaml``) are not part of
this command: they need their data sets under ``data.root`` and a GPU, and
run with ``run_sim.py run`` (docs/papers.md).
"""
from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from sim.registry import Registry

REPRODUCE = Path("papers") / "reproduce"       # below the shipped scenarios (sim/study/shipped.py)
EXIT_INTERRUPTED = 130


@dataclass(frozen=True)
class Reproduction:
    name: str                   # OUT/<name>/
    title: str                  # heading in report.md
    source: str                 # where in the paper
    sweep: str                  # file under scenarios/papers/reproduce/
    table: Callable             # analysis.papers: Study -> markdown lines
    quick: dict = field(default_factory=dict)   # sweep changes for --quick ({"axes": ..., "set": ...})

    @property
    def path(self) -> Path:
        from sim.study.shipped import folder
        return folder() / REPRODUCE / self.sweep


def _reproductions() -> list[Reproduction]:
    """In the report's reading order."""
    from analysis import papers as tables
    return [
        Reproduction("sasg_mnist", "SASG and LASG: uploads to a target accuracy",
                     "sasg.txt Sec. VI-A, Table II (FC MNIST)", "sasg_mnist.yaml", tables.sasg_table,
                     {"axes": {"seeds": [[1], [19]]},
                      "set": {"stop.target_accuracy": 0.85, "stop.max_rounds": 300}}),
        Reproduction("comp_ams_ef", "COMP-AMS: error feedback fixes compressed AMSGrad",
                     "comp-ams.txt Sec. 5.1, Figure 1", "comp_ams_ef.yaml", tables.ef_table,
                     {"axes": {"seed": [0, 1]}, "set": {"stop.max_rounds": 60, "eval_every": 20}}),
        Reproduction("comp_ams_speedup", "COMP-AMS: linear speedup in the number of workers",
                     "comp-ams.txt Sec. 5.2, Figure 2", "comp_ams_speedup.yaml", tables.speedup_table,
                     {"axes": {"workers": [1, 1, 4, 4], "algorithms.0.lr": [0.0001, 0.0001, 0.0002, 0.0002],
                               "seed": [0, 1, 0, 1]}, "set": {"stop.max_rounds": 120}}),
        Reproduction("sketched_amsgrad", "SketchedAMSGrad against Sketched-SGD, Efficient-Adam and 1-bit Adam",
                     "sketched-amsgrad.txt Sec. V, Fig. 1 (CPU scale)", "sketched_amsgrad.yaml",
                     tables.sketch_table,
                     {"axes": {"seed": [0, 1]}, "set": {"stop.max_rounds": 15, "eval_every": 5}}),
        Reproduction("sketch_regime", "Sketching in the paper's regime: the paper's sketch-to-k-to-d ratios, "
                                      "many updates per coordinate",
                     "sketched-amsgrad.txt Sec. V (sizes), at CPU scale", "sketch_regime.yaml",
                     tables.sketch_table,
                     {"axes": {"seed": [0, 1]}, "set": {"stop.max_rounds": 150, "eval_every": 50}}),
    ]


ORDER = _reproductions()
REPRODUCTIONS: Registry[Reproduction] = Registry("reproduction")
for _rep in ORDER:
    REPRODUCTIONS.add(_rep.name, _rep)


def run_papers(out: str | None, quick: bool = False, workers: int = 1, only: list[str] | None = None,
               quiet: bool = False) -> int:
    """Run the reproductions (all, or ``only``) and write OUT/report.md.
    Returns 0 when every point is done, 1 when some failed, 130 when
    interrupted (report.md is written from what finished in every case), 2
    for bad input (an unknown name: nothing is written)."""
    from analysis.papers import write_report

    from sim.errors import ConfigError
    from sim.study.sweep import run_sweep
    known = [r.name for r in ORDER]
    names = only or known
    for n in names:
        if n not in known:
            raise ConfigError(f"unknown reproduction {n!r}; allowed: {', '.join(sorted(known))}", field="--only")
    chosen = [r for r in ORDER if r.name in names]
    out_dir = Path(out) if out else Path("results") / ("papers-quick" if quick else "papers")
    worst = 0
    for rep in chosen:
        t0 = time.monotonic()
        print(f"papers: {rep.name} ({rep.source}){' [quick]' if quick else ''}", file=sys.stderr)
        code = run_sweep(str(rep.path), str(out_dir / rep.name), workers=workers, quiet=quiet,
                         changes=rep.quick if quick else None)
        print(f"papers: {rep.name} finished with exit code {code} in {time.monotonic() - t0:.0f} s",
              file=sys.stderr)
        if code == EXIT_INTERRUPTED:
            worst = code
            break
        worst = max(worst, code)
    path = write_report(out_dir, chosen, quick=quick)
    print(f"papers: report in {path}", file=sys.stderr)
    return worst
