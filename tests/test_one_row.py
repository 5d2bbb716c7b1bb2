"""One batch row: the one-column products run on our own kernels (``mm.column``), not BLAS.

OpenBLAS runs a one-column product through its GEMM, 4-6x slower than a dot
product with its Haswell kernels. Oracles: numpy's float64 products (to
rounding); the same kernel on other row ranges of the same product (bit for
bit: each element's arithmetic does not depend on the rows a call computes, so
unit threads split them freely); the gradient of a batch of two equal rows,
which runs on BLAS (the mean loss and its gradient are the batch-1 ones, to
rounding); the textbook loss; and plain BPTT, which every policy and budget
equals bit for bit.
"""

from __future__ import annotations

import os
import sys

import numpy as np
import pytest
from numba import njit

import memopt_bptt as mb
from memopt_bptt._kernels.mm import LINE_BYTES, column, gemm_n, gemm_t, vector_bytes

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from reference import max_relative_error, reference_loss  # noqa: E402


@njit
def _column(a, b, c, accumulate):
    return column(a, b, c, accumulate)


@njit
def _blas_or_column(a, b, c, accumulate):
    """The cells' entry points: gemm_n for a weight as stored, gemm_t for a transposed view."""
    if a.strides[1] == a.itemsize:
        gemm_n(a, b, c, 1.0 if accumulate else 0.0)
    else:
        gemm_t(a.T, b, c, 1.0 if accumulate else 0.0)


SHAPES = [(1024, 256), (256, 1024), (40, 64), (37, 19), (8, 3), (1, 17), (5, 1), (16, 32)]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("M,K", SHAPES)
@pytest.mark.parametrize("form", ["weight", "transposed"])
def test_one_column_products_equal_float64_and_every_row_range(dtype, M, K, form):
    rng = np.random.default_rng(M * 1000 + K)
    stored = rng.standard_normal((M, K) if form == "weight" else (K, M)).astype(dtype)
    a = stored if form == "weight" else stored.T  # (M, K) either way
    b = rng.standard_normal((K, 1)).astype(dtype)
    c0 = rng.standard_normal((M, 1)).astype(dtype)
    want = a.astype(np.float64) @ b.astype(np.float64)
    tol = 2e-5 if dtype == np.float32 else 1e-13
    scale = np.abs(a).astype(np.float64) @ np.abs(b).astype(np.float64) + 1.0
    done = {}
    for accumulate in (False, True):
        c = c0.copy()
        done[accumulate] = _column(a, b, c, accumulate)
        if done[accumulate]:
            expect = want + (c0 if accumulate else 0.0)
            assert np.all(np.abs(c - expect) <= tol * scale), (M, K, form, accumulate)
            # rows in pieces (as unit threads split them): the same bits
            pieces = c0.copy()
            cuts = sorted({0, M, M // 3, (2 * M) // 3 + 1} & set(range(M + 1)))
            for lo, hi in zip(cuts[:-1], cuts[1:]):
                assert _column(a[lo:hi], b, pieces[lo:hi], accumulate) or form == "transposed"
            if form == "weight":
                np.testing.assert_array_equal(pieces, c)
        else:
            np.testing.assert_array_equal(c, c0)  # nothing written where it does not apply
        # the cells' entry point: the same result, BLAS where the kernels do not apply
        d = c0.copy()
        _blas_or_column(a, b, d, accumulate)
        assert np.all(np.abs(d - (want + (c0 if accumulate else 0.0))) <= tol * scale)
    assert done[False] == done[True]
    if a.strides[1] == a.itemsize:  # a weight as stored (or a one-row view): a dot product per row
        assert done[False]
    else:
        # the tile kernel's rows of c^T: whole lines with AVX-512, half lines too with AVX2
        line = LINE_BYTES // np.dtype(dtype).itemsize
        assert done[False] == (M % (line if vector_bytes() >= LINE_BYTES else line // 2) == 0)


def test_column_leaves_wider_products_to_blas():
    a = np.ones((16, 8), np.float32)
    b = np.ones((8, 2), np.float32)
    c = np.zeros((16, 2), np.float32)
    assert not _column(a, b, c, False) and not c.any()
    _blas_or_column(a, b, c, False)
    np.testing.assert_array_equal(c, np.full((16, 2), 8.0, np.float32))


CELLS = {"lstm": mb.LSTM, "gru": mb.GRU, "elman": mb.Elman}


@pytest.mark.parametrize("kind", sorted(CELLS))
@pytest.mark.parametrize("hidden", [16, 13])  # 16: both kernels; 13: the dot product and BLAS
def test_batch_one_gradients_equal_a_doubled_batch_on_blas(kind, hidden):
    model = mb.Sequence(CELLS[kind](8, hidden), output_size=3)
    params = model.init_params(seed=1)
    rng = np.random.default_rng(2)
    T = 40
    xs = rng.normal(size=(T, 1, 8))
    ys = rng.normal(size=(T, 1, 3))
    loss1, grads1 = mb.value_and_grad(model, params, xs, ys)
    loss2, grads2 = mb.value_and_grad(model, params, np.repeat(xs, 2, axis=1), np.repeat(ys, 2, axis=1))
    assert abs(loss1 - reference_loss(kind, params, xs, ys)) <= 1e-12 * abs(loss1)
    assert abs(loss1 - loss2) <= 1e-12 * abs(loss1)
    for name in grads1:
        assert max_relative_error(grads1[name], grads2[name]) < 1e-10, name
    # every policy and budget: the bits of plain BPTT
    for budget in (0.3, 0.6):
        for policy in ("msm", "revolve"):
            loss_b, grads_b = mb.value_and_grad(model, params, xs, ys, budget=budget, policy=policy)
            assert loss_b == loss1
            for name in grads1:
                np.testing.assert_array_equal(grads_b[name], grads1[name])


def batch_one_runs() -> dict:
    """kind -> (loss, grads) of a small batch-1 problem per cell (also run without Numba, below)."""
    out = {}
    for kind, cell in (("lstm", mb.LSTM(8, 16)), ("gru", mb.GRU(8, 16)), ("elman", mb.Elman(8, 16))):
        model = mb.Sequence(cell, output_size=3)
        params = model.init_params(seed=0)
        xs = np.random.default_rng(0).normal(size=(6, 1, 8))
        ys = np.random.default_rng(1).normal(size=(6, 1, 3))
        out[kind] = mb.value_and_grad(model, params, xs, ys)
    return out


_NO_JIT = """
import json, sys
sys.path.insert(0, sys.argv[1])
import test_one_row
print(json.dumps({kind: [loss, {k: v.tolist() for k, v in grads.items()}]
                  for kind, (loss, grads) in test_one_row.batch_one_runs().items()}))
"""


def test_without_numba_batch_one_runs_on_numpy_and_agrees():
    """Under NUMBA_DISABLE_JIT the kernels' intrinsics cannot run as Python: the one-column
    products fall back to numpy, and give the jitted build's gradients to rounding."""
    import json
    import subprocess

    env = dict(os.environ, NUMBA_DISABLE_JIT="1")
    proc = subprocess.run([sys.executable, "-c", _NO_JIT, os.path.dirname(os.path.abspath(__file__))],
                          capture_output=True, text=True, env=env, timeout=600, check=True)
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    for kind, (loss, grads) in batch_one_runs().items():
        assert abs(got[kind][0] - loss) <= 1e-12 * abs(loss), kind
        for name, g in grads.items():
            assert max_relative_error(np.array(got[kind][1][name]), g) < 1e-10, (kind, name)
