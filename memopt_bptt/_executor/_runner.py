"""The buffers and workers of one sweep: the whole batch, lanes, or unit threads.

Every buffer is allocated here, in Python, before the sweep (the checkpoint
pool at the schedule's planned size and the working buffers the planner
charged for), so the jitted sweep allocates nothing and what it keeps is
visible to ``tracemalloc``. A sweep gets its buffers as a small NamedTuple
(:class:`Buffers`), its sizes and position as another (:class:`Spec`), and
the same six arguments in every mode. Whether the batch is split, and how,
was decided by ``memopt_bptt._split``; :class:`Run` only carries it out.
"""

from __future__ import annotations

import math
import mmap
import os
import threading
import time
from typing import Any, NamedTuple

import numpy as np

from .._kernels import fpmode
from .._kernels.blas import blas_threads
from .._interrupt import run_interruptibly
from .._kernels.sync import SLOT, SWITCH, abort, new_flags
from .._layers import S_OFF, layout
from .._split import blas_threads_for, unit_exchange_len, unit_exchange_widths, unit_out_len
from ._compile import sweep_for

__all__ = ["Buffers", "Data", "Run", "Spec", "machine_busy", "usable_cpus"]

_CACHE_LINE = 128  # bytes; two 64-byte lines, as adjacent-line prefetch pairs them
# Stand-ins for the buffers one mode does not use (allocated once, outside any traced call).
_NO_FLAGS = new_flags(0)
_NO_EXCHANGE = {np.dtype(t): np.zeros(1, t) for t in (np.float32, np.float64)}
_NO_UNITS = np.zeros((0, 0, 8), np.int64)


class Data(NamedTuple):
    """The sequence: inputs (T, batch, input) or token ids (T, batch), targets
    (float for mse, labels for cross-entropy; the other is a dummy), the loss
    weights' mask (or a dummy) and each sequence's length (memopt_bptt._inputs)."""

    xs: np.ndarray
    ys_f: np.ndarray
    ys_i: np.ndarray
    mask: np.ndarray
    lengths: np.ndarray

    @classmethod
    def of(cls, checked: Any) -> "Data":
        return cls(checked.xs, checked.ys_f, checked.ys_i, checked.mask, checked.lengths)


class Spec(NamedTuple):
    """One worker's rows, units and sizes (elements), as the sweep reads them."""

    b0: int             # first batch row (a lane's offset; 0 otherwise)
    rows: int           # batch rows of this sweep
    thread: int         # lane or unit-thread index (a unit share's units are in Buffers.units)
    state_len: int      # elements of a state of these rows
    internal_len: int   # elements of an internal state of these rows
    quantum: int        # elements of one pool slot
    hidden: int         # the top layer's hidden size
    n_outputs: int
    loss_kind: int      # 0 mse, 1 cross-entropy
    spin: int           # rounds a barrier spins before yielding the CPU
    scale: float        # 1 / (number of loss terms)
    h_off: int          # where the top layer's h_t starts in a state of these rows
    loss_mode: int      # which rows count at a step (memopt_bptt._inputs: EVERY, LENGTHS, MASK, LAST)


class Buffers(NamedTuple):
    """One worker's buffers (in units mode all but work, outbuf and norms are shared)."""

    pool: np.ndarray       # checkpoint slots (states and internal states of every layer)
    cur: np.ndarray        # the state the forward is at
    nxt: np.ndarray        # the next (or a rebuilt) state
    ds: np.ndarray         # dL/ds_t
    ds_prev: np.ndarray    # dL/ds_{t-1}
    work_int: np.ndarray   # the working internal state
    work: np.ndarray       # the cell's scratch
    outbuf: np.ndarray     # outputs and dL/dout (units mode: also their transpose and h_t's)
    chunk: np.ndarray      # every layer's deferred weight-gradient block (Cell.grad_chunk)
    xchunk: np.ndarray     # layers' inputs kept for a block of deferred weight gradients
    exchange: np.ndarray   # unit threads' partial gradients, two steps' (memopt_bptt._executor._units)
    flags: np.ndarray      # unit threads' barrier counters
    norms: np.ndarray      # ||dL/dh_t||^2 at index t, or empty
    layout: np.ndarray     # (layers, columns) offsets: memopt_bptt._layers.layout
    xbuf: np.ndarray       # layers' inputs built at a step (above the first layer, or embedded)
    dx: np.ndarray         # dL/dx_t of the first layer under an embedding, (dim * rows)
    roww: np.ndarray       # float64 loss weights of this step's rows
    stop: np.ndarray       # int64, nonzero when the caller was interrupted: every worker stops (shared)
    units: np.ndarray      # (shares, layers + 1, 8) int64, shared: each share's units and exchange offsets per
                           # layer, and in row ``layers`` of share k thread k's own state (_units.py), or empty


def machine_busy() -> bool:
    """Whether other work wants the CPUs this process may use: the 1-minute load
    average above their number (plus a half, for this process's own waiting
    thread). Then unit threads yield at barriers at once.

    BLAS keeps its thread count on a busy machine: OpenBLAS's results can
    depend on it (its Haswell kernels, float32, (256 x 768) @ (768 x 16) on
    an AMD EPYC: 4e-5 apart with one thread and two), so giving BLAS one
    thread under load changed a GRU's gradient bits from one call to the
    next; the thread count is the model's and the batch's alone
    (``_split.blas_threads_for``). The price: beside two busy-looping
    processes an Elman 1024 sweep with two BLAS threads took about 2x the
    time of one (give ``OPENBLAS_NUM_THREADS=1`` on a loaded machine)."""
    try:
        load = os.getloadavg()[0]
    except OSError:  # pragma: no cover - no load average on this platform
        return False
    return load > usable_cpus() + 0.5


def _own_running() -> int:
    """Threads of this process running or runnable now (this one among them): BLAS's or
    another library's pool spinning after its last call is this process's, not other work."""
    n = 0
    try:
        tids = os.listdir("/proc/self/task")
    except OSError:
        return 1
    for tid in tids:
        try:
            with open(f"/proc/self/task/{tid}/stat", encoding="ascii", errors="replace") as f:
                stat = f.read()
        except OSError:  # the thread ended
            continue
        if stat[stat.rindex(")") + 2: stat.rindex(")") + 3] == "R":
            n += 1
    return max(n, 1)


def others_running(enough: int = 1) -> int | None:
    """Threads of other processes running or waiting for a CPU right now (Linux's
    /proc/loadavg, less this process's running threads); None where the platform
    does not say. A count of ``enough`` or more is looked at twice more, a
    millisecond apart, and the least kept: a process passing through does not count."""
    least = None
    for look in range(3):
        try:
            with open("/proc/loadavg", encoding="ascii") as f:
                running = int(f.read().split()[3].split("/")[0]) - 1
        except (OSError, ValueError, IndexError):
            return None
        if running >= enough:
            running = max(running + 1 - _own_running(), 0)
        least = running if least is None else min(least, running)
        if least < enough:
            break
        if look < 2:
            time.sleep(0.001)
    return least


def crowded(threads: int) -> bool:
    """Whether ``threads`` unit threads would not each have a CPU: fewer usable CPUs than
    threads, or a machine kept busy (the 1-minute load average, ``machine_busy``) with
    other work running on the CPUs now (``others_running``). Then one thread runs
    every share of the split (the same bits), instead of threads that wait at every
    barrier for one another's turn on a CPU. Both looks are needed: the run queue
    alone is a moment's (it sent a sweep to one thread right after a PyTorch call in
    another process, 1 call of 8), the load average alone a minute late. Threads
    that stall at barriers hand their work to one either way (_units.py). The run queue counts the whole machine's threads, so a
    process held to some of its CPUs (``os.sched_setaffinity``, ``taskset``) goes by
    its usable CPUs and the stalls."""
    free = usable_cpus()
    if free < threads:
        return True
    if free < (os.cpu_count() or free) or not machine_busy():
        return False
    others = others_running(enough=free - threads + 1)
    return others is None or others + threads > free


PAGE_BYTES = mmap.PAGESIZE


def _touch_pages(a: np.ndarray) -> None:
    """Write a zero byte into every page of ``a`` (fresh memory), so the kernel maps its pages
    here, before the unit threads start, not inside the sweep. A page a thread touches first
    stalls it while its partner waits at the next barrier: on a virtual machine where memory
    new to the process took 8 us a page to map (115 MB: 0.24 s, against 0.01 s reused), those
    waits filled three windows of barriers in a row in 5 of 20 plain sweeps of an LSTM 256
    (batch 16, T = 1000), and thread 0 ran the rest alone (_units.py: 0.41 s instead of
    0.14 s). Costs the page faults the sweep would have taken, and one write per page."""
    flat = a.reshape(-1).view(np.uint8)
    flat[::PAGE_BYTES] = 0


def usable_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


class Run:
    """One sweep's workers over a batch: lanes (``rows`` mode, one or more) or
    unit threads (``units`` mode), as ``model.sizes`` says.

    ``allocate`` makes the buffers, ``run`` runs a schedule's codes on every
    worker (each on a thread of its own when there are several and cores for
    them), and ``reduce`` adds the workers' gradients and norms in order.
    """

    def __init__(self, model: Any, arrays: tuple, data: Data, sizes: Any, *, loss_kind: int, scale: float,
                 loss_mode: int = 0):
        self.model, self.arrays, self.data, self.sizes = model, arrays, data, sizes
        self.loss_kind, self.scale, self.loss_mode = loss_kind, scale, loss_mode
        self.batch = data.xs.shape[1]
        self.mode = "units" if sizes.unit_threads > 1 else "rows"
        self.sweep = sweep_for(model, self.mode)
        self.solo = False
        if self.mode == "units":
            self.parts = model.unit_split(self.batch)
            self.solo = crowded(len(self.parts))
            # Spin at barriers while every thread has a CPU; else yield at once.
            self.spin = 1 << 14 if not self.solo and not machine_busy() else 0
        else:
            self.parts = sizes.lanes or (self.batch,)
            self.spin = 0
        self.blas = blas_threads_for(model, sizes)  # never the load's: BLAS's bits can depend on it

    switch_at = 0
    """Tests only: the barrier count after which unit threads leave the work to thread 0 (0: when
    they stall, see _units.py)."""

    @property
    def n_workers(self) -> int:
        return 1 if self.solo else len(self.parts)

    def _spec(self, k: int, b0: int, rows: int, table: np.ndarray) -> Spec:
        model, sz = self.model, self.sizes
        top = model.cells[-1]
        return Spec(b0, rows, k, rows * sz.state_width, rows * sz.internal_width, sz.quantum[0] * rows,
                    top.hidden_size, model.output_size, self.loss_kind, self.spin,
                    self.scale, int(table[-1, S_OFF]), self.loss_mode)

    def allocate(self, pool_quanta: int, h0_flat: np.ndarray, grads: tuple, norms: np.ndarray) -> list:
        """Every worker's (Buffers, gradients, Spec). The first worker adds into
        ``grads``; every other lane into its own (charged to the budget)."""
        if self.mode == "units":
            return self._allocate_units(pool_quanta, h0_flat, grads, norms)
        return self._allocate_lanes(pool_quanta, h0_flat, grads, norms)

    def _allocate_lanes(self, pool_quanta, h0_flat, grads, norms):
        model, dtype, B = self.model, self.arrays[0].dtype, self.batch
        n_lanes = len(self.parts)
        exchange = _NO_EXCHANGE[np.dtype(dtype)]
        stop = np.zeros(1, np.int64)
        jobs = []
        b0 = 0
        for k, bl in enumerate(self.parts):
            ls = model.rows_sizes(bl, dtype, lane=n_lanes > 1)
            lay = layout(model.layers, bl, lane=n_lanes > 1)
            # exactly the lengths the planner charged: a buffer a model does not use has none (an empty
            # array, the same Numba type), where a one-element stand-in cost an element beyond the budget
            shapes = [(ls.state_len,)] * 4 + [(ls.internal_len,), (ls.work_len,), (ls.output_len,),
                                              (lay.chunk_len,), (lay.xchunk_len,), (lay.xbuf_len,), (lay.dx_len,)]
            if k:
                shapes += [a.shape for a in self.arrays]
            pool = np.empty(pool_quanta * ls.quantum[0] * bl, dtype)
            if n_lanes == 1:
                views = [np.empty(shape, dtype) for shape in shapes]
            else:  # all but the pool are views of one block with cache-line gaps: no line is written by two lanes
                line = max(_CACHE_LINE // ls.itemsize, 1)
                sizes_ = [math.prod(shape) for shape in shapes]
                starts = np.cumsum([line] + [-(-n // line) * line for n in sizes_])
                block = np.empty(int(starts[-1]) + line, dtype)
                views = [block[a: a + n].reshape(shape) for a, n, shape in zip(starts, sizes_, shapes)]
            model.copy_rows(views[0], bl, 0, h0_flat, B, b0, bl)
            for v in views[2:4] + views[11:]:
                v[:] = 0.0
            lane_norms = norms if k == 0 else np.zeros_like(norms)
            bufs = Buffers(pool, *views[:9], exchange, _NO_FLAGS, lane_norms, lay.table, views[9], views[10],
                           np.empty(bl, np.float64), stop, _NO_UNITS)
            jobs.append((bufs, grads if k == 0 else tuple(views[11:]),
                         self._spec(k, b0, bl, lay.table)))
            b0 += bl
        return jobs

    def _unit_table(self) -> np.ndarray:
        """The shares' (shares, layers + 1, 8) table, shared by the threads: row k of share s
        holds its units (u0, u1) of layer k and where that layer's partial dL/dh_{t-1} and
        dL/dx_t blocks of every share start in one step's half of the exchange; row
        ``layers`` of share s is thread s's own (its debts and the shares it runs, _units.py)."""
        model, B, n = self.model, self.batch, len(self.parts)
        L = len(model.cells)
        splits = [model.unit_split(B, layer=k) for k in range(L)]
        offsets, o = [], 0
        for h, x in unit_exchange_widths(model):
            offsets.append((o, o + n * B * h))
            o += n * B * (h + x)
        assert o == n * unit_exchange_len(model, B)
        table = np.zeros((n, L + 1, 8), np.int64)
        for s in range(n):
            for k in range(L):
                table[s, k, :4] = (*splits[k][s], *offsets[k])
            table[s, L, 1:3] = (s, s + 1)  # thread s runs share s
        if self.solo:
            table[0, L, 1:4] = (0, n, 1)  # thread 0 alone runs every share, no barriers
        return table

    def _allocate_units(self, pool_quanta, h0_flat, grads, norms):
        sz, dtype, B = self.sizes, self.arrays[0].dtype, self.batch
        n = len(self.parts)
        lay = layout(self.model.layers, B, lane=False)
        pool = np.empty(pool_quanta * sz.quantum[0] * B, dtype)
        _touch_pages(pool)
        cur, nxt, ds, ds_prev = (np.empty(sz.state_len, dtype) for _ in range(4))
        work_int = np.empty(sz.internal_len, dtype)
        cur[:] = h0_flat
        ds[:] = 0.0
        ds_prev[:] = 0.0
        chunk = np.empty(max(sz.chunk_len, 1), dtype)
        xchunk = np.empty(lay.xchunk_len, dtype)  # the layers' inputs kept for deferred gradients (above the first)
        exchange = np.empty(2 * n * unit_exchange_len(self.model, B), dtype)
        flags = new_flags(n)
        flags[-SLOT + SWITCH] = self.switch_at
        table = self._unit_table()
        none = chunk[:0]
        jobs = []
        for k, (u0, u1) in enumerate(self.parts[:self.n_workers]):  # share 0 is the widest (Sequence.unit_split)
            own = (np.empty(max(sz.work_len, 1), dtype), np.empty(unit_out_len(sz, u0, u1), dtype))
            bufs = Buffers(pool, cur, nxt, ds, ds_prev, work_int, *own, chunk, xchunk, exchange, flags,
                           norms if k == 0 else np.zeros_like(norms), lay.table, none, none, np.empty(B, np.float64),
                           flags[-SLOT:], table)  # flags[-SLOT:]: the barriers' abort flag, stopping releases every wait
            jobs.append((bufs, grads, self._spec(k, 0, B, lay.table)))
        return jobs

    @staticmethod
    def nbytes(jobs: list) -> int:
        """Bytes of the buffers and the other lanes' gradients, each counted once
        (not the returned gradients, the norms or the barrier's counters)."""
        seen, total = {id(g) for g in jobs[0][1]}, 0
        for bufs, grads, _ in jobs:
            for a in (*bufs._replace(norms=_NO_FLAGS, flags=_NO_FLAGS, layout=_NO_FLAGS, stop=_NO_FLAGS,
                                     units=_NO_FLAGS), *grads):
                if id(a) not in seen and a is not _NO_FLAGS and a is not _NO_EXCHANGE.get(a.dtype):
                    seen.add(id(a))
                    total += a.nbytes
        return total

    def run(self, codes: np.ndarray, jobs: list) -> list:
        """Every worker's (loss sum, forwards, dL/ds_0, last state); re-raises a worker's error.

        With ``model.flush_denormals`` each worker thread reads and writes
        subnormal numbers as zero while it sweeps (``_kernels/fpmode.py``).
        The workers run on threads of their own (one thread even for one
        worker, or for lanes taking turns on one CPU), so the calling thread
        stays free for Ctrl-C: a KeyboardInterrupt there asks every worker to
        stop (``Buffers.stop``, polled at every step and action; a worker still
        compiling stops as soon as it starts), waits up to a second for them
        and is raised. The sweep is compiled on first use, on a worker.
        """
        n = len(jobs)
        results: list[Any] = [None] * n
        sweep, params, data = self.sweep, self.arrays, self.data

        flush = self.model.flush_denormals

        def one(k: int) -> None:
            bufs, grads, spec = jobs[k]
            fp = fpmode.flush() if flush else -1  # this thread only, for the sweep (see fpmode)
            try:
                results[k] = sweep(codes, params, data, bufs, grads, spec)
            except BaseException as exc:  # re-raised by the calling thread
                if bufs.flags is not _NO_FLAGS:
                    abort(bufs.flags)  # release the other threads from their barriers
                results[k] = exc
            finally:
                fpmode.restore(fp)

        def in_turn() -> None:  # lanes on one CPU: one after the other, the same bits
            for k in range(n):
                one(k)

        if n == 1 or self.mode == "units" or usable_cpus() > 1:  # units: one job, or one thread each
            threads = [threading.Thread(target=one, args=(k,), daemon=True) for k in range(n)]
        else:
            threads = [threading.Thread(target=in_turn, daemon=True)]

        def stop() -> None:
            for bufs, _, _ in jobs:
                bufs.stop[0] = 1

        with blas_threads(self.blas):
            run_interruptibly(threads, stop)
        for r in results:
            if isinstance(r, BaseException):
                raise r
        return results

    def how(self, jobs: list) -> str:
        """How the last run of ``jobs`` went: its workers, and whether unit threads left
        their shares to one thread (Report.workers)."""
        n = len(self.parts)
        if self.mode == "rows":
            return "one sweep over the whole batch" if n == 1 else f"{n} lanes of {list(self.parts)} batch rows"
        if self.solo:
            return f"one thread ran all {n} unit shares: other work had the CPUs (the bits of {n} threads)"
        switch = int(jobs[0][0].flags[-SLOT + SWITCH])
        if switch:
            return (f"{n} unit threads; they stalled waiting for CPUs, and thread 0 ran all shares after "
                    f"barrier {switch} (the same bits)")
        return f"{n} unit threads"

    def loss_sum(self, results: list) -> float:
        """The loss summed over lanes (each lane's rows), or thread 0's (every thread computes all of it)."""
        if self.mode == "units":
            return results[0][0]
        total = 0.0
        for r in results:
            total += r[0]
        return total

    def reduce(self, jobs: list) -> None:
        """Add the other lanes' gradients into the first's, in lane order, and
        every worker's squared norms; take the norms' square roots."""
        grads = jobs[0][1]
        if self.mode == "rows":
            for _, own, _ in jobs[1:]:
                for g, part in zip(grads, own):
                    g += part
        norms = jobs[0][0].norms
        if norms.shape[0]:
            for bufs, _, _ in jobs[1:]:
                norms[1:] += bufs.norms[1:]
            np.sqrt(norms[1:], out=norms[1:])

    def gather_state(self, results: list, which: int) -> np.ndarray:
        """The whole batch's flat dL/ds_0 (which=2) or last state (which=3) from the workers' results."""
        if self.mode == "units" or len(self.parts) == 1:
            return results[0][which]
        B = self.batch
        out = np.empty(self.sizes.state_len, self.arrays[0].dtype)
        b0 = 0
        for bl, r in zip(self.parts, results):
            self.model.copy_rows(out, B, b0, r[which], bl, 0, bl)
            b0 += bl
        return out
