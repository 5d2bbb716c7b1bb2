"""The LSTM's and GRU's deferred weight gradients at small batches: more steps per flush.

``LSTM(grad_chunk=None)`` (the default; ``GRU`` alike) sums 2 steps of weight gradients per
GEMM, or enough steps to make 8 rows at batches under 4 when its weights are
large, 64 rows at every batch when they are larger still (``Cell.chunk_steps``,
``auto_chunk_rows``). Oracles: the same network with an explicit
``grad_chunk=2`` (the same sums in another order: equal to rounding), plain
BPTT of the same model (every policy and budget bit-identical to it), and
the charge worked out from the documented rule.
"""

from __future__ import annotations

import os
import sys

import numpy as np
import pytest

import memopt_bptt as mb
from memopt_bptt.cells._base import CHUNK_ROWS_MIN_WEIGHTS, CHUNK_WIDE_MIN_WEIGHTS

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _tracing import least_bytes  # noqa: E402
from reference import max_relative_error  # noqa: E402


def test_the_rule():
    big = mb.LSTM(64, 128)
    assert 4 * 128 * (128 + 64) >= CHUNK_ROWS_MIN_WEIGHTS > 4 * 64 * (64 + 64)
    assert [big.chunk_steps(rows) for rows in (1, 2, 3, 4, 5, 16, 64)] == [8, 4, 3, 2, 2, 2, 2]
    assert [mb.LSTM(64, 64).chunk_steps(rows) for rows in (1, 2, 16)] == [2, 2, 2]  # small weights: 2
    assert [mb.LSTM(64, 128, grad_chunk=3).chunk_steps(rows) for rows in (1, 16)] == [3, 3]  # asked for
    gru = mb.GRU(64, 128)  # the GRU's weights (3 hidden x (hidden + input)) take the same rule
    assert 3 * 128 * (128 + 64) >= CHUNK_ROWS_MIN_WEIGHTS > 3 * 64 * (64 + 64)
    assert [gru.chunk_steps(rows) for rows in (1, 2, 3, 4, 16)] == [8, 4, 3, 2, 2]
    assert [mb.GRU(64, 64).chunk_steps(rows) for rows in (1, 16)] == [2, 2]
    assert [mb.GRU(64, 128, grad_chunk=1).chunk_steps(rows) for rows in (1, 16)] == [1, 1]
    assert mb.Elman(64, 128).chunk_steps(1) == 0  # no deferred gradients
    # Weights whose gradient outgrows the caches: 64 rows at every batch (2 steps at least).
    assert 3 * 1024 * (1024 + 64) >= CHUNK_WIDE_MIN_WEIGHTS > 4 * 768 * (768 + 64)
    for wide in (mb.LSTM(64, 1024), mb.GRU(64, 1024), mb.LSTM(3072, 256)):
        assert [wide.chunk_steps(rows) for rows in (1, 3, 16, 17, 32, 64, 128)] == [64, 22, 4, 4, 2, 2, 2]
    assert [mb.LSTM(64, 768).chunk_steps(rows) for rows in (1, 16)] == [8, 2]  # below: the 8-row rule
    assert [mb.LSTM(64, 1024, grad_chunk=2).chunk_steps(rows) for rows in (1, 16)] == [2, 2]  # asked for
    assert repr(big) == "Cell(kind='lstm', input_size=64, hidden_size=128)"
    assert "grad_chunk=2" in repr(mb.LSTM(64, 128, grad_chunk=2))
    with pytest.raises(ValueError, match="grad_chunk=0 must be a positive int"):
        mb.LSTM(64, 128, grad_chunk=0)


@pytest.mark.parametrize("batch, steps", [(1, 8), (2, 4), (3, 3), (4, 2)])
def test_the_charge_is_the_rule(batch, steps):
    H, I, O = 128, 64, 3
    auto = mb.Sequence(mb.LSTM(I, H), output_size=O, unit_threads=1, lanes=1).sizes(batch=batch)
    two = mb.Sequence(mb.LSTM(I, H, grad_chunk=2), output_size=O, unit_threads=1, lanes=1).sizes(batch=batch)
    assert auto.chunk_len == steps * 5 * batch * H     # the block of deferred gate and input gradients
    assert auto.working_bytes - two.working_bytes == (steps - 2) * 5 * batch * H * auto.itemsize


@pytest.mark.parametrize("batch, steps", [(1, 64), (16, 4), (64, 2)])
def test_the_wide_charge_is_the_rule(batch, steps):
    H, I, O = 1024, 64, 3
    auto = mb.Sequence(mb.GRU(I, H), output_size=O, unit_threads=1, lanes=1).sizes(batch=batch)
    assert auto.chunk_len == steps * 5 * batch * H


@pytest.mark.parametrize("make", [mb.LSTM, mb.GRU])
@pytest.mark.parametrize("batch", [1, 2])
def test_more_steps_per_flush_keep_the_bits_across_policies(batch, make):
    T, I, H, O = 37, 64, 128, 3
    model = mb.Sequence(make(I, H), output_size=O, unit_threads=1, lanes=1)
    two = mb.Sequence(make(I, H, grad_chunk=2), output_size=O, unit_threads=1, lanes=1)
    params = model.init_params(seed=4)
    rng = np.random.default_rng(4)
    xs, ys = rng.normal(size=(T, batch, I)), rng.normal(size=(T, batch, O))
    loss, grads = mb.value_and_grad(model, params, xs, ys)
    loss2, grads2 = mb.value_and_grad(two, params, xs, ys)  # the same sums, two steps at a time
    assert abs(loss - loss2) <= 1e-13 * abs(loss2)
    for name in grads:
        assert max_relative_error(grads[name], grads2[name]) < 1e-11, name
    for policy in ("msm", "revolve", "sqrt"):
        tight = least_bytes(model, T, batch, policy=policy) + 3 * model.sizes(batch=batch).state_bytes
        for budget in (tight, 0.5):
            got = mb.value_and_grad(model, params, xs, ys, budget=budget, policy=policy)
            assert got[0] == loss, (policy, budget)
            for name in grads:
                assert np.array_equal(got[1][name], grads[name]), (policy, budget, name)


def test_wide_blocks_keep_the_bits_across_policies():
    """64 rows at batch 3: blocks of 22 steps, the last of T = 37 partial; two unit threads."""
    T, I, H, O, batch = 37, 3072, 256, 3, 3
    model = mb.Sequence(mb.LSTM(I, H), output_size=O, unit_threads=2, lanes=1)
    assert model.cells[0].chunk_steps(batch) == 22
    two = mb.Sequence(mb.LSTM(I, H, grad_chunk=2), output_size=O, unit_threads=2, lanes=1)
    params = model.init_params(seed=5)
    rng = np.random.default_rng(5)
    xs, ys = rng.normal(size=(T, batch, I)), rng.normal(size=(T, batch, O))
    loss, grads = mb.value_and_grad(model, params, xs, ys)
    loss2, grads2 = mb.value_and_grad(two, params, xs, ys)
    assert abs(loss - loss2) <= 1e-13 * abs(loss2)
    for name in grads:
        assert max_relative_error(grads[name], grads2[name]) < 1e-11, name
    for policy in ("msm", "revolve"):
        tight = least_bytes(model, T, batch, policy=policy) + 3 * model.sizes(batch=batch).state_bytes
        for budget in (tight, 0.5):
            got = mb.value_and_grad(model, params, xs, ys, budget=budget, policy=policy)
            assert got[0] == loss, (policy, budget)
            for name in grads:
                assert np.array_equal(got[1][name], grads[name]), (policy, budget, name)
