"""Tests for unit threads: every step's hidden units split between threads.

Oracles: finite differences of the independent numpy reference (tests/
reference.py), PyTorch's nn.LSTM, a one-thread run of the same network
(another summation order in the GEMMs, so equal to rounding), plain BPTT
of the same model (every policy and budget bit-identical to it), threads
taking turns on one CPU (bit-identical to threads on two), and numpy's
float64 products for the register-tiled GEMM.
"""

from __future__ import annotations

import os
import sys
import threading
import time
import tracemalloc

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import memopt_bptt as mb
import memopt_bptt._executor._runner as runner
from memopt_bptt._kernels.mm import fits, matmul, product
from memopt_bptt._kernels.sync import SLOT, abort, barrier, new_flags

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _tracing import kept_bytes, least_bytes, runs_at_a_budget_between  # noqa: E402
from reference import finite_difference_grads, max_relative_error, reference_loss  # noqa: E402


def problem(loss, *, T, batch, threads, input_size=2, hidden=5, output=2, seed=0, grad_chunk=2):
    cell = mb.LSTM(input_size=input_size, hidden_size=hidden, grad_chunk=grad_chunk)
    model = mb.Sequence(cell, output_size=output, loss=loss, unit_threads=threads)
    params = model.init_params(seed=seed)
    rng = np.random.default_rng(seed + 1)
    xs = rng.normal(size=(T, batch, input_size))
    ys = rng.normal(size=(T, batch, output)) if loss == "mse" else rng.integers(0, output, size=(T, batch))
    h0 = rng.normal(scale=0.5, size=model.state_shape(batch))
    return model, params, xs, ys, h0


# ---- the rule and the arguments ----------------------------------------------------
def test_unit_split_rule():
    big = mb.Sequence(mb.LSTM(64, 256), output_size=16)
    assert big.unit_split(16) == ((0, 128), (128, 256))     # 4.2 M multiply-adds: two threads
    assert big.sizes(batch=16, dtype="float32").unit_threads == 2
    assert big.lane_batches(16) == (16,)
    assert big.unit_split(1) == ((0, 128), (128, 256))       # matrix-vector steps: each thread reads half the weights
    assert big.unit_split(2) == ((0, 128), (128, 256)) and big.unit_split(3) == ((0, 256),)  # 0.79 M at 3 rows
    narrow = mb.Sequence(mb.LSTM(64, 128), output_size=16)
    assert narrow.unit_split(1) == ((0, 128),)               # 64 units per thread: not worth a barrier
    assert "matrix-vector" in big.describe_split(1) and "matrix-vector" not in big.describe_split(16)
    assert big.unit_split(64) == ((0, 256),) and big.lane_batches(64) == (32, 32)  # wide batch: lanes instead
    assert mb.Sequence(mb.LSTM(64, 512), output_size=16).unit_split(64) == ((0, 256), (256, 512))
    small = mb.Sequence(mb.LSTM(64, 64), output_size=16)
    assert small.unit_split(16) == ((0, 64),)                # lanes instead
    assert small.lane_batches(16) == (8, 8)
    assert mb.Sequence(mb.GRU(64, 256), output_size=16).unit_split(16) == ((0, 128), (128, 256))  # 3.1 M, unit kernels
    forced = mb.Sequence(mb.LSTM(2, 7), output_size=2, unit_threads=3)
    assert forced.unit_split(4) == ((0, 3), (3, 5), (5, 7))
    assert forced.lane_batches(4) == (4,)
    assert mb.Sequence(mb.LSTM(2, 2), output_size=2, unit_threads=4).unit_split(3) == ((0, 1), (1, 2))
    assert mb.Sequence(mb.LSTM(64, 256), output_size=16, unit_threads=1).unit_split(16) == ((0, 256),)
    assert "unit_threads=3" in repr(forced)


@pytest.mark.parametrize("bad", [0, -1, 2.0, "2", True])
def test_bad_unit_threads_is_rejected(bad):
    with pytest.raises(ValueError, match="unit_threads"):
        mb.Sequence(mb.LSTM(2, 3), output_size=2, unit_threads=bad)


def test_unit_threads_need_unit_kernels_and_no_lanes():
    with pytest.raises(ValueError, match=r"unit_threads=2 needs a cell with unit kernels.*'elman'"):
        mb.Sequence(mb.Elman(2, 3), output_size=2, unit_threads=2)
    with pytest.raises(ValueError, match="lanes=2 and unit_threads=2"):
        mb.Sequence(mb.LSTM(2, 3), output_size=2, lanes=2, unit_threads=2)
    mb.Sequence(mb.Elman(2, 3), output_size=2, unit_threads=1)  # 1 means never: fine for any cell


def test_bad_unit_kernels_are_rejected():
    lstm = mb.LSTM(2, 3)
    fields = {k: getattr(lstm, k) for k in lstm.__dataclass_fields__}
    with pytest.raises(TypeError, match="five jitted kernels"):
        mb.Cell(**{**fields, "unit_kernels": lstm.unit_kernels[:4]})
    with pytest.raises(ValueError, match="feature_major=True"):
        mb.Cell(**{**fields, "feature_major": False})


def test_unit_threads_are_charged_to_the_budget():
    one = mb.Sequence(mb.LSTM(4, 8), output_size=3, unit_threads=1).sizes(batch=6)
    two = mb.Sequence(mb.LSTM(4, 8), output_size=3, unit_threads=2).sizes(batch=6)
    assert (one.unit_threads, two.unit_threads) == (1, 2)
    # a second scratch (batch * (4H + input)); per thread a readout buffer of twice the outputs and
    # its units' h_t (one output buffer is charged already), two (H, batch) blocks of partial
    # gradients, and its Python objects; and the second thread's row weights of the loss (float64)
    extra = two.working_bytes - one.working_bytes
    python = 2 * -(-mb._split.UNIT_PYTHON_BYTES // 8) * 8
    readout = 2 * 2 * 6 * 3 - 6 * 3 + 6 * 8
    assert extra == (6 * (4 * 8 + 4) + readout + 2 * 2 * 6 * 8 + 6) * 8 + python
    assert two.lane_extra_len * 8 == extra


# ---- exactness -------------------------------------------------------------------------
@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(loss=st.sampled_from(["mse", "cross_entropy"]), T=st.integers(1, 20), batch=st.integers(1, 5),
       threads=st.integers(2, 4), hidden=st.integers(2, 9), grad_chunk=st.sampled_from([1, 2, 3]),
       seed=st.integers(0, 2**16), frac=st.floats(0.0, 1.0))
def test_every_policy_is_bit_identical_to_their_plain_bptt(loss, T, batch, threads, hidden, grad_chunk, seed,
                                                          frac):
    model, params, xs, ys, h0 = problem(loss, T=T, batch=batch, threads=threads, hidden=hidden, seed=seed,
                                        grad_chunk=grad_chunk)
    assert len(model.unit_split(batch)) == min(threads, hidden)
    norms_ref = np.zeros(T + 1)
    reference = mb.value_and_grad(model, params, xs, ys, h0=h0, return_h0_grad=True, ds_norms=norms_ref)
    # one thread: the same network, its GEMMs summed in another order
    one = mb.Sequence(model.cell, output_size=model.output_size, loss=loss, unit_threads=1, lanes=1)
    norms_one = np.zeros(T + 1)
    single = mb.value_and_grad(one, params, xs, ys, h0=h0, return_h0_grad=True, ds_norms=norms_one)
    assert abs(reference[0] - single[0]) <= 1e-12 * max(1.0, abs(single[0]))
    for name in single[1]:
        assert max_relative_error(reference[1][name], single[1][name]) < 1e-11, name
    assert np.allclose(reference[2], single[2], rtol=1e-11, atol=1e-14)
    assert np.allclose(norms_ref, norms_one, rtol=1e-11, atol=1e-14)
    for policy, _, result in runs_at_a_budget_between(model, params, xs, ys, T, batch, frac,
                                                      ("msm", "hsm", "ism", "revolve", "sqrt"), h0=h0,
                                                      return_h0_grad=True):
        assert result[0] == reference[0], policy
        for name in reference[1]:
            assert np.array_equal(result[1][name], reference[1][name]), f"{policy}: {name}"
        assert np.array_equal(result[2], reference[2]), f"{policy}: dL/dh0"


@pytest.mark.parametrize("loss", ["mse", "cross_entropy"])
def test_unit_threads_match_finite_differences(loss):
    T, batch = 5, 3
    model, params, xs, ys, h0 = problem(loss, T=T, batch=batch, threads=2, output=3)
    budget = least_bytes(model, T, batch) + 2 * model.sizes(batch=batch).state_bytes
    value, grads, dh0 = mb.value_and_grad(model, params, xs, ys, h0=h0, return_h0_grad=True, budget=budget)
    ref = reference_loss("lstm", params, xs, ys, loss=loss, h0=h0)
    assert abs(value - ref) < 1e-12
    fd, fd_h0 = finite_difference_grads(lambda p, h: reference_loss("lstm", p, xs, ys, loss=loss, h0=h), params, h0)
    for name in grads:
        assert max_relative_error(grads[name], fd[name]) < 1e-6, name
    assert max_relative_error(dh0, fd_h0) < 1e-6


def test_unit_threads_match_torch():
    torch = pytest.importorskip("torch")
    T, batch, I, H, O = 7, 16, 4, 32, 3  # 16 columns: the register-tiled GEMM's path in float64 too
    model, params, xs, ys, h0 = problem("mse", T=T, batch=batch, threads=2, input_size=I, hidden=H, output=O)
    value, grads, dh0 = mb.value_and_grad(model, params, xs, ys, h0=h0, return_h0_grad=True)
    lstm = torch.nn.LSTM(I, H, dtype=torch.float64)
    linear = torch.nn.Linear(H, O, dtype=torch.float64)
    with torch.no_grad():
        for name, p in lstm.named_parameters():
            p.copy_(torch.from_numpy(params["cell." + name.replace("_l0", "")]))
        linear.weight.copy_(torch.from_numpy(params["readout.weight"]))
        linear.bias.copy_(torch.from_numpy(params["readout.bias"]))
    h0_t = torch.tensor(h0, requires_grad=True)
    out, _ = lstm(torch.from_numpy(xs), (h0_t[0:1], h0_t[1:2]))
    loss = torch.nn.functional.mse_loss(linear(out), torch.from_numpy(ys))
    loss.backward()
    assert abs(value - loss.item()) < 1e-12
    theirs = {"cell." + n.replace("_l0", ""): p.grad.numpy() for n, p in lstm.named_parameters()}
    theirs.update({"readout.weight": linear.weight.grad.numpy(), "readout.bias": linear.bias.grad.numpy()})
    for name, g in grads.items():
        assert np.max(np.abs(g - theirs[name])) < 1e-10, name
    assert np.max(np.abs(dh0 - h0_t.grad.numpy())) < 1e-10


def test_threads_taking_turns_on_one_cpu_give_the_same_bits(monkeypatch):
    model, params, xs, ys, h0 = problem("mse", T=30, batch=4, threads=2, hidden=6)
    budget = least_bytes(model, 30, 4) + 5 * model.sizes(batch=4).state_bytes
    threaded = mb.value_and_grad(model, params, xs, ys, h0=h0, return_h0_grad=True, budget=budget)
    monkeypatch.setattr(runner, "usable_cpus", lambda: 1)  # no spinning: yield at every wait
    turns = mb.value_and_grad(model, params, xs, ys, h0=h0, return_h0_grad=True, budget=budget)
    assert threaded[0] == turns[0]
    for name in threaded[1]:
        assert np.array_equal(threaded[1][name], turns[1][name]), name
    assert np.array_equal(threaded[2], turns[2])


@pytest.mark.slow  # compiles the float32 unit-threads sweep: 40 s on a slow 2-core machine
def test_float32_hidden_256_is_bit_identical_across_budgets_and_close_to_float64():
    T, batch = 12, 16
    model, params, xs, ys, _ = problem("mse", T=T, batch=batch, threads=None, input_size=8, hidden=256, output=4)
    assert model.sizes(batch=batch, dtype="float32").unit_threads == 2
    p32 = {k: v.astype(np.float32) for k, v in params.items()}
    xs32, ys32 = xs.astype(np.float32), ys.astype(np.float32)
    reference = mb.value_and_grad(model, p32, xs32, ys32)
    lo = least_bytes(model, T, batch, dtype="float32")
    for budget in (lo, lo + 200_000):
        result = mb.value_and_grad(model, p32, xs32, ys32, budget=budget)
        assert result[1] is not reference[1] and result[0] == reference[0]
        for name in reference[1]:
            assert np.array_equal(result[1][name], reference[1][name]), name
    loss64, grads64 = mb.value_and_grad(model, params, xs, ys)
    assert abs(reference[0] - loss64) < 1e-5
    for name in grads64:
        assert max_relative_error(reference[1][name].astype(np.float64), grads64[name]) < 1e-4, name


def test_unit_threads_stay_within_the_budget():
    T, batch = 30, 8
    model, params, xs, ys, _ = problem("mse", T=T, batch=batch, threads=2, input_size=3, hidden=16)
    schedule = mb.plan(T, budget=least_bytes(model, T, batch) + 20_000, model=model, batch=batch)
    assert schedule.forward_steps > T  # a real budget, not plain BPTT
    kept = kept_bytes(model, params, xs, ys, schedule)
    assert kept <= schedule.budget_bytes + mb._model.PYTHON_OVERHEAD_BYTES, (kept, schedule.budget_bytes)
    assert schedule.peak_bytes - 16 * 1024 <= kept  # the threads' buffers are really there


def test_report_and_a_failed_sweep():
    model, params, xs, ys, _ = problem("mse", T=8, batch=3, threads=2)
    loss, grads, report = mb.value_and_grad(model, params, xs, ys, budget=least_bytes(model, 8, 3) + 4000,
                                            return_report=True)
    assert report.forward_steps == report.schedule.forward_steps > 8
    assert 0 < report.measured_peak_bytes <= report.planned_bytes + mb._model.PYTHON_OVERHEAD_BYTES
    huge = {k: np.abs(v) * 1e200 for k, v in params.items()}  # the loss overflows to inf in float64
    with pytest.raises(FloatingPointError, match="not finite"):
        mb.value_and_grad(model, huge, np.abs(xs) + 1.0, ys, return_report=True)
    assert not tracemalloc.is_tracing()


def test_measure_step_times_runs_the_threads():
    model = mb.Sequence(mb.LSTM(8, 64), output_size=4, unit_threads=2)
    # float64: the units sweep this module compiles anyway (float32's is a compile of its own, a minute
    # on a slow 2-core machine)
    f, b = mb.measure_step_times(model, batch=4, dtype="float64", repeats=20)
    assert 0 < f < 0.01 and 0 < b < 0.01


# ---- the barrier --------------------------------------------------------------------------
@pytest.mark.parametrize("spin", [1 << 14, 0])
def test_barrier_orders_writes_before_reads(spin):
    from numba import njit

    @njit(nogil=True)
    def rounds(flags, k, data, n, spin):
        stale = 0
        count = 0
        for r in range(1, n + 1):
            data[k * SLOT] = r          # write, then meet: the other thread must see it
            count += 1
            barrier(flags, k, count, spin)
            if data[(1 - k) * SLOT] != r:
                stale += 1
            count += 1                  # meet again before the next write
            barrier(flags, k, count, spin)
        return stale

    flags, data = new_flags(2), np.zeros(2 * SLOT, np.int64)
    rounds(new_flags(2), 0, np.zeros(2 * SLOT, np.int64), 0, spin)  # compile
    out = [None, None]
    threads = [threading.Thread(target=lambda k=k: out.__setitem__(k, rounds(flags, k, data, 20000, spin)))
               for k in range(2)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert out == [0, 0]


def test_abort_releases_a_waiting_thread():
    flags = new_flags(2)
    barrier(new_flags(1), 0, 1, 0)  # compile (one thread: returns at once)
    done = threading.Event()
    th = threading.Thread(target=lambda: (barrier(flags, 0, 1, 1 << 14), done.set()))
    th.start()
    time.sleep(0.05)
    assert not done.is_set()  # thread 1 never arrives
    abort(flags)
    th.join(5)
    assert done.is_set()


# ---- the register-tiled GEMM ------------------------------------------------------------
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("M,K,N,transposed", [(64, 32, 16, False), (37, 9, 16, True), (13, 5, 64, False),
                                              (21, 7, 32, True), (5, 3, 256, False), (3, 1, 48, False),
                                              (35, 6, 8, True), (17, 4, 24, False), (9, 2, 12, False),
                                              (6, 3, 7, True),
                                              # rows of a page or more (mm.LONG_ROW_BYTES): half-height tiles
                                              (37, 1024, 16, False), (27, 512, 16, False), (19, 1024, 16, True),
                                              # a transposed view whose columns are a page or more apart
                                              (1024, 300, 16, True), (512, 600, 8, True), (21, 700, 32, True)])
def test_matmul_against_numpy(dtype, M, K, N, transposed):
    rng = np.random.default_rng(M * N + K)
    a = rng.standard_normal((K, M)).astype(dtype).T if transposed else rng.standard_normal((M, K)).astype(dtype)
    wide = rng.standard_normal((K, N + 16)).astype(dtype)
    b = wide[:, 8: 8 + N]  # a column slice: rows contiguous, not the array
    c0 = rng.standard_normal((M, N)).astype(dtype)
    exact = a.astype(np.float64) @ b.astype(np.float64)
    tol = (1e-5 if dtype == np.float32 else 1e-13) * (np.abs(a).astype(np.float64) @ np.abs(b) + 1)
    half_width = 32 // np.dtype(dtype).itemsize  # half a 64-byte vector: 8 float32, 4 float64
    assert fits(b, c0) == (N % half_width == 0)
    for accumulate in (True, False):
        c = c0.copy()
        product(a, b, c, accumulate)
        assert np.all(np.abs(c - (exact + (c0 if accumulate else 0))) <= tol)
    if fits(b, c0):
        c = c0.copy()
        matmul(a, b, c, True)
        again = c0.copy()
        matmul(a, b, again, True)
        assert np.array_equal(c, again)  # deterministic
        # rows of C computed separately (as threads split them) give the same bits; matmul's
        # promise, not product's, which hands wide products to BLAS on AVX2 (tiled_max_lines)
        halves = c0.copy()
        matmul(a[: M // 2], b, halves[: M // 2], True)
        matmul(a[M // 2:], b, halves[M // 2:], True)
        assert np.array_equal(c, halves)


def test_too_small_a_budget_points_at_unit_threads_1():
    model = mb.Sequence(mb.LSTM(64, 256), output_size=16)
    sizes = model.sizes(batch=16, dtype="float32")
    assert sizes.unit_threads == 2
    with pytest.raises(mb.MemoryBudgetError, match=r"unit_threads=1"):
        mb.plan(5, budget=0.01, model=model, batch=16, dtype="float32")
    one = mb.Sequence(mb.LSTM(64, 256), output_size=16, unit_threads=1)
    # the least budget with one thread is less by exactly what the threads add
    extra = least_bytes(model, 5, 16, dtype="float32") - least_bytes(one, 5, 16, dtype="float32")
    assert extra == sizes.lane_extra_len * 4


def test_describe_split_names_the_path_sizes_chose():
    cases = [(mb.Sequence(mb.LSTM(64, 256), output_size=4), "2 unit threads"),
             (mb.Sequence(mb.LSTM(64, 64), output_size=4), "2 lanes of [8, 8]"),
             (mb.Sequence(mb.LSTM(64, 256), output_size=4, unit_threads=1), "one sweep over the whole batch"),
             (mb.Sequence([mb.LSTM(64, 256), mb.LSTM(256, 256)], output_size=4), "2 unit threads"),
             (mb.Sequence([mb.LSTM(64, 256), mb.Elman(256, 256)], output_size=4), "one sweep"),
             (mb.Sequence(mb.Elman(8, 16), output_size=4), "one sweep")]
    for model, start in cases:
        sizes = model.sizes(batch=16, dtype="float32")
        text = model.describe_split(16)
        assert text.startswith(start), (model, text)
        assert ("unit threads" in text.split("(")[0]) == (sizes.unit_threads > 1)
        assert ("lanes" in text.split("(")[0]) == bool(sizes.lanes)
    assert "asked for" in mb.Sequence(mb.LSTM(8, 8), output_size=2, lanes=2).describe_split(4)
    wide = mb.Sequence(mb.LSTM(64, 256), output_size=4).describe_split(64)
    assert wide.startswith("2 lanes of [32, 32]") and "accumulator of 10.1 <= 16 hidden states" in wide
    narrow = mb.Sequence(mb.LSTM(64, 512), output_size=16).describe_split(64)
    assert narrow.startswith("2 unit threads") and "no lanes: a second lane's gradient accumulator would be 18.2 > 16" \
        in narrow
    assert "no lanes" in mb.Sequence(mb.GRU(64, 256), output_size=4, unit_threads=1).describe_split(16)
    assert "no lanes" not in mb.Sequence(mb.LSTM(64, 512), output_size=16, lanes=1).describe_split(64)
    assert "'lstm+elman' has a layer without unit kernels" in mb.Sequence([mb.LSTM(64, 256), mb.Elman(256, 256)],
                                                                            output_size=4).describe_split(16)
    assert "no unit threads: an embedding" in mb.Sequence([mb.Embedding(9, 64), mb.LSTM(64, 256)],
                                                          output_size=4).describe_split(16)
