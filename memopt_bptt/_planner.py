"""The planner: the fewest forward steps that reverse a T-step chain in a budget.

Gruslys, Munos, Danihelka, Lanctot & Graves (2016), "Memory-Efficient
Backpropagation Through Time" (arXiv 1606.03401), section 3: BPTT-HSM keeps
hidden states, BPTT-ISM internal states, BPTT-MSM chooses per split.

Model and conventions
---------------------
Step t costs one forward; its backward reads the internal state I_t (which
also rebuilds s_t exactly, see the cell contract). Memory is counted in
integer *quanta*: a hidden state takes ``hq``, an internal state ``kq``
(alpha = kq / hq; a model's sizes are divided by their gcd, an abstract alpha
is a fraction p/q with q <= 64). The executor has working buffers outside the
quanta — the current state, one internal state, gradients and the cell's
scratch — whose bytes are subtracted from a byte budget first; the initial
state is checkpoint slot 0 (``hq`` quanta), so ``slots=m`` in the abstract
model counts it, as Gruslys et al.'s m does.

R(t, m) is the least number of forwards that reverses a segment of t steps
whose start state is available (in a slot), with m free quanta:

    R(0, m) = 0
    R(t, m) = min( t + R(t-1, m),                                   # W
                   min_{1<=y<t} y + R(t-y, m-hq) + R(y, m),          # H, m >= hq
                   min_{1<=y<t} y + R(t-y, m-kq) + R(y-1, m) )       # I, m >= kq

W replays the whole segment and reverses its last step from the working
buffer. H runs y steps, keeps s_y as a hidden checkpoint, reverses the right
part with hq quanta fewer, frees the slot, then the left part. I runs y steps
keeping I_y (kq quanta): the right part starts from s_y rebuilt from I_y, step
y is then reversed with no replay, and the left part has y-1 steps. HSM uses
W and H only; ISM W and I; MSM all three, so MSM <= min(HSM, ISM). Checkpoints
are allocated as a stack (each split's slot is freed before its left part),
so a pool of ``hq + m`` quanta never fragments.

HSM's R equals the Revolve optimum: R(t, (m-1)*hq) = t + numforw(t, m)
(Griewank & Walther 2000); the ``revolve`` policy uses that closed form and a
binary search over the convex split cost, with no table. ``full`` keeps every
internal state (T forwards); ``sqrt`` (Chen et al. 2016) keeps a hidden state
every ceil(sqrt(T)) steps and replays each segment once keeping its internal
states.

Speed: ``revolve`` (closed form) scales to T = 10^6. ISM counts memory in
whole internal slots and finds each split by binary search (its cost is
convex in t), O(T n log T) for n slots. MSM's cost is *not* convex in t, so
no binary search is exact. ``msm`` (kq >= hq) first computes, in O(M),
tau(m): the largest t up to which R(t, m) equals the lower bound
max(t, 2t - floor(m'/kq) - 1) (m' = m, plus hq for an owned start). Both
are proven: the bound by counting the steps forwarded only once, the
equality by an induction over m with an explicit split (``_lb_taus``,
``_lb_choice``, the proof in ``_msm_fast_table``'s docstring). Where
T <= tau(M) the schedule is emitted from those splits alone, O(T + M) with
no table, and its forward count is checked to equal the bound (so it is
optimal). For the LSTM (hq=2, kq=7) tau(m) is about m^2/90 for large m, so
this covers 5% and 20% of plain BPTT's memory at T = 10^4 and 1% to 20% at
T = 10^5. Otherwise ``_msm_fast_table`` runs the same recurrence row by row
in m (kq + 1 rows of costs kept, plus a 2-byte choice per cell while
T < 2^15): cells with t <= tau(m) in closed form, the rest with a first
probe at the previous split and split scans that end on proven bounds of
the cost's slopes (see its docstring); the two start kinds of a row are a
two-iteration parallel loop, which plan_quanta runs on one thread (two were
measured slower). It returns the naive table's
costs exactly (every cell checked for T <= 300 and several (hq, kq) in
tests/test_planner_fast.py); the scans are long (hundreds of evaluations
per cell) in rows with few internal slots, and no better worst case than
O(T^2 m) is proven. That R exceeds the bound wherever t > tau(m) is
verified (every cell for T <= 300, 12 (hq, kq)), not proven, and not
needed for exactness. When the table's cells exceed ``MSM_EXACT_MAX_WORK``
``msm`` returns the better of ``ism`` and ``revolve`` with a warning, which
is optimal among single-kind schedules but not proven MSM-optimal. With
kq < hq (alpha < 1) rows would depend on larger m, so ``msm`` runs the
naive full-scan table instead, under the same limit on its inner-loop
iterations. Measured (LSTM hq=2, kq=7, one thread, ``benchmarks/bench_planner.py
--policies msm``, budgets as fractions of plain BPTT's memory): T = 10^4 takes
1.6 s of CPU at 1% (the table; 3.3 s wall while another job shared the core)
and 1.4 to 2.3 ms at 5% and 20% (closed form); T = 10^5 takes 11 to 23 ms at
1%, 5% and 20% (closed form); T = 10^3 about 9 ms at 1%, 0.15 ms at 5%, 20%.
Where the table is needed its time grows about as T^2 at a fixed small budget
(669 free quanta: 1.6 s at T = 10^4, 5.3 s at 2*10^4, 19 s at 4*10^4, CPU).
"""

from __future__ import annotations

import math
import warnings
from fractions import Fraction
from typing import Any

import numpy as np
import numba
from numba import njit, prange

from ._budget import MemoryBudgetError, parse_budget
from ._schedule import Schedule, plain_pool_quanta

__all__ = ["plan", "beta", "numforw", "hsm_cost", "POLICIES"]

POLICIES = ("msm", "hsm", "ism", "revolve", "sqrt", "full")
_MODE_TABLE, _MODE_REVOLVE, _MODE_FULL, _MODE_SQRT, _MODE_ISM = 0, 1, 2, 3, 4


# ---- closed forms (Revolve) -------------------------------------------------
def beta(s: int, r: int) -> int:
    """binomial(s + r, s): steps reversible with s snapshots and r repetitions."""
    return math.comb(s + r, s)


def numforw(t: int, m: int) -> int:
    """Revolve's extra forward steps to reverse t steps with m snapshots (m >= 1)."""
    return int(_numforw(t, m))


def hsm_cost(t: int, m: int) -> int:
    """Gruslys et al.'s C(t, m): forwards of optimal BPTT-HSM with m slots
    (m counts the slot holding the start state). C(10, 3) == 25."""
    if t < 0 or m < 1:
        raise ValueError(f"hsm_cost: need t >= 0 and m >= 1, got t={t}, m={m}")
    return int(_hsm_cost(t, m))


@njit(cache=True)
def _numforw(t, m):
    if t <= 1:
        return 0
    # r = least integer with beta(m, r) >= t; beta(m, r) = beta(m, r-1) * (m + r) / r
    r = 0
    b = 1  # beta(m, r)
    b_prev_up = 1  # beta(m + 1, r - 1) once r >= 1
    while b < t:
        r += 1
        # beta(m+1, r-1) = C(m + r, r - 1): update from C(m + r - 1, r - 2)
        if r == 1:
            b_prev_up = 1
        else:
            b_prev_up = b_prev_up * (m + r) // (r - 1)
        b = b * (m + r) // r
    return r * t - b_prev_up


@njit(cache=True)
def _hsm_cost(t, m):
    if t <= 0:
        return 0
    return t + _numforw(t, m)


@njit(cache=True)
def _hsm_split(t, m):
    """Best split y for HSM (m slots incl. the start): 0 means W (no free slot)."""
    if t <= 1 or m <= 1:
        return 0
    lo = 1
    hi = t - 1
    # f(y) = y + C(t-y, m-1) + C(y, m) is convex: find the first y with f(y+1) >= f(y).
    while lo < hi:
        mid = (lo + hi) // 2
        f0 = mid + _hsm_cost(t - mid, m - 1) + _hsm_cost(mid, m)
        f1 = mid + 1 + _hsm_cost(t - mid - 1, m - 1) + _hsm_cost(mid + 1, m)
        if f1 >= f0:
            hi = mid
        else:
            lo = mid + 1
    if lo == t - 1:
        return 0  # y = t-1 is the W option: replay all, reverse from the working buffer
    return lo


# ---- the dynamic programme ---------------------------------------------------
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


# ---- the exact MSM table, pruned ------------------------------------------------
_LB_FAIL = -(1 << 40)


@njit(cache=True)
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

@njit(cache=True)
def _stack_push(stk, stkv, ssz, s, idx, val):
    """Append D[idx] = val to stack s: the suffix minima of D[1..idx], values rising to the top."""
    n = ssz[s]
    while n > 0 and stkv[s, n - 1] >= val:
        n -= 1
    stk[s, n] = idx
    stkv[s, n] = val
    ssz[s] = n + 1


@njit(cache=True)
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


@njit(cache=True)
def _stack_catch_up(cost, stk, stkv, ssz, upto, s, own, row, last):
    """Push D[upto[s]+1 .. last] of cost[own, row] onto stack s."""
    u = upto[s] + 1
    while u <= last:
        _stack_push(stk, stkv, ssz, s, u, cost[own, row, u] - cost[own, row, u - 1])
        u += 1
    if last > upto[s]:
        upto[s] = last


@njit(cache=True)
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
def _msm_fast_table(T, M, hq, kq, R, choice, tau):
    """The MSM table of _dp_table (use_h = use_i = True), same costs, in
    O((M+1) (T+1)) cells with short split scans and R rows of costs kept.

    Rows are computed in order of m (row m reads rows m-hq, m-kq and
    m-kq+hq, so needs kq >= hq; R = kq + 1 keeps a ring, R = M + 1 the whole
    table). Writes choice[own, m, t] (0 = W, y = H at y, -y = I at y) for
    t > tau[own, m] and returns (cost [own, R, T+1] as kept, split
    evaluations). Cells with t <= tau[own, m] (from _lb_taus, or zeros) cost
    their lower bound, proven below; their splits come from _lb_choice. The
    two start kinds of a row read only lower rows when kq > hq and could run in
    parallel; plan_quanta sets one Numba thread (two were measured slower).

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
    cost = np.zeros((2, R, T + 1), np.int64)
    pmx = np.zeros((2, R, T + 1), np.int64)
    # per start kind, stacks 0 = (own 1, m-hq) [A of H], 1 = (own 0, m-kq) [A of I], 2 = (own, m) [B]
    stk = np.zeros((2, 3, T + 1), np.int64)
    stkv = np.zeros((2, 3, T + 1), np.int64)
    ssz = np.zeros((2, 3), np.int64)
    upto = np.zeros((2, 3), np.int64)
    evals = 0
    for m in range(M + 1):
        if kq > hq:
            # the two start kinds of a row read only lower rows: one thread each
            evals += _msm_row_pair(T, m, hq, kq, R, cost, pmx, choice, tau, stk, stkv, ssz, upto)
        else:
            for own in range(2):
                evals += _msm_row(T, m, own, hq, kq, R, cost, pmx, choice, tau, stk[own], stkv[own], ssz[own],
                                  upto[own])
    return cost, evals


@njit(cache=True, parallel=True)
def _msm_row_pair(T, m, hq, kq, R, cost, pmx, choice, tau, stk, stkv, ssz, upto):
    """_msm_row for both start kinds of row m, in parallel (needs kq > hq)."""
    evals = 0
    for own in prange(2):
        evals += _msm_row(T, m, own, hq, kq, R, cost, pmx, choice, tau, stk[own], stkv[own], ssz[own], upto[own])
    return evals


@njit(cache=True)
def _msm_row(T, m, own, hq, kq, R, cost, pmx, choice, tau, stk, stkv, ssz, upto):
    """Row m of start kind own of _msm_fast_table; returns its split evaluations."""
    r = m % R
    rh = (m - hq) % R
    rk = (m - kq) % R
    ssz[:] = 0
    upto[:] = 0
    g_h = 1
    g_i = 2
    evals = 0
    cost[own, r, 0] = 0
    pmx[own, r, 0] = 0
    choice[own, m, 0] = 0
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
                    _stack_catch_up(cost, stk, stkv, ssz, upto, 0, 1, rh, t - 1)
                    _stack_catch_up(cost, stk, stkv, ssz, upto, 2, own, r, t - 1)
                    c, y, n = _msm_scan(cost, pmx, stk, stkv, ssz, 0, 1, rh, 2, own, r, t, 0, 1, g_h, lb)
                    evals += n
                    g_h = y
                    if c < best:
                        best = c
                        ch = y
                if do_i and best > lb:
                    _stack_catch_up(cost, stk, stkv, ssz, upto, 1, 0, rk, t - 1)
                    _stack_catch_up(cost, stk, stkv, ssz, upto, 2, own, r, t - 1)
                    c, y, n = _msm_scan(cost, pmx, stk, stkv, ssz, 1, 0, rk, 2, own, r, t, 1, 2, g_i, lb)
                    evals += n
                    g_i = y
                    if c < best:
                        best = c
                        ch = -y
        cost[own, r, t] = best
        pmx[own, r, t] = max(pmx[own, r, t - 1], best - cost[own, r, t - 1])
        choice[own, m, t] = ch
    return evals


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


@njit(cache=True)
def _grow(a):
    b = np.empty((a.shape[0] * 2, a.shape[1]), a.dtype)
    b[: a.shape[0]] = a
    return b


@njit(cache=True)
def _emit(T, M, hq, kq, mode, choice, sqrt_k, tau):
    """Walk the chosen splits and write the actions as (op, step, slot) rows.

    In table mode a cell with t <= tau[own, m] takes _lb_choice's split
    instead of the table's (tau of shape (2, 1) with zeros: never).
    Returns (codes, forwards, pool_quanta); forwards = -1 if _lb_choice
    found no split (not expected: see _lb_taus). Op codes follow _actions.OPS:
    0 takeshot, 1 restore, 2 advance, 3 keep, 4 restore_internal, 5 reverse.
    """
    out = np.empty((max(16, 4 * T), 3), np.int64)
    n = 0
    # task rows: kind (0 segment, 1 reverse), a, t, m, src (internal*2^40 + slot), top, owns start
    tasks = np.empty((max(16, 2 * T), 7), np.int64)
    sp = 0
    out[0, 0] = 0
    out[0, 1] = 0
    out[0, 2] = 0
    n = 1
    cur = 0
    forwards = 0
    peak = hq
    tasks[0, 0] = 0
    tasks[0, 1] = 0
    tasks[0, 2] = T
    tasks[0, 3] = M
    tasks[0, 4] = 0
    tasks[0, 5] = hq
    tasks[0, 6] = 0
    sp = 1
    cap = choice.shape[2] - 1
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
        if kind == 1:
            out[n, 0] = 5
            out[n, 1] = a
            out[n, 2] = top
            n += 1
            continue
        if t == 0:
            continue
        if cur != a:
            src_internal = src >> 40
            out[n, 0] = 4 if src_internal else 1
            out[n, 1] = a
            out[n, 2] = src & ((1 << 40) - 1)
            n += 1
            cur = a
        if mode == 0:
            if m < tau.shape[1] and t <= tau[own, m]:
                ch = _lb_choice(t, m, own, hq, kq, tau)
                if ch == _LB_FAIL:
                    return out[:0].copy(), -1, peak
            else:
                ch = choice[own, t, min(m, cap)]
        elif mode == 4:
            ch = choice[0, t, min(m // kq, cap)]
        elif mode == 1:
            ch = _hsm_split(t, m // hq + 1)
        elif mode == 2:
            ch = -1 if t > 1 else 0
        else:
            if t > sqrt_k:
                ch = sqrt_k
            else:
                ch = -1 if t > 1 else 0
        if ch == 0:
            if t > 1:
                out[n, 0] = 2
                out[n, 1] = a + t - 1
                out[n, 2] = -1
                n += 1
            out[n, 0] = 3
            out[n, 1] = a + t
            out[n, 2] = -1
            out[n + 1, 0] = 5
            out[n + 1, 1] = a + t
            out[n + 1, 2] = -1
            n += 2
            forwards += t
            cur = a + t
            if t > 1:
                tasks[sp, 0] = 0
                tasks[sp, 1] = a
                tasks[sp, 2] = t - 1
                tasks[sp, 3] = m
                tasks[sp, 4] = src
                tasks[sp, 5] = top
                tasks[sp, 6] = own
                sp += 1
        elif ch > 0:
            y = ch
            out[n, 0] = 2
            out[n, 1] = a + y
            out[n, 2] = -1
            out[n + 1, 0] = 0
            out[n + 1, 1] = a + y
            out[n + 1, 2] = top
            n += 2
            forwards += y
            cur = a + y
            peak = max(peak, top + hq)
            # left part (done last), then the right part (done first)
            tasks[sp, 0] = 0
            tasks[sp, 1] = a
            tasks[sp, 2] = y
            tasks[sp, 3] = m
            tasks[sp, 4] = src
            tasks[sp, 5] = top
            tasks[sp, 6] = own
            tasks[sp + 1, 0] = 0
            tasks[sp + 1, 1] = a + y
            tasks[sp + 1, 2] = t - y
            tasks[sp + 1, 3] = m - hq
            tasks[sp + 1, 4] = top
            tasks[sp + 1, 5] = top + hq
            tasks[sp + 1, 6] = 1 if mode == 0 else 0
            sp += 2
        else:
            y = -ch
            slot = top
            m_right = m - kq
            if y == 1 and own == 1 and mode == 0:
                # the owned start slot (just below top) is not needed again: reuse it
                slot = top - hq
                m_right = min(m - kq + hq, M)
            if y > 1:
                out[n, 0] = 2
                out[n, 1] = a + y - 1
                out[n, 2] = -1
                n += 1
            out[n, 0] = 3
            out[n, 1] = a + y
            out[n, 2] = slot
            n += 1
            forwards += y
            cur = a + y
            peak = max(peak, slot + kq)
            tasks[sp, 0] = 0
            tasks[sp, 1] = a
            tasks[sp, 2] = y - 1
            tasks[sp, 3] = m
            tasks[sp, 4] = src
            tasks[sp, 5] = top
            tasks[sp, 6] = own
            tasks[sp + 1, 0] = 1
            tasks[sp + 1, 1] = a + y
            tasks[sp + 1, 2] = 0
            tasks[sp + 1, 3] = 0
            tasks[sp + 1, 4] = 0
            tasks[sp + 1, 5] = slot
            tasks[sp + 1, 6] = 0
            tasks[sp + 2, 0] = 0
            tasks[sp + 2, 1] = a + y
            tasks[sp + 2, 2] = t - y
            tasks[sp + 2, 3] = m_right
            tasks[sp + 2, 4] = (1 << 40) + slot
            tasks[sp + 2, 5] = slot + kq
            tasks[sp + 2, 6] = 0
            sp += 3
    return out[:n].copy(), forwards, peak


# ---- public entry point ------------------------------------------------------
def _quanta_from_alpha(alpha: float) -> tuple[int, int]:
    frac = Fraction(alpha).limit_denominator(64)
    if frac <= 0:
        raise ValueError(f"plan: alpha={alpha!r} must be positive (internal/hidden state size ratio)")
    if abs(float(frac) - alpha) > 1e-9 * max(1.0, alpha):
        raise ValueError(f"plan: alpha={alpha!r} is not a ratio p/q with q <= 64; round it (e.g. alpha={float(frac):g})")
    return frac.denominator, frac.numerator


def _sqrt_segment(T: int) -> int:
    """Segment length of the sqrt policy: ceil(sqrt(T))."""
    return max(1, math.isqrt(T - 1) + 1) if T > 1 else 1


def _fixed_pool(T: int, hq: int, kq: int, policy: str, sqrt_k: int) -> int:
    """Pool quanta (initial state included) the fixed policies need."""
    if policy == "full":
        return plain_pool_quanta(T, hq, kq)
    n_seg = -(-T // sqrt_k)
    # while segment j (0-based) is reversed, j hidden checkpoints and its internal states are alive
    return hq + max(j * hq + (min(sqrt_k, T - j * sqrt_k) - 1) * kq for j in range(n_seg))


MSM_EXACT_MAX_WORK = 1e9
"""msm_table_work above which msm falls back to the better of ism and revolve
(with a warning)."""
HSM_TABLE_MAX_WORK = 4e8
"""Inner-loop iterations (about T^2 m) of the HSM table above which ``hsm``
uses the closed form instead (the same cost, proven equal on T <= 500, m <= 20)."""


def msm_table_work(T: int, M: int, hq: int, kq: int) -> float:
    """Work of the exact MSM table for T steps and M free quanta: 0 when the
    optimum is its lower bound (T <= tau, no table), else cells of the pruned
    table (2 start kinds x (M'+1) x (T+1), M' = M capped at plain BPTT's need)
    when kq >= hq, else inner-loop iterations of the full scan (both start
    kinds, both options)."""
    cap = min(M, max(T - 1, 0) * kq)
    if kq >= hq:
        if T <= _lb_taus(cap, hq, kq, T)[0, cap]:
            return 0.0
        return 2.0 * (cap + 1) * (T + 1)
    t = np.arange(1, T + 1, dtype=np.float64)
    m_used = np.minimum(float(M), (t - 1) * kq)
    return float(np.sum(4.0 * t * m_used))


def plan_quanta(T: int, free_quanta: int, hq: int, kq: int, policy: str = "msm") -> tuple[np.ndarray, int, int]:
    """Plan in quanta: (codes, forward_steps, pool_quanta). ``free_quanta`` excludes
    the initial state's slot. Raises ValueError if the policy cannot fit."""
    if policy not in POLICIES:
        raise ValueError(f"plan: policy={policy!r} is not known; use one of {', '.join(POLICIES)}")
    M = max(int(free_quanta), 0)
    sqrt_k = _sqrt_segment(T)
    dummy = np.zeros((2, 1, 1), np.int32)
    no_tau = np.zeros((2, 1), np.int64)
    if policy in ("full", "sqrt"):
        need = _fixed_pool(T, hq, kq, policy, sqrt_k)
        if need > hq + M:
            raise _TooSmall(need)
        mode = _MODE_FULL if policy == "full" else _MODE_SQRT
        return _emit(T, M, hq, kq, mode, dummy, sqrt_k, no_tau)
    if policy == "revolve":
        return _emit(T, M, hq, kq, _MODE_REVOLVE, dummy, sqrt_k, no_tau)
    if policy == "ism":
        n_slots = min(M // kq, max(T - 1, 0))
        _, choice = _ism_table(T, n_slots)
        return _emit(T, n_slots * kq, hq, kq, _MODE_ISM, choice.reshape((1,) + choice.shape), sqrt_k, no_tau)
    if policy == "hsm" and float(T) * T * min(M, max(T - 1, 0) * hq) > HSM_TABLE_MAX_WORK:
        # the table equals the closed form (tests prove it for T <= 500, m <= 20): use it
        return _emit(T, M, hq, kq, _MODE_REVOLVE, dummy, sqrt_k, no_tau)
    work = msm_table_work(T, M, hq, kq)
    if policy == "msm" and kq >= hq and work <= MSM_EXACT_MAX_WORK:
        # memory above what keeping every internal state needs changes nothing
        cap = min(M, max(T - 1, 0) * kq)
        tau = _lb_taus(cap, hq, kq, T)
        if T <= tau[0, cap]:
            # R(T, cap) is its lower bound, reached by _lb_choice's splits alone: no table
            res = _emit(T, cap, hq, kq, _MODE_TABLE, dummy, sqrt_k, tau)
            if res[1] == _lb_of(T, cap, 0, hq, kq):
                return res
            work = 2.0 * (cap + 1) * (T + 1)  # not expected (see _lb_taus): the table decides
    if policy == "msm" and work > MSM_EXACT_MAX_WORK:
        ism = plan_quanta(T, M, hq, kq, "ism")
        rev = plan_quanta(T, M, hq, kq, "revolve")
        best = ism if ism[1] <= rev[1] else rev
        warnings.warn(
            f"plan: the exact MSM table for T={T} and {M} quanta (~{work:.2g} steps) "
            f"is too slow; using the better of policy='ism' and 'revolve' ({best[1]} forward steps), which is "
            "optimal among hidden-only and internal-only schedules but not proven MSM-optimal",
            UserWarning, stacklevel=3)
        return best
    use_h = policy in ("msm", "hsm")
    use_i = policy in ("msm", "ism")
    # memory above what keeping every internal state needs changes nothing
    cap = min(M, max(T - 1, 0) * kq if use_i else max(T - 1, 0) * hq)
    if policy == "msm" and kq >= hq:
        choice = np.zeros((2, cap + 1, T + 1), np.int16 if T < 2 ** 15 else np.int32)
        # One thread: the two-kind parallel rows measured slower on two (T=10^4 at 1%:
        # 2.45 s against 1.65 s), their synchronisation per row outweighing the split.
        threads = numba.get_num_threads()
        numba.set_num_threads(1)
        try:
            _msm_fast_table(T, cap, hq, kq, kq + 1, choice, tau)
        finally:
            numba.set_num_threads(threads)
        return _emit(T, cap, hq, kq, _MODE_TABLE, choice.transpose(0, 2, 1), sqrt_k, tau)
    _, choice = _dp_table(T, cap, hq, kq, use_h, use_i)
    return _emit(T, cap, hq, kq, _MODE_TABLE, choice, sqrt_k, no_tau)


class _TooSmall(Exception):
    def __init__(self, need: int):
        self.need = need


def _check_T(T: Any) -> int:
    if isinstance(T, bool) or not isinstance(T, (int, np.integer)):
        raise TypeError(f"plan: T={T!r} must be a positive int (the number of time steps)")
    if T < 1:
        raise ValueError(f"plan: T={T} must be a positive int (the number of time steps)")
    return int(T)


def plan(T: int, *, budget: Any = None, model: Any = None, batch: int | None = None, dtype: Any = None,
         policy: str = "msm", slots: float | None = None, alpha: float | None = None,
         backward_forward_ratio: float | None = None, byte_cost: float | None = None) -> Schedule:
    """The schedule with the fewest forward steps that fits the budget.

    With ``model`` (a :class:`memopt_bptt.Sequence`) and ``batch``, ``budget``
    is bytes (int), a string like "64MiB", or a fraction in (0, 1] of what
    plain BPTT (policy "full") keeps for this T, batch and dtype; working
    buffers and the initial state are paid from it first. Without a model,
    plan in the abstract model: ``slots`` memory units of one hidden state
    (counting the initial state's slot) and ``alpha`` = internal/hidden size;
    ``budget`` may then only be a fraction.

    Example::

        s = mb.plan(1000, budget="4MiB", model=model, batch=16)
        s = mb.plan(10, slots=3, policy="hsm")        # s.forward_steps == 25
        s = mb.plan(100, slots=10, alpha=3.5)         # MSM in the abstract model

    ``backward_forward_ratio`` (b/f) and ``byte_cost`` (with a model: what
    one byte of checkpoint pool costs in forward steps) only feed the
    predicted :attr:`Schedule.time_ratio`; :func:`memopt_bptt.measure_step_times`
    and :func:`memopt_bptt.measure_byte_cost` measure them. The schedule
    itself minimises forward steps.

    Raises :class:`memopt_bptt.MemoryBudgetError` (a ValueError) when the
    budget is below the least that works; its message gives that least.
    """
    T = _check_T(T)
    if policy not in POLICIES:
        raise ValueError(f"plan: policy={policy!r} is not known; use one of {', '.join(POLICIES)}")
    if model is not None:
        return _plan_for_model(T, budget=budget, model=model, batch=batch, dtype=dtype, policy=policy,
                               slots=slots, alpha=alpha, rho=backward_forward_ratio, byte_cost=byte_cost)
    if byte_cost is not None:
        raise ValueError("plan: byte_cost= prices checkpoint bytes, which needs model= and batch=")
    if batch is not None or dtype is not None:
        raise ValueError("plan: batch= and dtype= size a model's states; pass model= too, or plan with slots=/alpha=")
    if alpha is None:
        if policy in ("hsm", "revolve"):
            alpha = 1.0
        else:
            raise ValueError(f"plan: policy={policy!r} in the abstract model needs alpha= "
                             "(internal-state size over hidden-state size, e.g. alpha=3.5 for an LSTM)")
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not math.isfinite(alpha) or alpha <= 0:
        raise ValueError(f"plan: alpha={alpha!r} must be a positive number")
    hq, kq = _quanta_from_alpha(float(alpha))
    full_units = 1 + (T - 1) * float(alpha)
    if slots is not None and budget is not None:
        raise ValueError("plan: give either slots= (units) or budget= (a fraction), not both")
    if slots is None and budget is None:
        raise ValueError("plan: give a memory budget: slots= (hidden-state units) or budget= with model=")
    if budget is not None:
        kind, value = parse_budget(budget)
        if kind == "bytes":
            raise ValueError(f"plan: budget={budget!r} is in bytes, which needs model= and batch=; "
                             "in the abstract model use slots= or a fraction")
        units = value * full_units
    else:
        if isinstance(slots, bool) or not isinstance(slots, (int, float)) or not math.isfinite(slots):
            raise TypeError(f"plan: slots={slots!r} must be a number of hidden-state units")
        units = float(slots)
    least_units = 1.0
    if policy in ("full", "sqrt"):
        least_units = _fixed_pool(T, hq, kq, policy, _sqrt_segment(T)) / hq
    if units < least_units:
        raise MemoryBudgetError(
            f"plan: a budget of {units:g} units is below the least that works for T={T} with "
            f"policy={policy!r}: {least_units:g} units", least_units=least_units)
    free = int(math.floor((units - 1) * hq + 1e-9))
    try:
        codes, forwards, pool = plan_quanta(T, free, hq, kq, policy)
    except _TooSmall as exc:
        least = exc.need / hq
        raise MemoryBudgetError(f"plan: policy={policy!r} needs at least {least:g} units for T={T}; "
                                f"the budget gives {units:g}", least_units=least) from None
    rho = 2.0 if backward_forward_ratio is None else float(backward_forward_ratio)
    return Schedule(T=T, policy=policy, codes=codes, hidden_quanta=hq, internal_quanta=kq, pool_quanta=pool,
                    forward_steps=int(forwards), backward_forward_ratio=rho, budget_units=units,
                    description=f"abstract model, alpha={alpha:g}")


def _plan_for_model(T, *, budget, model, batch, dtype, policy, slots, alpha, rho, byte_cost) -> Schedule:
    if slots is not None or alpha is not None:
        raise ValueError("plan: slots= and alpha= are for the abstract model; with model= give budget=")
    if batch is None:
        raise ValueError("plan: model= needs batch= (the batch size) to size its states in bytes")
    if budget is None:
        raise ValueError("plan: give budget= (bytes, e.g. '64MiB', or a fraction of plain BPTT's memory)")
    sizes = model.sizes(batch=batch, dtype=dtype)
    _, hq, kq = sizes.quantum
    quantum_bytes = sizes.quantum_bytes
    working = sizes.working_bytes
    full_bytes = working + plain_pool_quanta(T, hq, kq) * quantum_bytes
    kind, value = parse_budget(budget)
    budget_bytes = int(math.floor(value * full_bytes)) if kind == "fraction" else int(value)
    least_any = working + hq * quantum_bytes
    if policy in ("full", "sqrt"):
        least_any = working + _fixed_pool(T, hq, kq, policy, _sqrt_segment(T)) * quantum_bytes
    if budget_bytes < least_any:
        lanes_note = "" if not sizes.lanes else (
            f"; {len(sizes.lanes)} lanes take {sizes.lane_extra_len * sizes.itemsize} bytes of the "
            "working buffers, Sequence(..., lanes=1) saves them")
        if sizes.unit_threads > 1:
            lanes_note = (f"; {sizes.unit_threads} unit threads take {sizes.lane_extra_len * sizes.itemsize} bytes "
                          "of the working buffers, Sequence(..., unit_threads=1) saves them")
        raise MemoryBudgetError(
            f"plan: budget={budget!r} ({budget_bytes} bytes) is below the least that works for T={T}, "
            f"batch={sizes.batch}: {least_any} bytes (working buffers {working} + initial state "
            f"{hq * quantum_bytes}){lanes_note}", least_bytes=least_any)
    free = (budget_bytes - working - hq * quantum_bytes) // quantum_bytes
    try:
        codes, forwards, pool = plan_quanta(T, free, hq, kq, policy)
    except _TooSmall as exc:
        least = working + exc.need * quantum_bytes
        raise MemoryBudgetError(
            f"plan: budget={budget!r} ({budget_bytes} bytes) is below what policy={policy!r} needs for T={T}: "
            f"{least} bytes", least_bytes=least) from None
    rho = model.cell.backward_forward_ratio if rho is None else float(rho)
    return Schedule(T=T, policy=policy, codes=codes, hidden_quanta=hq, internal_quanta=kq, pool_quanta=pool,
                    forward_steps=int(forwards), backward_forward_ratio=rho, quantum_bytes=quantum_bytes,
                    working_bytes=working, budget_bytes=budget_bytes,
                    description=f"{model.describe()}, batch={sizes.batch}, {sizes.dtype}",
                    byte_cost=0.0 if byte_cost is None else byte_cost)
