"""LSTM cell with PyTorch's nn.LSTM layout (gate order i, f, g, o).

State ``s_t = [h_t | c_t]`` (2H per batch row). Internal state, what the
backward reads: ``[i | f | g | o | c_{t-1} | tanh(c_t) | h_{t-1}]`` (7H per
row), so alpha = 3.5. Every block is feature-major, ``(H, B)``: the recurrent
GEMM is then ``W_hh @ h`` with PyTorch's weight as stored, about twice as fast
in OpenBLAS at batch 16 as ``h @ W_hh^T``, and the gate loops run over
contiguous blocks. ``h_t`` and ``c_t`` are rebuilt from it exactly with the
same expressions the forward uses.
"""

from __future__ import annotations

from numba import njit, types
from numba.extending import overload

from .._jit import inner
from .._kernels.activations import copy2_into, copy_into, one, sigmoid_into, tanh_into
from .._kernels.blas import add_row_sums, gemm, transposed_input
from .._kernels.mm import gemm_n, gemm_t, product
from ._base import Cell, _check_chunk, auto_chunk_rows

__all__ = ["LSTM"]


@njit(cache=True, error_model="numpy")
def lstm_forward(w_ih, w_hh, b_ih, b_hh, w_out, b_out, x, s_prev, s_new, internal, work):
    B = x.shape[0]
    H = w_hh.shape[1]
    n = B * H
    gates = work[: 4 * n]
    gates2 = gates.reshape((4 * H, B))  # feature-major: gate row k, batch column b
    for k in range(4 * H):
        bias = b_ih[k] + b_hh[k]
        for b in range(B):
            gates2[k, b] = bias
    gemm_n(w_hh, s_prev[:n].reshape((H, B)), gates2, 1.0)
    gemm_n(w_ih, transposed_input(x, work[4 * n:]), gates2, 1.0)
    _activate(gates, s_prev, s_new, internal, n, 0, n)


@inner(cache=True, error_model="numpy")
def _activate(gates, s_prev, s_new, internal, n, a, z):
    """From the pre-activations (four blocks of z - a in ``gates``), elements
    a..z-1 of every block of the internal state and of s_new."""
    m = z - a
    # One simple loop per quantity, so each compiles to vector code.
    sigmoid_into(gates[:m], internal[a: z])
    sigmoid_into(gates[m: 2 * m], internal[n + a: n + z])
    tanh_into(gates[2 * m: 3 * m], internal[2 * n + a: 2 * n + z])
    sigmoid_into(gates[3 * m: 4 * m], internal[3 * n + a: 3 * n + z])
    copy_into(s_prev[n + a: n + z], internal[4 * n + a: 4 * n + z])
    copy_into(s_prev[a: z], internal[6 * n + a: 6 * n + z])
    # From the stored values, with lstm_state_from_internal's expressions: a
    # rebuilt state is bit-identical.
    _cell_state(internal, s_new[n + a: n + z], n, a, z)
    tanh_into(s_new[n + a: n + z], internal[5 * n + a: 5 * n + z])
    _hidden(internal, s_new[a: z], n, a, z)


@inner(cache=True, error_model="numpy")
def _cell_state(internal, c, n, a, z):
    """c_t = f * c_{t-1} + i * g, elements a..z-1 of each block (c holds those)."""
    i = internal[a: z]
    f = internal[n + a: n + z]
    g = internal[2 * n + a: 2 * n + z]
    c_prev = internal[4 * n + a: 4 * n + z]
    for p in range(z - a):
        c[p] = f[p] * c_prev[p] + i[p] * g[p]


@inner(cache=True, error_model="numpy")
def _hidden(internal, h, n, a, z):
    """h_t = o * tanh(c_t), elements a..z-1 of each block (h holds those)."""
    o = internal[3 * n + a: 3 * n + z]
    tc = internal[5 * n + a: 5 * n + z]
    for p in range(z - a):
        h[p] = o[p] * tc[p]


@njit(cache=True, error_model="numpy")
def lstm_state_from_internal(w_ih, w_hh, b_ih, b_hh, w_out, b_out, x, internal, s_out, work):
    n = x.shape[0] * w_hh.shape[1]
    # The same functions as lstm_forward: bit-exact.
    _cell_state(internal, s_out[n: 2 * n], n, 0, n)
    _hidden(internal, s_out[:n], n, 0, n)


@njit(cache=True, error_model="numpy")
def lstm_backward(w_ih, w_hh, b_ih, b_hh, w_out, b_out, x, internal, ds, ds_prev,
                  g_w_ih, g_w_hh, g_b_ih, g_b_hh, g_w_out, g_b_out, work, chunk, j):
    B = x.shape[0]
    H = w_hh.shape[1]
    n = B * H
    d_pre = work[: 4 * n]
    _gate_grads(internal, ds, ds_prev, d_pre, n, 0, n)
    d2 = d_pre.reshape((4 * H, B))
    gemm_t(w_hh, d2, ds_prev[:n].reshape((H, B)), 0.0)
    # Defer the weight gradients: this step's columns of the block.
    D, Hp = _chunk_views(chunk, H, B)
    copy2_into(d2, D[:, j * B: (j + 1) * B])
    copy2_into(internal[6 * n: 7 * n].reshape((H, B)), Hp[:, j * B: (j + 1) * B])


@njit(cache=True, error_model="numpy")
def lstm_input_grad(w_ih, w_hh, b_ih, b_hh, w_out, b_out, x, work, dx):
    """dx (input_size, B) += dL/dx_t^T, from the gate gradients lstm_backward left in ``work``."""
    B = x.shape[0]
    H = w_hh.shape[1]
    gemm_t(w_ih, work[: 4 * B * H].reshape((4 * H, B)), dx, 1.0)


@inner(cache=True, error_model="numpy")
def _gate_grads(internal, ds, ds_prev, d_pre, n, a, z):
    """Elements a..z-1 of each block: d_pre = dL/d(gate pre-activations) (four
    blocks of z - a), and ds_prev's c block = dL/dc_{t-1}."""
    m = z - a
    i = internal[a: z]
    f = internal[n + a: n + z]
    g = internal[2 * n + a: 2 * n + z]
    o = internal[3 * n + a: 3 * n + z]
    c_prev = internal[4 * n + a: 4 * n + z]
    tc = internal[5 * n + a: 5 * n + z]
    dh = ds[a: z]
    dc = ds_prev[n + a: n + z]  # dL/dc_t here first, then dL/dc_{t-1} = dc * f in place
    c1 = one(internal[0])
    for p in range(m):
        dc[p] = ds[n + a + p] + dh[p] * o[p] * (c1 - tc[p] * tc[p])
    d_i = d_pre[:m]
    for p in range(m):
        d_i[p] = dc[p] * g[p] * i[p] * (c1 - i[p])
    d_f = d_pre[m: 2 * m]
    for p in range(m):
        d_f[p] = dc[p] * c_prev[p] * f[p] * (c1 - f[p])
    d_g = d_pre[2 * m: 3 * m]
    for p in range(m):
        d_g[p] = dc[p] * i[p] * (c1 - g[p] * g[p])
    d_o = d_pre[3 * m: 4 * m]
    for p in range(m):
        d_o[p] = dh[p] * tc[p] * o[p] * (c1 - o[p])
    for p in range(m):
        dc[p] = dc[p] * f[p]


@inner(cache=True)
def _chunk_views(chunk, H, B):
    """The block's (4H, c*B) pre-activation gradients and (H, c*B) previous hidden states."""
    c = chunk.shape[0] // (5 * H * B)
    D = chunk[: 4 * H * c * B].reshape((4 * H, c * B))
    Hp = chunk[4 * H * c * B: 5 * H * c * B].reshape((H, c * B))
    return D, Hp


@njit(cache=True, error_model="numpy")
def lstm_flush_grads(w_ih, w_hh, b_ih, b_hh, w_out, b_out, xs_chunk, chunk, w,
                     g_w_ih, g_w_hh, g_b_ih, g_b_hh, g_w_out, g_b_out):
    """Weight gradients of w steps in one GEMM each (K = w * batch)."""
    H = w_hh.shape[1]
    B = xs_chunk.shape[0] // w
    D, Hp = _chunk_views(chunk, H, B)
    Dw = D[:, : w * B]
    gemm(False, False, 1.0, Dw, xs_chunk, 1.0, g_w_ih)
    gemm(False, True, 1.0, Dw, Hp[:, : w * B], 1.0, g_w_hh)
    add_row_sums(Dw, g_b_ih, g_b_hh)


# ---- the same step split by hidden units, for threads that share it (Cell.unit_kernels) ----
def input_rows_units(x, buf):
    """x^T, (input_size, B) with contiguous rows, for the input term of the units' gates: x.T itself
    when x is the transpose of such an array (a layer above the first reads the layer below's
    h_t, (hidden, B), in place), else copied into ``buf`` (a step of the inputs, (B, input))."""
    return transposed_input(x, buf)


@overload(input_rows_units, jit_options={"cache": True})
def _input_rows_units(x, buf):
    if isinstance(x, types.Array) and x.ndim == 2 and x.layout == "F":
        return lambda x, buf: x.T
    return lambda x, buf: transposed_input(x, buf)


@njit(cache=True, error_model="numpy")
def lstm_forward_units(w_ih, w_hh, b_ih, b_hh, w_out, b_out, x, s_prev, s_new, internal, work, u0, u1):
    """lstm_forward for hidden units u0..u1-1: their rows of the four gates
    (reading all of h_{t-1}) and their elements of every block.

    The gates are computed in the order 0..3 or 3..0, by which of the two state
    buffers is read (they alternate between steps): a stack's weights hardly fit
    a core's L2, and the rows read last by one step are read first by the next
    (measured 5-10% of a 2-layer step at hidden 256). Each gate is its own
    product, so the order changes no bit."""
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
    for i in range(4):
        q = 3 - i if back else i
        r0 = q * H + u0
        gq = g2[q * hk: (q + 1) * hk]
        for r in range(hk):
            bias = b_ih[r0 + r] + b_hh[r0 + r]
            for b in range(B):
                gq[r, b] = bias
        product(w_hh[r0: r0 + hk], h_prev, gq, True)
        product(w_ih[r0: r0 + hk], xt, gq, True)
    _activate(gates, s_prev, s_new, internal, n, u0 * B, u1 * B)


@njit(cache=True, error_model="numpy")
def lstm_state_from_internal_units(w_ih, w_hh, b_ih, b_hh, w_out, b_out, x, internal, s_out, work, u0, u1):
    B = x.shape[0]
    n = B * w_hh.shape[1]
    a, z = u0 * B, u1 * B
    _cell_state(internal, s_out[n + a: n + z], n, a, z)
    _hidden(internal, s_out[a: z], n, a, z)


@njit(cache=True, error_model="numpy")
def lstm_backward_units(w_ih, w_hh, b_ih, b_hh, w_out, b_out, x, internal, ds, ds_prev, work, chunk, j, part,
                        u0, u1):
    """The part of lstm_backward that reads only units u0..u1-1's elements:
    their gate gradients into column block j of the chunk, their h_{t-1}
    into rows j*B.. of its transpose (_chunk_views_units), their dL/dc_{t-1},
    and into ``part`` (B, H) what their gates contribute to every unit's dL/dh_{t-1}."""
    B = x.shape[0]
    H = w_hh.shape[1]
    n = B * H
    hk = u1 - u0
    m = hk * B
    a, z = u0 * B, u1 * B
    d_pre = work[: 4 * m]
    _gate_grads(internal, ds, ds_prev, d_pre, n, a, z)
    D, HpT = _chunk_views_units(chunk, H, B)
    # part^T (B, H) = sum over gates of d_q^T (B, hk) @ W_hh's rows of the units (hk, H): rows of
    # W_hh are contiguous, so the tiled product holds 4 x 64 of part^T and broadcasts d's elements.
    part_t = part.reshape((B, H))
    for q in range(4):
        dq = d_pre[q * m: (q + 1) * m].reshape((hk, B))
        copy2_into(dq, D[q * H + u0: q * H + u1, j * B: (j + 1) * B])
        product(dq.T, w_hh[q * H + u0: q * H + u1], part_t, q > 0)
    h_prev = internal[6 * n + a: 6 * n + z].reshape((hk, B))
    for b in range(B):
        for r in range(hk):
            HpT[j * B + b, u0 + r] = h_prev[r, b]


@njit(cache=True, error_model="numpy")
def lstm_backward_shared_units(w_ih, w_hh, b_ih, b_hh, w_out, b_out, x, ds_prev, parts, u0, u1):
    """dL/dh_{t-1} of units u0..u1-1: the threads' parts ((B, H) each) added in thread order."""
    B = x.shape[0]
    H = w_hh.shape[1]
    dh = ds_prev[u0 * B: u1 * B].reshape((u1 - u0, B))
    for u in range(u0, u1):
        for b in range(B):
            acc = parts[0, b * H + u]
            for k in range(1, parts.shape[0]):
                acc += parts[k, b * H + u]
            dh[u - u0, b] = acc


@njit(cache=True, error_model="numpy")
def lstm_flush_grads_units(w_ih, w_hh, b_ih, b_hh, w_out, b_out, xs_chunk, chunk, w,
                           g_w_ih, g_w_hh, g_b_ih, g_b_hh, g_w_out, g_b_out, u0, u1):
    """lstm_flush_grads for the units' rows of the four gates (reads every unit's h_{t-1})."""
    H = w_hh.shape[1]
    B = xs_chunk.shape[0] // w
    D, HpT = _chunk_views_units(chunk, H, B)
    for q in range(4):
        r0, r1 = q * H + u0, q * H + u1
        Dq = D[r0: r1, : w * B]
        product(Dq, xs_chunk, g_w_ih[r0: r1], True)
        product(Dq, HpT[: w * B], g_w_hh[r0: r1], True)
        add_row_sums(Dq, g_b_ih[r0: r1], g_b_hh[r0: r1])


@njit(cache=True, error_model="numpy")
def lstm_input_grad_units(w_ih, w_hh, b_ih, b_hh, w_out, b_out, x, work, part, u0, u1):
    """What units u0..u1-1's gates contribute to dL/dx_t, into ``part`` (B, input_size),
    from the gate gradients lstm_backward_units left in ``work`` (lstm_input_grad split by units)."""
    B = x.shape[0]
    H = w_hh.shape[1]
    hk = u1 - u0
    m = hk * B
    part_t = part.reshape((B, w_ih.shape[1]))
    for q in range(4):
        dq = work[q * m: (q + 1) * m].reshape((hk, B))
        product(dq.T, w_ih[q * H + u0: q * H + u1], part_t, q > 0)


@inner(cache=True)
def _chunk_views_units(chunk, H, B):
    """The unit kernels' block: (4H, c*B) gate gradients as _chunk_views, and the
    previous hidden states transposed, (c*B, H), so the weight-gradient product
    reads B's rows contiguously."""
    c = chunk.shape[0] // (5 * H * B)
    D = chunk[: 4 * H * c * B].reshape((4 * H, c * B))
    HpT = chunk[4 * H * c * B: 5 * H * c * B].reshape((c * B, H))
    return D, HpT


def LSTM(input_size: int, hidden_size: int, *, grad_chunk: int | None = None) -> Cell:
    """An LSTM cell (PyTorch nn.LSTM parameter layout, gate order i, f, g, o).

    ``grad_chunk`` steps of weight gradients are summed in one GEMM (faster
    than one small GEMM per step) at a cost of ``grad_chunk * batch * 5 *
    hidden_size`` elements of working memory, charged to the budget; 1 keeps
    the least. Gradients are bit-identical across schedules for a given value.
    None (the default): 2 steps, or, for weights of at least ``CHUNK_ROWS_MIN_WEIGHTS``
    elements, as many as make 8 rows at batches under 4 (8 steps at batch 1,
    4 at 2, 3 at 3; rows per sweep: a lane's or the whole batch's): a
    matrix-vector step's weight gradient is a rank-one update that reads and
    writes every weight, and summing 8 of them in one GEMM made LSTM 256 and
    512 at batch 1 1.4x faster here. Smaller weights stay at 2 steps, where
    the gain is nothing and the memory a larger share of a small budget.
    Weights of at least ``CHUNK_WIDE_MIN_WEIGHTS`` (hidden 1024 over an input
    of 64) defer as many steps as make 64 rows at every batch (4 steps at
    batch 16): their gradient outgrows the caches, and each flush reads and
    writes all of it (1.2x faster sweeps at batch 16; see ``auto_chunk_rows``).

    Example::

        cell = mb.LSTM(input_size=8, hidden_size=32)
    """
    auto = grad_chunk is None
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
        work_size=lambda batch, output_size: batch * (4 * hidden_size + input_size),
        backward_forward_ratio=1.8,  # measured here (mb.measure_step_times, hidden 256, batch 16, float32, 2 unit threads)
        feature_major=True,
        grad_chunk=2 if auto else _check_chunk(grad_chunk),
        chunk_rows=auto_chunk_rows(4 * hidden_size * (hidden_size + input_size)) if auto else 0,
        chunk_width=lambda batch, output_size: 5 * batch * hidden_size,
        flush_grads=lstm_flush_grads,
        input_grad=lstm_input_grad,
        unit_kernels=(lstm_forward_units, lstm_state_from_internal_units, lstm_backward_units,
                      lstm_backward_shared_units, lstm_flush_grads_units),
        unit_input_grad=lstm_input_grad_units,
        state_blocks=True,
        options={} if auto else {"grad_chunk": grad_chunk},
    )
