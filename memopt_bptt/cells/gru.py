"""GRU cell with PyTorch's nn.GRU layout (gate order r, z, n).

    r = sigmoid(W_ir x + b_ir + W_hr h + b_hr)
    z = sigmoid(W_iz x + b_iz + W_hz h + b_hz)
    n = tanh(W_in x + b_in + r * (W_hn h + b_hn))
    h' = (1 - z) * n + z * h

State ``h_t`` (H per row). Internal state ``[r | z | n | W_hn h + b_hn | h_{t-1}]``
(5H per row), alpha = 5. Backward is the linear-time chain rule (Li 2016
contrasts it with the quadratic direct algorithm).
"""

from __future__ import annotations

from numba import njit

from ._activations import sigmoid, tanh
from ._base import Cell
from ._blas import gemm

__all__ = ["GRU"]


@njit(cache=True)
def gru_forward(w_ih, w_hh, b_ih, b_hh, w_out, b_out, x, s_prev, s_new, internal, work):
    B = x.shape[0]
    H = w_hh.shape[1]
    n = B * H
    gx = work[: 3 * n].reshape((B, 3 * H))
    gh = work[3 * n: 6 * n].reshape((B, 3 * H))
    for b in range(B):
        for j in range(3 * H):
            gx[b, j] = b_ih[j]
            gh[b, j] = b_hh[j]
    gemm(False, True, 1.0, x, w_ih, 1.0, gx)
    gemm(False, True, 1.0, s_prev[:n].reshape((B, H)), w_hh, 1.0, gh)
    for b in range(B):
        for j in range(H):
            p = b * H + j
            r = sigmoid(gx[b, j] + gh[b, j])
            z = sigmoid(gx[b, H + j] + gh[b, H + j])
            hn = gh[b, 2 * H + j]
            nn = tanh(gx[b, 2 * H + j] + r * hn)
            hp = s_prev[p]
            internal[p] = r
            internal[n + p] = z
            internal[2 * n + p] = nn
            internal[3 * n + p] = hn
            internal[4 * n + p] = hp
            # From the stored (dtype-rounded) values, as gru_state_from_internal does.
            zz = internal[n + p]
            s_new[p] = (1.0 - zz) * internal[2 * n + p] + zz * internal[4 * n + p]


@njit(cache=True)
def gru_state_from_internal(w_ih, w_hh, b_ih, b_hh, w_out, b_out, x, internal, s_out, work):
    n = x.shape[0] * w_hh.shape[1]
    for p in range(n):
        z = internal[n + p]
        # Same expression and order as gru_forward: bit-exact.
        s_out[p] = (1.0 - z) * internal[2 * n + p] + z * internal[4 * n + p]


@njit(cache=True)
def gru_backward(w_ih, w_hh, b_ih, b_hh, w_out, b_out, x, internal, ds, ds_prev,
                 g_w_ih, g_w_hh, g_b_ih, g_b_hh, g_w_out, g_b_out, work):
    B = x.shape[0]
    H = w_hh.shape[1]
    n = B * H
    dx_pre = work[: 3 * n].reshape((B, 3 * H))
    dh_pre = work[3 * n: 6 * n].reshape((B, 3 * H))
    for b in range(B):
        for j in range(H):
            p = b * H + j
            r = internal[p]
            z = internal[n + p]
            nn = internal[2 * n + p]
            hn = internal[3 * n + p]
            hp = internal[4 * n + p]
            dh = ds[p]
            dn_pre = dh * (1.0 - z) * (1.0 - nn * nn)
            dz_pre = dh * (hp - nn) * z * (1.0 - z)
            dr_pre = dn_pre * hn * r * (1.0 - r)
            dx_pre[b, j] = dr_pre
            dx_pre[b, H + j] = dz_pre
            dx_pre[b, 2 * H + j] = dn_pre
            dh_pre[b, j] = dr_pre
            dh_pre[b, H + j] = dz_pre
            dh_pre[b, 2 * H + j] = dn_pre * r
            ds_prev[p] = dh * z
    gemm(True, False, 1.0, dx_pre, x, 1.0, g_w_ih)
    gemm(True, False, 1.0, dh_pre, internal[4 * n: 5 * n].reshape((B, H)), 1.0, g_w_hh)
    for b in range(B):
        for j in range(3 * H):
            g_b_ih[j] += dx_pre[b, j]
            g_b_hh[j] += dh_pre[b, j]
    gemm(False, False, 1.0, dh_pre, w_hh, 1.0, ds_prev[:n].reshape((B, H)))


def GRU(input_size: int, hidden_size: int) -> Cell:
    """A GRU cell (PyTorch nn.GRU parameter layout, gate order r, z, n).

    Example::

        cell = mb.GRU(input_size=8, hidden_size=32)
    """
    return Cell(
        kind="gru",
        input_size=input_size,
        hidden_size=hidden_size,
        n_gates=3,
        forward_step=gru_forward,
        backward_step=gru_backward,
        state_from_internal=gru_state_from_internal,
        state_width=lambda output_size: hidden_size,
        internal_width=lambda output_size: 5 * hidden_size,
        work_size=lambda batch, output_size: 6 * batch * hidden_size,
        backward_forward_ratio=2.0,
    )
