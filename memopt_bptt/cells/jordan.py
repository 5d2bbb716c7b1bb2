"""Jordan network cell: the previous *output* is fed back instead of h.

    h_t = act(W_ih x_t + b_ih + W_hh y_{t-1} + b_hh),   y_t = W_out h_t + b_out

``weight_ih``/``weight_hh``/``bias_*`` follow nn.RNN's names, with
``weight_hh`` of shape (hidden_size, output_size); the readout (nn.Linear) is
part of the recurrence, so the state is ``y_t`` itself (O per batch row) and
the loss reads it directly. ``y_t`` is the readout's linear output (the
logits for cross-entropy). Internal state ``[y_{t-1} | h_t | y_t]``.

The state is what the loss reads, so it stays row-major ``(B, O)``
(``feature_major`` needs ``output_is_state=False``). The activation is a flat
loop with the exp-based tanh of ``_activations`` in the arrays' own
precision, so it compiles to vector code.
"""

from __future__ import annotations

from numba import njit

from .._jit import inner
from .._kernels.activations import copy_into, grad_through_output, relu_into, tanh_into
from .._kernels.blas import gemm
from ._base import Cell

__all__ = ["Jordan"]


@inner(cache=True, error_model="numpy")
def _jordan_forward(w_ih, w_hh, b_ih, b_hh, w_out, b_out, x, s_prev, s_new, internal, work, relu):
    B = x.shape[0]
    H = w_hh.shape[0]
    O = w_hh.shape[1]
    nh = B * H
    no = B * O
    pre = work[:nh].reshape((B, H))
    for b in range(B):
        for j in range(H):
            pre[b, j] = b_ih[j] + b_hh[j]
    gemm(False, True, 1.0, x, w_ih, 1.0, pre)
    gemm(False, True, 1.0, s_prev[:no].reshape((B, O)), w_hh, 1.0, pre)
    h_flat = internal[no: no + nh]
    if relu:
        relu_into(work[:nh], h_flat)
    else:
        tanh_into(work[:nh], h_flat)
    h = h_flat.reshape((B, H))
    y = internal[no + nh: 2 * no + nh].reshape((B, O))
    for b in range(B):
        for k in range(O):
            y[b, k] = b_out[k]
    gemm(False, True, 1.0, h, w_out, 1.0, y)
    copy_into(s_prev[:no], internal[:no])
    copy_into(internal[no + nh: 2 * no + nh], s_new[:no])


@inner(cache=True, error_model="numpy")
def _jordan_backward(w_ih, w_hh, w_out, x, internal, ds, ds_prev, g_w_ih, g_w_hh, g_b_ih, g_b_hh,
                     g_w_out, g_b_out, work, relu):
    B = x.shape[0]
    H = w_hh.shape[0]
    O = w_hh.shape[1]
    nh = B * H
    no = B * O
    dy = ds[:no].reshape((B, O))
    h = internal[no: no + nh].reshape((B, H))
    gemm(True, False, 1.0, dy, h, 1.0, g_w_out)
    for b in range(B):
        for k in range(O):
            g_b_out[k] += dy[b, k]
    d_flat = work[:nh]
    d_pre = d_flat.reshape((B, H))
    gemm(False, False, 1.0, dy, w_out, 0.0, d_pre)
    h_flat = internal[no: no + nh]
    grad_through_output(d_flat, h_flat, d_flat, relu)
    gemm(True, False, 1.0, d_pre, x, 1.0, g_w_ih)
    gemm(True, False, 1.0, d_pre, internal[:no].reshape((B, O)), 1.0, g_w_hh)
    for b in range(B):
        for j in range(H):
            g_b_ih[j] += d_pre[b, j]
            g_b_hh[j] += d_pre[b, j]
    gemm(False, False, 1.0, d_pre, w_hh, 0.0, ds_prev[:no].reshape((B, O)))


@njit(cache=True, error_model="numpy")
def jordan_tanh_forward(w_ih, w_hh, b_ih, b_hh, w_out, b_out, x, s_prev, s_new, internal, work):
    _jordan_forward(w_ih, w_hh, b_ih, b_hh, w_out, b_out, x, s_prev, s_new, internal, work, False)


@njit(cache=True, error_model="numpy")
def jordan_relu_forward(w_ih, w_hh, b_ih, b_hh, w_out, b_out, x, s_prev, s_new, internal, work):
    _jordan_forward(w_ih, w_hh, b_ih, b_hh, w_out, b_out, x, s_prev, s_new, internal, work, True)


@njit(cache=True, error_model="numpy")
def jordan_tanh_backward(w_ih, w_hh, b_ih, b_hh, w_out, b_out, x, internal, ds, ds_prev,
                         g_w_ih, g_w_hh, g_b_ih, g_b_hh, g_w_out, g_b_out, work):
    _jordan_backward(w_ih, w_hh, w_out, x, internal, ds, ds_prev, g_w_ih, g_w_hh, g_b_ih, g_b_hh,
                     g_w_out, g_b_out, work, False)


@njit(cache=True, error_model="numpy")
def jordan_relu_backward(w_ih, w_hh, b_ih, b_hh, w_out, b_out, x, internal, ds, ds_prev,
                         g_w_ih, g_w_hh, g_b_ih, g_b_hh, g_w_out, g_b_out, work):
    _jordan_backward(w_ih, w_hh, w_out, x, internal, ds, ds_prev, g_w_ih, g_w_hh, g_b_ih, g_b_hh,
                     g_w_out, g_b_out, work, True)


@njit(cache=True, error_model="numpy")
def jordan_state_from_internal(w_ih, w_hh, b_ih, b_hh, w_out, b_out, x, internal, s_out, work):
    no = x.shape[0] * w_hh.shape[1]
    nh = x.shape[0] * w_hh.shape[0]
    for p in range(no):
        s_out[p] = internal[no + nh + p]


_KERNELS = {
    "tanh": (jordan_tanh_forward, jordan_tanh_backward),
    "relu": (jordan_relu_forward, jordan_relu_backward),
}


def Jordan(input_size: int, hidden_size: int, *, nonlinearity: str = "tanh") -> Cell:
    """A Jordan cell: the previous output y_{t-1} is fed back (see module docstring).

    Example::

        cell = mb.Jordan(input_size=8, hidden_size=32)
    """
    if nonlinearity not in _KERNELS:
        raise ValueError(f"Jordan: nonlinearity={nonlinearity!r} is not known; use 'tanh' or 'relu'")
    forward, backward = _KERNELS[nonlinearity]
    return Cell(
        kind="jordan",
        input_size=input_size,
        hidden_size=hidden_size,
        n_gates=1,
        forward_step=forward,
        backward_step=backward,
        state_from_internal=jordan_state_from_internal,
        state_width=lambda output_size: output_size,
        internal_width=lambda output_size: hidden_size + 2 * output_size,
        work_size=lambda batch, output_size: batch * hidden_size,
        recurrent_from_output=True,
        output_is_state=True,
        backward_forward_ratio=0.6,  # measured here (mb.measure_step_times, hidden 256, batch 16, float32)
        options={"nonlinearity": nonlinearity},
    )
