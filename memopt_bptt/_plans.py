"""The one plan cache: schedules reused across calls of value_and_grad and train.

Planning an msm table can take longer than the sweep it plans, and training
calls the executor with the same T, budget and sizes thousands of times. The
cache keeps the last ``PLAN_CACHE_SIZE`` schedules, keyed by everything that
decides one (T, the parsed budget, the policy, the model's sizes and
description, its b/f ratio); a schedule is immutable and small (three int64
per action), so sharing one is safe.
"""

from __future__ import annotations

import time
import tracemalloc
from collections import OrderedDict
from typing import Any, Callable, NamedTuple

from ._budget import parse_budget
from ._planner import plan
from ._planner._emit import _emit
from ._schedule import Schedule

__all__ = ["PLAN_CACHE_SIZE", "PlanStats", "cached_plan", "measured", "measured_plan", "planner_cached", "resolve_policy"]

PLAN_CACHE_SIZE = 16
_PLANS: OrderedDict = OrderedDict()


def resolve_policy(budget: Any, policy: str | None, *, where: str) -> tuple[Any, str]:
    """(budget, policy) with the defaults filled in: no budget means plain BPTT
    (policy "full", budget 1.0 = all of plain BPTT's memory); a budget without a
    policy means "msm". A policy other than "full" needs a budget."""
    if policy is None:
        policy = "full" if budget is None else "msm"
    if budget is None:
        if policy != "full":
            raise ValueError(f"{where}: policy={policy!r} needs budget= (bytes, '64MiB' or a fraction)")
        budget = 1.0
    return budget, policy


class PlanStats(NamedTuple):
    """What planning one schedule cost: seconds, and the peak bytes it held
    (tracemalloc: the planner's tables and the schedule, beyond the sweep's
    budget); None when another trace was running, or when planning compiled
    the planner (see ``measured``)."""

    seconds: float
    peak_bytes: int | None


def planner_cached() -> bool:
    """Whether Numba's cache on disk holds the planner (its emitter, which every policy but
    plain BPTT runs) for this source: False on a machine's first run, which compiles it."""
    try:
        return bool(_emit._cache._cache_file._load_index())  # Numba's own index check (private: guarded)
    except Exception:  # noqa: BLE001 - any doubt counts as not cached
        return False


def _planner_loaded() -> bool:
    """Whether this process has run the planner's jitted emitter (compiled, or loaded from Numba's cache)."""
    return bool(_emit.signatures)


def measured(planning: Callable[[], Schedule], policy: str | None) -> tuple[Schedule, PlanStats]:
    """``planning()`` (a plan) and what it cost (:class:`PlanStats`).

    Planning that compiles the planner (a machine's first run) is not traced:
    under tracemalloc, Numba's compiler ran 2.6x slower (a first budgeted
    gradient took 17 s instead of 7) and its allocations would count as the
    planner's; its peak is None. Plain BPTT's plan (NumPy) compiles nothing
    and is always traced."""
    trace = not tracemalloc.is_tracing() and (policy == "full" or _planner_loaded() or planner_cached())
    if trace:
        tracemalloc.start()
        base = tracemalloc.get_traced_memory()[0]
    t0 = time.perf_counter()
    try:
        schedule = planning()
        seconds = time.perf_counter() - t0
        peak = tracemalloc.get_traced_memory()[1] - base if trace else None
    finally:
        if trace:
            tracemalloc.stop()
    return schedule, PlanStats(seconds, peak)


def measured_plan(T: int, **kwargs: Any) -> tuple[Schedule, PlanStats]:
    """``mb.plan(T, **kwargs)`` and what it cost (see :func:`measured`)."""
    return measured(lambda: plan(T, **kwargs), kwargs.get("policy"))


def cached_plan(T: int, *, budget: Any, policy: str, model: Any, batch: int, dtype: Any
                ) -> tuple[Schedule, PlanStats | None]:
    """``mb.plan(T, budget=..., model=..., batch=..., dtype=..., policy=...)``,
    from the cache when the same request was planned recently, and what
    planning it cost (None when it came from the cache)."""
    sizes = model.sizes(batch=batch, dtype=dtype)
    key = (T, parse_budget(budget), policy, sizes, model.backward_forward_ratio, repr(model), model.describe())
    schedule = _PLANS.pop(key, None)
    stats = None
    if schedule is None:
        schedule, stats = measured_plan(T, budget=budget, model=model, batch=batch, dtype=dtype, policy=policy)
        while len(_PLANS) >= PLAN_CACHE_SIZE:
            _PLANS.popitem(last=False)
    _PLANS[key] = schedule  # most recent last
    return schedule, stats
