"""Unit threads over a stack of layers: every layer's hidden units split between threads.

Oracles, all independent of the code under test: plain BPTT of the same
model (every policy and budget bit-identical to it), the same stack in rows
mode (``unit_threads=1``: the same network, its sums taken in another order,
so equal to rounding), PyTorch's nn.LSTM(num_layers=2) in float64, central
finite differences of the loss, threads taking turns on one CPU (the same
bits as on two), tracemalloc against the budget, and the charge worked out
by hand from the documented rule.

Every new structure compiles a sweep of its own (10-60 s), so the default
run checks only the rules (the split, the charge); every sweep here (a
2-layer LSTM stack in units mode, float64; the 3-layer stack, float32, the
SIGINT child) is marked slow, and CI runs them as its second step. The
default run's units-mode sweep is test_unit_threads.py's single layer.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import threading
import time

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import memopt_bptt as mb
import memopt_bptt._executor._runner as runner
from memopt_bptt import _model, _split
from memopt_bptt._executor import Data, Run


sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _bits import assert_bits, assert_close, data, rows_twin  # noqa: E402
from _tracing import kept_bytes, least_bytes, runs_at_a_budget_between  # noqa: E402

# the stack's units-mode sweep: 40 s to compile on a slow 2-core machine, so CI's slow step runs what uses it
SWEEP = pytest.mark.slow

I, O = 3, 3


def stack(hidden, *, threads, loss="mse", loss_at="every", chunks=(2, 2), input_size=I, output=O):
    """LSTM layers of these hidden sizes over an input of ``input_size``, and a readout."""
    sizes = [input_size, *hidden]
    cells = [mb.LSTM(sizes[k], h, grad_chunk=c) for k, (h, c) in enumerate(zip(hidden, chunks))]
    lanes = 1 if threads == 1 else None
    return mb.Sequence(cells, output_size=output, loss=loss, loss_at=loss_at, unit_threads=threads, lanes=lanes)


# ---- the rule, the charge and the arguments (no sweep) -------------------------------------------

def test_the_rule_chooses_unit_threads_for_large_stacks_of_unit_kernel_cells():
    big = mb.Sequence([mb.LSTM(64, 256), mb.LSTM(256, 256)], output_size=16)
    assert big.unit_split(16) == ((0, 128), (128, 256))            # largest GEMM 4.2 M multiply-adds
    assert big.unit_split(16, layer=0) == ((0, 128), (128, 256))
    assert big.lane_batches(16) == (16,)
    assert big.sizes(batch=16, dtype="float32").unit_threads == 2
    assert big.describe_split(16).startswith("2 unit threads splitting every layer's hidden units")
    assert "largest layer's recurrent GEMM of 4,194,304" in big.describe_split(16)
    assert big.unit_split(1) == ((0, 128), (128, 256))              # matrix-vector steps (_split.MATVEC_MAX_BATCH)
    assert big.unit_split(4) == ((0, 256),)                         # 1 M multiply-adds: one thread
    # every layer needs 2 * MIN_UNIT_HIDDEN units
    narrow = mb.Sequence([mb.LSTM(64, 256), mb.LSTM(256, 2 * _split.MIN_UNIT_HIDDEN - 1)], output_size=16)
    assert narrow.unit_split(16) == ((0, 63),)
    # a layer without unit kernels, or an embedding: one thread, and asking for more is an error
    mixed = mb.Sequence([mb.LSTM(64, 256), mb.Elman(256, 256)], output_size=16)
    assert mixed.unit_split(16) == ((0, 256),)
    assert "no unit threads: 'lstm+elman' has a layer without unit kernels" in mixed.describe_split(16)
    with pytest.raises(ValueError, match=r"unit_threads=2 needs a cell with unit kernels.*'lstm\+elman'.*every layer"):
        mb.Sequence([mb.LSTM(64, 256), mb.Elman(256, 256)], output_size=16, unit_threads=2)
    embedded = [mb.Embedding(50, 64), mb.LSTM(64, 256), mb.LSTM(256, 256)]
    assert mb.Sequence(embedded, output_size=16).unit_split(16) == ((0, 256),)
    assert "an embedding" in mb.Sequence(embedded, output_size=16).describe_split(16)
    with pytest.raises(ValueError, match=r"unit_threads=2 needs .*no embedding"):
        mb.Sequence(embedded, output_size=16, unit_threads=2)


def test_asked_for_threads_split_each_layer_by_its_own_hidden_size():
    model = mb.Sequence([mb.LSTM(2, 7), mb.LSTM(7, 4)], output_size=2, unit_threads=3)
    assert model.unit_split(5, layer=0) == ((0, 3), (3, 5), (5, 7))
    assert model.unit_split(5, layer=1) == model.unit_split(5) == ((0, 2), (2, 3), (3, 4))
    assert model.unit_split(5, layer=-2) == model.unit_split(5, layer=0)
    assert model.lane_batches(5) == (5,)
    assert "asked for" in model.describe_split(5)
    # at most one thread per unit of the narrowest layer
    assert len(mb.Sequence([mb.LSTM(2, 7), mb.LSTM(7, 4)], output_size=2, unit_threads=9).unit_split(5)) == 4
    for bad in (2, -3, 1.0, True):
        with pytest.raises(ValueError, match="layer="):
            model.unit_split(5, layer=bad)


def test_a_stack_s_unit_threads_are_charged_to_the_budget():
    B, H0, H1 = 6, 8, 5
    one = stack((H0, H1), threads=1, input_size=4).sizes(batch=B)
    two = stack((H0, H1), threads=2, input_size=4).sizes(batch=B)
    assert (one.unit_threads, two.unit_threads, one.lanes, two.lanes) == (1, 2, (), ())
    # Worked out from the rule (elements, float64): a second scratch of the largest layer's
    # batch * (4H + input) and its row weights; per thread a readout buffer of twice the
    # outputs and its top-layer units' h_t (one output buffer is charged already); per thread
    # two steps of partial gradients, each layer's (batch, hidden) and, above the first, its
    # (batch, input); UNIT_PYTHON_BYTES per thread; and no input buffer for layer 1 (the
    # threads read layer 0's h_t in place).
    scratch = max(B * (4 * H0 + 4), B * (4 * H1 + H0)) + B
    readout = (2 * B * O + B * 3) + (2 * B * O + B * 2) - B * O     # top units split 3 + 2
    exchange = 2 * 2 * B * (H0 + H1 + H0)
    python = 2 * -(-_split.UNIT_PYTHON_BYTES // 8)
    extra = scratch + readout + exchange + python - B * H0
    assert two.lane_extra_len == extra
    assert two.working_bytes - one.working_bytes == extra * 8


# ---- exactness (one compiled sweep: the 2-layer stack in units mode, float64; slow) ----------------------

@SWEEP
@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(loss=st.sampled_from(["mse", "cross_entropy"]), T=st.integers(1, 24), batch=st.integers(1, 4),
       threads=st.integers(2, 3), hidden=st.tuples(st.integers(3, 9), st.integers(3, 9)),
       chunks=st.tuples(st.sampled_from([1, 2, 3]), st.sampled_from([1, 2, 3])), seed=st.integers(0, 2**16),
       frac=st.floats(0.0, 1.0))
def test_every_policy_is_bit_identical_to_plain_bptt_and_equal_to_rows_mode(loss, T, batch, threads, hidden,
                                                                            chunks, seed, frac):
    model = stack(hidden, threads=threads, loss=loss, chunks=chunks)
    params = model.init_params(seed=seed)
    xs, ys, h0 = data(model, T, batch, seed)
    assert len(model.unit_split(batch)) == threads and model.sizes(batch=batch).unit_threads == threads
    norms = np.zeros(T + 1)
    reference = mb.value_and_grad(model, params, xs, ys, h0=h0, return_h0_grad=True, ds_norms=norms)
    rows_norms = np.zeros(T + 1)
    rows = mb.value_and_grad(rows_twin(model), params, xs, ys, h0=h0, return_h0_grad=True, ds_norms=rows_norms)
    assert_close(reference, rows, 1e-11, "rows mode")
    assert np.allclose(norms, rows_norms, rtol=1e-11, atol=1e-14)
    for policy, budget, result in runs_at_a_budget_between(model, params, xs, ys, T, batch, frac,
                                                           ("msm", "hsm", "ism", "revolve", "sqrt"), h0=h0,
                                                           return_h0_grad=True):
        assert_bits(result, reference, (policy, budget))


@SWEEP
def test_masks_lengths_and_a_last_step_loss():
    T, batch = 17, 4
    rng = np.random.default_rng(3)
    lengths = np.array([T, 1, 9, 12])
    mask = rng.random((T, batch)) * (rng.random((T, batch)) > 0.3)
    mask[0] = 1.0
    for loss_at, kw in (("every", {"lengths": lengths}), ("every", {"mask": mask, "lengths": lengths}),
                        ("every", {"mask": mask}), ("last", {"lengths": lengths})):
        model = stack((6, 5), threads=2, loss="cross_entropy", loss_at=loss_at)
        params = model.init_params(seed=2)
        xs, ys, h0 = data(model, T, batch, 4)
        reference = mb.value_and_grad(model, params, xs, ys, h0=h0, return_h0_grad=True, **kw)
        rows = mb.value_and_grad(rows_twin(model), params, xs, ys, h0=h0, return_h0_grad=True, **kw)
        assert_close(reference, rows, 1e-11, (loss_at, list(kw)))
        for policy in ("msm", "revolve"):
            budget = least_bytes(model, T, batch, policy=policy) + 2 * model.sizes(batch=batch).state_bytes
            result = mb.value_and_grad(model, params, xs, ys, h0=h0, return_h0_grad=True, budget=budget,
                                       policy=policy, **kw)
            assert_bits(result, reference, (loss_at, list(kw), policy))
        # a sequence's steps after its length change nothing
        if "lengths" in kw:
            xs2 = xs.copy()
            for b in range(batch):
                xs2[lengths[b]:, b] = 7.0
            again = mb.value_and_grad(model, params, xs2, ys, h0=h0, return_h0_grad=True, **kw)
            assert_bits(again, reference, (loss_at, list(kw), "padding"))


@SWEEP
def test_matches_torch_two_layer_lstm():
    torch = pytest.importorskip("torch")
    T, batch, n_in, H = 9, 16, 4, 8  # 16 columns and 8-wide blocks: the register-tiled GEMM's path in float64
    model = stack((H, H), threads=2, input_size=n_in)
    params = {k: v + 0.05 * np.random.default_rng(1).standard_normal(v.shape)
              for k, v in model.init_params(seed=1).items()}
    xs, ys, h0 = data(model, T, batch, 1)
    value, grads, dh0 = mb.value_and_grad(model, params, xs, ys, h0=h0, return_h0_grad=True)
    lstm = torch.nn.LSTM(n_in, H, num_layers=2, dtype=torch.float64)
    linear = torch.nn.Linear(H, O, dtype=torch.float64)
    with torch.no_grad():
        for name, p in lstm.named_parameters():
            p.copy_(torch.from_numpy(params["rnn." + name]))
        linear.weight.copy_(torch.from_numpy(params["readout.weight"]))
        linear.bias.copy_(torch.from_numpy(params["readout.bias"]))
    h0_t = torch.tensor(h0, requires_grad=True)   # (2, layers, batch, hidden): (h0, c0) stacked
    out, _ = lstm(torch.from_numpy(xs), (h0_t[0], h0_t[1]))
    loss = torch.nn.functional.mse_loss(linear(out), torch.from_numpy(ys))
    loss.backward()
    assert abs(value - loss.item()) < 1e-12
    theirs = {"rnn." + n: p.grad.numpy() for n, p in lstm.named_parameters()}
    theirs.update({"readout.weight": linear.weight.grad.numpy(), "readout.bias": linear.bias.grad.numpy()})
    for name, g in grads.items():
        assert np.max(np.abs(g - theirs[name])) <= 1e-12 * max(1.0, np.abs(theirs[name]).max()), name
    assert np.max(np.abs(dh0 - h0_t.grad.numpy())) < 1e-12


@SWEEP
@pytest.mark.parametrize("loss", ["mse", "cross_entropy"])
def test_matches_finite_differences(loss):
    T, batch = 5, 2
    model = stack((3, 4), threads=2, loss=loss)
    rng = np.random.default_rng(8)
    params = {k: v + 0.1 * rng.standard_normal(v.shape) for k, v in model.init_params(seed=8).items()}
    xs, ys, h0 = data(model, T, batch, 8)
    budget = least_bytes(model, T, batch) + model.sizes(batch=batch).state_bytes  # a budget that recomputes
    value, grads, dh0 = mb.value_and_grad(model, params, xs, ys, h0=h0, return_h0_grad=True, budget=budget)

    def f(p, h):
        return mb.value_and_grad(model, p, xs, ys, h0=h)[0]

    eps = 1e-6
    for name, g in grads.items():
        for idx in [tuple(rng.integers(0, n) for n in g.shape) for _ in range(3)]:
            plus = {k: v.copy() for k, v in params.items()}
            minus = {k: v.copy() for k, v in params.items()}
            plus[name][idx] += eps
            minus[name][idx] -= eps
            fd = (f(plus, h0) - f(minus, h0)) / (2 * eps)
            assert abs(fd - g[idx]) <= 1e-7 * max(1.0, abs(fd)), (name, idx, fd, g[idx])
    for layer in range(2):
        for idx in [(0, 1, 2), (1, 0, 1)]:  # an h and a c element of each layer's initial state
            plus = [a.copy() for a in h0]
            minus = [a.copy() for a in h0]
            plus[layer][idx] += eps
            minus[layer][idx] -= eps
            fd = (f(params, plus) - f(params, minus)) / (2 * eps)
            assert abs(fd - dh0[layer][idx]) <= 1e-7 * max(1.0, abs(fd)), (layer, idx)


@SWEEP
def test_threads_taking_turns_on_one_cpu_give_the_same_bits(monkeypatch):
    model = stack((7, 5), threads=2)
    params = model.init_params(seed=5)
    xs, ys, h0 = data(model, 30, 3, 5)
    budget = least_bytes(model, 30, 3) + 4 * model.sizes(batch=3).state_bytes
    threaded = mb.value_and_grad(model, params, xs, ys, h0=h0, return_h0_grad=True, budget=budget)
    monkeypatch.setattr(runner, "usable_cpus", lambda: 1)  # no spinning: yield at every wait
    turns = mb.value_and_grad(model, params, xs, ys, h0=h0, return_h0_grad=True, budget=budget)
    assert_bits(turns, threaded, "one CPU")


# ---- memory ---------------------------------------------------------------------------------------------

@SWEEP
def test_stays_within_the_budget_and_allocates_what_it_charged():
    T, batch = 40, 4
    model = stack((9, 6), threads=2)
    params = model.init_params(seed=6)
    xs, ys, _ = data(model, T, batch, 6)
    schedule = mb.plan(T, budget=least_bytes(model, T, batch) + 4000, model=model, batch=batch)
    assert schedule.forward_steps > T  # a real budget, not plain BPTT
    kept = kept_bytes(model, params, xs, ys, schedule)
    assert kept <= schedule.budget_bytes + _model.PYTHON_OVERHEAD_BYTES, (kept, schedule.budget_bytes)
    report = mb.value_and_grad(model, params, xs, ys, schedule=schedule, return_report=True)[-1]
    # every element charged is allocated, but the threads' Python objects (charged, not arrays)
    python = 2 * -(-_split.UNIT_PYTHON_BYTES // 8) * 8
    assert report.allocated_bytes == schedule.peak_bytes - python, (report.allocated_bytes, schedule.peak_bytes)
    assert report.measured_peak_bytes <= schedule.peak_bytes + _model.PYTHON_OVERHEAD_BYTES


_NRT_CHILD = textwrap.dedent("""
    import json
    import numpy as np
    import memopt_bptt as mb
    from memopt_bptt.testing import least_budget
    from numba.core.runtime import rtsys

    model = mb.Sequence([mb.LSTM(3, 7), mb.LSTM(7, 5)], output_size=3, unit_threads=2)
    params = model.init_params(seed=0)
    out = {}
    for T in (20, 200, 20, 200):  # the first round warms up
        rng = np.random.default_rng(T)
        xs, ys = rng.normal(size=(T, 2, 3)), rng.normal(size=(T, 2, 3))
        for policy in ("full", "msm", "revolve"):
            budget = 1.0 if policy == "full" else least_budget(model, T=T, batch=2, policy=policy) + 3000
            schedule = mb.plan(T, budget=budget, model=model, batch=2, policy=policy)
            mb.value_and_grad(model, params, xs, ys, schedule=schedule)
            before = rtsys.get_allocation_stats()
            mb.value_and_grad(model, params, xs, ys, schedule=schedule)
            after = rtsys.get_allocation_stats()
            out[f"{T}/{policy}"] = [after.alloc - before.alloc, after.mi_alloc - before.mi_alloc,
                                    after.free - before.free]
    print(json.dumps(out))
""")


@SWEEP
def test_the_sweep_allocates_nothing_that_grows_with_T():
    """Numba's allocation counters (NUMBA_NRT_STATS=1, a fresh process that loads the cached sweep):
    a call at T=200 allocates what one at T=20 does, and frees it."""
    env = dict(os.environ, NUMBA_NRT_STATS="1")
    proc = subprocess.run([sys.executable, "-c", _NRT_CHILD], capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    counts = json.loads(proc.stdout.strip().splitlines()[-1])
    for policy in ("full", "msm", "revolve"):
        small, large = counts[f"20/{policy}"], counts[f"200/{policy}"]
        assert small == large, (policy, small, large)
        assert small[0] == small[2], (policy, small)


# ---- stopping ----------------------------------------------------------------------------------------

def _codes(rows):
    codes = np.array(rows, np.int64).reshape((-1, 3))
    codes.flags.writeable = False  # as a Schedule's: the same compiled sweep
    return codes


@SWEEP
@pytest.mark.parametrize("what", ["forward", "reverse"])
def test_the_stop_flag_stops_every_thread_inside_the_barriers(what, monkeypatch):
    """What Ctrl-C does (memopt_bptt._interrupt): the caller sets the stop flag, which in
    units mode is the barriers' abort slot; every thread leaves its sweep within a step."""
    monkeypatch.setattr(runner, "crowded", lambda threads: False)  # two threads, even on a busy machine
    model = stack((7, 5), threads=2, input_size=1)
    T = 1_500_000 if what == "forward" else 2
    n = 1_000_000  # reversals of one kept step
    arrays = model.check_params(model.init_params(seed=0))
    rng = np.random.default_rng(0)
    data = Data(rng.normal(size=(T, 1, 1)), rng.normal(size=(2, 1, O)) if what == "reverse" else np.zeros((1, 1, O)),
                np.zeros((1, 1), np.int64), np.zeros((1, 1)), np.full(1, T, np.int64))
    sizes = model.sizes(batch=1, dtype=np.float64)
    run = Run(model, arrays, data, sizes, loss_kind=0, scale=1.0)
    assert run.mode == "units" and run.n_workers == 2

    def jobs():
        return run.allocate(0, np.zeros(sizes.state_len), tuple(np.zeros_like(a) for a in arrays), np.zeros(0))

    keep, reverse = _codes([(int(mb.Op.KEEP), 1, -1)]), _codes([(int(mb.Op.REVERSE), 1, -1)])
    ready = jobs()
    run.run(keep, ready)  # (compiles the sweep)
    one_step = run.run(reverse, ready)[0][0]
    codes = (_codes([(int(mb.Op.ADVANCE), T, -1)]) if what == "forward"
             else _codes([(int(mb.Op.KEEP), 1, -1)] + [(int(mb.Op.REVERSE), 1, -1)] * n))
    workers = jobs()
    threads_before = threading.active_count()
    stopped_at = []

    def stop():
        stopped_at.append(time.perf_counter())
        workers[0][0].stop[0] = 1

    timer = threading.Timer(0.2, stop)
    timer.start()
    results = run.run(codes, workers)
    took = time.perf_counter() - stopped_at[0]
    timer.join()
    assert took < 1.0, took
    assert threading.active_count() == threads_before  # no worker left computing
    if what == "forward":
        assert all(0 < r[1] < T for r in results), [r[1] for r in results]
    else:  # thread 0's loss sums the reversals it ran
        assert 0 < results[0][0] < 0.5 * n * one_step, (results[0][0], one_step)


# ---- slow: more structures (each compiles a sweep of its own) -----------------------------------------

@pytest.mark.slow
def test_three_layers_of_different_sizes_with_three_threads():
    T, batch = 21, 3
    model = mb.Sequence([mb.LSTM(I, 8), mb.LSTM(8, 5, grad_chunk=3), mb.LSTM(5, 7, grad_chunk=1)],
                        output_size=O, loss="cross_entropy", unit_threads=3)
    params = model.init_params(seed=9)
    xs, ys, h0 = data(model, T, batch, 9)
    reference = mb.value_and_grad(model, params, xs, ys, h0=h0, return_h0_grad=True)
    assert_close(reference, mb.value_and_grad(rows_twin(model), params, xs, ys, h0=h0, return_h0_grad=True),
                 1e-11, "rows mode")
    for policy in ("msm", "hsm", "revolve"):
        budget = least_bytes(model, T, batch, policy=policy) + 3 * model.sizes(batch=batch).state_bytes
        result = mb.value_and_grad(model, params, xs, ys, h0=h0, return_h0_grad=True, budget=budget, policy=policy)
        assert_bits(result, reference, policy)


@pytest.mark.slow
def test_float32_hidden_64_is_bit_identical_across_budgets_and_close_to_float64():
    T, batch = 12, 16
    model = stack((64, 64), threads=2, input_size=8, output=4)
    params = model.init_params(seed=3)
    xs, ys, _ = data(model, T, batch, 3)
    p32 = {k: v.astype(np.float32) for k, v in params.items()}
    xs32, ys32 = xs.astype(np.float32), ys.astype(np.float32)
    reference = mb.value_and_grad(model, p32, xs32, ys32)
    lo = least_bytes(model, T, batch, dtype="float32")
    for budget in (lo, lo + 100_000):
        assert_bits(mb.value_and_grad(model, p32, xs32, ys32, budget=budget), reference, budget)
    assert_close(reference, mb.value_and_grad(model, params, xs, ys), 1e-4, "float64")


_CHILD = textwrap.dedent("""
    import json, os, signal, sys, threading, time
    import numpy as np
    import memopt_bptt as mb

    model = mb.Sequence([mb.LSTM(4, 64), mb.LSTM(64, 64)], output_size=2, unit_threads=2)
    params = model.init_params()
    rng = np.random.default_rng(0)
    T = 100_000
    xs, ys = rng.standard_normal((T, 8, 4)), rng.standard_normal((T, 8, 2))
    mb.value_and_grad(model, params, xs[:20], ys[:20], budget=0.9)  # compile first
    schedule = mb.plan(T, budget=0.02, model=model, batch=8, policy="revolve")
    sent = []
    threading.Timer(0.3, lambda: (sent.append(time.perf_counter()), os.kill(os.getpid(), signal.SIGINT))).start()
    outcome = "finished"
    try:
        mb.value_and_grad(model, params, xs, ys, schedule=schedule)
    except KeyboardInterrupt:
        outcome = "KeyboardInterrupt"
    done = time.perf_counter()
    time.sleep(0.3)
    print(json.dumps({"outcome": outcome, "after_signal": done - sent[0] if sent else None,
                      "threads": [t.name for t in threading.enumerate()]}))
""")


@pytest.mark.slow
@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
def test_sigint_stops_a_stack_s_unit_threads():
    proc = subprocess.run([sys.executable, "-c", _CHILD], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report["outcome"] == "KeyboardInterrupt", report
    assert report["after_signal"] < 1.0, report
    assert report["threads"] == ["MainThread"], report
