"""Elman network cell with PyTorch's nn.RNN layout (nonlinearity tanh or relu).

State ``h_t`` (H per batch row). Internal state ``[h_{t-1} | h_t]`` (2H per
row): the derivative of tanh and relu is a function of the output, so the
pre-activation need not be kept. alpha = 2.
"""

from __future__ import annotations

import math

from numba import njit

from ._base import Cell
from ._blas import gemm

__all__ = ["Elman"]


@njit(cache=True, inline="always")
def _elman_forward(w_ih, w_hh, b_ih, b_hh, x, s_prev, s_new, internal, work, relu):
    B = x.shape[0]
    H = w_hh.shape[1]
    n = B * H
    pre = work[:n].reshape((B, H))
    for b in range(B):
        for j in range(H):
            pre[b, j] = b_ih[j] + b_hh[j]
    gemm(False, True, 1.0, x, w_ih, 1.0, pre)
    gemm(False, True, 1.0, s_prev[:n].reshape((B, H)), w_hh, 1.0, pre)
    for b in range(B):
        for j in range(H):
            p = b * H + j
            v = pre[b, j]
            h = (v if v > 0.0 else 0.0) if relu else math.tanh(v)
            internal[p] = s_prev[p]
            internal[n + p] = h
            s_new[p] = h


@njit(cache=True, inline="always")
def _elman_backward(w_ih, w_hh, x, internal, ds, ds_prev, g_w_ih, g_w_hh, g_b_ih, g_b_hh, work, relu):
    B = x.shape[0]
    H = w_hh.shape[1]
    n = B * H
    d_pre = work[:n].reshape((B, H))
    for b in range(B):
        for j in range(H):
            p = b * H + j
            h = internal[n + p]
            if relu:
                d_pre[b, j] = ds[p] if h > 0.0 else 0.0
            else:
                d_pre[b, j] = ds[p] * (1.0 - h * h)
    gemm(True, False, 1.0, d_pre, x, 1.0, g_w_ih)
    gemm(True, False, 1.0, d_pre, internal[:n].reshape((B, H)), 1.0, g_w_hh)
    for b in range(B):
        for j in range(H):
            g_b_ih[j] += d_pre[b, j]
            g_b_hh[j] += d_pre[b, j]
    gemm(False, False, 1.0, d_pre, w_hh, 0.0, ds_prev[:n].reshape((B, H)))


@njit(cache=True)
def elman_tanh_forward(w_ih, w_hh, b_ih, b_hh, w_out, b_out, x, s_prev, s_new, internal, work):
    _elman_forward(w_ih, w_hh, b_ih, b_hh, x, s_prev, s_new, internal, work, False)


@njit(cache=True)
def elman_relu_forward(w_ih, w_hh, b_ih, b_hh, w_out, b_out, x, s_prev, s_new, internal, work):
    _elman_forward(w_ih, w_hh, b_ih, b_hh, x, s_prev, s_new, internal, work, True)


@njit(cache=True)
def elman_tanh_backward(w_ih, w_hh, b_ih, b_hh, w_out, b_out, x, internal, ds, ds_prev,
                        g_w_ih, g_w_hh, g_b_ih, g_b_hh, g_w_out, g_b_out, work):
    _elman_backward(w_ih, w_hh, x, internal, ds, ds_prev, g_w_ih, g_w_hh, g_b_ih, g_b_hh, work, False)


@njit(cache=True)
def elman_relu_backward(w_ih, w_hh, b_ih, b_hh, w_out, b_out, x, internal, ds, ds_prev,
                        g_w_ih, g_w_hh, g_b_ih, g_b_hh, g_w_out, g_b_out, work):
    _elman_backward(w_ih, w_hh, x, internal, ds, ds_prev, g_w_ih, g_w_hh, g_b_ih, g_b_hh, work, True)


@njit(cache=True)
def elman_state_from_internal(w_ih, w_hh, b_ih, b_hh, w_out, b_out, x, internal, s_out, work):
    n = x.shape[0] * w_hh.shape[1]
    for p in range(n):
        s_out[p] = internal[n + p]


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
        work_size=lambda batch, output_size: batch * hidden_size,
        backward_forward_ratio=2.0,
        options={"nonlinearity": nonlinearity},
    )
