"""The package's layout (issue 12): each module owns one idea and stays short,
and the core imports none of the optional extras (dask, torch)."""

from __future__ import annotations

import pathlib
import subprocess
import sys

import memopt_bptt

PACKAGE = pathlib.Path(memopt_bptt.__file__).resolve().parent
MAX_LINES = 450
LONGER = {}
"""Modules allowed over MAX_LINES, each with why (issue 12's closing note says the same): none today."""


def test_no_module_is_over_450_lines():
    long = []
    for path in sorted(PACKAGE.rglob("*.py")):
        name = path.relative_to(PACKAGE.parent).as_posix()
        with open(path, encoding="utf-8") as fh:
            n_lines = sum(1 for _ in fh)
        if n_lines > MAX_LINES and name not in LONGER:
            long.append(f"{name} ({n_lines} lines)")
    assert not long, (f"modules over {MAX_LINES} lines: {', '.join(long)}; split them by idea "
                      "(or say why in LONGER)")


def test_importing_the_core_imports_neither_dask_nor_torch():
    code = ("import sys, memopt_bptt; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('dask', 'distributed', 'torch')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.strip() == "[]", out.stdout
