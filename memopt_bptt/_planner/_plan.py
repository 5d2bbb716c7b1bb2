"""plan: the schedule with the fewest forward steps in a budget. The
arguments checked, the budget (bytes, a fraction of plain BPTT's memory, or
slots and alpha in the abstract model) turned into free quanta, plan_quanta
run, and its codes wrapped in a Schedule with the cost model's numbers."""

from __future__ import annotations

import math
from fractions import Fraction
from typing import Any

import numpy as np

from .._budget import MemoryBudgetError, format_bytes, parse_budget
from .._interrupt import call_interruptibly
from .._schedule import Schedule, plain_pool_quanta
from ._choose import POLICIES, _TooLarge, _TooSmall, plan_quanta
from ._closed import _fixed_pool, _sqrt_segment

__all__ = ["plan"]


def _too_large_error(T: int, exc: _TooLarge) -> MemoryError:
    what = f"{exc.table} and the schedule" if exc.table else "the schedule"
    need = (f"more than {format_bytes(exc.available)} ({what})" if exc.need is None
            else f"up to {format_bytes(exc.need)} ({exc.need} bytes; {what})")
    return MemoryError(
        f"plan: T={T} needs {need} to plan, but this "
        f"process can get {format_bytes(exc.available)}; plan fewer steps (train on windows with truncate=, or "
        "run a long sequence in pieces with final_state) or with a smaller budget")


def _check_T(T: Any) -> int:
    if isinstance(T, bool) or not isinstance(T, (int, np.integer)):
        raise TypeError(f"plan: T={T!r} must be a positive int (the number of time steps)")
    if T < 1:
        raise ValueError(f"plan: T={T} must be a positive int (the number of time steps)")
    return int(T)


def _check_time_model(name: str, value: Any, what: str) -> None:
    """A number of the time model (b/f, byte cost): None, or finite and >= 0."""
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise TypeError(f"plan: {name}={value!r} must be a number ({what})")
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"plan: {name}={value!r} must be a finite number >= 0 ({what})")


def _quanta_from_alpha(alpha: float) -> tuple[int, int]:
    frac = Fraction(alpha).limit_denominator(64)
    if frac <= 0:
        raise ValueError(f"plan: alpha={alpha!r} rounds to 0 as a ratio p/q with q <= 64, the planner's unit; "
                         "give alpha >= 1/64")
    if abs(float(frac) - alpha) > 1e-9 * max(1.0, alpha):
        raise ValueError(f"plan: alpha={alpha!r} is not a ratio p/q with q <= 64; round it (e.g. alpha={float(frac):g})")
    return frac.denominator, frac.numerator


def plan(T: int, *, budget: Any = None, model: Any = None, batch: int | None = None, dtype: Any = None,
         policy: str = "msm", slots: float | None = None, alpha: float | None = None,
         backward_forward_ratio: float | None = None, byte_cost: float | None = None) -> Schedule:
    """The schedule with the fewest forward steps that fits the budget.

    With ``model`` (a :class:`memopt_bptt.Sequence`) and ``batch``, ``budget``
    is bytes (int), a string like "64MiB", or a fraction in (0, 1] of what
    plain BPTT (policy "full") keeps for this T, batch and dtype; working
    buffers and the initial state are paid from it first. Without a model,
    plan in the abstract model: ``slots`` memory units of one hidden state
    (counting the initial state's slot) and ``alpha`` = internal/hidden size;
    ``budget`` may then only be a fraction.

    Example::

        s = mb.plan(1000, budget="4MiB", model=model, batch=16)
        s = mb.plan(10, slots=3, policy="hsm")        # s.forward_steps == 25
        s = mb.plan(100, slots=10, alpha=3.5)         # MSM in the abstract model

    ``backward_forward_ratio`` (b/f) and ``byte_cost`` (with a model: what
    one byte of checkpoint pool costs in forward steps) only feed the
    predicted :attr:`Schedule.time_ratio`; :func:`memopt_bptt.measure_step_times`
    and :func:`memopt_bptt.measure_byte_cost` measure them. The schedule
    itself minimises forward steps.

    Raises :class:`memopt_bptt.MemoryBudgetError` (a ValueError) when the
    budget is below the least that works; its message gives that least.
    """
    # The tables and Numba's first compile run on a worker thread, so Ctrl-C reaches the caller at once.
    return call_interruptibly(_plan, T, budget=budget, model=model, batch=batch, dtype=dtype, policy=policy,
                              slots=slots, alpha=alpha, backward_forward_ratio=backward_forward_ratio,
                              byte_cost=byte_cost)


def _plan(T: int, *, budget: Any = None, model: Any = None, batch: int | None = None, dtype: Any = None,
          policy: str = "msm", slots: float | None = None, alpha: float | None = None,
          backward_forward_ratio: float | None = None, byte_cost: float | None = None) -> Schedule:
    """plan, on the calling thread."""
    T = _check_T(T)
    if policy not in POLICIES:
        raise ValueError(f"plan: policy={policy!r} is not known; use one of {', '.join(POLICIES)}")
    _check_time_model("backward_forward_ratio", backward_forward_ratio,
                      "a backward step's time over a forward step's; mb.measure_step_times measures it")
    _check_time_model("byte_cost", byte_cost,
                      "forward steps per checkpoint byte; mb.measure_byte_cost measures it")
    if model is not None:
        return _plan_for_model(T, budget=budget, model=model, batch=batch, dtype=dtype, policy=policy,
                               slots=slots, alpha=alpha, rho=backward_forward_ratio, byte_cost=byte_cost)
    if byte_cost is not None:
        raise ValueError("plan: byte_cost= prices checkpoint bytes, which needs model= and batch=")
    if batch is not None or dtype is not None:
        raise ValueError("plan: batch= and dtype= size a model's states; pass model= too, or plan with slots=/alpha=")
    if alpha is None:
        if policy in ("hsm", "revolve"):
            alpha = 1.0
        else:
            raise ValueError(f"plan: policy={policy!r} in the abstract model needs alpha= "
                             "(internal-state size over hidden-state size, e.g. alpha=3.5 for an LSTM)")
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not math.isfinite(alpha) or alpha <= 0:
        raise ValueError(f"plan: alpha={alpha!r} must be a positive number")
    hq, kq = _quanta_from_alpha(float(alpha))
    full_units = 1 + (T - 1) * float(alpha)
    if slots is not None and budget is not None:
        raise ValueError("plan: give either slots= (units) or budget= (a fraction), not both")
    if slots is None and budget is None:
        raise ValueError("plan: give a memory budget: slots= (hidden-state units) or budget= with model=")
    if budget is not None:
        kind, value = parse_budget(budget)
        if kind == "bytes":
            raise ValueError(f"plan: budget={budget!r} is in bytes, which needs model= and batch=; "
                             "in the abstract model use slots= or a fraction")
        units = value * full_units
    else:
        if isinstance(slots, bool) or not isinstance(slots, (int, float)) or not math.isfinite(slots):
            raise TypeError(f"plan: slots={slots!r} must be a number of hidden-state units")
        units = float(slots)
    least_units = 1.0
    if policy in ("full", "sqrt"):
        least_units = _fixed_pool(T, hq, kq, policy, _sqrt_segment(T)) / hq
    if units < least_units:
        raise MemoryBudgetError(
            f"plan: a budget of {units:g} units is below the least that works for T={T} with "
            f"policy={policy!r}: {least_units:g} units", least_units=least_units)
    free = int(math.floor((units - 1) * hq + 1e-9))
    try:
        codes, forwards, pool = plan_quanta(T, free, hq, kq, policy)
    except _TooLarge as exc:
        raise _too_large_error(T, exc) from None
    except _TooSmall as exc:
        least = exc.need / hq
        raise MemoryBudgetError(f"plan: policy={policy!r} needs at least {least:g} units for T={T}; "
                                f"the budget gives {units:g}", least_units=least) from None
    rho = 2.0 if backward_forward_ratio is None else float(backward_forward_ratio)
    return Schedule(T=T, policy=policy, codes=codes, hidden_quanta=hq, internal_quanta=kq, pool_quanta=pool,
                    forward_steps=int(forwards), backward_forward_ratio=rho, budget_units=units,
                    description=f"abstract model, alpha={alpha:g}")


def _plan_for_model(T, *, budget, model, batch, dtype, policy, slots, alpha, rho, byte_cost) -> Schedule:
    if slots is not None or alpha is not None:
        raise ValueError("plan: slots= and alpha= are for the abstract model; with model= give budget=")
    if batch is None:
        raise ValueError("plan: model= needs batch= (the batch size) to size its states in bytes")
    if budget is None:
        raise ValueError("plan: give budget= (bytes, e.g. '64MiB', or a fraction of plain BPTT's memory)")
    sizes = model.sizes(batch=batch, dtype=dtype)
    _, hq, kq = sizes.quantum
    quantum_bytes = sizes.quantum_bytes
    working = sizes.working_bytes
    full_bytes = working + plain_pool_quanta(T, hq, kq) * quantum_bytes
    kind, value = parse_budget(budget)
    budget_bytes = int(math.floor(value * full_bytes)) if kind == "fraction" else int(value)
    least_pool, pool_what = hq, "initial state"
    if policy in ("full", "sqrt"):
        least_pool = _fixed_pool(T, hq, kq, policy, _sqrt_segment(T))
        pool_what = f"the checkpoints policy={policy!r} keeps"
    least_any = working + least_pool * quantum_bytes
    if budget_bytes < least_any:
        # the model may say which of its settings the working buffers grow with
        split_note = getattr(model, "split_note", None)
        note = split_note(sizes) if split_note is not None else ""
        raise MemoryBudgetError(
            f"plan: budget={budget!r} ({budget_bytes} bytes) is below the least that works for T={T}, "
            f"batch={sizes.batch}: {least_any} bytes (working buffers {working} + {pool_what} "
            f"{least_pool * quantum_bytes}){note}", least_bytes=least_any)
    free = (budget_bytes - working - hq * quantum_bytes) // quantum_bytes
    try:
        codes, forwards, pool = plan_quanta(T, free, hq, kq, policy)
    except _TooLarge as exc:
        raise _too_large_error(T, exc) from None
    except _TooSmall as exc:
        least = working + exc.need * quantum_bytes
        raise MemoryBudgetError(
            f"plan: budget={budget!r} ({budget_bytes} bytes) is below what policy={policy!r} needs for T={T}: "
            f"{least} bytes", least_bytes=least) from None
    rho = model.backward_forward_ratio if rho is None else float(rho)
    return Schedule(T=T, policy=policy, codes=codes, hidden_quanta=hq, internal_quanta=kq, pool_quanta=pool,
                    forward_steps=int(forwards), backward_forward_ratio=rho, quantum_bytes=quantum_bytes,
                    working_bytes=working, budget_bytes=budget_bytes,
                    description=f"{model.describe()}, batch={sizes.batch}, {sizes.dtype}",
                    byte_cost=0.0 if byte_cost is None else byte_cost)
