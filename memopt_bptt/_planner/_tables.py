"""The tables of R(t, m): the full O(T^2 m) scan, ISM's, and where R is its lower bound.

``_dp_table`` is the recurrence of the package docstring as written, every
split scanned (the reference the faster paths are checked against, and the
table of ``hsm`` and of ``msm`` when kq < hq). ``_ism_table`` counts memory in
whole internal slots and finds each split by binary search. ``_lb_of``,
``_lb_taus`` and ``_lb_choice`` are the proven lower bound of R, how far in t
it is reached, and a split that reaches it (the proof is in
:func:`memopt_bptt._planner._msm._msm_fast_table`'s docstring).
"""

from __future__ import annotations

import numpy as np
from numba import njit


@njit(cache=True)
def _dp_table(T, M, hq, kq, use_h, use_i):
    """Costs and choices for both start kinds: index 0 = pinned start, 1 = owned.

    choice: 0 = W, y > 0 = H at y, -y = I at y. A segment *owns* its start
    when the start is a hidden checkpoint only it uses (the right part of an
    H split): keeping I at y = 1 then frees that slot at once, so the right
    part gets hq quanta more. Every other start is *pinned*.
    """
    cost = np.zeros((2, M + 1, T + 1), np.int64)  # [own, m, t]: the y-loops read along t
    choice = np.zeros((2, M + 1, T + 1), np.int32)
    for t in range(1, T + 1):
        full_m = (t - 1) * kq
        for own in range(2):
            for m in range(M + 1):
                if use_i and m >= full_m:
                    # room for every internal state: no replay at all (I at y = 1 down the chain)
                    cost[own, m, t] = t
                    choice[own, m, t] = -1 if t > 1 else 0
                    continue
                best = t + cost[own, m, t - 1]
                ch = 0
                if use_h and m >= hq:
                    mh = m - hq
                    for y in range(1, t):
                        c = y + cost[1, mh, t - y] + cost[own, m, y]
                        if c < best:
                            best = c
                            ch = y
                if use_i and t > 1:
                    # y = 1: the start is not needed afterwards; an owned start is freed
                    m1 = m - kq + (hq if own == 1 else 0)
                    if m1 >= 0:
                        c = 1 + cost[0, min(m1, M), t - 1]
                        if c < best:
                            best = c
                            ch = -1
                    if m >= kq:
                        mi = m - kq
                        for y in range(2, t):
                            c = y + cost[0, mi, t - y] + cost[own, m, y - 1]
                            if c < best:
                                best = c
                                ch = -y
                cost[own, m, t] = best
                choice[own, m, t] = ch
    # hand back [own, t, m] views, the layout _emit and the tests index
    return cost.transpose(0, 2, 1), choice.transpose(0, 2, 1)


@njit(cache=True)
def _ism_table(T, N):
    """ISM costs and choices indexed by free internal slots n (0..N).

    Same recurrence as _dp_table restricted to W and I, but memory is counted
    in whole internal slots and the split y is found by binary search: the
    cost y + R(t-y, n-1) + R(y-1, n) is convex in y because R(., n) is convex
    in t (checked against the full scan in tests/test_planner_fast.py). The
    W option is the y = t end of the same range.
    """
    cost = np.zeros((T + 1, N + 1), np.int64)
    choice = np.zeros((T + 1, N + 1), np.int32)
    for t in range(1, T + 1):
        for n in range(N + 1):
            if n == 0 or t == 1:
                cost[t, n] = t + cost[t - 1, n]
                continue
            if n >= t - 1:
                cost[t, n] = t
                choice[t, n] = -1
                continue
            lo = 1
            hi = t
            while lo < hi:
                mid = (lo + hi) // 2
                f0 = mid + cost[t - mid, n - 1] + cost[mid - 1, n]
                f1 = mid + 1 + cost[t - mid - 1, n - 1] + cost[mid, n]
                if f1 >= f0:
                    hi = mid
                else:
                    lo = mid + 1
            cost[t, n] = lo + cost[t - lo, n - 1] + cost[lo - 1, n]
            choice[t, n] = 0 if lo == t else -lo
    return cost, choice


# ---- where R equals its lower bound -------------------------------------------
_LB_FAIL = -(1 << 40)


@njit("int64(int64, int64, int64, int64, int64)", cache=True)  # one signature, whatever literals it is called with
def _lb_of(t, m, own, hq, kq):
    """The proven lower bound of R(t, m) for start kind own: max(t, 2t - floor((m + own*hq)/kq) - 1)."""
    return max(t, 2 * t - (m + own * hq) // kq - 1)


@njit(cache=True)
def _lb_taus(M, hq, kq, T):
    """tau[own, m] (capped at T): R(t, m) equals its lower bound for every t <= tau.

    Proven by induction over m (needs kq >= hq), with the split _lb_choice
    returns; see _msm_fast_table's docstring for the four ways to reach it.
    """
    tau = np.zeros((2, M + 1), np.int64)
    for m in range(M + 1):
        n0 = m // kq
        for own in range(2):
            n = (m + own * hq) // kq
            best = max(n + 1, 2)
            m1 = m - kq + own * hq
            if m1 >= 0:
                best = max(best, tau[0, m1] + 1)
            if n == n0:
                if m >= hq:
                    best = max(best, tau[1, m - hq] + n0 + 1)
                if m >= kq:
                    best = max(best, tau[0, m - kq] + n0 + 2)
            tau[own, m] = min(best, T)
    return tau


@njit(cache=True)
def _lb_choice(t, m, own, hq, kq, tau):
    """A split (0 = W, y = H, -y = I) whose cost is _lb_of(t, m, own), for t <= tau[own, m];
    _LB_FAIL if none of the proven candidates applies (never, if the proof is right)."""
    if t <= 1:
        return 0
    if m >= (t - 1) * kq:
        return -1  # every internal state fits: the same choice as the table's
    target = _lb_of(t, m, own, hq, kq)
    m1 = m - kq + own * hq
    if m1 >= 0 and t - 1 <= tau[0, m1] and 1 + _lb_of(t - 1, m1, 0, hq, kq) == target:
        return -1
    n0 = m // kq
    if m >= hq:
        # H at y <= n0 + 1: the left part keeps all its internal states (costs y)
        tr = tau[1, m - hq]
        for k in range(2):
            y = n0 + 1 if k == 0 else t - n0 - 1
            if 1 <= y <= min(t - 1, n0 + 1) and t - y <= tr and \
                    2 * y + _lb_of(t - y, m - hq, 1, hq, kq) == target:
                return y
    if m >= kq:
        # I at y <= n0 + 2: the left part (y - 1 steps) keeps all its internal states
        tr = tau[0, m - kq]
        for k in range(2):
            y = n0 + 2 if k == 0 else t - n0
            if 2 <= y <= min(t - 1, n0 + 2) and t - y <= tr and \
                    2 * y - 1 + _lb_of(t - y, m - kq, 0, hq, kq) == target:
                return -y
    if t == 2 and target == 3:
        return 0
    return _LB_FAIL
