"""The library's register-tiled GEMM (memopt_bptt._kernels.mm) against OpenBLAS, one thread.

The unit threads of an LSTM step (Sequence.unit_split) run their narrow
products through ``_mm.product``: the tiled kernel where the columns fill
whole vectors, BLAS otherwise. This measures both on the products one of two
threads computes per step at hidden 256, input 64, batch 16, float32 (and
the whole-matrix shapes for reference):

* forward   ``W_hh[rows] @ h``        (128 x 256) @ (256 x 16), four gates per step
* forward   ``W_ih[rows] @ x^T``      (128 x 64)  @ (64 x 16)
* backward  ``d_q^T @ W_hh[rows]``    (16 x 128)  @ (128 x 256), the partial dL/dh, transposed
* weights   ``D_q @ X``               (128 x 32)  @ (32 x 64), two steps of a gate's dW_ih
* weights   ``D_q @ H^T``             (128 x 32)  @ (32 x 256), two steps of a gate's dW_hh
* whole     ``W_hh @ h``              (1024 x 256) @ (256 x 16)
* whole     ``W_hh^T @ d``            (256 x 1024) @ (1024 x 16), A a transposed view

and, at batch 1, the one-column products the cells send to ``mm.column``
(a dot product per row of a weight as stored; the tile kernel's one-row
tiles for a transposed view) against the OpenBLAS GEMM they took before:

* ``W_hh @ h``, ``W_ih @ x`` at hidden 256 and 1024, and ``W_hh^T @ d``, ``W_ih^T @ d``.

Each result is checked against numpy in float64: the max abs error is
printed and must be within 4x OpenBLAS's own; times are the best of 5 rounds
of 200 calls, OpenBLAS pinned to one thread.

    python benchmarks/bench_gemm_kernels.py
    python benchmarks/bench_gemm_kernels.py --avx2 --out /tmp/gemm_avx2.json   # the other vector width

``--avx2`` runs the measurement in a child process with NUMBA_CPU_NAME=haswell, NUMBA_CPU_FEATURES=""
(our kernel compiled with AVX2's 32-byte vectors and its tiles, mm.tile_rows) and
OPENBLAS_CORETYPE=Haswell (OpenBLAS's AVX2 kernels): the other machine kind's code on this one.

Writes benchmarks/results/bench_gemm_kernels.json (or --out).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time

AVX2_ENV = {"NUMBA_CPU_NAME": "haswell", "NUMBA_CPU_FEATURES": "", "OPENBLAS_CORETYPE": "Haswell"}

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import numpy as np  # noqa: E402
from numba import njit  # noqa: E402

from memopt_bptt._kernels.blas import BLAS_LIBRARY, blas_threads, gemm  # noqa: E402
from memopt_bptt._kernels.mm import (LINE_BYTES, column, fits, matmul, tile_rows, tiled_max_lines,  # noqa: E402
                                     vector_bytes)

HERE = os.path.dirname(os.path.abspath(__file__))


@njit
def _run_ours(a, b, c, reps):
    for _ in range(reps):
        matmul(a, b, c, True)


@njit
def _run_blas(a, b, c, reps):
    for _ in range(reps):
        gemm(False, False, 1.0, a, b, 1.0, c)


@njit
def _run_column(a, b, c, reps):
    for _ in range(reps):
        if not column(a, b, c, True):
            raise ValueError("column does not apply")


@njit
def _run_blas_any(a, b, c, reps):
    """The cells' BLAS call before mm.column: a transposed view as GEMM's transposed operand."""
    for _ in range(reps):
        if a.strides[1] == a.itemsize:
            gemm(False, False, 1.0, a, b, 1.0, c)
        else:
            gemm(True, False, 1.0, a.T, b, 1.0, c)


def _best(fn, a, b, c, reps=200, rounds=5):
    fn(a, b, c, 1)
    best = float("inf")
    for _ in range(rounds):
        t0 = time.perf_counter()
        fn(a, b, c, reps)
        best = min(best, (time.perf_counter() - t0) / reps)
    return best


SHAPES = [  # name, M, K, N, A is a transposed view
    ("W_hh[rows] @ h", 128, 256, 16, False),
    ("W_ih[rows] @ x^T", 128, 64, 16, False),
    ("d_q^T @ W_hh[rows]", 16, 128, 256, True),
    ("D_q @ X (dW_ih)", 128, 32, 64, False),
    ("D_q @ H^T (dW_hh)", 128, 32, 256, False),
    ("whole W_hh @ h", 1024, 256, 16, False),
    ("whole W_hh^T @ d", 256, 1024, 16, True),
]

COLUMN_SHAPES = [  # name, M, K, A is a transposed view: batch 1, the whole weight
    ("W_hh @ h, H=256", 1024, 256, False),
    ("W_ih @ x, I=64", 1024, 64, False),
    ("W_hh^T @ d, H=256", 256, 1024, True),
    ("W_ih^T @ d, I=64", 64, 1024, True),
    ("W_hh @ h, H=1024", 4096, 1024, False),
    ("W_hh^T @ d, H=1024", 1024, 4096, True),
]


def one_column_rows(rng) -> list:
    rows = []
    print(f"\none column (batch 1): mm.column against OpenBLAS's GEMM")
    print(f"{'product':>20} {'M x K':>11} | {'ours':>16} {'OpenBLAS':>16} | {'ours/BLAS':>9} | {'max err':>8} "
          f"{'BLAS err':>8}")
    for name, M, K, transposed in COLUMN_SHAPES:
        a = rng.standard_normal((K, M)).astype(np.float32).T if transposed else \
            rng.standard_normal((M, K)).astype(np.float32)
        b = rng.standard_normal((K, 1)).astype(np.float32)
        exact = a.astype(np.float64) @ b.astype(np.float64)
        c = np.zeros((M, 1), np.float32)
        _run_column(a, b, c, 1)
        err = float(np.max(np.abs(c - exact)))
        c_blas = np.zeros((M, 1), np.float32)
        _run_blas_any(a, b, c_blas, 1)
        blas_err = float(np.max(np.abs(c_blas - exact)))
        # a transposed view's elements are chains of K fused multiply-adds (as the tiles' always are),
        # beyond OpenBLAS's blocked sums at K = 4096: held to the rounding bound of such a chain
        bound = K * 2.0 ** -24 * (np.abs(a).astype(np.float64) @ np.abs(b).astype(np.float64))
        if np.any(np.abs(c - exact) > bound) or err > 4 * blas_err and not transposed:
            raise AssertionError(f"{name}: our kernel's error {err:.2e} is over 4x OpenBLAS's {blas_err:.2e} "
                                 "or over K u (|a| @ |b|)")
        reps = 200 if M * K <= 1 << 18 else 20
        t_ours = _best(_run_column, a, b, np.zeros((M, 1), np.float32), reps)
        t_blas = _best(_run_blas_any, a, b, np.zeros((M, 1), np.float32), reps)
        flops = 2.0 * M * K
        row = {"product": name, "M": M, "K": K, "N": 1, "a_transposed_view": transposed,
               "ours_us": 1e6 * t_ours, "ours_gflops": flops / t_ours / 1e9,
               "openblas_us": 1e6 * t_blas, "openblas_gflops": flops / t_blas / 1e9,
               "max_abs_error_vs_float64": err, "openblas_max_abs_error_vs_float64": blas_err}
        rows.append(row)
        print(f"{name:>20} {f'{M} x {K}':>11} | {row['ours_us']:6.1f} us {row['ours_gflops']:4.0f}G "
              f"{row['openblas_us']:6.1f} us {row['openblas_gflops']:4.0f}G | {t_ours / t_blas:9.2f} | {err:8.1e} "
              f"{blas_err:8.1e}")
    return rows


def main(out: str) -> dict:
    rng = np.random.default_rng(0)
    rows_out = []
    target = {k: os.environ.get(k) for k in AVX2_ENV}
    vbytes = vector_bytes()
    print(f"one thread, float32; OpenBLAS: {BLAS_LIBRARY}; our tiles for {vbytes}-byte vectors "
          f"(rows {tile_rows(vbytes)}); {' '.join(f'{k}={v!r}' for k, v in target.items() if v is not None) or 'host'}")
    max_lines = tiled_max_lines(vbytes)
    print(f"{'product':>20} {'M x K x N':>15} | {'ours':>16} {'OpenBLAS':>16} | {'ours/BLAS':>9} | {'max err':>8} | "
          "mm.product takes")
    with blas_threads(1):
        for name, M, K, N, transposed in SHAPES:
            a = rng.standard_normal((K, M)).astype(np.float32).T if transposed else \
                rng.standard_normal((M, K)).astype(np.float32)
            b = rng.standard_normal((K, N)).astype(np.float32)
            exact = a.astype(np.float64) @ b.astype(np.float64)
            c = np.zeros((M, N), np.float32)
            assert fits(b, c)
            matmul(a, b, c, True)
            err = float(np.max(np.abs(c - exact)))
            a_c = np.ascontiguousarray(a)
            c = np.zeros((M, N), np.float32)
            _run_blas(a_c, b, c, 1)
            blas_err = float(np.max(np.abs(c - exact)))
            if err > 4 * blas_err:
                raise AssertionError(f"{name}: our kernel's error {err:.2e} is over 4x OpenBLAS's {blas_err:.2e}")
            flops = 2.0 * M * K * N
            t_ours = _best(_run_ours, a, b, np.zeros((M, N), np.float32))
            t_blas = _best(_run_blas, a_c, b, np.zeros((M, N), np.float32))
            row = {"product": name, "M": M, "K": K, "N": N, "a_transposed_view": transposed,
                   "ours_us": 1e6 * t_ours, "ours_gflops": flops / t_ours / 1e9,
                   "openblas_us": 1e6 * t_blas, "openblas_gflops": flops / t_blas / 1e9,
                   "max_abs_error_vs_float64": err, "openblas_max_abs_error_vs_float64": blas_err,
                   "product_takes": "tiled" if max_lines == 0 or N * 4 <= max_lines * LINE_BYTES else "BLAS"}
            rows_out.append(row)
            print(f"{name:>20} {f'{M} x {K} x {N}':>15} | {row['ours_us']:6.1f} us {row['ours_gflops']:4.0f}G "
                  f"{row['openblas_us']:6.1f} us {row['openblas_gflops']:4.0f}G | {t_ours / t_blas:9.2f} | {err:8.1e} | "
                  f"{row['product_takes']}")
        column_rows = one_column_rows(rng)
    result = {"machine": platform.machine(), "cpus": os.cpu_count(), "blas": BLAS_LIBRARY, "rows": rows_out,
              "one_column_rows": column_rows,
              "vector_bytes": vbytes, "tile_rows": list(tile_rows(vbytes)), "target_env": target}
    os.makedirs(os.path.dirname(out), exist_ok=True)
    with open(out, "w") as fh:
        json.dump(result, fh, indent=1)
    print(f"wrote {os.path.relpath(out)}")
    return result


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--avx2", action="store_true", help="measure AVX2 code in a child process (see above)")
    parser.add_argument("--out", default=os.path.join(HERE, "results", "bench_gemm_kernels.json"))
    args = parser.parse_args()
    if args.avx2 and os.environ.get("NUMBA_CPU_NAME") != "haswell":
        # the target must be set before Numba and OpenBLAS load: measure in a child with it
        sys.exit(subprocess.call([sys.executable, os.path.abspath(__file__), "--avx2", "--out", args.out],
                                 env={**os.environ, **AVX2_ENV}))
    main(args.out)
