"""Execute every notebook and check it ran and wrote its figures.

Slow (about a minute per notebook, Numba compilation included), so marked
``notebooks``; skip locally with ``pytest -m "not notebooks"``. Each notebook
runs in a fresh python3 kernel with cwd = notebooks/, exactly as a reader
would run it; the figures it writes to ../plots/ must be (re)written by this
run (modification time after the start) and be non-empty PNGs.
"""

from __future__ import annotations

import os
import time

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

pytestmark = pytest.mark.notebooks

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOTEBOOK_DIR = os.path.join(ROOT, "notebooks")
PLOT_DIR = os.path.join(ROOT, "plots")
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"

EXPECTED_PLOTS = {
    "01_planner_tradeoffs": ["01_cost_vs_memory.png", "01_time_vs_memory.png"],
    "02_exact_gradients": ["02_memory_vs_budget.png", "02_forward_steps_vs_budget.png"],
    "03_long_sequence_training": ["03_long_sequence_training.png"],
    "04_vanishing_gradients": ["04_grad_norm_by_lag.png", "04_truncation_error.png"],
}


def test_every_notebook_is_listed():
    found = sorted(f[:-len(".ipynb")] for f in os.listdir(NOTEBOOK_DIR) if f.endswith(".ipynb"))
    assert found == sorted(EXPECTED_PLOTS), "add new notebooks (and the plots they write) to EXPECTED_PLOTS"


@pytest.mark.parametrize("name", sorted(EXPECTED_PLOTS))
def test_notebook_executes_and_writes_plots(name):
    path = os.path.join(NOTEBOOK_DIR, name + ".ipynb")
    nb = nbformat.read(path, as_version=4)
    start = time.time() - 1.0  # filesystem timestamps may be coarser than time.time()
    client = nbclient.NotebookClient(nb, timeout=180, kernel_name="python3",
                                     resources={"metadata": {"path": NOTEBOOK_DIR}})
    client.execute()  # raises CellExecutionError on any failing cell

    errors = [out for cell in nb.cells if cell.cell_type == "code"
              for out in cell.get("outputs", []) if out.get("output_type") == "error"]
    assert not errors, f"{name}: error outputs {[e.get('ename') for e in errors]}"
    for png in EXPECTED_PLOTS[name]:
        png_path = os.path.join(PLOT_DIR, png)
        assert os.path.isfile(png_path), f"{name} did not write plots/{png}"
        assert os.path.getmtime(png_path) >= start, f"plots/{png} was not rewritten by {name}"
        assert os.path.getsize(png_path) > 1000, f"plots/{png} is nearly empty"
        with open(png_path, "rb") as fh:
            assert fh.read(8) == PNG_MAGIC, f"plots/{png} is not a PNG"
