"""A hand-written broadcast GEMM kernel against OpenBLAS on the LSTM's shapes, one thread.

Not used by the library yet: this measures whether writing our own kernels
for the batch-16 GEMMs of a step would pay, before building on it. The
kernel computes C (M x 16) += A (M x K) @ B (K x 16) in float32, with B's
rows and C's rows as 16-wide vectors and each A element broadcast, R rows
of C at a time in registers; it is emitted as LLVM IR (a Numba intrinsic),
reads A through its strides (so W_hh^T of the backward is a view, not a
copy) and never packs. Shapes (hidden 256, input 64, batch 16):

* forward  ``W_hh @ h``   (1024 x 256) @ (256 x 16)
* forward  ``W_ih @ x^T`` (1024 x 64)  @ (64 x 16)
* backward ``W_hh^T @ d`` (256 x 1024) @ (1024 x 16), A a transposed view
* half of it, the rows one of two threads would take (128 x 1024)

Each result is checked against numpy in float64: the max abs error is
printed, and must be within 4x OpenBLAS's own (float32 rounding); the
times are the best of 5 rounds of 200 calls, OpenBLAS pinned to one thread.

    python benchmarks/bench_gemm_kernels.py

Writes benchmarks/results/bench_gemm_kernels.json.
"""

from __future__ import annotations

import json
import os
import platform
import time

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import numpy as np  # noqa: E402
from llvmlite import ir  # noqa: E402
from numba import njit, types  # noqa: E402
from numba.core import cgutils  # noqa: E402
from numba.extending import intrinsic  # noqa: E402

from memopt_bptt.cells._blas import BLAS_LIBRARY, blas_threads, gemm  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
WIDTH = 16  # float32 lanes of one 512-bit vector: the batch


def _make_kernel(rows: int):
    @intrinsic
    def kernel(typingctx, a, b, c):
        """c (M, 16) += a (M, K) @ b (K, 16); float32, b and c C-contiguous, M % rows == 0."""
        sig = types.void(a, b, c)

        def codegen(context, builder, signature, args):
            a_arr = context.make_array(signature.args[0])(context, builder, args[0])
            b_arr = context.make_array(signature.args[1])(context, builder, args[1])
            c_arr = context.make_array(signature.args[2])(context, builder, args[2])
            f32, i32, i64 = ir.FloatType(), ir.IntType(32), ir.IntType(64)
            vec = ir.VectorType(f32, WIDTH)
            M, K = cgutils.unpack_tuple(builder, a_arr.shape, 2)
            sm, sk = (builder.udiv(s, ir.Constant(i64, 4)) for s in cgutils.unpack_tuple(builder, a_arr.strides, 2))
            accs = [cgutils.alloca_once(builder, vec) for _ in range(rows)]
            undef = ir.Constant(vec, ir.Undefined)
            splat = ir.Constant(ir.VectorType(i32, WIDTH), [0] * WIDTH)
            fma = cgutils.get_or_insert_function(builder.module, ir.FunctionType(vec, [vec] * 3),
                                                 f"llvm.fma.v{WIDTH}f32")

            def row_ptr(base, row):
                return builder.bitcast(builder.gep(base, [builder.mul(row, ir.Constant(i64, WIDTH))]),
                                       vec.as_pointer())

            with cgutils.for_range(builder, builder.udiv(M, ir.Constant(i64, rows))) as blk:
                m0 = builder.mul(blk.index, ir.Constant(i64, rows))
                ms = [builder.add(m0, ir.Constant(i64, r)) for r in range(rows)]
                for r in range(rows):
                    builder.store(builder.load(row_ptr(c_arr.data, ms[r]), align=4), accs[r])
                with cgutils.for_range(builder, K) as kl:
                    k = kl.index
                    bv = builder.load(row_ptr(b_arr.data, k), align=4)
                    for r in range(rows):
                        a_val = builder.load(builder.gep(a_arr.data, [builder.add(builder.mul(ms[r], sm),
                                                                                  builder.mul(k, sk))]))
                        va = builder.shuffle_vector(builder.insert_element(undef, a_val, ir.Constant(i32, 0)),
                                                    undef, splat)
                        builder.store(builder.call(fma, [va, bv, builder.load(accs[r])]), accs[r])
                for r in range(rows):
                    builder.store(builder.load(accs[r]), row_ptr(c_arr.data, ms[r]), align=4)
            return context.get_dummy_value()

        return sig, codegen

    @njit
    def run(a, b, c, reps):
        for _ in range(reps):
            kernel(a, b, c)

    return run


@njit
def _run_blas(a, b, c, reps):
    for _ in range(reps):
        gemm(False, False, 1.0, a, b, 1.0, c)


def _best(fn, a, b, c, reps=200, rounds=5):
    fn(a, b, c, 1)
    best = float("inf")
    for _ in range(rounds):
        t0 = time.perf_counter()
        fn(a, b, c, reps)
        best = min(best, (time.perf_counter() - t0) / reps)
    return best


def main() -> dict:
    rng = np.random.default_rng(0)
    kernels = {8: _make_kernel(8), 16: _make_kernel(16)}
    shapes = [("W_hh @ h", 1024, 256, False), ("W_ih @ x^T", 1024, 64, False),
              ("W_hh^T @ d", 256, 1024, True), ("half of W_hh^T @ d", 128, 1024, True)]
    rows_out = []
    print(f"one thread, float32, batch {WIDTH}; OpenBLAS: {BLAS_LIBRARY}")
    print(f"{'GEMM':>20} {'M x K':>11} | {'ours R=8':>14} {'ours R=16':>14} {'OpenBLAS':>14} | {'max err':>8}")
    with blas_threads(1):
        for name, M, K, transposed in shapes:
            a = rng.standard_normal((K, M)).astype(np.float32).T if transposed else \
                rng.standard_normal((M, K)).astype(np.float32)
            b = rng.standard_normal((K, WIDTH)).astype(np.float32)
            flops = 2.0 * M * K * WIDTH
            row = {"gemm": name, "M": M, "K": K, "a_transposed_view": transposed}
            err = 0.0
            for r, fn in kernels.items():
                c = np.zeros((M, WIDTH), np.float32)
                fn(a, b, c, 1)
                err = max(err, float(np.max(np.abs(c - a.astype(np.float64) @ b.astype(np.float64)))))
                t = _best(fn, a, b, np.zeros((M, WIDTH), np.float32))
                row[f"ours_R{r}_us"], row[f"ours_R{r}_gflops"] = 1e6 * t, flops / t / 1e9
            c = np.zeros((M, WIDTH), np.float32)
            _run_blas(np.ascontiguousarray(a), b, c, 1)
            blas_err = float(np.max(np.abs(c - a.astype(np.float64) @ b.astype(np.float64))))
            if err > 4 * blas_err:
                raise AssertionError(f"{name}: our kernel's error {err:.2e} is over 4x OpenBLAS's {blas_err:.2e}")
            row["openblas_max_abs_error_vs_float64"] = blas_err
            t = _best(_run_blas, np.ascontiguousarray(a), b, np.zeros((M, WIDTH), np.float32))
            row["openblas_us"], row["openblas_gflops"] = 1e6 * t, flops / t / 1e9
            row["max_abs_error_vs_float64"] = err
            rows_out.append(row)
            print(f"{name:>20} {f'{M} x {K}':>11} | "
                  + " ".join(f"{row[k + '_us']:6.1f} us {row[k + '_gflops']:3.0f}G"
                             for k in ("ours_R8", "ours_R16", "openblas"))
                  + f" | {err:8.1e}")
    result = {"machine": platform.machine(), "cpus": os.cpu_count(), "blas": BLAS_LIBRARY, "rows": rows_out}
    out = os.path.join(HERE, "results", "bench_gemm_kernels.json")
    os.makedirs(os.path.dirname(out), exist_ok=True)
    with open(out, "w") as fh:
        json.dump(result, fh, indent=1)
    print(f"wrote {os.path.relpath(out)}")
    return result


if __name__ == "__main__":
    main()
