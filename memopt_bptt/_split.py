"""How the work of one sweep is split between threads, and what that charges.

The one place for this policy: whether a batch is split into *lanes*
(independent sweeps of the same schedule over disjoint batch rows, whose
weight gradients are added in lane order at the end), whether every step's
hidden units are split between *unit threads* that meet at barriers, how
many threads BLAS gets, and what each split adds to the working buffers the
budget pays for. ``Sequence.lane_batches``, ``Sequence.unit_split`` and
``Sequence.sizes`` read it; the planner only sees the resulting sizes.

Every choice depends only on the model and the batch (and, where this
machine was calibrated, on the calibration: below), never on the budget or
the policy, so a model's gradients are bit-identical across policies and
budgets, and the same bits on every machine that takes the rule. The rule:

- two lanes for small recurrent GEMMs (``MIN_LANE_MACS`` up to below
  ``LANE_MAX_MACS`` multiply-adds), each lane with ``MIN_LANE_BATCH`` rows
  or more;
- for larger ones, two lanes on a wide batch, where a second lane's
  gradient accumulator is at most ``LANE_MAX_ACCUMULATOR_STATES`` hidden
  states of the batch (:func:`lane_accumulator_states`: LSTM 256 from batch
  41, LSTM 512 from 73, GRU 256 from 62);
- else two unit threads for cells with unit kernels (LSTM, GRU), also below
  ``LANE_MAX_MACS`` on a batch of at most ``MATVEC_MAX_BATCH`` rows with at
  least ``MATVEC_MIN_UNITS`` units per thread;
- else one sweep, BLAS on one thread below ``SMALL_GEMM_MACS``, its own
  number above.

The machine does not enter the rule: in the interleaved measurements of
benchmarks/bench_split.py its choices between lanes and unit threads came
out the same with AVX-512 and with AVX2 code on one host. Another machine
(a smaller L2, another BLAS) can still disagree with it, so
``mb.calibrate(model, batch)`` (memopt_bptt._calibrate) times the
candidate splits there and keeps the fastest for that model class; a model
with ``lanes`` and ``unit_threads`` both automatic takes a kept split
instead of the rule's (:func:`rule_split`). The figures behind the
thresholds are in benchmarks/results/bench_split*.json and bench_cells.json.
"""

from __future__ import annotations

import functools
import math
import os
from typing import Any

import numpy as np

from ._layers import layout

__all__ = ["lane_batches", "lane_accumulator_states", "n_unit_threads", "rule_split", "l2_bytes", "units_over_lanes",
           "unit_split", "unit_exchange_widths", "unit_exchange_len", "split_sizes", "split_note", "blas_threads_for"]

MIN_LANE_BATCH = 4
"""Automatic lanes never get fewer batch rows than this."""
MIN_LANE_MACS = 1 << 17
"""Automatic lanes only for a recurrent GEMM of at least this many
multiply-adds (LSTM hidden 64 at batch 8): below, a step takes a few
microseconds, and a second gradient accumulator would be a large part of a
small budget for little time saved."""
LANE_MAX_MACS = 1 << 21
"""Automatic lanes for every model below this many multiply-adds; from here
on only where the accumulator is small (``LANE_MAX_ACCUMULATOR_STATES``),
else automatic unit threads. Measured (T=1000, batch 16, float32, two cores;
two lanes / one): LSTM hidden 128 0.080 / 0.117 s, GRU 128 0.054 / 0.087 s,
Elman 256 0.071 / 0.103 s (all 1.05 M or less); GRU 256 (3.1 M) 0.221 /
0.213 s, LSTM 256 (4.2 M) 0.284 / 0.272 s, where two BLAS threads on the
whole batch do as well."""
LANE_MAX_ACCUMULATOR_STATES = 16
"""At ``LANE_MAX_MACS`` or more, two lanes (instead of unit threads, or of
BLAS threads on the whole batch) where a second lane's gradient accumulator
(every parameter) is at most this many hidden states of the whole batch
(:func:`lane_accumulator_states`): a wide batch. There each lane's GEMMs are
wide (20 or more batch rows), and the accumulator costs a tight budget few
checkpoints. Measured (benchmarks/bench_split.py, interleaved in one
process, AVX-512 and AVX2 code): LSTM 256 at batch 64 (10.2 states) and 128
(5.1), lanes faster than unit threads in every run; GRU 256 at batch 64
(15.3), lanes 0.65x / 0.88x the time of BLAS threads (plain / 5%) on a
machine with a free core, but up to 1.36x where other work keeps both cores
busy (BLAS then runs on one thread, and any two-thread path loses); not LSTM
512 at batch 64 (18.2), where lanes measured 1.1-2.3x slower than unit
threads at 5% of T = 200-500, nor LSTM 256 at batch 32 (20.4)."""
MIN_UNIT_HIDDEN = 32
"""Automatic unit threads give every thread at least this many hidden units."""
MATVEC_MAX_BATCH = 2
"""On at most this many batch rows a recurrent GEMM is a matrix-vector product,
bound by reading the weights: automatic unit threads there too, below
``LANE_MAX_MACS``, when every thread gets at least ``MATVEC_MIN_UNITS`` units
(each thread then reads its units' rows only, from its own core's cache).
Measured on a quiet machine (T=1000, float32, interleaved in one process,
medians): LSTM 256 at batch 1 1.45-1.57x faster than one thread
(bench_split, plain and 5%), at batch 2 1.5x, LSTM 512 at batch 1 1.7x plain
and 2.7x at 5%, a 2-layer LSTM 256 at batch 1 2.1x plain and 2.4x at 5%,
LSTM 128 at batch 1 even; but like every two-thread path it loses when other
work keeps both cores busy (give unit_threads=1 there)."""
MATVEC_MIN_UNITS = 128
"""The GRU takes the same rule as the LSTM. With AVX2 code each unit thread's
one-row products at batch 1 (its units' share of dL/dh_{t-1}) once went to
OpenBLAS's GEMM, and unit threads lost there: LSTM 256 at batch 1 on a real
AVX2 machine (Zen 3, 512 KiB of L2 per core) took 1.12x / 1.16x one thread's
time, GRU 256 at batch 1 with AVX2 code 1.2x, so the GRU had needed 384
units. Since the tiled GEMM takes every one-row product (``mm.product``),
measured on an AMD EPYC Zen 5 (AVX-512, 1 MiB of L2 per core;
bench_split.py, 7 interleaved rounds, one thread's time over the unit
threads', plain / 5%): LSTM 256 at batch 1 1.64x / 1.52x with AVX-512 code,
with AVX2 code 1.01x / 1.03x before that change and 1.51x / 1.36x after; GRU 256
at batch 1 1.34x / 1.09x (AVX-512) and 1.40x / 1.41x (AVX2); GRU 384 at
batch 1 1.41x / 1.81x and 1.52x / 1.44x."""
SMALL_GEMM_MACS = 1 << 20
"""A model run in one lane whose largest recurrent GEMM is below this many
multiply-adds runs its BLAS on one thread: at hidden 64 and batch 16 (0.26 M)
splitting each small GEMM over two BLAS threads costs more in
synchronisation than it saves. Lanes and unit threads always run BLAS on one
thread each."""
LANE_PYTHON_BYTES = 6144
"""Charged to the budget for every lane when the batch is split: its thread,
the Python objects of its buffers and their cache-line gaps (two lanes
measured 10.5-13.4 KB under tracemalloc beyond one lane's, whatever T and
the sizes)."""
UNIT_PYTHON_BYTES = 8192
"""Charged to the budget for every thread when the hidden units are split:
its thread and buffer objects (two threads measured 11.8 KB under
tracemalloc beyond one thread's run, three 16.9 KB, whatever T and the sizes)."""


UNITS_OVER_LANES_MAX_L2 = 3 << 19
"""Below this L2 per core (1.5 MiB), with 64-byte vectors, two unit threads replace the rule's two
lanes (:func:`units_over_lanes`). Measured with benchmarks/bench_split.py (interleaved in one
process, 7 rounds, reused memory, medians of time over the fastest path, plain / 5%): on an AMD
EPYC Zen 5 (AVX-512, 1 MiB of L2 per core) unit threads beat the lanes the rule took at every
size: LSTM 128 at batch 16 lanes 1.41x / 1.37x the unit threads' time, LSTM 256 at batch 64
1.49x / 1.67x and at 128 1.29x / 1.42x, GRU 256 at batch 64 1.48x / 1.61x, GRU 64 at batch 16
1.09x / 1.15x, LSTM 64 1.06x / 1.01x (a lane with AVX-512 code there takes nearly the time of
the whole batch in one sweep; the unit threads' halves of every product ran 1.4-1.7x faster
with AVX-512 than with AVX2 code, the lanes not). On the same host with AVX2 code
(NUMBA_CPU_NAME=haswell) the lanes won (unit threads 1.10-1.38x their time), as on an Intel
Xeon of the Sapphire Rapids class (AVX-512, 2 MiB of L2 per core: unit threads 1.07-1.62x the
lanes' time, bench_grid_spr_reuse.json) and a Zen 3 (AVX2, 512 KiB: LSTM 64 1.33x / 1.46x).
Between 1 and 2 MiB nothing was measured; 1.5 MiB is the middle. All of these ran with OpenBLAS
on its Haswell kernels (that machine's environment set OPENBLAS_CORETYPE=Haswell), which the lanes
call; with OpenBLAS's own choice there (SkylakeX) the lanes won instead (the unit threads
1.14-1.53x their time, LSTM 64 and 128, GRU 64 at batch 16, LSTM and GRU 256 at 64), so the rule
also asks for BLAS kernels narrower than the tiles."""


def recurrent_macs(model: Any, batch: int) -> int:
    """Multiply-adds of one step's recurrent GEMMs (every layer's)."""
    return model.recurrent_macs(batch)


def lane_accumulator_states(model: Any, batch: int) -> float:
    """A second lane's gradient accumulator (every parameter, the readout's
    and an embedding's included) in hidden states of the whole batch (batch
    x every layer's state width): what the split costs a budget, in
    checkpoints. LSTM 256 (input 64, output 16) at batch 64: 333,840 / 32,768 = 10.2."""
    params = sum(math.prod(s) for s in model.param_shapes.values())
    return params / (batch * sum(model.layers.state_widths()))


def _auto_lanes(model: Any, batch: int) -> int:
    macs = recurrent_macs(model, batch)
    if batch < 2 * MIN_LANE_BATCH or macs < MIN_LANE_MACS:
        return 1
    if macs < LANE_MAX_MACS or lane_accumulator_states(model, batch) <= LANE_MAX_ACCUMULATOR_STATES:
        return 2
    return 1


def lane_batches(model: Any, batch: int) -> tuple[int, ...]:
    """Batch rows per lane, in order (see ``Sequence.lane_batches``)."""
    if model.unit_threads is not None and model.unit_threads > 1:
        n = 1
    elif model.lanes is None:
        n = _automatic(model, batch)[0] if model.unit_threads is None else _auto_lanes(model, batch)
    else:
        n = min(model.lanes, batch)
    q, r = divmod(batch, n)
    return tuple(q + (1 if k < r else 0) for k in range(n))


def n_unit_threads(model: Any, batch: int) -> int:
    """How many threads split every step's hidden units (1: none; see ``Sequence.unit_split``).

    Automatic: two for a stack whose every layer has unit kernels and no
    embedding (``Sequence.unit_cells``), not split into lanes, whose largest
    recurrent GEMM has at least ``LANE_MAX_MACS`` multiply-adds and whose
    every layer has at least ``2 * MIN_UNIT_HIDDEN`` hidden units, or whose
    batch is at most ``MATVEC_MAX_BATCH`` rows and every layer at least
    ``2 * MATVEC_MIN_UNITS`` units; asked
    for, at most one per hidden unit of the narrowest layer."""
    cells = model.unit_cells
    if cells is None or len(lane_batches(model, batch)) > 1:
        return 1
    narrowest = min(c.hidden_size for c in cells)
    if model.unit_threads is None:
        return min(_automatic(model, batch)[1], narrowest) if model.lanes is None else _auto_units(model, batch)
    return min(model.unit_threads, narrowest)


def _auto_units(model: Any, batch: int) -> int:
    cells = model.unit_cells
    if cells is None:
        return 1
    narrowest = min(c.hidden_size for c in cells)
    big = model.recurrent_macs(batch, largest=True) >= LANE_MAX_MACS and narrowest >= 2 * MIN_UNIT_HIDDEN
    return 2 if big or _matvec_units(batch, cells) else 1


def rule_split(model: Any, batch: int) -> tuple[int, int]:
    """(lanes, unit threads) by the rule alone, for a model whose split is automatic."""
    lanes = _auto_lanes(model, batch)
    if lanes > 1 and units_over_lanes(model) is not None:
        return 1, 2
    return (lanes, 1) if lanes > 1 else (1, _auto_units(model, batch))


def l2_bytes() -> int | None:
    """This machine's L2 cache per core in bytes, as the rule reads it: ``MEMOPT_BPTT_L2_BYTES``
    when set (a positive integer: to state another machine's, or to pin the rule, as the tests
    do), else Linux's ``/sys/devices/system/cpu/cpu0/cache`` (the level-2 data or unified
    cache), else ``os.sysconf("SC_LEVEL2_CACHE_SIZE")``; None where none says."""
    env = os.environ.get("MEMOPT_BPTT_L2_BYTES", "").strip()
    if env:
        try:
            value = int(env)
        except ValueError:
            value = 0
        if value <= 0:
            raise ValueError(f"MEMOPT_BPTT_L2_BYTES={env!r}: give the L2 cache per core as a positive number "
                             "of bytes (e.g. 1048576), or unset it to read this machine's")
        return value
    return _read_l2()


@functools.lru_cache(maxsize=None)
def _read_l2() -> int | None:
    base = "/sys/devices/system/cpu/cpu0/cache"
    try:
        for index in sorted(os.listdir(base)):
            d = os.path.join(base, index)
            with open(os.path.join(d, "level")) as f:
                level = f.read().strip()
            with open(os.path.join(d, "type")) as f:
                kind = f.read().strip()
            if level == "2" and kind in ("Unified", "Data"):
                with open(os.path.join(d, "size")) as f:
                    size = f.read().strip().upper()
                scale = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}.get(size[-1:], 1)
                return int(size.rstrip("KMG")) * scale
    except (OSError, ValueError):
        pass
    try:
        value = os.sysconf("SC_LEVEL2_CACHE_SIZE")
        return int(value) if value and value > 0 else None
    except (ValueError, OSError, AttributeError):
        return None


def units_over_lanes(model: Any) -> str | None:
    """Why two unit threads replace the rule's two lanes on this machine, or None where lanes stay.

    Where the compiled code has 64-byte vectors (AVX-512), the L2 per core is below
    ``UNITS_OVER_LANES_MAX_L2`` (:func:`l2_bytes`) and the lanes' BLAS runs narrower kernels
    (``blas.blas_core``: OpenBLAS on its Haswell ones), for a model whose every layer has unit
    kernels and at least ``2 * MIN_UNIT_HIDDEN`` units. See ``UNITS_OVER_LANES_MAX_L2`` for the
    measurements."""
    cells = model.unit_cells
    if cells is None or min(c.hidden_size for c in cells) < 2 * MIN_UNIT_HIDDEN:
        return None
    from ._kernels import blas
    from ._kernels.mm import vector_bytes
    l2, core = l2_bytes(), blas.blas_core()
    if vector_bytes() != 64 or l2 is None or l2 >= UNITS_OVER_LANES_MAX_L2 or not core or not core[1] or core[1] >= 64:
        return None
    return (f"unit threads instead of lanes: 64-byte vectors, {l2 // 1024} KiB of L2 per core "
            f"< {UNITS_OVER_LANES_MAX_L2 // 1024} KiB and OpenBLAS's {core[0]} kernels ({core[1]}-byte vectors)")


def _automatic(model: Any, batch: int) -> tuple[int, int]:
    """(lanes, unit threads) of a model with both automatic: calibrated on this
    machine (memopt_bptt._calibrate) if its class was, else by the rule."""
    from ._calibrate import calibrated_split
    found = calibrated_split(model, batch)
    return found[:2] if found is not None else rule_split(model, batch)


def _matvec_units(batch: int, cells: Any) -> bool:
    """Whether a small batch's matrix-vector steps take two unit threads (``MATVEC_MAX_BATCH``,
    ``MATVEC_MIN_UNITS``)."""
    return batch <= MATVEC_MAX_BATCH and all(c.hidden_size >= 2 * MATVEC_MIN_UNITS for c in cells)


def unit_split(model: Any, batch: int, layer: int = -1) -> tuple[tuple[int, int], ...]:
    """Hidden units (u0, u1) of layer ``layer`` per unit thread (see ``Sequence.unit_split``)."""
    n = n_unit_threads(model, batch)
    H = model.cells[layer].hidden_size
    q, r = divmod(H, n)
    bounds = np.cumsum([0] + [q + (1 if k < r else 0) for k in range(n)])
    return tuple((int(bounds[k]), int(bounds[k + 1])) for k in range(n))


def unit_out_len(sizes: Any, u0: int, u1: int) -> int:
    """A unit thread's readout buffer: outputs, their transpose and its units' h_t transposed."""
    return 2 * sizes.output_len + sizes.batch * (u1 - u0)


def unit_exchange_widths(model: Any) -> list[tuple[int, int]]:
    """Per layer, (h, x): elements per batch row of one thread's partial dL/dh_{t-1}
    (the layer's hidden size) and partial dL/dx_t (the input size of a layer above
    the first, whose threads' parts add up to the layer below's dL/dh_t; else 0)."""
    cells = model.cells
    return [(c.hidden_size, cells[k - 1].hidden_size if k else 0) for k, c in enumerate(cells)]


def unit_exchange_len(model: Any, batch: int) -> int:
    """Elements of one thread's partial gradients of one step, every layer's (the
    exchange holds two, alternating by step parity, per thread)."""
    return batch * sum(h + x for h, x in unit_exchange_widths(model))


def split_sizes(model: Any, whole: Any, dtype: np.dtype) -> Any:
    """``whole`` (the unsplit Sizes of a batch) with what the model's split adds:
    for lanes, each lane's own buffers, a copy of its inputs' rows for
    deferred weight gradients, a gradient accumulator for every lane but the
    first and ``LANE_PYTHON_BYTES`` per lane; for unit threads, a scratch
    buffer for every thread but the first, a readout buffer per thread
    (:func:`unit_out_len`; one output buffer is charged already), two
    blocks of partial gradients per thread (:func:`unit_exchange_len`: each
    layer's hidden and, above the first, input size, by the batch) and
    ``UNIT_PYTHON_BYTES`` per thread; less the layers' input buffers, which
    unit threads do not use (they read the layer below's h_t in place)."""
    batch = whole.batch
    lanes = lane_batches(model, batch)
    if len(lanes) == 1:
        units = unit_split(model, batch)  # the top layer's: its units' h_t for the readout
        threads = len(units)
        if threads == 1:
            return whole
        outs = sum(unit_out_len(whole, u0, u1) for u0, u1 in units)
        row_weights = -(-batch * 8 // whole.itemsize)  # each thread's float64 row weights
        unused = layout(model.layers, batch, lane=False).xbuf_len
        extra = ((threads - 1) * (whole.work_len + row_weights) + outs - whole.output_len - unused
                 + threads * (2 * unit_exchange_len(model, batch) + -(-UNIT_PYTHON_BYTES // whole.itemsize)))
        return whole._replace(lane_extra_len=extra, unit_threads=threads)
    own = sum(model.rows_sizes(b, dtype, lane=True).working_bytes // whole.itemsize for b in lanes)
    params = sum(math.prod(s) for s in model.param_shapes.values())
    python = -(-LANE_PYTHON_BYTES // whole.itemsize)
    extra = own - whole.working_bytes // whole.itemsize + (len(lanes) - 1) * params + len(lanes) * python
    return whole._replace(lanes=lanes, lane_extra_len=extra)


def split_note(sizes: Any) -> str:
    """What the split adds to the working buffers and how to save it, for a
    budget error's message ("" when the work is not split)."""
    if sizes.unit_threads > 1:
        return (f"; {sizes.unit_threads} unit threads take {sizes.lane_extra_len * sizes.itemsize} bytes "
                "of the working buffers, Sequence(..., unit_threads=1) saves them")
    if sizes.lanes:
        return (f"; {len(sizes.lanes)} lanes take {sizes.lane_extra_len * sizes.itemsize} bytes of the "
                "working buffers, Sequence(..., lanes=1) saves them")
    return ""


def blas_threads_for(model: Any, sizes: Any) -> int | None:
    """BLAS threads for a sweep of these sizes: one per lane or unit thread,
    one for a small GEMM, else BLAS's own number (None)."""
    if sizes.lanes or sizes.unit_threads > 1:
        return 1
    # one GEMM is one layer's: its size, not the stack's, decides whether BLAS threads pay
    return 1 if model.recurrent_macs(sizes.batch, largest=True) < SMALL_GEMM_MACS else None


def _tiles() -> str:
    """The unit threads' GEMM for the CPU Numba compiles for (memopt_bptt/_kernels/mm.py)."""
    from ._kernels.mm import LONG_ROW_BYTES, tile_rows, tiled_max_lines, vector_bytes
    vbytes = vector_bytes()
    rows = tile_rows(vbytes)[0]
    wide = "any width" if tiled_max_lines(vbytes) == 0 else f"up to {tiled_max_lines(vbytes)} lines, BLAS beyond"
    long = f", {rows // 2} for rows of {LONG_ROW_BYTES} bytes or more" if rows >= 16 else ""
    return f"their products in the tiled GEMM for {vbytes}-byte vectors ({rows}-row tiles{long}, {wide})"


def explain(model: Any, sizes: Any) -> str:
    """Which path a sweep of these sizes takes (lanes, unit threads, BLAS threads) and why."""
    batch = sizes.batch
    macs = recurrent_macs(model, batch)
    calibrated = _calibrated_why(model, batch)
    if sizes.lanes:
        if calibrated:
            why = calibrated
        elif model.lanes is not None:
            why = "asked for"
        elif macs < LANE_MAX_MACS:
            why = f"recurrent GEMMs of {macs:,} multiply-adds, from {MIN_LANE_MACS:,} to below {LANE_MAX_MACS:,}"
        else:
            why = (f"recurrent GEMMs of {macs:,} >= {LANE_MAX_MACS:,} multiply-adds, and a second lane's gradient "
                   f"accumulator of {lane_accumulator_states(model, batch):.1f} <= {LANE_MAX_ACCUMULATOR_STATES} "
                   "hidden states of the batch")
        return f"{len(sizes.lanes)} lanes of {list(sizes.lanes)} batch rows, BLAS on 1 thread each ({why})"
    largest = model.recurrent_macs(batch, largest=True)
    # why not lanes, where the GEMMs were large enough for the wide-batch rule to be asked
    narrow = (f"no lanes: a second lane's gradient accumulator would be {lane_accumulator_states(model, batch):.1f} "
              f"> {LANE_MAX_ACCUMULATOR_STATES} hidden states of the batch"
              if model.lanes is None and macs >= LANE_MAX_MACS and batch >= 2 * MIN_LANE_BATCH else None)
    if sizes.unit_threads > 1:
        stacked = len(model.cells) > 1
        gemm = "largest layer's recurrent GEMM" if stacked else "recurrent GEMM"
        if calibrated:
            why = calibrated
        elif model.unit_threads is not None:
            why = "asked for"
        elif model.lanes is None and _auto_lanes(model, batch) > 1 and (instead := units_over_lanes(model)):
            why = instead
        elif largest >= LANE_MAX_MACS:
            why = f"{gemm} of {largest:,} >= {LANE_MAX_MACS:,} multiply-adds" + (f"; {narrow}" if narrow else "")
        else:
            why = (f"batch {batch} <= {MATVEC_MAX_BATCH}: matrix-vector steps bound by reading the weights, "
                   f"at least {MATVEC_MIN_UNITS} units per thread")
        what = "every layer's hidden units" if stacked else "the hidden units"
        return (f"{sizes.unit_threads} unit threads splitting {what}, BLAS on 1 thread each ({why}); "
                f"{_tiles()}")
    blas = blas_threads_for(model, sizes)
    why = [f"largest recurrent GEMM {largest:,} multiply-adds {'<' if blas == 1 else '>='} {SMALL_GEMM_MACS:,}"]
    if model.unit_cells is None and largest >= LANE_MAX_MACS:
        why.append("no unit threads: " + ("an embedding" if model.embedding else
                                          f"{model.kind!r} has a layer without unit kernels"))
    if narrow:
        why.append(narrow)
    if calibrated:
        why = why[:1] + [calibrated]
    threads = "1 thread" if blas == 1 else "its own thread count"
    return f"one sweep over the whole batch, BLAS on {threads} ({'; '.join(why)})"


def _calibrated_why(model: Any, batch: int) -> str | None:
    """Why a calibrated split was taken, or None where the rule or the user chose."""
    if model.lanes is not None or model.unit_threads is not None:
        return None
    from ._calibrate import calibrated_split, calibration_path
    found = calibrated_split(model, batch)
    if found is None:
        return None
    e = found[2]
    over = e.get("over_rule", {}).get(e.get("chosen"), float("nan"))
    return (f"calibrated on this machine by mb.calibrate: {e.get('chosen')} took {over:.2f}x the time of the "
            f"rule's {e.get('rule')} at T={e.get('T')}, batch {e.get('batch')}; kept in {calibration_path()}, "
            "MEMOPT_BPTT_CALIBRATION=off ignores it")
