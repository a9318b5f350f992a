"""The installable command (issue 16): a built wheel gives a ``commsim`` console script
whose sub-commands find the shipped scenarios outside the checkout.

Offline and without touching the test environment: the wheel is built from a copy of
the checkout (``pip wheel --no-deps --no-build-isolation --no-index``, with this
interpreter's setuptools) and installed with ``--no-deps`` into a fresh venv made
``--without-pip``, whose only view of the dependencies (torch, pandas, ...) is a .pth
file naming this environment's site-packages, after the venv's own.
"""
from __future__ import annotations

import os
import shutil
import site
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCENARIO_FILES = sorted(p.relative_to(REPO / "scenarios").as_posix() for p in (REPO / "scenarios").rglob("*")
                        if p.suffix in (".yaml", ".json"))   # the scenarios and the schemas they name


def _setuptools_builds_wheels() -> str | None:
    try:
        import setuptools
    except ImportError:
        return "setuptools is not installed (it is in the test extra: pip install '.[test]')"
    major, minor = (int(x) for x in setuptools.__version__.split(".")[:2])
    if (major, minor) < (70, 1):
        return f"setuptools {setuptools.__version__} has no bdist_wheel of its own (>= 70.1, the test extra)"
    return None


pytestmark = pytest.mark.skipif(_setuptools_builds_wheels() is not None, reason=str(_setuptools_builds_wheels()))


def run(cmd: list, cwd: Path, **kw) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    proc = subprocess.run([str(c) for c in cmd], cwd=cwd, capture_output=True, text=True, timeout=300, env=env,
                          **kw)
    assert proc.returncode == 0, f"{cmd}\n{proc.stdout}\n{proc.stderr}"
    return proc


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """commsim's wheel, built from a copy of this checkout (no build/ or egg-info left in it)."""
    tmp = tmp_path_factory.mktemp("wheel")
    src = tmp / "src"
    shutil.copytree(REPO, src, symlinks=True, ignore=shutil.ignore_patterns(
        ".git", ".venv", "results", "build", "dist", "*.egg-info", "__pycache__", ".pytest_cache", ".hypothesis"))
    run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-q",
         "-w", tmp / "dist", src], cwd=tmp)
    (built,) = (tmp / "dist").glob("commsim-*.whl")
    return built


def test_the_wheel_holds_the_packages_the_scenarios_and_the_entry_point(wheel):
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
        entry_points = next(zf.read(n).decode() for n in names if n.endswith(".dist-info/entry_points.txt"))
    assert {f"commsim_scenarios/{f}" for f in SCENARIO_FILES} <= names
    assert {"run_sim.py", "sim/api.py", "sim/study/shipped.py", "analysis/frames.py", "algorithms/__init__.py",
            "topologies/__init__.py"} <= names
    assert "[console_scripts]\ncommsim = run_sim:main" in entry_points
    assert not [n for n in names if n.startswith("tests/")]


def test_commsim_from_the_installed_wheel_works_outside_the_checkout(wheel, tmp_path):
    venv = tmp_path / "venv"
    run([sys.executable, "-m", "venv", "--without-pip", venv], cwd=tmp_path)
    py = venv / "bin" / "python"
    venv_site = Path(run([py, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                         cwd=tmp_path).stdout.strip())
    (venv_site / "deps.pth").write_text("".join(f"{p}\n" for p in site.getsitepackages()))   # torch, pandas, ...
    run([sys.executable, "-m", "pip", "--python", py, "install", "--no-deps", "--no-index", "--ignore-installed",
         "-q", wheel], cwd=tmp_path)
    commsim = venv / "bin" / "commsim"
    shipped = venv_site / "commsim_scenarios"
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()

    out = run([commsim, "validate", "quickstart"], cwd=elsewhere).stdout
    assert out.startswith(f"{shipped / 'quickstart.yaml'}: ok (3 algorithms, 10 workers, seeds [0])"), out

    lines = dict(line.split(": ", 1) for line in run([commsim, "list", "scenarios"], cwd=elsewhere).stdout.splitlines())
    assert lines["folder"] == str(shipped)
    assert {"quickstart", "tiny", "sasg_mnist"} <= set(lines["scenarios (run, validate)"].split(", "))
    assert {"uplink_bandwidth", "latency", "topology"} <= set(lines["sweeps (sweep)"].split(", "))
    # every shipped file is there, as in the checkout
    assert sorted(p.relative_to(shipped).as_posix() for p in shipped.rglob("*") if p.suffix in (".yaml", ".json")) == SCENARIO_FILES

    bad = subprocess.run([commsim, "run", "quickstrat"], cwd=elsewhere, capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2 and bad.stdout == ""
    assert bad.stderr.startswith("error: quickstrat: no such file, and no shipped scenario") and "quickstart" in bad.stderr
    assert bad.stderr.count("\n") == 1

    usage = subprocess.run([commsim, "--help"], cwd=elsewhere, capture_output=True, text=True, timeout=300)
    assert usage.returncode == 0 and usage.stdout.startswith("usage: commsim ")
    for command in ("run", "validate", "list", "sweep", "replay", "plot", "papers"):
        assert command in usage.stdout
    assert sorted(p.name for p in elsewhere.iterdir()) == []
