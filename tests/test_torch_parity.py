"""Loss and every gradient against PyTorch autograd on the same weights.

nn.RNN (tanh, relu), nn.GRU and nn.LSTM (one layer, batch_first=False) plus
nn.Linear, with our parameter arrays copied in by name; float64 throughout.
Skipped cleanly where torch is not installed.
"""

import numpy as np
import pytest

import memopt_bptt as mb

torch = pytest.importorskip("torch")
F = torch.nn.functional

# T long enough that 30% of plain BPTT's bytes exceeds the executor's fixed
# working buffers and leaves room for a few checkpoints
T, B, I, H, O = 64, 3, 4, 5, 3
TOL = 1e-10

# (test id, our factory, its kwargs, torch module factory)
CELLS = [
    ("rnn-tanh", "Elman", {"nonlinearity": "tanh"}, lambda: torch.nn.RNN(I, H, nonlinearity="tanh")),
    ("rnn-relu", "Elman", {"nonlinearity": "relu"}, lambda: torch.nn.RNN(I, H, nonlinearity="relu")),
    ("gru", "GRU", {}, lambda: torch.nn.GRU(I, H)),
    ("lstm", "LSTM", {}, lambda: torch.nn.LSTM(I, H)),
]
TORCH_NAME = {
    "cell.weight_ih": "weight_ih_l0",
    "cell.weight_hh": "weight_hh_l0",
    "cell.bias_ih": "bias_ih_l0",
    "cell.bias_hh": "bias_hh_l0",
}


def _torch_value_and_grad(make_rnn, params, xs, ys, loss, h0):
    """Loss, gradients keyed by our names, and dL/dh0 (our shape) from autograd."""
    rnn = make_rnn().double()
    linear = torch.nn.Linear(H, O).double()
    with torch.no_grad():
        for ours, theirs in TORCH_NAME.items():
            getattr(rnn, theirs).copy_(torch.from_numpy(params[ours]))
        linear.weight.copy_(torch.from_numpy(params["readout.weight"]))
        linear.bias.copy_(torch.from_numpy(params["readout.bias"]))
    x = torch.from_numpy(xs)
    if h0 is None:
        hx, h0_leaf = None, None
    else:
        h0_leaf = torch.from_numpy(h0.copy()).requires_grad_(True)
        if isinstance(rnn, torch.nn.LSTM):
            hx = (h0_leaf[0:1], h0_leaf[1:2])   # our (2, B, H) = (h0, c0)
        else:
            hx = h0_leaf[None]                  # (num_layers=1, B, H)
    hs, _ = rnn(x, hx)
    out = linear(hs)
    if loss == "mse":
        value = F.mse_loss(out, torch.from_numpy(ys), reduction="mean")
    else:
        value = F.cross_entropy(out.reshape(T * B, O), torch.from_numpy(ys).reshape(-1).long(), reduction="mean")
    value.backward()
    grads = {ours: getattr(rnn, theirs).grad.numpy() for ours, theirs in TORCH_NAME.items()}
    grads["readout.weight"] = linear.weight.grad.numpy()
    grads["readout.bias"] = linear.bias.grad.numpy()
    dh0 = None if h0_leaf is None else h0_leaf.grad.numpy()
    return float(value.detach()), grads, dh0


def _case(factory, kwargs, loss, seed):
    model = mb.Sequence(getattr(mb, factory)(input_size=I, hidden_size=H, **kwargs), output_size=O, loss=loss)
    params = {k: 2.0 * v for k, v in model.init_params(seed=seed).items()}
    rng = np.random.default_rng(seed + 100)
    xs = rng.standard_normal((T, B, I))
    ys = rng.standard_normal((T, B, O)) if loss == "mse" else rng.integers(0, O, size=(T, B))
    h0 = 0.5 * rng.standard_normal(model.state_shape(B))
    return model, params, xs, ys, h0


def _assert_close(ours, theirs, what):
    diff = float(np.max(np.abs(np.asarray(ours) - np.asarray(theirs))))
    assert diff < TOL, f"{what}: max abs difference {diff:.2e} from PyTorch"


@pytest.mark.parametrize("with_h0", [False, True], ids=["zero-h0", "h0"])
@pytest.mark.parametrize("loss", ["mse", "cross_entropy"])
@pytest.mark.parametrize("cell_id,factory,kwargs,make_rnn", CELLS, ids=[c[0] for c in CELLS])
def test_matches_pytorch(cell_id, factory, kwargs, make_rnn, loss, with_h0):
    model, params, xs, ys, h0 = _case(factory, kwargs, loss, seed=7)
    if not with_h0:
        h0 = None
    t_loss, t_grads, t_dh0 = _torch_value_and_grad(make_rnn, params, xs, ys, loss, h0)
    plain = mb.value_and_grad(model, params, xs, ys, h0=h0, return_h0_grad=True)
    budgeted = mb.value_and_grad(model, params, xs, ys, h0=h0, return_h0_grad=True, budget=0.3, policy="msm",
                                 return_report=True)
    assert budgeted[3].schedule.policy == "msm"
    assert budgeted[3].forward_steps > T  # the budget forced recomputation
    for label, (loss_v, grads, dh0) in (("plain", plain), ("budget=0.3", budgeted[:3])):
        _assert_close(loss_v, t_loss, f"{label} loss")
        for name in params:
            _assert_close(grads[name], t_grads[name], f"{label} {name}")
        assert dh0.shape == model.state_shape(B)
        if with_h0:
            _assert_close(dh0, t_dh0, f"{label} dL/dh0")
    # and the budgeted sweep is bit-identical to plain BPTT
    assert plain[0] == budgeted[0]
    for name in params:
        np.testing.assert_array_equal(plain[1][name], budgeted[1][name])
    np.testing.assert_array_equal(plain[2], budgeted[2])


def test_parameter_layout_matches_pytorch():
    for _, factory, kwargs, make_rnn in CELLS:
        model = mb.Sequence(getattr(mb, factory)(input_size=I, hidden_size=H, **kwargs), output_size=O)
        rnn = make_rnn()
        for ours, theirs in TORCH_NAME.items():
            assert model.param_shapes[ours] == tuple(getattr(rnn, theirs).shape), (factory, ours)
        linear = torch.nn.Linear(H, O)
        assert model.param_shapes["readout.weight"] == tuple(linear.weight.shape)
        assert model.param_shapes["readout.bias"] == tuple(linear.bias.shape)
