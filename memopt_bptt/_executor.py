"""The executor: run a Schedule in one jitted loop and return exact gradients.

Every buffer is allocated once, in Python, before the sweep — the checkpoint
pool at the schedule's planned size and the working buffers the planner
charged for — so the sweep itself allocates nothing and what it keeps is
visible to ``tracemalloc``. The schedule is lowered to an integer array; the
loop reads it and calls the cell's kernels. The loss of step t and its
gradient are computed when step t is reversed, from s_t rebuilt out of I_t,
in the same order under every schedule, so loss and gradients are
bit-identical across policies.
"""

from __future__ import annotations

import math
import os
import threading
import time
import tracemalloc
import warnings
from typing import Any, NamedTuple

import numpy as np
from numba import njit
from numba.core.errors import NumbaExperimentalFeatureWarning

from ._model import Sequence
from ._plans import cached_plan, resolve_policy
from ._schedule import Schedule
from .cells._blas import blas_threads, gemm
from .cells._mm import product
from .cells._sync import abort, barrier, new_flags

__all__ = ["value_and_grad", "Report", "measure_step_times", "measure_byte_cost"]

SMALL_GEMM_MACS = 1 << 20
"""A model run in one lane whose recurrent GEMM (weight_hh rows x columns x
batch) is below this many multiply-adds runs its BLAS on one thread: at
hidden 64 and batch 16 (0.26 M) splitting each small GEMM over two BLAS
threads costs more in synchronisation than it saves. Lanes
(:meth:`Sequence.lane_batches`) always run BLAS on one thread each."""


def _sweep_threads(w_hh: np.ndarray, batch: int) -> int | None:
    return 1 if w_hh.shape[0] * w_hh.shape[1] * batch < SMALL_GEMM_MACS else None


@njit(cache=True)
def _loss_step(kind, out, ys_f, ys_i, t, b0, scale):
    """Step t's loss (a float64 sum) of batch rows b0.. (``out`` holds their
    outputs); overwrite ``out`` with dL/dout."""
    B = out.shape[0]
    O = out.shape[1]
    total = 0.0
    if kind == 0:
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


@njit(cache=True)
def _no_flush(w_ih, w_hh, b_ih, b_hh, w_out, b_out, xs_chunk, chunk, w,
              g_w_ih, g_w_hh, g_b_ih, g_b_hh, g_w_out, g_b_out):
    """flush_grads of a cell that adds its weight gradients in backward_step."""
    return


_ADAPTED: dict = {}


def _chunk_kernels(cell):
    """(backward, flush, c) in the deferred-gradient form for any cell: a cell
    with grad_chunk = 0 gets its backward wrapped to take (chunk, j) and a no-op
    flush, with c = 1."""
    if cell.grad_chunk:
        return cell.backward_step, cell.flush_grads, cell.grad_chunk
    bwd = cell.backward_step
    if bwd not in _ADAPTED:
        @njit
        def backward(w_ih, w_hh, b_ih, b_hh, w_out, b_out, x, internal, ds, ds_prev,
                     g_w_ih, g_w_hh, g_b_ih, g_b_hh, g_w_out, g_b_out, work, chunk, j):
            bwd(w_ih, w_hh, b_ih, b_hh, w_out, b_out, x, internal, ds, ds_prev,
                g_w_ih, g_w_hh, g_b_ih, g_b_hh, g_w_out, g_b_out, work)
        _ADAPTED[bwd] = backward
    return _ADAPTED[bwd], _no_flush, 1


@njit
def _reverse_step(bwd, flush, w_ih, w_hh, b_ih, b_hh, w_out, b_out, xs, t, b0, bl, internal, ds, ds_prev,
                  g_w_ih, g_w_hh, g_b_ih, g_b_hh, g_w_out, g_b_out, work, chunk, c, xchunk):
    """Backward of the step whose input is xs[t, b0:b0+bl]; after the first step
    of a block of c (t % c == 0), the block's deferred weight gradients
    (Cell.grad_chunk). A lane (bl < batch) gathers its rows of the block's
    inputs into ``xchunk``, (c * bl, input) rows; the whole batch reads them in place."""
    j = t % c
    bwd(w_ih, w_hh, b_ih, b_hh, w_out, b_out, xs[t, b0: b0 + bl], internal, ds, ds_prev,
        g_w_ih, g_w_hh, g_b_ih, g_b_hh, g_w_out, g_b_out, work, chunk, j)
    if j == 0:
        w = min(c, xs.shape[0] - t)
        if bl == xs.shape[1]:
            x_block = xs[t: t + w].reshape((w * bl, xs.shape[2]))
        elif xchunk.shape[0] < w * bl:  # a cell without deferred gradients: its flush reads nothing
            x_block = xchunk[:0]
        else:
            for q in range(w):
                xchunk[q * bl: (q + 1) * bl] = xs[t + q, b0: b0 + bl]
            x_block = xchunk[: w * bl]
        flush(w_ih, w_hh, b_ih, b_hh, w_out, b_out, x_block, chunk, w, g_w_ih, g_w_hh, g_b_ih, g_b_hh,
              g_w_out, g_b_out)


@njit(nogil=True)
def _sweep(fwd, bwd, flush, rebuild, codes, w_ih, w_hh, b_ih, b_hh, w_out, b_out, xs, b0, B, ys_f, ys_i,
           loss_kind, out_is_state, feature_major, hidden, pool, cur, nxt, ds, ds_prev, work_int, work, outbuf,
           chunk, c, xchunk, g_w_ih, g_w_hh, g_b_ih, g_b_hh, g_w_out, g_b_out, S, K, scale, ds_norms,
           quantum_elems):
    """Run the lowered schedule on batch rows b0 .. b0+B-1 of xs (one lane;
    every buffer is sized for B rows). Returns (loss sum, forwards, dL/ds_0).

    ``ds_norms`` (length T+1, or 0 to skip) receives ||dL/dh_t||^2 over these
    rows at index t. Releases the GIL, so lanes run on separate threads.
    """
    O = w_out.shape[0]
    pos = 0
    forwards = 0
    loss = 0.0
    out2 = outbuf.reshape((B, O))
    for i in range(codes.shape[0]):
        op = codes[i, 0]
        step = codes[i, 1]
        slot = codes[i, 2]
        off = slot * quantum_elems if slot >= 0 else -1
        if op == 0:  # takeshot
            pool[off: off + S] = cur
        elif op == 1:  # restore
            cur[:] = pool[off: off + S]
            pos = step
        elif op == 2:  # advance
            for t in range(pos, step):
                fwd(w_ih, w_hh, b_ih, b_hh, w_out, b_out, xs[t, b0: b0 + B], cur, nxt, work_int, work)
                cur, nxt = nxt, cur
            forwards += step - pos
            pos = step
        elif op == 3:  # keep
            target = work_int if off < 0 else pool[off: off + K]
            fwd(w_ih, w_hh, b_ih, b_hh, w_out, b_out, xs[step - 1, b0: b0 + B], cur, nxt, target, work)
            cur, nxt = nxt, cur
            forwards += 1
            pos = step
        elif op == 4:  # restore_internal
            rebuild(w_ih, w_hh, b_ih, b_hh, w_out, b_out, xs[step - 1, b0: b0 + B], pool[off: off + K], cur, work)
            pos = step
        else:  # reverse
            internal = work_int if off < 0 else pool[off: off + K]
            x = xs[step - 1, b0: b0 + B]
            rebuild(w_ih, w_hh, b_ih, b_hh, w_out, b_out, x, internal, nxt, work)
            if out_is_state:
                for p in range(B * O):
                    outbuf[p] = nxt[p]
                loss += _loss_step(loss_kind, out2, ys_f, ys_i, step - 1, b0, scale)
                for p in range(B * O):
                    ds[p] += outbuf[p]
            else:
                for b in range(B):
                    for k in range(O):
                        out2[b, k] = b_out[k]
                if feature_major:  # h is (hidden, B)
                    h = nxt[: B * hidden].reshape((hidden, B))
                    gemm(True, True, 1.0, h, w_out, 1.0, out2)
                else:
                    h = nxt[: B * hidden].reshape((B, hidden))
                    gemm(False, True, 1.0, h, w_out, 1.0, out2)
                loss += _loss_step(loss_kind, out2, ys_f, ys_i, step - 1, b0, scale)
                for b in range(B):
                    for k in range(O):
                        g_b_out[k] += out2[b, k]
                if feature_major:
                    gemm(True, True, 1.0, out2, h, 1.0, g_w_out)
                    gemm(True, True, 1.0, w_out, out2, 1.0, ds[: B * hidden].reshape((hidden, B)))
                else:
                    gemm(True, False, 1.0, out2, h, 1.0, g_w_out)
                    gemm(False, False, 1.0, out2, w_out, 1.0, ds[: B * hidden].reshape((B, hidden)))
            if ds_norms.shape[0] > 0:
                # ||dL/dh_t||: the h part of the state (all of it when the state is the output)
                n_h = B * O if out_is_state else B * hidden
                acc = 0.0
                for p in range(n_h):
                    acc += float(ds[p]) * float(ds[p])
                ds_norms[step] = acc
            _reverse_step(bwd, flush, w_ih, w_hh, b_ih, b_hh, w_out, b_out, xs, step - 1, b0, B, internal, ds,
                          ds_prev, g_w_ih, g_w_hh, g_b_ih, g_b_hh, g_w_out, g_b_out, work, chunk, c, xchunk)
            ds, ds_prev = ds_prev, ds
    return loss, forwards, ds


@njit
def _copy_units(dst, src, blocks, n, a, z):
    """dst = src on elements a..z-1 of each of ``blocks`` blocks of n."""
    for q in range(blocks):
        dst[q * n + a: q * n + z] = src[q * n + a: q * n + z]


@njit(nogil=True)
def _sweep_units(kernels, codes, w_ih, w_hh, b_ih, b_hh, w_out, b_out, xs, ys_f, ys_i, loss_kind, hidden,
                 pool, cur, nxt, ds, ds_prev, work_int, work, outbuf, chunk, c, g_w_ih, g_w_hh, g_b_ih, g_b_hh,
                 g_w_out, g_b_out, S, K, scale, ds_norms, quantum_elems, k, u0, u1, flags, spin, exchange):
    """_sweep's schedule run by thread k of several that split every step's
    hidden units (Sequence.unit_split): this thread computes units u0..u1-1
    with the cell's unit kernels. Every buffer but ``work``, ``outbuf`` and
    ``ds_norms`` is shared; each thread writes only its units' elements (and
    rows of the weight gradients, columns of the readout's; thread 0 the
    readout bias) and its row of ``exchange``, and a barrier separates every
    write of h, of ``exchange`` or of the weight-gradient block's h_{t-1}
    from the other threads' reads. Every thread computes the readout and
    loss of all units; thread 0's loss is returned. Returns (loss sum,
    forwards, dL/ds_0)."""
    fwd, rebuild, bwd_local, bwd_shared, flush = kernels
    B = xs.shape[1]
    O = w_out.shape[0]
    n = B * hidden
    a, z = u0 * B, u1 * B
    sb = S // n  # hidden-wide blocks of the state
    pos = 0
    forwards = 0
    loss = 0.0
    nb = 0  # barriers crossed
    out2 = outbuf[: B * O].reshape((B, O))
    out_t = outbuf[B * O: 2 * B * O].reshape((O, B))
    h_t = outbuf[2 * B * O: 2 * B * O + B * (u1 - u0)].reshape((B, u1 - u0))
    for i in range(codes.shape[0]):
        op = codes[i, 0]
        step = codes[i, 1]
        slot = codes[i, 2]
        off = slot * quantum_elems if slot >= 0 else -1
        if op == 0:  # takeshot: the pool's copy of a unit is only ever read back by its thread
            _copy_units(pool[off: off + S], cur, sb, n, a, z)
        elif op == 1:  # restore
            _copy_units(cur, pool[off: off + S], sb, n, a, z)
            pos = step
            nb += 1
            barrier(flags, k, nb, spin)
        elif op == 2:  # advance
            for t in range(pos, step):
                fwd(w_ih, w_hh, b_ih, b_hh, w_out, b_out, xs[t], cur, nxt, work_int, work, u0, u1)
                cur, nxt = nxt, cur
                nb += 1
                barrier(flags, k, nb, spin)
            forwards += step - pos
            pos = step
        elif op == 3:  # keep
            target = work_int if off < 0 else pool[off: off + K]
            fwd(w_ih, w_hh, b_ih, b_hh, w_out, b_out, xs[step - 1], cur, nxt, target, work, u0, u1)
            cur, nxt = nxt, cur
            forwards += 1
            pos = step
            nb += 1
            barrier(flags, k, nb, spin)
        elif op == 4:  # restore_internal
            rebuild(w_ih, w_hh, b_ih, b_hh, w_out, b_out, xs[step - 1], pool[off: off + K], cur, work, u0, u1)
            pos = step
            nb += 1
            barrier(flags, k, nb, spin)
        else:  # reverse
            internal = work_int if off < 0 else pool[off: off + K]
            t = step - 1
            x = xs[t]
            rebuild(w_ih, w_hh, b_ih, b_hh, w_out, b_out, x, internal, nxt, work, u0, u1)
            nb += 1
            barrier(flags, k, nb, spin)
            # The readout's products in the tiled GEMM: outputs held transposed, (O, B), and this
            # thread's h_t transposed, (B, units), both in outbuf after out2.
            for o in range(O):
                for b in range(B):
                    out_t[o, b] = b_out[o]
            h = nxt[:n].reshape((hidden, B))
            product(w_out, h, out_t, True)
            for b in range(B):
                for o in range(O):
                    out2[b, o] = out_t[o, b]
            step_loss = _loss_step(loss_kind, out2, ys_f, ys_i, t, 0, scale)
            for b in range(B):
                for o in range(O):
                    out_t[o, b] = out2[b, o]
            if k == 0:
                loss += step_loss
                for b in range(B):
                    for o in range(O):
                        g_b_out[o] += out2[b, o]
            for r in range(u1 - u0):
                for b in range(B):
                    h_t[b, r] = h[u0 + r, b]
            product(out_t, h_t, g_w_out[:, u0: u1], True)
            product(w_out[:, u0: u1].T, out_t, ds[a: z].reshape((u1 - u0, B)), True)
            if ds_norms.shape[0] > 0:
                acc = 0.0
                for p in range(a, z):
                    acc += float(ds[p]) * float(ds[p])
                ds_norms[step] = acc
            j = t % c
            parts = exchange[t % 2]  # step t - 2 writes them again, after every thread crossed step t - 1's barrier
            bwd_local(w_ih, w_hh, b_ih, b_hh, w_out, b_out, x, internal, ds, ds_prev, work, chunk, j, parts[k],
                      u0, u1)
            nb += 1
            barrier(flags, k, nb, spin)
            bwd_shared(w_ih, w_hh, b_ih, b_hh, w_out, b_out, x, ds_prev, parts, u0, u1)
            if j == 0:
                w = min(c, xs.shape[0] - t)
                x_block = xs[t: t + w].reshape((w * B, xs.shape[2]))
                flush(w_ih, w_hh, b_ih, b_hh, w_out, b_out, x_block, chunk, w, g_w_ih, g_w_hh, g_b_ih, g_b_hh,
                      g_w_out, g_b_out, u0, u1)
                nb += 1  # the flush read every unit's h_{t-1}: the next block writes them only after this
                barrier(flags, k, nb, spin)
            ds, ds_prev = ds_prev, ds
    return loss, forwards, ds


class Report(NamedTuple):
    """What one value_and_grad call did (``return_report=True``)."""

    schedule: Schedule
    forward_steps: int          # counted in the sweep
    wall_time: float            # seconds, the sweep and its setup
    planned_bytes: int          # schedule.peak_bytes
    allocated_bytes: int        # bytes of the buffers allocated for the sweep
    measured_peak_bytes: int    # tracemalloc peak during the call, gradients excluded; includes
                                # 4-10 KB of Python objects (_model.PYTHON_OVERHEAD_BYTES) besides the buffers
    predicted_time_ratio: float

    def __str__(self) -> str:
        return "\n".join(self.schedule.summary_lines() + [
            f"counted forwards {self.forward_steps}",
            f"wall time       {self.wall_time:.4f} s",
            f"planned bytes   {self.planned_bytes}",
            f"allocated bytes {self.allocated_bytes}",
            f"measured peak   {self.measured_peak_bytes} bytes (tracemalloc, gradients excluded)",
        ])


def value_and_grad(model: Sequence, params: dict, xs: np.ndarray, ys: np.ndarray, *, budget: Any = None,
                   policy: str | None = None, schedule: Schedule | None = None, h0: np.ndarray | None = None,
                   return_h0_grad: bool = False, return_report: bool = False, ds_norms: np.ndarray | None = None):
    """Loss and exact gradients of a Sequence over (xs, ys) within a memory budget.

    ``budget``: bytes, "64MiB"-style, or a fraction of plain BPTT's memory; no
    budget means plain BPTT (policy "full"). ``policy`` defaults to "msm" when
    a budget is given. Or pass a ready ``schedule`` from :func:`plan` (same T,
    batch and dtype). Gradients are bit-identical to policy="full".

    Returns ``(loss, grads)``; with ``return_h0_grad=True`` also dL/dh0, and
    with ``return_report=True`` a :class:`Report` last. ``ds_norms``, a float64
    array of length T+1, receives ||dL/dh_t|| at index t (t = 1..T); see
    :func:`memopt_bptt.grad_norm_by_lag`.

    Example::

        loss, grads = mb.value_and_grad(model, params, xs, ys, budget="4MiB")
    """
    if not isinstance(model, Sequence):
        raise TypeError(f"value_and_grad: model must be a memopt_bptt.Sequence, got {type(model).__name__}")
    arrays = model.check_params(params)
    dtype = arrays[0].dtype
    xs_c, ys_f, ys_i, h0_flat = model.check_data(xs, ys, dtype, h0=h0)
    T, B = xs_c.shape[:2]
    sizes = model.sizes(batch=B, dtype=dtype)
    if schedule is None:
        budget, policy = resolve_policy(budget, policy, where="value_and_grad")
        schedule = cached_plan(T, budget=budget, policy=policy, model=model, batch=B, dtype=dtype)
    else:
        if budget is not None or policy is not None:
            raise ValueError("value_and_grad: give either schedule= or budget=/policy=, not both")
        if not isinstance(schedule, Schedule):
            raise TypeError("value_and_grad: schedule must be a memopt_bptt.Schedule from mb.plan")
        if schedule.T != T:
            raise ValueError(f"value_and_grad: schedule is for T={schedule.T} but xs has T={T}")
        if (schedule.hidden_quanta, schedule.internal_quanta) != sizes.quantum[1:] \
                or schedule.quantum_bytes != sizes.quantum_bytes:
            raise ValueError("value_and_grad: schedule was planned for another model, batch or dtype; "
                             "plan it with mb.plan(T, budget=..., model=model, batch=..., dtype=...)")
        if schedule.working_bytes is not None and schedule.working_bytes != sizes.working_bytes:
            raise ValueError(f"value_and_grad: schedule was planned with {schedule.working_bytes} working bytes but "
                             f"this model needs {sizes.working_bytes} (another model, or lanes=); plan it with "
                             "mb.plan(T, budget=..., model=model, batch=..., dtype=...)")
        schedule.validate()
    codes = schedule.codes  # read in place: slots are scaled to element offsets inside the sweep

    if ds_norms is None:
        norms = np.zeros(0, np.float64)
    else:
        if not isinstance(ds_norms, np.ndarray) or ds_norms.dtype != np.float64 or ds_norms.shape != (T + 1,):
            raise ValueError(f"value_and_grad: ds_norms must be a float64 array of shape ({T + 1},)")
        norms = ds_norms
    grads = {name: np.zeros_like(a) for name, a in zip(model.param_shapes, arrays)}
    g_arrays = list(grads.values())
    scale = 1.0 / (T * B * model.output_size) if model.loss == "mse" else 1.0 / (T * B)
    loss_kind = 0 if model.loss == "mse" else 1
    cell = model.cell

    bwd, flush, c = _chunk_kernels(cell)
    lanes = sizes.lanes or (B,)
    n_lanes = len(lanes)

    def sweep(b0, bl, codes_, bufs, g_arrays_, norms_):
        return _sweep(cell.forward_step, bwd, flush, cell.state_from_internal, codes_, *arrays, xs_c, b0, bl,
                      ys_f, ys_i, loss_kind, cell.output_is_state, cell.feature_major, cell.hidden_size,
                      *bufs[:9], c, bufs[9], *g_arrays_, bl * sizes.state_width, bl * sizes.internal_width,
                      scale, norms_, sizes.quantum[0] * bl)

    def buffers(bl, b0, pool_quanta, n_grads=0):
        """(pool, cur, nxt, ds, ds_prev, work_int, work, outbuf, chunk, xchunk) of one lane, and
        ``n_grads`` gradient accumulators. With several lanes, all but the pool are views of one
        block with cache-line gaps, so no line is written by two lanes' threads."""
        ls = model.sizes(batch=bl, dtype=dtype, split=False)
        x_rows = model.lane_chunk_rows(bl) if n_lanes > 1 else 0
        shapes = [(ls.state_len,)] * 4 + [(ls.internal_len,), (max(ls.work_len, 1),), (ls.output_len,),
                                          (max(ls.chunk_len, 1),), (max(x_rows, 1), cell.input_size)]
        shapes += [a.shape for a in arrays[:n_grads]]
        pool = np.empty(pool_quanta * ls.quantum[0] * bl, dtype)
        if n_lanes == 1:
            views = [np.empty(shape, dtype) for shape in shapes]
        else:
            line = max(_CACHE_LINE // ls.itemsize, 1)
            sizes_ = [math.prod(shape) for shape in shapes]
            starts_ = np.cumsum([line] + [-(-n // line) * line for n in sizes_])
            block = np.empty(int(starts_[-1]) + line, dtype)
            views = [block[a: a + n].reshape(shape) for a, n, shape in zip(starts_, sizes_, shapes)]
        model.lane_rows(views[0], bl, 0, bl)[...] = model.lane_rows(h0_flat, B, b0, b0 + bl)
        for v in views[2:4] + views[9:]:
            v[:] = 0.0
        return (pool, *views[:9]), views[9:]

    if sizes.unit_threads > 1:
        return _value_and_grad_units(model, arrays, xs_c, ys_f, ys_i, h0_flat, sizes, schedule, codes, norms,
                                     grads, scale, loss_kind, return_h0_grad, return_report)

    if return_report:
        # Compile (or load) the sweep first, on an empty schedule, so the
        # measured peak is the sweep's and not the compiler's.
        sweep(0, lanes[0], codes[:0], buffers(lanes[0], 0, 0)[0], [np.zeros_like(a) for a in arrays],
              np.zeros(0, np.float64))
        tracemalloc.start()
        tracemalloc.reset_peak()
        base = tracemalloc.get_traced_memory()[0]
    t0 = time.perf_counter()
    starts = np.cumsum((0,) + lanes[:-1])
    # Lane 0 adds into the returned gradients, every other lane into its own
    # (charged to the budget: Sequence.sizes); they are added in lane order.
    lane_bufs, lane_grads = [], [g_arrays]
    for k, bl in enumerate(lanes):
        bufs, own_grads = buffers(bl, int(starts[k]), schedule.pool_quanta, 0 if k == 0 else len(arrays))
        lane_bufs.append(bufs)
        if k:
            lane_grads.append(own_grads)
    lane_norms = [norms] + [np.zeros_like(norms) for _ in lanes[1:]]
    del h0_flat  # each lane's first action copies its rows into its pool
    allocated = (sum(b.nbytes for bufs in lane_bufs for b in bufs)
                 + sum(g.nbytes for gs in lane_grads[1:] for g in gs))
    results: list[Any] = [None] * n_lanes

    def run_lane(k: int) -> None:
        try:
            results[k] = sweep(int(starts[k]), lanes[k], codes, lane_bufs[k], lane_grads[k], lane_norms[k])
        except BaseException as exc:  # re-raised by the calling thread
            results[k] = exc

    try:
        _run_lanes(run_lane, n_lanes, 1 if n_lanes > 1 else _sweep_threads(arrays[1], B))
        for r in results:
            if isinstance(r, BaseException):
                raise r
        loss_sum = 0.0
        for lane_loss, _, _ in results:
            loss_sum += lane_loss
        loss_value = _checked_loss(loss_sum, results, schedule, scale)
    except BaseException:
        if return_report:
            tracemalloc.stop()
        raise
    for gs in lane_grads[1:]:
        for g, part in zip(g_arrays, gs):
            g += part
    _add_norms(norms, lane_norms[1:])
    wall = time.perf_counter() - t0
    result: list[Any] = [loss_value, grads]
    if return_h0_grad:
        dh0 = results[0][2]
        if n_lanes > 1:
            dh0 = np.empty(sizes.state_len, dtype)
            for b0, bl, r in zip(starts, lanes, results):
                model.lane_rows(dh0, B, b0, b0 + bl)[...] = model.lane_rows(r[2], bl, 0, bl)
        result.append(model.user_state(dh0, B))
    if return_report:
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        measured = peak - base  # the gradients were allocated before tracing began
        result.append(Report(schedule, int(results[0][1]), wall, int(schedule.peak_bytes), int(allocated),
                             int(measured), schedule.time_ratio))
    return tuple(result)


_UNIT_SWEEPS: dict = {}
_COMPILED: set = set()  # (unit sweep, argument kinds) compiled in this process


def _unit_sweep(kernels):
    """_sweep_units with a cell's unit kernels bound in as globals: its calls to
    them are direct, and calling it types arrays and numbers only (a tuple of
    functions as an argument took 0.2 ms to type per call)."""
    sweep = _UNIT_SWEEPS.get(kernels)
    if sweep is None:
        fwd, rebuild, bwd_local, bwd_shared, flush = kernels

        @njit(nogil=True)
        def sweep(*args):
            return _sweep_units((fwd, rebuild, bwd_local, bwd_shared, flush), *args)

        _UNIT_SWEEPS[kernels] = sweep
    return sweep


def _unit_out_len(sizes, u0, u1):
    """A unit thread's readout buffer: outputs, their transpose and its units' h_t transposed."""
    return 2 * sizes.output_len + sizes.batch * (u1 - u0)


class _UnitRun:
    """Buffers and threads of a sweep by threads that split the hidden units (Sequence.unit_split)."""

    def __init__(self, model, arrays, xs, ys_f, ys_i, sizes, scale, loss_kind):
        self.model, self.arrays, self.xs, self.ys_f, self.ys_i = model, arrays, xs, ys_f, ys_i
        self.sizes, self.scale, self.loss_kind = sizes, scale, loss_kind
        self.units = model.unit_split(xs.shape[1])
        # Spin at barriers while every thread has a CPU; else yield at once, so the threads take turns.
        self.spin = 1 << 14 if _usable_cpus() >= len(self.units) else 0

    def buffers(self, pool_quanta, h0_flat):
        """(pool, [cur, nxt, ds, ds_prev, work_int], [(work, outbuf) per thread], chunk, exchange)."""
        sz, dtype, B = self.sizes, self.arrays[0].dtype, self.xs.shape[1]
        pool = np.empty(pool_quanta * sz.quantum[0] * B, dtype)
        shared = [np.empty(sz.state_len, dtype) for _ in range(4)] + [np.empty(sz.internal_len, dtype)]
        shared[0][:] = h0_flat
        shared[2][:] = 0.0
        shared[3][:] = 0.0
        own = [(np.empty(max(sz.work_len, 1), dtype), np.empty(_unit_out_len(sz, u0, u1), dtype))
               for u0, u1 in self.units]
        chunk = np.empty(max(sz.chunk_len, 1), dtype)
        exchange = np.empty((2, len(self.units), B * self.model.cell.hidden_size), dtype)
        return pool, shared, own, chunk, exchange

    @staticmethod
    def nbytes(bufs) -> int:
        pool, shared, own, chunk, exchange = bufs
        return (pool.nbytes + sum(b.nbytes for b in shared) + sum(w.nbytes + o.nbytes for w, o in own)
                + chunk.nbytes + exchange.nbytes)

    def run(self, codes, bufs, grads, norms):
        """Every thread's (loss sum, forwards, dL/ds_0); ``norms`` one array per thread."""
        cell, sz, B = self.model.cell, self.sizes, self.xs.shape[1]
        pool, shared, own, chunk, exchange = bufs
        n = len(self.units)
        flags = new_flags(n)
        results: list[Any] = [None] * n

        sweep = _unit_sweep(cell.unit_kernels)

        def args(k, codes_):
            return (codes_, *self.arrays, self.xs, self.ys_f, self.ys_i, self.loss_kind, cell.hidden_size, pool,
                    *shared, *own[k], chunk, cell.grad_chunk, *grads, sz.state_len, sz.internal_len, self.scale,
                    norms[k], sz.quantum[0] * B, k, self.units[k][0], self.units[k][1], flags, self.spin, exchange)

        # What decides Numba's types: dtypes, dimensions, layouts, read-only flags (a schedule's
        # codes are read-only), and the scalars' kinds.
        key = (sweep,) + tuple((a.dtype.str, a.ndim, a.flags.c_contiguous, a.flags.writeable)
                               if isinstance(a, np.ndarray) else type(a) for a in args(0, codes))
        if key not in _COMPILED:
            # Compile here, on an empty schedule (no barrier to wait at), so Numba's note that
            # functions passed as values are "experimental" is not printed from every thread.
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", NumbaExperimentalFeatureWarning)
                sweep(*args(0, codes[:0]))
            _COMPILED.add(key)

        def one(k):
            try:
                results[k] = sweep(*args(k, codes))
            except BaseException as exc:  # re-raised by the calling thread
                abort(flags)  # release the other threads from their barriers
                results[k] = exc

        with blas_threads(1):
            _on_threads(one, n)
        for r in results:
            if isinstance(r, BaseException):
                raise r
        return results


def _value_and_grad_units(model, arrays, xs_c, ys_f, ys_i, h0_flat, sizes, schedule, codes, norms, grads,
                          scale, loss_kind, return_h0_grad, return_report):
    """value_and_grad's sweep by threads that split the hidden units (Sequence.unit_split)."""
    B = xs_c.shape[1]
    runner = _UnitRun(model, arrays, xs_c, ys_f, ys_i, sizes, scale, loss_kind)
    n_threads = len(runner.units)
    thread_norms = [norms] + [np.zeros_like(norms) for _ in runner.units[1:]]
    if return_report:  # compile (or load) first, so the measured peak is the sweep's
        runner.run(codes[:0], runner.buffers(0, h0_flat), [np.zeros_like(a) for a in arrays],
                   [np.zeros(0, np.float64)] * n_threads)
        tracemalloc.start()
        tracemalloc.reset_peak()
        base = tracemalloc.get_traced_memory()[0]
    t0 = time.perf_counter()
    bufs = runner.buffers(schedule.pool_quanta, h0_flat)
    del h0_flat
    allocated = runner.nbytes(bufs)
    try:
        results = runner.run(codes, bufs, list(grads.values()), thread_norms)
        loss_sum, forwards, ds0 = results[0]  # every thread computes the loss; thread 0's is kept
        loss_value = _checked_loss(loss_sum, results, schedule, scale)
    except BaseException:
        if return_report:
            tracemalloc.stop()
        raise
    _add_norms(norms, thread_norms[1:])
    wall = time.perf_counter() - t0
    result: list[Any] = [loss_value, grads]
    if return_h0_grad:
        result.append(model.user_state(ds0, B))
    if return_report:
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        result.append(Report(schedule, int(forwards), wall, int(schedule.peak_bytes), int(allocated),
                             int(peak - base), schedule.time_ratio))
    return tuple(result)


def _checked_loss(loss_sum, results, schedule, scale) -> float:
    """The mean loss, once every sweep (lane or thread) ran the schedule's forwards and it is finite."""
    for r in results:
        if r[1] != schedule.forward_steps:
            raise RuntimeError(f"value_and_grad: the sweep ran {r[1]} forwards but the schedule "
                               f"plans {schedule.forward_steps}; no gradients returned")
    loss_value = float(loss_sum * scale)
    if not math.isfinite(loss_value):
        raise FloatingPointError("value_and_grad: the loss is not finite (NaN or inf); check the data and "
                                 "learning rate; no gradients returned")
    return loss_value


def _add_norms(norms, parts) -> None:
    """norms[1:] = sqrt(norms[1:] + the other sweeps' squared norms), when norms are asked for."""
    if norms.shape[0]:
        for part in parts:
            norms[1:] += part[1:]
        np.sqrt(norms[1:], out=norms[1:])


def _on_threads(fn, n: int) -> None:
    """fn(k) for k < n, each on a thread of its own; returns when all are done."""
    threads = [threading.Thread(target=fn, args=(k,)) for k in range(n)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()


def _run_lanes(run_lane, n_lanes: int, blas: int | None) -> None:
    """run_lane(k) for every lane: each on a thread of its own when there are
    lanes and cores for them (lane 0 run by the calling thread measured 10-30%
    slower, hidden 64, batch 16), else one after the other (the same bits)."""
    with blas_threads(blas):
        if n_lanes > 1 and _usable_cpus() > 1:
            _on_threads(run_lane, n_lanes)
        else:
            for k in range(n_lanes):
                run_lane(k)


_CACHE_LINE = 128  # bytes; two 64-byte lines, as adjacent-line prefetch pairs them


def _usable_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


@njit
def _time_kernels(fwd, bwd, flush, w_ih, w_hh, b_ih, b_hh, w_out, b_out, xs, s_prev, s_new, internal, work,
                  ds, ds_prev, chunk, c, g_w_ih, g_w_hh, g_b_ih, g_b_hh, g_w_out, g_b_out, repeats, which):
    x = xs[0]
    for r in range(repeats):
        if which == 0:
            fwd(w_ih, w_hh, b_ih, b_hh, w_out, b_out, x, s_prev, s_new, internal, work)
        else:
            # xs holds c steps, reversed c-1 .. 0 like one block of the sweep
            _reverse_step(bwd, flush, w_ih, w_hh, b_ih, b_hh, w_out, b_out, xs, c - 1 - r % c, 0, xs.shape[1],
                          internal, ds, ds_prev, g_w_ih, g_w_hh, g_b_ih, g_b_hh, g_w_out, g_b_out, work, chunk, c,
                          xs[0])


def measure_step_times(model: Sequence, *, batch: int, dtype: Any = "float32", repeats: int = 50,
                       seed: int = 0) -> tuple[float, float]:
    """Seconds of one forward step and one backward step of ``model``'s cell.

    Median of 5 rounds of ``repeats`` calls each, after a warm-up, on random
    data of the given batch and dtype. A model that splits this batch into
    lanes (:meth:`Sequence.lane_batches`) is timed on its first lane's rows
    with one BLAS thread, as each lane runs beside the others. A model whose
    steps are split by hidden units (:meth:`Sequence.unit_split`) is timed
    as its threads run together: ``repeats`` forward steps, and as many
    reversals, each with its readout and loss (minus the threads' start). A backward step includes its share of
    the deferred weight-gradient GEMM (``Cell.grad_chunk``). ``backward / forward`` is what
    ``mb.plan(..., backward_forward_ratio=...)`` uses to predict time.

    Example::

        f, b = mb.measure_step_times(model, batch=16)
        schedule = mb.plan(1000, budget=0.05, model=model, batch=16, backward_forward_ratio=b / f)
    """
    if isinstance(repeats, bool) or not isinstance(repeats, int) or repeats < 1:
        raise ValueError(f"measure_step_times: repeats={repeats!r} must be a positive int")
    whole = model.sizes(batch=batch, dtype=dtype)
    sizes = model.sizes(batch=whole.lanes[0], dtype=dtype, split=False) if whole.lanes else whole
    dt = np.dtype(sizes.dtype)
    params = model.init_params(seed=seed, dtype=dt)
    arrays = model.check_params(params, where="measure_step_times")
    rng = np.random.default_rng(seed)
    if whole.unit_threads > 1:
        return _unit_step_times(model, arrays, whole, repeats, rng)
    cell = model.cell
    bwd, flush, c = _chunk_kernels(cell)
    xs = rng.standard_normal((c, sizes.batch, model.cell.input_size)).astype(dt)
    s_prev = (0.1 * rng.standard_normal(sizes.state_len)).astype(dt)
    s_new = np.zeros(sizes.state_len, dt)
    internal = np.zeros(sizes.internal_len, dt)
    work = np.zeros(max(sizes.work_len, 1), dt)
    ds = (0.1 * rng.standard_normal(sizes.state_len)).astype(dt)
    ds_prev = np.zeros(sizes.state_len, dt)
    chunk = np.zeros(max(sizes.chunk_len, 1), dt)
    grads = [np.zeros_like(a) for a in arrays]
    cell.forward_step(*arrays, xs[0], s_prev, s_new, internal, work)
    times = []
    repeats = -(-repeats // c) * c  # whole blocks of deferred weight gradients
    threads = 1 if whole.lanes else _sweep_threads(arrays[1], sizes.batch)
    with blas_threads(threads):  # as value_and_grad runs them
        for which in (0, 1):
            args = (cell.forward_step, bwd, flush, *arrays, xs, s_prev, s_new, internal, work,
                    ds, ds_prev, chunk, c, *grads)
            _time_kernels(*args, 1, which)
            rounds = []
            for _ in range(5):
                t0 = time.perf_counter()
                _time_kernels(*args, repeats, which)
                rounds.append((time.perf_counter() - t0) / repeats)
            times.append(float(np.median(rounds)))
    return times[0], times[1]


def _unit_step_times(model, arrays, sizes, repeats, rng):
    """measure_step_times for threads that split the hidden units: their sweep
    over ``repeats`` forward steps, and over as many reversals of one internal
    state (each with its readout and loss, as every schedule reverses T steps)."""
    dt = arrays[0].dtype
    B = sizes.batch
    xs = rng.standard_normal((repeats, B, model.cell.input_size)).astype(dt)
    ys_f = rng.standard_normal((repeats, B, model.output_size)).astype(dt)
    ys_i = rng.integers(0, model.output_size, (repeats, B)).astype(np.int64)
    if model.loss == "mse":
        ys_i = np.zeros((1, 1), np.int64)
    else:
        ys_f = np.zeros((1, 1, 1), dt)
    runner = _UnitRun(model, arrays, xs, ys_f, ys_i, sizes, 1.0 / (repeats * B), 0 if model.loss == "mse" else 1)
    h0 = (0.1 * rng.standard_normal(sizes.state_len)).astype(dt)
    grads = [np.zeros_like(a) for a in arrays]
    norms = [np.zeros(0, np.float64)] * len(runner.units)
    forward = np.array([[2, repeats, -1]], np.int64)  # advance 0 -> repeats, no checkpoints
    keep = np.array([[3, 1, -1]], np.int64)  # one step into the working internal state, then reverse it:
    reverse = np.array([[5, t, -1] for t in range(repeats, 0, -1)], np.int64)
    empty = forward[:0]
    times = []
    for codes in (forward, reverse):
        rounds = []
        for r in range(6):
            bufs = runner.buffers(0, h0)
            runner.run(keep, bufs, grads, norms)
            t0 = time.perf_counter()
            runner.run(empty, bufs, grads, norms)  # starting the threads: once per call, not per step
            t1 = time.perf_counter()
            runner.run(codes, bufs, grads, norms)
            if r:  # the first is a warm-up
                rounds.append((time.perf_counter() - t1 - (t1 - t0)) / repeats)
        times.append(max(float(np.median(rounds)), 1e-9))
    return times[0], times[1]


def measure_byte_cost(model: Sequence, *, batch: int, dtype: Any = "float32", T: int = 1000,
                      repeats: int = 5) -> float:
    """Seconds one byte of checkpoint pool costs, as plain BPTT uses it.

    Writes T internal states (of ``model`` at this batch and dtype) one by one
    into a freshly allocated pool and reads them back in reverse, as plain
    BPTT's keeps and reversals do; subtracts the same copies through one
    reused buffer (the in-cache cost ``measure_step_times`` already
    includes). What is left, per byte, is the pages' first touch and the
    trips to memory. Median of ``repeats`` rounds after a warm-up. Divided by
    the forward step's time it is ``mb.plan(..., byte_cost=...)``.

    Example::

        f, b = mb.measure_step_times(model, batch=16)
        m = mb.measure_byte_cost(model, batch=16)
        schedule = mb.plan(1000, budget=0.05, model=model, batch=16, backward_forward_ratio=b / f,
                           byte_cost=m / f)
    """
    for name, value in (("T", T), ("repeats", repeats)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"measure_byte_cost: {name}={value!r} must be a positive int")
    sizes = model.sizes(batch=batch, dtype=dtype)
    dt = np.dtype(sizes.dtype)
    n = sizes.internal_len
    src = np.ones(n, dt)
    dst = np.empty(n, dt)

    def stream(fresh: bool) -> float:
        pool = np.empty(n * (T if fresh else 1), dt)
        t0 = time.perf_counter()
        for t in range(T):
            o = t * n if fresh else 0
            pool[o: o + n] = src
        for t in range(T - 1, -1, -1):
            o = t * n if fresh else 0
            dst[:] = pool[o: o + n]
        return time.perf_counter() - t0

    stream(True)
    stream(False)
    rounds = [(stream(True) - stream(False)) for _ in range(repeats)]
    return max(float(np.median(rounds)), 0.0) / (T * n * dt.itemsize)


def final_state(model: Sequence, params: dict, xs: np.ndarray, *, h0: np.ndarray | None = None) -> np.ndarray:
    """The state after every step of ``xs``, from ``h0`` (zeros if None), with no gradient.

    Returns a new array of shape ``model.state_shape(batch)``, what ``h0=``
    accepts, so a long sequence can be run piece by piece: the forward of the
    same steps as :func:`value_and_grad`, bit for bit, keeping O(1) memory.

    Example::

        h = mb.final_state(model, params, xs[:500])
        h = mb.final_state(model, params, xs[500:], h0=h)   # == mb.final_state(model, params, xs)
    """
    if not isinstance(model, Sequence):
        raise TypeError(f"final_state: model must be a memopt_bptt.Sequence, got {type(model).__name__}")
    arrays = model.check_params(params, where="final_state")
    xs_c, h0_flat = model.check_inputs(xs, arrays[0].dtype, where="final_state", h0=h0)
    B = xs_c.shape[1]
    sizes = model.sizes(batch=B, dtype=arrays[0].dtype, split=False)
    cur = h0_flat
    nxt = np.empty_like(cur)
    internal = np.empty(sizes.internal_len, cur.dtype)
    work = np.empty(max(sizes.work_len, 1), cur.dtype)
    _advance(model.cell.forward_step, arrays, xs_c, cur, nxt, internal, work)
    return model.user_state(cur if xs_c.shape[0] % 2 == 0 else nxt, B)


@njit
def _advance(fwd, arrays, xs, cur, nxt, internal, work):
    w_ih, w_hh, b_ih, b_hh, w_out, b_out = arrays
    for t in range(xs.shape[0]):
        fwd(w_ih, w_hh, b_ih, b_hh, w_out, b_out, xs[t], cur, nxt, internal, work)
        cur, nxt = nxt, cur
