"""An independent pure-numpy forward of every network, returning the mean loss.

Written from the equations (PyTorch's nn.RNN / nn.GRU / nn.LSTM documentation,
gate orders i,f,g,o and r,z,n; nn.Linear readout; the losses as the
docstring of ``mb.Sequence`` states them), not from the package's kernels, so it is an oracle for the loss value
and, through central finite differences, for every gradient. It imports
nothing from memopt_bptt: a test passes the cell's kind and options in.

``finite_difference_grads`` differentiates a loss given as a function, here
this independent forward, so it also catches a forward kernel that is wrong
in the same way as its backward; ``memopt_bptt.testing.check_grads``
differentiates ``value_and_grad``'s own loss (the user-facing check). The
two are kept apart on purpose: an oracle should share no code with what it
checks.

Example::

    loss = reference_loss("lstm", params, xs, ys, loss="mse")
    grads = finite_difference_grads(lambda p, h: reference_loss("lstm", p, xs, ys, h0=h), params, h0)
"""

from __future__ import annotations

from typing import Callable

import numpy as np

__all__ = ["reference_loss", "reference_outputs", "finite_difference_grads", "max_relative_error"]


def _sigmoid(v: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-v))


def _act(name: str) -> Callable[[np.ndarray], np.ndarray]:
    if name == "tanh":
        return np.tanh
    if name == "relu":
        return lambda v: np.maximum(v, 0.0)
    raise ValueError(f"unknown nonlinearity {name!r}")


def reference_outputs(kind: str, params: dict, xs: np.ndarray, *, h0: np.ndarray | None = None,
                      nonlinearity: str = "tanh") -> np.ndarray:
    """Readout outputs y_t, shape (T, batch, output_size), by the textbook equations.

    ``h0`` has the shape the model's ``state_shape(batch)`` gives: (B, H) for
    elman/gru, (2, B, H) = (h0, c0) for lstm, (B, O) = y_0 for jordan.
    """
    w_ih = params["cell.weight_ih"]
    w_hh = params["cell.weight_hh"]
    b_ih = params["cell.bias_ih"]
    b_hh = params["cell.bias_hh"]
    w_out = params["readout.weight"]
    b_out = params["readout.bias"]
    T, B, _ = xs.shape
    O, H = w_out.shape
    dt = np.result_type(xs, w_ih)
    outs = np.empty((T, B, O), dt)
    if kind == "elman":
        act = _act(nonlinearity)
        h = np.zeros((B, H), dt) if h0 is None else h0
        for t in range(T):
            h = act(xs[t] @ w_ih.T + b_ih + h @ w_hh.T + b_hh)
            outs[t] = h @ w_out.T + b_out
    elif kind == "jordan":
        act = _act(nonlinearity)
        y = np.zeros((B, O), dt) if h0 is None else h0
        for t in range(T):
            h = act(xs[t] @ w_ih.T + b_ih + y @ w_hh.T + b_hh)
            y = h @ w_out.T + b_out
            outs[t] = y
    elif kind == "gru":
        h = np.zeros((B, H), dt) if h0 is None else h0
        for t in range(T):
            gi = xs[t] @ w_ih.T + b_ih
            gh = h @ w_hh.T + b_hh
            r = _sigmoid(gi[:, :H] + gh[:, :H])
            z = _sigmoid(gi[:, H:2 * H] + gh[:, H:2 * H])
            n = np.tanh(gi[:, 2 * H:] + r * gh[:, 2 * H:])
            h = (1.0 - z) * n + z * h
            outs[t] = h @ w_out.T + b_out
    elif kind == "lstm":
        if h0 is None:
            h, c = np.zeros((B, H), dt), np.zeros((B, H), dt)
        else:
            h, c = h0[0], h0[1]
        for t in range(T):
            g = xs[t] @ w_ih.T + b_ih + h @ w_hh.T + b_hh
            i = _sigmoid(g[:, :H])
            f = _sigmoid(g[:, H:2 * H])
            gg = np.tanh(g[:, 2 * H:3 * H])
            o = _sigmoid(g[:, 3 * H:])
            c = f * c + i * gg
            h = o * np.tanh(c)
            outs[t] = h @ w_out.T + b_out
    else:
        raise ValueError(f"unknown cell kind {kind!r}")
    return outs


def reference_loss(kind: str, params: dict, xs: np.ndarray, ys: np.ndarray, *, loss: str = "mse",
                   h0: np.ndarray | None = None, nonlinearity: str = "tanh") -> float:
    """Mean loss over every step and batch row (as ``mb.Sequence``'s docstring defines it).

    "mse": mean over all T*B*O elements of the squared error.
    "cross_entropy": mean over T*B of -log softmax(y_t)[label].
    """
    outs = reference_outputs(kind, params, xs, h0=h0, nonlinearity=nonlinearity).astype(np.float64)
    if loss == "mse":
        return float(np.mean((outs - ys) ** 2))
    if loss == "cross_entropy":
        mx = outs.max(axis=-1, keepdims=True)
        lse = mx[..., 0] + np.log(np.exp(outs - mx).sum(axis=-1))
        picked = np.take_along_axis(outs, ys[..., None].astype(np.int64), axis=-1)[..., 0]
        return float(np.mean(lse - picked))
    raise ValueError(f"unknown loss {loss!r}")


def finite_difference_grads(f: Callable[[dict, np.ndarray | None], float], params: dict,
                            h0: np.ndarray | None = None, *, eps: float = 1e-3
                            ) -> tuple[dict, np.ndarray | None]:
    """Fourth-order central differences of ``f(params, h0)`` for every entry (float64).

    (8 [f(x+e) - f(x-e)] - [f(x+2e) - f(x-2e)]) / 12e: truncation error
    O(e^4) ~ 1e-12 and rounding ~ 1e-16/e ~ 1e-13 at e = 1e-3, so a relative
    error budget of 1e-6 leaves the kernels, not the check, as what can fail.
    """
    params = {k: np.array(v, dtype=np.float64) for k, v in params.items()}
    h0 = None if h0 is None else np.array(h0, dtype=np.float64)

    def diff(arr: np.ndarray) -> np.ndarray:
        out = np.empty_like(arr)
        flat = arr.reshape(-1)
        for idx in range(flat.size):
            keep = flat[idx]
            vals = []
            for step in (eps, -eps, 2.0 * eps, -2.0 * eps):
                flat[idx] = keep + step
                vals.append(f(params, h0))
            flat[idx] = keep
            out.reshape(-1)[idx] = (8.0 * (vals[0] - vals[1]) - (vals[2] - vals[3])) / (12.0 * eps)
        return out

    grads = {k: diff(v) for k, v in params.items()}
    return grads, (None if h0 is None else diff(h0))


def max_relative_error(a: np.ndarray, b: np.ndarray) -> float:
    """max |a - b| / max(|a|, |b|, floor): one number per array, robust near 0."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    scale = max(float(np.max(np.abs(a), initial=0.0)), float(np.max(np.abs(b), initial=0.0)), 1e-8)
    return float(np.max(np.abs(a - b), initial=0.0)) / scale
