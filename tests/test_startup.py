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
