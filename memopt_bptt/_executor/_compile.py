"""Compile the one sweep (``_sweep.py``) for a model's layers and a mode, cached on disk.

Numba caches a jitted function on disk only when everything it calls is
known when it is compiled; a kernel passed as an argument is not, so the
sweep once recompiled for seconds in every new process. Here the sweep's
source is compiled with the layers' kernels bound as globals, and the mode's
per-layer steps generated for the stack's depth (``_rows_source``,
``_units_source``), under a name of its own for each (layers, mode): ``sweep_<kinds>_<mode>_<tag>``,
where the tag hashes the kernels' names, the layers' layout flags and the source of every
file the compiled code comes from (``_sweep.py``, ``_units.py`` in units mode,
this file, ``memopt_bptt/_kernels/``, ``_jit.py`` and the kernels' modules). Numba keys its cache by file, function name and
bytecode, and stamps it with ``_sweep.py``'s modification time only, so the
tag is what makes an edit to a kernel's module recompile the sweep instead
of loading a stale one.

The sweep of built-in cells is cached (``NUMBA_CACHE_DIR`` moves the cache, as
for every Numba function). A custom cell's kernels live in the user's own
modules, which may change without this package knowing: a sweep with one is
compiled once per process and not cached (docs/custom_cell.md). Stacks of
any depth made of the same cells share nothing compiled but the kernels:
each depth is a sweep of its own (compiled once per machine).
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
_HERE = os.path.dirname(os.path.abspath(__file__))
_SOURCE_FILE = os.path.join(_HERE, "_sweep.py")
_UNITS_FILE = os.path.join(_HERE, "_units.py")
_KERNELS_DIR = os.path.join(os.path.dirname(_HERE), "_kernels")
_JIT_FILE = os.path.join(os.path.dirname(_HERE), "_jit.py")
_PACKAGE = __name__.rsplit(".", 2)[0]  # memopt_bptt
_BUILT: dict = {}
_LOCK = threading.Lock()

_OPS = ("SAVE", "LOAD", "SYNC", "FORWARD", "REBUILD", "READOUT", "NORM", "BACKWARD")
_MODE_OPS = {
    "rows": ("save_rows", "save_rows", "sync_rows", "forward_rows", "rebuild_rows", "readout_rows",
             "norm_rows", "backward_rows"),
    "units": ("save_units", "load_units", "sync_units", "forward_units", "rebuild_units", "readout_units",
              "norm_units", "backward_units"),
}


def _kernels(model: Any, mode: str) -> dict[str, Any]:
    """The kernels the sweep calls, by the global name it calls them: L<k>_forward ... per layer."""
    layers = model.layers
    kernels = {}
    for k, cell in enumerate(layers.cells):
        kernels.update({f"L{k}_forward": cell.forward_step, f"L{k}_backward": cell.backward_step,
                        f"L{k}_rebuild": cell.state_from_internal})
        if cell.grad_chunk:
            kernels[f"L{k}_flush"] = cell.flush_grads
        if layers.built_input(k):
            kernels[f"L{k}_input_grad"] = cell.input_grad
    if mode == "units":
        cells = model.unit_cells
        if cells is None:
            raise ValueError(f"model {model.kind!r} cannot split its hidden units between threads (every layer "
                             "needs unit kernels, Cell.unit_kernels, and there must be no embedding); use "
                             "unit_threads=1")
        names = ("unit_forward", "unit_rebuild", "unit_backward_local", "unit_backward_shared", "unit_flush")
        for k, cell in enumerate(cells):
            kernels.update({f"L{k}_{name}": kernel for name, kernel in zip(names, cell.unit_kernels)})
            if k:
                kernels[f"L{k}_unit_input_grad"] = cell.unit_input_grad
    return kernels


def _module_of(kernel: Any) -> str:
    return getattr(getattr(kernel, "py_func", kernel), "__module__", "") or ""


def is_cached(model: Any) -> bool:
    """Whether this model's sweep is cached on disk: every kernel is the package's own."""
    return all(_module_of(k).startswith(_PACKAGE + ".") for k in _kernels(model, "rows").values())


def _flags(model: Any) -> tuple:
    layers = model.layers
    return (tuple(bool(c.grad_chunk) for c in layers.cells), layers.embedding is not None,
            bool(layers.top.output_is_state), bool(layers.top.feature_major))


def _tag(model: Any, mode: str, kernels: dict[str, Any]) -> str:
    digest = hashlib.sha256()
    files = {_SOURCE_FILE, os.path.abspath(__file__), _JIT_FILE, *(os.path.join(_KERNELS_DIR, f) for f in sorted(os.listdir(_KERNELS_DIR))
                             if f.endswith(".py"))}
    if mode == "units":
        files.add(_UNITS_FILE)
    for name, kernel in kernels.items():
        py = getattr(kernel, "py_func", kernel)
        digest.update(f"{name}={py.__module__}.{py.__qualname__};".encode())
        files.add(inspect.getfile(py))
    for path in sorted(files):
        with open(path, "rb") as f:
            digest.update(f.read())
    digest.update(f"{mode};{_flags(model)}".encode())
    return digest.hexdigest()[:16]


def _layer_call(k: int, kernel: str, *args: str) -> str:
    """A call of layer k's kernel with its four parameters (or gradients) and the readout's."""
    p = ", ".join(f"params[{4 * k + i}]" for i in range(4))
    return f"L{k}_{kernel}({p}, w_out, b_out, {', '.join(args)})"


def _rows_source(model: Any) -> str:
    """forward_rows, rebuild_rows and backward_rows for the model's stack: one
    call per layer, layer k reading layer k-1's h_t (see _sweep.py's helpers)."""
    layers = model.layers
    n = len(layers.cells)
    embed = layers.embedding is not None
    head = ("    lay = bufs.layout\n    rows = spec.rows\n    work = bufs.work\n"
            "    w_out, b_out = params[P_W_OUT], params[P_B_OUT]\n")
    first = ("embedded_input(params[P_EMB], data.xs, t, spec.b0, input_buffer(bufs, lay, 0, rows))" if embed
             else "data.xs[t, spec.b0: spec.b0 + rows]")

    def blk(buf: str, k: int, which: str) -> str:
        o, ln = (0, 1) if which == "state" else (2, 3)
        return f"{buf}[lay[{k}, {o}]: lay[{k}, {o}] + lay[{k}, {ln}]]"

    def stepper(name: str, args: str, kernel: str, buffers) -> str:
        lines = [f"@inner\ndef {name}(params, data, bufs, spec, t, {args}, nb):\n", head]
        for k in range(n):
            x = first if k == 0 else f"hidden_input({buffers[-1]}, lay, {k}, input_buffer(bufs, lay, {k}, rows))"
            lines.append(f"    x = {x}\n")
            lines.append("    " + _layer_call(k, kernel, "x", *[blk(b, k, w) for b, w in buffers[:-1]],
                                             "work") + "\n")
        return "".join(lines) + "    return nb\n"

    forward = stepper("forward_rows", "cur, nxt, internal", "forward",
                      [("cur", "state"), ("nxt", "state"), ("internal", "internal"), "nxt"])
    rebuild = stepper("rebuild_rows", "internal, out", "rebuild", [("internal", "internal"), ("out", "state"), "out"])
    grads = "g_w_out, g_b_out = grads[P_W_OUT], grads[P_B_OUT]"
    lines = ["@inner\ndef backward_rows(params, data, bufs, grads, spec, t, internal, state, ds, ds_prev, nb):\n",
             head, f"    {grads}\n"]
    for k in range(n - 1, -1, -1):
        cell = layers.cells[k]
        deferred = bool(cell.grad_chunk)
        built = layers.built_input(k)
        g = ", ".join(f"grads[{4 * k + i}]" for i in range(4))
        ind = "    "
        lines.append(f"{ind}# layer {k}\n")
        if deferred:
            lines.append(f"{ind}c = lay[{k}, 10]\n{ind}j = t % c\n"
                         f"{ind}chunk = bufs.chunk[lay[{k}, 6]: lay[{k}, 6] + lay[{k}, 7]]\n")
        if not built:
            x = "data.xs[t, spec.b0: spec.b0 + rows]"
        else:
            dst = f"kept_input(bufs, lay, {k}, rows, j)" if deferred else f"input_buffer(bufs, lay, {k}, rows)"
            x = (f"embedded_input(params[P_EMB], data.xs, t, spec.b0, {dst})" if k == 0
                 else f"hidden_input(state, lay, {k}, {dst})")
        lines.append(f"{ind}x = {x}\n")
        extra = ", chunk, j" if deferred else ""
        p = ", ".join(f"params[{4 * k + i}]" for i in range(4))
        lines.append(f"{ind}L{k}_backward({p}, w_out, b_out, x, {blk('internal', k, 'internal')}, "
                     f"{blk('ds', k, 'state')}, {blk('ds_prev', k, 'state')}, {g}, g_w_out, g_b_out, work{extra})\n")
        if k > 0:
            below = f"ds[lay[{k - 1}, 0]: lay[{k - 1}, 0] + lay[{k - 1}, 9] * rows].reshape((lay[{k - 1}, 9], rows))"
            lines.append(f"{ind}L{k}_input_grad({p}, w_out, b_out, x, work, {below})\n")
        elif embed:
            lines.append(f"{ind}dx = bufs.dx[: lay[0, 8] * rows].reshape((lay[0, 8], rows))\n"
                         f"{ind}dx[:] = 0.0\n"
                         f"{ind}L0_input_grad({p}, w_out, b_out, x, work, dx)\n"
                         f"{ind}embedding_grad(grads[P_EMB], data.xs, t, spec.b0, dx)\n")
        if deferred:
            block = (f"kept_inputs(bufs, lay, {k}, rows, w)" if built
                     else "first_inputs(data, bufs, lay, spec, t, w)")
            lines.append(f"{ind}if j == 0:\n{ind}    w = min(c, data.xs.shape[0] - t)\n"
                         f"{ind}    L{k}_flush({p}, w_out, b_out, {block}, chunk, w, {g}, g_w_out, g_b_out)\n")
    lines.append("    return nb\n")
    return "\n\n".join([forward, rebuild, "".join(lines)])


def _units_source(model: Any) -> str:
    """forward_units, rebuild_units and backward_units for the model's stack: every
    layer's unit kernels on the units of this thread's shares, with the barriers
    ``_units.py`` describes (layer k's input is layer k-1's h_t, a transposed view of
    its block). Between two barriers the thread runs each of its shares' part in
    share order; the shares it runs are read after every barrier (one thread may
    take them all, see _units.py)."""
    n = len(model.layers.cells)
    head = ("    lay = bufs.layout\n    units = bufs.units\n    rows = spec.rows\n    work = bufs.work\n"
            "    w_out, b_out = params[P_W_OUT], params[P_B_OUT]\n    st = own(bufs, spec)\n")
    shares = "for sh in range(st[S0], st[S1]):"

    def blk(buf: str, k: int, which: str) -> str:
        o, ln = (0, 1) if which == "state" else (2, 3)
        return f"{buf}[lay[{k}, {o}]: lay[{k}, {o}] + lay[{k}, {ln}]]"

    def call(k: int, kernel: str, *args: str) -> str:
        p = ", ".join(f"params[{4 * k + i}]" for i in range(4))
        return f"L{k}_{kernel}({p}, w_out, b_out, {', '.join(args)}, units[sh, {k}, U0], units[sh, {k}, U1])"

    def x(k: int, state: str) -> str:
        return "data.xs[t]" if k == 0 else f"layer_h({state}, lay, {k - 1}, rows).T"

    def flush(k: int) -> list:
        g = ", ".join(f"grads[{4 * k + i}]" for i in range(4))
        block = f"kept_inputs(bufs, lay, {k}, rows, w)" if k else "first_inputs(data, bufs, lay, spec, t, w)"
        return ["    if j == 0:", "        w = min(c, data.xs.shape[0] - t)",
                "        " + call(k, "unit_flush", block, "chunk", "w", g, "g_w_out", "g_b_out")]

    def body(lines: list) -> list:
        return [f"    {line}\n" for line in lines]

    forward = ["@inner\ndef forward_units(params, data, bufs, spec, t, cur, nxt, internal, nb):\n", head,
               "    if internal.ctypes.data != bufs.work_int.ctypes.data:  # into a pool slot\n",
               "        pay(bufs, spec, POOL)\n"]
    for k in range(n):
        if k:
            forward.append("    cross(bufs, spec)  # the next layer reads all of this one's h_t\n    nb += 1\n")
        forward += body([shares, "    " + call(k, "unit_forward", x(k, "nxt"), blk("cur", k, "state"),
                                                 blk("nxt", k, "state"), blk("internal", k, "internal"), "work")])
    if n > 1:  # the dispatch's SYNC after this step is deferred (STATE, in _units.py)
        forward.append("    owe(bufs, spec, FRESH)\n")
    forward.append("    return nb\n")
    rebuild = ["@inner\ndef rebuild_units(params, data, bufs, spec, t, internal, out, nb):\n", head,
               "    pay(bufs, spec, STATE)  # a forward step may still read the state buffers\n"]
    rebuild += body([shares] + ["    " + call(k, "unit_rebuild", x(k, "out"), blk("internal", k, "internal"),
                                                blk("out", k, "state"), "work") for k in range(n)])
    rebuild.append("    return nb\n")
    lines = ["g_w_out, g_b_out = grads[P_W_OUT], grads[P_B_OUT]"]
    for k in range(n - 1, -1, -1):
        lines += [f"# layer {k}", f"c = lay[{k}, 10]", "j = t % c",
                  f"chunk = bufs.chunk[lay[{k}, 6]: lay[{k}, 6] + lay[{k}, 7]]",
                  f"hp = unit_parts(bufs, t, units[0, {k}, HP_OFF], rows * lay[{k}, 9])"]
        if k:
            lines += [f"below = layer_h(state, lay, {k - 1}, rows)",
                      f"xp = unit_parts(bufs, t, units[0, {k}, XP_OFF], rows * lay[{k}, 8])"]
        xk = "below.T" if k else "data.xs[t]"
        lines.append(shares)
        if k:
            lines.append(f"    keep_units(below, kept_input(bufs, lay, {k}, rows, j), units[sh, {k - 1}, U0], "
                         f"units[sh, {k - 1}, U1])")
        lines.append("    " + call(k, "unit_backward_local", xk, blk("internal", k, "internal"),
                                    blk("ds", k, "state"), blk("ds_prev", k, "state"), "work", "chunk", "j", "hp[sh]"))
        if k:
            lines.append("    " + call(k, "unit_input_grad", xk, "work", "xp[sh]"))
        if k == 0 and n > 1:  # the first layer's shared part waits for the next readout (finish_units)
            lines += ["if t == 0:  # no next step: finish here",
                      "    cross(bufs, spec)",
                      "    nb += 1",
                      "    finish_units(params, data, bufs, grads, spec, t, ds_prev)",
                      "else:  # this local part read the internal state after the step's last barrier",
                      "    owe(bufs, spec, POOL)"]
            continue
        lines += ["cross(bufs, spec)", "nb += 1", shares,
                  "    " + call(k, "unit_backward_shared", xk, blk("ds_prev", k, "state"), "hp")]
        if k:
            lines.append(f"    add_parts(xp, layer_h(ds, lay, {k - 1}, rows), units[sh, {k - 1}, U0], "
                         f"units[sh, {k - 1}, U1])")
        lines += flush(k)
    lines.append("return nb")
    backward = ["@inner\ndef backward_units(params, data, bufs, grads, spec, t, internal, state, ds, ds_prev, nb):\n",
                head] + body(lines)
    # The first layer's shared part and flush of step t, run by the next step's readout (or at t = 0 by
    # backward_units): every part they read was written before a barrier (see _units.py).
    finish = ["@inner\ndef finish_units(params, data, bufs, grads, spec, t, ds_prev):\n", head]
    if n > 1:
        finish += body(["g_w_out, g_b_out = grads[P_W_OUT], grads[P_B_OUT]", "c = lay[0, 10]", "j = t % c",
                        "chunk = bufs.chunk[lay[0, 6]: lay[0, 6] + lay[0, 7]]",
                        "hp = unit_parts(bufs, t, units[0, 0, HP_OFF], rows * lay[0, 9])", shares,
                        "    " + call(0, "unit_backward_shared", "data.xs[t]", blk("ds_prev", 0, "state"), "hp"),
                        *flush(0)])
    else:
        finish.append("    return\n")
    return "\n\n".join("".join(f) for f in (forward, rebuild, backward, finish))


def _build(model: Any, mode: str) -> Any:
    kernels = _kernels(model, mode)
    cached = is_cached(model)
    with open(_SOURCE_FILE, encoding="utf-8") as f:
        source = f.read()
    kind = re.sub(r"\W", "_", model.kind)
    name = f"sweep_{kind}_{mode}_{_tag(model, mode, kernels)}" if cached else "sweep"
    source = source.replace("def sweep(", f"def {name}(", 1) + "\n\n" + _rows_source(model)
    if mode == "units":
        source += "\n\n" + _units_source(model)
    filename = _SOURCE_FILE if cached else f"<memopt_bptt sweep for the custom cells {model.kind!r}>"
    # A module of its own, registered in sys.modules: Numba looks a compiled
    # function's globals up by its module's name (and treats a function with
    # no module as dynamic, which it never caches).
    # The name is the same in every process for a cached sweep (its cached code names it).
    module = types.ModuleType(f"{_PACKAGE}._executor._{name}" + ("" if cached else f"_{len(_BUILT)}"))
    module.__package__ = f"{_PACKAGE}._executor"
    namespace = module.__dict__
    layers = model.layers
    n_params = 4 * len(layers.cells)
    namespace.update(CACHE=cached, OUT_IS_STATE=bool(layers.top.output_is_state),
                     FEATURE_MAJOR=bool(layers.top.feature_major), EMBED=layers.embedding is not None,
                     P_W_OUT=n_params, P_B_OUT=n_params + 1, P_EMB=n_params + 2, **kernels)
    sys.modules[module.__name__] = module
    if mode == "units":  # units mode's operations, under their own file name (tracebacks)
        with open(_UNITS_FILE, encoding="utf-8") as f:
            exec(compile(f.read(), _UNITS_FILE, "exec"), namespace)  # noqa: S102 - our own source file
    exec(compile(source, filename, "exec"), namespace)  # noqa: S102 - our own source file
    for op, impl in zip(_OPS, _MODE_OPS[mode]):
        namespace[op] = namespace[impl]
    return namespace[name]


def sweep_for(model: Any, mode: str) -> Any:
    """The jitted sweep of ``model``'s layers in ``mode`` ("rows" or "units"); built once per process."""
    if mode not in MODES:
        raise ValueError(f"sweep_for: mode={mode!r}; use one of {MODES}")
    kernels = _kernels(model, mode)
    key = (tuple(kernels.items()), mode, _flags(model), model.kind)
    sweep = _BUILT.get(key)
    if sweep is None:
        with _LOCK:
            sweep = _BUILT.get(key)
            if sweep is None:
                sweep = _BUILT[key] = _build(model, mode)
    return sweep
