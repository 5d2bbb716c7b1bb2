"""Units mode: one of several threads that split every step's hidden units, in every layer.

This file is not imported. ``_compile`` compiles it into the namespace of
``_sweep.py`` for a sweep in units mode, beside the layer steps it generates
for the stack (``forward_units``, ``rebuild_units``, ``backward_units``: one
call of each layer's unit kernels, ``Cell.unit_kernels``, per layer).

Thread ``spec.thread`` computes units ``u0 .. u1-1`` of every layer (row k of
``bufs.units``: layer k's u0 and u1, ``Sequence.unit_split(batch,
layer=k)``, and where its exchange blocks start). Every buffer but ``work``,
``outbuf``, ``norms`` and ``units`` is shared; each thread writes only its
units' elements (its rows of the weight gradients, its columns of the
readout's and of the kept layer inputs; thread 0 the readout bias) and its
own partial gradients in ``exchange``. A barrier separates every write from
another thread's read of it:

* forward of step t, layer k: reads all of layer k's h_{t-1} and of layer
  k-1's h_t (its input), so a barrier follows every layer's forward but the
  top one's, and the dispatch's SYNC follows the step (a barrier with one
  layer; deferred in a stack, see "Deferred barriers" below).
* rebuild: each thread rebuilds its units of every layer from the internal
  state alone (reading only the input's shape); the SYNC after it lets the
  readout read all of the top layer's h_t.
* backward of step t, layers from the top: the thread's gates give a part of
  every unit's dL/dh_{t-1} of layer k (``backward_local``) and, above the
  first layer, of every unit's dL/dh_t of layer k-1, which is layer k's
  input gradient (``Cell.unit_input_grad``); one barrier; then its units'
  dL/dh_{t-1} of layer k (``backward_shared``) and its units' share of layer
  k-1's dL/dh_t (:func:`add_parts`), the threads' parts added in thread
  order, so the bits never depend on which thread is first. Before its
  local part each thread copies its units of layer k-1's h_t into layer k's
  kept inputs (:func:`keep_units`); at the first step of a block of deferred
  weight gradients each flushes its rows, reading every unit's h_{t-1} and
  kept input (written before the barrier).
* In a stack, the first layer's barrier is the next step's: its shared part
  and flush of step t (``finish_units``) run at the start of the readout of
  step t - 1, after the dispatch's SYNC that follows the rebuild, which every
  thread reaches after its local part of step t (at t = 0, with no next
  step, after a barrier of their own). They write only this thread's units
  of dL/dh_t and rows of the weight gradients, read before anything else
  does (the norm and add_parts come later).
* No barrier follows a flush: the next writes of the parts a flush reads
  (the block's kept inputs and h_{t-1}, the exchange's half) are made by a
  later step's backward, after the SYNC that follows that step's rebuild;
  for the first layer of a stack, deferred, after that step's top-layer
  barrier, which a thread reaches only after its readout ran the flush.

The checkpoint pool is shared too, and each thread saves and restores only
its own units, but which thread owns a pool element depends on what a slot
holds: a state's blocks and an internal state's blocks fall on different
elements when the layers' hidden sizes differ, and the planner reuses a
slot's memory for either. So a thread never writes the pool while another
may still read or write an element for the slot's previous use: every
action that reads or writes the pool ends at a barrier (the dispatch's
SYNC, after a saved state too), but for the two debts below.

Deferred barriers (stacks). Each thread keeps a word of debts in the last
row of its ``bufs.units`` (after the layers' rows); every barrier
(:func:`cross`) counts from the thread's own counter and clears them, so
the dispatch's ``nb`` is carried but not relied on.

* A forward step ends at its top layer, which reads every unit of that
  layer's h_t (``cur``) and of the layer below's h_{t+1} (``nxt``), and
  writes its units of ``nxt`` and of the internal state. The next forward
  step needs no barrier before it: its first layer writes ``cur``'s first
  block and its own units of the next internal state, and its next layer
  starts behind the inter-layer barrier, which every thread reaches after
  the previous step's top layer. So the dispatch's SYNC after a forward step
  only marks ``STATE``, and a barrier is crossed where another action writes
  a state buffer: a restore (:func:`load_units`) or a rebuild
  (``rebuild_units``). A saved state reads only this thread's units and
  writes the pool (not the slot the step kept into, which is live), and its
  SYNC is a barrier.
* A stack's backward ends at its first layer's local part, after the last
  barrier of the step, reading that layer's internal state (a pool slot
  that the planner may free at once). So it marks ``POOL``, and a barrier is
  crossed before the next write to the pool: a saved state
  (:func:`save_units`) or a forward step into a pool slot. Everything else
  it reads or writes is this thread's (see above), and the next reversed
  step's SYNC is a barrier.

A one-layer model marks neither: its forward steps read every unit of the
step before, so the dispatch's SYNC after each is a barrier.

The exchange holds two steps' partial gradients, by step parity. In each
half, per layer: every thread's dL/dh_{t-1} part ((batch, hidden), thread
after thread), then above the first layer every thread's dL/dx_t part
((batch, input)). A half is written again at step t - 2, after every thread
crossed step t - 1's barriers, so no part is overwritten while another
thread reads it.

Every thread computes the readout and loss of all outputs (it needs dL/dout
for its own units); thread 0's loss is kept. Nothing here allocates.
"""

from memopt_bptt._jit import inner
from memopt_bptt._kernels.activations import copy_into
from memopt_bptt._kernels.mm import product
from memopt_bptt._kernels.sync import SLOT, barrier

U0, U1, HP_OFF, XP_OFF = 0, 1, 2, 3  # columns of bufs.units (see _runner.Run._unit_tables)
FRESH, STATE, POOL = 1, 2, 4  # debts in bufs.units[layers, 0]: a forward step just ran, and the two above


@inner
def cross(bufs, spec):
    """A barrier: this thread's next count (its own counter, which only it writes, plus one);
    every debt is paid."""
    me = spec.thread
    barrier(bufs.flags, me, bufs.flags[me * SLOT] + 1, spec.spin)
    bufs.units[bufs.layout.shape[0], 0] = 0


@inner
def pay(bufs, spec, debts):
    """Cross a barrier if one of ``debts`` is owed."""
    if bufs.units[bufs.layout.shape[0], 0] & debts:
        cross(bufs, spec)


@inner
def owe(bufs, debt):
    bufs.units[bufs.layout.shape[0], 0] |= debt


@inner
def copy_units(dst, src, bufs, spec):
    """dst = src on this thread's units of every layer's hidden-wide blocks (the
    pool's copy of a unit is only ever read back by its own thread)."""
    lay, units, rows = bufs.layout, bufs.units, spec.rows
    for k in range(lay.shape[0]):
        n = rows * lay[k, 9]
        a, z = units[k, U0] * rows, units[k, U1] * rows
        for q in range(lay[k, 1] // n):
            o = lay[k, 0] + q * n
            copy_into(src[o + a: o + z], dst[o + a: o + z])


@inner
def save_units(dst, src, bufs, spec):
    """A saved state: this thread's units into the pool, once no backward may still read it."""
    pay(bufs, spec, POOL)
    copy_units(dst, src, bufs, spec)


@inner
def load_units(dst, src, bufs, spec):
    """A restored state: this thread's units from the pool, once no forward step may still read ``dst``."""
    pay(bufs, spec, STATE)
    copy_units(dst, src, bufs, spec)


@inner
def sync_units(bufs, spec, nb):
    """The dispatch's SYNC after every action: a barrier, but after a stack's forward step only
    the debt ``STATE`` (see the module docstring). Returns the barriers crossed, counted on."""
    row = bufs.layout.shape[0]
    if bufs.units[row, 0] & FRESH:
        bufs.units[row, 0] = (bufs.units[row, 0] & ~FRESH) | STATE
        return nb
    cross(bufs, spec)
    return nb + 1


@inner
def layer_h(state, lay, k, rows):
    """Layer k's h_t in a stack's state (or its part of a state gradient), (hidden_k, rows)."""
    H = lay[k, 9]
    return state[lay[k, 0]: lay[k, 0] + H * rows].reshape((H, rows))


@inner
def unit_parts(bufs, t, off, width):
    """Every thread's partial-gradient block at ``off`` of step t's half of the exchange, (threads, width)."""
    n = bufs.flags.shape[0] // SLOT - 1
    o = (t % 2) * (bufs.exchange.shape[0] // 2) + off
    return bufs.exchange[o: o + n * width].reshape((n, width))


@inner
def add_parts(parts, dh, u0, u1):
    """Rows u0..u1-1 of dh (hidden, B) += the threads' parts ((B, hidden) each), added in thread order."""
    H = dh.shape[0]
    for u in range(u0, u1):
        for b in range(dh.shape[1]):
            acc = parts[0, b * H + u]
            for k in range(1, parts.shape[0]):
                acc += parts[k, b * H + u]
            dh[u, b] += acc


@inner
def keep_units(h, dst, u0, u1):
    """Columns u0..u1-1 of dst (B, hidden) = rows u0..u1-1 of h (hidden, B): this thread's
    units of a layer's h_t, kept as the input of the layer above for its weight gradients."""
    for b in range(h.shape[1]):
        for u in range(u0, u1):
            dst[b, u] = h[u, b]


@inner
def readout_units(params, data, bufs, grads, spec, t, state, ds):
    """readout_rows for one unit thread: every thread computes all outputs and
    the loss; it adds its units' columns of the readout's weight gradient and
    its units' dL/dh_t; thread 0 the bias gradient and the loss. The products
    run in the tiled GEMM, with the outputs held transposed, (O, B), and this
    thread's h_t transposed, (B, units), both in ``outbuf`` after the outputs.
    First the first layer's shared part of step t + 1 (``finish_units``; not
    after the last step, which runs no backward before this readout)."""
    if t + 1 < data.xs.shape[0]:
        finish_units(params, data, bufs, grads, spec, t + 1, ds)  # noqa: F821 - generated by _compile
    if not row_weights(data, spec, t, bufs.roww):  # noqa: F821 - _sweep.py's
        return 0.0
    ty = 0 if spec.loss_mode == LAST else t  # noqa: F821
    w_out, b_out = params[P_W_OUT], params[P_B_OUT]  # noqa: F821 - bound by _compile
    g_w_out, g_b_out = grads[P_W_OUT], grads[P_B_OUT]  # noqa: F821
    B, hidden, u0, u1, a = spec.rows, spec.hidden, spec.u0, spec.u1, spec.h_off
    O = w_out.shape[0]
    outbuf = bufs.outbuf
    out2 = outbuf[: B * O].reshape((B, O))
    out_t = outbuf[B * O: 2 * B * O].reshape((O, B))
    h_t = outbuf[2 * B * O: 2 * B * O + B * (u1 - u0)].reshape((B, u1 - u0))
    for o in range(O):
        for b in range(B):
            out_t[o, b] = b_out[o]
    h = state[a: a + B * hidden].reshape((hidden, B))
    product(w_out, h, out_t, True)
    for b in range(B):
        for o in range(O):
            out2[b, o] = out_t[o, b]
    step_loss = loss_step(spec.loss_kind, out2, data.ys_f, data.ys_i, ty, 0, spec.scale, bufs.roww)  # noqa: F821
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
    product(w_out[:, u0: u1].T, out_t, ds[a + u0 * B: a + u1 * B].reshape((u1 - u0, B)), True)
    return step_loss if spec.thread == 0 else 0.0


@inner
def norm_units(ds, bufs, spec):
    """This thread's part of ||dL/dh_t||^2: its units of every layer's h part of ``ds``."""
    lay, units, rows = bufs.layout, bufs.units, spec.rows
    acc = 0.0
    for k in range(lay.shape[0]):
        for p in range(lay[k, 0] + units[k, U0] * rows, lay[k, 0] + units[k, U1] * rows):
            acc += float(ds[p]) * float(ds[p])
    return acc
