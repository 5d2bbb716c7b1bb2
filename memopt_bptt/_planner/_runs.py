"""The splits as runs: a table's choices kept in O(changes), not O(T M).

Along a row of the MSM table (fixed start kind and free quanta m, t rising)
the chosen split changes rarely: the scans start from the previous t's split
and it mostly stays. So each row is kept as runs, ``(start t, split)`` pairs
in rising t, and a cell's split is the value of the last run starting at or
before its t (a binary search). Measured for the LSTM (hq=2, kq=7): T = 20 000
with 470 free quanta has 18.0 million cells past tau in 824 000 runs (22
cells a run), so the choices take 3.3 MB instead of 37.7 MB.

Layout: row ``2 m + own`` holds runs ``off[2 m + own] .. off[2 m + own + 1]``
of ``starts`` and ``vals`` (the choices' dtype: int16 while T < 2^15), for
the cells past ``tau[own, m]`` (the ones below take _lb_choice's split). The
dense tables (ISM's, the full scan's) are turned into the same layout so the
emitter compiles once per dtype.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from .._jit import inner

RUNS_START = 1 << 14
"""Runs the buffers start with; they grow by half as they fill."""


@inner(cache=True)
def _row_runs(choice, own, r, lo, T, starts, vals, n, limit):
    """Runs of choice[own, r, lo..T] from position n, at most up to limit; returns n, or -1 past it."""
    prev = choice[own, r, lo] + 1  # differs from the first value
    for t in range(lo, T + 1):
        v = choice[own, r, t]
        if v != prev:
            if n >= limit:
                return -1
            starts[n] = t
            vals[n] = v
            n += 1
            prev = v
    return n


@inner(cache=True)
def _keep_runs(choice, m, tau, T, off, starts, vals, n, max_runs):
    """Append row m of ``choice`` (``choice[own, m % rows, t]``, both start kinds,
    the cells past tau) as runs from position n; returns (n, starts, vals), with
    n = -1 when more than ``max_runs`` runs would be needed (nothing more is kept).
    The buffers grow by half (or by a row's worst case) before a row, never inside it."""
    r = m % choice.shape[1]
    for own in range(2):
        idx = 2 * m + own
        if own < choice.shape[0]:
            lo = 1
            if m < tau.shape[1]:
                lo = max(1, tau[own, m] + 1)
            if lo <= T:
                worst = n + T + 1 - lo
                if worst > starts.shape[0] and starts.shape[0] < max_runs:
                    size = min(max(worst, n + n // 2, RUNS_START), max_runs)
                    grown_s = np.empty(size, starts.dtype)
                    grown_v = np.empty(size, vals.dtype)
                    for k in range(n):  # a loop: a slice assignment compiles a formatted error for seconds
                        grown_s[k] = starts[k]
                        grown_v[k] = vals[k]
                    starts = grown_s
                    vals = grown_v
                n = _row_runs(choice, own, r, lo, T, starts, vals, n, min(starts.shape[0], max_runs))
                if n < 0:
                    return -1, starts, vals
        off[idx + 1] = n
    return n, starts, vals


@inner(cache=True)
def _runs_buffers(rows, choice):
    """Row offsets for ``rows`` values of m (2 rows + 1: both start kinds) and the first buffers
    of starts and values, in ``choice``'s dtype."""
    return (np.zeros(2 * rows + 1, np.int64), np.empty(RUNS_START, choice.dtype),
            np.empty(RUNS_START, choice.dtype))


@njit(cache=True)
def _runs_of(choice, T):
    """A dense table ``choice[own, m, t]`` (one or two start kinds) as runs:
    (off, starts, vals), every cell from t = 1 kept."""
    rows = choice.shape[1]
    off, starts, vals = _runs_buffers(rows, choice)
    n = np.int64(0)  # never a literal: a jitted callee is compiled once per literal argument
    no_tau = np.zeros((2, 0), np.int64)
    for m in range(rows):
        n, starts, vals = _keep_runs(choice, m, no_tau, T, off, starts, vals, n, (T + 1) * 2 * rows)
    return off, starts[:n].copy(), vals[:n].copy()


@inner(cache=True)
def _run_choice(off, starts, vals, row, t):
    """The split at t of row ``row`` = 2 m + own: the value of its last run starting at or before t."""
    lo = off[row]
    hi = off[row + 1]
    # invariant: starts[lo] <= t (a row's first run starts at its first kept cell), answer in [lo, hi)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if starts[mid] <= t:
            lo = mid
        else:
            hi = mid
    return vals[lo]
