"""The exact MSM table, pruned: R(t, m) row by row in m with short split scans.

``_msm_fast_table`` returns the costs of ``_dp_table(..., use_h=True,
use_i=True)`` exactly (its docstring holds the proofs), in O((M+1) (T+1))
cells: cells up to ``tau`` (``_tables._lb_taus``) cost their lower bound,
the rest probe the previous split first and scan splits (``_msm_scan``)
only until proven bounds on the cost's slopes stop them. ``_msm_row`` is one
row (``_msm_row_pair`` both start kinds of it); the ``_stack_*`` helpers keep the suffix minima of a row's increments
that the scans' stopping rule reads.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from .._jit import inner
from ._runs import _keep_runs, _runs_buffers


@inner(cache=True)
def _stack_push(stk, stkv, ssz, s, idx, val):
    """Append D[idx] = val to stack s: the suffix minima of D[1..idx], values rising to the top."""
    n = ssz[s]
    while n > 0 and stkv[s, n - 1] >= val:
        n -= 1
    stk[s, n] = idx
    stkv[s, n] = val
    ssz[s] = n + 1


@inner(cache=True)
def _stack_first(stk, ssz, s, a):
    """Position of the first entry of stack s with index >= a (ssz[s] if none)."""
    lo = 0
    hi = ssz[s]
    while lo < hi:
        mid = (lo + hi) // 2
        if stk[s, mid] >= a:
            hi = mid
        else:
            lo = mid + 1
    return lo


@inner(cache=True)
def _stack_catch_up(cost, stk, stkv, ssz, upto, s, own, row, last):
    """Push D[upto[s]+1 .. last] of cost[own, row] onto stack s."""
    u = upto[s] + 1
    while u <= last:
        _stack_push(stk, stkv, ssz, s, u, cost[own, row, u] - cost[own, row, u - 1])
        u += 1
    if last > upto[s]:
        upto[s] = last


@inner(cache=True)
def _msm_scan(cost, pmx, stk, stkv, ssz, sa, oa, ra, sb, ob, rb, t, off, ylo, guess, lb):
    """min over ylo <= y <= t-1 of y + A(t-y) + B(y-off), A = cost[oa, ra], B = cost[ob, rb].

    Exact: starts at ``guess`` and stops in each direction only when a proven
    bound shows that no further y is strictly cheaper, or when the cost
    reaches ``lb``, a lower bound of the cell (see _msm_fast_table). The
    bounds are checked after blocks of evaluations that double up to 16 (an
    extra evaluation never changes the minimum; fewer checks are cheaper on
    the long flat stretches of the low rows).
    Returns (cost, its y, evaluations)."""
    yhi = t - 1
    g = min(max(guess, ylo), yhi)
    best = 1 << 60
    arg = g
    n = 0
    y = g
    step = 1
    # the suffix-minimum queries below move forward one index per check: walk the stacks
    pb = _stack_first(stk, ssz, sb, y - off + 1)
    while True:
        ye = min(y + step - 1, yhi)
        bm = best
        for z in range(y, ye + 1):
            bm = min(bm, z + cost[oa, ra, t - z] + cost[ob, rb, z - off])
        if bm < best:
            for z in range(y, ye + 1):
                if z + cost[oa, ra, t - z] + cost[ob, rb, z - off] == bm:
                    arg = z
                    break
            best = bm
        n += ye - y + 1
        if best <= lb:
            return best, arg, n
        y = ye
        if y >= yhi:
            break
        # every y' > y costs >= t + B(y'-off) >= t + B(y-off)
        if t + cost[ob, rb, y - off] >= best:
            break
        # cost(y') - cost(y) >= (y'-y) (1 + min D_B[y-off+1..t-1] - max D_A[1..t-y]) for y' > y
        while pb < ssz[sb] and stk[sb, pb] < y - off + 1:
            pb += 1
        if pb >= ssz[sb] or 1 + stkv[sb, pb] >= pmx[oa, ra, t - y]:
            break
        y += 1
        step = min(2 * step, 16)
    y = g
    step = 1
    pa = _stack_first(stk, ssz, sa, t - y + 1)
    while y > ylo:
        # cost(y') - cost(y) >= (y-y') (min D_A[t-y+1..t-1] - 1 - max D_B[1..y-off]) for y' < y
        while pa < ssz[sa] and stk[sa, pa] < t - y + 1:
            pa += 1
        if pa >= ssz[sa] or stkv[sa, pa] >= 1 + pmx[ob, rb, y - off]:
            break
        ys = max(y - step, ylo)
        bm = best
        for z in range(ys, y):
            bm = min(bm, z + cost[oa, ra, t - z] + cost[ob, rb, z - off])
        if bm < best:
            for z in range(ys, y):
                if z + cost[oa, ra, t - z] + cost[ob, rb, z - off] == bm:
                    arg = z
                    break
            best = bm
        n += y - ys
        y = ys
        if best <= lb:
            break
        step = min(2 * step, 16)
    return best, arg, n


@njit(cache=True)
def _msm_fast_table(T, M, hq, kq, R, choice, tau, max_runs):
    """The MSM table of _dp_table (use_h = use_i = True), same costs, in
    O((M+1) (T+1)) cells with short split scans and R rows of costs kept.

    Rows are computed in order of m (row m reads rows m-hq, m-kq and
    m-kq+hq, so needs kq >= hq; R = kq + 1 keeps a ring, R = M + 1 the whole
    table). Writes choice[own, m % rows, t] (0 = W, y = H at y, -y = I at
    y) for t > tau[own, m], where choice has every row (tests) or one (the
    planner), and keeps each row as runs (``_runs``) of at most max_runs.
    Returns (cost [own, R, T+1] as kept, split evaluations, runs kept, or -1
    once they would exceed max_runs, and the runs: off, starts, vals).
    Cells with t <= tau[own, m] (from _lb_taus, or zeros) cost their lower
    bound, proven below; their splits come from _lb_choice. The
    two start kinds of a row read only lower rows when kq > hq: then
    _msm_fast_table_pair computes them as one parallel loop (_msm_row_pair),
    which plan_quanta runs on one thread for large tables (PAIR_MIN_CELLS).

    Three proven facts make it exact without scanning every split:

    * a lower bound: R(t, m) >= max(t, 2t - floor((m + own*hq) / kq) - 1).
      A step forwarded only once must keep its internal state from that
      forward to its backward; for two such steps i < j, the forward of j
      comes after the forward of i and its backward before, so all of them
      are held at once (the last may sit in the working buffer): at most
      floor(m'/kq) + 1 of them with m' quanta (an owned start's hq quanta can
      be reused), every other step costs >= 2. A cell whose cost reaches the
      bound needs no more search (most cells at larger m).
    * where the bound is reached: for t <= tau[own, m] (_lb_taus), by
      induction over m. With n = floor((m + own*hq)/kq), n0 = floor(m/kq)
      and every part below within its own tau (so at its bound), a
      non-saturated cell (t >= n0 + 2) reaches max(t, 2t - n - 1) by
      (1) I at y = 1 for t <= tau[0, m - kq + own*hq] + 1 (the rest has
      n - 1 internal slots: 1 + max(t-1, 2t - n - 2)); when n == n0,
      (2) H at y = n0 + 1 (t >= 2 n0 + 2) or y = t - n0 - 1, for
      t <= tau[1, m - hq] + n0 + 1: the left part keeps all its internal
      states (cost y), the right part has n0 slots: 2y + max(t-y, 2(t-y) -
      n0 - 1) = 2t - n0 - 1; (3) I at y = n0 + 2 or y = t - n0, for
      t <= tau[0, m - kq] + n0 + 2, likewise; (4) W at t = 2 when n = 0;
      and cells with t <= n + 1 (saturated, or own = 1 with t = n0 + 2 via
      (1)). tau is the largest such t. Verified, not proven (and not needed
      for exactness): R exceeds the bound for every t > tau (every cell for
      T <= 300 and 12 (hq, kq) pairs, tests/test_planner_fast.py).
    * bounds on how far to scan. Each split option minimises
      f(y) = y + A(t-y) + B(y-off) over y, with A the right part's row
      (complete) and B the left part's (t' < t done). With D(u) = R(u) -
      R(u-1) >= 1 (R rises by at least one per step: an induction over the
      recurrence), for y' > y

          f(y') - f(y) >= (y'-y) (1 + min D_B[y-off+1 .. t-1] - max D_A[1 .. t-y])

      and for y' < y

          f(y') - f(y) >= (y-y') (min D_A[t-y+1 .. t-1] - 1 - max D_B[1 .. y-off]),

      so a scan from a guess (the previous t's split) stops in a direction as
      soon as that factor is >= 0; upwards also when t + B(y-off) >= best
      (f(y') >= y' + (t-y') + B(y'-off)).

    The minimum found is the true one for any guess; the guess only sets how
    far the scans go. max D over a prefix is kept per row (pmx); min D over
    [a, t-1] comes from a stack of suffix minima per row in use, filled on
    first need. Ties may resolve to a different split than _dp_table's; the
    cost is the same (tests/test_planner_fast.py checks every cell).
    """
    cost, pmx, stk, stkv, ssz, upto = _msm_buffers(T, R)
    off, starts, vals = _runs_buffers(M + 1, choice)
    n = np.int64(0)  # never a literal (see _msm_row)
    evals = 0
    for m in range(M + 1):
        for own in range(2):  # row m of own = 1 reads row m of own = 0
            evals += _msm_row(T, m, own, hq, kq, R, cost, pmx, choice, tau, stk[own], stkv[own], ssz[own],
                              upto[own])
        n, starts, vals = _keep_runs(choice, m, tau, T, off, starts, vals, n, max_runs)
        if n < 0:
            break
    return cost, evals, n, off, starts[:max(n, 0)], vals[:max(n, 0)]


@inner(cache=True)
def _msm_buffers(T, R):
    """cost and pmx [own, R, T+1]; per start kind, stacks 0 = (own 1, m-hq) [A of H],
    1 = (own 0, m-kq) [A of I], 2 = (own, m) [B], their values, sizes and fill marks."""
    return (np.zeros((2, R, T + 1), np.int64), np.zeros((2, R, T + 1), np.int64),
            np.zeros((2, 3, T + 1), np.int64), np.zeros((2, 3, T + 1), np.int64),
            np.zeros((2, 3), np.int64), np.zeros((2, 3), np.int64))


PAIR_MIN_CELLS = 1 << 22
"""plan_quanta runs _msm_fast_table_pair (both start kinds of a row as one
parallel loop) for tables of at least this many cells (rows x (T + 1)), else
_msm_fast_table: compiling the parallel loop takes about 10 s the first time
on a machine (Numba's parfors), which a table of this size repays (T = 10^4 at
1%: 3.1 s against 4.5 s serial) and a small one never does."""


@njit(cache=True)
def _msm_fast_table_pair(T, M, hq, kq, R, choice, tau, max_runs):
    """_msm_fast_table with both start kinds of each row in _msm_row_pair (needs kq > hq); the same returns."""
    cost, pmx, stk, stkv, ssz, upto = _msm_buffers(T, R)
    off, starts, vals = _runs_buffers(M + 1, choice)
    n = np.int64(0)  # never a literal (see _msm_row)
    evals = 0
    for m in range(M + 1):
        evals += _msm_row_pair(T, m, hq, kq, R, cost, pmx, choice, tau, stk, stkv, ssz, upto)
        n, starts, vals = _keep_runs(choice, m, tau, T, off, starts, vals, n, max_runs)
        if n < 0:
            break
    return cost, evals, n, off, starts[:max(n, 0)], vals[:max(n, 0)]


@njit(cache=True, parallel=True)
def _msm_row_pair(T, m, hq, kq, R, cost, pmx, choice, tau, stk, stkv, ssz, upto):
    """_msm_row for both start kinds of row m, as a parallel loop (needs kq > hq).

    Kept for speed on one thread, not for the threads: the same loop as a plain
    range ran 1.45x slower (T = 10^4, hq=2, kq=7, 669 quanta), probably because
    Numba compiles a parallel loop's body assuming its arrays do not overlap.
    On two threads the rows' synchronisation costs more than the split saves.
    """
    evals = 0
    for own in prange(2):
        evals += _msm_row(T, m, own, hq, kq, R, cost, pmx, choice, tau, stk[own], stkv[own], ssz[own], upto[own])
    return evals


@inner(cache=True)
def _msm_row(T, m, own, hq, kq, R, cost, pmx, choice, tau, stk, stkv, ssz, upto):
    """Row m of start kind own of _msm_fast_table; returns its split evaluations."""
    r = m % R
    rh = (m - hq) % R
    rk = (m - kq) % R
    ssz[:] = 0
    upto[:] = 0
    # The helpers' integer arguments are int64 values, never literals: Numba
    # compiles a jitted callee once per combination of literal arguments
    # (_msm_scan took 1.6 s a compile, four times over on a fresh machine).
    ZERO, ONE, TWO = np.int64(0), np.int64(1), np.int64(2)
    g_h = ONE
    g_i = TWO
    evals = 0
    cost[own, r, 0] = 0
    pmx[own, r, 0] = 0
    rc = m % choice.shape[1]  # choice keeps every row, or one row that _keep_runs reads after each m
    choice[own, rc, 0] = 0
    n_own = (m + own * hq) // kq
    m1 = m - kq + (hq if own == 1 else 0)
    r1 = m1 % R
    do_h = m >= hq
    tau_m = tau[own, m]
    for t in range(1, T + 1):
        if t <= tau_m:
            # proven: R = its lower bound here (the split comes from _lb_choice)
            best = max(t, 2 * t - n_own - 1)
            cost[own, r, t] = best
            pmx[own, r, t] = max(pmx[own, r, t - 1], best - cost[own, r, t - 1])
            continue
        if m >= (t - 1) * kq:
            best = t
            ch = -1 if t > 1 else 0
        else:
            lb = 2 * t - n_own - 1
            best = t + cost[own, r, t - 1]
            ch = 0
            if m1 >= 0:
                c = 1 + cost[0, r1, t - 1]
                if c < best:
                    best = c
                    ch = -1
            do_i = m >= kq and t > 2
            # probe the previous splits first: most cells reach the lower bound there
            if best > lb and do_h:
                y = min(g_h, t - 1)
                c = y + cost[1, rh, t - y] + cost[own, r, y]
                evals += 1
                if c < best:
                    best = c
                    ch = y
            if best > lb and do_i:
                y = min(max(g_i, 2), t - 1)
                c = y + cost[0, rk, t - y] + cost[own, r, y - 1]
                evals += 1
                if c < best:
                    best = c
                    ch = -y
            if best > lb:
                if do_h:
                    _stack_catch_up(cost, stk, stkv, ssz, upto, ZERO, ONE, rh, t - 1)
                    _stack_catch_up(cost, stk, stkv, ssz, upto, TWO, own, r, t - 1)
                    c, y, n = _msm_scan(cost, pmx, stk, stkv, ssz, ZERO, ONE, rh, TWO, own, r, t, ZERO, ONE, g_h, lb)
                    evals += n
                    g_h = y
                    if c < best:
                        best = c
                        ch = y
                if do_i and best > lb:
                    _stack_catch_up(cost, stk, stkv, ssz, upto, ONE, ZERO, rk, t - 1)
                    _stack_catch_up(cost, stk, stkv, ssz, upto, TWO, own, r, t - 1)
                    c, y, n = _msm_scan(cost, pmx, stk, stkv, ssz, ONE, ZERO, rk, TWO, own, r, t, ONE, TWO, g_i, lb)
                    evals += n
                    g_i = y
                    if c < best:
                        best = c
                        ch = -y
        cost[own, r, t] = best
        pmx[own, r, t] = max(pmx[own, r, t - 1], best - cost[own, r, t - 1])
        choice[own, rc, t] = ch
    return evals
