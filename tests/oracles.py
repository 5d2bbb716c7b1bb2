"""Independent, pure-Python oracles for memory-constrained reversal schedules.

Nothing here imports ``memopt_bptt`` or numba: the functions are meant to be
ground truth for testing the real planners.

The model
---------
A chain of ``T`` steps ``s_t = f(s_{t-1}, x_t)``, ``t = 1..T``.  The backward
of step ``t`` needs ``I_t`` (the step's internal state) and ``dL/ds_t``;
backward steps must run in the order ``T, T-1, ..., 1``, each exactly once.

Cost = number of forward step evaluations (every forward of any step costs 1,
replays included; backward steps are free in this count).

Memory is counted in integer quanta: a hidden-state slot (holds some ``s_j``)
costs ``h`` quanta, an internal-state slot (holds some ``I_j``) costs ``k``
quanta (``alpha = k / h``).  ``M`` is the budget for checkpoint slots; at every
moment ``(#hidden slots) * h + (#internal slots) * k <= M``.

Free of charge (not counted in ``M``):

* the initial state ``s_0`` is always available;
* one working buffer ``cur`` holding the state the forward sweep is at;
* one working internal buffer.

Actions:

* forward of step ``j`` from ``cur`` (which must hold ``s_{j-1}``): cost 1,
  leaves ``s_j`` in ``cur`` and ``I_j`` in the working internal buffer.  ``I_j``
  is either stored into an internal slot (``k`` quanta) or kept only in the
  working buffer, where it is usable only if the very next action is the
  backward of step ``j`` (it is lost at the next forward);
* store ``cur`` (``s_j``) into a hidden slot (``h`` quanta), any time;
* restore into ``cur`` for free: ``s_0``, any hidden slot ``s_j``, or ``s_j``
  from an internal slot holding ``I_j``;
* free any slot, any time;
* backward of step ``j``: allowed when ``j`` is the next step to reverse and
  ``I_j`` is available (internal slot, or working buffer just produced by the
  immediately preceding forward of step ``j``).

Variants: ``allow_hidden=False`` -> ISM (internal slots only),
``allow_internal=False`` -> HSM (hidden slots only; ``I_j`` only through the
working buffer, i.e. forward ``j`` immediately followed by backward ``j``).

HSM relation to Revolve (Griewank & Walther; Gruslys et al. 2016): with ``m``
slots *including* the one holding the segment's starting state, the optimal
cost is ``C(t, m) = t + numforw(t, m)``.  Because ``s_0`` is free here, HSM
with ``M = (m - 1) * h`` quanta has cost ``C(T, m)``.

Search (``brute_force_cost``)
-----------------------------
0-1 BFS (Dijkstra with 0/1 edge weights) over normalized states
``(n, c, H, I)``: ``n`` = next step to reverse, ``c`` = position held by
``cur`` when it is not otherwise available (``None`` if ``cur`` holds
``s_0``, a stored position, or something useless), ``H``/``I`` = bitmasks of
hidden-slot positions / internal-slot step indices.  Reductions that do not
change the optimum:

* restores are free, so a forward may start from any available position
  (``0``, ``H``, ``I``, ``c``); the restore action is folded into the forward;
* if ``I_n`` is stored, do the backward of ``n`` immediately (it only frees
  memory); slots with hidden position ``>= n`` or internal index ``>= n``
  (after that) are dropped, as is ``c >= n``;
* forward of step ``n`` without storing ``I_n`` is the combined
  "forward + backward" move;
* frees are lazy: slots are only freed when a store needs the room, and only
  in inclusion-minimal sets (freeing more now can always be postponed);
* more slots dominate fewer (frees are free), so a store that fits without
  freeing is always made: ``I_j`` after a forward, ``cur`` into a hidden slot;
  a hidden ``s_j`` is dropped when ``I_j`` is stored (it is redundant);
* forward of a step whose ``I_j`` is already stored is never useful.
"""

from __future__ import annotations

from collections import deque
from functools import lru_cache
from itertools import combinations
from math import comb

__all__ = [
    "brute_force_cost",
    "closed_form_hsm",
    "naive_dp_hsm",
    "brute_force_table",
]


def _bits(mask: int):
    """Positions of set bits of ``mask`` (ascending)."""
    out = []
    pos = 0
    while mask:
        if mask & 1:
            out.append(pos)
        mask >>= 1
        pos += 1
    return out


def _normalize(n, c, H, I, M, h, k, allow_hidden):
    """Do forced backwards, drop useless / redundant slots, and store a
    floating ``cur`` into a hidden slot when that fits without freeing."""
    while n > 0 and (I >> n) & 1:
        I &= ~(1 << n)
        n -= 1
    keep = (1 << n) - 1  # positions 0..n-1
    I &= keep
    H &= keep & ~I  # s_j is redundant when I_j is stored
    if c is not None and (c >= n or c == 0 or (H >> c) & 1 or (I >> c) & 1):
        c = None
    if (c is not None and allow_hidden
            and (_popcount(H) + 1) * h + _popcount(I) * k <= M):
        H |= 1 << c
        c = None
    return n, c, H, I


def _popcount(x: int) -> int:
    return bin(x).count("1")


def _free_options(H, I, w, M, h, k):
    """Yield (H', I') after freeing an inclusion-minimal set of slots so that a
    new slot of cost ``w`` fits; nothing is yielded if it can never fit."""
    if w > M:
        return
    hs = _bits(H)
    is_ = _bits(I)
    need = len(hs) * h + len(is_) * k + w - M
    if need <= 0:
        yield H, I
        return
    for a in range(len(hs) + 1):
        for b in range(len(is_) + 1):
            freed = a * h + b * k
            if freed < need:
                continue
            if a > 0 and freed - h >= need:
                continue
            if b > 0 and freed - k >= need:
                continue
            for fh in combinations(hs, a):
                Hn = H
                for p in fh:
                    Hn &= ~(1 << p)
                for fi in combinations(is_, b):
                    In = I
                    for p in fi:
                        In &= ~(1 << p)
                    yield Hn, In


@lru_cache(maxsize=None)
def brute_force_cost(T: int, M: int, h: int, k: int,
                     allow_hidden: bool = True,
                     allow_internal: bool = True):
    """Minimal number of forward evaluations to reverse a chain of ``T`` steps
    with ``M`` quanta of checkpoint memory (hidden slot = ``h`` quanta,
    internal slot = ``k`` quanta), by exhaustive 0-1 BFS.  Returns ``None`` if
    no schedule exists (cannot happen for ``M >= 0``, kept for completeness).
    """
    if T < 0 or M < 0 or h < 1 or k < 1:
        raise ValueError("need T >= 0, M >= 0, h >= 1, k >= 1")
    if T == 0:
        return 0
    def norm(n, c, H, I):
        return _normalize(n, c, H, I, M, h, k, allow_hidden)

    start = norm(T, None, 0, 0)
    dist = {start: 0}
    dq = deque([(0, start)])
    done = set()
    while dq:
        d, st = dq.popleft()
        if st in done:
            continue
        done.add(st)
        n, c, H, I = st
        if n == 0:
            return d

        def relax(ns, nd):
            old = dist.get(ns)
            if old is None or nd < old:
                dist[ns] = nd
                if nd == d:
                    dq.appendleft((nd, ns))
                else:
                    dq.append((nd, ns))

        # store cur into a hidden slot (cost 0); reaching here means it does
        # not fit without freeing something
        if allow_hidden and c is not None:
            for Hn, In in _free_options(H, I, h, M, h, k):
                relax(norm(n, None, Hn | (1 << c), In), d)

        # forward one step from any available position (cost 1)
        sources = [0] + _bits(H | I)
        if c is not None:
            sources.append(c)
        fits_internal = (allow_internal and
                         _popcount(H) * h + (_popcount(I) + 1) * k <= M)
        for p in sources:
            j = p + 1
            if j == n:
                # forward n with I_n in the working buffer, then backward n
                relax(norm(n - 1, None, H, I), d + 1)
                continue
            if (I >> j) & 1:
                continue  # recomputing a stored I_j is pointless
            if fits_internal:
                # storing I_j for free dominates keeping it only in the buffer
                relax(norm(n, None, H, I | (1 << j)), d + 1)
                continue
            # keep I_j only in the working buffer (lost at next forward)
            relax(norm(n, j, H, I), d + 1)
            # store I_j into an internal slot, freeing room for it
            if allow_internal:
                for Hn, In in _free_options(H, I, k, M, h, k):
                    relax(norm(n, None, Hn, In | (1 << j)), d + 1)
    return None


def closed_form_hsm(t: int, m: int) -> int:
    """Revolve optimum ``C(t, m) = t + numforw(t, m)`` for ``t`` steps and ``m``
    hidden slots *including* the one holding the segment's initial state.

    ``beta(s, r) = binom(s + r, s)``; ``r`` = least integer with
    ``beta(m, r) >= t``; ``numforw = r*t - beta(m + 1, r - 1)``.
    """
    if t < 0 or m < 1:
        raise ValueError("need t >= 0 and m >= 1")
    if t == 0:
        return 0
    if t == 1:
        return 1
    if m == 1:
        return t * (t + 1) // 2
    if m >= t - 1:
        return 2 * t - 1
    r = 0
    while comb(m + r, m) < t:
        r += 1
    numforw = r * t - comb(m + 1 + r - 1, m + 1)
    return t + numforw


def naive_dp_hsm(T: int, m: int) -> int:
    """Plain recurrence ``C(t,m) = min_{1<=y<t} [y + C(t-y, m-1) + C(y, m)]``,
    ``C(1, m) = 1``, ``C(t, 1) = t(t+1)/2`` (``C(0, m) = 0``)."""
    if T < 0 or m < 1:
        raise ValueError("need T >= 0 and m >= 1")
    return _naive_dp(T, m)


@lru_cache(maxsize=None)
def _naive_dp(t: int, m: int) -> int:
    if t == 0:
        return 0
    if t == 1:
        return 1
    if m == 1:
        return t * (t + 1) // 2
    return min(y + _naive_dp(t - y, m - 1) + _naive_dp(y, m)
               for y in range(1, t))


def brute_force_table(T_max: int, h: int, k: int, **kw):
    """``{T: [cost(M) for M in 0..(T-1)*k]}`` for T = 1..T_max."""
    return {T: [brute_force_cost(T, M, h, k, **kw)
                for M in range(0, (T - 1) * k + 1)]
            for T in range(1, T_max + 1)}


if __name__ == "__main__":  # pragma: no cover
    import sys
    h, k = (int(a) for a in sys.argv[1:3]) if len(sys.argv) >= 3 else (2, 7)
    for T, row in brute_force_table(8, h, k).items():
        print(T, row)
