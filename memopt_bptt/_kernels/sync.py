"""A barrier for threads that split one step's work, usable inside jitted code.

Numba has no atomics on the CPU, so these are emitted as LLVM IR: an
acquire load and a release store of an int64 array element, the x86
``pause`` hint (a no-op elsewhere) and ``sched_yield``. Every thread owns
one counter, on a 128-byte line of its own in ``flags``; crossing a barrier
sets the thread's counter to its barrier count, then waits until every other
thread's counter has reached it. Counters only grow, so no reset is needed,
and the release/acquire pair orders every write before the barrier ahead of
every read after it, in the compiler and the processor.

A waiting thread spins (``pause``) for ``spin`` rounds, then yields its CPU
``YIELDS`` times, then sleeps ``SLEEP_MICROS`` between checks: threads sharing
one CPU still make progress, and on a machine busy with other processes a
waiting thread gives its CPU up instead of competing for it. The last
slot of ``flags`` is an abort flag: when set (a thread failed before or
during its sweep), waits return at once, so no thread is left waiting. The slot after it, on the
next cache line (``SWITCH``), is where unit threads agree to go on with one
thread (memopt_bptt._executor._units): 0, or the barrier count after which
thread 0 does every thread's share, set once by compare-and-swap.
"""

from __future__ import annotations

import numba
import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.core import cgutils
from numba.extending import intrinsic

__all__ = ["new_flags", "barrier", "abort", "stopped", "solo_after", "ask_solo", "cycles", "SLOT", "SWITCH"]

SLOT = 16
"""int64 slots between two threads' counters (128 bytes: two cache lines, as
adjacent-line prefetch pairs them)."""


SWITCH = 8
"""Offset of the solo switch in the last slot (after the abort flag, on its own 64-byte line)."""


def new_flags(n_threads: int) -> np.ndarray:
    """Zeroed counters for ``n_threads`` threads, the abort flag and the solo switch (last slot)."""
    return np.zeros((n_threads + 1) * SLOT, np.int64)


def abort(flags: np.ndarray) -> None:
    """Release every waiting thread (their results are then meaningless)."""
    flags[-SLOT] = 1


def _element_ptr(context, builder, arr_ty, arr, index):
    ary = context.make_array(arr_ty)(context, builder, arr)
    return builder.gep(ary.data, [index])


@intrinsic
def _load_acquire(typingctx, arr, index):
    if not (isinstance(arr, types.Array) and arr.dtype == types.int64):
        return None

    def codegen(context, builder, signature, args):
        ptr = _element_ptr(context, builder, signature.args[0], args[0], args[1])
        return builder.load_atomic(ptr, "acquire", 8)

    return types.int64(arr, index), codegen


@intrinsic
def _store_release(typingctx, arr, index, value):
    if not (isinstance(arr, types.Array) and arr.dtype == types.int64):
        return None

    def codegen(context, builder, signature, args):
        ptr = _element_ptr(context, builder, signature.args[0], args[0], args[1])
        val = context.cast(builder, args[2], signature.args[2], types.int64)
        builder.store_atomic(val, ptr, "release", 8)
        return context.get_dummy_value()

    return types.void(arr, index, value), codegen


@intrinsic
def _compare_and_swap(typingctx, arr, index, expected, value):
    if not (isinstance(arr, types.Array) and arr.dtype == types.int64):
        return None

    def codegen(context, builder, signature, args):
        ptr = _element_ptr(context, builder, signature.args[0], args[0], args[1])
        old = context.cast(builder, args[2], signature.args[2], types.int64)
        new = context.cast(builder, args[3], signature.args[3], types.int64)
        pair = builder.cmpxchg(ptr, old, new, "acq_rel", "acquire")
        return builder.extract_value(pair, 0)

    return types.int64(arr, index, expected, value), codegen


_X86 = __import__("platform").machine().lower() in ("x86_64", "amd64", "i686", "i386")


@intrinsic
def _cycle_counter(typingctx):
    def codegen(context, builder, signature, args):
        if not _X86:  # elsewhere LLVM may read a counter user code is not allowed to (AArch64's PMCCNTR)
            return ir.Constant(ir.IntType(64), 0)
        fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(ir.IntType(64), []),
                                            "llvm.readcyclecounter")
        return builder.call(fn, [])

    return types.int64(), codegen


@njit(cache=True, nogil=True)
def cycles():
    """The processor's time-stamp counter on x86 (0 elsewhere, where no wait then counts as
    a stall): for telling a wait of microseconds from one of a time slice, not for timing."""
    return _cycle_counter()


@intrinsic
def _pause(typingctx):
    def codegen(context, builder, signature, args):
        if _X86:  # the spin-wait hint; elsewhere nothing
            fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(ir.VoidType(), []),
                                                "llvm.x86.sse2.pause")
            builder.call(fn, [])
        return context.get_dummy_value()

    return types.void(), codegen


@intrinsic
def _sched_yield(typingctx):
    def codegen(context, builder, signature, args):
        fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(ir.IntType(32), []), "sched_yield")
        builder.call(fn, [])
        return context.get_dummy_value()

    return types.void(), codegen


@intrinsic
def _usleep(typingctx, micros):
    def codegen(context, builder, signature, args):
        fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(ir.IntType(32), [ir.IntType(32)]),
                                            "usleep")
        builder.call(fn, [builder.trunc(args[0], ir.IntType(32))])
        return context.get_dummy_value()

    return types.void(micros), codegen


YIELDS = 64
"""Yields of the CPU a waiting thread makes, after spinning, before it sleeps between checks."""
SLEEP_MICROS = 50
"""Microseconds a waiting thread sleeps between checks once spinning and yielding did not see
the others arrive: another process has their CPU, and a thread that keeps yielding only
competes with them for it."""


@njit(cache=True, nogil=True)
def barrier(flags, k, count, spin):
    """Thread k's ``count``-th barrier (1, 2, ...) among ``flags.size // SLOT - 1`` threads."""
    n = flags.shape[0] // SLOT - 1
    _store_release(flags, k * SLOT, count)
    for other in range(n):
        if other == k:
            continue
        rounds = 0
        while _load_acquire(flags, other * SLOT) < count:
            if _load_acquire(flags, n * SLOT) != 0:
                return
            if rounds < spin:
                _pause()
            elif rounds < spin + YIELDS:
                _sched_yield()
            else:
                _usleep(SLEEP_MICROS)
            rounds += 1


@njit(cache=True, nogil=True)
def ask_solo(flags, count):
    """Ask every thread to leave the work to thread 0 after barrier ``count`` + 1 (called
    between barriers ``count`` and ``count`` + 1: every other thread crosses ``count`` + 1
    only after this thread's release of it, so every thread sees the request in time).
    The first request stands; later ones change nothing."""
    n = flags.shape[0] // SLOT - 1
    _compare_and_swap(flags, n * SLOT + SWITCH, 0, count + 1)


@njit(cache=True, nogil=True)
def solo_after(flags):
    """The barrier count after which thread 0 works alone, or 0."""
    n = flags.shape[0] // SLOT - 1
    return _load_acquire(flags, n * SLOT + SWITCH)


@njit(cache=True, nogil=True)
def stopped(stop):
    """Whether another thread asked this sweep to stop (``stop[0] != 0``, an acquire load
    that the compiler cannot hoist out of the sweep's loop)."""
    return _load_acquire(stop, 0) != 0


if numba.config.DISABLE_JIT:  # pragma: no cover - exercised in a NUMBA_DISABLE_JIT subprocess test
    def stopped(stop):  # noqa: F811 - intrinsics do not run in pure Python
        """The stop flag without Numba: a plain read."""
        return stop[0] != 0

    def solo_after(flags):  # noqa: F811
        return flags[-SLOT + SWITCH]

    def ask_solo(flags, count):  # noqa: F811
        if flags[-SLOT + SWITCH] == 0:
            flags[-SLOT + SWITCH] = count + 1

    def cycles():  # noqa: F811
        return 0
