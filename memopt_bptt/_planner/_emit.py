"""Emitting a schedule: walk the chosen splits and write the action codes.

``_emit`` is the one walk every policy shares; ``mode`` says where a
segment's split comes from (a table, Revolve's closed form, or the fixed
splits of ``full`` and ``sqrt``). Segments are worked off a stack of tasks,
right part first, so checkpoints are allocated and freed as a stack: a pool
of ``hq + M`` quanta never fragments. The rows are ``(op, step, slot)`` with
``op`` an :class:`memopt_bptt._actions.Op`.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from .._jit import inner
from .._actions import WORKING, Op
from ._closed import _hsm_split
from ._runs import _run_choice
from ._tables import _LB_FAIL, _lb_choice

# where a segment's split comes from
_MODE_TABLE, _MODE_REVOLVE, _MODE_FULL, _MODE_SQRT, _MODE_ISM = 0, 1, 2, 3, 4
MAX_ACTIONS_PER_STEP = 6
"""Rows per step, at most: every step is reversed once, in at most four rows
(restore, advance, keep into the working buffer, reverse; or advance, keep
into the pool, restore_internal, reverse), and every position is split at
most once, by two rows (advance, takeshot): fewer than 6T + 1 with the
initial takeshot. Measured: at most 4.9994 T (Revolve with a slot per step,
T = 5000)."""
EMIT_BYTES_PER_STEP = 456
"""Upper bound of ``_emit``'s memory per step: its row buffer starts at 4T
rows and doubles at most once (to 8T >= 6T + 6; both alive while it grows:
12T x 24 bytes), beside the task stack (2T x 7 int64, 112 bytes per step);
the final copy of at most 6T rows (144 bytes per step) is made while the 8T
buffer and the stack are alive: 192 + 112 + 144 = 448 bytes per step,
rounded up. Measured at T = 10^6: 194 to 255 MB of peak RSS (untouched
pages of the buffers cost nothing)."""


def emit_bytes(T: int) -> int:
    """Bytes ``_emit`` may hold at its peak for T steps (see EMIT_BYTES_PER_STEP)."""
    return EMIT_BYTES_PER_STEP * max(int(T), 16) + 4096


# task kinds: a segment to reverse, or one step to reverse from a kept internal state
_TASK_SEGMENT, _TASK_REVERSE = 0, 1
# a task's src: the slot its start state is in, plus _INTERNAL if that is a kept internal state
_INTERNAL = 1 << 40


@inner(cache=True)
def _grow(a):
    b = np.empty((a.shape[0] * 2, a.shape[1]), a.dtype)
    for i in range(a.shape[0]):  # a loop: a slice assignment compiles a formatted error for seconds
        for j in range(a.shape[1]):
            b[i, j] = a[i, j]
    return b


# _put and _push have one signature each: called with literal constants, a
# jitted callee would otherwise compile once per combination of them.
@inner("int64(int64[:, ::1], int64, int64, int64, int64)", cache=True)
def _put(out, n, op, step, slot):
    """Write action row n; returns n + 1."""
    out[n, 0] = op
    out[n, 1] = step
    out[n, 2] = slot
    return n + 1


@inner("int64(int64[:, ::1], int64, int64, int64, int64, int64, int64, int64, int64)", cache=True)
def _push(tasks, sp, kind, a, t, m, src, top, own):
    """Push a task: reverse t steps from position a with m free quanta, the start
    state at src, the pool's top at top, own = 1 if the segment owns its start."""
    tasks[sp, 0] = kind
    tasks[sp, 1] = a
    tasks[sp, 2] = t
    tasks[sp, 3] = m
    tasks[sp, 4] = src
    tasks[sp, 5] = top
    tasks[sp, 6] = own
    return sp + 1


@inner(cache=True)
def _split(mode, t, m, own, hq, kq, off, starts, vals, cap, sqrt_k, tau):
    """The split of a segment (0 = W, y > 0 = H at y, -y = I at y), or _LB_FAIL.

    In table mode a cell with t <= tau[own, m] takes _lb_choice's split
    instead of the table's (tau of shape (2, 1) with zeros: never); the
    table's splits are runs (``_runs``).
    """
    if mode == _MODE_TABLE:
        if m < tau.shape[1] and t <= tau[own, m]:
            return _lb_choice(t, m, own, hq, kq, tau)
        return _run_choice(off, starts, vals, 2 * min(m, cap) + own, t)
    if mode == _MODE_ISM:
        return _run_choice(off, starts, vals, 2 * min(m // kq, cap), t)
    if mode == _MODE_REVOLVE:
        return _hsm_split(t, m // hq + 1)
    if mode == _MODE_SQRT and t > sqrt_k:
        return sqrt_k
    return -1 if t > 1 else 0  # keep every internal state: full, and sqrt within a segment


@njit(cache=True)
def _emit(T, M, hq, kq, mode, off, starts, vals, sqrt_k, tau):
    """Walk the chosen splits and write the actions as (op, step, slot) rows.

    A table's splits come as runs (off, starts, vals; ``_runs``), rows
    2 m + own for m <= cap; other modes pass empty ones.

    Returns (codes, forwards, pool_quanta); forwards = -1 if _lb_choice
    found no split (not expected: see _lb_taus).
    """
    out = np.empty((max(16, 4 * T), 3), np.int64)
    tasks = np.empty((max(16, 2 * T), 7), np.int64)
    n = _put(out, 0, Op.TAKESHOT, 0, 0)
    cur = 0
    forwards = 0
    peak = hq
    sp = _push(tasks, 0, _TASK_SEGMENT, 0, T, M, 0, hq, 0)
    cap = (off.shape[0] - 1) // 2 - 1  # rows 2 m + own, m <= cap
    while sp > 0:
        sp -= 1
        kind = tasks[sp, 0]
        a = tasks[sp, 1]
        t = tasks[sp, 2]
        m = tasks[sp, 3]
        src = tasks[sp, 4]
        top = tasks[sp, 5]
        own = tasks[sp, 6]
        if n + 6 >= out.shape[0]:
            out = _grow(out)
        if sp + 4 >= tasks.shape[0]:
            tasks = _grow(tasks)
        if kind == _TASK_REVERSE:
            n = _put(out, n, Op.REVERSE, a, top)
            continue
        if t == 0:
            continue
        if cur != a:
            restore = Op.RESTORE_INTERNAL if src >= _INTERNAL else Op.RESTORE
            n = _put(out, n, restore, a, src % _INTERNAL)
            cur = a
        ch = _split(mode, t, m, own, hq, kq, off, starts, vals, cap, sqrt_k, tau)
        if ch == _LB_FAIL:
            return out[:0].copy(), -1, peak
        if ch == 0:
            # W: replay to the last step, run it into the working buffer and reverse it
            if t > 1:
                n = _put(out, n, Op.ADVANCE, a + t - 1, WORKING)
            n = _put(out, n, Op.KEEP, a + t, WORKING)
            n = _put(out, n, Op.REVERSE, a + t, WORKING)
            forwards += t
            cur = a + t
            if t > 1:
                sp = _push(tasks, sp, _TASK_SEGMENT, a, t - 1, m, src, top, own)
        elif ch > 0:
            # H at y: checkpoint s_y on top of the pool
            y = ch
            n = _put(out, n, Op.ADVANCE, a + y, WORKING)
            n = _put(out, n, Op.TAKESHOT, a + y, top)
            forwards += y
            cur = a + y
            peak = max(peak, top + hq)
            # left part (done last), then the right part (done first), which owns s_y in the table
            sp = _push(tasks, sp, _TASK_SEGMENT, a, y, m, src, top, own)
            sp = _push(tasks, sp, _TASK_SEGMENT, a + y, t - y, m - hq, top, top + hq,
                       1 if mode == _MODE_TABLE else 0)
        else:
            # I at y: keep I_y; the right part starts from s_y rebuilt from it
            y = -ch
            slot = top
            m_right = m - kq
            if y == 1 and own == 1 and mode == _MODE_TABLE:
                # the owned start slot (just below top) is not needed again: reuse it
                slot = top - hq
                m_right = min(m - kq + hq, M)
            if y > 1:
                n = _put(out, n, Op.ADVANCE, a + y - 1, WORKING)
            n = _put(out, n, Op.KEEP, a + y, slot)
            forwards += y
            cur = a + y
            peak = max(peak, slot + kq)
            # left part, then step y, then the right part (done first)
            sp = _push(tasks, sp, _TASK_SEGMENT, a, y - 1, m, src, top, own)
            sp = _push(tasks, sp, _TASK_REVERSE, a + y, 0, 0, 0, slot, 0)
            sp = _push(tasks, sp, _TASK_SEGMENT, a + y, t - y, m_right, _INTERNAL + slot, slot + kq, 0)
    return out[:n].copy(), forwards, peak
