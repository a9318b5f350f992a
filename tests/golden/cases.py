"""Golden files: short versions of the quickstart and paper scenarios whose
metrics.csv must stay byte-identical when the engine changes (issue 13: the
synchronous algorithms keep their exact results).

    python tests/golden/cases.py            # rewrite the golden files (only on purpose!)

The files were written by commit 4e48801 (before the event-driven engine);
tests/test_golden.py runs the same cases and compares the bytes.

Rewritten on purpose once since (issue 15, the memory budget): the sum over
workers became a fold over fixed blocks of workers (algorithms/ps.py
REDUCE_ROWS), which changes the last bits of every mean, and the files are now
written with MKL_CBWR=AVX2 (tests/conftest.py), so that an Intel and an AMD
machine give the same bits.  Written on a 2-core AMD EPYC, torch 2.13.0+cpu.  Issue 14
appended three columns for decentralized algorithms (worker_acc_mean,
worker_acc_min, consensus_distance; empty here): the files were edited by
appending the names to the header and ",,," to every row, not rewritten, so
the passing test shows every earlier column kept its bytes.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

os.environ.setdefault("MKL_CBWR", "AVX2")   # as tests/conftest.py: the same bits on Intel and AMD CPUs

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent

CASES = {
    "quickstart": ("scenarios/quickstart.yaml", ["stop.max_rounds=30", "eval_every=10"]),
    "sasg_mnist": ("scenarios/papers/sasg_mnist.yaml", ["seeds=[1]", "stop.max_rounds=30", "eval_every=10"]),
    "comp_ams_ef": ("scenarios/papers/comp_ams_ef.yaml", ["model.kind=mlp", "model.hidden=[64]",
                                                          "stop.max_rounds=20", "eval_every=10"]),
    "comp_ams_speedup": ("scenarios/papers/comp_ams_speedup.yaml", ["model.kind=mlp", "model.hidden=[64]",
                                                                    "workers=4", "stop.max_rounds=20"]),
    "sketched_amsgrad": ("scenarios/papers/sketched_amsgrad.yaml", ["model.hidden=[32]", "stop.max_rounds=6",
                                                                    "eval_every=3"]),
}


def run_case(name: str, out: Path) -> Path:
    sys.path.insert(0, str(ROOT))
    from sim.study.config import load_scenario
    from sim.engine import build_world
    from sim.study.runner import execute
    scenario, overrides = CASES[name]
    scn = load_scenario(ROOT / scenario, overrides)
    execute(scn, {s: build_world(scn, s) for s in scn.run_seeds}, out, quiet=True, plots=False)
    return out / "metrics.csv"


if __name__ == "__main__":
    import tempfile
    for name in CASES:
        with tempfile.TemporaryDirectory() as tmp:
            (HERE / f"{name}.metrics.csv").write_bytes(run_case(name, Path(tmp)).read_bytes())
            print(f"wrote {name}.metrics.csv")
