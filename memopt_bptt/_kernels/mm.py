"""A register-tiled GEMM for the narrow products of one step, emitted as LLVM IR.

The LSTM step's GEMMs have a short side: the batch (16 columns) in the
forward and data backward, 32-64 rows of K in the weight gradients. OpenBLAS
packs its operands for every call; on whole-matrix products at batch 16 one
thread reaches 80-90 GFLOP/s here, against 149 for a large sgemm. This
kernel never packs. It keeps an R x V tile of C in vector
registers (V vectors of one 64-byte line each: 16 float32 or 8 float64),
and for every k broadcasts R elements of A against V vectors of B's row k;
A is read through its strides, so a transposed view costs no copy. Measured
one thread, float32 (benchmarks/bench_gemm_kernels.py): on the products one
of two unit threads computes per step at hidden 256, batch 16, it takes
0.78-1.03x OpenBLAS's time (110-154 GFLOP/s); on whole (1024 x 256)-sized
products 0.67-0.73x.

Every element of C is one chain of fused multiply-adds over k = 0..K-1 in
order, so the result is deterministic, and independent of how the rows of C
are split between threads.

``matmul(a, b, c, accumulate)`` computes ``c = a @ b`` (or ``c += a @ b``) for
2-D arrays of one float dtype where b's and c's rows are contiguous and the
column count is a multiple of the vector width; :func:`fits` says whether it
applies (half a line, 8 float32 or 4 float64, also does: lanes of batch 8),
and callers fall back to BLAS otherwise.
"""

from __future__ import annotations

from llvmlite import ir
from numba import njit, types
from numba.core import cgutils
from numba.extending import intrinsic

from .blas import gemm

__all__ = ["matmul", "fits", "product", "LINE_BYTES"]

LINE_BYTES = 64
"""Bytes of one vector of the tile (16 float32 or 8 float64)."""


def _make_tile(R: int, V: int, half: bool = False):
    @intrinsic
    def tile(typingctx, a, b, c, m0, n0, accumulate):
        """c[m0:m0+R, n0:n0+V*W] (+)= a[m0:m0+R, :] @ b[:, n0:n0+V*W] (W halved with ``half``)."""
        if not (isinstance(a, types.Array) and a.dtype == b.dtype == c.dtype
                and a.dtype in (types.float32, types.float64)):
            return None
        sig = types.void(a, b, c, m0, n0, accumulate)

        def codegen(context, builder, signature, args):
            a_arr = context.make_array(signature.args[0])(context, builder, args[0])
            b_arr = context.make_array(signature.args[1])(context, builder, args[1])
            c_arr = context.make_array(signature.args[2])(context, builder, args[2])
            m0_v = context.cast(builder, args[3], signature.args[3], types.int64)
            n0_v = context.cast(builder, args[4], signature.args[4], types.int64)
            acc_flag = context.cast(builder, args[5], signature.args[5], types.boolean)
            flt = context.get_value_type(signature.args[0].dtype)
            size = 4 if signature.args[0].dtype == types.float32 else 8
            W = LINE_BYTES // size // (2 if half else 1)
            i32, i64 = ir.IntType(32), ir.IntType(64)
            vec = ir.VectorType(flt, W)
            itemsize = ir.Constant(i64, size)
            K = cgutils.unpack_tuple(builder, a_arr.shape, 2)[1]
            sm, sk = (builder.sdiv(s, itemsize) for s in cgutils.unpack_tuple(builder, a_arr.strides, 2))
            ldb = builder.sdiv(cgutils.unpack_tuple(builder, b_arr.strides, 2)[0], itemsize)
            ldc = builder.sdiv(cgutils.unpack_tuple(builder, c_arr.strides, 2)[0], itemsize)
            undef = ir.Constant(vec, ir.Undefined)
            splat = ir.Constant(ir.VectorType(i32, W), [0] * W)
            fma = cgutils.get_or_insert_function(builder.module, ir.FunctionType(vec, [vec] * 3),
                                                 f"llvm.fma.v{W}{'f32' if size == 4 else 'f64'}")

            def vptr(base, offset):
                return builder.bitcast(builder.gep(base, [offset]), vec.as_pointer())

            def c_off(r, v):
                return builder.add(builder.mul(builder.add(m0_v, ir.Constant(i64, r)), ldc),
                                   builder.add(n0_v, ir.Constant(i64, v * W)))

            accs = [[cgutils.alloca_once(builder, vec) for _ in range(V)] for _ in range(R)]
            zero = ir.Constant(vec, [0.0] * W)
            for r in range(R):
                for v in range(V):
                    builder.store(zero, accs[r][v])
            with builder.if_then(acc_flag):
                for r in range(R):
                    for v in range(V):
                        builder.store(builder.load(vptr(c_arr.data, c_off(r, v)), align=size), accs[r][v])
            a_rows = [builder.mul(builder.add(m0_v, ir.Constant(i64, r)), sm) for r in range(R)]
            with cgutils.for_range(builder, K) as loop:
                k = loop.index
                b_row = builder.add(builder.mul(k, ldb), n0_v)
                bvs = [builder.load(vptr(b_arr.data, builder.add(b_row, ir.Constant(i64, v * W))), align=size)
                       for v in range(V)]
                ak = builder.mul(k, sk)
                for r in range(R):
                    a_val = builder.load(builder.gep(a_arr.data, [builder.add(a_rows[r], ak)]))
                    va = builder.shuffle_vector(builder.insert_element(undef, a_val, ir.Constant(i32, 0)),
                                                undef, splat)
                    for v in range(V):
                        builder.store(builder.call(fma, [va, bvs[v], builder.load(accs[r][v])]), accs[r][v])
            for r in range(R):
                for v in range(V):
                    builder.store(builder.load(accs[r][v]), vptr(c_arr.data, c_off(r, v)), align=size)
            return context.get_dummy_value()

        return sig, codegen

    return tile


_t16x1, _t8x1, _t1x1 = _make_tile(16, 1), _make_tile(8, 1), _make_tile(1, 1)
_h16x1, _h1x1 = _make_tile(16, 1, True), _make_tile(1, 1, True)  # half-width vectors (8 float32)
_t4x2, _t1x2 = _make_tile(4, 2), _make_tile(1, 2)
_t4x4, _t1x4 = _make_tile(4, 4), _make_tile(1, 4)


@njit(cache=True, inline="always")
def _width(c):
    return LINE_BYTES // c.itemsize


@njit(cache=True)
def fits(b, c):
    """Whether matmul applies: b's and c's rows contiguous, columns a multiple of half the width."""
    w = _width(c) // 2
    return (c.shape[1] % w == 0 and c.shape[1] > 0 and c.strides[1] == c.itemsize
            and b.strides[1] == b.itemsize)


@njit(cache=True)
def matmul(a, b, c, accumulate):
    """c = a @ b, or c += a @ b with ``accumulate`` (see the module docstring; needs ``fits(b, c)``)."""
    M = c.shape[0]
    N = c.shape[1]
    w = _width(c)
    if N % (4 * w) == 0:
        for n0 in range(0, N, 4 * w):
            m0 = 0
            while m0 + 4 <= M:
                _t4x4(a, b, c, m0, n0, accumulate)
                m0 += 4
            while m0 < M:
                _t1x4(a, b, c, m0, n0, accumulate)
                m0 += 1
    elif N % (2 * w) == 0:
        for n0 in range(0, N, 2 * w):
            m0 = 0
            while m0 + 4 <= M:
                _t4x2(a, b, c, m0, n0, accumulate)
                m0 += 4
            while m0 < M:
                _t1x2(a, b, c, m0, n0, accumulate)
                m0 += 1
    elif N % w != 0:  # half-width vectors
        for n0 in range(0, N, w // 2):
            m0 = 0
            while m0 + 16 <= M:
                _h16x1(a, b, c, m0, n0, accumulate)
                m0 += 16
            while m0 < M:
                _h1x1(a, b, c, m0, n0, accumulate)
                m0 += 1
    else:
        for n0 in range(0, N, w):
            m0 = 0
            while m0 + 16 <= M:
                _t16x1(a, b, c, m0, n0, accumulate)
                m0 += 16
            while m0 + 8 <= M:
                _t8x1(a, b, c, m0, n0, accumulate)
                m0 += 8
            while m0 < M:
                _t1x1(a, b, c, m0, n0, accumulate)
                m0 += 1


@njit(cache=True)
def product(a, b, c, accumulate):
    """matmul where it fits, else BLAS: ``c (+)= a @ b``; b's and c's rows
    contiguous, and a's rows or (a transposed view) its columns."""
    if fits(b, c):
        matmul(a, b, c, accumulate)
    elif a.strides[1] == a.itemsize:
        gemm(False, False, 1.0, a, b, 1.0 if accumulate else 0.0, c)
    else:
        gemm(True, False, 1.0, a.T, b, 1.0 if accumulate else 0.0, c)
