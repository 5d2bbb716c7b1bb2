"""The predicted time ratio with a price on checkpoint bytes (Schedule.byte_cost).

Oracle: the formula written out by hand from the schedule's counts (forward
steps, pool quanta) and plain BPTT's pool, T-1 internal states plus the
initial state, computed here from the model's sizes rather than read from
the planner.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

import memopt_bptt as mb

MODEL = mb.Sequence(mb.LSTM(input_size=4, hidden_size=8), output_size=3)
T, BATCH = 60, 4


def test_time_ratio_prices_pool_bytes():
    sizes = MODEL.sizes(batch=BATCH)
    plain_pool = sizes.state_bytes + (T - 1) * sizes.internal_bytes   # h0 + T-1 internal states
    rho, cost = 1.5, 3e-4
    s = mb.plan(T, budget=0.2, model=MODEL, batch=BATCH, backward_forward_ratio=rho, byte_cost=cost)
    expect = (s.forward_steps + T * rho + cost * s.pool_bytes) / (T * (1 + rho) + cost * plain_pool)
    assert math.isclose(s.time_ratio, expect, rel_tol=1e-12)
    # pricing bytes favours the small pool: the ratio drops below the steps-only one
    steps_only = mb.plan(T, budget=0.2, model=MODEL, batch=BATCH, backward_forward_ratio=rho)
    assert steps_only.byte_cost == 0.0
    assert math.isclose(steps_only.time_ratio, (s.forward_steps + T * rho) / (T * (1 + rho)), rel_tol=1e-12)
    assert s.time_ratio < steps_only.time_ratio
    assert s.codes.tobytes() == steps_only.codes.tobytes()  # the price changes the prediction, not the plan
    full = mb.plan(T, budget=1.0, model=MODEL, batch=BATCH, policy="full", byte_cost=cost)
    assert full.pool_bytes == plain_pool
    assert full.time_ratio == pytest.approx(1.0, rel=1e-12)


def test_byte_cost_round_trips_and_old_json_loads():
    s = mb.plan(T, budget=0.3, model=MODEL, batch=BATCH, byte_cost=2.5e-4)
    back = mb.Schedule.from_json(s.to_json())
    assert back == s and back.byte_cost == 2.5e-4 and back.time_ratio == s.time_ratio
    data = json.loads(s.to_json())
    del data["byte_cost"]  # a schedule saved by 0.2
    old = mb.Schedule.from_json(json.dumps(data))
    assert old.byte_cost == 0.0


@pytest.mark.parametrize("bad, error", [(-1.0, ValueError), (float("nan"), ValueError), (float("inf"), ValueError),
                                        ("1e-4", TypeError), (True, TypeError)])
def test_bad_byte_cost_is_rejected(bad, error):
    """Out of range: ValueError; not a number at all: TypeError; both name the argument."""
    with pytest.raises(error, match="byte_cost"):
        mb.plan(T, budget=0.3, model=MODEL, batch=BATCH, byte_cost=bad)


def test_byte_cost_needs_a_model():
    with pytest.raises(ValueError, match="byte_cost"):
        mb.plan(T, slots=5, alpha=2.0, byte_cost=1e-4)


def test_measure_byte_cost_is_a_nonnegative_rate():
    m = mb.measure_byte_cost(MODEL, batch=BATCH, dtype="float64", T=50, repeats=3)
    assert np.isfinite(m) and m >= 0.0
    for bad in (dict(T=0), dict(repeats=0), dict(T=2.5)):
        with pytest.raises(ValueError, match=next(iter(bad))):
            mb.measure_byte_cost(MODEL, batch=BATCH, **bad)
