"""Start-up: what ``run_sim.py validate`` and the start of ``run`` import (issue 15)."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

NO_PLOTTING = r"""
import sys
import run_sim
import analysis.figures, analysis.plots, analysis.report, analysis.tables   # importable without plotting
import sim.engine, sim.study.config, sim.study.runner, sim.study.replay, sim.study.sweep
assert run_sim.main(["validate", "scenarios/tiny.yaml"]) == 0
loaded = sorted(m for m in sys.modules if m.split(".")[0] in ("seaborn", "matplotlib"))
assert not loaded, loaded
analysis.figures._figure(2, 2)          # the first figure brings them in
assert "seaborn" in sys.modules and "matplotlib" in sys.modules
import matplotlib
assert matplotlib.get_backend().lower() == "agg"
print("ok")
"""


def test_validate_and_analysis_imports_load_no_plotting_library() -> None:
    out = subprocess.run([sys.executable, "-c", NO_PLOTTING], cwd=ROOT, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().endswith("ok")


def test_validate_in_process_leaves_the_garbage_collector_as_it_was() -> None:
    """run_sim.QUICK_COMMANDS: the collector is off while validate runs and frozen only when
    run_sim is the program (argv None); a caller's process (tests, notebooks) keeps its collector."""
    import gc

    import run_sim
    seen = []
    real = run_sim._run_command

    def spy(args):
        seen.append(gc.isenabled())
        return real(args)

    assert gc.isenabled() and gc.get_freeze_count() == 0
    try:
        run_sim._run_command = spy
        assert run_sim.main(["validate", str(ROOT / "scenarios" / "tiny.yaml")]) == 0
        assert run_sim.main(["validate", str(ROOT / "scenarios" / "tiny.yaml"), "--set", "workers=0"]) == 2
        gc.disable()
        assert run_sim.main(["validate", str(ROOT / "scenarios" / "tiny.yaml")]) == 0
        assert not gc.isenabled()                          # a caller's disabled collector stays disabled
        gc.enable()
    finally:
        run_sim._run_command = real
        gc.enable()
    assert seen == [False, False, False]
    assert gc.isenabled() and gc.get_freeze_count() == 0


def test_validate_as_the_program_prints_the_same_and_exits_0() -> None:
    out = subprocess.run([sys.executable, "run_sim.py", "validate", "scenarios/tiny.yaml"], cwd=ROOT,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout == "scenarios/tiny.yaml: ok (3 algorithms, 4 workers, seeds [0])\n"
