"""Nothing is compiled that the first gradient on a fresh machine does not need.

Two patterns once cost most of a cold start (issue 12): a slice assignment
``a[i:j] = b`` in jitted code makes Numba compile its shape-mismatch error,
with string formatting, for 1-3 s per function; and a jitted function called
from jitted code with integer constants is compiled once per combination of
those literals (``_msm_scan`` four times, 1.6 s each). A third was the
wrappers Numba builds so that Python can call a function: 0.16 s for each
helper that takes the executor's tuples; helpers only jitted code calls are
``memopt_bptt._jit.inner`` (no wrappers), and calling one from Python would
crash the interpreter, so a scan checks that no Python code does.

Oracles: the package's source (no slice assignment of an array in a jitted
function), and Numba's own compile events in a fresh process with an empty
cache (slow: it compiles the planner and an LSTM's sweep from nothing).
"""

from __future__ import annotations

import ast
import json
import os
import pathlib
import subprocess
import sys
import textwrap

import pytest
from _compile_events import LISTENER

PACKAGE = pathlib.Path(__file__).resolve().parents[1] / "memopt_bptt"
# compiled into a sweep's namespace by _executor/_compile.py, without a decorator of their own
JITTED_FILES = {"_executor/_sweep.py", "_executor/_units.py"}


def _is_jit(decorator: ast.expr) -> bool:
    node = decorator.func if isinstance(decorator, ast.Call) else decorator
    name = node.attr if isinstance(node, ast.Attribute) else getattr(node, "id", "")
    return name in ("njit", "jit", "inner")


def _slice_assignments(path: pathlib.Path, root: pathlib.Path, all_jitted: bool) -> list[str]:
    """Lines that assign an array expression to a slice inside a jitted function."""
    found = []
    tree = ast.parse(path.read_text(encoding="utf-8"))
    for fn in ast.walk(tree):
        if not isinstance(fn, ast.FunctionDef) or not (all_jitted or any(map(_is_jit, fn.decorator_list))):
            continue
        for node in ast.walk(fn):
            targets = (node.targets if isinstance(node, ast.Assign)
                       else [node.target] if isinstance(node, ast.AugAssign) else [])
            for target in targets:
                if not isinstance(target, ast.Subscript):
                    continue
                index = target.slice.elts if isinstance(target.slice, ast.Tuple) else [target.slice]
                scalar = isinstance(node.value, (ast.Constant, ast.UnaryOp)) and not isinstance(node.value, ast.Call)
                if any(isinstance(i, ast.Slice) for i in index) and not scalar:
                    found.append(f"{path.relative_to(root)}:{node.lineno} in {fn.name}")
    return found


def test_the_scan_finds_a_slice_assignment(tmp_path):
    """The oracle itself: it must see the pattern it forbids (and not a scalar fill)."""
    src = tmp_path / "m.py"
    src.write_text("from numba import njit\n\n@njit(cache=True)\ndef f(a, b):\n    a[:] = 0.0\n"
                   "    a[1: 3] = b[0: 2]\n\ndef g(a, b):\n    a[:] = b\n")
    assert _slice_assignments(src, tmp_path, all_jitted=False) == ["m.py:6 in f"]


def test_no_slice_assignment_in_jitted_code():
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        found += _slice_assignments(path, PACKAGE, str(path.relative_to(PACKAGE)) in JITTED_FILES)
    assert not found, ("slice assignments in jitted code (each compiles a formatted error for seconds on a fresh "
                       "machine; use memopt_bptt._kernels.activations.copy_into / copy2_into): " + ", ".join(found))


def _is_inner(decorator: ast.expr) -> bool:
    node = decorator.func if isinstance(decorator, ast.Call) else decorator
    return getattr(node, "id", "") == "inner"


def _inner_names(paths) -> set[str]:
    names = set()
    for path in paths:
        for fn in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(fn, ast.FunctionDef) and any(map(_is_inner, fn.decorator_list)):
                names.add(fn.name)
    return names


def _python_calls_of(names: set[str], path: pathlib.Path, root: pathlib.Path, all_jitted: bool) -> list[str]:
    """Calls of ``names`` (by name or attribute) outside jitted functions: from Python."""
    found = []

    def visit(node: ast.AST, jitted: bool) -> None:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            jitted = all_jitted or any(map(_is_jit, node.decorator_list))
        if isinstance(node, ast.Call) and not jitted:
            f = node.func
            name = f.attr if isinstance(f, ast.Attribute) else getattr(f, "id", "")
            if name in names:
                found.append(f"{path.relative_to(root)}:{node.lineno} calls {name}")
        for child in ast.iter_child_nodes(node):
            visit(child, jitted)

    visit(ast.parse(path.read_text(encoding="utf-8")), all_jitted)
    return found


def test_the_call_scan_finds_a_python_call_of_an_inner_function(tmp_path):
    src = tmp_path / "m.py"
    src.write_text("from memopt_bptt._jit import inner\nfrom numba import njit\n\n@inner\ndef f(a):\n    return a\n\n"
                   "@njit\ndef g(a):\n    return f(a)\n\ndef h(a):\n    return g(a) + f(a)\n")
    names = _inner_names([src])
    assert names == {"f"}
    assert _python_calls_of(names, src, tmp_path, all_jitted=False) == ["m.py:13 calls f"]


def test_no_python_code_calls_an_inner_function():
    """Only jitted code may call a function compiled without Numba's Python wrapper."""
    root = PACKAGE.parent
    names = _inner_names(PACKAGE.rglob("*.py"))
    assert {"readout_rows", "_msm_scan", "_activate"} <= names, names
    found = []
    for folder in ("memopt_bptt", "tests", "benchmarks"):
        for path in sorted((root / folder).rglob("*.py")):
            rel = str(path.relative_to(PACKAGE)) if folder == "memopt_bptt" else ""
            found += _python_calls_of(names, path, root, rel in JITTED_FILES)
    assert not found, "Python calls a function compiled without a Python wrapper (it would crash): " + ", ".join(found)


_CHILD = LISTENER + textwrap.dedent("""
    import json, sys
    import memopt_bptt as mb
    model = mb.Sequence(mb.LSTM(input_size=2, hidden_size=32), output_size=1, loss="mse")
    params = model.init_params(seed=0, dtype="float32")
    xs, ys = mb.adding_problem(300, 16, seed=0, dtype="float32")
    mb.value_and_grad(model, params, xs, ys, budget=0.05, policy="msm")   # the demo's first update
    json.dump(compiled, sys.stdout)
""")


@pytest.mark.slow
def test_a_cold_start_compiles_no_error_formatting_and_no_literal_copies(tmp_path):
    env = dict(os.environ, NUMBA_CACHE_DIR=str(tmp_path / "cache"))
    proc = subprocess.run([sys.executable, "-c", _CHILD], capture_output=True, text=True, timeout=900, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    compiled = json.loads(proc.stdout)
    names = [name for name, _ in compiled]
    assert any("_msm_fast_table" in n for n in names) and any(".sweep_lstm_rows_" in n for n in names), names
    assert not [n for n in names if "raise_with_shape_context" in n], "a shape-mismatch error was compiled"
    ours = {}
    for name, args in compiled:
        if name.startswith("memopt_bptt.") and any(a.startswith("Literal[") for a in args):
            ours.setdefault(name, []).append(args)
    twice = {n: a for n, a in ours.items() if names.count(n) > 1}
    assert not twice, f"compiled once per literal argument: {twice}"


def test_the_copy_kernels_copy_views_exactly():
    """copy_into / copy2_into against NumPy's assignment, on strided views (the loops that replace slices)."""
    import numpy as np

    from memopt_bptt.kernels import copy2_into, copy_into
    rng = np.random.default_rng(0)
    src = rng.normal(size=(7, 9)).astype(np.float32)
    dst, want = np.zeros((9, 12), np.float32), np.zeros((9, 12), np.float32)
    copy2_into(src[:, 1:8], dst[2:9, 3:10])
    want[2:9, 3:10] = src[:, 1:8]
    assert np.array_equal(dst, want)
    flat, want1 = np.zeros(20), np.zeros(20)
    copy_into(src.ravel()[5:15].astype(np.float64), flat[3:13])
    want1[3:13] = src.ravel()[5:15]
    assert np.array_equal(flat, want1)


@pytest.mark.slow
def test_a_first_cli_plan_compiles_untraced_and_says_so(tmp_path):
    """On a machine's first run the CLI's planning compiles the planner: not under tracemalloc (2.6x
    slower, and the compiler's memory is not the planner's). It says the peak was not measured; the
    next run, from Numba's cache, measures it."""
    env = dict(os.environ, NUMBA_CACHE_DIR=str(tmp_path / "cache"))
    argv = [sys.executable, "-m", "memopt_bptt", "plan", "--steps", "300", "--budget", "5%", "--hidden", "16"]
    lines = []
    for _ in range(2):
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=600, env=env)
        assert proc.returncode == 0, proc.stderr[-3000:]
        lines += [ln for ln in proc.stdout.splitlines() if ln.startswith("planning")]
    assert len(lines) == 2, lines
    assert "peak not measured (this machine's first run" in lines[0] and "outside the budget" in lines[0]
    assert " at its peak (tables and schedule; outside the budget" in lines[1]
