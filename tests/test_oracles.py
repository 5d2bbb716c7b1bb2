"""Self-checks for tests/oracles.py (pure Python, no memopt_bptt import)."""

import heapq
import itertools
import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from oracles import brute_force_cost, closed_form_hsm, naive_dp_hsm  # noqa: E402

HK = [(1, 1), (1, 2), (2, 7), (2, 4)]  # alpha = 1, 2, 3.5, 2


# --------------------------------------------------------------------------
# A literal, reduction-free simulator of the model (explicit restore / free /
# store actions, explicit working buffer), used to validate brute_force_cost
# on tiny instances.
# --------------------------------------------------------------------------
def _literal_cost(T, M, h, k, allow_hidden=True, allow_internal=True):
    # state: (n, cur, wb, H, I); wb = step whose I is in the working buffer
    # and still usable (only right after its forward).
    start = (T, 0, None, frozenset(), frozenset())
    dist = {start: 0}
    tie = itertools.count()
    pq = [(0, next(tie), start)]
    while pq:
        d, _, st = heapq.heappop(pq)
        if d > dist[st]:
            continue
        n, cur, wb, H, I = st
        if n == 0:
            return d
        used = len(H) * h + len(I) * k
        nxt = []
        if cur is not None and cur < T:  # forward step cur+1
            nxt.append((1, (n, cur + 1, cur + 1, H, I)))
        if allow_internal and wb is not None and wb not in I and used + k <= M:
            nxt.append((0, (n, cur, None, H, I | {wb})))
        if allow_hidden and cur is not None and cur != 0 and cur not in H \
                and used + h <= M:
            nxt.append((0, (n, cur, None, H | {cur}, I)))
        for q in {0} | H | I:  # restore
            nxt.append((0, (n, q, None, H, I)))
        for q in H:
            nxt.append((0, (n, cur, None, H - {q}, I)))
        for q in I:
            nxt.append((0, (n, cur, None, H, I - {q})))
        if n in I:
            nxt.append((0, (n - 1, cur, None, H, I - {n})))
        elif wb == n:
            nxt.append((0, (n - 1, cur, None, H, I)))
        for c, ns in nxt:
            if ns not in dist or d + c < dist[ns]:
                dist[ns] = d + c
                heapq.heappush(pq, (d + c, next(tie), ns))
    return None


@pytest.mark.parametrize("h,k", [(1, 1), (1, 2), (2, 3)])
def test_brute_force_matches_literal_simulator(h, k):
    for T in range(1, 5):
        for M in range(0, (T - 1) * k + 1):
            for flags in [(True, True), (False, True), (True, False)]:
                assert brute_force_cost(T, M, h, k, *flags) == \
                    _literal_cost(T, M, h, k, *flags), (T, M, h, k, flags)


# --------------------------------------------------------------------------
# HSM: three independent computations agree
# --------------------------------------------------------------------------
@pytest.mark.parametrize("h", [1, 2])
def test_hsm_brute_force_closed_form_naive_dp(h):
    for T in range(1, 8):
        for m in range(1, T + 2):
            bf = brute_force_cost(T, (m - 1) * h, h, 3, allow_internal=False)
            assert bf == closed_form_hsm(T, m) == naive_dp_hsm(T, m), (T, m)


def test_closed_form_vs_naive_dp_larger():
    for t in range(1, 60):
        for m in range(1, 12):
            assert closed_form_hsm(t, m) == naive_dp_hsm(t, m), (t, m)


def test_closed_form_known_values():
    assert closed_form_hsm(10, 2) == 30
    assert closed_form_hsm(10, 3) == 25
    assert closed_form_hsm(100, 5) == 416
    assert closed_form_hsm(300, 10) == 1136
    assert closed_form_hsm(1000, 10) == 4636
    assert closed_form_hsm(1000, 20) == 3747
    assert closed_form_hsm(1000, 50) == 2948
    for t in range(1, 30):
        assert closed_form_hsm(t, 1) == t * (t + 1) // 2
        for m in range(t, t + 3):
            assert closed_form_hsm(t, m) == 2 * t - 1


# --------------------------------------------------------------------------
# brute force: extremes, mixed vs pure, monotonicity
# --------------------------------------------------------------------------
@pytest.mark.parametrize("h,k", HK)
def test_full_memory_and_zero_memory(h, k):
    for T in range(1, 9):
        assert brute_force_cost(T, (T - 1) * k, h, k) == T
        assert brute_force_cost(T, (T - 1) * k, h, k, allow_hidden=False) == T
        assert brute_force_cost(T, 0, h, k) == T * (T + 1) // 2
        for flags in [(False, True), (True, False)]:
            assert brute_force_cost(T, 0, h, k, *flags) == T * (T + 1) // 2


@pytest.mark.parametrize("h,k", HK)
def test_mixed_le_pure_and_monotone(h, k):
    for T in range(1, 8 if k < 7 else 9):
        prev = None
        for M in range(0, (T - 1) * k + 1):
            mixed = brute_force_cost(T, M, h, k)
            ism = brute_force_cost(T, M, h, k, allow_hidden=False)
            hsm = brute_force_cost(T, M, h, k, allow_internal=False)
            assert mixed is not None
            assert T <= mixed <= min(ism, hsm), (T, M)
            if prev is not None:
                assert mixed <= prev, (T, M)
                assert ism <= prev_ism and hsm <= prev_hsm, (T, M)
            prev, prev_ism, prev_hsm = mixed, ism, hsm
