"""Subnormal numbers as zero while a sweep runs (x86's FTZ and DAZ modes).

Gradients that decay through a long sequence (a loss only at the last of
1000 steps, or any vanishing gradient) pass through the subnormal range
(below 1.2e-38 in float32, 2.2e-308 in float64) on their way to zero, and on
x86 every operation that reads or writes a subnormal takes a microcode
assist of about a hundred cycles: an LSTM 256 with a loss at the last of
1000 steps ran 3.2x slower than with a loss at every step
(benchmarks/bench_denormals.py). With FTZ (flush to zero: a subnormal result
is written as zero) and DAZ (denormals are zero: a subnormal input is read
as zero) set in the sweep's thread, they cost what any number costs. XLA
on CPU and TensorFlow run that way by default; PyTorch offers
``torch.set_flush_denormal``.

The mode is a per-thread register (MXCSR): :func:`flush` sets both bits in
the calling thread and returns the previous value for :func:`restore`; the
executor sets them on its worker threads for the sweep only
(``Sequence(flush_denormals=...)``, ``_runner.Run.run``). Elsewhere than
x86 nothing changes (``flush`` returns -1).
"""

from __future__ import annotations

import numba
from llvmlite import ir
from numba import njit, types
from numba.core import cgutils
from numba.extending import intrinsic

from .sync import _X86  # MXCSR is SSE's: 32-bit x86 has it too

__all__ = ["flush", "restore", "mode", "FTZ", "DAZ"]

FTZ = 0x8000  # MXCSR bit 15: subnormal results are written as zero
DAZ = 0x0040  # MXCSR bit 6: subnormal inputs are read as zero


@intrinsic
def _get_mxcsr(typingctx):
    def codegen(context, builder, signature, args):
        if not _X86:
            return ir.Constant(ir.IntType(64), -1)
        i8p = ir.IntType(8).as_pointer()
        slot = cgutils.alloca_once(builder, ir.IntType(32))
        fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(ir.VoidType(), [i8p]),
                                            "llvm.x86.sse.stmxcsr")
        builder.call(fn, [builder.bitcast(slot, i8p)])
        return builder.zext(builder.load(slot), ir.IntType(64))

    return types.int64(), codegen


@intrinsic
def _set_mxcsr(typingctx, value):
    def codegen(context, builder, signature, args):
        if _X86:
            i8p = ir.IntType(8).as_pointer()
            slot = cgutils.alloca_once(builder, ir.IntType(32))
            builder.store(builder.trunc(args[0], ir.IntType(32)), slot)
            fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(ir.VoidType(), [i8p]),
                                                "llvm.x86.sse.ldmxcsr")
            builder.call(fn, [builder.bitcast(slot, i8p)])
        return context.get_dummy_value()

    return types.void(types.int64), codegen


@njit(cache=True, nogil=True)
def mode():
    """The calling thread's MXCSR (-1 off x86)."""
    return _get_mxcsr()


@njit(cache=True, nogil=True)
def flush():
    """Set FTZ and DAZ in the calling thread; the previous MXCSR for :func:`restore` (-1 off x86,
    where nothing is set)."""
    old = _get_mxcsr()
    if old >= 0:
        _set_mxcsr(old | FTZ | DAZ)
    return old


@njit(cache=True, nogil=True)
def restore(old):
    """Put back the MXCSR :func:`flush` returned (nothing for -1)."""
    if old >= 0:
        _set_mxcsr(old)


if numba.config.DISABLE_JIT:  # pragma: no cover - exercised in a NUMBA_DISABLE_JIT subprocess test
    def mode():  # noqa: F811 - the intrinsics do not run in pure Python
        """Without Numba: -1, the mode is not read."""
        return -1

    def flush():  # noqa: F811
        """Without Numba: nothing is set (numpy's loops keep IEEE gradual underflow)."""
        return -1

    def restore(old):  # noqa: F811
        """Without Numba: nothing."""
