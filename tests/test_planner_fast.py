"""The fast planner paths return exactly the naive dynamic programme's cost."""

import warnings

import numpy as np
import pytest

from memopt_bptt._planner import _dp_table, _ism_table, plan_quanta


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
    import memopt_bptt._planner as planner

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
