"""Bad input at the public boundary raises ValueError/TypeError naming the
argument; a budget below the least raises MemoryBudgetError giving the least."""

import re

import numpy as np
import pytest

import memopt_bptt as mb

T, B, I, H, O = 12, 2, 3, 4, 3


@pytest.fixture(scope="module")
def mse():
    model = mb.Sequence(mb.Elman(input_size=I, hidden_size=H), output_size=O, loss="mse")
    rng = np.random.default_rng(0)
    return model, model.init_params(seed=0), rng.standard_normal((T, B, I)), rng.standard_normal((T, B, O))


@pytest.fixture(scope="module")
def ce():
    model = mb.Sequence(mb.Elman(input_size=I, hidden_size=H), output_size=O, loss="cross_entropy")
    rng = np.random.default_rng(1)
    return model, model.init_params(seed=1), rng.standard_normal((T, B, I)), rng.integers(0, O, size=(T, B))


def _with(arr, index, value):
    out = np.array(arr, copy=True)
    out[index] = value
    return out


# ---- xs and ys ---------------------------------------------------------------

@pytest.mark.parametrize("shape", [(T, B), (T, B, I + 1), (T, B, I, 1), (0, B, I), (T, 0, I)])
def test_xs_wrong_shape(mse, shape):
    model, params, _, ys = mse
    with pytest.raises(ValueError, match=r"xs has shape"):
        mb.value_and_grad(model, params, np.zeros(shape), ys)


def test_xs_not_an_array(mse):
    model, params, xs, ys = mse
    with pytest.raises(TypeError, match=r"xs must be a numpy array"):
        mb.value_and_grad(model, params, xs.tolist(), ys)


@pytest.mark.parametrize("shape", [(T, B), (T, B, O + 1), (T - 1, B, O), (T, B + 1, O)])
def test_ys_wrong_shape_mse(mse, shape):
    model, params, xs, _ = mse
    with pytest.raises(ValueError, match=r"ys has shape"):
        mb.value_and_grad(model, params, xs, np.zeros(shape))


@pytest.mark.parametrize("shape", [(T, B, O), (T, B + 1), (T - 1, B)])
def test_ys_wrong_shape_cross_entropy(ce, shape):
    model, params, xs, _ = ce
    with pytest.raises(ValueError, match=r"ys has shape"):
        mb.value_and_grad(model, params, xs, np.zeros(shape, np.int64))


def test_ys_not_an_array(mse):
    model, params, xs, ys = mse
    with pytest.raises(TypeError, match=r"ys must be a numpy array"):
        mb.value_and_grad(model, params, xs, ys.tolist())


def test_xs_dtype_differs_from_params(mse):
    model, params, xs, ys = mse
    with pytest.raises(TypeError, match=r"xs is float32 but params are float64"):
        mb.value_and_grad(model, params, xs.astype(np.float32), ys)


def test_integer_xs(mse):
    model, params, xs, ys = mse
    with pytest.raises(TypeError, match=r"xs is int64"):
        mb.value_and_grad(model, params, xs.astype(np.int64), ys)


def test_ys_dtype_differs_from_params(mse):
    model, params, xs, ys = mse
    with pytest.raises(TypeError, match=r"ys is float32 but params are float64"):
        mb.value_and_grad(model, params, xs, ys.astype(np.float32))


def test_params_of_two_dtypes(mse):
    model, params, xs, ys = mse
    mixed = dict(params, **{"readout.bias": params["readout.bias"].astype(np.float32)})
    with pytest.raises(TypeError, match=re.escape("params['readout.bias'] is float32")):
        mb.value_and_grad(model, mixed, xs, ys)


def test_integer_params(mse):
    model, params, xs, ys = mse
    bad = dict(params, **{"cell.weight_ih": params["cell.weight_ih"].astype(np.int64)})
    with pytest.raises(TypeError, match=re.escape("params['cell.weight_ih'] has dtype int64")):
        mb.value_and_grad(model, bad, xs, ys)


@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
def test_nonfinite_xs(mse, value):
    model, params, xs, ys = mse
    with pytest.raises(ValueError, match=r"xs contains NaN or inf"):
        mb.value_and_grad(model, params, _with(xs, (T - 1, B - 1, I - 1), value), ys)


@pytest.mark.parametrize("value", [np.nan, np.inf])
def test_nonfinite_ys(mse, value):
    model, params, xs, ys = mse
    with pytest.raises(ValueError, match=r"ys contains NaN or inf"):
        mb.value_and_grad(model, params, xs, _with(ys, (3, 0, 1), value))


@pytest.mark.parametrize("name", ["cell.weight_ih", "cell.bias_hh", "readout.weight"])
@pytest.mark.parametrize("value", [np.nan, np.inf])
def test_nonfinite_params(mse, name, value):
    model, params, xs, ys = mse
    bad = dict(params, **{name: _with(params[name], (0,) * params[name].ndim, value)})
    with pytest.raises(ValueError, match=re.escape(f"params[{name!r}] contains NaN or inf")):
        mb.value_and_grad(model, bad, xs, ys)


@pytest.mark.parametrize("value", [np.nan, -np.inf])
def test_nonfinite_h0(mse, value):
    model, params, xs, ys = mse
    h0 = _with(np.zeros(model.state_shape(B)), (1, 2), value)
    with pytest.raises(ValueError, match=r"h0 contains NaN or inf"):
        mb.value_and_grad(model, params, xs, ys, h0=h0)


@pytest.mark.parametrize("shape", [(B, H + 1), (B * H,), (2, B, H), (B + 1, H)])
def test_h0_wrong_shape(mse, shape):
    model, params, xs, ys = mse
    with pytest.raises(ValueError, match=r"h0 has shape"):
        mb.value_and_grad(model, params, xs, ys, h0=np.zeros(shape))


def test_lstm_h0_needs_h_and_c():
    model = mb.Sequence(mb.LSTM(input_size=I, hidden_size=H), output_size=O)
    params = model.init_params(seed=0)
    xs, ys = np.zeros((T, B, I)), np.zeros((T, B, O))
    assert model.state_shape(B) == (2, B, H)
    with pytest.raises(ValueError, match=re.escape(f"h0 has shape {(B, H)}, expected {(2, B, H)}")):
        mb.value_and_grad(model, params, xs, ys, h0=np.zeros((B, H)))


def test_h0_dtype_differs(mse):
    model, params, xs, ys = mse
    with pytest.raises(TypeError, match=r"h0 is float32"):
        mb.value_and_grad(model, params, xs, ys, h0=np.zeros(model.state_shape(B), np.float32))


# ---- labels --------------------------------------------------------------------

@pytest.mark.parametrize("label", [O, O + 5, -1])
def test_labels_out_of_range(ce, label):
    model, params, xs, ys = ce
    with pytest.raises(ValueError, match=re.escape(f"ys labels must be in [0, {O})")):
        mb.value_and_grad(model, params, xs, _with(ys, (T - 1, 0), label))


def test_float_labels_for_cross_entropy(ce):
    model, params, xs, ys = ce
    with pytest.raises(TypeError, match=r"ys must hold integer class labels"):
        mb.value_and_grad(model, params, xs, ys.astype(np.float64))


# ---- names -----------------------------------------------------------------------

def test_unknown_loss():
    with pytest.raises(ValueError, match=r"loss='hinge' is not known"):
        mb.Sequence(mb.Elman(input_size=I, hidden_size=H), output_size=O, loss="hinge")


@pytest.mark.parametrize("factory", [mb.Elman, mb.Jordan])
def test_unknown_nonlinearity(factory):
    with pytest.raises(ValueError, match=r"nonlinearity='sigmoid' is not known"):
        factory(input_size=I, hidden_size=H, nonlinearity="sigmoid")


@pytest.mark.parametrize("policy", ["fastest", "MSM", ""])
def test_unknown_policy(mse, policy):
    model, params, xs, ys = mse
    with pytest.raises(ValueError, match=re.escape(f"policy={policy!r} is not known")):
        mb.value_and_grad(model, params, xs, ys, budget=0.5, policy=policy)


def test_model_must_be_a_sequence(mse):
    _, params, xs, ys = mse
    with pytest.raises(TypeError, match=r"model must be a memopt_bptt.Sequence"):
        mb.value_and_grad(mb.Elman(input_size=I, hidden_size=H), params, xs, ys)


def test_cell_must_be_a_cell():
    with pytest.raises(TypeError, match=r"layers="):
        mb.Sequence("lstm", output_size=O)


@pytest.mark.parametrize("factory", [mb.Elman, mb.Jordan, mb.GRU, mb.LSTM])
@pytest.mark.parametrize("field,value,exc", [("input_size", 0, ValueError), ("hidden_size", -2, ValueError),
                                             ("hidden_size", 2.5, TypeError), ("input_size", True, TypeError)])
def test_bad_cell_sizes(factory, field, value, exc):
    sizes = {"input_size": I, "hidden_size": H, field: value}
    with pytest.raises(exc, match=field):
        factory(**sizes)


# ---- params ----------------------------------------------------------------------

def test_params_not_a_dict(mse):
    model, params, xs, ys = mse
    with pytest.raises(TypeError, match=r"params must be a dict"):
        mb.value_and_grad(model, list(params.values()), xs, ys)


def test_params_missing_entry(mse):
    model, params, xs, ys = mse
    bad = {k: v for k, v in params.items() if k != "cell.bias_hh"}
    with pytest.raises(ValueError, match=re.escape("params has missing ['cell.bias_hh']")):
        mb.value_and_grad(model, bad, xs, ys)


def test_params_extra_entry(mse):
    model, params, xs, ys = mse
    bad = dict(params, **{"cell.weight_ih_l0": params["cell.weight_ih"]})
    with pytest.raises(ValueError, match=re.escape("unexpected ['cell.weight_ih_l0']")):
        mb.value_and_grad(model, bad, xs, ys)


@pytest.mark.parametrize("name,shape", [("cell.weight_ih", (H, I + 1)), ("cell.weight_hh", (H * 4, H)),
                                        ("readout.weight", (H, O)), ("readout.bias", (O, 1))])
def test_params_misshapen_entry(mse, name, shape):
    model, params, xs, ys = mse
    bad = dict(params, **{name: np.zeros(shape)})
    with pytest.raises(ValueError, match=re.escape(f"params[{name!r}] has shape {shape}")):
        mb.value_and_grad(model, bad, xs, ys)


def test_params_entry_not_an_array(mse):
    model, params, xs, ys = mse
    bad = dict(params, **{"readout.bias": params["readout.bias"].tolist()})
    with pytest.raises(TypeError, match=re.escape("params['readout.bias'] must be a numpy array")):
        mb.value_and_grad(model, bad, xs, ys)


@pytest.mark.parametrize("output_size", [0, -1, 2.0, True, "3", None])
def test_bad_output_size(output_size):
    with pytest.raises(ValueError, match=r"output_size="):
        mb.Sequence(mb.Elman(input_size=I, hidden_size=H), output_size=output_size)


# ---- budgets -----------------------------------------------------------------------

@pytest.mark.parametrize("budget,exc", [("5 parsecs", ValueError), ("-3MiB", ValueError), ("0", ValueError),
                                        (0, ValueError), (-1, ValueError), (1.5, ValueError),
                                        (0.0, ValueError), (float("nan"), ValueError), ("", ValueError),
                                        (True, TypeError), ([1024], TypeError)])
def test_bad_budget(mse, budget, exc):
    model, params, xs, ys = mse
    with pytest.raises(exc, match=re.escape(f"budget={budget!r}")):
        mb.value_and_grad(model, params, xs, ys, budget=budget)
    with pytest.raises(exc, match=re.escape(f"budget={budget!r}")):
        mb.plan(T, budget=budget, model=model, batch=B)


@pytest.mark.parametrize("policy", ["msm", "hsm", "ism", "revolve", "full", "sqrt"])
def test_budget_below_the_least(mse, policy):
    model, params, xs, ys = mse
    with pytest.raises(mb.MemoryBudgetError) as info:
        mb.plan(T, budget=64, model=model, batch=B, policy=policy)
    least = info.value.least_bytes
    assert isinstance(info.value, ValueError)
    assert isinstance(least, int) and least > 64
    assert str(least) in str(info.value)
    # exactly the least works, one byte less does not
    schedule = mb.plan(T, budget=least, model=model, batch=B, policy=policy)
    schedule.validate()
    assert schedule.peak_bytes <= least
    assert schedule.budget_bytes == least
    with pytest.raises(mb.MemoryBudgetError) as again:
        mb.plan(T, budget=least - 1, model=model, batch=B, policy=policy)
    assert again.value.least_bytes == least


def test_least_budget_runs_and_matches_plain_bptt(mse):
    model, params, xs, ys = mse
    with pytest.raises(mb.MemoryBudgetError, match=r"below the least that works") as info:
        mb.value_and_grad(model, params, xs, ys, budget="16B")
    least = info.value.least_bytes
    assert str(least) in str(info.value)
    loss, grads = mb.value_and_grad(model, params, xs, ys, budget=least)
    loss_full, grads_full = mb.value_and_grad(model, params, xs, ys)
    assert loss == loss_full
    for name in params:
        np.testing.assert_array_equal(grads[name], grads_full[name])


@pytest.mark.parametrize("policy", ["full", "sqrt", "msm"])
def test_least_reported_past_the_first_check_works(mse, policy):
    """A budget above working buffers + h0 but below the policy's need."""
    model = mse[0]
    sizes = model.sizes(batch=B)
    above_first = sizes.working_bytes + sizes.state_bytes + 1
    try:
        mb.plan(T, budget=above_first, model=model, batch=B, policy=policy)
        return  # this policy fits already (msm always does with one state slot)
    except mb.MemoryBudgetError as exc:
        least, message = exc.least_bytes, str(exc)
    assert str(least) in message
    mb.plan(T, budget=least, model=model, batch=B, policy=policy).validate()
    with pytest.raises(mb.MemoryBudgetError):
        mb.plan(T, budget=least - 1, model=model, batch=B, policy=policy)
