"""Execute every notebook and check it ran and wrote its figures.

Slow (about a minute per notebook, Numba compilation included), so marked
``slow`` (and ``notebooks``): the default ``pytest`` run deselects them, CI's
second step runs them with ``pytest -m slow`` (``-m notebooks`` runs only
these). Each notebook runs in a fresh python3 kernel with cwd = notebooks/,
as a reader would run it, but with MEMOPT_BPTT_PLOTS_DIR pointing at a
temporary folder, so the tracked plots/ is never written by a test; every
figure must be written there by this run and be a non-empty PNG.
"""

from __future__ import annotations

import os
import sys

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOTEBOOK_DIR = os.path.join(ROOT, "notebooks")
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"

EXPECTED_PLOTS = {
    "01_planner_tradeoffs": ["01_cost_vs_memory.png", "01_time_vs_memory.png"],
    "02_exact_gradients": ["02_memory_vs_budget.png", "02_forward_steps_vs_budget.png"],
    "03_long_sequence_training": ["03_long_sequence_training.png"],
    "04_vanishing_gradients": ["04_grad_norm_by_lag.png", "04_truncation_error.png"],
    "05_stacked_char_lm": ["05_stacked_char_lm.png"],
}


def test_every_notebook_is_listed():
    found = sorted(f[:-len(".ipynb")] for f in os.listdir(NOTEBOOK_DIR) if f.endswith(".ipynb"))
    assert found == sorted(EXPECTED_PLOTS), "add new notebooks (and the plots they write) to EXPECTED_PLOTS"


def test_notebooks_are_built_from_their_source():
    """The committed .ipynb files hold the cells notebooks/_build.py defines (rebuild with it)."""
    sys.path.insert(0, NOTEBOOK_DIR)
    try:
        import _build
    finally:
        sys.path.remove(NOTEBOOK_DIR)
    assert sorted(_build.NOTEBOOKS) == sorted(EXPECTED_PLOTS)
    for name, cells in _build.NOTEBOOKS.items():
        nb = nbformat.read(os.path.join(NOTEBOOK_DIR, name + ".ipynb"), as_version=4)
        built = [(c.cell_type, c.source) for c in cells]
        stored = [(c.cell_type, c.source) for c in nb.cells]
        assert stored == built, f"{name}.ipynb differs from notebooks/_build.py: run python notebooks/_build.py --execute"


@pytest.mark.slow
@pytest.mark.notebooks
@pytest.mark.parametrize("name", sorted(EXPECTED_PLOTS))
def test_notebook_executes_and_writes_plots(name, tmp_path, monkeypatch):
    plot_dir = tmp_path / "plots"
    monkeypatch.setenv("MEMOPT_BPTT_PLOTS_DIR", str(plot_dir))  # the kernel inherits the environment
    path = os.path.join(NOTEBOOK_DIR, name + ".ipynb")
    nb = nbformat.read(path, as_version=4)
    client = nbclient.NotebookClient(nb, timeout=300, kernel_name="python3",
                                     resources={"metadata": {"path": NOTEBOOK_DIR}})
    client.execute()  # raises CellExecutionError on any failing cell

    errors = [out for cell in nb.cells if cell.cell_type == "code"
              for out in cell.get("outputs", []) if out.get("output_type") == "error"]
    assert not errors, f"{name}: error outputs {[e.get('ename') for e in errors]}"
    assert sorted(os.listdir(plot_dir)) == sorted(EXPECTED_PLOTS[name]), f"{name} wrote other figures"
    for png in EXPECTED_PLOTS[name]:
        png_path = plot_dir / png
        assert png_path.stat().st_size > 1000, f"{png} is nearly empty"
        with open(png_path, "rb") as fh:
            assert fh.read(8) == PNG_MAGIC, f"{png} is not a PNG"
