"""Every built-in cell's gradients against finite differences of an independent
numpy forward (tests/reference.py), in float64, for both losses, every
parameter and the initial state; then hypothesis sweeps over the sizes."""

import os
import sys

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import memopt_bptt as mb

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from reference import finite_difference_grads, max_relative_error, reference_loss  # noqa: E402

# (test id, factory name, kind for the reference, nonlinearity)
CELLS = [
    ("elman-tanh", "Elman", "elman", "tanh"),
    ("elman-relu", "Elman", "elman", "relu"),
    ("jordan-tanh", "Jordan", "jordan", "tanh"),
    ("gru", "GRU", "gru", "tanh"),
    ("lstm", "LSTM", "lstm", "tanh"),
]
LOSSES = ["mse", "cross_entropy"]
FD_RTOL = 1e-6


def make_model(factory: str, nonlinearity: str, *, input_size: int, hidden_size: int, output_size: int,
               loss: str) -> mb.Sequence:
    make = getattr(mb, factory)
    if factory in ("Elman", "Jordan"):
        cell = make(input_size=input_size, hidden_size=hidden_size, nonlinearity=nonlinearity)
    else:
        cell = make(input_size=input_size, hidden_size=hidden_size)
    return mb.Sequence(cell, output_size=output_size, loss=loss)


def make_data(model: mb.Sequence, T: int, B: int, seed: int, dtype=np.float64):
    rng = np.random.default_rng(seed)
    xs = rng.standard_normal((T, B, model.cell.input_size)).astype(dtype)
    if model.loss == "mse":
        ys = rng.standard_normal((T, B, model.output_size)).astype(dtype)
    else:
        ys = rng.integers(0, model.output_size, size=(T, B))
    h0 = (0.5 * rng.standard_normal(model.state_shape(B))).astype(dtype)
    return xs, ys, h0


def make_params(model: mb.Sequence, seed: int, dtype="float64") -> dict:
    # Larger than the default init so every gate and nonlinearity is exercised
    # away from its linear regime; biases nonzero.
    params = model.init_params(seed=seed, dtype="float64")
    return {k: (2.0 * v).astype(dtype) for k, v in params.items()}


def check_against_fd(kind, nonlinearity, model, params, xs, ys, h0, *, rtol=FD_RTOL):
    loss, grads, dh0 = mb.value_and_grad(model, params, xs, ys, h0=h0, return_h0_grad=True)
    ref = reference_loss(kind, params, xs, ys, loss=model.loss, h0=h0, nonlinearity=nonlinearity)
    assert loss == pytest.approx(ref, rel=1e-12, abs=1e-12)

    def f(p, h):
        return reference_loss(kind, p, xs, ys, loss=model.loss, h0=h, nonlinearity=nonlinearity)

    # relu: a small step keeps the stencil off the kinks (piecewise smooth, so
    # rounding, not truncation, bounds the error there)
    fd, fd_h0 = finite_difference_grads(f, params, h0, eps=1e-5 if nonlinearity == "relu" else 1e-3)
    assert set(grads) == set(params)
    for name in params:
        assert grads[name].shape == params[name].shape
        assert grads[name].dtype == params[name].dtype
        err = max_relative_error(grads[name], fd[name])
        assert err < rtol, f"{name}: relative error {err:.2e} against finite differences"
    assert dh0.shape == model.state_shape(xs.shape[1])
    err = max_relative_error(dh0, fd_h0)
    assert err < rtol, f"h0: relative error {err:.2e} against finite differences"
    return loss, grads, dh0


@pytest.mark.parametrize("loss", LOSSES)
@pytest.mark.parametrize("cell_id,factory,kind,nonlinearity", CELLS, ids=[c[0] for c in CELLS])
def test_gradients_match_finite_differences(cell_id, factory, kind, nonlinearity, loss):
    model = make_model(factory, nonlinearity, input_size=3, hidden_size=4, output_size=3, loss=loss)
    params = make_params(model, seed=1)
    xs, ys, h0 = make_data(model, T=5, B=2, seed=2)
    _, grads, dh0 = check_against_fd(kind, nonlinearity, model, params, xs, ys, h0)
    # The check can fail: every gradient is nonzero somewhere (no vacuous pass).
    for name, g in grads.items():
        assert np.any(g != 0.0), name
    assert np.any(dh0 != 0.0)


@pytest.mark.parametrize("cell_id,factory,kind,nonlinearity", CELLS, ids=[c[0] for c in CELLS])
def test_zero_h0_is_the_default(cell_id, factory, kind, nonlinearity):
    model = make_model(factory, nonlinearity, input_size=2, hidden_size=3, output_size=2, loss="mse")
    params = make_params(model, seed=3)
    xs, ys, _ = make_data(model, T=3, B=2, seed=4)
    zero = np.zeros(model.state_shape(2))
    loss_default, grads_default = mb.value_and_grad(model, params, xs, ys)
    loss_zero, grads_zero = mb.value_and_grad(model, params, xs, ys, h0=zero)
    assert loss_default == loss_zero
    assert loss_default == pytest.approx(reference_loss(kind, params, xs, ys, nonlinearity=nonlinearity),
                                         rel=1e-12)
    for name in params:
        np.testing.assert_array_equal(grads_default[name], grads_zero[name])


def test_fd_check_detects_a_wrong_gradient():
    """The comparison itself can fail: perturb one gradient entry and it must."""
    model = make_model("LSTM", "tanh", input_size=2, hidden_size=3, output_size=2, loss="mse")
    params = make_params(model, seed=5)
    xs, ys, h0 = make_data(model, T=3, B=2, seed=6)
    _, grads, _ = mb.value_and_grad(model, params, xs, ys, h0=h0, return_h0_grad=True)
    fd, _ = finite_difference_grads(
        lambda p, h: reference_loss("lstm", p, xs, ys, h0=h), params, h0)
    bad = grads["cell.weight_hh"].copy()
    bad[0, 0] *= 1.0 + 1e-4
    assert max_relative_error(bad, fd["cell.weight_hh"]) > FD_RTOL


def test_alpha_per_cell_is_as_documented():
    H, O, B = 6, 4, 3
    expected = {
        "elman-tanh": 2.0,              # [h_{t-1} | h_t]
        "elman-relu": 2.0,
        "jordan-tanh": (H + 2 * O) / O,  # [y_{t-1} | h_t | y_t] over y
        "gru": 5.0,                      # [r | z | n | W_hn h + b_hn | h_{t-1}]
        "lstm": 3.5,                     # [i | f | g | o | c_{t-1} | tanh c_t | h_{t-1}] over (h, c)
    }
    widths = {"elman-tanh": H, "elman-relu": H, "jordan-tanh": O, "gru": H, "lstm": 2 * H}
    for cell_id, factory, _, nonlinearity in CELLS:
        model = make_model(factory, nonlinearity, input_size=5, hidden_size=H, output_size=O, loss="mse")
        for dtype, itemsize in (("float64", 8), ("float32", 4)):
            sizes = model.sizes(batch=B, dtype=dtype)
            assert sizes.internal_width / sizes.state_width == pytest.approx(expected[cell_id]), cell_id
            assert model.cell.alpha(O) == pytest.approx(expected[cell_id]), cell_id
            assert sizes.state_width == widths[cell_id], cell_id
            assert sizes.state_len == B * widths[cell_id]
            assert sizes.state_bytes == B * widths[cell_id] * itemsize
            assert sizes.internal_bytes == pytest.approx(expected[cell_id] * sizes.state_bytes)
        assert int(np.prod(model.state_shape(B))) == B * widths[cell_id]


# ---- hypothesis sweeps -------------------------------------------------------

_SWEEP = settings(max_examples=6, deadline=None, derandomize=True,
                  suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])


@st.composite
def shapes(draw):
    return dict(
        T=draw(st.sampled_from([1, 2, 3, 7])),
        B=draw(st.sampled_from([1, 2, 3])),
        input_size=draw(st.integers(1, 4)),
        hidden_size=draw(st.integers(1, 5)),
        output_size=draw(st.integers(2, 4)),
        loss=draw(st.sampled_from(LOSSES)),
        seed=draw(st.integers(0, 2**16)),
    )


@pytest.mark.parametrize("cell_id,factory,kind,nonlinearity", CELLS, ids=[c[0] for c in CELLS])
@_SWEEP
@given(case=shapes())
def test_sweep_matches_fd(cell_id, factory, kind, nonlinearity, case):
    model, params, xs, ys, h0 = _case(factory, nonlinearity, case)
    check_against_fd(kind, nonlinearity, model, params, xs, ys, h0)


# Each cell's float32 sweep is a compile of its own (15-25 s on a slow 2-core machine): the
# default run checks the LSTM's, CI's slow step every cell's.
FLOAT32_CELLS = [c if c[0] == "lstm" else pytest.param(*c, marks=pytest.mark.slow) for c in CELLS]


@pytest.mark.parametrize("cell_id,factory,kind,nonlinearity", FLOAT32_CELLS, ids=[c[0] for c in CELLS])
@_SWEEP
@given(case=shapes())
def test_float32_agrees_with_float64(cell_id, factory, kind, nonlinearity, case):
    model, params, xs, ys, h0 = _case(factory, nonlinearity, case)
    loss64, grads64, dh0_64 = mb.value_and_grad(model, params, xs, ys, h0=h0, return_h0_grad=True)
    p32 = {k: v.astype(np.float32) for k, v in params.items()}
    ys32 = ys.astype(np.float32) if model.loss == "mse" else ys
    loss32, grads32, dh0_32 = mb.value_and_grad(model, p32, xs.astype(np.float32), ys32,
                                                h0=h0.astype(np.float32), return_h0_grad=True)
    assert loss32 == pytest.approx(loss64, rel=1e-4)
    # float32 rounding is relative to the gradient's overall scale, not to each
    # entry (a tiny entry is a difference of larger float32 terms).
    scale = max(max(float(np.max(np.abs(g))) for g in grads64.values()), float(np.max(np.abs(dh0_64))))
    for name in params:
        assert grads32[name].dtype == np.float32
        err = float(np.max(np.abs(grads32[name] - grads64[name]))) / scale
        assert err < 1e-4, f"{name}: float32 vs float64 error {err:.2e} of the gradient scale"
    assert dh0_32.dtype == np.float32
    assert float(np.max(np.abs(dh0_32 - dh0_64))) / scale < 1e-4


def _case(factory, nonlinearity, case):
    model = make_model(factory, nonlinearity, input_size=case["input_size"], hidden_size=case["hidden_size"],
                       output_size=case["output_size"], loss=case["loss"])
    params = make_params(model, seed=case["seed"])
    xs, ys, h0 = make_data(model, T=case["T"], B=case["B"], seed=case["seed"] + 1)
    return model, params, xs, ys, h0
