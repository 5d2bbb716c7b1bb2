"""Elman network cell with PyTorch's nn.RNN layout (nonlinearity tanh or relu).

State ``h_t`` (H per batch row). Internal state ``[h_{t-1} | h_t]`` (2H per
row): the derivative of tanh and relu is a function of the output, so the
pre-activation need not be kept. alpha = 2. Both blocks are feature-major,
``(H, B)``: the recurrent GEMM is ``W_hh @ h`` with PyTorch's weight as
stored (faster in OpenBLAS at small batch than ``h @ W_hh^T``), and the
activation is a flat loop over a contiguous block with the exp-based tanh of
``_activations`` in the arrays' own precision, so it compiles to vector code.
The input term is ``W_ih @ x^T`` with x transposed into scratch first
(OpenBLAS is faster so than transposing it itself); scratch is
``H + input_size`` per row.
"""

from __future__ import annotations

from numba import njit

from .._jit import inner
from .._kernels.activations import copy_into, grad_through_output, relu_into, tanh_into
from .._kernels.blas import add_row_sums, gemm, transposed_input
from .._kernels.mm import gemm_n, gemm_t
from ._base import Cell

__all__ = ["Elman"]


@inner(cache=True, error_model="numpy")
def _elman_forward(w_ih, w_hh, b_ih, b_hh, x, s_prev, s_new, internal, work, relu):
    B = x.shape[0]
    H = w_hh.shape[1]
    n = B * H
    pre = work[:n]
    pre2 = pre.reshape((H, B))
    for k in range(H):
        bias = b_ih[k] + b_hh[k]
        for b in range(B):
            pre2[k, b] = bias
    gemm_n(w_hh, s_prev[:n].reshape((H, B)), pre2, 1.0)
    gemm_n(w_ih, transposed_input(x, work[n:]), pre2, 1.0)
    copy_into(s_prev[:n], internal[:n])
    if relu:
        relu_into(pre, internal[n: 2 * n])
    else:
        tanh_into(pre, internal[n: 2 * n])
    copy_into(internal[n: 2 * n], s_new[:n])


@inner(cache=True, error_model="numpy")
def _elman_backward(w_ih, w_hh, x, internal, ds, ds_prev, g_w_ih, g_w_hh, g_b_ih, g_b_hh, work, relu):
    B = x.shape[0]
    H = w_hh.shape[1]
    n = B * H
    h = internal[n: 2 * n]
    dh = ds[:n]
    d_pre = work[:n]
    grad_through_output(dh, h, d_pre, relu)
    d2 = d_pre.reshape((H, B))
    gemm(False, False, 1.0, d2, x, 1.0, g_w_ih)
    gemm(False, True, 1.0, d2, internal[:n].reshape((H, B)), 1.0, g_w_hh)
    add_row_sums(d2, g_b_ih, g_b_hh)
    gemm_t(w_hh, d2, ds_prev[:n].reshape((H, B)), 0.0)


@njit(cache=True, error_model="numpy")
def elman_tanh_forward(w_ih, w_hh, b_ih, b_hh, w_out, b_out, x, s_prev, s_new, internal, work):
    _elman_forward(w_ih, w_hh, b_ih, b_hh, x, s_prev, s_new, internal, work, False)


@njit(cache=True, error_model="numpy")
def elman_relu_forward(w_ih, w_hh, b_ih, b_hh, w_out, b_out, x, s_prev, s_new, internal, work):
    _elman_forward(w_ih, w_hh, b_ih, b_hh, x, s_prev, s_new, internal, work, True)


@njit(cache=True, error_model="numpy")
def elman_tanh_backward(w_ih, w_hh, b_ih, b_hh, w_out, b_out, x, internal, ds, ds_prev,
                        g_w_ih, g_w_hh, g_b_ih, g_b_hh, g_w_out, g_b_out, work):
    _elman_backward(w_ih, w_hh, x, internal, ds, ds_prev, g_w_ih, g_w_hh, g_b_ih, g_b_hh, work, False)


@njit(cache=True, error_model="numpy")
def elman_relu_backward(w_ih, w_hh, b_ih, b_hh, w_out, b_out, x, internal, ds, ds_prev,
                        g_w_ih, g_w_hh, g_b_ih, g_b_hh, g_w_out, g_b_out, work):
    _elman_backward(w_ih, w_hh, x, internal, ds, ds_prev, g_w_ih, g_w_hh, g_b_ih, g_b_hh, work, True)


@njit(cache=True, error_model="numpy")
def elman_state_from_internal(w_ih, w_hh, b_ih, b_hh, w_out, b_out, x, internal, s_out, work):
    n = x.shape[0] * w_hh.shape[1]
    # h_t is stored as such: a copy is bit-exact.
    copy_into(internal[n: 2 * n], s_out[:n])


@njit(cache=True, error_model="numpy")
def elman_input_grad(w_ih, w_hh, b_ih, b_hh, w_out, b_out, x, work, dx):
    """dx (input_size, B) += dL/dx_t^T, from the pre-activation gradients the backward left in ``work``."""
    B = x.shape[0]
    H = w_hh.shape[1]
    gemm_t(w_ih, work[: B * H].reshape((H, B)), dx, 1.0)


_KERNELS = {
    "tanh": (elman_tanh_forward, elman_tanh_backward),
    "relu": (elman_relu_forward, elman_relu_backward),
}


def Elman(input_size: int, hidden_size: int, *, nonlinearity: str = "tanh") -> Cell:
    """An Elman cell, h_t = act(W_ih x_t + b_ih + W_hh h_{t-1} + b_hh) (PyTorch nn.RNN).

    Example::

        cell = mb.Elman(input_size=8, hidden_size=32, nonlinearity="relu")
    """
    if nonlinearity not in _KERNELS:
        raise ValueError(f"Elman: nonlinearity={nonlinearity!r} is not known; use 'tanh' or 'relu'")
    forward, backward = _KERNELS[nonlinearity]
    return Cell(
        kind="elman",
        input_size=input_size,
        hidden_size=hidden_size,
        n_gates=1,
        forward_step=forward,
        backward_step=backward,
        state_from_internal=elman_state_from_internal,
        state_width=lambda output_size: hidden_size,
        internal_width=lambda output_size: 2 * hidden_size,
        work_size=lambda batch, output_size: batch * (hidden_size + input_size),
        backward_forward_ratio=1.3,  # measured here (mb.measure_step_times, hidden 256, batch 16, float32)
        feature_major=True,
        input_grad=elman_input_grad,
        options={"nonlinearity": nonlinearity},
    )
