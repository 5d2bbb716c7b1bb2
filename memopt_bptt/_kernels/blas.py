"""Row-major GEMM with accumulation (``C = alpha*op(A) op(B) + beta*C``) for jitted code.

``np.dot`` in Numba cannot accumulate into its output, so a gradient update
``G += dA^T x`` would need a temporary as large as the weight matrix, and that
temporary would count against the memory budget. This calls SciPy's BLAS
(``?gemm``) directly, without temporaries and without allocating per call.

The BLAS routines are bound to LLVM symbols by name at import time, so the
jitted callers stay cacheable (``cache=True``): a ctypes pointer baked into the
code would not be.

Which BLAS: NumPy's bundled OpenBLAS (ILP64, ``scipy_?gemm_64_``) when it is
there, else SciPy's (``scipy.linalg.cython_blas``). At batch 16 NumPy's newer
OpenBLAS computes ``W^T @ d`` (the LSTM backward's data GEMM, hidden 256) in
about 95 us on one thread where SciPy's takes 135 us; the other shapes are
alike. The integer arguments are always passed as pointers to 64-bit ints, so
the compiled (and cached) code is the same either way: an LP64 routine reads
the low 32 bits, which on a little-endian machine is the same number.
``MEMOPT_BPTT_BLAS=scipy`` in the environment forces SciPy's.
"""

from __future__ import annotations

import functools
import os
import sys

import llvmlite.binding as _llvm
import numba
from llvmlite import ir
from numba import njit, types
from numba.core import cgutils
from numba.extending import get_cython_function_address, intrinsic

__all__ = ["gemm", "transposed_input", "add_row_sums"]

_SYMBOLS = {"float64": "memopt_bptt_dgemm_i64", "float32": "memopt_bptt_sgemm_i64"}


def _numpy_openblas_ilp64() -> tuple[int, int, str] | None:
    """(sgemm, dgemm addresses, library path) of NumPy's bundled ILP64 OpenBLAS, or None."""
    import ctypes
    import glob

    import numpy

    libdir = os.path.join(os.path.dirname(os.path.dirname(numpy.__file__)), "numpy.libs")
    for path in sorted(glob.glob(os.path.join(libdir, "libscipy_openblas64_*"))):
        try:
            lib = ctypes.CDLL(path)
        except OSError:
            continue
        sg, dg = getattr(lib, "scipy_sgemm_64_", None), getattr(lib, "scipy_dgemm_64_", None)
        if sg is not None and dg is not None:
            return (ctypes.cast(sg, ctypes.c_void_p).value, ctypes.cast(dg, ctypes.c_void_p).value, path)
    return None


def _bind_blas() -> str:
    found = None if os.environ.get("MEMOPT_BPTT_BLAS", "").lower() == "scipy" else _numpy_openblas_ilp64()
    if found is not None:
        sgemm, dgemm, path = found
        _llvm.add_symbol(_SYMBOLS["float32"], sgemm)
        _llvm.add_symbol(_SYMBOLS["float64"], dgemm)
        return f"numpy-openblas-ilp64 ({os.path.basename(path)})"
    if sys.byteorder != "little":  # pragma: no cover - no such machine here
        raise ImportError("memopt_bptt needs NumPy's bundled ILP64 OpenBLAS on a big-endian machine "
                          "(SciPy's LP64 BLAS cannot read the 64-bit integer arguments there)")
    _llvm.add_symbol(_SYMBOLS["float64"], get_cython_function_address("scipy.linalg.cython_blas", "dgemm"))
    _llvm.add_symbol(_SYMBOLS["float32"], get_cython_function_address("scipy.linalg.cython_blas", "sgemm"))
    return "scipy.linalg.cython_blas"


BLAS_LIBRARY = _bind_blas()
"""Which BLAS the kernels call (see the module docstring)."""

_CORE_BYTES = {"skylakex": 64, "cooperlake": 64, "sapphirerapids": 64, "haswell": 32, "zen": 32, "sandybridge": 32}


@functools.lru_cache(maxsize=None)
def blas_core() -> tuple[str, int | None] | None:
    """(name, vector bytes) of the kernels NumPy's OpenBLAS runs on this machine ("SkylakeX", 64;
    "Haswell", 32: its own choice, or OPENBLAS_CORETYPE's; bytes None for a name not known here),
    or None for another BLAS."""
    import ctypes
    found = _numpy_openblas_ilp64() if BLAS_LIBRARY.startswith("numpy-openblas") else None
    name_of = getattr(ctypes.CDLL(found[2]), "scipy_openblas_get_corename64_", None) if found else None
    if name_of is None:
        return None
    name_of.restype = ctypes.c_char_p
    name = (name_of() or b"").decode(errors="replace")
    return name, _CORE_BYTES.get(name.lower())


@intrinsic
def _fortran_gemm(typingctx, transa, transb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc):
    """Call Fortran ?gemm with every scalar passed by pointer, as BLAS wants (integers as int64)."""
    if not (isinstance(a, types.Array) and a.dtype == b.dtype == c.dtype):
        return None
    name = _SYMBOLS.get(str(a.dtype))
    if name is None:
        return None
    sig = types.void(transa, transb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc)

    def codegen(context, builder, signature, args):
        i8p = ir.IntType(8).as_pointer()
        fnty = ir.FunctionType(ir.VoidType(), [i8p] * 13)
        fn = cgutils.get_or_insert_function(builder.module, fnty, name)
        flt = context.get_value_type(a.dtype)
        ptrs = []
        for pos, (val, ty) in enumerate(zip(args, signature.args)):
            if isinstance(ty, types.Array):
                arr = context.make_array(ty)(context, builder, val)
                ptrs.append(builder.bitcast(arr.data, i8p))
                continue
            if pos in (0, 1):
                scalar = builder.trunc(val, ir.IntType(8))
            elif pos in (5, 10):
                scalar = context.cast(builder, val, ty, a.dtype)
                scalar = builder.bitcast(scalar, flt) if scalar.type != flt else scalar
            else:  # 64-bit integers always (see the module docstring)
                scalar = context.cast(builder, val, ty, types.int64)
            slot = cgutils.alloca_once_value(builder, scalar)
            ptrs.append(builder.bitcast(slot, i8p))
        builder.call(fn, ptrs)
        return context.get_dummy_value()

    return sig, codegen


@njit(cache=True, inline="always")
def gemm(trans_a, trans_b, alpha, a, b, beta, c):
    """Row-major ``c = alpha * op(a) @ op(b) + beta * c`` (op = transpose if flag).

    All three are 2-D arrays of one float dtype whose rows are contiguous
    (C-contiguous, or a column slice ``m[:, i:j]`` of one): the row stride is
    passed to BLAS as the leading dimension.
    """
    m = c.shape[0]
    n = c.shape[1]
    k = a.shape[0] if trans_a else a.shape[1]
    # Row-major C is column-major C^T = op(B)^T op(A)^T: swap the operands.
    ta = 84 if trans_b else 78  # 'T' or 'N' for the Fortran call's first operand (b)
    tb = 84 if trans_a else 78
    _fortran_gemm(ta, tb, n, m, k, alpha, b, _ld(b), a, _ld(a), beta, c, _ld(c))


@njit(cache=True, inline="always")
def _ld(a):
    """Leading dimension of a row-major 2-D array with contiguous rows."""
    return max(a.strides[0] // a.itemsize, a.shape[1], 1)


@njit(cache=True)
def add_row_sums(m, a, b):
    """a += row sums of m, and b += the same (both bias gradients of a cell)."""
    for k in range(m.shape[0]):
        acc = m[k, 0]
        for col in range(1, m.shape[1]):
            acc += m[k, col]
        a[k] += acc
        b[k] += acc


@njit(cache=True)
def transposed_input(x, buf):
    """x^T, (input_size, B), written into buf: ``W_ih @ x^T`` as an NN GEMM is
    faster in OpenBLAS at small batch than the same product with x transposed
    by the GEMM (the cells' feature-major input term)."""
    B = x.shape[0]
    I = x.shape[1]
    xt = buf[: I * B].reshape((I, B))
    for b in range(B):
        for i in range(I):
            xt[i, b] = x[b, i]
    return xt


if numba.config.DISABLE_JIT:  # pragma: no cover - exercised in a NUMBA_DISABLE_JIT subprocess test
    def gemm(trans_a, trans_b, alpha, a, b, beta, c):  # noqa: F811 - pure-numpy stand-in
        """Row-major ``c = alpha * op(a) @ op(b) + beta * c`` without Numba."""
        if c.ndim != 2 or c.strides[1] != c.itemsize:
            raise ValueError("gemm: c must be 2-D with contiguous rows")
        prod = (a.T if trans_a else a) @ (b.T if trans_b else b)
        c *= beta
        c += alpha * prod


# ---- BLAS thread count ---------------------------------------------------------------------------
def _openblas_thread_controls() -> list:
    """(get, set) ctypes functions of every OpenBLAS loaded in this process (Linux; else none)."""
    import ctypes

    controls = []
    try:
        with open("/proc/self/maps") as f:
            paths = sorted({line.split()[-1] for line in f if "openblas" in line.lower() and "/" in line})
    except OSError:
        return controls
    for path in paths:
        try:
            lib = ctypes.CDLL(path)
        except OSError:
            continue
        for prefix in ("scipy_openblas", "openblas"):
            for suffix in ("", "64_"):
                get = getattr(lib, f"{prefix}_get_num_threads{suffix}", None)
                put = getattr(lib, f"{prefix}_set_num_threads{suffix}", None)
                if get is not None and put is not None:
                    get.restype = ctypes.c_int
                    put.argtypes = [ctypes.c_int]
                    controls.append((get, put))
                    break
            else:
                continue
            break
    return controls


_THREAD_CONTROLS: list | None = None


class blas_threads:
    """Context manager: at most ``n`` OpenBLAS threads inside (None: unchanged).

    Small GEMMs (hidden size 64 at batch 16) run faster on one thread than
    split over two: the split's synchronisation costs more than it saves. The
    previous counts are restored on exit. Without a recognisable OpenBLAS
    (another BLAS, or not Linux) this does nothing.
    """

    def __init__(self, n: int | None):
        self.n = n
        self.saved: list = []

    def __enter__(self):
        global _THREAD_CONTROLS
        if self.n is None:
            return self
        if _THREAD_CONTROLS is None:
            _THREAD_CONTROLS = _openblas_thread_controls()
        for get, put in _THREAD_CONTROLS:
            old = get()
            if old > self.n:
                put(self.n)
                self.saved.append((put, old))
        return self

    def __exit__(self, *exc):
        for put, old in self.saved:
            put(old)
        self.saved = []
        return False
