"""The fast planner paths return exactly the naive dynamic programme's cost."""

import warnings

import numpy as np
import pytest

import memopt_bptt as mb
from memopt_bptt._planner import plan_quanta
from memopt_bptt._planner._tables import _dp_table, _ism_table


@pytest.mark.parametrize("kq", [1, 2, 5, 7])
def test_ism_binary_search_equals_full_scan(kq):
    # _dp_table with hidden splits disabled scans every split point; the
    # pinned-start layer indexed at multiples of kq is the ISM cost.
    T, N = 70, 20
    naive, _ = _dp_table(T, N * kq, 2, kq, False, True)
    fast, _ = _ism_table(T, N)
    np.testing.assert_array_equal(naive[0][:, ::kq][:, : N + 1], fast)


@pytest.mark.parametrize("hq,kq", [(2, 7), (1, 1), (1, 3)])
def test_revolve_closed_form_equals_hsm_table(hq, kq):
    for T in (1, 2, 7, 40, 97):
        for free_slots in range(0, 8):
            M = free_slots * hq
            table = plan_quanta(T, M, hq, kq, "hsm")[1]
            closed = plan_quanta(T, M, hq, kq, "revolve")[1]
            assert table == closed, (T, free_slots)


def test_msm_fallback_warns_and_is_no_worse_than_single_kinds(monkeypatch):
    import memopt_bptt._planner._choose as planner  # plan_quanta reads its settings here

    monkeypatch.setattr(planner, "MSM_EXACT_MAX_WORK", 0.0)
    with pytest.warns(UserWarning, match="not proven MSM-optimal"):
        _, fallback, _ = plan_quanta(60, 40, 2, 7, "msm")
    ism = plan_quanta(60, 40, 2, 7, "ism")[1]
    rev = plan_quanta(60, 40, 2, 7, "revolve")[1]
    assert fallback == min(ism, rev)
    monkeypatch.setattr(planner, "MSM_EXACT_MAX_WORK", 4e9)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        exact = plan_quanta(60, 40, 2, 7, "msm")[1]
    assert exact <= fallback


# ---- the pruned exact MSM table (_msm_fast_table) --------------------------------
@pytest.mark.parametrize("T,hq,kq", [(200, 2, 7), (160, 1, 3), (120, 3, 5)])
def test_parallel_row_pairs_give_the_serial_table(T, hq, kq):
    """_msm_fast_table_pair (the two start kinds of a row as one parallel loop, for large
    tables) writes the same costs and choices as the serial _msm_fast_table, which the
    naive table checks below."""
    from memopt_bptt._planner._msm import _msm_fast_table, _msm_fast_table_pair
    from memopt_bptt._planner._tables import _lb_taus

    M = (T - 1) * kq
    tau = _lb_taus(M, hq, kq, T)
    choice_serial = np.zeros((2, M + 1, T + 1), np.int32)
    choice_pair = np.zeros((2, M + 1, T + 1), np.int32)
    big = 2 * (M + 1) * (T + 1)
    serial = _msm_fast_table(T, M, hq, kq, M + 1, choice_serial, tau, big)
    pair = _msm_fast_table_pair(T, M, hq, kq, M + 1, choice_pair, tau, big)
    np.testing.assert_array_equal(pair[0], serial[0])
    np.testing.assert_array_equal(choice_pair, choice_serial)
    assert pair[1] == serial[1]
    for a, b in zip(pair[3:], serial[3:]):  # the runs
        np.testing.assert_array_equal(a, b)


def test_plan_quanta_is_the_same_with_either_table(monkeypatch):
    import memopt_bptt._planner._choose as planner  # plan_quanta reads its settings here

    calls = {"serial": 0, "pair": 0}

    def counting(name, fn):
        def wrapped(*args):
            calls[name] += 1
            return fn(*args)
        return wrapped

    monkeypatch.setattr(planner, "_msm_fast_table", counting("serial", planner._msm_fast_table))
    monkeypatch.setattr(planner, "_msm_fast_table_pair", counting("pair", planner._msm_fast_table_pair))
    budgets = (8, 12, 20)  # quanta where the optimum is above the lower bound: the table runs
    default = [planner.plan_quanta(300, free, 2, 7, "msm") for free in budgets]
    assert calls == {"serial": len(budgets), "pair": 0}
    monkeypatch.setattr(planner, "PAIR_MIN_CELLS", 0)  # every table through the parallel rows
    for free, (codes, forwards, pool) in zip(budgets, default):
        codes2, forwards2, pool2 = planner.plan_quanta(300, free, 2, 7, "msm")
        assert (forwards2, pool2) == (forwards, pool)
        np.testing.assert_array_equal(codes2, codes)
    assert calls == {"serial": len(budgets), "pair": len(budgets)}


@pytest.mark.parametrize("T,hq,kq", [(300, 2, 7), (300, 1, 1), (300, 2, 4), (160, 1, 3), (160, 3, 5), (160, 1, 2)])
def test_fast_msm_table_equals_naive_in_every_cell(T, hq, kq):
    # every (start kind, t <= T, m <= plain BPTT's need): the pruned table keeps all rows here
    from memopt_bptt._planner._msm import _msm_fast_table
    from memopt_bptt._planner._tables import _lb_choice, _lb_taus

    M = (T - 1) * kq
    naive, _ = _dp_table(T, M, hq, kq, True, True)
    choice = np.zeros((2, M + 1, T + 1), np.int32)
    tau = _lb_taus(M, hq, kq, T)
    fast = _msm_fast_table(T, M, hq, kq, M + 1, choice, tau, 2 * (M + 1) * (T + 1))[0]
    np.testing.assert_array_equal(fast.transpose(0, 2, 1), naive)
    # the recorded choices (or _lb_choice's, where t <= tau) achieve the cost they are recorded for
    rng = np.random.default_rng(0)
    for own, t, m in zip(rng.integers(0, 2, 400), rng.integers(2, T + 1, 400), rng.integers(0, M + 1, 400)):
        ch = int(choice[own, m, t]) if t > tau[own, m] else int(_lb_choice(t, m, own, hq, kq, tau))
        if ch == 0:
            c = t + naive[own, t - 1, m]
        elif ch > 0:
            c = ch + naive[1, t - ch, m - hq] + naive[own, ch, m]
        elif ch == -1:
            c = 1 if t == 1 else 1 + naive[0, t - 1, min(m - kq + (hq if own else 0), M)]
        else:
            y = -ch
            c = y + naive[0, t - y, m - kq] + naive[own, y - 1, m]
        assert c == naive[own, t, m], (own, t, m, ch)


def test_fast_msm_ring_equals_full_table():
    # the planner keeps kq + 1 rows; the last rows must equal the full table's
    from memopt_bptt._planner._msm import _msm_fast_table
    from memopt_bptt._planner._tables import _lb_taus

    T, M, hq, kq = 200, 500, 2, 7
    tau = _lb_taus(M, hq, kq, T)
    big = 2 * (M + 1) * (T + 1)
    full = _msm_fast_table(T, M, hq, kq, M + 1, np.zeros((2, M + 1, T + 1), np.int32), tau, big)[0]
    ring = _msm_fast_table(T, M, hq, kq, kq + 1, np.zeros((2, M + 1, T + 1), np.int16), tau, big)[0]
    # and with no cell given in closed form
    bare = _msm_fast_table(T, M, hq, kq, M + 1, np.zeros((2, M + 1, T + 1), np.int32), 0 * tau, big)[0]
    np.testing.assert_array_equal(bare, full)
    for m in range(M - kq, M + 1):
        np.testing.assert_array_equal(ring[:, m % (kq + 1)], full[:, m])


@pytest.mark.parametrize("T,M,hq,kq", [(300, 60, 2, 7), (300, 299 * 7, 2, 7), (160, 40, 1, 3), (200, 30, 3, 5)])
def test_runs_give_back_every_recorded_choice(T, M, hq, kq):
    """The planner keeps a row of choices at a time, as runs: decoding them (the emitter's
    lookup, through a jitted probe) gives the dense table's choice in every cell past tau."""
    from numba import njit

    from memopt_bptt._planner._msm import _msm_fast_table
    from memopt_bptt._planner._runs import _run_choice
    from memopt_bptt._planner._tables import _lb_taus

    @njit
    def decode(off, starts, vals, tau, T, M):
        out = np.zeros((2, M + 1, T + 1), np.int64)
        for m in range(M + 1):
            for own in range(2):
                for t in range(tau[own, m] + 1, T + 1):
                    if t >= 1:
                        out[own, m, t] = _run_choice(off, starts, vals, 2 * m + own, t)
        return out

    tau = _lb_taus(M, hq, kq, T)
    dense = np.zeros((2, M + 1, T + 1), np.int16)
    big = 2 * (M + 1) * (T + 1)
    _, _, n, off, starts, vals = _msm_fast_table(T, M, hq, kq, kq + 1, dense, tau, big)
    one_row = np.zeros((2, 1, T + 1), np.int16)
    _, _, n1, off1, starts1, vals1 = _msm_fast_table(T, M, hq, kq, kq + 1, one_row, tau, big)
    assert n == n1 == len(starts1) and np.array_equal(off, off1) and np.array_equal(starts, starts1)
    got = decode(off1, starts1, vals1, tau, T, M)
    past = np.arange(T + 1)[None, None, :] > tau[:, :, None]
    np.testing.assert_array_equal(np.where(past, got, 0), np.where(past, dense, 0))
    assert n < past.sum()  # fewer runs than cells: the reason to keep them
    # too few runs allowed: -1, nothing past the limit kept
    assert _msm_fast_table(T, M, hq, kq, kq + 1, one_row, tau, n - 1)[2] == -1


@pytest.mark.parametrize("hq,kq", [(2, 7), (1, 1), (1, 2)])
def test_msm_plans_match_naive_cost_and_validate(hq, kq):
    import memopt_bptt as mb

    T = 300
    Mmax = (T - 1) * kq
    naive, _ = _dp_table(T, Mmax, hq, kq, True, True)
    for M in sorted({0, 1, hq, kq, 13, 50, 137, 400, Mmax // 3, Mmax - 1, Mmax}):
        if M > Mmax:
            continue
        codes, forwards, pool = plan_quanta(T, M, hq, kq, "msm")
        assert forwards == naive[0, T, M], (M, forwards, naive[0, T, M])
        assert pool <= hq + M
        mb.Schedule(T=T, policy="msm", codes=codes, hidden_quanta=hq, internal_quanta=kq,
                    pool_quanta=pool, forward_steps=int(forwards)).validate()


def test_msm_is_exact_past_the_old_limit_without_warning():
    # T = 4000 at 1% of plain BPTT (hq=2, kq=7): the old full scan (~1e10 steps) fell back here
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        codes, forwards, pool = plan_quanta(4000, 280, 2, 7, "msm")
    assert forwards <= min(plan_quanta(4000, 280, 2, 7, p)[1] for p in ("ism", "revolve"))
    assert pool <= 2 + 280


# ---- where the optimum is its lower bound (_lb_taus, _lb_choice) -------------------
LB_CASES = [(300, 2, 7), (300, 1, 1), (300, 2, 4), (200, 1, 3), (200, 3, 5), (200, 1, 2), (200, 2, 2),
            (200, 3, 7), (150, 5, 7), (200, 1, 5), (150, 4, 9), (150, 2, 3)]


@pytest.mark.parametrize("T,hq,kq", LB_CASES)
def test_lower_bound_is_reached_exactly_up_to_tau(T, hq, kq):
    # R(t, m) == max(t, 2t - floor((m + own*hq)/kq) - 1) exactly for t <= tau[own, m]
    # (proven: _lb_choice's split reaches it) and, in every cell checked here, only there
    from memopt_bptt._planner._tables import _LB_FAIL, _lb_choice, _lb_of, _lb_taus

    M = (T - 1) * kq
    naive, _ = _dp_table(T, M, hq, kq, True, True)
    tau = _lb_taus(M, hq, kq, T)
    t = np.arange(T + 1)
    for own in range(2):
        for m in range(M + 1):
            lb = np.maximum(t, 2 * t - (m + own * hq) // kq - 1)
            row = naive[own, :, m]
            assert (row >= lb).all(), (own, m)
            np.testing.assert_array_equal(row == lb, t <= tau[own, m], err_msg=f"own={own} m={m}")
    # the split _lb_choice gives costs the bound, with parts inside their own tau
    for own in range(2):
        for m in range(0, M + 1, max(1, M // 97)):
            for tt in range(2, int(tau[own, m]) + 1):
                ch = int(_lb_choice(tt, m, own, hq, kq, tau))
                assert ch != _LB_FAIL, (own, m, tt)
                target = _lb_of(tt, m, own, hq, kq)
                if ch == 0:
                    c = tt + naive[own, tt - 1, m]
                elif ch > 0:
                    assert tt - ch <= tau[1, m - hq]
                    c = ch + naive[1, tt - ch, m - hq] + naive[own, ch, m]
                elif ch == -1:
                    m1 = min(m - kq + (hq if own else 0), M)
                    c = 1 + naive[0, tt - 1, m1]
                else:
                    y = -ch
                    assert tt - y <= tau[0, m - kq]
                    c = y + naive[0, tt - y, m - kq] + naive[own, y - 1, m]
                assert c == target == naive[own, tt, m], (own, m, tt, ch)


def test_msm_closed_form_plans_long_sequences_exactly():
    # LSTM (hq=2, kq=7) at T = 10^5 and 1%, 5%, 20% of plain BPTT: the optimum is the
    # lower bound, planned without a table and without the fallback warning
    import memopt_bptt as mb
    from memopt_bptt._planner._tables import _lb_of

    T, hq, kq = 100_000, 2, 7
    for M in (6969, 34970, 139973):
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            codes, forwards, pool = plan_quanta(T, M, hq, kq, "msm")
        assert forwards == _lb_of(T, min(M, (T - 1) * kq), 0, hq, kq)
        assert pool <= hq + M
    mb.Schedule(T=T, policy="msm", codes=codes, hidden_quanta=hq, internal_quanta=kq,
                pool_quanta=pool, forward_steps=int(forwards)).validate()


@pytest.mark.slow
def test_msm_plans_equal_the_full_table_across_tau():
    # T = 2000 (hq=2, kq=7): budgets on both sides of T <= tau(M) give the cost of the
    # pruned table run with no closed-form cells at all, and valid schedules
    import memopt_bptt as mb
    from memopt_bptt._planner._msm import _msm_fast_table
    from memopt_bptt._planner._tables import _lb_taus

    T, hq, kq = 2000, 2, 7
    Mmax = 560
    bare = _msm_fast_table(T, Mmax, hq, kq, Mmax + 1, np.zeros((2, Mmax + 1, T + 1), np.int16),
                           np.zeros((2, Mmax + 1), np.int64), 2 * (Mmax + 1) * (T + 1))[0]
    tau = _lb_taus(Mmax, hq, kq, T)
    Ms = [m for m in range(0, Mmax + 1, 7)] + [Mmax - 1, Mmax]
    assert any(T <= tau[0, m] for m in Ms) and any(T > tau[0, m] for m in Ms)
    for M in Ms:
        codes, forwards, pool = plan_quanta(T, M, hq, kq, "msm")
        assert forwards == bare[0, M, T], (M, forwards, bare[0, M, T])
        assert pool <= hq + M
        if M % 70 == 0:
            mb.Schedule(T=T, policy="msm", codes=codes, hidden_quanta=hq, internal_quanta=kq,
                        pool_quanta=pool, forward_steps=int(forwards)).validate()


def test_plain_schedule_in_numpy_equals_the_emitters_full_mode():
    """policy="full" is built in NumPy (no compile on a first plain gradient); oracle: the jitted
    emitter's full mode, row for row, with its forwards and pool."""
    from memopt_bptt._planner._closed import _plain
    from memopt_bptt._planner._emit import _MODE_FULL, _emit

    for hq, kq in [(1, 1), (2, 7), (3, 2), (5, 5), (4, 1)]:
        for T in [*range(1, 40), 97, 256, 1000]:
            M = max(T - 1, 0) * (hq + kq)
            none = (np.zeros(3, np.int64), np.zeros(1, np.int16), np.zeros(1, np.int16))
            want = _emit(T, M, hq, kq, _MODE_FULL, *none, 1, np.zeros((2, 1), np.int64))
            codes, forwards, pool = _plain(T, hq, kq)
            assert codes.dtype == np.int64 and codes.flags.c_contiguous
            assert np.array_equal(codes, want[0]), (T, hq, kq)
            assert (forwards, pool) == (int(want[1]), int(want[2])), (T, hq, kq)
    s = mb.plan(50, slots=148, alpha=3.0, policy="full")
    assert s.forward_steps == 50 and s.validate() is s
