"""Tests for lanes: the batch split into independent sweeps on separate threads.

Oracles: finite differences of the independent numpy reference (tests/
reference.py), a one-lane run of the same network (another summation order,
so equal to rounding, not bit for bit), plain BPTT of the same lanes model
(every policy and budget bit-identical to it), and a sequential run of the
lanes (bit-identical to the threaded one).
"""

from __future__ import annotations

import collections
import os
import sys
import tracemalloc

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import memopt_bptt as mb
import memopt_bptt._executor._runner as runner
from memopt_bptt import _split
import memopt_bptt._plans as plans

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _tracing import kept_bytes, least_bytes, runs_at_a_budget_between  # noqa: E402
from reference import finite_difference_grads, max_relative_error, reference_loss  # noqa: E402

CELLS = {
    "lstm": lambda i, h: mb.LSTM(input_size=i, hidden_size=h),
    "lstm_chunk3": lambda i, h: mb.LSTM(input_size=i, hidden_size=h, grad_chunk=3),
    "gru": lambda i, h: mb.GRU(input_size=i, hidden_size=h),
    "elman_relu": lambda i, h: mb.Elman(input_size=i, hidden_size=h, nonlinearity="relu"),
    "jordan": lambda i, h: mb.Jordan(input_size=i, hidden_size=h),
}
POLICIES = ("msm", "hsm", "ism", "revolve", "sqrt")


def problem(kind, loss, *, T, batch, lanes, input_size=2, hidden=3, output=2, seed=0):
    model = mb.Sequence(CELLS[kind](input_size, hidden), output_size=output, loss=loss, lanes=lanes)
    params = model.init_params(seed=seed)
    rng = np.random.default_rng(seed + 1)
    xs = rng.normal(size=(T, batch, input_size))
    ys = rng.normal(size=(T, batch, output)) if loss == "mse" else rng.integers(0, output, size=(T, batch))
    h0 = rng.normal(scale=0.5, size=model.state_shape(batch))
    return model, params, xs, ys, h0


def test_lane_batches_rule():
    small = mb.Sequence(mb.LSTM(64, 64), output_size=16)
    assert small.lane_batches(16) == (8, 8)
    assert small.lane_batches(8) == (4, 4)          # 4*64*64*8 = 2^17 multiply-adds: the smallest split
    assert small.lane_batches(7) == (7,)            # fewer than MIN_LANE_BATCH rows per lane
    assert mb.Sequence(mb.LSTM(64, 256), output_size=16).lane_batches(16) == (16,)  # two BLAS threads win
    # wide batches: lanes where a second accumulator is at most LANE_MAX_ACCUMULATOR_STATES hidden states
    wide = mb.Sequence(mb.LSTM(64, 256), output_size=16)
    assert _split.lane_accumulator_states(wide, 64) == pytest.approx(333_840 / (64 * 512))  # 10.2
    assert wide.lane_batches(64) == (32, 32) and wide.lane_batches(128) == (64, 64)
    assert wide.lane_batches(32) == (32,)                                 # 20.2 states: unit threads
    assert mb.Sequence(mb.LSTM(64, 512), output_size=16).lane_batches(64) == (64,)   # 18.2
    assert mb.Sequence(mb.LSTM(64, 512), output_size=16).lane_batches(73) == (37, 36)
    gru = mb.Sequence(mb.GRU(64, 256), output_size=16)                   # no unit threads: BLAS threads or lanes
    assert gru.lane_batches(64) == (32, 32) and gru.lane_batches(61) == (61,)  # 15.3 / 16.1 states
    assert gru.lane_batches(16) == (16,)                                  # 61.4
    assert mb.Sequence(mb.LSTM(2, 8), output_size=1).lane_batches(16) == (16,)      # too small to pay
    forced = mb.Sequence(mb.GRU(2, 3), output_size=2, lanes=3)
    assert forced.lane_batches(7) == (3, 2, 2)
    assert forced.lane_batches(2) == (1, 1)          # at most one lane per row
    assert mb.Sequence(mb.LSTM(64, 64), output_size=16, lanes=1).lane_batches(16) == (16,)
    assert "lanes=3" in repr(forced)


@pytest.mark.parametrize("bad", [0, -1, 2.0, "2", True])
def test_bad_lanes_is_rejected(bad):
    with pytest.raises(ValueError, match="lanes"):
        mb.Sequence(mb.GRU(2, 3), output_size=2, lanes=bad)


def test_lanes_are_charged_to_the_budget():
    one = mb.Sequence(mb.LSTM(4, 8), output_size=3, lanes=1).sizes(batch=6)
    two = mb.Sequence(mb.LSTM(4, 8), output_size=3, lanes=2).sizes(batch=6)
    params = sum(int(np.prod(s)) for s in mb.Sequence(mb.LSTM(4, 8), output_size=3).param_shapes.values())
    assert two.lanes == (3, 3) and one.lanes == ()
    # each lane's buffers (linear in the batch here) + its rows of 2 steps' inputs + one more gradient
    # accumulator + the lanes' Python objects
    extra = two.working_bytes - one.working_bytes
    python = 2 * mb._split.LANE_PYTHON_BYTES
    assert extra == (2 * 2 * 3 * 4 + params) * 8 + python


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(kind=st.sampled_from(sorted(CELLS)), loss=st.sampled_from(["mse", "cross_entropy"]),
       T=st.integers(1, 20), batch=st.integers(2, 7), lanes=st.integers(2, 4), seed=st.integers(0, 2**16),
       frac=st.floats(0.0, 1.0))
def test_lanes_every_policy_is_bit_identical_to_their_plain_bptt(kind, loss, T, batch, lanes, seed, frac):
    model, params, xs, ys, h0 = problem(kind, loss, T=T, batch=batch, lanes=lanes, seed=seed)
    norms_ref = np.zeros(T + 1)
    reference = mb.value_and_grad(model, params, xs, ys, h0=h0, return_h0_grad=True, ds_norms=norms_ref)
    # one lane: the same network summed in another order
    one = mb.Sequence(model.cell, output_size=model.output_size, loss=loss, lanes=1)
    norms_one = np.zeros(T + 1)
    single = mb.value_and_grad(one, params, xs, ys, h0=h0, return_h0_grad=True, ds_norms=norms_one)
    assert abs(reference[0] - single[0]) <= 1e-12 * max(1.0, abs(single[0]))
    for name in single[1]:
        assert max_relative_error(reference[1][name], single[1][name]) < 1e-11, name
    assert np.allclose(reference[2], single[2], rtol=1e-11, atol=1e-14)
    assert np.allclose(norms_ref, norms_one, rtol=1e-11, atol=1e-14)
    for policy, _, result in runs_at_a_budget_between(model, params, xs, ys, T, batch, frac, POLICIES,
                                                      h0=h0, return_h0_grad=True):
        assert result[0] == reference[0], policy
        for name in reference[1]:
            assert np.array_equal(result[1][name], reference[1][name]), f"{policy}: {name}"
        assert np.array_equal(result[2], reference[2]), f"{policy}: dL/dh0"


@pytest.mark.parametrize("kind", ["lstm", "gru", "jordan"])
def test_lanes_match_finite_differences(kind):
    T, batch = 5, 3
    model, params, xs, ys, h0 = problem(kind, "cross_entropy", T=T, batch=batch, lanes=3, output=3)
    budget = least_bytes(model, T, batch) + 2 * model.sizes(batch=batch).state_bytes
    loss, grads, dh0 = mb.value_and_grad(model, params, xs, ys, h0=h0, return_h0_grad=True, budget=budget)
    ref = reference_loss(kind, params, xs, ys, loss="cross_entropy", h0=h0)
    assert abs(loss - ref) < 1e-12
    fd, fd_h0 = finite_difference_grads(
        lambda p, h: reference_loss(kind, p, xs, ys, loss="cross_entropy", h0=h), params, h0)
    for name in grads:
        assert max_relative_error(grads[name], fd[name]) < 1e-6, name
    assert max_relative_error(dh0, fd_h0) < 1e-6


def test_sequential_lanes_give_the_same_bits_as_threads(monkeypatch):
    model, params, xs, ys, h0 = problem("lstm", "mse", T=30, batch=8, lanes=2, hidden=5)
    budget = least_bytes(model, 30, 8) + 5 * model.sizes(batch=8).state_bytes
    threaded = mb.value_and_grad(model, params, xs, ys, h0=h0, return_h0_grad=True, budget=budget)
    monkeypatch.setattr(runner, "usable_cpus", lambda: 1)
    sequential = mb.value_and_grad(model, params, xs, ys, h0=h0, return_h0_grad=True, budget=budget)
    assert threaded[0] == sequential[0]
    for name in threaded[1]:
        assert np.array_equal(threaded[1][name], sequential[1][name]), name
    assert np.array_equal(threaded[2], sequential[2])


def test_float32_lanes_are_bit_identical_across_policies():
    model, params, xs, ys, h0 = problem("lstm", "mse", T=40, batch=16, lanes=None, input_size=8, hidden=64)
    assert model.sizes(batch=16).lanes == (8, 8)
    params = {k: v.astype(np.float32) for k, v in params.items()}
    xs, ys = xs.astype(np.float32), ys.astype(np.float32)
    reference = mb.value_and_grad(model, params, xs, ys)
    lo = mb.plan(40, budget=1.0, model=model, batch=16, dtype="float32").working_bytes
    for budget in (lo + 100_000, lo + 400_000):
        result = mb.value_and_grad(model, params, xs, ys, budget=budget)
        assert result[0] == reference[0]
        for name in reference[1]:
            assert np.array_equal(result[1][name], reference[1][name]), name


def test_lanes_stay_within_the_budget():
    T, batch = 30, 8
    model, params, xs, ys, _ = problem("gru", "mse", T=T, batch=batch, lanes=2, input_size=3, hidden=16)
    schedule = mb.plan(T, budget=least_bytes(model, T, batch) + 20_000, model=model, batch=batch)
    assert schedule.forward_steps > T  # a real budget, not plain BPTT
    kept = kept_bytes(model, params, xs, ys, schedule)
    assert kept <= schedule.budget_bytes + mb._model.PYTHON_OVERHEAD_BYTES, (kept, schedule.budget_bytes)
    assert schedule.peak_bytes - 16 * 1024 <= kept  # the lanes' buffers are really there


def test_schedule_planned_without_lanes_is_rejected():
    model, params, xs, ys, _ = problem("gru", "mse", T=10, batch=4, lanes=2)
    one = mb.Sequence(model.cell, output_size=model.output_size, lanes=1)
    schedule = mb.plan(10, budget=least_bytes(model, 10, 4) + 1000, model=one, batch=4)
    with pytest.raises(ValueError, match="working bytes"):
        mb.value_and_grad(model, params, xs, ys, schedule=schedule)


def test_value_and_grad_reuses_its_plans(monkeypatch):
    model, params, xs, ys, _ = problem("gru", "mse", T=12, batch=4, lanes=2)
    calls = []
    real = plans.plan

    def counting(*args, **kwargs):
        calls.append(kwargs.get("budget"))
        return real(*args, **kwargs)

    monkeypatch.setattr(plans, "_PLANS", collections.OrderedDict())
    monkeypatch.setattr(plans, "plan", counting)
    budget = least_bytes(model, 12, 4) + 3000
    first = mb.value_and_grad(model, params, xs, ys, budget=budget)
    again = mb.value_and_grad(model, params, xs, ys, budget=budget)
    assert len(calls) == 1
    assert first[0] == again[0] and all(np.array_equal(first[1][k], again[1][k]) for k in first[1])
    mb.value_and_grad(model, params, xs, ys, budget=budget + 500)      # another budget plans again
    mb.value_and_grad(model, params, xs[:10], ys[:10], budget=budget)  # another T too
    assert len(calls) == 3
    for k in range(plans.PLAN_CACHE_SIZE + 2):                       # the cache stays bounded
        mb.value_and_grad(model, params, xs, ys, budget=budget + 10 * (k + 1))
    assert len(plans._PLANS) == plans.PLAN_CACHE_SIZE


@pytest.mark.parametrize("lanes", [1, 2])
def test_a_failed_sweep_with_a_report_stops_tracing(lanes):
    model, params, xs, ys, _ = problem("elman_relu", "mse", T=6, batch=4, lanes=lanes)
    huge = {k: np.abs(v) * 1e200 for k, v in params.items()}  # h overflows to inf in float64
    with pytest.raises(FloatingPointError, match="not finite"):
        mb.value_and_grad(model, huge, np.abs(xs) + 1.0, ys, return_report=True)
    assert not tracemalloc.is_tracing()


def test_too_small_a_budget_points_at_lanes_1():
    model = mb.Sequence(mb.LSTM(64, 64), output_size=16)
    assert model.lane_batches(16) == (8, 8)
    with pytest.raises(mb.MemoryBudgetError, match=r"lanes=1"):
        mb.plan(20, budget=0.05, model=model, batch=16, dtype="float32")
    one = mb.Sequence(mb.LSTM(64, 64), output_size=16, lanes=1)
    sizes = model.sizes(batch=16, dtype="float32")
    # the least budget without lanes is less by exactly what the lanes add
    extra = least_bytes(model, 20, 16, dtype="float32") - least_bytes(one, 20, 16, dtype="float32")
    assert extra == sizes.lane_extra_len * 4
