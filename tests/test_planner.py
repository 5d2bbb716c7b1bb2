"""Planner tests: closed forms, exhaustive search, monotonicity, budgets, goldens.

Oracles (as the README and memopt_bptt/_planner/__init__.py state them): ``tests/oracles.py`` (Revolve's closed form
and an exhaustive 0-1 BFS over every valid schedule, both independent of the
package), an independent replay of the action list written here, and
schedules worked out by hand from the recurrence. No executor code runs.
"""

import math
import os
from functools import lru_cache
import re
import sys

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import memopt_bptt as mb
from memopt_bptt._planner import plan_quanta

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from oracles import brute_force_cost, closed_form_hsm, naive_dp_hsm  # noqa: E402

TABLE_POLICIES = ("msm", "hsm", "ism")
# alpha -> (hq, kq): a hidden state is hq quanta, an internal state kq quanta
QUANTA = {1.0: (1, 1), 2.0: (1, 2), 3.5: (2, 7)}
# brute_force_cost flags (allow_hidden, allow_internal) that define each policy
ORACLE_FLAGS = {"msm": (True, True), "ism": (False, True), "hsm": (True, False)}


def _small_models():
    return {
        "lstm": mb.Sequence(mb.LSTM(input_size=3, hidden_size=4), output_size=2, loss="mse"),
        "gru": mb.Sequence(mb.GRU(input_size=2, hidden_size=3), output_size=1, loss="mse"),
        "elman": mb.Sequence(mb.Elman(input_size=2, hidden_size=3, nonlinearity="relu"), output_size=2,
                             loss="cross_entropy"),
        "jordan": mb.Sequence(mb.Jordan(input_size=2, hidden_size=3), output_size=2, loss="mse"),
    }


MODELS = _small_models()


# ---- an independent replay of a schedule -----------------------------------
def replay(schedule):
    """Re-simulate the actions from the vocabulary's definition (not the package's
    simulator). Returns (forward steps, highest pool quantum used). Asserts every
    rule: restores find their state, forwards start at the current position,
    steps are reversed T..1 once each with their own internal state."""
    T, hq, kq = schedule.T, schedule.hidden_quanta, schedule.internal_quanta
    live = {}  # offset -> (kind, position, size)

    def store(slot, kind, pos, size):
        assert slot >= 0, f"negative slot {slot}"
        for off in [o for o, (_, _, sz) in live.items() if o < slot + size and slot < o + sz]:
            del live[off]  # overwritten
        live[slot] = (kind, pos, size)
        return slot + size

    cur, working, next_rev, forwards, extent = 0, None, T, 0, 0
    for op, step, slot in schedule.codes.tolist():
        name = mb.OPS[op]
        if name == "takeshot":
            assert step == cur
            extent = max(extent, store(slot, "h", step, hq))
        elif name in ("restore", "restore_internal"):
            assert live.get(slot, (None, None))[:2] == ("h" if name == "restore" else "i", step), \
                f"{name}({step}@{slot}) finds {live.get(slot)}"
            cur = step
        elif name == "advance":
            assert cur < step <= T
            forwards += step - cur
            cur, working = step, None
        elif name == "keep":
            assert step == cur + 1 <= T
            forwards += 1
            cur, working = step, None
            if slot == -1:
                working = step
            else:
                extent = max(extent, store(slot, "i", step, kq))
        elif name == "reverse":
            assert step == next_rev, f"reverse({step}) but {next_rev} is next"
            if slot == -1:
                assert working == step
                working = None
            else:
                assert live.get(slot, (None, None))[:2] == ("i", step)
            next_rev -= 1
    assert next_rev == 0, f"steps {next_rev}..1 never reversed"
    return forwards, extent


def check_schedule(schedule):
    """validate(), the independent replay, and the reported numbers agree."""
    schedule.validate()
    forwards, extent = replay(schedule)
    assert forwards == schedule.forward_steps
    assert extent == schedule.pool_quanta
    assert forwards >= schedule.T


def free_quanta(slots, hq):
    """What plan() gives the planner: the initial state's slot is not free."""
    return math.floor((slots - 1) * hq + 1e-9)


# ---- HSM against Revolve's closed form -----------------------------------------
KNOWN_HSM = [(10, 2, 30), (10, 3, 25), (100, 5, 416), (300, 10, 1136), (1000, 10, 4636),
             (1000, 20, 3747), (1000, 50, 2948)]


@pytest.mark.parametrize("t,m,cost", KNOWN_HSM)
def test_known_hsm_values(t, m, cost):
    # Values checked by hand from the recurrence (Gruslys et al. 2016, section 3, and Revolve's
    # binomial closed form); the oracle must agree too, or the oracle is wrong.
    assert closed_form_hsm(t, m) == cost
    assert mb.hsm_cost(t, m) == cost
    assert mb.numforw(t, m) == cost - t
    assert mb.plan(t, slots=m, policy="revolve").forward_steps == cost


def test_hsm_cost_saturates_at_2t_minus_1():
    for t in range(1, 60):
        for m in range(t, t + 4):
            assert mb.hsm_cost(t, m) == 2 * t - 1
    assert mb.hsm_cost(0, 3) == 0
    assert mb.hsm_cost(7, 1) == 7 * 8 // 2


def test_cost_functions_match_closed_form_grid():
    for t in range(1, 501):
        for m in range(1, 21):
            expected = closed_form_hsm(t, m)
            assert mb.hsm_cost(t, m) == expected, (t, m)
            assert mb.numforw(t, m) == expected - t, (t, m)
    for t in range(1, 40):  # the plain recurrence, a third independent route
        for m in range(1, 8):
            assert mb.hsm_cost(t, m) == naive_dp_hsm(t, m), (t, m)


def test_beta_is_binomial():
    assert [mb.beta(2, r) for r in range(5)] == [math.comb(2 + r, 2) for r in range(5)]


# (function, arguments, the argument named, its least valid value); numforw(10, 0) never returned
# before the check (its search for r cannot end with no snapshot)
BAD_COST_ARGUMENTS = [
    ("numforw", (10, 0), "m", 1), ("numforw", (10, -2), "m", 1), ("numforw", (0, 3), "t", 1),
    ("numforw", (-5, 3), "t", 1), ("numforw", (True, 3), "t", 1), ("numforw", (10, 2.0), "m", 1),
    ("numforw", (10, "3"), "m", 1),
    ("hsm_cost", (5, 0), "m", 1), ("hsm_cost", (-1, 3), "t", 0), ("hsm_cost", (5, True), "m", 1),
    ("hsm_cost", (5.0, 3), "t", 0), ("hsm_cost", (5, None), "m", 1),
    ("beta", (-1, 3), "s", 0), ("beta", (3, -1), "r", 0), ("beta", (2.0, 3), "s", 0),
    ("beta", (2, False), "r", 0),
]


@pytest.mark.parametrize("func,args,name,least", BAD_COST_ARGUMENTS)
def test_cost_functions_reject_bad_arguments_before_any_loop(monkeypatch, func, args, name, least):
    from memopt_bptt._planner import _closed

    def no_loop(*_):
        raise AssertionError("the jitted loop ran on a bad argument")

    # the check must come first: with m < 1 the loop in _numforw would never end
    monkeypatch.setattr(_closed, "_numforw", no_loop)
    monkeypatch.setattr(_closed, "_hsm_cost", no_loop)
    with pytest.raises(ValueError, match=rf"^{func}: {name}=.* must be an int >= {least}$"):
        getattr(mb, func)(*args)


def test_cost_functions_accept_numpy_integers():
    assert mb.numforw(np.int64(10), np.int32(3)) == 15
    assert mb.hsm_cost(np.int64(10), np.int64(3)) == 25
    assert mb.beta(np.int64(2), np.int8(3)) == 10
    assert type(mb.numforw(np.int64(10), 3)) is int


@pytest.mark.slow
@pytest.mark.parametrize("policy", ["hsm", "revolve"])
def test_plan_hsm_equals_closed_form_full_grid(policy):
    # every T <= 500 and m <= 20 (measured: ~6 s for hsm's table, ~0.3 s for revolve)
    wrong = []
    for T in range(1, 501):
        for m in range(1, 21):
            got = mb.plan(T, slots=m, policy=policy).forward_steps
            if got != closed_form_hsm(T, m):
                wrong.append((T, m, got, closed_form_hsm(T, m)))
    assert not wrong, wrong[:10]


def test_hsm_closed_form_with_non_unit_hidden_quanta():
    # alpha = 3.5 -> hq = 2: m slots are 2*(m-1) free quanta; an odd spare quantum is useless
    for T in (1, 2, 7, 33, 120):
        for m in range(1, 9):
            for extra in (0.0, 0.5):
                s = mb.plan(T, slots=m + extra, alpha=3.5, policy="hsm")
                assert s.forward_steps == closed_form_hsm(T, m), (T, m, extra)
                r = mb.plan(T, slots=m + extra, alpha=3.5, policy="revolve")
                assert r.forward_steps == closed_form_hsm(T, m), (T, m, extra)


# ---- MSM / ISM / HSM against exhaustive search -----------------------------------
@pytest.mark.parametrize("alpha", sorted(QUANTA))
@pytest.mark.parametrize("policy", TABLE_POLICIES)
def test_table_policies_equal_brute_force(policy, alpha):
    hq, kq = QUANTA[alpha]
    flags = ORACLE_FLAGS[policy]
    wrong = []
    for T in range(1, 9):
        # slots from 1 to plain BPTT's 1 + (T-1)*alpha in steps of 1/hq
        for free in range(0, (T - 1) * kq + 1):
            codes, forwards, pool = plan_quanta(T, free, hq, kq, policy)
            assert pool <= hq + free, (T, free, pool)
            expected = brute_force_cost(T, free, hq, kq, *flags)
            if forwards != expected:
                wrong.append((T, free, forwards, expected))
    assert not wrong, f"(T, free quanta, planner, brute force): {wrong[:10]}"


@pytest.mark.parametrize("alpha", sorted(QUANTA))
def test_plan_maps_slots_to_quanta_like_brute_force(alpha):
    # mb.plan's slots -> free quanta = floor((slots - 1) * hq), checked end to end
    hq, kq = QUANTA[alpha]
    for T in (1, 3, 6, 8):
        for slots in (1, 1.25, 1.5, 2, 2.5, 3.75, 1 + (T - 1) * alpha):
            for policy in TABLE_POLICIES:
                s = mb.plan(T, slots=slots, alpha=alpha, policy=policy)
                expected = brute_force_cost(T, free_quanta(slots, hq), hq, kq, *ORACLE_FLAGS[policy])
                assert s.forward_steps == expected, (T, slots, policy)
                assert (s.hidden_quanta, s.internal_quanta) == (hq, kq)
                assert s.peak_units <= slots
                check_schedule(s)


# ---- ISM at larger T: the recurrence by whole slots, scanned in full -------------------
@lru_cache(maxsize=None)
def ism_recurrence(t, n):
    """Least forwards reversing t steps from an available start with n free internal slots:
    W (replay all, reverse the last from the working buffer) or keep I_y in a slot, reverse
    the t-y steps after it with n-1 slots, reverse y, then the y-1 steps before it with n.
    Every y is scanned (the planner uses binary search, relying on convexity)."""
    if t == 0:
        return 0
    best = t + ism_recurrence(t - 1, n)
    if n >= 1:
        for y in range(1, t):
            best = min(best, y + ism_recurrence(t - y, n - 1) + ism_recurrence(y - 1, n))
    return best


def test_ism_recurrence_matches_brute_force():
    # the scanned recurrence is itself checked against exhaustive search first
    for T in range(1, 8):
        for n in range(0, T):
            assert ism_recurrence(T, n) == brute_force_cost(T, n * 7, 2, 7, allow_hidden=False), (T, n)


@pytest.mark.parametrize("alpha", [1.0, 3.5])
def test_ism_equals_scanned_recurrence_at_larger_T(alpha):
    hq, kq = QUANTA[alpha]
    wrong = []
    for T in (9, 10, 16, 25, 40, 63, 100, 150):
        for n in range(0, 13):
            for spare in (0, kq - 1):  # quanta short of another slot buy nothing
                got = plan_quanta(T, n * kq + spare, hq, kq, "ism")[1]
                if got != ism_recurrence(T, n):
                    wrong.append((T, n, spare, got, ism_recurrence(T, n)))
    assert not wrong, wrong[:10]


def test_msm_fallback_is_the_better_of_ism_and_revolve(monkeypatch):
    import memopt_bptt._planner._choose as planner  # plan_quanta reads its settings here
    if not hasattr(planner, "MSM_EXACT_MAX_WORK"):
        pytest.skip("this planner has no MSM fallback")
    cases = [(30, 4.0), (60, 12.5), (60, 80.0), (5, 1.0)]
    exact = {c: mb.plan(c[0], slots=c[1], alpha=3.5).forward_steps for c in cases}
    monkeypatch.setattr(planner, "MSM_EXACT_MAX_WORK", -1.0)
    for T, slots in cases:
        with pytest.warns(UserWarning, match="(?i)msm"):
            s = mb.plan(T, slots=slots, alpha=3.5)
        ism = mb.plan(T, slots=slots, alpha=3.5, policy="ism").forward_steps
        rev = mb.plan(T, slots=slots, alpha=3.5, policy="revolve").forward_steps
        assert s.forward_steps == min(ism, rev)
        assert s.forward_steps >= exact[(T, slots)]
        assert s.peak_units <= slots
        check_schedule(s)


# ---- orderings and monotonicity -----------------------------------------------
SWEEP_T = list(range(1, 16)) + [21, 34, 55, 89, 144, 200]


@pytest.mark.parametrize("alpha", [1.0, 3.5])
def test_msm_dominates_and_cost_never_rises_with_budget(alpha):
    hq, kq = QUANTA[alpha]
    for T in SWEEP_T:
        if alpha == 3.5 and T > 144:
            continue  # keep the sweep fast: the table grows as T^2 * budget
        top = (T - 1) * kq + 2 * hq  # a little past plain BPTT
        grid = sorted({0, 1, hq, kq, top} | {int(top * f) for f in (0.02, 0.05, 0.1, 0.2, 0.35, 0.5, 0.75)})
        previous = {p: None for p in TABLE_POLICIES}
        for free in grid:
            cost = {p: plan_quanta(T, free, hq, kq, p)[1] for p in TABLE_POLICIES}
            assert cost["msm"] <= min(cost["hsm"], cost["ism"]), (T, free, cost)
            assert cost["msm"] >= T
            for p in TABLE_POLICIES:
                if previous[p] is not None:
                    assert cost[p] <= previous[p], (p, T, free, cost[p], previous[p])
                previous[p] = cost[p]
        assert previous["msm"] == T  # plain BPTT's memory: no replay
        assert previous["ism"] == T


def test_revolve_and_sqrt_never_beat_the_optimum():
    for T in (5, 17, 40, 100):
        for slots in (1 + (T - 1) * 0.1, 1 + (T - 1) * 0.3, 1 + (T - 1) * 3.5):
            try:
                sq = mb.plan(T, slots=slots, alpha=3.5, policy="sqrt").forward_steps
            except mb.MemoryBudgetError:
                sq = None
            msm = mb.plan(T, slots=slots, alpha=3.5, policy="msm").forward_steps
            rev = mb.plan(T, slots=slots, alpha=3.5, policy="revolve").forward_steps
            assert msm <= rev
            assert sq is None or msm <= sq


# ---- every schedule validates and fits --------------------------------------------
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(T=st.integers(1, 60), alpha=st.sampled_from([0.5, 1.0, 1.5, 2.0, 3.5, 7 / 3]),
       frac=st.floats(0.0, 1.2), policy=st.sampled_from(mb.POLICIES))
def test_abstract_schedules_validate_and_fit(T, alpha, frac, policy):
    slots = 1 + frac * (T - 1) * alpha
    try:
        s = mb.plan(T, slots=slots, alpha=alpha, policy=policy)
    except mb.MemoryBudgetError as exc:
        assert policy in ("sqrt", "full")
        assert exc.least_units > slots
        return
    assert s.T == T and s.policy == policy
    assert s.peak_units <= slots + 1e-12
    check_schedule(s)


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(T=st.integers(1, 50), kind=st.sampled_from(sorted(MODELS)), batch=st.integers(1, 5),
       dtype=st.sampled_from(["float32", "float64"]), policy=st.sampled_from(mb.POLICIES),
       frac=st.floats(0.0, 1.3), slack=st.integers(0, 500))
def test_model_schedules_fit_their_byte_budget(T, kind, batch, dtype, policy, frac, slack):
    model = MODELS[kind]
    full = mb.plan(T, budget=1.0, model=model, batch=batch, dtype=dtype, policy="full")
    sizes = model.sizes(batch=batch, dtype=dtype)
    least = sizes.working_bytes + sizes.state_bytes  # working buffers + the initial state
    budget = int(least + frac * (full.peak_bytes - least)) + slack
    try:
        s = mb.plan(T, budget=budget, model=model, batch=batch, dtype=dtype, policy=policy)
    except mb.MemoryBudgetError as exc:
        assert policy in ("sqrt", "full")
        assert exc.least_bytes > budget
        return
    assert s.budget_bytes == budget
    assert s.peak_bytes <= budget
    assert s.pool_bytes == s.pool_quanta * s.quantum_bytes
    assert s.peak_bytes == s.pool_bytes + sizes.working_bytes
    check_schedule(s)


# ---- edges -----------------------------------------------------------------------
@pytest.mark.parametrize("policy", mb.POLICIES)
def test_single_step(policy):
    s = mb.plan(1, slots=1, alpha=2.0, policy=policy)
    assert s.forward_steps == 1
    assert s.peak_units == 1
    check_schedule(s)


@pytest.mark.parametrize("policy", mb.POLICIES)
@pytest.mark.parametrize("T", [1, 2, 9, 40])
def test_least_byte_budget_is_exact(policy, T):
    model, batch = MODELS["lstm"], 3
    with pytest.raises(mb.MemoryBudgetError) as info:
        mb.plan(T, budget=1, model=model, batch=batch, policy=policy)
    least = info.value.least_bytes
    assert isinstance(info.value, ValueError)
    assert isinstance(least, int) and least > 1
    assert str(least) in str(info.value)  # the message gives the least, in bytes
    s = mb.plan(T, budget=least, model=model, batch=batch, policy=policy)
    assert s.peak_bytes <= least
    check_schedule(s)
    with pytest.raises(mb.MemoryBudgetError) as info2:
        mb.plan(T, budget=least - 1, model=model, batch=batch, policy=policy)
    assert info2.value.least_bytes == least


class _NotedModel:
    """A model whose split_note(sizes) says what its working buffers grow with."""

    def __init__(self, model):
        self._model = model

    def __getattr__(self, name):
        return getattr(self._model, name)

    def split_note(self, sizes):
        return f"; a note for batch={sizes.batch}"


def test_budget_error_ends_with_the_models_split_note():
    model = MODELS["lstm"]
    with pytest.raises(mb.MemoryBudgetError) as info:
        mb.plan(10, budget=1, model=_NotedModel(model), batch=3)
    assert str(info.value).endswith("; a note for batch=3")
    with pytest.raises(mb.MemoryBudgetError) as plain:
        mb.plan(10, budget=1, model=model, batch=3)
    assert plain.value.least_bytes == info.value.least_bytes
    assert "a note" not in str(plain.value)


@pytest.mark.parametrize("policy", ["msm", "hsm", "ism", "revolve", "full"])
def test_least_budget_is_what_the_schedule_uses(policy):
    # the least budget is tight: the schedule planned with it uses all of it
    for T in (1, 2, 5, 10, 17):
        with pytest.raises(mb.MemoryBudgetError) as info:
            mb.plan(T, budget=1, model=MODELS["gru"], batch=2, policy=policy)
        s = mb.plan(T, budget=info.value.least_bytes, model=MODELS["gru"], batch=2, policy=policy)
        assert s.peak_bytes == info.value.least_bytes, T


def test_sqrt_least_budget_is_what_the_schedule_uses():
    for T in (4, 5, 10, 17):
        with pytest.raises(mb.MemoryBudgetError) as info:
            mb.plan(T, slots=1, alpha=1.0, policy="sqrt")
        s = mb.plan(T, slots=info.value.least_units, alpha=1.0, policy="sqrt")
        assert s.peak_units == info.value.least_units, (T, s.peak_units, info.value.least_units)


@pytest.mark.parametrize("policy", mb.POLICIES)
@pytest.mark.parametrize("slots", [0.5, 1.0])
def test_least_units_in_the_abstract_model(policy, slots):
    T, alpha = 12, 3.5
    try:
        mb.plan(T, slots=slots, alpha=alpha, policy=policy)
    except mb.MemoryBudgetError as exc:
        least = exc.least_units
        assert f"{least:g}" in str(exc), str(exc)
    else:
        assert slots >= 1 and policy not in ("sqrt", "full")
        return
    if policy == "full":
        assert least == 1 + (T - 1) * alpha
    s = mb.plan(T, slots=least, alpha=alpha, policy=policy)
    assert s.peak_units <= least
    with pytest.raises(mb.MemoryBudgetError):
        mb.plan(T, slots=least - 1e-6, alpha=alpha, policy=policy)


@pytest.mark.parametrize("kind", sorted(MODELS))
@pytest.mark.parametrize("T", [1, 2, 13])
def test_plain_bptt_budget_needs_no_replay(kind, T):
    model = MODELS[kind]
    full = mb.plan(T, budget=1.0, model=model, batch=2, policy="full")
    assert full.forward_steps == T
    for budget in (full.peak_bytes, 2 * full.peak_bytes, 1.0):
        for policy in ("msm", "ism", "full"):
            s = mb.plan(T, budget=budget, model=model, batch=2, policy=policy)
            assert s.forward_steps == T, (policy, budget)
            assert s.peak_bytes <= full.peak_bytes
        # hidden states only: every step replayed once from its predecessor, C(T, T) = 2T - 1
        for policy in ("hsm", "revolve"):
            assert mb.plan(T, budget=budget, model=model, batch=2, policy=policy).forward_steps == 2 * T - 1


def test_plain_bptt_budget_in_the_abstract_model():
    for T in (1, 4, 30):
        for alpha in (1.0, 3.5):
            slots = 1 + (T - 1) * alpha
            for policy in ("msm", "ism", "full"):
                assert mb.plan(T, slots=slots, alpha=alpha, policy=policy).forward_steps == T
                assert mb.plan(T, slots=slots + 7, alpha=alpha, policy=policy).forward_steps == T
            assert mb.plan(T, budget=1.0, alpha=alpha, policy="msm").forward_steps == T


def test_byte_budgets_by_string_and_fraction_agree():
    model = MODELS["lstm"]
    full = mb.plan(30, budget=1.0, model=model, batch=4, policy="full")
    by_int = mb.plan(30, budget=full.peak_bytes // 4, model=model, batch=4)
    by_str = mb.plan(30, budget=f"{full.peak_bytes // 4}B", model=model, batch=4)
    assert by_int == by_str
    half = mb.plan(30, budget=0.5, model=model, batch=4)
    assert half.budget_bytes == full.peak_bytes // 2
    pct = mb.plan(30, budget="50%", model=model, batch=4)
    assert pct.budget_bytes == half.budget_bytes


@pytest.mark.parametrize("kwargs,exc,word", [
    (dict(T=10, slots=3, policy="fast"), ValueError, "policy"),
    (dict(T=10, slots=3, policy=None), ValueError, "policy"),
    (dict(T=0, slots=3, policy="hsm"), ValueError, "T"),
    (dict(T=-1, slots=3, policy="hsm"), ValueError, "T"),
    (dict(T="5", slots=3, policy="hsm"), TypeError, "T"),
    (dict(T=5.0, slots=3, policy="hsm"), TypeError, "T"),
    (dict(T=True, slots=3, policy="hsm"), TypeError, "T"),
    (dict(T=10, slots=3, alpha=0, policy="msm"), ValueError, "alpha"),
    (dict(T=10, slots=3, alpha=-2.0, policy="msm"), ValueError, "alpha"),
    (dict(T=10, slots=3, alpha=float("nan"), policy="msm"), ValueError, "alpha"),
    (dict(T=10, slots=3, policy="msm"), ValueError, "alpha"),  # MSM needs alpha in the abstract model
    (dict(T=10, slots=3, budget=0.5, alpha=2.0), ValueError, "slots"),
    (dict(T=10, alpha=2.0), ValueError, "budget"),
    (dict(T=10, budget="4MiB", alpha=2.0), ValueError, "budget"),
    (dict(T=10, budget=4096, alpha=2.0), ValueError, "budget"),
    (dict(T=10, slots="3", alpha=2.0), TypeError, "slots"),
    (dict(T=10, slots=3, alpha=2.0, batch=4), ValueError, "batch"),
])
def test_bad_arguments_name_the_argument(kwargs, exc, word):
    with pytest.raises(exc) as info:
        mb.plan(**kwargs)
    assert re.search(rf"\b{word}\b", str(info.value)), str(info.value)
    assert not isinstance(info.value, mb.MemoryBudgetError)


@pytest.mark.parametrize("kwargs,word", [
    (dict(budget="4MiB"), "batch"),            # model without batch
    (dict(batch=4), "budget"),                  # model without budget
    (dict(batch=4, budget="4MiB", slots=3), "slots"),
    (dict(batch=0, budget="4MiB"), "batch"),
    (dict(batch=4, budget="4 parsecs"), "budget"),
    (dict(batch=4, budget=-5), "budget"),
    (dict(batch=4, budget="4MiB", dtype="int8"), "dtype"),
])
def test_bad_model_arguments_name_the_argument(kwargs, word):
    with pytest.raises((ValueError, TypeError)) as info:
        mb.plan(10, model=MODELS["lstm"], **kwargs)
    assert word in str(info.value), str(info.value)
    assert not isinstance(info.value, mb.MemoryBudgetError)


def test_budget_error_is_a_value_error_and_says_bytes():
    with pytest.raises(ValueError, match=r"least .*\d+ bytes"):
        mb.plan(100, budget="1KiB", model=MODELS["lstm"], batch=8)


# ---- golden schedules, worked out by hand ------------------------------------------
_TOKEN = re.compile(r"^(?:advance->(\d+)|(\w+)\((\d+)@(w|\d+)\))$")


def parse(text):
    """'takeshot(0@0) advance->1 keep(2@w)' -> (op, step, slot) tuples (w = -1)."""
    out = []
    for token in text.split():
        m = _TOKEN.match(token)
        assert m, token
        if m.group(1) is not None:
            out.append(("advance", int(m.group(1)), -1))
        else:
            out.append((m.group(2), int(m.group(3)), -1 if m.group(4) == "w" else int(m.group(4))))
    return tuple(out)


# Conventions (memopt_bptt._actions): slot 0 holds s_0 first; "restore" is only
# written when the current position is not already the segment's start; "w" is
# the working internal-state buffer, valid only for the reverse right after.
GOLDEN = [
    # T=1: one step, nothing to split: run it into the working buffer and reverse. 1 forward.
    (1, 1, 1.0, ("msm", "hsm", "ism", "revolve", "sqrt", "full"),
     ["takeshot(0@0) keep(1@w) reverse(1@w)"], 1),
    # T=2, 1 slot (only s_0): C(2,1) = 2*3/2 = 3. Replay 0->1, run step 2 and reverse it,
    # restore s_0, run step 1 and reverse it.
    (2, 1, 1.0, ("hsm", "revolve", "msm", "ism"),
     ["takeshot(0@0) advance->1 keep(2@w) reverse(2@w) restore(0@0) keep(1@w) reverse(1@w)"], 3),
    # T=3, 2 slots, HSM: C(3,2) = min_y y + C(3-y,1) + C(y,2): y=1 -> 1+3+1 = 5, y=2 -> 2+1+3 = 6,
    # and replaying everything (no split) 3 + C(2,2) = 6. So checkpoint s_1 in slot 1; the right
    # part (steps 2..3, no free slot) is C(2,1) = 3; the left part is step 1 from s_0.
    (3, 2, 1.0, ("hsm", "revolve"),
     ["takeshot(0@0) advance->1 takeshot(1@1) advance->2 keep(3@w) reverse(3@w) "
      "restore(1@1) keep(2@w) reverse(2@w) restore(0@0) keep(1@w) reverse(1@w)"], 5),
    # T=3, 2 slots, alpha=1 (one free quantum, room for one internal state): keeping I_1 costs
    # 1 + R(2, 0) = 1 + 3 = 4; keeping I_2 costs 2 (run 1, 2) + 1 (step 3) + 1 (step 1) = 4;
    # the hidden split costs 5. 3 is impossible (it would keep I_1 and I_2 at once). Both
    # 4-forward schedules are optimal, so either is accepted. MSM may also write the second one
    # as a hidden split at 1 whose right part keeps I_2 over the slot of s_1 (it owns that slot
    # and never needs s_1 again): same forwards and memory, one extra copy.
    (3, 2, 1.0, ("msm", "ism"),
     ["takeshot(0@0) keep(1@1) advance->2 keep(3@w) reverse(3@w) "
      "restore_internal(1@1) keep(2@w) reverse(2@w) reverse(1@1)",
      "takeshot(0@0) advance->1 keep(2@1) keep(3@w) reverse(3@w) reverse(2@1) "
      "restore(0@0) keep(1@w) reverse(1@w)",
      "takeshot(0@0) advance->1 takeshot(1@1) keep(2@1) keep(3@w) reverse(3@w) reverse(2@1) "
      "restore(0@0) keep(1@w) reverse(1@w)"], 4),
    # T=4, full, alpha=2 (hq=1, kq=2): keep I_1..I_3 at offsets 1, 3, 5 (2 quanta each),
    # step 4 in the working buffer, then reverse 4..1. T forwards, pool 1 + 3*2 = 7 units.
    (4, 7, 2.0, ("full", "msm", "ism"),
     ["takeshot(0@0) keep(1@1) keep(2@3) keep(3@5) keep(4@w) reverse(4@w) reverse(3@5) "
      "reverse(2@3) reverse(1@1)"], 4),
    # T=5, sqrt, alpha=1: segments of ceil(sqrt(5)) = 3 steps start at 0 and 3. Forward to 3
    # and checkpoint it; reverse steps 4..5 keeping I_4; restore s_0 and reverse 1..3 keeping
    # I_1, I_2. Forwards 3 + 2 + 3 = 8; peak 3 units (s_0, s_3, I_4).
    (5, 4, 1.0, ("sqrt",),
     ["takeshot(0@0) advance->3 takeshot(3@1) keep(4@2) keep(5@w) reverse(5@w) reverse(4@2) "
      "restore(0@0) keep(1@1) keep(2@2) keep(3@w) reverse(3@w) reverse(2@2) reverse(1@1)"], 8),
]


@pytest.mark.parametrize("T,slots,alpha,policies,expected,forwards", GOLDEN)
def test_golden_schedules(T, slots, alpha, policies, expected, forwards):
    allowed = [parse(text) for text in expected]
    for text in expected:  # the hand-written rows are themselves valid, with the stated cost
        rows = np.array([[mb.OPS.index(op), step, slot] for op, step, slot in parse(text)])
        pool = max([s + 1 for o, _, s in parse(text) if o == "takeshot"]
                   + [s + int(alpha) for o, _, s in parse(text) if o == "keep" and s >= 0] + [1])
        hand = mb.Schedule(T=T, policy="hand", codes=rows, hidden_quanta=1, internal_quanta=int(alpha),
                           pool_quanta=pool, forward_steps=forwards)
        check_schedule(hand)
    for policy in policies:
        s = mb.plan(T, slots=slots, alpha=alpha, policy=policy)
        assert s.forward_steps == forwards, policy
        assert tuple(tuple(a) for a in s.actions) in allowed, (policy, [str(a) for a in s.actions])


def test_numpy_integer_T_is_accepted():
    s = mb.plan(np.int64(10), slots=3, policy="hsm")
    assert s.T == 10 and type(s.T) is int and s.forward_steps == 25
