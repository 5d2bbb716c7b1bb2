"""Which schedule a training gradient runs under, and a record of those used.

:func:`memopt_bptt.train` and :func:`memopt_bptt.truncated_value_and_grad`
take one ``budget``/``policy`` for many gradients: one per batch, or one per
truncation window. Planning goes through the package's one plan cache
(``memopt_bptt._plans.cached_plan``, shared with :func:`value_and_grad`);
what is decided here is the budget each gradient gets.

A fractional budget is a fraction of what plain BPTT keeps for a *reference*
length: the sequence itself, or for truncated BPTT the longest window,
``min(h, T)``. It is turned into bytes once per sequence (the budget the
reference length's schedule gets), and every window, the shorter last one
included, gets those same bytes.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np

from .._budget import MemoryBudgetError, parse_budget
from .._model import Sequence
from .._plans import cached_plan, resolve_policy
from .._schedule import Schedule

__all__ = ["BudgetedPlans", "WindowBudget"]


class WindowBudget(NamedTuple):
    """The budget of the gradients of one sequence's windows."""

    amount: Any   # bytes for a fraction given, else the caller's budget as given
    ref_T: int    # the length a fraction is of, named when a window does not fit


class BudgetedPlans:
    """The caller's ``budget``/``policy`` resolved once, schedules for it, and
    the schedules used (for the history :func:`memopt_bptt.train` returns)."""

    def __init__(self, model: Sequence, budget: Any, policy: str | None, *, where: str):
        self.model = model
        self.given = budget
        self.budget, self.policy = resolve_policy(budget, policy, where=where)
        self.fraction = budget is not None and parse_budget(budget)[0] == "fraction"
        self.used: dict[int, dict[str, Any]] = {}

    def budget_for(self, ref_T: int, batch: int, dtype: Any) -> WindowBudget:
        """The budget for windows of a sequence whose longest window has
        ``ref_T`` steps: a fraction becomes the bytes it means for ``ref_T``
        steps; bytes stay as given."""
        if not self.fraction:
            return WindowBudget(self.budget, ref_T)
        return WindowBudget(self._plan(ref_T, batch, dtype, self.budget, ref_T).budget_bytes, ref_T)

    def schedule(self, T: int, batch: int, dtype: Any, *, budget: WindowBudget | None = None) -> Schedule:
        """The schedule for T steps under ``budget`` (from :meth:`budget_for`;
        default: the caller's budget, a fraction meaning of these T steps)."""
        budget = WindowBudget(self.budget, T) if budget is None else budget
        schedule = self._plan(T, batch, dtype, budget.amount, budget.ref_T)
        self.used[T] = {
            "T": T, "batch": batch, "dtype": np.dtype(dtype).name, "policy": schedule.policy,
            "forward_steps": schedule.forward_steps, "peak_bytes": schedule.peak_bytes,
            "budget_bytes": schedule.budget_bytes, "time_ratio": schedule.time_ratio,
            "n_hidden_slots": schedule.n_hidden_slots, "n_internal_slots": schedule.n_internal_slots,
        }
        return schedule

    def _plan(self, T: int, batch: int, dtype: Any, budget: Any, ref_T: int) -> Schedule:
        try:
            return cached_plan(T, budget=budget, policy=self.policy, model=self.model, batch=batch, dtype=dtype)[0]
        except MemoryBudgetError as exc:
            if not self.fraction:
                raise
            raise MemoryBudgetError(
                f"{exc} (budget={self.given!r} is a fraction of what plain BPTT keeps for "
                f"{ref_T} steps, the longest sequence or truncation window; give more, or bytes)",
                least_bytes=exc.least_bytes) from None

    def summaries(self) -> dict[int, dict[str, Any]]:
        """Summaries of the schedules used, keyed by sequence length (ascending)."""
        return {T: dict(self.used[T]) for T in sorted(self.used)}
