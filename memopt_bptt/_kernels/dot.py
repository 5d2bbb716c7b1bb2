"""The one-column dot product as LLVM IR, and what every intrinsic of ``mm`` shares.

``_make_dot(R)`` is ``mm.column``'s kernel for a weight as stored (batch 1):
R rows of ``c (+)= a @ b`` at once, sharing b's loads, each row's sum the same
chain whatever R and whatever the vector registers (see its docstring).
``_float_arrays`` and ``_operands`` are the intrinsics' typing check and their
arguments unpacked, shared with ``mm._make_tile``.
"""

from __future__ import annotations

from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

__all__ = ["LINE_BYTES"]

LINE_BYTES = 64
"""Bytes of one vector of the tile (16 float32 or 8 float64), and of the dot product's lanes."""


def _float_arrays(a, b, c) -> bool:
    """Whether an intrinsic's a, b, c are arrays of one float dtype (float32 or float64)."""
    return (isinstance(a, types.Array) and a.dtype == b.dtype == c.dtype
            and a.dtype in (types.float32, types.float64))


def _operands(context, builder, signature, args):
    """An intrinsic's (a, b, c) as array structs, its integer offsets as int64, and its last
    argument (accumulate) as a boolean."""
    arrays = tuple(context.make_array(signature.args[i])(context, builder, args[i]) for i in range(3))
    offsets = tuple(context.cast(builder, args[i], signature.args[i], types.int64) for i in range(3, len(args) - 1))
    return arrays, offsets, context.cast(builder, args[-1], signature.args[-1], types.boolean)


def _make_dot(R: int):
    @intrinsic
    def dot(typingctx, a, b, c, m0, accumulate):
        """c[m0:m0+R, 0] (+)= a[m0:m0+R, :] @ b[:, 0], a's rows and b's column contiguous.

        Each row's sum is the same chain whatever R: one line of W lanes, lane j
        adding a[m, k] b[k] for k = j mod W in order by fused multiply-adds,
        then the lanes halved pairwise (j + j + W/2 ...) to one, then the
        K mod W last products by fused multiply-adds in order, then c's value
        added (with ``accumulate``)."""
        if not _float_arrays(a, b, c):
            return None
        sig = types.void(a, b, c, m0, accumulate)

        def codegen(context, builder, signature, args):
            (a_arr, b_arr, c_arr), (m0_v,), acc_flag = _operands(context, builder, signature, args)
            flt = context.get_value_type(signature.args[0].dtype)
            size = 4 if signature.args[0].dtype == types.float32 else 8
            W = LINE_BYTES // size
            i32, i64 = ir.IntType(32), ir.IntType(64)
            vec = ir.VectorType(flt, W)
            itemsize = ir.Constant(i64, size)
            K = cgutils.unpack_tuple(builder, a_arr.shape, 2)[1]
            sm = builder.sdiv(cgutils.unpack_tuple(builder, a_arr.strides, 2)[0], itemsize)
            ldc = builder.sdiv(cgutils.unpack_tuple(builder, c_arr.strides, 2)[0], itemsize)
            suffix = "f32" if size == 4 else "f64"
            vfma = cgutils.get_or_insert_function(builder.module, ir.FunctionType(vec, [vec] * 3),
                                                  f"llvm.fma.v{W}{suffix}")
            sfma = cgutils.get_or_insert_function(builder.module, ir.FunctionType(flt, [flt] * 3),
                                                  f"llvm.fma.{suffix}")

            def vptr(base, offset):
                return builder.bitcast(builder.gep(base, [offset]), vec.as_pointer())

            rows = [builder.mul(builder.add(m0_v, ir.Constant(i64, r)), sm) for r in range(R)]
            accs = [cgutils.alloca_once(builder, vec) for _ in range(R)]
            for r in range(R):
                builder.store(ir.Constant(vec, [0.0] * W), accs[r])
            blocks = builder.sdiv(K, ir.Constant(i64, W))
            with cgutils.for_range(builder, blocks) as loop:
                k0 = builder.mul(loop.index, ir.Constant(i64, W))
                bv = builder.load(vptr(b_arr.data, k0), align=size)
                for r in range(R):
                    av = builder.load(vptr(a_arr.data, builder.add(rows[r], k0)), align=size)
                    builder.store(builder.call(vfma, [av, bv, builder.load(accs[r])]), accs[r])
            sums = []
            for r in range(R):
                v, w = builder.load(accs[r]), W
                while w > 1:
                    w //= 2
                    undef = ir.Constant(v.type, ir.Undefined)
                    lo = builder.shuffle_vector(v, undef, ir.Constant(ir.VectorType(i32, w), list(range(w))))
                    hi = builder.shuffle_vector(v, undef, ir.Constant(ir.VectorType(i32, w), list(range(w, 2 * w))))
                    v = builder.fadd(lo, hi)
                slot = cgutils.alloca_once(builder, flt)
                builder.store(builder.extract_element(v, ir.Constant(i32, 0)), slot)
                sums.append(slot)
            with cgutils.for_range(builder, builder.sub(K, builder.mul(blocks, ir.Constant(i64, W)))) as loop:
                k = builder.add(builder.mul(blocks, ir.Constant(i64, W)), loop.index)
                bk = builder.load(builder.gep(b_arr.data, [k]))
                for r in range(R):
                    ak = builder.load(builder.gep(a_arr.data, [builder.add(rows[r], k)]))
                    builder.store(builder.call(sfma, [ak, bk, builder.load(sums[r])]), sums[r])
            for r in range(R):
                cp = builder.gep(c_arr.data, [builder.mul(builder.add(m0_v, ir.Constant(i64, r)), ldc)])
                with builder.if_then(acc_flag):
                    builder.store(builder.fadd(builder.load(cp), builder.load(sums[r])), sums[r])
                builder.store(builder.load(sums[r]), cp)
            return context.get_dummy_value()

        return sig, codegen

    return dot
