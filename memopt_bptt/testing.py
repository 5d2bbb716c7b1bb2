"""Test helpers that ship with the library: a gradient checker, a schedule replay, the least budget.

Three tools for checking your own cells, schedules and budgets, in the spirit
of autograd's ``check_grads`` and pyrevolve's counting operators:

* :func:`check_grads` compares :func:`memopt_bptt.value_and_grad`'s gradients
  (under any budget and policy) with central finite differences of the loss,
  on a random subset of the entries of every parameter (and of dL/dh0).
* :func:`replay_schedule` replays a :class:`memopt_bptt.Schedule` in plain
  Python with counting doubles in place of a network, checks that it reverses
  every step exactly once in order T..1 from the right states within its pool,
  and returns what it counted. It shares no code with ``Schedule.validate()``,
  so it can serve as an oracle for it and for the planner's cost model.
* :func:`least_budget` is the least byte budget for which
  :func:`memopt_bptt.plan` succeeds, found and checked at the boundary.

Examples::

    import numpy as np
    import memopt_bptt as mb
    from memopt_bptt.testing import check_grads, least_budget, replay_schedule

    model = mb.Sequence(mb.GRU(input_size=3, hidden_size=4), output_size=2)
    params = model.init_params(seed=0)
    rng = np.random.default_rng(0)
    xs, ys = rng.standard_normal((12, 2, 3)), rng.standard_normal((12, 2, 2))

    least = least_budget(model, T=12, batch=2)          # bytes
    print(check_grads(model, params, xs, ys, budget=least))

    schedule = mb.plan(12, budget=least, model=model, batch=2)
    counts = replay_schedule(schedule)
    assert counts.forward_steps == schedule.forward_steps and counts.reversals == 12

Finite differences need float64: :func:`check_grads` raises TypeError for
float32 parameters or inputs (cast with ``{k: v.astype(np.float64) ...}``).
"""

from __future__ import annotations

import math
import numbers
from typing import Any, NamedTuple

import numpy as np

# the public API only (as a user's test would), so the package's internal layout can change freely
from . import POLICIES, MemoryBudgetError, Schedule, Sequence, plan, value_and_grad
from ._actions import OPS, WORKING

__all__ = [
    "GradCheck",
    "Replay",
    "check_grads",
    "least_budget",
    "replay_schedule",
]


# ---- check_grads ---------------------------------------------------------------------------------

class GradCheck(NamedTuple):
    """What :func:`check_grads` checked: the loss, and per array (``"h0"`` for dL/dh0) the number of
    entries compared, the largest |analytic - numeric| and the largest relative error
    |analytic - numeric| / max(|analytic|, |numeric|). (Entries near zero pass through ``atol``: their
    relative error can be large while the absolute one is at the finite differences' rounding.)"""

    loss: float
    n_checked: dict[str, int]
    max_abs_error: dict[str, float]
    max_rel_error: dict[str, float]

    def __str__(self) -> str:
        width = max((len(k) for k in self.max_rel_error), default=4)
        lines = [f"loss {self.loss:.12g}"]
        lines += [f"{name:<{width}}  {self.n_checked[name]:4d} entries  max |difference| "
                  f"{self.max_abs_error[name]:.2e}  max relative {err:.2e}"
                  for name, err in self.max_rel_error.items()]
        return "\n".join(lines)


def _positive_float(value: Any, name: str, *, allow_zero: bool) -> float:
    ok = isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(float(value))
    if not ok or float(value) < 0 or (float(value) == 0 and not allow_zero):
        bound = ">= 0" if allow_zero else "> 0"
        raise ValueError(f"check_grads: {name}={value!r} must be a finite number {bound}")
    return float(value)


def _require_float64(array: Any, name: str) -> None:
    if isinstance(array, np.ndarray) and array.dtype != np.float64:
        raise TypeError(f"check_grads: {name} is {array.dtype}; finite differences need float64 "
                        "(float32 rounding swamps the difference quotient): cast it with .astype(np.float64)")


def check_grads(model: Sequence, params: dict, xs: np.ndarray, ys: np.ndarray, *, budget: Any = None,
                policy: str | None = None, h0: np.ndarray | None = None, check_h0: bool = False,
                eps: float = 1e-6, rtol: float = 1e-5, atol: float = 1e-7, n_checks: int | None = 5,
                seed: int = 0) -> GradCheck:
    """Check ``mb.value_and_grad``'s gradients against central finite differences of its loss.

    The analytic gradients come from ``value_and_grad(model, params, xs, ys,
    budget=budget, policy=policy, h0=h0)``; each checked entry x is compared
    with ``(L(x + eps) - L(x - eps)) / (2 eps)``, where L is the loss that
    ``value_and_grad`` itself returns under plain BPTT (policy "full"), as
    autograd's ``check_grads`` differentiates the function under test. An
    entry passes when ``|analytic - numeric| <= atol + rtol * |numeric|``.

    ``n_checks`` entries of every parameter are drawn at random without
    replacement (``seed``); ``None`` checks every entry. ``check_h0=True``
    also checks dL/dh0 (at ``h0``, or at zeros of ``model.state_shape(batch)``).
    Parameters, ``xs``, float ``ys`` and ``h0`` must be float64 (TypeError
    otherwise). A ReLU kink within ``eps`` of an entry breaks the difference
    quotient: use tanh cells or a smaller ``eps`` there.

    Raises AssertionError naming the array, the index and both values at the
    first entry out of tolerance; otherwise returns a :class:`GradCheck`
    (print it for a per-parameter table).

    Example::

        result = check_grads(model, params, xs, ys, budget=0.2, policy="msm")
        print(result)            # loss, then per parameter: entries checked, largest differences
    """
    if not isinstance(model, Sequence):
        raise TypeError(f"check_grads: model must be a memopt_bptt.Sequence, got {type(model).__name__}")
    model.check_params(params, where="check_grads")
    for name, a in params.items():
        _require_float64(a, f"params[{name!r}]")
    _require_float64(xs, "xs")
    if isinstance(ys, np.ndarray) and np.issubdtype(ys.dtype, np.floating):
        _require_float64(ys, "ys")
    _require_float64(h0, "h0")
    model.check_data(xs, ys, np.dtype(np.float64), where="check_grads", h0=h0)
    eps = _positive_float(eps, "eps", allow_zero=False)
    rtol = _positive_float(rtol, "rtol", allow_zero=True)
    atol = _positive_float(atol, "atol", allow_zero=True)
    if n_checks is not None and (isinstance(n_checks, bool) or not isinstance(n_checks, numbers.Integral)
                                 or n_checks < 1):
        raise ValueError(f"check_grads: n_checks={n_checks!r} must be an int >= 1, or None for every entry")
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral):
        raise TypeError(f"check_grads: seed={seed!r} must be an int")
    if not isinstance(check_h0, bool):
        raise TypeError(f"check_grads: check_h0={check_h0!r} must be True or False")

    if check_h0 and h0 is None:
        h0 = np.zeros(model.state_shape(xs.shape[1]), np.float64)
    loss, grads, *h0_grad = value_and_grad(model, params, xs, ys, budget=budget, policy=policy, h0=h0,
                                           return_h0_grad=check_h0)
    # private copies: entries are perturbed in place, one at a time
    point = {name: np.array(a, dtype=np.float64) for name, a in params.items()}
    state = None if h0 is None else np.array(h0, dtype=np.float64)

    def numeric_loss() -> float:
        return value_and_grad(model, point, xs, ys, h0=state)[0]

    targets = [(name, point[name], grads[name]) for name in point]
    if check_h0:
        targets.append(("h0", state, h0_grad[0]))
    rng = np.random.default_rng(int(seed))
    n_checked: dict[str, int] = {}
    max_abs: dict[str, float] = {}
    max_rel: dict[str, float] = {}
    for name, array, analytic in targets:
        flat = array.reshape(-1)  # a view: writes perturb the array value_and_grad reads
        count = flat.size if n_checks is None else min(int(n_checks), flat.size)
        picks = np.sort(rng.choice(flat.size, size=count, replace=False)) if count < flat.size \
            else np.arange(flat.size)
        worst = worst_abs = 0.0
        for k in picks.tolist():
            keep = flat[k]
            flat[k] = keep + eps
            up = numeric_loss()
            flat[k] = keep - eps
            down = numeric_loss()
            flat[k] = keep
            numeric = (up - down) / (2.0 * eps)
            index = tuple(int(i) for i in np.unravel_index(k, array.shape))
            got = float(analytic[index])
            if not abs(got - numeric) <= atol + rtol * abs(numeric):
                what = "dL/dh0" if name == "h0" else f"gradient of {name!r}"
                raise AssertionError(
                    f"check_grads: {what} at index {index}: value_and_grad gives {got!r}, central "
                    f"differences (eps={eps:g}) give {numeric!r}; |difference| {abs(got - numeric):.3e} > "
                    f"atol + rtol*|numeric| = {atol + rtol * abs(numeric):.3e} "
                    f"(budget={budget!r}, policy={policy!r})")
            scale = max(abs(got), abs(numeric))
            worst = max(worst, abs(got - numeric) / scale if scale > 0 else 0.0)
            worst_abs = max(worst_abs, abs(got - numeric))
        n_checked[name] = len(picks)
        max_abs[name] = worst_abs
        max_rel[name] = worst
    return GradCheck(float(loss), n_checked, max_abs, max_rel)


# ---- replay_schedule -----------------------------------------------------------------------------

class Replay(NamedTuple):
    """What :func:`replay_schedule` counted.

    ``forward_steps`` every forward step run (advance, keep), ``keeps`` /
    ``working_keeps`` forwards whose internal state went to the pool / the
    working buffer, ``reversals`` backward steps, ``takeshots`` and
    ``restores`` hidden-state checkpoints written and read,
    ``internal_restores`` states rebuilt from a kept internal state;
    ``peak_quanta`` the most pool quanta held by live checkpoints at once (the
    initial state included), ``peak_hidden`` / ``peak_internal`` the most
    live checkpoints of each kind at once.
    """

    forward_steps: int
    keeps: int
    working_keeps: int
    reversals: int
    takeshots: int
    restores: int
    internal_restores: int
    peak_quanta: int
    peak_hidden: int
    peak_internal: int


class _Checkpoint(NamedTuple):
    kind: str      # "hidden" (a state s_p) or "internal" (I_p, which also rebuilds s_p)
    position: int
    offset: int
    size: int


def replay_schedule(schedule: Schedule) -> Replay:
    """Replay a schedule in plain Python with counting doubles; return the counts.

    The doubles stand in for a network: the current state is the position it
    was computed for, a forward step turns position p - 1 into p, and a
    checkpoint records the kind and position it holds and the pool quanta it
    covers. A write over any quantum of a live checkpoint destroys it.
    Raises AssertionError, naming the action, if the schedule

    * steps forward from a position other than the current one, or past T;
    * takes a snapshot of a position other than the current one;
    * restores from a slot that does not hold that position's state intact;
    * reverses a step out of the order T, T-1, ..., 1, or without its own
      internal state (a working-buffer reversal must immediately follow the
      ``keep`` of that step), or leaves a step unreversed;
    * writes outside ``schedule.pool_quanta``;
    * runs a number of forward steps other than ``schedule.forward_steps``.

    Independent of :meth:`memopt_bptt.Schedule.validate`, which it does not
    call. Pure Python: fine for tests up to some 10^5 actions.

    Example::

        r = replay_schedule(mb.plan(10, slots=3, policy="hsm"))
        r.forward_steps, r.peak_hidden      # (25, 3)
    """
    if not isinstance(schedule, Schedule):
        raise TypeError(f"replay_schedule: schedule must be a memopt_bptt.Schedule, got {type(schedule).__name__}")
    T = schedule.T
    pool = schedule.pool_quanta
    size_of = {"hidden": schedule.hidden_quanta, "internal": schedule.internal_quanta}
    quanta: list[_Checkpoint | None] = [None] * pool  # which live checkpoint covers each quantum
    live: set[_Checkpoint] = set()
    counts = dict.fromkeys(("forward_steps", "keeps", "working_keeps", "reversals", "takeshots",
                            "restores", "internal_restores"), 0)
    peak = {"quanta": 0, "hidden": 0, "internal": 0}
    current = 0           # position of the state the forward sweep holds
    just_kept = None      # step whose internal state sits in the working buffer, valid for one action
    expected = T          # next step to reverse

    def fail(i: int, action: Any, why: str) -> None:
        raise AssertionError(f"replay_schedule: action {i} ({action}): {why}")

    def store(i: int, action: Any, kind: str, position: int, offset: int) -> None:
        size = size_of[kind]
        if offset < 0 or offset + size > pool:
            fail(i, action, f"{kind} checkpoint at quanta {offset}..{offset + size - 1} is outside "
                            f"the pool of {pool} quanta")
        for q in range(offset, offset + size):
            old = quanta[q]
            if old is not None and old in live:
                live.discard(old)
                for r in range(old.offset, old.offset + old.size):
                    quanta[r] = None
        new = _Checkpoint(kind, position, offset, size)
        for q in range(offset, offset + size):
            quanta[q] = new
        live.add(new)
        used = sum(c.size for c in live)
        peak["quanta"] = max(peak["quanta"], used)
        peak[kind] = max(peak[kind], sum(1 for c in live if c.kind == kind))

    def fetch(i: int, action: Any, kind: str, position: int, offset: int) -> None:
        held = quanta[offset] if 0 <= offset < pool else None
        if held is None or held.offset != offset or held.kind != kind or held.position != position:
            found = "nothing" if held is None else f"{held.kind} state of position {held.position} at {held.offset}"
            fail(i, action, f"slot {offset} should hold the {kind} state of position {position}, holds {found}")

    for i, (code, step, slot) in enumerate(schedule.codes.tolist()):
        op = OPS[code] if 0 <= code < len(OPS) else f"op code {code}"
        action = f"{op} {step} @ {slot}"
        working = just_kept
        just_kept = None
        if op == "advance":
            if not current < step <= T:
                fail(i, action, f"advance from position {current} to {step} (T={T})")
            counts["forward_steps"] += step - current
            current = step
        elif op == "keep":
            if step != current + 1 or step > T:
                fail(i, action, f"keep of step {step} from position {current} (T={T})")
            counts["forward_steps"] += 1
            current = step
            if slot == WORKING:
                counts["working_keeps"] += 1
                just_kept = step
            else:
                counts["keeps"] += 1
                store(i, action, "internal", step, slot)
        elif op == "takeshot":
            if step != current:
                fail(i, action, f"snapshot of position {step} while the current state is position {current}")
            counts["takeshots"] += 1
            store(i, action, "hidden", step, slot)
        elif op == "restore":
            fetch(i, action, "hidden", step, slot)
            counts["restores"] += 1
            current = step
        elif op == "restore_internal":
            fetch(i, action, "internal", step, slot)
            counts["internal_restores"] += 1
            current = step
        elif op == "reverse":
            if step != expected:
                fail(i, action, f"reversal of step {step}, but the next step to reverse is {expected}")
            if slot == WORKING:
                if working != step:
                    fail(i, action, f"reversal of step {step} from the working buffer, which does not hold "
                                    "its internal state (the keep must come just before)")
            else:
                fetch(i, action, "internal", step, slot)
            counts["reversals"] += 1
            expected -= 1
        else:
            fail(i, action, "unknown op")
    if expected != 0:
        raise AssertionError(f"replay_schedule: steps {expected}..1 are never reversed (T={T})")
    if counts["forward_steps"] != schedule.forward_steps:
        raise AssertionError(f"replay_schedule: the actions run {counts['forward_steps']} forward steps, "
                             f"the schedule says forward_steps={schedule.forward_steps}")
    return Replay(peak_quanta=peak["quanta"], peak_hidden=peak["hidden"], peak_internal=peak["internal"],
                  **counts)


# ---- least_budget --------------------------------------------------------------------------------

def least_budget(model: Sequence, *, T: int, batch: int, policy: str = "msm", dtype: Any = "float64") -> int:
    """The least byte budget for which ``mb.plan(T, budget=..., model=model, batch=batch, ...)`` succeeds.

    Starts from :attr:`memopt_bptt.MemoryBudgetError.least_bytes` of a
    1-byte request, confirms that the plan at that budget succeeds and one
    byte less fails, and falls back to a bisection if the error's figure
    were ever off; so the result is the boundary whatever the error says.
    Policies "full" and "sqrt" need a fixed amount, the others a least
    amount (working buffers, the initial state and, for some, one internal
    state) below which no schedule exists.

    Example::

        least = least_budget(model, T=1000, batch=16, dtype="float32")
        mb.plan(1000, budget=least, model=model, batch=16, dtype="float32")        # fits
        mb.plan(1000, budget=least - 1, model=model, batch=16, dtype="float32")    # MemoryBudgetError
    """
    if not isinstance(model, Sequence):
        raise TypeError(f"least_budget: model must be a memopt_bptt.Sequence, got {type(model).__name__}")
    for name, value in (("T", T), ("batch", batch)):
        if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
            raise ValueError(f"least_budget: {name}={value!r} must be an int >= 1")
    if policy not in POLICIES:
        raise ValueError(f"least_budget: policy={policy!r} is not known; use one of {', '.join(POLICIES)}")

    def error_at(budget: int) -> MemoryBudgetError | None:
        try:
            plan(int(T), budget=budget, model=model, batch=int(batch), policy=policy, dtype=dtype)
        except MemoryBudgetError as exc:
            return exc
        return None

    failing, budget = 0, 1      # 0 stands for "no failing budget known"
    while (exc := error_at(budget)) is not None:
        failing = budget
        hint = exc.least_bytes
        budget = hint if isinstance(hint, int) and hint > budget else 2 * budget
    # budget fits; the least fitting budget is in (failing, budget]
    if budget - 1 > failing and error_at(budget - 1) is None:
        fits = budget - 1
        while fits - failing > 1:
            mid = (failing + fits) // 2
            if error_at(mid) is None:
                fits = mid
            else:
                failing = mid
        budget = fits
    return budget
