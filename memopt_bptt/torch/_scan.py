"""scan_loss: a recurrent step over a sequence under a memory budget, as one autograd Function."""

from __future__ import annotations

import dataclasses
import functools
import math
import re
from typing import Any, Callable, Iterable, NamedTuple

import torch
from torch.autograd.function import once_differentiable

from .. import POLICIES, MemoryBudgetError, Schedule, format_bytes, parse_budget, plan
from ._context import Autocast, Generators, RngState
from ._graph import find_params, sequence_mark, stops_of
from ._memory import Tracker, distinct_bytes, held_bytes, storage_key
from ._state import StateSpec, describe
from ._step import Kept, Problem, keep_step, record_loss, run_step
from ._sweep import Sweep

__all__ = ["ScanStats", "scan_loss"]

REDUCTIONS = ("mean", "sum", "none")
WORKING_STATES = 3
"""States the sweep holds beside its checkpoints: the current one, dL/ds_t and dL/ds_{t-1}."""


@dataclasses.dataclass
class ScanStats:
    """What one :func:`scan_loss` call measured and did; pass ``stats=ScanStats()`` to have it filled in.

    Sizes are known once the call returns; the counts and the tracked peak
    are final once ``backward`` has run. Passing ``stats`` also turns on
    memory tracking (a saved-tensor hook on every kept step), which costs a
    little time.

    * ``state_bytes``: one state held (state0's tensors: data rounded to the
      allocator's 64 bytes, and a tensor header each); ``rng_bytes``: the
      generators' state every checkpoint carries (0 when neither step nor
      loss_fn draws random numbers);
    * ``hidden_bytes`` = state + rng: one hidden-state checkpoint;
    * ``internal_bytes``: one kept step, measured on step 1: the distinct
      storages autograd saved for the step and its loss, its output state and
      loss (parameters, ``xs`` and ``targets`` left out: they are held
      anyway), the graph's host-memory metadata (its nodes and saved-tensor
      records, see ``memopt_bptt/torch/_memory.py``), plus rng;
    * ``working_bytes``: a kept step and three states (the current state,
      dL/ds_t and dL/ds_{t-1}), paid from the budget before any checkpoint;
    * ``budget_bytes``: the budget in bytes; ``schedule`` the plan;
    * ``forward_steps``: calls of ``step`` (the first pass and the replays:
      ``schedule.forward_steps``); ``reversals``: steps reversed (T);
      ``engine_calls``: autograd engine runs that reversed them (one per run
      of consecutive reversals of steps kept one after the other);
    * ``peak_bytes``: the most bytes held at once by checkpoints, kept graphs
      (saved tensors and metadata), the current state and the state
      gradients, each storage counted once, after every action (a kept graph
      counted whole until its reversal ends); ``largest_internal_bytes``: the
      largest kept step seen, to check that step 1 was representative.
    """

    T: int = 0
    state_bytes: int = 0
    rng_bytes: int = 0
    hidden_bytes: int = 0
    internal_bytes: int = 0
    working_bytes: int = 0
    budget_bytes: int = 0
    schedule: Schedule | None = None
    forward_steps: int = 0
    reversals: int = 0
    engine_calls: int = 0
    peak_bytes: int = 0
    largest_internal_bytes: int = 0


class _Scan(torch.autograd.Function):
    """Inputs: the sweep, then state0's tensors, xs, targets and the parameters; output: the T losses."""

    @staticmethod
    def forward(ctx: Any, sweep: Sweep, stats: ScanStats | None, *inputs: torch.Tensor) -> torch.Tensor:
        ctx.sweep, ctx.stats = sweep, stats
        ctx.inputs = [(t, t._version) for t in inputs]
        losses = sweep.forward()
        _report(sweep, stats)
        return losses

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad_losses: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        sweep = ctx.sweep
        for i, (t, version) in enumerate(ctx.inputs):
            if t._version != version:
                raise RuntimeError(f"scan_loss: input {i} of the scan (state0's tensors, xs, targets, then the "
                                   f"parameters: {describe(t)}) was modified in place between the forward "
                                   "and the backward; the gradients would be wrong")
        grads = sweep.backward(grad_losses)
        _report(sweep, ctx.stats)
        needs = ctx.needs_input_grad[2:]
        return (None, None, *(g if need else None for g, need in zip(grads, needs)))


def _report(sweep: Sweep, stats: ScanStats | None) -> None:
    if stats is not None:
        stats.forward_steps = sweep.forward_steps
        stats.reversals = sweep.reversals
        stats.engine_calls = sweep.engine_calls
        stats.peak_bytes = sweep.peak_bytes
        stats.largest_internal_bytes = sweep.largest_kept_bytes


# ---- planning ------------------------------------------------------------------------------------

ROUNDING = 0.02
"""A kept step is planned at most this much above its measured size, where the quanta allow."""


def _quanta(hidden_bytes: int, internal_bytes: int) -> tuple[int, int, int]:
    """(hq, kq, quantum bytes): a hidden state is hq quanta exactly, a kept step kq quanta rounded up.

    The planner's tables grow with the quanta per hidden state, and it reads
    alpha = kq/hq with a denominator of at most 64: so the fewest quanta (a
    divisor of the hidden state's bytes up to 64) that round a kept step up
    by at most ``ROUNDING``, else the most.
    """
    for divisor in (d for d in range(1, 65) if hidden_bytes % d == 0):
        quantum = hidden_bytes // divisor
        k = -(-internal_bytes // quantum)
        if k * quantum <= internal_bytes * (1 + ROUNDING):
            break
    g = math.gcd(divisor, k)
    return divisor // g, k // g, quantum * g


def _abstract_plan(T: int, free_quanta: int, hq: int, kq: int, policy: str) -> Schedule:
    # slots counts the initial state's unit; (slots - 1) * hq gives free_quanta back exactly
    return plan(T, slots=1 + free_quanta / hq, alpha=kq / hq, policy=policy)


@functools.lru_cache(maxsize=16)
def _plan(T: int, *, state_bytes: int, hidden_bytes: int, internal_bytes: int, budget: Any, policy: str,
          description: str) -> Schedule:
    """The schedule for these sizes and budget in bytes. Cached: a training loop's calls share one
    schedule (its actions are O(T) and copied into every new Schedule)."""
    hq, kq, quantum = _quanta(hidden_bytes, internal_bytes)
    working = kq * quantum + WORKING_STATES * state_bytes
    initial = hq * quantum
    kind, value = parse_budget(budget, name="scan_loss: budget")
    full = working + initial + (T - 1) * kq * quantum
    budget_bytes = int(math.floor(value * full)) if kind == "fraction" else int(value)
    sizes = (f"one kept step {internal_bytes} + {WORKING_STATES} states for the sweep "
             f"{WORKING_STATES * state_bytes} + the initial state {initial}; sizes measured on step 1")
    if budget_bytes < working + initial:
        least = working + initial
        raise MemoryBudgetError(
            f"scan_loss: budget={budget!r} ({budget_bytes} bytes) is below the least that works for T={T}: "
            f"{least} bytes ({format_bytes(least)}: {sizes})", least_bytes=least)
    try:
        abstract = _abstract_plan(T, (budget_bytes - working - initial) // quantum, hq, kq, policy)
    except MemoryBudgetError as exc:
        least = working + round(exc.least_units * hq) * quantum
        raise MemoryBudgetError(
            f"scan_loss: budget={budget!r} ({budget_bytes} bytes) is below what policy={policy!r} needs for "
            f"T={T}: {least} bytes ({format_bytes(least)}; a fixed checkpoint pool plus {working} working: "
            f"{sizes})", least_bytes=least) from None
    if (abstract.hidden_quanta, abstract.internal_quanta) != (hq, kq):
        raise RuntimeError(f"scan_loss: planned with alpha={abstract.alpha} instead of {kq}/{hq} (a bug)")
    return dataclasses.replace(abstract, quantum_bytes=quantum, working_bytes=working, budget_bytes=budget_bytes,
                               budget_units=None, description=description)


# ---- checking the arguments ----------------------------------------------------------------------

_HAS_UNIT = re.compile(r"[A-Za-z%]\s*$")


def _check_budget(budget: Any) -> None:
    if isinstance(budget, str) and not _HAS_UNIT.search(budget):
        raise ValueError(f"scan_loss: budget={budget!r} has no unit; write bytes with one, e.g. "
                         f"'{budget.strip()}B', '64MiB', '1GB', or a share of the plain loop's memory, '5%'")
    parse_budget(budget, name="scan_loss: budget")


def _check_sequences(xs: Any, targets: Any) -> int:
    for name, value in (("xs", xs), ("targets", targets)):
        if not isinstance(value, torch.Tensor):
            raise TypeError(f"scan_loss: {name} is {describe(value)}; it must be a tensor whose first dimension "
                            "is time (T, ...)")
        if value.dim() < 1 or value.shape[0] < 1:
            raise ValueError(f"scan_loss: {name} has shape {tuple(value.shape)}; its first dimension is time "
                             "and must be at least 1")
    if xs.shape[0] != targets.shape[0]:
        raise ValueError(f"scan_loss: xs has {xs.shape[0]} time steps (shape {tuple(xs.shape)}) but targets has "
                         f"{targets.shape[0]} (shape {tuple(targets.shape)}); both are indexed by time first")
    return int(xs.shape[0])


def _check_params(params: Iterable[torch.Tensor] | None) -> tuple[torch.Tensor, ...]:
    if params is None:
        return ()
    if isinstance(params, torch.Tensor):
        params = (params,)
    try:
        found = tuple(params)
    except TypeError:
        raise TypeError(f"scan_loss: params={params!r} must be an iterable of tensors") from None
    for p in found:
        if not isinstance(p, torch.Tensor):
            raise TypeError(f"scan_loss: params= holds {describe(p)}; list tensors that require grad")
        if not p.requires_grad:
            raise ValueError(f"scan_loss: params= holds {describe(p)} that does not require grad; list only "
                             "tensors that require grad (leaves such as parameters are found without params=)")
    return found


def _check_flag(value: Any, name: str) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"scan_loss: {name}={value!r} must be True or False")
    return value


# ---- the entry point -----------------------------------------------------------------------------

def scan_loss(step: Callable[..., Any], loss_fn: Callable[..., torch.Tensor], state0: Any,
              xs: torch.Tensor, targets: torch.Tensor, *, budget: Any, policy: str = "msm",
              reduction: str = "mean", return_schedule: bool = False,
              params: Iterable[torch.Tensor] | None = None, preserve_rng_state: bool = True,
              stats: ScanStats | None = None) -> Any:
    """The loss of a recurrent step over a sequence, differentiable within a memory budget.

    Computes, as a plain loop would::

        state = state0
        for t in range(T):
            state = step(xs[t], state)
            losses.append(loss_fn(state, targets[t]))
        loss = torch.stack(losses).mean()       # reduction="mean"; "sum"; "none": the T losses

    but keeps only what the optimal schedule for ``budget`` says (Gruslys et
    al. 2016's BPTT-MSM by default) and replays steps in the backward
    sweep. ``loss.backward()`` (or ``torch.autograd.grad``) gives the
    gradients of every tensor requiring grad that ``step`` and ``loss_fn``
    read (parameters of modules and closures), of ``state0`` and, where they
    require grad, of ``xs`` and ``targets``: the same numbers as the plain
    loop's, bit for bit where autograd sums in the same order (as it does for
    nn.LSTMCell, nn.GRUCell, nn.RNNCell), and the same bits for every policy
    and budget.

    Arguments:

    * ``step(x_t, state) -> state``: any nn.Module or function (``nn.LSTMCell``
      as it is); ``state``, like ``state0``, a tensor or a tuple/list of
      tensors, e.g. ``(h, c)``. It must return new tensors of state0's
      structure, shapes and dtypes.
    * ``loss_fn(state, target_t) -> scalar``: the loss of one step, readout
      included, e.g. ``lambda s, y: F.mse_loss(readout(s[0]), y)``.
    * ``xs``, ``targets``: tensors indexed by time first, ``(T, ...)``.
    * ``budget``: bytes (int), a string with a unit ("512KiB", "64MiB",
      "1GB"), or a share of what the plain loop keeps ("5%" or 0.05). It
      pays, in order: a kept step and three states (working), the initial
      state, then checkpoints. A budget below the least that works raises
      :class:`memopt_bptt.MemoryBudgetError` giving that least in bytes.
    * ``policy``: "msm" (fewest forward steps), "hsm", "ism", "revolve",
      "sqrt" or "full" (the plain loop), as in :func:`memopt_bptt.plan`.
    * ``return_schedule=True``: return ``(loss, schedule)``; ``print(schedule)``
      shows the plan, its forward steps and bytes.
    * ``params``: tensors requiring grad that the step reads but that were
      computed before the call (non-leaves, e.g. a weight transformed once);
      leaves such as parameters are found without it.
    * ``preserve_rng_state``: where the step or loss draws random numbers
      (dropout), every checkpoint carries the generators' state so replays
      draw the same numbers (as ``torch.utils.checkpoint`` does).
    * ``stats``: a :class:`ScanStats` to fill with sizes, counts and the
      tracked peak memory.

    Sizes are measured, not guessed: step 1 runs with grad under
    ``saved_tensors_hooks``, and what autograd saved there is one kept step
    (alpha = kept step / state). The measured step is step 1 of the scan
    (it is not run twice). Without grad mode (``torch.no_grad()``) or with
    nothing to differentiate, the loop runs once and keeps nothing; the
    schedule is then ``None``.

    Example::

        import torch, torch.nn.functional as F
        import memopt_bptt.torch as mbt

        cell, readout = torch.nn.LSTMCell(64, 256), torch.nn.Linear(256, 16)
        xs, ys = torch.randn(1000, 16, 64), torch.randn(1000, 16, 16)
        state0 = (torch.zeros(16, 256), torch.zeros(16, 256))
        loss, schedule = mbt.scan_loss(cell, lambda s, y: F.mse_loss(readout(s[0]), y), state0, xs, ys,
                                       budget="5%", return_schedule=True)
        loss.backward()          # cell.weight_ih.grad, readout.weight.grad, ...
        print(schedule)          # forward steps, bytes, actions
    """
    if not callable(step):
        raise TypeError(f"scan_loss: step is {describe(step)}; it must be callable as step(x_t, state) -> state")
    if not callable(loss_fn):
        raise TypeError(f"scan_loss: loss_fn is {describe(loss_fn)}; it must be callable as "
                        "loss_fn(state, target_t) -> scalar tensor")
    spec = StateSpec.of(state0)
    state = spec.flatten(state0, step=0)
    T = _check_sequences(xs, targets)
    _check_budget(budget)
    if policy not in POLICIES:
        raise ValueError(f"scan_loss: policy={policy!r} is not known; use one of {', '.join(POLICIES)}")
    if reduction not in REDUCTIONS:
        raise ValueError(f"scan_loss: reduction={reduction!r} is not known; use one of {', '.join(REDUCTIONS)}")
    extra = _check_params(params)
    _check_flag(return_schedule, "return_schedule")
    _check_flag(preserve_rng_state, "preserve_rng_state")
    if stats is not None and not isinstance(stats, ScanStats):
        raise TypeError(f"scan_loss: stats={stats!r} must be a memopt_bptt.torch.ScanStats or None")

    grad_on = torch.is_grad_enabled()
    problem = Problem(step, loss_fn, spec, xs, targets, params=(), stops=frozenset(stops_of(extra)),
                      x_grad=grad_on and xs.requires_grad, y_grad=grad_on and targets.requires_grad,
                      generators=Generators.of(state + (xs,)), replay_loss=False, autocast=Autocast.capture())
    if not grad_on:
        return _finish(_without_grad(problem, state, T), reduction, return_schedule, None)

    first = _first_step(problem, state, extra)
    wanted = first.params or any(s.requires_grad for s in state) or problem.x_grad or problem.y_grad
    if not wanted:
        losses = _without_grad(problem, first.kept.state(), T, probe=first.kept)
        return _finish(losses, reduction, return_schedule, None)

    draws = preserve_rng_state and (first.step_draws or first.loss_draws)
    problem = problem._replace(params=first.params, generators=problem.generators if draws else None,
                               replay_loss=draws and first.loss_draws)
    persistent = frozenset(storage_key(t) for t in (xs, targets, *first.params))
    state_bytes = sum(held_bytes(n) for n in spec.data_bytes)
    rng_bytes = sum(held_bytes(t.numel() * t.element_size()) for t in first.kept.rng.tensors) if draws else 0
    kept = first.kept
    kept_bytes = distinct_bytes([*first.saved, *kept.outputs, kept.loss], persistent) + kept.graph_metadata
    name = type(step).__name__ if isinstance(step, torch.nn.Module) else getattr(step, "__name__", "step")
    description = (f"torch scan of {name}: state {format_bytes(state_bytes)}, kept step "
                   f"{format_bytes(kept_bytes)} (measured on step 1, metadata included)"
                   + (f", generators' state {format_bytes(rng_bytes)} per checkpoint" if draws else ""))
    schedule = _plan(T, state_bytes=state_bytes, hidden_bytes=state_bytes + rng_bytes,
                     internal_bytes=kept_bytes + rng_bytes, budget=budget, policy=policy, description=description)
    if stats is not None:
        stats.T, stats.state_bytes, stats.rng_bytes = T, state_bytes, rng_bytes
        stats.hidden_bytes, stats.internal_bytes = state_bytes + rng_bytes, kept_bytes + rng_bytes
        stats.working_bytes, stats.budget_bytes, stats.schedule = (schedule.working_bytes, schedule.budget_bytes,
                                                                   schedule)
    kept = kept._replace(saved=kept.saved if stats is not None else (), rng=kept.rng if draws else None)
    sweep = Sweep(problem, schedule, state0=state, probe=kept, rng0=first.rng0 if draws else None,
                  tracker=None if stats is None else Tracker(persistent), persistent=persistent)
    losses = _Scan.apply(sweep, stats, *state, xs, targets, *first.params)
    return _finish(losses, reduction, return_schedule, schedule)


class _FirstStep(NamedTuple):
    """Step 1 run with grad before planning, and what it showed."""

    kept: Kept                          # the step, kept: the sweep's step 1
    saved: list                         # what autograd saved for it
    params: tuple[torch.Tensor, ...]    # what it differentiates besides the state, x_1, y_1
    rng0: RngState                      # the generators before it
    step_draws: bool                    # step drew random numbers
    loss_draws: bool                    # loss_fn drew random numbers


def _first_step(problem: Problem, state: tuple[torch.Tensor, ...], extra: tuple[torch.Tensor, ...]) -> _FirstStep:
    if problem.autocast.enabled:
        # Autocast caches each weight's cast for the rest of its region: a cast made before the scan would
        # be a node from outside the step (find_params refuses those). Casts are made afresh from here on.
        torch.clear_autocast_cache()
    rng0 = problem.generators.capture()
    mark = sequence_mark()
    saved: list = []
    rng_marks: list = []
    kept = keep_step(problem, 1, state, saved=saved, rng_marks=rng_marks)
    own = [*kept.inputs, *(t for t in (kept.x_leaf, kept.y_leaf) if t is not None)]
    params = find_params([kept.loss, *kept.outputs], own=own, extra=extra, mark=mark)
    return _FirstStep(kept, saved, params, rng0, step_draws=not rng0.same_as(rng_marks[0]),
                      loss_draws=not rng_marks[0].same_as(kept.rng))


def _without_grad(problem: Problem, state: tuple[torch.Tensor, ...], T: int,
                  probe: Kept | None = None) -> torch.Tensor:
    """The T losses by a plain loop under no_grad, keeping nothing (continuing after ``probe``, step 1)."""
    losses = None
    start = 1
    if probe is not None:
        losses = torch.empty(T, dtype=probe.loss.dtype, device=probe.loss.device)
        record_loss(losses, 1, probe.loss)
        start = 2
    for t in range(start, T + 1):
        state, loss = run_step(problem, t, state, with_loss=True)
        if losses is None:
            losses = torch.empty(T, dtype=loss.dtype, device=loss.device)
        record_loss(losses, t, loss)
    return losses


def _finish(losses: torch.Tensor, reduction: str, return_schedule: bool, schedule: Schedule | None) -> Any:
    loss = losses.mean() if reduction == "mean" else losses.sum() if reduction == "sum" else losses
    return (loss, schedule) if return_schedule else loss
