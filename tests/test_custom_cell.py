"""A user-defined cell built with mb.Cell, written from scratch against the
kernel contract in memopt_bptt/cells/_base.py: a minimal gated unit (MGU,
Zhou et al. 2016) with plain loops instead of BLAS.

    f   = sigmoid(W_if x + b_if + W_hf h + b_hf)
    n   = tanh(W_in x + b_in + W_hn (f * h) + b_hn)
    h'  = (1 - f) * h + f * n

Checked with finite differences of a numpy forward through value_and_grad,
with memopt_bptt.testing.check_grads under a budget, and for bit-identical
gradients across policies. docs/custom_cell.md walks
through the same cell and is executed here too (marked slow).
"""

import importlib.util
import math
import os
import re
import sys

import numpy as np
import pytest
from numba import njit

import memopt_bptt as mb
from memopt_bptt.testing import check_grads, least_budget, replay_schedule

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from reference import finite_difference_grads, max_relative_error  # noqa: E402

DOC = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "docs", "custom_cell.md")


@njit(cache=True)
def mgu_forward(w_ih, w_hh, b_ih, b_hh, w_out, b_out, x, s_prev, s_new, internal, work):
    B = x.shape[0]
    H = w_hh.shape[1]
    n = B * H
    gated = work[:n]  # f * h_prev, the input of the candidate's recurrent term
    for b in range(B):
        for j in range(H):
            a = b_ih[j] + b_hh[j]
            for k in range(x.shape[1]):
                a += w_ih[j, k] * x[b, k]
            for k in range(H):
                a += w_hh[j, k] * s_prev[b * H + k]
            f = 1.0 / (1.0 + math.exp(-a))
            internal[b * H + j] = f
            gated[b * H + j] = f * s_prev[b * H + j]
    for b in range(B):
        for j in range(H):
            p = b * H + j
            a = b_ih[H + j] + b_hh[H + j]
            for k in range(x.shape[1]):
                a += w_ih[H + j, k] * x[b, k]
            for k in range(H):
                a += w_hh[H + j, k] * gated[b * H + k]
            f = internal[p]
            cand = math.tanh(a)
            internal[n + p] = cand
            internal[2 * n + p] = s_prev[p]
            s_new[p] = (1.0 - f) * s_prev[p] + f * cand


@njit(cache=True)
def mgu_state_from_internal(w_ih, w_hh, b_ih, b_hh, w_out, b_out, x, internal, s_out, work):
    n = x.shape[0] * w_hh.shape[1]
    for p in range(n):
        f = internal[p]
        # the forward's expression, in the same order: bit-exact
        s_out[p] = (1.0 - f) * internal[2 * n + p] + f * internal[n + p]


@njit(cache=True)
def mgu_backward(w_ih, w_hh, b_ih, b_hh, w_out, b_out, x, internal, ds, ds_prev,
                 g_w_ih, g_w_hh, g_b_ih, g_b_hh, g_w_out, g_b_out, work):
    B = x.shape[0]
    H = w_hh.shape[1]
    I = x.shape[1]
    n = B * H
    d_cand = work[:n]          # dL/d(candidate pre-activation)
    d_gate = work[n: 2 * n]    # dL/d(gate pre-activation)
    d_gated = work[2 * n: 3 * n]  # dL/d(f * h_prev)
    for p in range(n):
        f = internal[p]
        cand = internal[n + p]
        d_cand[p] = ds[p] * f * (1.0 - cand * cand)
    for b in range(B):
        for k in range(H):
            acc = 0.0
            for j in range(H):
                acc += w_hh[H + j, k] * d_cand[b * H + j]
            d_gated[b * H + k] = acc
    for p in range(n):
        f = internal[p]
        cand = internal[n + p]
        h_prev = internal[2 * n + p]
        d_f = ds[p] * (cand - h_prev) + d_gated[p] * h_prev
        d_gate[p] = d_f * f * (1.0 - f)
    for b in range(B):
        for j in range(H):
            dg = d_gate[b * H + j]
            dc = d_cand[b * H + j]
            g_b_ih[j] += dg
            g_b_hh[j] += dg
            g_b_ih[H + j] += dc
            g_b_hh[H + j] += dc
            for k in range(I):
                g_w_ih[j, k] += dg * x[b, k]
                g_w_ih[H + j, k] += dc * x[b, k]
            for k in range(H):
                h_prev = internal[2 * n + b * H + k]
                g_w_hh[j, k] += dg * h_prev
                g_w_hh[H + j, k] += dc * internal[b * H + k] * h_prev
    for b in range(B):
        for k in range(H):
            p = b * H + k
            acc = ds[p] * (1.0 - internal[p]) + d_gated[p] * internal[p]
            for j in range(H):
                acc += w_hh[j, k] * d_gate[b * H + j]
            ds_prev[p] = acc


def MGU(input_size: int, hidden_size: int) -> mb.Cell:
    return mb.Cell(
        kind="mgu",
        input_size=input_size,
        hidden_size=hidden_size,
        n_gates=2,
        forward_step=mgu_forward,
        backward_step=mgu_backward,
        state_from_internal=mgu_state_from_internal,
        state_width=lambda output_size: hidden_size,                 # h
        internal_width=lambda output_size: 3 * hidden_size,          # [f | n | h_prev]
        work_size=lambda batch, output_size: 3 * batch * hidden_size,
    )


def mgu_reference_loss(params, xs, ys, h0):
    """The MGU by its equations in numpy; mean squared error as mse_loss."""
    w_ih, w_hh = params["cell.weight_ih"], params["cell.weight_hh"]
    b_ih, b_hh = params["cell.bias_ih"], params["cell.bias_hh"]
    H = w_hh.shape[1]
    h = h0
    outs = []
    for x in xs:
        f = 1.0 / (1.0 + np.exp(-(x @ w_ih[:H].T + b_ih[:H] + h @ w_hh[:H].T + b_hh[:H])))
        cand = np.tanh(x @ w_ih[H:].T + b_ih[H:] + (f * h) @ w_hh[H:].T + b_hh[H:])
        h = (1.0 - f) * h + f * cand
        outs.append(h @ params["readout.weight"].T + params["readout.bias"])
    return float(np.mean((np.stack(outs) - ys) ** 2))


T, B, I, H, O = 9, 2, 3, 4, 2


@pytest.fixture(scope="module")
def case():
    model = mb.Sequence(MGU(input_size=I, hidden_size=H), output_size=O, loss="mse")
    params = {k: 2.0 * v for k, v in model.init_params(seed=11).items()}
    rng = np.random.default_rng(12)
    xs = rng.standard_normal((T, B, I))
    ys = rng.standard_normal((T, B, O))
    h0 = 0.5 * rng.standard_normal(model.state_shape(B))
    return model, params, xs, ys, h0


def test_layout(case):
    model = case[0]
    assert model.param_shapes["cell.weight_ih"] == (2 * H, I)
    assert model.param_shapes["cell.weight_hh"] == (2 * H, H)
    assert model.state_shape(B) == (B, H)
    assert model.cell.alpha(O) == 3.0


def test_custom_cell_matches_finite_differences(case):
    model, params, xs, ys, h0 = case
    loss, grads, dh0 = mb.value_and_grad(model, params, xs, ys, h0=h0, return_h0_grad=True)
    assert loss == pytest.approx(mgu_reference_loss(params, xs, ys, h0), rel=1e-12)
    fd, fd_h0 = finite_difference_grads(lambda p, h: mgu_reference_loss(p, xs, ys, h), params, h0)
    for name in params:
        assert np.any(grads[name] != 0.0), name
        err = max_relative_error(grads[name], fd[name])
        assert err < 1e-6, f"{name}: relative error {err:.2e} against finite differences"
    assert max_relative_error(dh0, fd_h0) < 1e-6


def test_check_grads_under_a_tight_budget(case):
    model, params, xs, ys, h0 = case
    budget = least_budget(model, T=T, batch=B)
    schedule = mb.plan(T, budget=budget, model=model, batch=B)
    assert replay_schedule(schedule).forward_steps > T  # the budget forces replays
    result = check_grads(model, params, xs, ys, budget=budget, h0=h0, check_h0=True, n_checks=None)
    assert max(result.max_rel_error.values()) < 1e-6


@pytest.mark.parametrize("policy", ["msm", "hsm", "ism", "revolve", "sqrt"])
def test_custom_cell_gradients_bit_identical_across_policies(case, policy):
    model, params, xs, ys, h0 = case
    full = mb.value_and_grad(model, params, xs, ys, h0=h0, return_h0_grad=True)
    sizes = model.sizes(batch=B)
    # the working buffers and three hidden states (the initial one and two more): forces replays;
    # sqrt's fixed layout may need more
    budget = max(least_budget(model, T=T, batch=B) + 2 * sizes.state_bytes,
                 least_budget(model, T=T, batch=B, policy=policy))
    small = mb.value_and_grad(model, params, xs, ys, h0=h0, return_h0_grad=True, budget=budget,
                              policy=policy, return_report=True)
    report = small[3]
    assert report.forward_steps > T  # it did replay
    assert report.schedule.peak_bytes <= report.schedule.budget_bytes
    assert small[0] == full[0]
    for name in params:
        np.testing.assert_array_equal(small[1][name], full[1][name])
    np.testing.assert_array_equal(small[2], full[2])


@pytest.mark.slow
def test_doc_walkthrough_runs(tmp_path):
    """docs/custom_cell.md's python blocks, run in order as one module.

    Slow: the doc's kernels live in a fresh file under tmp_path, so they and
    their sweep compile on every run (8-20 s); the tests above cover the
    same cell in the default run."""
    with open(DOC, encoding="utf-8") as fh:
        blocks = re.findall(r"```python\n(.*?)```", fh.read(), flags=re.S)
    assert len(blocks) >= 3
    path = tmp_path / "custom_cell_doc.py"
    path.write_text("\n".join(blocks), encoding="utf-8")
    spec = importlib.util.spec_from_file_location("custom_cell_doc", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # the doc's own asserts run here
    assert isinstance(module.model, mb.Sequence)
