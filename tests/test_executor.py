"""Tests for the executor (memopt_bptt._executor.value_and_grad).

Oracles, none of them our own saved outputs:

* exactness: plain BPTT (no budget, policy "full") is the reference; every
  other policy and budget must give the same loss and gradient bits;
* forward counts: Python counters wrapped around the LSTM kernels in a
  ``NUMBA_DISABLE_JIT=1`` subprocess (tests/_count_forwards.py), checked
  against ``schedule.forward_steps`` and, for T <= 8, against the exhaustive
  search of tests/oracles.py and the closed form C(T, 1) = T(T+1)/2;
* memory: tracemalloc around the call (buffers allocated in Python), and
  Numba's NRT allocation counters in a ``NUMBA_NRT_STATS=1`` subprocess;
* failures: budgets below the least, non-finite losses, invalid schedules.

The jitted sweep compiles once per cell type per process (a few seconds), so
sizes stay tiny and all cells are float64.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import memopt_bptt as mb

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from _tracing import kept_bytes, least_bytes  # noqa: E402
from oracles import brute_force_cost  # noqa: E402
from reference import reference_outputs  # noqa: E402

POLICIES = ("msm", "hsm", "ism", "revolve", "sqrt", "full")
CELLS = {
    "lstm": lambda i, h: mb.LSTM(input_size=i, hidden_size=h),
    "gru": lambda i, h: mb.GRU(input_size=i, hidden_size=h),
    "elman_tanh": lambda i, h: mb.Elman(input_size=i, hidden_size=h, nonlinearity="tanh"),
    "elman_relu": lambda i, h: mb.Elman(input_size=i, hidden_size=h, nonlinearity="relu"),
    "jordan": lambda i, h: mb.Jordan(input_size=i, hidden_size=h),
}
LOSSES = ("mse", "cross_entropy")


# ---- helpers -------------------------------------------------------------------
def make_problem(kind, loss, *, T, batch, input_size=2, hidden=3, output=2, seed=0, with_h0=False):
    model = mb.Sequence(CELLS[kind](input_size, hidden), output_size=output, loss=loss)
    params = model.init_params(seed=seed)
    rng = np.random.default_rng(seed + 1)
    xs = rng.normal(size=(T, batch, input_size))
    if loss == "mse":
        ys = rng.normal(size=(T, batch, output))
    else:
        ys = rng.integers(0, output, size=(T, batch))
    h0 = rng.normal(scale=0.5, size=model.state_shape(batch)) if with_h0 else None
    return model, params, xs, ys, h0


def full_bytes(model, T, batch, dtype="float64"):
    return mb.plan(T, budget=1.0, model=model, batch=batch, policy="full", dtype=dtype).budget_bytes


def between(model, T, batch, frac, dtype="float64"):
    """A byte budget a fraction ``frac`` of the way from MSM's least to plain BPTT's."""
    least = least_bytes(model, T, batch, dtype=dtype)
    return least + int(frac * (full_bytes(model, T, batch, dtype) - least))


def assert_same(result, reference, what):
    loss, grads = result[0], result[1]
    ref_loss, ref_grads = reference[0], reference[1]
    assert loss == ref_loss, f"{what}: loss {loss!r} != plain BPTT {ref_loss!r}"
    assert grads.keys() == ref_grads.keys()
    for name in ref_grads:
        assert grads[name].dtype == ref_grads[name].dtype
        assert np.array_equal(grads[name], ref_grads[name]), f"{what}: {name} differs from plain BPTT"


# ---- subprocesses, started at once so they overlap the in-process tests ---------
_COUNT_SCRIPT = os.path.join(HERE, "_count_forwards.py")

_NRT_SCRIPT = textwrap.dedent("""
    import json, sys
    import numpy as np
    import memopt_bptt as mb
    from numba.core.runtime import rtsys

    model = mb.Sequence(mb.LSTM(input_size=3, hidden_size=4), output_size=2)
    params = model.init_params(seed=0)

    def nrt_counts(model, schedule, xs, ys):
        # (allocations, meminfo allocations, frees) of the NRT during one warmed-up call
        mb.value_and_grad(model, params, xs, ys, schedule=schedule)
        before = rtsys.get_allocation_stats()
        mb.value_and_grad(model, params, xs, ys, schedule=schedule)
        after = rtsys.get_allocation_stats()
        return [after.alloc - before.alloc, after.mi_alloc - before.mi_alloc, after.free - before.free]

    result = {}
    for T in (20, 200, 20, 200):   # the first round warms up (compiles)
        rng = np.random.default_rng(T)
        xs = rng.normal(size=(T, 2, 3))
        ys = rng.normal(size=(T, 2, 2))
        try:
            mb.plan(T, budget=1, model=model, batch=2)
        except mb.MemoryBudgetError as exc:
            least = exc.least_bytes
        for policy, budget in (("msm", least + 3000), ("revolve", least + 1000), ("full", 1.0)):
            schedule = mb.plan(T, budget=budget, model=model, batch=2, policy=policy)
            result[f"{T}/{policy}"] = nrt_counts(model, schedule, xs, ys)
        # two lanes (two sweeps on two threads); two threads sharing every step by hidden units
        for name, split in (("lanes", {"lanes": 2}), ("units", {"unit_threads": 2})):
            two = mb.Sequence(model.cell, output_size=2, **split)
            try:
                mb.plan(T, budget=1, model=two, batch=2)
            except mb.MemoryBudgetError as exc:
                schedule = mb.plan(T, budget=exc.least_bytes + 3000, model=two, batch=2)
            result[f"{T}/{name}"] = nrt_counts(two, schedule, xs, ys)
    print(json.dumps(result))
""")


def _env(**extra):
    env = dict(os.environ)
    env.update({"OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"})
    env.update(extra)
    return env


@pytest.fixture(scope="module", autouse=True)
def _subprocesses(tmp_path_factory):
    out = tmp_path_factory.mktemp("executor") / "counts.npz"
    procs = {
        "count": (subprocess.Popen([sys.executable, _COUNT_SCRIPT, str(out)], env=_env(NUMBA_DISABLE_JIT="1"),
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True), out),
        "nrt": (subprocess.Popen([sys.executable, "-c", _NRT_SCRIPT], env=_env(NUMBA_NRT_STATS="1"),
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True), None),
    }
    yield procs
    for proc, _ in procs.values():
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


def _finish(procs, key):
    proc, out = procs[key]
    stdout, stderr = proc.communicate(timeout=600)
    assert proc.returncode == 0, f"{key} subprocess failed:\n{stderr[-3000:]}"
    return stdout, out


@pytest.fixture(scope="module")
def counted(_subprocesses):
    _, out = _finish(_subprocesses, "count")
    data = np.load(out)
    return {key: data[key] for key in data.files}


# ---- exactness -----------------------------------------------------------------
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(kind=st.sampled_from(sorted(CELLS)), loss=st.sampled_from(LOSSES),
       T=st.integers(1, 25), batch=st.integers(1, 3), hidden=st.integers(2, 5),
       input_size=st.integers(1, 3), output=st.integers(2, 3), seed=st.integers(0, 2**16),
       frac=st.floats(0.0, 1.25), with_h0=st.booleans())
def test_every_policy_and_budget_is_bit_identical_to_plain_bptt(kind, loss, T, batch, hidden, input_size,
                                                                  output, seed, frac, with_h0):
    model, params, xs, ys, h0 = make_problem(kind, loss, T=T, batch=batch, input_size=input_size,
                                             hidden=hidden, output=output, seed=seed, with_h0=with_h0)
    reference = mb.value_and_grad(model, params, xs, ys, h0=h0, return_h0_grad=True)
    least = least_bytes(model, T, batch)
    budget = least + int(frac * (full_bytes(model, T, batch) - least))
    ran = []
    for policy in POLICIES:
        try:
            result = mb.value_and_grad(model, params, xs, ys, budget=budget, policy=policy, h0=h0,
                                       return_h0_grad=True)
        except mb.MemoryBudgetError as exc:
            # only the fixed-shape baselines may need more than MSM's least
            assert policy in ("sqrt", "full"), f"{policy} refused budget={budget} >= MSM's least {least}"
            assert exc.least_bytes > budget
            continue
        ran.append(policy)
        assert_same(result, reference, f"{kind}/{loss} T={T} {policy} budget={budget}")
        assert result[2].shape == model.state_shape(batch)
        assert np.array_equal(result[2], reference[2]), f"{policy}: dL/dh0 differs from plain BPTT"
    assert {"msm", "hsm", "ism", "revolve"} <= set(ran)


@pytest.mark.parametrize("kind", sorted(CELLS))
@pytest.mark.parametrize("loss", LOSSES)
def test_least_budget_is_bit_identical_and_replays_quadratically(kind, loss):
    T, batch = 9, 2
    model, params, xs, ys, h0 = make_problem(kind, loss, T=T, batch=batch, seed=3, with_h0=True)
    reference = mb.value_and_grad(model, params, xs, ys, h0=h0, return_h0_grad=True)
    least = least_bytes(model, T, batch)
    for policy in ("msm", "hsm", "ism", "revolve"):
        result = mb.value_and_grad(model, params, xs, ys, budget=least, policy=policy, h0=h0,
                                   return_h0_grad=True, return_report=True)
        assert_same(result, reference, f"{kind} {policy} at the least budget")
        assert np.array_equal(result[2], reference[2])
        # one slot (the initial state): every reversal replays from s_0, C(T, 1) = T(T+1)/2
        assert result[3].forward_steps == T * (T + 1) // 2
    with pytest.raises(mb.MemoryBudgetError):
        mb.value_and_grad(model, params, xs, ys, budget=least - 1)


# the GRU's float32 sweep is a compile of its own (about 45 s on a slow 2-core machine): CI's slow step
@pytest.mark.parametrize("kind", ["lstm", pytest.param("gru", marks=pytest.mark.slow)])
def test_float32_is_bit_identical_too(kind):
    T, batch = 14, 2
    model, params, xs, ys, h0 = make_problem(kind, "mse", T=T, batch=batch, hidden=4, seed=6, with_h0=True)
    params = {k: v.astype(np.float32) for k, v in params.items()}
    xs, ys, h0 = xs.astype(np.float32), ys.astype(np.float32), h0.astype(np.float32)
    reference = mb.value_and_grad(model, params, xs, ys, h0=h0, return_h0_grad=True)
    assert reference[1]["cell.weight_hh"].dtype == np.float32
    for frac in (0.0, 0.2, 0.6):
        budget = between(model, T, batch, frac, "float32")
        for policy in ("msm", "hsm", "ism", "revolve"):
            result = mb.value_and_grad(model, params, xs, ys, budget=budget, policy=policy, h0=h0,
                                       return_h0_grad=True)
            assert_same(result, reference, f"float32 {kind} {policy} budget={budget}")
            assert np.array_equal(result[2], reference[2])


@pytest.mark.parametrize("kind", ["lstm", "jordan"])
def test_ready_schedule_gives_the_same_gradients(kind):
    T, batch = 17, 3
    model, params, xs, ys, h0 = make_problem(kind, "mse", T=T, batch=batch, seed=5, with_h0=True)
    reference = mb.value_and_grad(model, params, xs, ys, h0=h0, return_h0_grad=True)
    budget = between(model, T, batch, 0.6)
    for policy in ("msm", "hsm", "sqrt"):
        schedule = mb.plan(T, budget=budget, model=model, batch=batch, dtype="float64", policy=policy)
        for s in (schedule, mb.Schedule.from_json(schedule.to_json())):
            result = mb.value_and_grad(model, params, xs, ys, schedule=s, h0=h0, return_h0_grad=True)
            assert_same(result, reference, f"schedule= {policy}")
            assert np.array_equal(result[2], reference[2])
        by_budget = mb.value_and_grad(model, params, xs, ys, budget=budget, policy=policy, h0=h0)
        assert_same(by_budget, reference, f"budget= {policy}")


def test_schedule_for_another_T_batch_dtype_or_model_is_rejected():
    T, batch = 10, 2
    model, params, xs, ys, _ = make_problem("lstm", "mse", T=T, batch=batch)
    budget = "1MiB"  # plenty for every variant below
    good = mb.plan(T, budget=budget, model=model, batch=batch)
    mb.value_and_grad(model, params, xs, ys, schedule=good)
    other_model = mb.Sequence(mb.LSTM(input_size=2, hidden_size=6), output_size=2)
    wrong = {
        "T": mb.plan(T + 1, budget=budget, model=model, batch=batch),
        "batch": mb.plan(T, budget=budget, model=model, batch=batch + 1),
        "dtype": mb.plan(T, budget=budget, model=model, batch=batch, dtype="float32"),
        "model": mb.plan(T, budget=budget, model=other_model, batch=batch),
    }
    for what, schedule in wrong.items():
        with pytest.raises(ValueError, match="schedule") as info:
            mb.value_and_grad(model, params, xs, ys, schedule=schedule)
        assert not isinstance(info.value, mb.MemoryBudgetError), what
    with pytest.raises(ValueError, match="not both"):
        mb.value_and_grad(model, params, xs, ys, schedule=good, budget=budget)
    with pytest.raises(TypeError, match="schedule"):
        mb.value_and_grad(model, params, xs, ys, schedule=good.to_json())


def test_invalid_schedule_is_not_run():
    T, batch = 10, 2
    model, params, xs, ys, _ = make_problem("lstm", "mse", T=T, batch=batch)
    good = mb.plan(T, budget=between(model, T, batch, 0.3), model=model, batch=batch, policy="msm")
    lying = dataclasses.replace(good, forward_steps=good.forward_steps + 1)
    short_pool = dataclasses.replace(good, pool_quanta=good.pool_quanta - 1)
    dropped = dataclasses.replace(good, codes=good.codes[:-1])  # step 1 never reversed
    for bad in (lying, short_pool, dropped):
        with pytest.raises(mb.ScheduleError):
            mb.value_and_grad(model, params, xs, ys, schedule=bad)


# ---- forward counts, with the JIT off ------------------------------------------
def _cases(counted):
    return json.loads(str(counted["cases"]))


def test_counted_forwards_equal_the_schedule(counted):
    cases = _cases(counted)
    assert len(cases) > 50
    assert {c["policy"] for c in cases} == set(POLICIES)
    for c in cases:
        where = f"T={c['T']} {c['policy']} budget={c['budget']}"
        assert c["forward"] == c["forward_steps"], f"{where}: counted {c['forward']} forwards"
        assert c["backward"] == c["T"], f"{where}: counted {c['backward']} backwards"
        assert c["rebuild"] == c["n_reverse_reads"], where
        if c["policy"] == "full":
            assert c["forward"] == c["T"]


def test_counted_forwards_are_optimal_for_small_T(counted):
    """Counted forwards against exhaustive search (tests/oracles.py) for T <= 8."""
    model = mb.Sequence(mb.LSTM(input_size=3, hidden_size=4), output_size=2)
    checked = 0
    for c in _cases(counted):
        if c["T"] > 8 or c["policy"] not in ("msm", "hsm", "ism"):
            continue
        s = mb.plan(c["T"], budget=c["budget"], model=model, batch=2, policy=c["policy"])
        free = (c["budget"] - s.working_bytes - s.hidden_quanta * s.quantum_bytes) // s.quantum_bytes
        best = brute_force_cost(c["T"], free, s.hidden_quanta, s.internal_quanta,
                                allow_hidden=c["policy"] != "ism", allow_internal=c["policy"] != "hsm")
        assert c["forward"] == best, f"{c['tag']}: counted {c['forward']}, optimum {best} (free={free})"
        checked += 1
    assert checked > 20


def test_gradients_without_jit_match_jitted_and_each_other(counted):
    model = mb.Sequence(mb.LSTM(input_size=3, hidden_size=4), output_size=2)
    params = {k.split("/", 1)[1]: v for k, v in counted.items() if k.startswith("param/")}
    for c in _cases(counted):
        T, tag = c["T"], c["tag"]
        xs, ys = counted[f"xs/{T}"], counted[f"ys/{T}"]
        loss, grads = mb.value_and_grad(model, params, xs, ys, budget=c["budget"], policy=c["policy"])
        nojit_loss = float(counted[f"loss/{tag}"])
        assert np.isclose(nojit_loss, loss, rtol=1e-12, atol=0), tag
        full_tag = next(d["tag"] for d in _cases(counted) if d["T"] == T and d["policy"] == "full")
        assert nojit_loss == float(counted[f"loss/{full_tag}"]), f"{tag}: no-JIT loss differs across policies"
        for name, g in grads.items():
            nojit = counted[f"grad/{tag}/{name}"]
            assert np.allclose(nojit, g, rtol=1e-12, atol=1e-12), f"{tag} {name}: no-JIT != jitted"
            assert np.array_equal(nojit, counted[f"grad/{full_tag}/{name}"]), \
                f"{tag} {name}: no-JIT gradients differ across policies"


# ---- memory --------------------------------------------------------------------
MEMORY_CASES = [(kind, frac, policy) for kind in ("lstm", "gru", "elman_tanh", "jordan")
                for frac, policy in (("least", "msm"), (0.08, "msm"), (0.3, "msm"), (0.3, "hsm"),
                                     (0.3, "sqrt"), (1.0, "msm"))]
# Budgets cover the sweep's data (checkpoints and working buffers); tracemalloc
# also sees the call's Python objects (array headers, argument tuples), a
# constant 4-13 KB whatever T and the sizes (_model.PYTHON_OVERHEAD_BYTES).
OVERHEAD_BYTES = mb._model.PYTHON_OVERHEAD_BYTES


@pytest.mark.parametrize("kind,frac,policy", MEMORY_CASES)
def test_tracemalloc_peak_stays_within_the_budget(kind, frac, policy):
    T, batch = 30, 8
    model, params, xs, ys, _ = make_problem(kind, "mse", T=T, batch=batch, input_size=3, hidden=64, output=4)
    least = least_bytes(model, T, batch, policy)
    budget = least if frac == "least" else max(least, int(frac * full_bytes(model, T, batch)))
    schedule = mb.plan(T, budget=budget, model=model, batch=batch, policy=policy).validate()
    # Outside the budget by the contract: the returned gradients. (The sweep
    # reads schedule.codes in place and drops its copy of h0 once slot 0 holds it.)
    kept = kept_bytes(model, params, xs, ys, schedule)
    assert kept <= schedule.budget_bytes + OVERHEAD_BYTES, \
        f"kept {kept} bytes > budget {schedule.budget_bytes} (+{OVERHEAD_BYTES} overhead)"
    assert abs(kept - schedule.peak_bytes) <= OVERHEAD_BYTES, \
        f"kept {kept} bytes, planned {schedule.peak_bytes}"
    # the budget is not met by skipping the work: the pool is really there
    assert schedule.peak_bytes >= schedule.pool_bytes > 0


def test_peak_grows_with_the_budget_not_with_T():
    """The same byte budget at T and 4T keeps the same memory (inputs aside)."""
    batch = 8
    kept = {}
    for T in (25, 100):
        model, params, xs, ys, _ = make_problem("lstm", "mse", T=T, batch=batch, input_size=3, hidden=64, output=4)
        budget = model.sizes(batch=batch, dtype="float64").working_bytes + 100_000  # the same at both T
        schedule = mb.plan(T, budget=budget, model=model, batch=batch, policy="revolve").validate()
        kept[T] = kept_bytes(model, params, xs, ys, schedule)
        assert kept[T] <= budget + OVERHEAD_BYTES
    assert abs(kept[100] - kept[25]) <= OVERHEAD_BYTES, kept


def test_nrt_allocations_do_not_grow_with_T(_subprocesses):
    stdout, _ = _finish(_subprocesses, "nrt")
    counts = json.loads(stdout.strip().splitlines()[-1])
    for policy in ("msm", "revolve", "full", "lanes", "units"):
        small, large = counts[f"20/{policy}"], counts[f"200/{policy}"]
        assert small == large, f"{policy}: NRT (alloc, meminfo, free) {small} at T=20 but {large} at T=200"
        assert small[0] == small[2], f"{policy}: NRT allocations not freed: {small}"


# ---- failures ------------------------------------------------------------------
@pytest.mark.parametrize("policy", ["msm", "sqrt", "full"])
def test_budget_below_the_least_raises_with_the_least(policy):
    T, batch = 12, 2
    model, params, xs, ys, _ = make_problem("gru", "mse", T=T, batch=batch)
    least = least_bytes(model, T, batch, policy)
    with pytest.raises(mb.MemoryBudgetError, match=str(least)) as info:
        mb.value_and_grad(model, params, xs, ys, budget=least - 1, policy=policy)
    assert isinstance(info.value, ValueError)
    assert info.value.least_bytes == least
    reference = mb.value_and_grad(model, params, xs, ys)
    assert_same(mb.value_and_grad(model, params, xs, ys, budget=least, policy=policy), reference, policy)


@pytest.mark.parametrize("loss", LOSSES)
@pytest.mark.parametrize("policy", ["msm", "full"])
def test_non_finite_loss_raises_instead_of_returning_gradients(loss, policy):
    T, batch = 6, 2
    model, params, xs, ys, _ = make_problem("elman_relu", loss, T=T, batch=batch, seed=2)
    # positive inputs through huge positive weights: h overflows to inf by step 2
    params = dict(params, **{"cell.weight_ih": np.full_like(params["cell.weight_ih"], 1e200),
                             "cell.weight_hh": np.full_like(params["cell.weight_hh"], 1e200)})
    xs = np.abs(xs) + 0.1
    budget = None if policy == "full" else least_bytes(model, T, batch) + 500
    with pytest.raises(FloatingPointError, match="not finite"):
        mb.value_and_grad(model, params, xs, ys, budget=budget, policy=policy)


def test_inf_loss_from_a_huge_readout_raises():
    T, batch = 5, 2
    model, params, xs, ys, _ = make_problem("lstm", "mse", T=T, batch=batch, seed=4)
    params = dict(params, **{"readout.weight": np.full_like(params["readout.weight"], 1e200)})
    with pytest.raises(FloatingPointError, match="not finite"):
        mb.value_and_grad(model, params, xs, ys, budget=between(model, T, batch, 0.5))


def test_measure_step_times_feeds_the_time_model():
    model = mb.Sequence(mb.Elman(input_size=3, hidden_size=8), output_size=2)
    f, b = mb.measure_step_times(model, batch=2, dtype="float64", repeats=5)
    assert f > 0 and b > 0
    schedule = mb.plan(40, budget=0.5, model=model, batch=2, dtype="float64", backward_forward_ratio=b / f)
    rho = b / f
    assert schedule.time_ratio == pytest.approx((schedule.forward_steps + 40 * rho) / (40 * (1 + rho)))
    with pytest.raises(ValueError, match="repeats"):
        mb.measure_step_times(model, batch=2, repeats=0)


# ---- which BLAS ------------------------------------------------------------------
_BLAS_SCRIPT = textwrap.dedent("""
    import json, sys
    import numpy as np
    import memopt_bptt as mb
    from memopt_bptt._kernels import blas as _blas
    out = {"blas": _blas.BLAS_LIBRARY}
    for dtype in ("float64", "float32"):
        model = mb.Sequence(mb.LSTM(input_size=5, hidden_size=7), output_size=3)
        params = model.init_params(seed=3, dtype=dtype)
        rng = np.random.default_rng(4)
        xs = rng.standard_normal((9, 4, 5)).astype(dtype)
        ys = rng.standard_normal((9, 4, 3)).astype(dtype)
        loss, grads = mb.value_and_grad(model, params, xs, ys, budget=0.6)
        out[dtype] = [loss] + [g.astype(float).ravel().tolist() for g in grads.values()]
    print(json.dumps(out))
""")


def test_scipy_blas_fallback_gives_the_same_gradients():
    """MEMOPT_BPTT_BLAS=scipy binds SciPy's LP64 ?gemm to the int64-argument call; the
    gradients agree with the default (NumPy's ILP64 OpenBLAS where present)."""
    runs = {}
    for choice in ("", "scipy"):
        env = dict(os.environ, MEMOPT_BPTT_BLAS=choice)
        proc = subprocess.run([sys.executable, "-c", _BLAS_SCRIPT], env=env, capture_output=True, text=True,
                              timeout=600)
        assert proc.returncode == 0, proc.stderr[-2000:]
        runs[choice] = json.loads(proc.stdout.strip().splitlines()[-1])
    assert runs["scipy"]["blas"] == "scipy.linalg.cython_blas"
    for dtype, tol in (("float64", 1e-12), ("float32", 1e-5)):
        a, b = runs[""][dtype], runs["scipy"][dtype]
        assert a[0] == pytest.approx(b[0], rel=tol)
        for ga, gb in zip(a[1:], b[1:]):
            np.testing.assert_allclose(ga, gb, rtol=tol, atol=tol)


# ---- final_state: the forward alone, carried piece by piece ------------------------------------------
@pytest.mark.parametrize("kind", sorted(CELLS))
def test_final_state_continues_the_reference_forward(kind):
    """The state after xs[:4] continues the textbook forward (tests/reference.py) over xs[4:]
    exactly where running the whole sequence would be; pieces chain bit for bit."""
    model, params, xs, _, h0 = make_problem(kind, "mse", T=9, batch=3, with_h0=True)
    nonlinearity = "relu" if kind.endswith("relu") else "tanh"
    ref_kind = kind.split("_")[0]
    whole = reference_outputs(ref_kind, params, xs, h0=h0, nonlinearity=nonlinearity)
    h = mb.final_state(model, params, xs[:4], h0=h0)
    assert h.shape == model.state_shape(3)
    rest = reference_outputs(ref_kind, params, xs[4:], h0=h, nonlinearity=nonlinearity)
    np.testing.assert_allclose(rest, whole[4:], rtol=1e-12, atol=1e-12)
    assert np.array_equal(mb.final_state(model, params, xs[4:], h0=h), mb.final_state(model, params, xs, h0=h0))


@pytest.mark.parametrize("split", [{"lanes": 2}, {"unit_threads": 2}])
def test_final_state_of_a_split_model_matches_one_thread(split):
    cell = mb.LSTM(input_size=3, hidden_size=8)
    model = mb.Sequence(cell, output_size=2, **split)
    one = mb.Sequence(cell, output_size=2, lanes=1, unit_threads=1)
    params = model.init_params(seed=3)
    xs = np.random.default_rng(4).normal(size=(7, 8, 3))
    np.testing.assert_allclose(mb.final_state(model, params, xs), mb.final_state(one, params, xs),
                               rtol=1e-12, atol=1e-13)


def test_final_state_rejects_bad_input():
    model, params, xs, _, _ = make_problem("gru", "mse", T=5, batch=2)
    with pytest.raises(ValueError, match="final_state: xs has shape"):
        mb.final_state(model, params, xs[:, :, :1])
    with pytest.raises(ValueError, match="final_state: h0 has shape"):
        mb.final_state(model, params, xs, h0=np.zeros((3, 3)))
    with pytest.raises(TypeError, match="final_state: xs is float32"):
        mb.final_state(model, params, xs.astype(np.float32))
    bad = xs.copy()
    bad[2, 1, 0] = np.nan
    with pytest.raises(ValueError, match="final_state: xs contains NaN"):
        mb.final_state(model, params, bad)


@pytest.mark.slow  # compiles float32 sweeps of a GRU 256 and split LSTM units: tens of seconds
def test_a_busy_machine_changes_threads_not_bits(monkeypatch):
    """On a loaded machine unit threads do not spin (_runner.machine_busy, _runner.crowded: one
    thread runs every unit share) and BLAS keeps its thread count (OpenBLAS's Haswell kernels
    give other bits with one thread than with two); the gradients are the same bits."""
    from memopt_bptt._executor import _runner

    rng = np.random.default_rng(3)
    results = {}
    for busy in (False, True):
        monkeypatch.setattr(_runner, "machine_busy", lambda busy=busy: busy)
        monkeypatch.setattr(_runner, "crowded", lambda threads, busy=busy: busy)
        for name, model in (("gru", mb.Sequence(mb.GRU(16, 256), output_size=3, unit_threads=1)),  # BLAS threads
                            ("lstm-units", mb.Sequence(mb.LSTM(16, 256), output_size=3, unit_threads=2))):
            params = model.init_params(seed=1, dtype="float32")
            xs = rng.standard_normal((12, 16, 16)).astype(np.float32) if busy is False else results[name][2]
            ys = rng.standard_normal((12, 16, 3)).astype(np.float32) if busy is False else results[name][3]
            run = _runner.Run(model, model.check_params(params), _runner.Data(xs, ys, np.zeros((1, 1), np.int64),
                              np.zeros((1, 1)), np.full(16, 12, np.int64)), model.sizes(batch=16, dtype="float32"),
                              loss_kind=0, scale=1.0)
            assert run.blas == (1 if name == "lstm-units" else None)  # None: BLAS's own count, busy or not
            if name == "lstm-units":
                assert run.solo == busy and (run.spin == 0) == busy
            loss, grads = mb.value_and_grad(model, params, xs, ys, budget=0.5)
            if busy is False:
                results[name] = (loss, grads, xs, ys)
            else:
                assert loss == results[name][0]
                for k in grads:
                    assert np.array_equal(grads[k], results[name][1][k]), (name, k)


def test_report_and_cli_show_what_planning_cost(capsys):
    """Planning is outside the budget (which covers the sweep); the report says what it cost: the
    planner's msm table at T=2000 holds several times the sweep's whole budget."""
    model = mb.Sequence(mb.LSTM(3, 8), output_size=2, lanes=1)
    params = model.init_params(seed=0)
    rng = np.random.default_rng(0)
    xs, ys = rng.normal(size=(2000, 2, 3)), rng.normal(size=(2000, 2, 2))
    mb.plan(50, budget=0.3, model=model, batch=2, dtype="float64")  # the planner runs (loads) in this process
    budget = 0.013  # a budget not planned before in this process: planned in this call
    *_, first = mb.value_and_grad(model, params, xs, ys, budget=budget, return_report=True)
    assert first.plan_seconds is not None and first.plan_seconds > 0
    assert first.plan_peak_bytes > first.schedule.budget_bytes  # the tables, apart from the budget
    assert "planning " in str(first) and "outside the budget" in str(first)
    *_, again = mb.value_and_grad(model, params, xs, ys, budget=budget, return_report=True)
    assert again.plan_seconds is None and again.plan_peak_bytes is None  # from the cache
    from memopt_bptt.cli import main
    assert main(["plan", "--steps", "2000", "--budget", "2%", "--cell", "lstm", "--input", "3", "--hidden", "8",
                 "--output", "2", "--batch", "2", "--dtype", "float64"]) == 0
    line = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("planning")]
    assert len(line) == 1 and " s, " in line[0] and "outside the budget" in line[0]


def test_a_first_plan_is_not_traced_while_the_planner_compiles(monkeypatch):
    """Before the process has run the planner's jitted code, planning runs untraced (tracemalloc made
    Numba's compiler 2.6x slower, and its memory is not the planner's): the peak is unknown, None;
    plain BPTT's plan is NumPy and always traced."""
    from memopt_bptt import _plans
    monkeypatch.setattr(_plans, "_planner_loaded", lambda: False)
    monkeypatch.setattr(_plans, "planner_cached", lambda: False)
    model = mb.Sequence(mb.LSTM(3, 8), output_size=2, lanes=1)
    _, stats = _plans.measured_plan(300, budget=0.1, model=model, batch=2, dtype="float64", policy="msm")
    assert stats.seconds > 0 and stats.peak_bytes is None
    _, plain = _plans.measured_plan(300, budget=1.0, model=model, batch=2, dtype="float64", policy="full")
    assert plain.peak_bytes is not None and plain.peak_bytes > 0
    monkeypatch.setattr(_plans, "_planner_loaded", lambda: True)
    _, traced = _plans.measured_plan(301, budget=0.1, model=model, batch=2, dtype="float64", policy="msm")
    assert traced.peak_bytes is not None and traced.peak_bytes > 0
