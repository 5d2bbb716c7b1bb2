"""LSTM cell with PyTorch's nn.LSTM layout (gate order i, f, g, o).

State ``s_t = [h_t | c_t]`` (2H per batch row). Internal state, what the
backward reads: ``[i | f | g | o | c_{t-1} | tanh(c_t) | h_{t-1}]`` (7H per
row), so alpha = 3.5. ``h_t`` and ``c_t`` are rebuilt from it exactly with the
same expressions the forward uses.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from ._activations import sigmoid, tanh
from ._base import Cell
from ._blas import gemm

__all__ = ["LSTM"]


@njit(cache=True)
def lstm_forward(w_ih, w_hh, b_ih, b_hh, w_out, b_out, x, s_prev, s_new, internal, work):
    B = x.shape[0]
    H = w_hh.shape[1]
    n = B * H
    gates = work[: 4 * n].reshape((B, 4 * H))
    for b in range(B):
        for j in range(4 * H):
            gates[b, j] = b_ih[j] + b_hh[j]
    h_prev = s_prev[:n].reshape((B, H))
    gemm(False, True, 1.0, x, w_ih, 1.0, gates)
    gemm(False, True, 1.0, h_prev, w_hh, 1.0, gates)
    c_prev = s_prev[n: 2 * n]
    for b in range(B):
        row = b * H
        for j in range(H):
            p = row + j
            internal[p] = sigmoid(gates[b, j])
            internal[n + p] = sigmoid(gates[b, H + j])
            internal[2 * n + p] = tanh(gates[b, 2 * H + j])
            internal[3 * n + p] = sigmoid(gates[b, 3 * H + j])
            internal[4 * n + p] = c_prev[p]
            internal[6 * n + p] = s_prev[p]
            # From the *stored* (dtype-rounded) values, with the same expressions as
            # lstm_state_from_internal, so a rebuilt state is bit-identical in float32 too.
            c = internal[n + p] * internal[4 * n + p] + internal[p] * internal[2 * n + p]
            s_new[n + p] = c
            internal[5 * n + p] = tanh(s_new[n + p])
            s_new[p] = internal[3 * n + p] * internal[5 * n + p]


@njit(cache=True)
def lstm_state_from_internal(w_ih, w_hh, b_ih, b_hh, w_out, b_out, x, internal, s_out, work):
    n = x.shape[0] * w_hh.shape[1]
    for p in range(n):
        # The same expressions, in the same order, as lstm_forward: bit-exact.
        c = internal[n + p] * internal[4 * n + p] + internal[p] * internal[2 * n + p]
        s_out[p] = internal[3 * n + p] * internal[5 * n + p]
        s_out[n + p] = c


@njit(cache=True)
def lstm_backward(w_ih, w_hh, b_ih, b_hh, w_out, b_out, x, internal, ds, ds_prev,
                  g_w_ih, g_w_hh, g_b_ih, g_b_hh, g_w_out, g_b_out, work):
    B = x.shape[0]
    H = w_hh.shape[1]
    n = B * H
    d_pre = work[: 4 * n].reshape((B, 4 * H))
    for b in range(B):
        row = b * H
        for j in range(H):
            p = row + j
            ig = internal[p]
            fg = internal[n + p]
            gg = internal[2 * n + p]
            og = internal[3 * n + p]
            cp = internal[4 * n + p]
            tc = internal[5 * n + p]
            dh = ds[p]
            dc = ds[n + p] + dh * og * (1.0 - tc * tc)
            d_pre[b, j] = dc * gg * ig * (1.0 - ig)
            d_pre[b, H + j] = dc * cp * fg * (1.0 - fg)
            d_pre[b, 2 * H + j] = dc * ig * (1.0 - gg * gg)
            d_pre[b, 3 * H + j] = dh * tc * og * (1.0 - og)
            ds_prev[n + p] = dc * fg
    h_prev = internal[6 * n: 7 * n].reshape((B, H))
    gemm(True, False, 1.0, d_pre, x, 1.0, g_w_ih)
    gemm(True, False, 1.0, d_pre, h_prev, 1.0, g_w_hh)
    for b in range(B):
        for j in range(4 * H):
            g_b_ih[j] += d_pre[b, j]
            g_b_hh[j] += d_pre[b, j]
    gemm(False, False, 1.0, d_pre, w_hh, 0.0, ds_prev[:n].reshape((B, H)))



def LSTM(input_size: int, hidden_size: int) -> Cell:
    """An LSTM cell (PyTorch nn.LSTM parameter layout, gate order i, f, g, o).

    Example::

        cell = mb.LSTM(input_size=8, hidden_size=32)
    """
    return Cell(
        kind="lstm",
        input_size=input_size,
        hidden_size=hidden_size,
        n_gates=4,
        forward_step=lstm_forward,
        backward_step=lstm_backward,
        state_from_internal=lstm_state_from_internal,
        state_width=lambda output_size: 2 * hidden_size,
        internal_width=lambda output_size: 7 * hidden_size,
        work_size=lambda batch, output_size: 4 * batch * hidden_size,
        backward_forward_ratio=2.0,
    )
