"""Helpers shared by the memory tests: what one value_and_grad call keeps (tracemalloc), the
least budget plan() accepts (memopt_bptt.testing.least_budget, under the name the tests use), and
every policy's run at a budget between that least and plain BPTT's."""

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


def runs_at_a_budget_between(model, params, xs, ys, T, batch, frac, policies, **kwargs):
    """(policy, budget, value_and_grad's result) for each policy at the budget ``frac`` of the way from
    the least msm accepts to plain BPTT's; a policy that cannot fit it must be "sqrt" (skipped)."""
    lo = least_bytes(model, T, batch)
    full = mb.plan(T, budget=1.0, model=model, batch=batch, policy="full").budget_bytes
    budget = lo + int(frac * (full - lo))
    for policy in policies:
        try:
            result = mb.value_and_grad(model, params, xs, ys, budget=budget, policy=policy, **kwargs)
        except mb.MemoryBudgetError:
            assert policy == "sqrt"
            continue
        yield policy, budget, result
