"""GRU cell with PyTorch's nn.GRU layout (gate order r, z, n).

    r = sigmoid(W_ir x + b_ir + W_hr h + b_hr)
    z = sigmoid(W_iz x + b_iz + W_hz h + b_hz)
    n = tanh(W_in x + b_in + r * (W_hn h + b_hn))
    h' = (1 - z) * n + z * h

State ``h_t`` (H per row). Internal state ``[r | z | n | W_hn h + b_hn | h_{t-1}]``
(5H per row), alpha = 5: the backward needs all five and none follows from
the others. Every block is feature-major, ``(H, B)``: the recurrent GEMM is
``W_hh @ h`` with PyTorch's weight as stored (faster in OpenBLAS at small
batch than ``h @ W_hh^T``) and the gate loops are flat loops over contiguous
blocks, with the exp-based activations of ``_activations`` in the arrays'
own precision, so they compile to vector code. ``h_t`` is rebuilt from the
stored values with the forward's own function (bit-exact). The input term
is ``W_ih @ x^T`` with x transposed into scratch first (OpenBLAS is faster
so than transposing it itself); scratch is ``4H + input_size`` per row.
Backward is the linear-time chain rule (Li 2016 contrasts it with the
quadratic direct algorithm).
"""

from __future__ import annotations

from numba import njit

from .._jit import inner
from .._kernels.activations import copy_into, one, sigmoid_into, tanh_into
from .._kernels.blas import add_row_sums, gemm, transposed_input
from .._kernels.mm import gemm_n, gemm_t
from ._base import Cell

__all__ = ["GRU"]


@njit(cache=True, error_model="numpy")
def gru_forward(w_ih, w_hh, b_ih, b_hh, w_out, b_out, x, s_prev, s_new, internal, work):
    B = x.shape[0]
    H = w_hh.shape[1]
    n = B * H
    # work: [r, z pre-activations | W_hn h + b_hn | W_in x + b_in], each (H, B), then x^T
    gates = work[: 3 * n]
    gates2 = gates.reshape((3 * H, B))
    xn = work[3 * n: 4 * n]
    xn2 = xn.reshape((H, B))
    xt = transposed_input(x, work[4 * n:])
    for k in range(2 * H):
        bias = b_ih[k] + b_hh[k]
        for b in range(B):
            gates2[k, b] = bias
    for k in range(H):
        bh = b_hh[2 * H + k]
        bi = b_ih[2 * H + k]
        for b in range(B):
            gates2[2 * H + k, b] = bh
            xn2[k, b] = bi
    gemm_n(w_hh, s_prev[:n].reshape((H, B)), gates2, 1.0)
    gemm_n(w_ih[: 2 * H], xt, gates2[: 2 * H], 1.0)
    gemm_n(w_ih[2 * H:], xt, xn2, 1.0)
    # One simple loop per quantity, so each compiles to vector code.
    sigmoid_into(gates[:n], internal[:n])
    sigmoid_into(gates[n: 2 * n], internal[n: 2 * n])
    copy_into(gates[2 * n: 3 * n], internal[3 * n: 4 * n])
    copy_into(s_prev[:n], internal[4 * n: 5 * n])
    _add_product(xn, internal[:n], internal[3 * n: 4 * n])  # W_in x + b_in + r * hn
    tanh_into(xn, internal[2 * n: 3 * n])
    # From the stored values, with gru_state_from_internal's function: a
    # rebuilt state is bit-identical.
    _hidden(internal, s_new[:n], n)


@inner(cache=True, error_model="numpy")
def _add_product(acc, a, b):
    """acc += a * b."""
    for p in range(acc.shape[0]):
        acc[p] += a[p] * b[p]


@inner(cache=True, error_model="numpy")
def _hidden(internal, h, n):
    """h_t = (1 - z) * n + z * h_{t-1}."""
    z = internal[n: 2 * n]
    nn = internal[2 * n: 3 * n]
    hp = internal[4 * n: 5 * n]
    c1 = one(internal[0])
    for p in range(n):
        h[p] = (c1 - z[p]) * nn[p] + z[p] * hp[p]


@njit(cache=True, error_model="numpy")
def gru_state_from_internal(w_ih, w_hh, b_ih, b_hh, w_out, b_out, x, internal, s_out, work):
    n = x.shape[0] * w_hh.shape[1]
    # The same function as gru_forward: bit-exact.
    _hidden(internal, s_out[:n], n)


@njit(cache=True, error_model="numpy")
def gru_backward(w_ih, w_hh, b_ih, b_hh, w_out, b_out, x, internal, ds, ds_prev,
                 g_w_ih, g_w_hh, g_b_ih, g_b_hh, g_w_out, g_b_out, work):
    B = x.shape[0]
    H = w_hh.shape[1]
    n = B * H
    r = internal[:n]
    z = internal[n: 2 * n]
    nn = internal[2 * n: 3 * n]
    hn = internal[3 * n: 4 * n]
    hp = internal[4 * n: 5 * n]
    dh = ds[:n]
    # work: [dr | dz | dn * r | dn], each (H, B) pre-activation gradients. The
    # first three are W_hh's rows (r, z, n), the first two and the last W_ih's.
    d_r = work[:n]
    d_z = work[n: 2 * n]
    d_hn = work[2 * n: 3 * n]
    d_n = work[3 * n: 4 * n]
    c1 = one(internal[0])
    for p in range(n):
        d_n[p] = dh[p] * (c1 - z[p]) * (c1 - nn[p] * nn[p])
    for p in range(n):
        d_z[p] = dh[p] * (hp[p] - nn[p]) * z[p] * (c1 - z[p])
    for p in range(n):
        d_r[p] = d_n[p] * hn[p] * r[p] * (c1 - r[p])
    for p in range(n):
        d_hn[p] = d_n[p] * r[p]
    dsp = ds_prev[:n]
    for p in range(n):
        dsp[p] = dh[p] * z[p]
    d_h2 = work[: 3 * n].reshape((3 * H, B))
    d_rz2 = work[: 2 * n].reshape((2 * H, B))
    d_n2 = d_n.reshape((H, B))
    gemm(False, False, 1.0, d_rz2, x, 1.0, g_w_ih[: 2 * H])
    gemm(False, False, 1.0, d_n2, x, 1.0, g_w_ih[2 * H:])
    gemm(False, True, 1.0, d_h2, hp.reshape((H, B)), 1.0, g_w_hh)
    add_row_sums(d_rz2, g_b_ih, g_b_hh)
    for k in range(H):
        acc_i = d_n2[k, 0]
        acc_h = d_h2[2 * H + k, 0]
        for b in range(1, B):
            acc_i += d_n2[k, b]
            acc_h += d_h2[2 * H + k, b]
        g_b_ih[2 * H + k] += acc_i
        g_b_hh[2 * H + k] += acc_h
    gemm_t(w_hh, d_h2, dsp.reshape((H, B)), 1.0)


@njit(cache=True, error_model="numpy")
def gru_input_grad(w_ih, w_hh, b_ih, b_hh, w_out, b_out, x, work, dx):
    """dx (input_size, B) += dL/dx_t^T, from the gate gradients gru_backward left
    in ``work`` ([dr | dz | dn * r | dn]: W_ih's rows take dr, dz and dn)."""
    B = x.shape[0]
    H = w_hh.shape[1]
    n = B * H
    gemm_t(w_ih[: 2 * H], work[: 2 * n].reshape((2 * H, B)), dx, 1.0)
    gemm_t(w_ih[2 * H:], work[3 * n: 4 * n].reshape((H, B)), dx, 1.0)


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
        work_size=lambda batch, output_size: batch * (4 * hidden_size + input_size),
        backward_forward_ratio=1.5,  # measured here (mb.measure_step_times, hidden 256, batch 16, float32)
        feature_major=True,
        input_grad=gru_input_grad,
    )
