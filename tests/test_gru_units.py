"""The GRU's unit kernels (memopt_bptt/cells/gru_units.py): every step's hidden units split between threads.

The same checks as the LSTM's (test_unit_threads.py, test_stack_units.py), for a GRU alone, a stack
of GRUs, and a GRU over an LSTM and under one. Oracles, all independent of the code under test:
plain BPTT of the same model (every policy and budget bit-identical to it), the same network in rows
mode (``unit_threads=1``: its sums taken in another order, so equal to rounding), central finite
differences of the independent numpy reference (tests/reference.py), PyTorch's nn.GRU (one and two
layers) and nn.LSTM under nn.GRU in float64, threads taking turns on one CPU (the same bits as on
two), and tracemalloc against the budget.
"""

from __future__ import annotations

import os
import sys

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import memopt_bptt as mb
import memopt_bptt._executor._runner as runner
from memopt_bptt import _model, _split


sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _bits import as_list, assert_bits, assert_close, data, rows_twin  # noqa: E402
from _tracing import kept_bytes, least_bytes, runs_at_a_budget_between  # noqa: E402
from reference import finite_difference_grads, max_relative_error, reference_loss  # noqa: E402

# a GRU unit-threads sweep: about a minute to compile on a slow 2-core machine, so CI's slow step runs what uses it
SWEEP = pytest.mark.slow

STRUCTURES = {  # name: layer factories (input, hidden, grad_chunk) -> cell
    "gru": (mb.GRU,),
    "gru+gru": (mb.GRU, mb.GRU),
    "lstm+gru": (mb.LSTM, mb.GRU),   # a GRU over an LSTM
    "gru+lstm": (mb.GRU, mb.LSTM),
}


def model_of(structure, hidden, *, threads, loss="mse", input_size=2, output=2, chunks=(2, 2)):
    sizes = [input_size, *hidden]
    cells = [make(sizes[k], sizes[k + 1], grad_chunk=chunks[k]) for k, make in enumerate(STRUCTURES[structure])]
    lanes = 1 if threads == 1 else None
    return mb.Sequence(cells if len(cells) > 1 else cells[0], output_size=output, loss=loss, unit_threads=threads,
                       lanes=lanes)


# ---- the rule, and asked-for threads ------------------------------------------------------------------

def test_the_rule_gives_the_gru_unit_threads_where_they_paid():
    gru = mb.Sequence(mb.GRU(64, 256), output_size=16)
    assert gru.unit_split(16) == ((0, 128), (128, 256))       # 3.1 M multiply-adds
    assert gru.sizes(batch=16, dtype="float32").unit_threads == 2 and gru.lane_batches(16) == (16,)
    assert gru.unit_split(2) == ((0, 128), (128, 256))        # matrix-vector steps, as the LSTM's
    assert gru.unit_split(1) == ((0, 128), (128, 256))        # and at batch 1, 2 * MATVEC_MIN_UNITS
    assert 2 * _split.MATVEC_MIN_UNITS == 256
    assert mb.Sequence(mb.GRU(64, 128), output_size=16).unit_split(1) == ((0, 128),)
    assert mb.Sequence(mb.GRU(64, 384), output_size=16).unit_split(1) == ((0, 192), (192, 384))
    assert mb.Sequence(mb.LSTM(64, 256), output_size=16).unit_split(1) == ((0, 128), (128, 256))  # the LSTM's rule
    mixed = mb.Sequence([mb.LSTM(64, 512), mb.GRU(512, 256)], output_size=16)
    assert mixed.unit_split(1, layer=0) == ((0, 256), (256, 512)) and mixed.unit_split(1) == ((0, 128), (128, 256))
    assert mb.Sequence([mb.LSTM(64, 512), mb.GRU(512, 128)], output_size=16).unit_split(1, layer=0) == ((0, 512),)
    assert mb.Sequence(mb.GRU(64, 256), output_size=16, unit_threads=2).unit_split(1) == ((0, 128), (128, 256))
    assert gru.lane_batches(64) == (32, 32) and gru.unit_split(64) == ((0, 256),)  # a wide batch: lanes
    assert mb.Sequence(mb.GRU(64, 64), output_size=16).lane_batches(16) == (8, 8)
    assert mb.Sequence(mb.GRU(64, 1024), output_size=16).unit_split(16) == ((0, 512), (512, 1024))
    stacked = mb.Sequence([mb.LSTM(64, 256), mb.GRU(256, 256)], output_size=16)
    assert stacked.unit_split(16) == ((0, 128), (128, 256)) and "2 unit threads" in stacked.describe_split(16)


# ---- the kernels are there, and asked-for threads split the GRU ------------------------------------

def test_the_gru_has_unit_kernels_and_asked_for_threads_split_it():
    cell = mb.GRU(4, 7)
    assert len(cell.unit_kernels) == 5 and cell.unit_input_grad is not None and cell.grad_chunk == 2
    model = mb.Sequence(cell, output_size=2, unit_threads=3)
    assert model.unit_split(4) == ((0, 3), (3, 5), (5, 7)) and model.sizes(batch=4).unit_threads == 3
    stacked = mb.Sequence([mb.LSTM(2, 7), mb.GRU(7, 4)], output_size=2, unit_threads=2)
    assert stacked.unit_split(3, layer=0) == ((0, 4), (4, 7)) and stacked.unit_split(3) == ((0, 2), (2, 4))
    assert "2 unit threads" in stacked.describe_split(3) and "asked for" in stacked.describe_split(3)


# ---- exactness -------------------------------------------------------------------------------------

@SWEEP
@pytest.mark.parametrize("structure", list(STRUCTURES))
@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(loss=st.sampled_from(["mse", "cross_entropy"]), T=st.integers(1, 20), batch=st.integers(1, 4),
       threads=st.integers(2, 3), hidden=st.tuples(st.integers(3, 9), st.integers(3, 9)),
       chunks=st.tuples(st.sampled_from([1, 2, 3]), st.sampled_from([1, 2, 3])), seed=st.integers(0, 2**16),
       frac=st.floats(0.0, 1.0))
def test_every_policy_is_bit_identical_to_plain_bptt_and_equal_to_rows_mode(structure, loss, T, batch, threads,
                                                                            hidden, chunks, seed, frac):
    layers = len(STRUCTURES[structure])
    model = model_of(structure, hidden[:layers], threads=threads, loss=loss, chunks=chunks)
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
@pytest.mark.parametrize("loss", ["mse", "cross_entropy"])
def test_unit_threads_match_finite_differences_of_the_reference(loss):
    T, batch = 6, 3
    model = model_of("gru", (5,), threads=2, loss=loss, output=3)
    params = model.init_params(seed=2)
    xs, ys, h0 = data(model, T, batch, 2)
    budget = least_bytes(model, T, batch) + 2 * model.sizes(batch=batch).state_bytes  # a budget that recomputes
    value, grads, dh0 = mb.value_and_grad(model, params, xs, ys, h0=h0, return_h0_grad=True, budget=budget)
    assert abs(value - reference_loss("gru", params, xs, ys, loss=loss, h0=h0)) < 1e-12
    fd, fd_h0 = finite_difference_grads(lambda p, h: reference_loss("gru", p, xs, ys, loss=loss, h0=h), params, h0)
    for name in grads:
        assert max_relative_error(grads[name], fd[name]) < 1e-6, name
    assert max_relative_error(dh0, fd_h0) < 1e-6


def _torch_run(torch, modules, linear, xs, ys, h0s):
    out = torch.from_numpy(xs)
    for module, h0 in zip(modules, h0s):
        out, _ = module(out, h0)
    loss = torch.nn.functional.mse_loss(linear(out), torch.from_numpy(ys))
    loss.backward()
    return loss.item()


@SWEEP
@pytest.mark.parametrize("structure", ["gru", "gru+gru", "lstm+gru"])
def test_unit_threads_match_torch(structure):
    torch = pytest.importorskip("torch")
    T, batch, I, H, O = 7, 16, 4, 8, 3  # 16 columns and 8-wide blocks: the register-tiled GEMM's path in float64
    layers = len(STRUCTURES[structure])
    model = model_of(structure, (H, H)[:layers], threads=2, input_size=I, output=O)
    rng = np.random.default_rng(1)
    params = {k: v + 0.05 * rng.standard_normal(v.shape) for k, v in model.init_params(seed=1).items()}
    xs, ys, h0 = data(model, T, batch, 1)
    value, grads, dh0 = mb.value_and_grad(model, params, xs, ys, h0=h0, return_h0_grad=True)
    linear = torch.nn.Linear(H, O, dtype=torch.float64)
    if structure == "gru+gru":  # one nn.GRU of two layers; h0 (layers, batch, hidden)
        modules = [torch.nn.GRU(I, H, num_layers=2, dtype=torch.float64)]
        names = {"rnn." + n: (modules[0], n) for n, _ in modules[0].named_parameters()}
        h0_t = [torch.tensor(h0, requires_grad=True)]
        hx = [h0_t[0]]
    elif structure == "gru":
        modules = [torch.nn.GRU(I, H, dtype=torch.float64)]
        names = {"cell." + n.replace("_l0", ""): (modules[0], n) for n, _ in modules[0].named_parameters()}
        h0_t = [torch.tensor(h0, requires_grad=True)]
        hx = [h0_t[0][None]]
    else:  # nn.LSTM under nn.GRU; h0 [(2, batch, hidden) = (h0, c0), (batch, hidden)]
        modules = [torch.nn.LSTM(I, H, dtype=torch.float64), torch.nn.GRU(H, H, dtype=torch.float64)]
        names = {"rnn." + n.replace("_l0", f"_l{k}"): (m, n) for k, m in enumerate(modules)
                 for n, _ in m.named_parameters()}
        h0_t = [torch.tensor(h, requires_grad=True) for h in h0]
        hx = [(h0_t[0][0:1], h0_t[0][1:2]), h0_t[1][None]]
    with torch.no_grad():
        for ours, (m, n) in names.items():
            getattr(m, n).copy_(torch.from_numpy(params[ours]))
        linear.weight.copy_(torch.from_numpy(params["readout.weight"]))
        linear.bias.copy_(torch.from_numpy(params["readout.bias"]))
    theirs_value = _torch_run(torch, modules, linear, xs, ys, hx)
    assert abs(value - theirs_value) < 1e-12
    theirs = {ours: getattr(m, n).grad.numpy() for ours, (m, n) in names.items()}
    theirs.update({"readout.weight": linear.weight.grad.numpy(), "readout.bias": linear.bias.grad.numpy()})
    for name, g in grads.items():
        assert np.max(np.abs(g - theirs[name])) <= 1e-12 * max(1.0, np.abs(theirs[name]).max()), name
    for ours, t in zip(as_list(dh0), h0_t):
        assert np.max(np.abs(ours - t.grad.numpy())) < 1e-12


@SWEEP
@pytest.mark.parametrize("structure", ["gru", "gru+lstm"])
def test_threads_taking_turns_on_one_cpu_give_the_same_bits(structure, monkeypatch):
    layers = len(STRUCTURES[structure])
    model = model_of(structure, (7, 5)[:layers], threads=2)
    params = model.init_params(seed=5)
    xs, ys, h0 = data(model, 30, 3, 5)
    budget = least_bytes(model, 30, 3) + 4 * model.sizes(batch=3).state_bytes
    threaded = mb.value_and_grad(model, params, xs, ys, h0=h0, return_h0_grad=True, budget=budget)
    monkeypatch.setattr(runner, "usable_cpus", lambda: 1)  # no spinning: yield at every wait
    turns = mb.value_and_grad(model, params, xs, ys, h0=h0, return_h0_grad=True, budget=budget)
    assert_bits(turns, threaded, "one CPU")


@SWEEP
def test_float32_hidden_256_is_bit_identical_across_budgets_and_close_to_float64():
    T, batch = 12, 16
    model = model_of("gru", (256,), threads=2, input_size=8, output=4)
    params = model.init_params(seed=3)
    xs, ys, h0 = data(model, T, batch, 3)
    p32 = {k: v.astype(np.float32) for k, v in params.items()}
    xs32, ys32, h032 = xs.astype(np.float32), ys.astype(np.float32), h0.astype(np.float32)
    reference = mb.value_and_grad(model, p32, xs32, ys32, h0=h032, return_h0_grad=True)
    lo = least_bytes(model, T, batch, dtype="float32")
    for budget in (lo, lo + 200_000):
        assert_bits(mb.value_and_grad(model, p32, xs32, ys32, h0=h032, return_h0_grad=True, budget=budget),
                    reference, budget)
    assert_close(reference, mb.value_and_grad(model, params, xs, ys, h0=h0, return_h0_grad=True), 1e-4, "float64")


@SWEEP
def test_unit_threads_stay_within_the_budget():
    T, batch = 30, 8
    model = model_of("gru", (16,), threads=2, input_size=3)
    params = model.init_params(seed=6)
    xs, ys, _ = data(model, T, batch, 6)
    schedule = mb.plan(T, budget=least_bytes(model, T, batch) + 20_000, model=model, batch=batch)
    assert schedule.forward_steps > T  # a real budget, not plain BPTT
    kept = kept_bytes(model, params, xs, ys, schedule)
    assert kept <= schedule.budget_bytes + _model.PYTHON_OVERHEAD_BYTES, (kept, schedule.budget_bytes)
    assert schedule.peak_bytes - 16 * 1024 <= kept  # the threads' buffers are really there
