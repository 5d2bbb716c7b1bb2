"""The GRU's step split by hidden units, for threads that share it (``Cell.unit_kernels``).

Unit j's gates are rows j, H + j and 2H + j of ``W_ih`` and ``W_hh`` (r, z,
n), so a thread with units u0..u1-1 computes those rows of each product and
its elements of every block of the internal state, as
:mod:`memopt_bptt.cells.lstm`'s unit kernels do; the module docstring of
:mod:`memopt_bptt.cells._base` says what each may read and write. The n gate
keeps ``W_hn h + b_hn`` apart from ``W_in x + b_in`` (the internal state
stores the first), so its two products go to two blocks of scratch.

The block of deferred weight gradients is the rows kernels' (``gru._chunk_views``)
but with the previous hidden states transposed, ``(c*B, H)``: the
weight-gradient products then read a step's batch rows contiguously.
"""

from __future__ import annotations

from numba import njit

from .._jit import inner
from .._kernels.activations import copy2_into, copy_into, sigmoid_into, tanh_into
from .._kernels.blas import add_row_sums
from .._kernels.mm import product
from .gru import _add_product, _add_sums, _gate_grads, _hidden
from .lstm import input_rows_units

__all__ = ["gru_forward_units", "gru_state_from_internal_units", "gru_backward_units", "gru_backward_shared_units",
           "gru_flush_grads_units", "gru_input_grad_units"]


@njit(cache=True, error_model="numpy")
def gru_forward_units(w_ih, w_hh, b_ih, b_hh, w_out, b_out, x, s_prev, s_new, internal, work, u0, u1):
    """gru_forward for hidden units u0..u1-1: their rows of the three gates
    (reading all of h_{t-1}) and their elements of every block.

    scratch: [r, z pre-activations | W_hn h + b_hn | W_in x + b_in], each (units, B),
    then x^T. The gates are computed in the order r, z, n or n, z, r, by which of
    the two state buffers is read (as lstm_forward_units does: the rows read last
    by one step are read first by the next); each is its own product, so the
    order changes no bit."""
    B = x.shape[0]
    H = w_hh.shape[1]
    n = B * H
    hk = u1 - u0
    m = hk * B
    gates = work[: 4 * m]
    g2 = gates.reshape((4 * hk, B))
    h_prev = s_prev[:n].reshape((H, B))
    xt = input_rows_units(x, work[4 * m:])
    back = s_prev.ctypes.data > s_new.ctypes.data
    for i in range(3):
        q = 2 - i if back else i
        r0 = q * H + u0
        gq = g2[q * hk: (q + 1) * hk]
        gx = g2[3 * hk: 4 * hk] if q == 2 else gq  # the n gate: its input term apart
        for r in range(hk):
            if q == 2:
                bh = b_hh[r0 + r]
                bi = b_ih[r0 + r]
                for b in range(B):
                    gq[r, b] = bh
                    gx[r, b] = bi
            else:
                bias = b_ih[r0 + r] + b_hh[r0 + r]
                for b in range(B):
                    gq[r, b] = bias
        product(w_hh[r0: r0 + hk], h_prev, gq, True)
        product(w_ih[r0: r0 + hk], xt, gx, True)
    a, z = u0 * B, u1 * B
    # One simple loop per quantity, so each compiles to vector code (gru_forward's, on the units' elements).
    sigmoid_into(gates[:m], internal[a: z])
    sigmoid_into(gates[m: 2 * m], internal[n + a: n + z])
    copy_into(gates[2 * m: 3 * m], internal[3 * n + a: 3 * n + z])
    copy_into(s_prev[a: z], internal[4 * n + a: 4 * n + z])
    xn = gates[3 * m: 4 * m]
    _add_product(xn, internal[a: z], internal[3 * n + a: 3 * n + z])  # W_in x + b_in + r * hn
    tanh_into(xn, internal[2 * n + a: 2 * n + z])
    _hidden(internal, s_new[a: z], n, a, z)


@njit(cache=True, error_model="numpy")
def gru_state_from_internal_units(w_ih, w_hh, b_ih, b_hh, w_out, b_out, x, internal, s_out, work, u0, u1):
    B = x.shape[0]
    n = B * w_hh.shape[1]
    _hidden(internal, s_out[u0 * B: u1 * B], n, u0 * B, u1 * B)


@njit(cache=True, error_model="numpy")
def gru_backward_units(w_ih, w_hh, b_ih, b_hh, w_out, b_out, x, internal, ds, ds_prev, work, chunk, j, part,
                       u0, u1):
    """The part of gru_backward that reads only units u0..u1-1's elements: their
    gate gradients into column block j of the chunk, their h_{t-1} into rows
    j*B.. of its transpose, their dL/dh_{t-1} through z alone (dh * z, which
    gru_backward_shared_units completes), and into ``part`` (B, H) what their
    gates contribute to every unit's dL/dh_{t-1}. Leaves [dr | dz | dn * r | dn]
    of the units in ``work`` for gru_input_grad_units."""
    B = x.shape[0]
    H = w_hh.shape[1]
    n = B * H
    hk = u1 - u0
    m = hk * B
    a, z = u0 * B, u1 * B
    d_pre = work[: 4 * m]
    _gate_grads(internal, ds, ds_prev, d_pre, n, a, z)
    D, Dn, HpT = _chunk_views_units(chunk, H, B)
    # part^T (B, H) = sum over W_hh's gates of d_q^T (B, hk) @ the units' rows (hk, H)
    part_t = part.reshape((B, H))
    for q in range(3):
        dq = d_pre[q * m: (q + 1) * m].reshape((hk, B))
        copy2_into(dq, D[q * H + u0: q * H + u1, j * B: (j + 1) * B])
        product(dq.T, w_hh[q * H + u0: q * H + u1], part_t, q > 0)
    copy2_into(d_pre[3 * m: 4 * m].reshape((hk, B)), Dn[u0: u1, j * B: (j + 1) * B])
    h_prev = internal[4 * n + a: 4 * n + z].reshape((hk, B))
    for b in range(B):
        for r in range(hk):
            HpT[j * B + b, u0 + r] = h_prev[r, b]


@njit(cache=True, error_model="numpy")
def gru_backward_shared_units(w_ih, w_hh, b_ih, b_hh, w_out, b_out, x, ds_prev, parts, u0, u1):
    """dL/dh_{t-1} of units u0..u1-1: dh * z (left there by gru_backward_units) plus the
    threads' parts ((B, H) each) added in thread order."""
    B = x.shape[0]
    H = w_hh.shape[1]
    dh = ds_prev[u0 * B: u1 * B].reshape((u1 - u0, B))
    for u in range(u0, u1):
        for b in range(B):
            acc = parts[0, b * H + u]
            for k in range(1, parts.shape[0]):
                acc += parts[k, b * H + u]
            dh[u - u0, b] += acc


@njit(cache=True, error_model="numpy")
def gru_flush_grads_units(w_ih, w_hh, b_ih, b_hh, w_out, b_out, xs_chunk, chunk, w,
                          g_w_ih, g_w_hh, g_b_ih, g_b_hh, g_w_out, g_b_out, u0, u1):
    """gru_flush_grads for the units' rows of the three gates (reads every unit's h_{t-1})."""
    H = w_hh.shape[1]
    B = xs_chunk.shape[0] // w
    D, Dn, HpT = _chunk_views_units(chunk, H, B)
    Hw = HpT[: w * B]
    for q in range(3):
        r0, r1 = q * H + u0, q * H + u1
        Dq = D[r0: r1, : w * B]
        product(Dq, Hw, g_w_hh[r0: r1], True)
        if q < 2:
            product(Dq, xs_chunk, g_w_ih[r0: r1], True)
            add_row_sums(Dq, g_b_ih[r0: r1], g_b_hh[r0: r1])
        else:
            _add_sums(Dq, g_b_hh[r0: r1])
    Dnq = Dn[u0: u1, : w * B]
    product(Dnq, xs_chunk, g_w_ih[2 * H + u0: 2 * H + u1], True)
    _add_sums(Dnq, g_b_ih[2 * H + u0: 2 * H + u1])


@njit(cache=True, error_model="numpy")
def gru_input_grad_units(w_ih, w_hh, b_ih, b_hh, w_out, b_out, x, work, part, u0, u1):
    """What units u0..u1-1's gates contribute to dL/dx_t, into ``part`` (B, input_size), from
    the gate gradients gru_backward_units left in ``work`` (W_ih's rows take dr, dz and dn)."""
    B = x.shape[0]
    H = w_hh.shape[1]
    hk = u1 - u0
    m = hk * B
    part_t = part.reshape((B, w_ih.shape[1]))
    for q in range(3):
        src = q if q < 2 else 3
        dq = work[src * m: (src + 1) * m].reshape((hk, B))
        product(dq.T, w_ih[q * H + u0: q * H + u1], part_t, q > 0)


@inner(cache=True)
def _chunk_views_units(chunk, H, B):
    """The unit kernels' block: (3H, c*B) and (H, c*B) gate gradients as gru._chunk_views,
    and the previous hidden states transposed, (c*B, H)."""
    c = chunk.shape[0] // (5 * H * B)
    D = chunk[: 3 * H * c * B].reshape((3 * H, c * B))
    Dn = chunk[3 * H * c * B: 4 * H * c * B].reshape((H, c * B))
    HpT = chunk[4 * H * c * B: 5 * H * c * B].reshape((c * B, H))
    return D, Dn, HpT
