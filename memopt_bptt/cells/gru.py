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
quadratic direct algorithm). The weight gradients are deferred as the
LSTM's are (``Cell.grad_chunk``): each step keeps its gate gradients and
``h_{t-1}`` in the block (5H per row and step), and ``gru_flush_grads``
sums a block's steps in one GEMM per weight. The same step split by hidden
units, for threads that share it, is in ``gru_units``.
"""

from __future__ import annotations

from numba import njit

from .._jit import inner
from .._kernels.activations import copy2_into, copy_into, one, sigmoid_into, tanh_into
from .._kernels.blas import add_row_sums, gemm, transposed_input
from .._kernels.mm import gemm_n, gemm_t
from ._base import Cell, _check_chunk, auto_chunk_rows

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
    _hidden(internal, s_new[:n], n, 0, n)


@inner(cache=True, error_model="numpy")
def _add_product(acc, a, b):
    """acc += a * b."""
    for p in range(acc.shape[0]):
        acc[p] += a[p] * b[p]


@inner(cache=True, error_model="numpy")
def _hidden(internal, h, n, a, z):
    """h_t = (1 - z) * n + z * h_{t-1}, elements a..z-1 of each block (h holds those)."""
    zz = internal[n + a: n + z]
    nn = internal[2 * n + a: 2 * n + z]
    hp = internal[4 * n + a: 4 * n + z]
    c1 = one(internal[0])
    for p in range(z - a):
        h[p] = (c1 - zz[p]) * nn[p] + zz[p] * hp[p]


@njit(cache=True, error_model="numpy")
def gru_state_from_internal(w_ih, w_hh, b_ih, b_hh, w_out, b_out, x, internal, s_out, work):
    n = x.shape[0] * w_hh.shape[1]
    # The same function as gru_forward: bit-exact.
    _hidden(internal, s_out[:n], n, 0, n)


@njit(cache=True, error_model="numpy")
def gru_backward(w_ih, w_hh, b_ih, b_hh, w_out, b_out, x, internal, ds, ds_prev,
                 g_w_ih, g_w_hh, g_b_ih, g_b_hh, g_w_out, g_b_out, work, chunk, j):
    B = x.shape[0]
    H = w_hh.shape[1]
    n = B * H
    # work: [dr | dz | dn * r | dn], each (H, B) pre-activation gradients. The
    # first three are W_hh's rows (r, z, n), the first two and the last W_ih's.
    _gate_grads(internal, ds, ds_prev, work, n, 0, n)
    d_h2 = work[: 3 * n].reshape((3 * H, B))
    gemm_t(w_hh, d_h2, ds_prev[:n].reshape((H, B)), 1.0)  # ds_prev held dh * z
    # Defer the weight gradients: this step's columns of the block.
    D, Dn, Hp = _chunk_views(chunk, H, B)
    copy2_into(d_h2, D[:, j * B: (j + 1) * B])
    copy2_into(work[3 * n: 4 * n].reshape((H, B)), Dn[:, j * B: (j + 1) * B])
    copy2_into(internal[4 * n: 5 * n].reshape((H, B)), Hp[:, j * B: (j + 1) * B])


@inner(cache=True, error_model="numpy")
def _gate_grads(internal, ds, ds_prev, d_pre, n, a, z):
    """Elements a..z-1 of each block: d_pre = [dr | dz | dn * r | dn] (four blocks
    of z - a), and ds_prev = dh * z, the part of dL/dh_{t-1} that skips the gates."""
    m = z - a
    r = internal[a: z]
    zz = internal[n + a: n + z]
    nn = internal[2 * n + a: 2 * n + z]
    hn = internal[3 * n + a: 3 * n + z]
    hp = internal[4 * n + a: 4 * n + z]
    dh = ds[a: z]
    d_r = d_pre[:m]
    d_z = d_pre[m: 2 * m]
    d_hn = d_pre[2 * m: 3 * m]
    d_n = d_pre[3 * m: 4 * m]
    c1 = one(internal[0])
    # One simple loop per quantity, so each compiles to vector code.
    for p in range(m):
        d_n[p] = dh[p] * (c1 - zz[p]) * (c1 - nn[p] * nn[p])
    for p in range(m):
        d_z[p] = dh[p] * (hp[p] - nn[p]) * zz[p] * (c1 - zz[p])
    for p in range(m):
        d_r[p] = d_n[p] * hn[p] * r[p] * (c1 - r[p])
    for p in range(m):
        d_hn[p] = d_n[p] * r[p]
    dsp = ds_prev[a: z]
    for p in range(m):
        dsp[p] = dh[p] * zz[p]


@inner(cache=True)
def _chunk_views(chunk, H, B):
    """The block's (3H, c*B) gradients of W_hh's rows [dr | dz | dn * r], (H, c*B) dn
    (W_ih's n rows; its r and z rows take D's) and (H, c*B) previous hidden states."""
    c = chunk.shape[0] // (5 * H * B)
    D = chunk[: 3 * H * c * B].reshape((3 * H, c * B))
    Dn = chunk[3 * H * c * B: 4 * H * c * B].reshape((H, c * B))
    Hp = chunk[4 * H * c * B: 5 * H * c * B].reshape((H, c * B))
    return D, Dn, Hp


@inner(cache=True)
def _add_sums(m, a):
    """a += row sums of m (one bias gradient; add_row_sums adds to both)."""
    for k in range(m.shape[0]):
        acc = m[k, 0]
        for col in range(1, m.shape[1]):
            acc += m[k, col]
        a[k] += acc


@njit(cache=True, error_model="numpy")
def gru_flush_grads(w_ih, w_hh, b_ih, b_hh, w_out, b_out, xs_chunk, chunk, w,
                    g_w_ih, g_w_hh, g_b_ih, g_b_hh, g_w_out, g_b_out):
    """Weight gradients of w steps in one GEMM each (K = w * batch)."""
    H = w_hh.shape[1]
    B = xs_chunk.shape[0] // w
    D, Dn, Hp = _chunk_views(chunk, H, B)
    Dw = D[:, : w * B]
    Drz = D[: 2 * H, : w * B]
    Dnw = Dn[:, : w * B]
    gemm(False, False, 1.0, Drz, xs_chunk, 1.0, g_w_ih[: 2 * H])
    gemm(False, False, 1.0, Dnw, xs_chunk, 1.0, g_w_ih[2 * H:])
    gemm(False, True, 1.0, Dw, Hp[:, : w * B], 1.0, g_w_hh)
    add_row_sums(Drz, g_b_ih[: 2 * H], g_b_hh[: 2 * H])
    _add_sums(Dnw, g_b_ih[2 * H:])
    _add_sums(D[2 * H:, : w * B], g_b_hh[2 * H:])


@njit(cache=True, error_model="numpy")
def gru_input_grad(w_ih, w_hh, b_ih, b_hh, w_out, b_out, x, work, dx):
    """dx (input_size, B) += dL/dx_t^T, from the gate gradients gru_backward left
    in ``work`` ([dr | dz | dn * r | dn]: W_ih's rows take dr, dz and dn)."""
    B = x.shape[0]
    H = w_hh.shape[1]
    n = B * H
    gemm_t(w_ih[: 2 * H], work[: 2 * n].reshape((2 * H, B)), dx, 1.0)
    gemm_t(w_ih[2 * H:], work[3 * n: 4 * n].reshape((H, B)), dx, 1.0)


def GRU(input_size: int, hidden_size: int, *, grad_chunk: int | None = None) -> Cell:
    """A GRU cell (PyTorch nn.GRU parameter layout, gate order r, z, n).

    ``grad_chunk`` steps of weight gradients are summed in one GEMM, as
    :func:`memopt_bptt.LSTM` does (the same default: 2 steps, or as many as
    make 8 rows at batches under 4 for weights, here 3 hidden x (hidden +
    input), of at least ``CHUNK_ROWS_MIN_WEIGHTS`` elements, 64 rows at every
    batch from ``CHUNK_WIDE_MIN_WEIGHTS``: ``auto_chunk_rows``), at a cost of
    ``grad_chunk * batch * 5 * hidden_size`` elements of working memory,
    charged to the budget. Gradients are bit-identical across schedules for
    a given value.

    Example::

        cell = mb.GRU(input_size=8, hidden_size=32)
    """
    from . import gru_units as u  # it imports this module's helpers

    auto = grad_chunk is None
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
        grad_chunk=2 if auto else _check_chunk(grad_chunk),
        chunk_rows=auto_chunk_rows(3 * hidden_size * (hidden_size + input_size)) if auto else 0,
        chunk_width=lambda batch, output_size: 5 * batch * hidden_size,
        flush_grads=gru_flush_grads,
        input_grad=gru_input_grad,
        unit_kernels=(u.gru_forward_units, u.gru_state_from_internal_units, u.gru_backward_units,
                      u.gru_backward_shared_units, u.gru_flush_grads_units),
        unit_input_grad=u.gru_input_grad_units,
        options={} if auto else {"grad_chunk": grad_chunk},
    )
