"""The costs with a closed form: Revolve's (= BPTT-HSM's) and the fixed policies'.

Griewank & Walther (2000): with s snapshots and r repetitions at most
beta(s, r) = binomial(s + r, s) steps can be reversed; reversing t steps with
m snapshots takes numforw(t, m) = r*t - beta(m + 1, r - 1) extra forwards,
r the least integer with beta(m, r) >= t. Gruslys et al.'s C(t, m) (m counts
the slot that holds the start state) is t + numforw(t, m); the ``revolve``
policy walks the splits of that optimum (``_hsm_split``) with no table. The
``full`` and ``sqrt`` policies fix their splits, so their pool has a closed
form too (``_fixed_pool``).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from numba import njit

from .._actions import WORKING, Op
from .._jit import inner
from .._schedule import plain_pool_quanta

__all__ = ["beta", "numforw", "hsm_cost"]


def _count(func: str, name: str, value: Any, least: int) -> int:
    """``value`` as an int, or ValueError naming ``func``, the argument and the least valid value.

    Checked before any jitted loop: numforw's search for r never ends with m < 1.
    """
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < least:
        raise ValueError(f"{func}: {name}={value!r} must be an int >= {least}")
    return int(value)


def beta(s: int, r: int) -> int:
    """binomial(s + r, s): steps reversible with s >= 0 snapshots and r >= 0 repetitions.

    Example: ``beta(2, 3) == 10``.
    """
    s = _count("beta", "s", s, 0)
    r = _count("beta", "r", r, 0)
    return math.comb(s + r, s)


def numforw(t: int, m: int) -> int:
    """Revolve's extra forward steps to reverse t >= 1 steps with m >= 1 snapshots.

    Example: ``numforw(10, 3) == 15`` (and ``hsm_cost(10, 3) == 25``).
    """
    t = _count("numforw", "t", t, 1)
    m = _count("numforw", "m", m, 1)
    return int(_numforw(t, m))


def hsm_cost(t: int, m: int) -> int:
    """Gruslys et al.'s C(t, m): forwards of optimal BPTT-HSM for t >= 0 steps with
    m >= 1 slots (m counts the slot holding the start state). C(10, 3) == 25."""
    t = _count("hsm_cost", "t", t, 0)
    m = _count("hsm_cost", "m", m, 1)
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


@inner(cache=True)
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


def _sqrt_segment(T: int) -> int:
    """Segment length of the sqrt policy: ceil(sqrt(T))."""
    return max(1, math.isqrt(T - 1) + 1) if T > 1 else 1


def _plain(T: int, hq: int, kq: int) -> tuple[np.ndarray, int, int]:
    """Plain BPTT's schedule (codes, forwards, pool quanta) in NumPy: the rows
    ``_emit`` writes in its full mode (tests check they are equal), without
    compiling the emitter, so a first plain gradient on a fresh machine
    compiles only the sweep. Keep I_1 .. I_{T-1} in slots hq, hq + kq, ...,
    run step T into the working buffer, and reverse T .. 1."""
    y = np.arange(1, T, dtype=np.int64)
    slots = hq + (y - 1) * kq
    codes = np.empty((2 * T + 1, 3), np.int64)
    codes[0] = (Op.TAKESHOT, 0, 0)
    codes[1:T, 0] = Op.KEEP
    codes[1:T, 1] = y
    codes[1:T, 2] = slots
    codes[T] = (Op.KEEP, T, WORKING)
    codes[T + 1] = (Op.REVERSE, T, WORKING)
    codes[T + 2:, 0] = Op.REVERSE
    codes[T + 2:, 1] = y[::-1]
    codes[T + 2:, 2] = slots[::-1]
    return codes, T, plain_pool_quanta(T, hq, kq)


def _fixed_pool(T: int, hq: int, kq: int, policy: str, sqrt_k: int) -> int:
    """Pool quanta (initial state included) the fixed policies need."""
    if policy == "full":
        return plain_pool_quanta(T, hq, kq)
    n_seg = -(-T // sqrt_k)
    # while segment j (0-based) is reversed, j hidden checkpoints and its internal states are alive
    return hq + max(j * hq + (min(sqrt_k, T - j * sqrt_k) - 1) * kq for j in range(n_seg))
