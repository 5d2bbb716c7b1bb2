"""What one value_and_grad call keeps, measured with tracemalloc (shared by the memory tests)."""

from __future__ import annotations

import tracemalloc

import memopt_bptt as mb


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
