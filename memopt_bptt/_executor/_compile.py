"""Compile the one sweep (``_sweep.py``) for a cell and a mode, cached on disk.

Numba caches a jitted function on disk only when everything it calls is
known when it is compiled; a kernel passed as an argument is not, so the
sweep once recompiled for seconds in every new process. Here the sweep's
source is compiled with the cell's kernels bound as globals, under a name
of its own for each (cell, mode): ``sweep_<kind>_<mode>_<tag>``, where the tag
hashes the kernels' names, the cell's layout flags and the source of every
file the compiled code comes from (``_sweep.py``, this file,
``memopt_bptt/_kernels/`` and the kernels' modules). Numba keys its cache by file, function name and
bytecode, and stamps it with ``_sweep.py``'s modification time only, so the
tag is what makes an edit to a kernel's module recompile the sweep instead
of loading a stale one.

A built-in cell's sweep is cached (``NUMBA_CACHE_DIR`` moves the cache, as
for every Numba function). A custom cell's kernels live in the user's own
modules, which may change without this package knowing: its sweep is
compiled once per process and not cached (docs/custom_cell.md).
"""

from __future__ import annotations

import hashlib
import inspect
import os
import re
import sys
import threading
import types
from typing import Any

__all__ = ["MODES", "sweep_for", "is_cached"]

MODES = ("rows", "units")
_SOURCE_FILE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_sweep.py")
_KERNELS_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "_kernels")
_PACKAGE = __name__.rsplit(".", 2)[0]  # memopt_bptt
_BUILT: dict = {}
_LOCK = threading.Lock()

_OPS = ("SAVE", "LOAD", "SYNC", "FORWARD", "REBUILD", "READOUT", "NORM", "BACKWARD")
_MODE_OPS = {
    "rows": ("save_rows", "save_rows", "sync_rows", "forward_rows", "rebuild_rows", "readout_rows",
             "norm_rows", None),  # BACKWARD: direct or deferred, by the cell
    "units": ("save_units", "save_units", "sync_units", "forward_units", "rebuild_units", "readout_units",
              "norm_units", "backward_units"),
}


def _kernels(cell: Any, mode: str) -> dict[str, Any]:
    kernels = {"cell_forward": cell.forward_step, "cell_backward": cell.backward_step,
               "cell_rebuild": cell.state_from_internal}
    if cell.flush_grads is not None:  # only the deferred backward (Cell.grad_chunk > 0) calls it
        kernels["cell_flush"] = cell.flush_grads
    if mode == "units":
        if cell.unit_kernels is None:
            raise ValueError(f"cell {cell.kind!r} has no unit kernels (Cell.unit_kernels); use unit_threads=1")
        names = ("unit_forward", "unit_rebuild", "unit_backward_local", "unit_backward_shared", "unit_flush")
        kernels.update(zip(names, cell.unit_kernels))
    return kernels


def _module_of(kernel: Any) -> str:
    return getattr(getattr(kernel, "py_func", kernel), "__module__", "") or ""


def is_cached(cell: Any) -> bool:
    """Whether this cell's sweep is cached on disk: every kernel is the package's own."""
    return all(_module_of(k).startswith(_PACKAGE + ".") for k in _kernels(cell, "rows").values())


def _tag(cell: Any, mode: str, kernels: dict[str, Any]) -> str:
    digest = hashlib.sha256()
    files = {_SOURCE_FILE, os.path.abspath(__file__), *(os.path.join(_KERNELS_DIR, f) for f in sorted(os.listdir(_KERNELS_DIR))
                             if f.endswith(".py"))}
    for kernel in kernels.values():
        py = getattr(kernel, "py_func", kernel)
        digest.update(f"{py.__module__}.{py.__qualname__};".encode())
        files.add(inspect.getfile(py))
    for path in sorted(files):
        with open(path, "rb") as f:
            digest.update(f.read())
    digest.update(f"{mode};{cell.output_is_state};{cell.feature_major};{bool(cell.grad_chunk)}".encode())
    return digest.hexdigest()[:16]


def _build(cell: Any, mode: str) -> Any:
    kernels = _kernels(cell, mode)
    cached = is_cached(cell)
    with open(_SOURCE_FILE, encoding="utf-8") as f:
        source = f.read()
    kind = re.sub(r"\W", "_", cell.kind)
    name = f"sweep_{kind}_{mode}_{_tag(cell, mode, kernels)}" if cached else "sweep"
    source = source.replace("def sweep(", f"def {name}(", 1)
    filename = _SOURCE_FILE if cached else f"<memopt_bptt sweep for the custom cell {cell.kind!r}>"
    # A module of its own, registered in sys.modules: Numba looks a compiled
    # function's globals up by its module's name (and treats a function with
    # no module as dynamic, which it never caches).
    # The name is the same in every process for a cached sweep (its cached code names it).
    module = types.ModuleType(f"{_PACKAGE}._executor._{name}" + ("" if cached else f"_{len(_BUILT)}"))
    module.__package__ = f"{_PACKAGE}._executor"
    namespace = module.__dict__
    namespace.update(CACHE=cached, OUT_IS_STATE=bool(cell.output_is_state),
                     FEATURE_MAJOR=bool(cell.feature_major), **kernels)
    sys.modules[module.__name__] = module
    exec(compile(source, filename, "exec"), namespace)  # noqa: S102 - our own source file
    backward = "backward_rows_deferred" if cell.grad_chunk else "backward_rows_direct"
    for op, impl in zip(_OPS, _MODE_OPS[mode]):
        namespace[op] = namespace[impl or backward]
    return namespace[name]


def sweep_for(cell: Any, mode: str) -> Any:
    """The jitted sweep of ``cell`` in ``mode`` ("rows" or "units"); built once per process."""
    if mode not in MODES:
        raise ValueError(f"sweep_for: mode={mode!r}; use one of {MODES}")
    key = (tuple(_kernels(cell, mode).values()), mode, bool(cell.grad_chunk), bool(cell.output_is_state),
           bool(cell.feature_major), cell.kind)
    sweep = _BUILT.get(key)
    if sweep is None:
        with _LOCK:
            sweep = _BUILT.get(key)
            if sweep is None:
                sweep = _BUILT[key] = _build(cell, mode)
    return sweep
