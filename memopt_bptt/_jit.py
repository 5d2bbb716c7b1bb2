"""``inner``: ``njit`` for a function that only other jitted code calls.

Numba compiles two wrappers beside every jitted function: one that lets
Python call it (unboxing each argument from its Python object) and one that
lets C call it through a function pointer. A function that takes the
executor's tuples (19 buffers, the spec, the parameters) spends most of its
compile in the Python wrapper: measured here 0.16 s of a 0.2 s compile,
repeated for each of the forty-odd functions a machine's first sweep
compiles. The sweep's helpers, the cells' private helpers and the planner's
inner loops are never called from Python, so they are compiled without
either wrapper.

Calling an ``inner`` function from Python crashes the interpreter (there is
no wrapper to enter), so only private functions called from jitted code get
it: never a cell's kernels (``Cell.forward_step`` ..., which users may call),
the public :mod:`memopt_bptt.kernels` or a planner entry point the planner's
Python calls. tests/test_compile_waste.py checks that no Python code of the
package or its tests calls one.
"""

from __future__ import annotations

from typing import Any

from numba import njit

__all__ = ["inner"]

_NO_WRAPPERS = {"no_cpython_wrapper": True, "no_cfunc_wrapper": True}


def inner(*args: Any, **options: Any) -> Any:
    """``@inner`` or ``@inner(cache=True, ...)``: ``njit`` without the Python and C wrappers."""
    if args and callable(args[0]) and not options:
        return njit(**_NO_WRAPPERS)(args[0])
    return njit(*args, **options, **_NO_WRAPPERS)
