"""docs/examples/api.ipynb runs top to bottom in a Jupyter kernel and shows what it says
(nbclient, nbformat and ipykernel are in the test extra)."""
from __future__ import annotations

from pathlib import Path

import pytest

MISSING = "needs nbclient, nbformat and ipykernel (the test extra: pip install '.[test]')"
nbformat = pytest.importorskip("nbformat", reason=MISSING)
nbclient = pytest.importorskip("nbclient", reason=MISSING)
pytest.importorskip("ipykernel", reason=MISSING)

EXAMPLES = Path(__file__).resolve().parents[1] / "docs" / "examples"
NOTEBOOK = EXAMPLES / "api.ipynb"


def _text(cell) -> str:
    parts = []
    for out in cell.outputs:
        parts.append(out.get("text", ""))
        parts.append(out.get("data", {}).get("text/plain", ""))
    return "".join(parts)


def test_the_example_notebook_runs_shows_its_results_and_writes_nothing():
    before = sorted(p.name for p in EXAMPLES.iterdir())
    nb = nbformat.read(NOTEBOOK, as_version=4)
    assert all(not c.get("outputs") for c in nb.cells if c.cell_type == "code")   # stored clean
    nbclient.NotebookClient(nb, timeout=600, kernel_name="python3",
                            resources={"metadata": {"path": str(EXAMPLES)}}).execute()
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert not [o for c in code for o in c.outputs if o.output_type == "error"]
    summary = _text(code[1]).splitlines()
    rows = {line.split()[1]: line.split() for line in summary[1:]}
    assert set(rows) == {"sgd", "topk-ef", "comp-ams"}, summary
    assert all(r[3] == "40" and r[-1] == "done" for r in rows.values()), summary   # final_round, status
    assert any("image/png" in o.get("data", {}) for o in code[2].outputs)         # the figure
    error = _text(code[3])
    assert error.startswith("field network.uplink.bandwidth: ") and "Gbbps" in error, error
    assert sorted(p.name for p in EXAMPLES.iterdir()) == before
