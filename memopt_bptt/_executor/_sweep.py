"""The executor's one action dispatch, as source compiled once per cell and mode.

This file is not imported. ``_compile.sweep_for(cell, mode)`` reads it and
compiles it with the cell's kernels bound as globals (``cell_forward``,
``cell_backward``, ``cell_rebuild``, ``cell_flush`` and the ``unit_*``
kernels), the cell's layout as constants (``OUT_IS_STATE``,
``FEATURE_MAJOR``), and the mode's operations bound to the names the
dispatch calls (``SAVE``, ``LOAD``, ``SYNC``, ``FORWARD``, ``REBUILD``,
``READOUT``, ``NORM``, ``BACKWARD``). Every call is then direct, and Numba
caches the compiled sweep on disk (``cache=CACHE``): a kernel passed as an
argument, as the executor once did, defeats that cache and costs seconds of
compiling in every new process.

Two modes share the dispatch:

* ``rows``: one sweep over batch rows ``b0 .. b0+rows-1`` (the whole batch,
  or one lane of it); every buffer is its own.
* ``units``: one of several threads that split every step's hidden units
  (``Sequence.unit_split``): thread ``k`` computes units ``u0 .. u1-1`` with
  the cell's unit kernels. Every buffer but ``work``, ``outbuf`` and
  ``norms`` is shared; each thread writes only its units' elements (rows of
  the weight gradients, columns of the readout's; thread 0 the readout
  bias) and its row of ``exchange``, and a barrier separates every write of
  h, of ``exchange`` or of the weight-gradient block's h_{t-1} from the
  other threads' reads. Every thread computes the readout and loss of all
  units (it needs dL/dout for its own units); thread 0's loss is kept.

The loss of step t and its gradient are computed when step t is reversed,
from s_t rebuilt out of I_t, in the same order under every schedule, so loss
and gradients are bit-identical across policies.
"""

import math

from numba import njit

from memopt_bptt._actions import Op
from memopt_bptt._kernels.blas import gemm
from memopt_bptt._kernels.mm import product
from memopt_bptt._kernels.sync import barrier

TAKESHOT = int(Op.TAKESHOT)  # plain ints: compile-time constants in the jitted dispatch
RESTORE = int(Op.RESTORE)
ADVANCE = int(Op.ADVANCE)
KEEP = int(Op.KEEP)
RESTORE_INTERNAL = int(Op.RESTORE_INTERNAL)
MSE = 0  # spec.loss_kind; 1 is cross-entropy


@njit(nogil=True, cache=CACHE)  # noqa: F821 - bound by _compile
def sweep(codes, params, data, bufs, grads, spec):
    """Run the lowered schedule ``codes`` (rows of op, step, slot). Returns
    (this sweep's loss sum, forwards run, dL/ds_0, the last state)."""
    S = spec.state_len
    K = spec.internal_len
    pool = bufs.pool
    cur, nxt, ds, ds_prev, work_int = bufs.cur, bufs.nxt, bufs.ds, bufs.ds_prev, bufs.work_int
    pos = 0
    forwards = 0
    loss = 0.0
    nb = 0  # barriers crossed (units mode)
    for i in range(codes.shape[0]):
        op = codes[i, 0]
        step = codes[i, 1]
        slot = codes[i, 2]
        off = slot * spec.quantum if slot >= 0 else -1
        if op == TAKESHOT:
            SAVE(pool[off: off + S], cur, spec)  # noqa: F821
        elif op == RESTORE:
            LOAD(cur, pool[off: off + S], spec)  # noqa: F821
            pos = step
            nb = SYNC(bufs, spec, nb)  # noqa: F821
        elif op == ADVANCE:
            for t in range(pos, step):
                FORWARD(params, data, bufs, spec, t, cur, nxt, work_int)  # noqa: F821
                cur, nxt = nxt, cur
                nb = SYNC(bufs, spec, nb)  # noqa: F821
            forwards += step - pos
            pos = step
        elif op == KEEP:
            target = work_int if off < 0 else pool[off: off + K]
            FORWARD(params, data, bufs, spec, step - 1, cur, nxt, target)  # noqa: F821
            cur, nxt = nxt, cur
            forwards += 1
            pos = step
            nb = SYNC(bufs, spec, nb)  # noqa: F821
        elif op == RESTORE_INTERNAL:
            REBUILD(params, data, bufs, spec, step - 1, pool[off: off + K], cur)  # noqa: F821
            pos = step
            nb = SYNC(bufs, spec, nb)  # noqa: F821
        else:  # Op.REVERSE
            internal = work_int if off < 0 else pool[off: off + K]
            REBUILD(params, data, bufs, spec, step - 1, internal, nxt)  # noqa: F821
            nb = SYNC(bufs, spec, nb)  # noqa: F821
            loss += READOUT(params, data, bufs, grads, spec, step - 1, nxt, ds)  # noqa: F821
            if bufs.norms.shape[0] > 0:
                bufs.norms[step] = NORM(ds, spec)  # noqa: F821
            nb = BACKWARD(params, data, bufs, grads, spec, step - 1, internal, ds, ds_prev, nb)  # noqa: F821
            ds, ds_prev = ds_prev, ds
    return loss, forwards, ds, cur


@njit
def loss_step(kind, out, ys_f, ys_i, t, b0, scale):
    """Step t's loss (a float64 sum) of batch rows b0.. (``out`` holds their
    outputs); overwrite ``out`` with dL/dout."""
    B = out.shape[0]
    O = out.shape[1]
    total = 0.0
    if kind == MSE:
        for b in range(B):
            for k in range(O):
                d = out[b, k] - ys_f[t, b0 + b, k]
                total += float(d) * float(d)
                out[b, k] = 2.0 * d * scale
    else:
        for b in range(B):
            mx = out[b, 0]
            for k in range(1, O):
                if out[b, k] > mx:
                    mx = out[b, k]
            s = 0.0
            for k in range(O):
                s += math.exp(float(out[b, k] - mx))
            lse = float(mx) + math.log(s)
            label = ys_i[t, b0 + b]
            total += lse - float(out[b, label])
            for k in range(O):
                p = math.exp(float(out[b, k]) - lse)
                out[b, k] = (p - (1.0 if k == label else 0.0)) * scale
    return total


# ---- rows mode: one sweep over batch rows b0 .. b0+rows-1 -------------------------------------------

@njit
def save_rows(dst, src, spec):
    dst[:] = src


@njit
def sync_rows(bufs, spec, nb):
    return nb


@njit
def forward_rows(params, data, bufs, spec, t, cur, nxt, internal):
    w_ih, w_hh, b_ih, b_hh, w_out, b_out = params
    x = data.xs[t, spec.b0: spec.b0 + spec.rows]
    cell_forward(w_ih, w_hh, b_ih, b_hh, w_out, b_out, x, cur, nxt, internal, bufs.work)  # noqa: F821


@njit
def rebuild_rows(params, data, bufs, spec, t, internal, out):
    w_ih, w_hh, b_ih, b_hh, w_out, b_out = params
    x = data.xs[t, spec.b0: spec.b0 + spec.rows]
    cell_rebuild(w_ih, w_hh, b_ih, b_hh, w_out, b_out, x, internal, out, bufs.work)  # noqa: F821


@njit
def readout_rows(params, data, bufs, grads, spec, t, state, ds):
    """Step t's readout, loss and their gradients: adds dL/dh_t into ``ds``
    and the readout's weight gradients; returns the loss sum."""
    w_out, b_out = params[4], params[5]
    g_w_out, g_b_out = grads[4], grads[5]
    B = spec.rows
    O = w_out.shape[0]
    hidden = spec.hidden
    outbuf = bufs.outbuf
    out2 = outbuf.reshape((B, O))
    if OUT_IS_STATE:  # noqa: F821 - the state is the output (Jordan)
        for p in range(B * O):
            outbuf[p] = state[p]
        loss = loss_step(spec.loss_kind, out2, data.ys_f, data.ys_i, t, spec.b0, spec.scale)
        for p in range(B * O):
            ds[p] += outbuf[p]
        return loss
    for b in range(B):
        for k in range(O):
            out2[b, k] = b_out[k]
    if FEATURE_MAJOR:  # noqa: F821 - h is (hidden, B)
        h = state[: B * hidden].reshape((hidden, B))
        gemm(True, True, 1.0, h, w_out, 1.0, out2)
    else:
        h = state[: B * hidden].reshape((B, hidden))
        gemm(False, True, 1.0, h, w_out, 1.0, out2)
    loss = loss_step(spec.loss_kind, out2, data.ys_f, data.ys_i, t, spec.b0, spec.scale)
    for b in range(B):
        for k in range(O):
            g_b_out[k] += out2[b, k]
    if FEATURE_MAJOR:  # noqa: F821
        gemm(True, True, 1.0, out2, h, 1.0, g_w_out)
        gemm(True, True, 1.0, w_out, out2, 1.0, ds[: B * hidden].reshape((hidden, B)))
    else:
        gemm(True, False, 1.0, out2, h, 1.0, g_w_out)
        gemm(False, False, 1.0, out2, w_out, 1.0, ds[: B * hidden].reshape((B, hidden)))
    return loss


@njit
def norm_rows(ds, spec):
    """||dL/dh_t||^2 over these rows: the h part of the state (all of it when the state is the output)."""
    n_h = spec.rows * (spec.n_outputs if OUT_IS_STATE else spec.hidden)  # noqa: F821
    acc = 0.0
    for p in range(n_h):
        acc += float(ds[p]) * float(ds[p])
    return acc


@njit
def backward_rows_direct(params, data, bufs, grads, spec, t, internal, ds, ds_prev, nb):
    """Backward of step t for a cell that adds its weight gradients in backward_step."""
    w_ih, w_hh, b_ih, b_hh, w_out, b_out = params
    g_w_ih, g_w_hh, g_b_ih, g_b_hh, g_w_out, g_b_out = grads
    x = data.xs[t, spec.b0: spec.b0 + spec.rows]
    cell_backward(w_ih, w_hh, b_ih, b_hh, w_out, b_out, x, internal, ds, ds_prev,  # noqa: F821
                  g_w_ih, g_w_hh, g_b_ih, g_b_hh, g_w_out, g_b_out, bufs.work)
    return nb


@njit
def backward_rows_deferred(params, data, bufs, grads, spec, t, internal, ds, ds_prev, nb):
    """Backward of step t for a cell with deferred weight gradients
    (Cell.grad_chunk = c); after the first step of a block of c (t % c == 0),
    the block's weight gradients. A lane (rows < batch) gathers its rows of
    the block's inputs into ``xchunk``; the whole batch reads them in place."""
    w_ih, w_hh, b_ih, b_hh, w_out, b_out = params
    g_w_ih, g_w_hh, g_b_ih, g_b_hh, g_w_out, g_b_out = grads
    xs = data.xs
    b0, bl, c = spec.b0, spec.rows, spec.chunk
    j = t % c
    cell_backward(w_ih, w_hh, b_ih, b_hh, w_out, b_out, xs[t, b0: b0 + bl], internal, ds, ds_prev,  # noqa: F821
                  g_w_ih, g_w_hh, g_b_ih, g_b_hh, g_w_out, g_b_out, bufs.work, bufs.chunk, j)
    if j == 0:
        w = min(c, xs.shape[0] - t)
        if bl == xs.shape[1]:
            x_block = xs[t: t + w].reshape((w * bl, xs.shape[2]))
        else:
            xchunk = bufs.xchunk
            for q in range(w):
                xchunk[q * bl: (q + 1) * bl] = xs[t + q, b0: b0 + bl]
            x_block = xchunk[: w * bl]
        cell_flush(w_ih, w_hh, b_ih, b_hh, w_out, b_out, x_block, bufs.chunk, w,  # noqa: F821
                   g_w_ih, g_w_hh, g_b_ih, g_b_hh, g_w_out, g_b_out)
    return nb


# ---- units mode: thread spec.thread of several that split the hidden units ------------------------------

@njit
def save_units(dst, src, spec):
    """dst = src on this thread's units of every hidden-wide block (the pool's
    copy of a unit is only ever read back by its own thread)."""
    n = spec.rows * spec.hidden
    a, z = spec.u0 * spec.rows, spec.u1 * spec.rows
    for q in range(spec.state_len // n):
        dst[q * n + a: q * n + z] = src[q * n + a: q * n + z]


@njit
def sync_units(bufs, spec, nb):
    nb += 1
    barrier(bufs.flags, spec.thread, nb, spec.spin)
    return nb


@njit
def forward_units(params, data, bufs, spec, t, cur, nxt, internal):
    w_ih, w_hh, b_ih, b_hh, w_out, b_out = params
    unit_forward(w_ih, w_hh, b_ih, b_hh, w_out, b_out, data.xs[t], cur, nxt, internal, bufs.work,  # noqa: F821
                 spec.u0, spec.u1)


@njit
def rebuild_units(params, data, bufs, spec, t, internal, out):
    w_ih, w_hh, b_ih, b_hh, w_out, b_out = params
    unit_rebuild(w_ih, w_hh, b_ih, b_hh, w_out, b_out, data.xs[t], internal, out, bufs.work,  # noqa: F821
                 spec.u0, spec.u1)


@njit
def readout_units(params, data, bufs, grads, spec, t, state, ds):
    """readout_rows for one unit thread: every thread computes all outputs and
    the loss; it adds its units' columns of the readout's weight gradient and
    its units' dL/dh_t; thread 0 the bias gradient and the loss. The products
    run in the tiled GEMM, with the outputs held transposed, (O, B), and this
    thread's h_t transposed, (B, units), both in ``outbuf`` after the outputs."""
    w_out, b_out = params[4], params[5]
    g_w_out, g_b_out = grads[4], grads[5]
    B, hidden, u0, u1 = spec.rows, spec.hidden, spec.u0, spec.u1
    O = w_out.shape[0]
    outbuf = bufs.outbuf
    out2 = outbuf[: B * O].reshape((B, O))
    out_t = outbuf[B * O: 2 * B * O].reshape((O, B))
    h_t = outbuf[2 * B * O: 2 * B * O + B * (u1 - u0)].reshape((B, u1 - u0))
    for o in range(O):
        for b in range(B):
            out_t[o, b] = b_out[o]
    h = state[: B * hidden].reshape((hidden, B))
    product(w_out, h, out_t, True)
    for b in range(B):
        for o in range(O):
            out2[b, o] = out_t[o, b]
    step_loss = loss_step(spec.loss_kind, out2, data.ys_f, data.ys_i, t, 0, spec.scale)
    for b in range(B):
        for o in range(O):
            out_t[o, b] = out2[b, o]
    if spec.thread == 0:
        for b in range(B):
            for o in range(O):
                g_b_out[o] += out2[b, o]
    for r in range(u1 - u0):
        for b in range(B):
            h_t[b, r] = h[u0 + r, b]
    product(out_t, h_t, g_w_out[:, u0: u1], True)
    product(w_out[:, u0: u1].T, out_t, ds[u0 * B: u1 * B].reshape((u1 - u0, B)), True)
    return step_loss if spec.thread == 0 else 0.0


@njit
def norm_units(ds, spec):
    acc = 0.0
    for p in range(spec.u0 * spec.rows, spec.u1 * spec.rows):
        acc += float(ds[p]) * float(ds[p])
    return acc


@njit
def backward_units(params, data, bufs, grads, spec, t, internal, ds, ds_prev, nb):
    """Backward of step t by one unit thread: its gates' part of every unit's
    dL/dh_{t-1} into its row of ``exchange`` (which alternates by step
    parity: step t - 2 writes it again only after every thread crossed step
    t - 1's barrier), a barrier, its units' dL/dh_{t-1} from every thread's
    part, and after the first step of a block its rows of the weight gradients."""
    w_ih, w_hh, b_ih, b_hh, w_out, b_out = params
    g_w_ih, g_w_hh, g_b_ih, g_b_hh, g_w_out, g_b_out = grads
    xs = data.xs
    x = xs[t]
    c, k, u0, u1 = spec.chunk, spec.thread, spec.u0, spec.u1
    j = t % c
    parts = bufs.exchange[t % 2]
    unit_backward_local(w_ih, w_hh, b_ih, b_hh, w_out, b_out, x, internal, ds, ds_prev, bufs.work,  # noqa: F821
                        bufs.chunk, j, parts[k], u0, u1)
    nb = sync_units(bufs, spec, nb)
    unit_backward_shared(w_ih, w_hh, b_ih, b_hh, w_out, b_out, x, ds_prev, parts, u0, u1)  # noqa: F821
    if j == 0:
        w = min(c, xs.shape[0] - t)
        x_block = xs[t: t + w].reshape((w * spec.rows, xs.shape[2]))
        unit_flush(w_ih, w_hh, b_ih, b_hh, w_out, b_out, x_block, bufs.chunk, w,  # noqa: F821
                   g_w_ih, g_w_hh, g_b_ih, g_b_hh, g_w_out, g_b_out, u0, u1)
        nb = sync_units(bufs, spec, nb)  # the flush read every unit's h_{t-1}: the next block writes them after
    return nb
