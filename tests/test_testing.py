"""memopt_bptt.testing against independent oracles.

* check_grads: passes on every built-in cell under a budget, and fails, naming
  the parameter, the index and both values, when one entry of the gradients
  (or of dL/dh0) is deliberately wrong, and (slow) on a cell whose backward
  kernel is wrong in one entry.
* replay_schedule: its counts equal Revolve's closed forms (mb.hsm_cost,
  mb.numforw) and the exhaustive search of tests/oracles.py, and the
  executor's own count; hand-made broken schedules are rejected.
* least_budget: plan() succeeds there and fails one byte below, also when
  MemoryBudgetError.least_bytes is made wrong on purpose.
"""

from __future__ import annotations

import dataclasses
import os
import sys

import numpy as np
import pytest
from numba import njit

import memopt_bptt as mb
import memopt_bptt.testing as mbt
from memopt_bptt._actions import OP_CODES
from memopt_bptt.testing import check_grads, least_budget, replay_schedule

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from oracles import brute_force_cost  # noqa: E402

T, B, I, H, O = 8, 2, 3, 4, 2


def _data(model, T=T, B=B, seed=0):
    rng = np.random.default_rng(seed)
    xs = rng.standard_normal((T, B, model.cell.input_size))
    if model.loss == "mse":
        ys = rng.standard_normal((T, B, model.output_size))
    else:
        ys = rng.integers(0, model.output_size, size=(T, B))
    return xs, ys


CELLS = {
    "elman": lambda: mb.Elman(input_size=I, hidden_size=H),
    "jordan": lambda: mb.Jordan(input_size=I, hidden_size=H),
    "gru": lambda: mb.GRU(input_size=I, hidden_size=H),
    "lstm": lambda: mb.LSTM(input_size=I, hidden_size=H),
}


# ---- check_grads ----------------------------------------------------------------------------------

@pytest.mark.parametrize("loss", ["mse", "cross_entropy"])
@pytest.mark.parametrize("cell", sorted(CELLS))
def test_check_grads_passes_on_every_cell_under_a_budget(cell, loss):
    model = mb.Sequence(CELLS[cell](), output_size=O, loss=loss)
    params = model.init_params(seed=1)
    xs, ys = _data(model)
    budget = least_budget(model, T=T, batch=B)
    result = check_grads(model, params, xs, ys, budget=budget, check_h0=True, n_checks=3)
    assert set(result.max_rel_error) == set(params) | {"h0"}
    assert all(err < 1e-5 for err in result.max_rel_error.values()), result
    assert result.loss == mb.value_and_grad(model, params, xs, ys)[0]
    assert "cell.weight_hh" in str(result) and "h0" in str(result)


def test_check_grads_samples_entries_reproducibly():
    model = mb.Sequence(CELLS["gru"](), output_size=O)
    params = model.init_params(seed=2)
    xs, ys = _data(model, seed=3)
    every = check_grads(model, params, xs, ys, n_checks=None)
    assert every.n_checked == {k: v.size for k, v in params.items()}
    some = check_grads(model, params, xs, ys, n_checks=4, seed=7)
    assert some.n_checked == {k: min(4, v.size) for k, v in params.items()}
    assert some == check_grads(model, params, xs, ys, n_checks=4, seed=7)
    # the checked entries are distinct, so no array's sample exceeds its size (readout.bias has O = 2)
    assert some.n_checked["readout.bias"] == O


def _corrupt_budgeted_gradients(monkeypatch, name, index, delta):
    """value_and_grad as check_grads sees it, with one entry of the budgeted (analytic) run off by delta;
    the finite differences' plain-BPTT losses are untouched."""
    true_value_and_grad = mbt.value_and_grad

    def value_and_grad(*args, **kwargs):
        out = true_value_and_grad(*args, **kwargs)
        if kwargs.get("budget") is not None:
            target = out[2] if name == "h0" else out[1][name]
            target[index] += delta
        return out

    monkeypatch.setattr(mbt, "value_and_grad", value_and_grad)


@pytest.mark.parametrize("name,index", [("cell.bias_hh", (1,)), ("cell.weight_hh", (2, 3)), ("h0", (0, 1))])
def test_check_grads_fails_on_one_wrong_entry_naming_it(monkeypatch, name, index):
    model = mb.Sequence(CELLS["gru"](), output_size=O)
    params = model.init_params(seed=4)
    xs, ys = _data(model, seed=5)
    budget = least_budget(model, T=T, batch=B)
    _, grads, dh0 = mb.value_and_grad(model, params, xs, ys, budget=budget, return_h0_grad=True)
    right = (dh0 if name == "h0" else grads[name])[index]
    delta = 1e-3 * max(abs(right), 1e-3)   # small: 0.1% of the entry
    _corrupt_budgeted_gradients(monkeypatch, name, index, delta)
    with pytest.raises(AssertionError) as info:
        check_grads(model, params, xs, ys, budget=budget, check_h0=True, n_checks=None)
    message = str(info.value)
    assert (f"'{name}'" if name != "h0" else "dL/dh0") in message and str(index) in message
    assert repr(float(right + delta)) in message        # the analytic value as value_and_grad gave it
    monkeypatch.undo()
    check_grads(model, params, xs, ys, budget=budget, check_h0=True, n_checks=None)   # and passes unbroken


@njit(cache=True)
def _elman_backward_off_in_one_bias(w_ih, w_hh, b_ih, b_hh, w_out, b_out, x, internal, ds, ds_prev,
                                    g_w_ih, g_w_hh, g_b_ih, g_b_hh, g_w_out, g_b_out, work):
    _ELMAN_BACKWARD(w_ih, w_hh, b_ih, b_hh, w_out, b_out, x, internal, ds, ds_prev,
                    g_w_ih, g_w_hh, g_b_ih, g_b_hh, g_w_out, g_b_out, work)
    g_b_hh[1] += 1e-3 * ds[0]   # wrong, and small: one entry of one bias


_ELMAN_BACKWARD = mb.Elman(input_size=I, hidden_size=H).backward_step


@pytest.mark.slow   # compiles a sweep for its own cell; the test above covers the check without one
def test_check_grads_fails_on_a_wrong_backward_kernel():
    base = mb.Elman(input_size=I, hidden_size=H)
    wrong = dataclasses.replace(base, kind="elman_wrong_bias", backward_step=_elman_backward_off_in_one_bias)
    model = mb.Sequence(wrong, output_size=O)
    params = model.init_params(seed=4)
    xs, ys = _data(model, seed=5)
    with pytest.raises(AssertionError) as info:
        check_grads(model, params, xs, ys, n_checks=None)
    message = str(info.value)
    assert "'cell.bias_hh'" in message and "(1,)" in message
    analytic = mb.value_and_grad(model, params, xs, ys)[1]["cell.bias_hh"][1]
    assert repr(float(analytic)) in message
    # the same parameters pass with the right kernel: only that entry is wrong
    result = check_grads(mb.Sequence(base, output_size=O), params, xs, ys, n_checks=None)
    assert result.max_rel_error["cell.bias_hh"] < 1e-6


def test_check_grads_needs_float64_and_names_the_argument():
    model = mb.Sequence(CELLS["elman"](), output_size=O)
    params = model.init_params(seed=0)
    xs, ys = _data(model)
    p32 = {k: v.astype(np.float32) for k, v in params.items()}
    with pytest.raises(TypeError, match=r"params\['cell.weight_ih'\] is float32.*float64"):
        check_grads(model, p32, xs.astype(np.float32), ys.astype(np.float32))
    with pytest.raises(TypeError, match=r"xs is float32"):
        check_grads(model, params, xs.astype(np.float32), ys)
    with pytest.raises(TypeError, match=r"model must be a memopt_bptt.Sequence"):
        check_grads(object(), params, xs, ys)


@pytest.mark.parametrize("kwargs,name", [
    ({"eps": 0.0}, "eps"), ({"eps": float("nan")}, "eps"), ({"rtol": -1.0}, "rtol"),
    ({"atol": "1e-7"}, "atol"), ({"n_checks": 0}, "n_checks"), ({"n_checks": 2.5}, "n_checks"),
    ({"seed": 1.5}, "seed"), ({"check_h0": 1}, "check_h0"),
])
def test_check_grads_bad_settings_name_the_argument(kwargs, name):
    model = mb.Sequence(CELLS["elman"](), output_size=O)
    params = model.init_params(seed=0)
    xs, ys = _data(model)
    with pytest.raises((TypeError, ValueError), match=rf"check_grads: {name}="):
        check_grads(model, params, xs, ys, **kwargs)


# ---- replay_schedule ------------------------------------------------------------------------------

def test_replay_counts_equal_revolves_closed_form():
    for t in range(1, 31):
        for m in range(1, 6):
            for policy in ("hsm", "revolve"):
                s = mb.plan(t, slots=m, policy=policy)
                r = replay_schedule(s)
                assert r.forward_steps == mb.hsm_cost(t, m), (t, m, policy)
                if t > 1:
                    assert r.forward_steps == t + mb.numforw(t, m), (t, m, policy)
                assert r.reversals == t and r.working_keeps == t and r.keeps == 0
                assert r.peak_hidden <= m and r.peak_quanta <= s.pool_quanta


@pytest.mark.parametrize("policy,flags", [("msm", (True, True)), ("ism", (False, True)), ("hsm", (True, False))])
def test_replay_counts_equal_exhaustive_search(policy, flags):
    hq, kq = 2, 7   # alpha = 3.5, the LSTM's
    for t in range(1, 7):
        for free in range(0, (t - 1) * kq + 1, 3):
            s = mb.plan(t, slots=1 + free / hq, alpha=kq / hq, policy=policy)
            assert (s.hidden_quanta, s.internal_quanta) == (hq, kq)
            r = replay_schedule(s)
            assert r.forward_steps == brute_force_cost(t, free, hq, kq, *flags), (t, free)
            assert r.peak_quanta <= hq + free


def test_replay_of_plain_bptt_and_sqrt():
    r = replay_schedule(mb.plan(50, slots=1 + 49 * 2, alpha=2, policy="full"))
    assert (r.forward_steps, r.keeps, r.working_keeps, r.restores, r.reversals) == (50, 49, 1, 0, 50)
    assert r.peak_internal == 49
    s = mb.plan(100, slots=100, alpha=2, policy="sqrt")
    r = replay_schedule(s)
    # a checkpoint every ceil(sqrt(T)) = 10 steps, each segment replayed once
    assert r.takeshots == 10 and r.forward_steps == 2 * 100 - 10 and r.reversals == 100


@pytest.mark.parametrize("policy", mb.POLICIES)
def test_replay_agrees_with_the_executors_count(policy):
    model = mb.Sequence(CELLS["lstm"](), output_size=O)
    params = model.init_params(seed=0)
    xs, ys = _data(model, T=12)
    least = least_budget(model, T=12, batch=B, policy=policy)
    for budget in sorted({least, least + 300, least + 3000}):
        s = mb.plan(12, budget=budget, model=model, batch=B, policy=policy)
        r = replay_schedule(s)
        _, _, report = mb.value_and_grad(model, params, xs, ys, schedule=s, return_report=True)
        assert r.forward_steps == report.forward_steps == s.forward_steps
        assert r.peak_hidden == s.n_hidden_slots and r.peak_internal == s.n_internal_slots
        assert r.peak_quanta * s.quantum_bytes <= s.pool_bytes


def _schedule(T, rows, *, pool, forwards, hq=1, kq=2):
    codes = [[OP_CODES[op], step, slot] for op, step, slot in rows]
    return mb.Schedule(T=T, policy="hand", codes=np.array(codes, np.int64).reshape(-1, 3), hidden_quanta=hq,
                       internal_quanta=kq, pool_quanta=pool, forward_steps=forwards)


GOOD = [("takeshot", 0, 0), ("keep", 1, 1), ("keep", 2, -1), ("reverse", 2, -1), ("reverse", 1, 1)]
BROKEN = {
    "a step never reversed": (GOOD[:-1], 3, 2, "never reversed"),
    "reversal out of order": ([("takeshot", 0, 0), ("keep", 1, 1), ("keep", 2, -1), ("reverse", 1, 1),
                               ("reverse", 2, -1)], 3, 2, "next step to reverse is 2"),
    "restore of a position the slot does not hold": (
        [("takeshot", 0, 0), ("advance", 1, -1), ("keep", 2, -1), ("reverse", 2, -1), ("restore", 1, 0),
         ("keep", 1, -1), ("reverse", 1, -1)], 3, 3, "should hold the hidden state of position 1"),
    "internal state clobbered by a snapshot": (
        [("takeshot", 0, 0), ("keep", 1, 1), ("takeshot", 1, 2), ("keep", 2, -1), ("reverse", 2, -1),
         ("reverse", 1, 1)], 3, 2, "slot 1 should hold the internal state of position 1, holds nothing"),
    "checkpoint outside the pool": (GOOD, 2, 2, "outside the pool of 2 quanta"),
    "working buffer reversed too late": (
        [("takeshot", 0, 0), ("keep", 1, 1), ("keep", 2, -1), ("takeshot", 2, 0), ("reverse", 2, -1),
         ("reverse", 1, 1)], 3, 2, "working buffer"),
    "forward from the wrong position": (
        [("takeshot", 0, 0), ("keep", 2, -1), ("reverse", 2, -1), ("keep", 1, -1), ("reverse", 1, -1)], 1, 2,
        "keep of step 2 from position 0"),
    "snapshot of a position other than the current one": (
        [("takeshot", 1, 0)] + GOOD[1:], 3, 2, "snapshot of position 1"),
    "a declared forward count the actions do not run": (GOOD, 3, 3, "the schedule says forward_steps=3"),
}


def test_replay_accepts_a_hand_made_schedule():
    r = replay_schedule(_schedule(2, GOOD, pool=3, forwards=2))
    assert r == mbt.Replay(forward_steps=2, keeps=1, working_keeps=1, reversals=2, takeshots=1, restores=0,
                           internal_restores=0, peak_quanta=3, peak_hidden=1, peak_internal=1)


@pytest.mark.parametrize("case", sorted(BROKEN))
def test_replay_rejects_broken_schedules(case):
    rows, pool, forwards, message = BROKEN[case]
    with pytest.raises(AssertionError, match="replay_schedule: .*" + message.replace("(", r"\(")):
        replay_schedule(_schedule(2, rows, pool=pool, forwards=forwards))


def test_replay_needs_a_schedule():
    with pytest.raises(TypeError, match="schedule must be a memopt_bptt.Schedule"):
        replay_schedule([("takeshot", 0, 0)])


# ---- least_budget -----------------------------------------------------------------------------------

@pytest.mark.parametrize("policy", mb.POLICIES)
@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_least_budget_is_the_boundary(cell, policy):
    model = mb.Sequence(CELLS[cell](), output_size=O)
    for steps, dtype in ((1, "float64"), (30, "float64"), (30, "float32")):
        least = least_budget(model, T=steps, batch=3, policy=policy, dtype=dtype)
        s = mb.plan(steps, budget=least, model=model, batch=3, policy=policy, dtype=dtype)
        assert s.peak_bytes <= least
        with pytest.raises(mb.MemoryBudgetError) as info:
            mb.plan(steps, budget=least - 1, model=model, batch=3, policy=policy, dtype=dtype)
        assert info.value.least_bytes == least
        with pytest.raises(mb.MemoryBudgetError):
            mb.plan(steps, budget=least // 2, model=model, batch=3, policy=policy, dtype=dtype)


def _lying_plan(monkeypatch, wrong):
    """Make plan()'s MemoryBudgetError report least_bytes = wrong(true least)."""
    true_plan = mbt.plan

    def plan(*args, **kwargs):
        try:
            return true_plan(*args, **kwargs)
        except mb.MemoryBudgetError as exc:
            raise mb.MemoryBudgetError(str(exc), least_bytes=wrong(exc.least_bytes)) from None

    monkeypatch.setattr(mbt, "plan", plan)


@pytest.mark.parametrize("wrong", [lambda n: 3 * n + 17, lambda n: None, lambda n: n - 1],
                         ids=["too-high", "missing", "too-low"])
def test_least_budget_finds_the_boundary_when_the_error_is_wrong(monkeypatch, wrong):
    model = mb.Sequence(CELLS["lstm"](), output_size=O)
    true = least_budget(model, T=20, batch=B)
    _lying_plan(monkeypatch, wrong)
    assert least_budget(model, T=20, batch=B) == true


def test_least_budget_runs_in_value_and_grad():
    model = mb.Sequence(CELLS["elman"](), output_size=O)
    params = model.init_params(seed=0)
    xs, ys = _data(model, T=16)
    least = least_budget(model, T=16, batch=B)
    loss, grads = mb.value_and_grad(model, params, xs, ys, budget=least)
    plain_loss, plain = mb.value_and_grad(model, params, xs, ys)
    assert loss == plain_loss and all(np.array_equal(grads[k], plain[k]) for k in plain)
    assert mb.plan(16, budget=least, model=model, batch=B).budget_bytes == least


@pytest.mark.parametrize("kwargs,name,exc", [
    ({"T": 0}, "T", ValueError), ({"T": 2.0}, "T", ValueError), ({"batch": True}, "batch", ValueError),
    ({"policy": "best"}, "policy", ValueError),
])
def test_least_budget_bad_arguments_name_themselves(kwargs, name, exc):
    model = mb.Sequence(CELLS["elman"](), output_size=O)
    args = {"T": 5, "batch": 2, **kwargs}
    with pytest.raises(exc, match=rf"least_budget: {name}="):
        least_budget(model, **args)
    with pytest.raises(TypeError, match="least_budget: model"):
        least_budget("lstm", T=5, batch=2)


def test_public_names():
    assert sorted(mbt.__all__) == ["GradCheck", "Replay", "check_grads", "least_budget", "replay_schedule"]
    for name in mbt.__all__:
        assert getattr(mbt, name).__doc__
