"""Units mode: one of several threads that split every step's hidden units, in every layer.

This file is not imported. ``_compile`` compiles it into the namespace of
``_sweep.py`` for a sweep in units mode, beside the layer steps it generates
for the stack (``forward_units``, ``rebuild_units``, ``backward_units``: one
call of each layer's unit kernels, ``Cell.unit_kernels``, per layer).

The work is split into shares, one per thread: share s is units ``u0 ..
u1-1`` of every layer (row k of ``bufs.units[s]``: layer k's u0 and u1,
``Sequence.unit_split(batch, layer=k)``, and where its exchange blocks
start), and thread s runs it (but see "One thread or several" below). Every
buffer but ``work``, ``outbuf``, ``roww`` and ``norms`` is shared; a share
writes only its units' elements (its rows of the weight gradients, its
columns of the readout's and of the kept layer inputs; share 0 the readout
bias) and its own partial gradients in ``exchange``. Below, "a thread" is
the thread that runs a share. A barrier separates every write from another
share's read of it:

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

Deferred barriers (stacks). Each thread keeps a word of debts in its own
row of ``bufs.units`` (see "One thread or several"); every barrier
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
for its own units); share 0's loss is kept. Nothing here allocates.

One thread or several. Between two barriers no share reads what another
writes, so the shares' parts of that stretch can run in any order, on any
thread, and give the same bits; only each share's own parts keep their
order. So one thread may run every share: between two barriers it runs each
share's part in share order, with its own ``work`` and ``outbuf`` (no
scratch outlives a kernel call but ``work`` between a local part and its
input gradient, which stay together), and crosses no barrier. The shares a
thread runs are in its own row of the table (``bufs.units[thread,
layers]``: ``S0 .. S1-1``, with its debts), read after every barrier.

* A sweep starts with one thread for every share when ``Run`` finds the
  machine crowded (``_runner.crowded``: fewer free CPUs than threads), and
  with a thread per share otherwise.
* Threads that stall go on with one: a thread adds up its waits at
  barriers over windows of ``STALL_WINDOW`` barriers, and one that waited
  more than half the time of ``STALL_STREAK`` windows in a row (a partner
  that keeps losing its CPU; on a quiet machine a thread waits a few percent
  of a window, and a virtual machine's pause of a few milliseconds fills one
  window, not three; the checkpoint pool's pages are mapped before the
  threads start, ``_runner._touch_pages``, since a page fault inside the
  sweep stalls the partner too) asks (``sync.ask_solo``) that thread 0 run every share
  after the next barrier; every thread turns there, the others with no share,
  and run the rest of the dispatch without work or barriers. (The wait is
  read from x86's time-stamp counter, ``sync.cycles``; elsewhere only the
  start of a sweep decides.)

Either way each share computes the same values, and the threads' sums
(norms, partial gradients) are added in share order, so the bits are those
of a thread per share.
"""

from memopt_bptt._jit import inner
from memopt_bptt._kernels.activations import copy_into
from memopt_bptt._kernels.mm import product
from memopt_bptt._kernels.sync import SLOT, ask_solo, barrier, cycles, solo_after

U0, U1, HP_OFF, XP_OFF = 0, 1, 2, 3  # columns of a share's rows of bufs.units (see _runner.Run._unit_tables)
DEBTS, S0, S1, SOLO, WAITED, SINCE, START, STREAK = 0, 1, 2, 3, 4, 5, 6, 7  # a thread's own row (its share's last)
FRESH, STATE, POOL = 1, 2, 4  # debts: a forward step just ran, and the two above
STALL_WINDOW = 128
"""Barriers over which a thread adds up its waits (see "One thread or several")."""
STALL_SHARE = 2
"""A thread that waited more than 1 / ``STALL_SHARE`` of the time of ``STALL_STREAK`` windows in a row
asks to go on with one."""
STALL_STREAK = 3


@inner
def own(bufs, spec):
    """This thread's own row of ``bufs.units``: its debts, the shares it runs and its stalls."""
    return bufs.units[spec.thread, bufs.layout.shape[0]]


@inner
def cross(bufs, spec):
    """A barrier: this thread's next count (its own counter, which only it writes, plus one);
    every debt is paid. Working alone, no barrier (see "One thread or several" above)."""
    st = own(bufs, spec)
    st[DEBTS] = 0
    if st[SOLO]:
        return
    me, flags = spec.thread, bufs.flags
    count = flags[me * SLOT] + 1
    start = cycles()
    barrier(flags, me, count, spec.spin)
    end = cycles()
    waited = end - start
    switch = solo_after(flags)
    if switch != 0 and count >= switch:  # every thread turns here, after the same barrier
        st[SOLO] = 1
        st[S0] = 0
        st[S1] = bufs.units.shape[0] if me == 0 else 0
    elif switch == 0:  # add up this window's waits; half of its time waiting: a partner without a CPU
        if st[START] == 0:  # the sweep's first barrier opens the first window
            st[START] = start
            st[SINCE] = count - 1
        st[WAITED] += waited
        if count - st[SINCE] >= STALL_WINDOW:
            st[STREAK] = st[STREAK] + 1 if STALL_SHARE * st[WAITED] > end - st[START] else 0
            if st[STREAK] >= STALL_STREAK:  # not one pause of this machine: a partner that keeps losing its CPU
                ask_solo(flags, count)
            st[SINCE] = count
            st[START] = end
            st[WAITED] = 0


@inner
def pay(bufs, spec, debts):
    """Cross a barrier if one of ``debts`` is owed."""
    if own(bufs, spec)[DEBTS] & debts:
        cross(bufs, spec)


@inner
def owe(bufs, spec, debt):
    st = own(bufs, spec)
    st[DEBTS] |= debt


@inner
def copy_units(dst, src, bufs, spec):
    """dst = src on the units of every layer's hidden-wide blocks that this thread's shares
    own (the pool's copy of a unit is only ever read back by its own share)."""
    lay, units, rows = bufs.layout, bufs.units, spec.rows
    st = own(bufs, spec)
    for sh in range(st[S0], st[S1]):
        for k in range(lay.shape[0]):
            n = rows * lay[k, 9]
            a, z = units[sh, k, U0] * rows, units[sh, k, U1] * rows
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
    st = own(bufs, spec)
    if st[DEBTS] & FRESH:
        st[DEBTS] = (st[DEBTS] & ~FRESH) | STATE
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
    """Every share's partial-gradient block at ``off`` of step t's half of the exchange, (shares, width)."""
    n = bufs.units.shape[0]
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
    """readout_rows for one unit thread: it computes all outputs and the loss
    (each thread does); for each of its shares it adds the share's units'
    columns of the readout's weight gradient and their dL/dh_t; share 0 adds
    the bias gradient and keeps the loss (returned, else 0). The products run
    in the tiled GEMM, with the outputs held transposed, (O, B), and a share's
    h_t transposed, (B, units), both in ``outbuf`` after the outputs. First the
    first layer's shared part of step t + 1 (``finish_units``; not after the
    last step, which runs no backward before this readout)."""
    if t + 1 < data.xs.shape[0]:
        finish_units(params, data, bufs, grads, spec, t + 1, ds)  # noqa: F821 - generated by _compile
    st = own(bufs, spec)
    if st[S0] == st[S1] or not row_weights(data, spec, t, bufs.roww):  # noqa: F821 - _sweep.py's
        return 0.0
    ty = 0 if spec.loss_mode == LAST else t  # noqa: F821
    w_out, b_out = params[P_W_OUT], params[P_B_OUT]  # noqa: F821 - bound by _compile
    g_w_out, g_b_out = grads[P_W_OUT], grads[P_B_OUT]  # noqa: F821
    B, hidden, a = spec.rows, spec.hidden, spec.h_off
    top = bufs.layout.shape[0] - 1
    O = w_out.shape[0]
    outbuf = bufs.outbuf
    out2 = outbuf[: B * O].reshape((B, O))
    out_t = outbuf[B * O: 2 * B * O].reshape((O, B))
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
    if st[S0] == 0:
        for b in range(B):
            for o in range(O):
                g_b_out[o] += out2[b, o]
    for sh in range(st[S0], st[S1]):
        u0, u1 = bufs.units[sh, top, U0], bufs.units[sh, top, U1]
        h_t = outbuf[2 * B * O: 2 * B * O + B * (u1 - u0)].reshape((B, u1 - u0))
        for r in range(u1 - u0):
            for b in range(B):
                h_t[b, r] = h[u0 + r, b]
        product(out_t, h_t, g_w_out[:, u0: u1], True)
        product(w_out[:, u0: u1].T, out_t, ds[a + u0 * B: a + u1 * B].reshape((u1 - u0, B)), True)
    return step_loss if st[S0] == 0 else 0.0


@inner
def norm_units(ds, bufs, spec):
    """This thread's part of ||dL/dh_t||^2: its shares' units of every layer's h part of
    ``ds``, each share's sum added in share order (as the threads' parts are added)."""
    lay, units, rows = bufs.layout, bufs.units, spec.rows
    st = own(bufs, spec)
    total = 0.0
    for sh in range(st[S0], st[S1]):
        acc = 0.0
        for k in range(lay.shape[0]):
            for p in range(lay[k, 0] + units[sh, k, U0] * rows, lay[k, 0] + units[sh, k, U1] * rows):
                acc += float(ds[p]) * float(ds[p])
        total = acc if sh == st[S0] else total + acc
    return total
