"""Scalar activations for the kernels, in the arrays' own precision, vectorizable.

``math.exp`` is a libm call that LLVM cannot vectorize (this llvmlite has no
SVML), and a Python float literal turns float32 arithmetic into float64 in
Numba. So the kernels use these instead:

- ``exp``: range reduction ``x = n ln2 + r`` (|r| <= ln2/2, ln2 split in a
  high part with trailing zero bits and a low part, as fdlibm does), a
  polynomial for ``e^r`` (Cephes' minimax degree 7 in float32, Taylor
  degree 13 in float64) and ``2^n`` built from the exponent bits. Branch-free,
  so a loop of it compiles to AVX code. Relative error below 1e-7 (float32)
  and 4e-16 (float64) over the clamped range; x is clamped to the range where
  ``e^x`` and ``2^n`` are normal numbers, which only matters where sigmoid and
  tanh are already saturated to the last bit. NaN propagates.
- ``sigmoid(v) = 1 / (1 + e^-v)``; ``tanh(v) = 1 - 2 / (e^{2v} + 1)``, and
  for |v| < 0.625, where that form loses relative accuracy, Cephes' odd
  polynomial (float32) or rational function (float64). tanh is exactly +-1
  in the tails.
- ``one(v)``: the constant 1 in v's type, for expressions like ``1 - z``.

Gradients stay exact whatever these approximate: the backward and the state
rebuild read the stored values, never recompute them. Accuracy against the
true functions is tested in tests/test_cells.py.
"""

from __future__ import annotations

import math

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.extending import intrinsic, overload

__all__ = ["exp", "sigmoid", "tanh", "one", "sigmoid_into", "tanh_into", "relu_into", "grad_through_output"]


@intrinsic
def _pow2(typingctx, n):
    """2**n for an integral-valued float n whose 2**n is a normal number."""
    if n == types.float32:
        int_ty, flt_ty, bias, shift = ir.IntType(32), ir.FloatType(), 127, 23
    elif n == types.float64:
        int_ty, flt_ty, bias, shift = ir.IntType(64), ir.DoubleType(), 1023, 52
    else:
        return None

    def codegen(context, builder, signature, args):
        bits = builder.add(builder.fptosi(args[0], int_ty), ir.Constant(int_ty, bias))
        return builder.bitcast(builder.shl(bits, ir.Constant(int_ty, shift)), flt_ty)

    return n(n), codegen


_f32 = np.float32
_LOG2E_32, _LN2HI_32, _LN2LO_32 = _f32(1.4426950408889634), _f32(0.693359375), _f32(-2.12194440e-4)
_HI_32, _LO_32, _HALF_32, _ONE_32 = _f32(87.0), _f32(-87.0), _f32(0.5), _f32(1.0)
# Cephes expf: e^r ~ 1 + r + r^2 (P0 r^5 + ... + P5)
_P0, _P1, _P2, _P3, _P4, _P5 = (_f32(c) for c in (1.9875691500e-4, 1.3981999507e-3, 8.3334519073e-3,
                                                   4.1665795894e-2, 1.6666665459e-1, 5.0000001201e-1))

_LOG2E_64, _LN2HI_64, _LN2LO_64 = 1.4426950408889634, 6.93147180369123816490e-01, 1.90821492927058770002e-10
_HI_64, _LO_64 = 708.0, -708.0
_Q = tuple(1.0 / math.factorial(k) for k in range(14))


def _exp32(x):
    x = _HI_32 if x > _HI_32 else x
    x = _LO_32 if x < _LO_32 else x
    n = np.floor(x * _LOG2E_32 + _HALF_32)
    r = x - n * _LN2HI_32 - n * _LN2LO_32
    p = ((((_P0 * r + _P1) * r + _P2) * r + _P3) * r + _P4) * r + _P5
    return (p * r * r + r + _ONE_32) * _pow2(n)


def _exp64(x):
    x = _HI_64 if x > _HI_64 else x
    x = _LO_64 if x < _LO_64 else x
    n = np.floor(x * _LOG2E_64 + 0.5)
    r = (x - n * _LN2HI_64) - n * _LN2LO_64
    p = _Q[13]
    p = p * r + _Q[12]
    p = p * r + _Q[11]
    p = p * r + _Q[10]
    p = p * r + _Q[9]
    p = p * r + _Q[8]
    p = p * r + _Q[7]
    p = p * r + _Q[6]
    p = p * r + _Q[5]
    p = p * r + _Q[4]
    p = p * r + _Q[3]
    p = p * r + _Q[2]
    p = p * r + 1.0
    return (p * r + 1.0) * _pow2(n)


# The Python bodies run only under NUMBA_DISABLE_JIT; jitted code uses the overloads.
def exp(x):
    """e**x in x's precision (float32 or float64), vectorizable; see the module docstring."""
    return np.exp(x)


def one(x):
    """1 in x's type."""
    return type(x)(1)


@overload(exp, jit_options={"error_model": "numpy"})
def _exp_overload(x):
    if x == types.float32:
        return _exp32
    if x == types.float64:
        return _exp64
    return None


@overload(one, jit_options={"error_model": "numpy"})
def _one_overload(x):
    if x == types.float32:
        return lambda x: _ONE_32
    if x == types.float64:
        return lambda x: 1.0
    return None


@njit(cache=True, error_model="numpy")
def sigmoid(v):
    e = exp(-v)
    return one(e) / (one(e) + e)


# Cephes tanhf / tanh for |v| < 0.625, where 1 - 2/(e^{2v}+1) loses relative accuracy.
_SMALL_32 = _f32(0.625)
_T0, _T1, _T2, _T3, _T4 = (_f32(c) for c in (-5.70498872745e-3, 2.06390887954e-2, -5.37397155531e-2,
                                              1.33314422036e-1, -3.33332819422e-1))
_TP = (-9.64399179425052238628e-1, -9.92877231001918586564e1, -1.61468768441708447952e3)
_TQ = (1.12811678491632931402e2, 2.23548839060100448583e3, 4.84406305325125486048e3)


def _tanh32(v):
    big = _ONE_32 - (_ONE_32 + _ONE_32) / (exp(v + v) + _ONE_32)
    z = v * v
    small = ((((_T0 * z + _T1) * z + _T2) * z + _T3) * z + _T4) * z * v + v
    return small if abs(v) < _SMALL_32 else big


def _tanh64(v):
    big = 1.0 - 2.0 / (exp(v + v) + 1.0)
    z = v * v
    small = v + v * z * (((_TP[0] * z + _TP[1]) * z + _TP[2]) / (((z + _TQ[0]) * z + _TQ[1]) * z + _TQ[2]))
    return small if abs(v) < 0.625 else big


def tanh(v):
    """tanh(v) in v's precision, vectorizable; see the module docstring."""
    return np.tanh(v)


@overload(tanh, jit_options={"error_model": "numpy"})
def _tanh_overload(v):
    if v == types.float32:
        return _tanh32
    if v == types.float64:
        return _tanh64
    return None


# ---- loops over arrays (one simple loop each, so each compiles to vector code) ----
# Copies as loops, not ``dst[...] = src``: Numba compiles a slice assignment's
# shape-mismatch error with string formatting, 1-3 s on a fresh machine for
# every function that has one. Callers pass equal shapes.
@njit(cache=True)
def copy_into(src, dst):
    """dst = src, 1-D arrays of the same length."""
    for p in range(src.shape[0]):
        dst[p] = src[p]


@njit(cache=True)
def copy2_into(src, dst):
    """dst = src, 2-D arrays of the same shape."""
    for i in range(src.shape[0]):
        for j in range(src.shape[1]):
            dst[i, j] = src[i, j]


@njit(cache=True, error_model="numpy")
def sigmoid_into(src, dst):
    """dst = sigmoid(src), elementwise over 1-D arrays."""
    for p in range(src.shape[0]):
        dst[p] = sigmoid(src[p])


@njit(cache=True, error_model="numpy")
def tanh_into(src, dst):
    """dst = tanh(src), elementwise over 1-D arrays."""
    for p in range(src.shape[0]):
        dst[p] = tanh(src[p])


@njit(cache=True, error_model="numpy")
def relu_into(src, dst):
    """dst = max(src, 0), elementwise over 1-D arrays."""
    zero = one(src[0]) - one(src[0])
    for p in range(src.shape[0]):
        v = src[p]
        dst[p] = v if v > zero else zero


@njit(cache=True, error_model="numpy")
def grad_through_output(d, h, out, relu):
    """out = d * f'(pre) for h = f(pre), f = relu or tanh, written from the output h
    (relu' = [h > 0], tanh' = 1 - h^2); out may be d."""
    c1 = one(h[0])
    if relu:
        zero = c1 - c1
        for p in range(d.shape[0]):
            out[p] = d[p] if h[p] > zero else zero
    else:
        for p in range(d.shape[0]):
            out[p] = d[p] * (c1 - h[p] * h[p])
