"""Helpers shared by the memory tests: what one value_and_grad call keeps (tracemalloc), and the
least budget plan() accepts (memopt_bptt.testing.least_budget, under the name the tests use)."""

from __future__ import annotations

import tracemalloc

import memopt_bptt as mb
from memopt_bptt.testing import least_budget


def kept_bytes(model, params, xs, ys, schedule) -> int:
    """Peak traced bytes of one call with a ready schedule, minus the returned gradients
    (outside the budget by the contract). A first, untraced call compiles the sweep."""
    mb.value_and_grad(model, params, xs, ys, schedule=schedule)
    tracemalloc.start()
    try:
        _, grads = mb.value_and_grad(model, params, xs, ys, schedule=schedule)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    return peak - sum(g.nbytes for g in grads.values())


def least_bytes(model, T, batch, policy="msm", dtype="float64"):
    """The least byte budget plan() accepts: :func:`memopt_bptt.testing.least_budget`."""
    return least_budget(model, T=T, batch=batch, policy=policy, dtype=dtype)
