"""value_and_grad and final_state: check the inputs, find the schedule, run it.

The data flow: ``value_and_grad`` checks the parameters and data
(``Sequence.check_params`` / ``check_data``), takes a schedule from the plan
cache (``memopt_bptt._plans``) or the caller, lowers nothing (a Schedule
holds its integer codes), lets the executor's :class:`Run` allocate the
buffers the planner charged for, and runs the one jitted sweep
(``_executor/_sweep.py``) on each lane or unit thread. The executor itself
never plans: it runs the schedule it is given. A report, when asked for, traces that run with
``tracemalloc``.
"""

from __future__ import annotations

import math
import time
import tracemalloc
from typing import Any, NamedTuple

import numpy as np

from ._actions import Op
from ._calibrate import calibrate_if_asked
from ._executor import Data, Run
from . import _inputs
from ._model import Sequence
from ._plans import cached_plan, resolve_policy
from ._schedule import Schedule

__all__ = ["Report", "final_state", "value_and_grad"]


class Report(NamedTuple):
    """What one value_and_grad call did (``return_report=True``)."""

    schedule: Schedule
    forward_steps: int          # counted in the sweep
    wall_time: float            # seconds, the sweep and its setup
    planned_bytes: int          # schedule.peak_bytes
    allocated_bytes: int        # bytes of the buffers allocated for the sweep
    measured_peak_bytes: int    # tracemalloc peak during the call, gradients excluded; includes
                                # 4-13 KB of Python objects (_model.PYTHON_OVERHEAD_BYTES) besides the buffers
    predicted_time_ratio: float
    plan_seconds: float | None = None      # planning in this call (None: the schedule was cached or given)
    plan_peak_bytes: int | None = None     # what planning held at its peak (tables and schedule), apart
                                           # from the budget, which covers the sweep
    workers: str = ""                      # how the sweep ran: lanes, unit threads, or one thread for
                                           # every unit share when other work had the CPUs (same bits)

    def __str__(self) -> str:
        return "\n".join(self.schedule.summary_lines() + [
            f"counted forwards {self.forward_steps}",
            f"wall time       {self.wall_time:.4f} s",
            f"planned bytes   {self.planned_bytes}",
            f"allocated bytes {self.allocated_bytes}",
            f"measured peak   {self.measured_peak_bytes} bytes (tracemalloc, gradients excluded)",
            "planning        " + ("none (the schedule was cached or given)" if self.plan_seconds is None else
                                  f"{self.plan_seconds:.4f} s, peak {self.plan_peak_bytes} bytes (outside the budget)"),
        ] + ([f"workers         {self.workers}"] if self.workers else []))


def _given_schedule(schedule: Any, budget: Any, policy: Any, T: int, sizes: Any) -> Schedule:
    if budget is not None or policy is not None:
        raise ValueError("value_and_grad: give either schedule= or budget=/policy=, not both")
    if not isinstance(schedule, Schedule):
        raise TypeError("value_and_grad: schedule must be a memopt_bptt.Schedule from mb.plan")
    if schedule.T != T:
        raise ValueError(f"value_and_grad: schedule is for T={schedule.T} but xs has T={T}")
    if (schedule.hidden_quanta, schedule.internal_quanta) != sizes.quantum[1:] \
            or schedule.quantum_bytes != sizes.quantum_bytes:
        raise ValueError("value_and_grad: schedule was planned for another model, batch or dtype; "
                         "plan it with mb.plan(T, budget=..., model=model, batch=..., dtype=...)")
    if schedule.working_bytes is not None and schedule.working_bytes != sizes.working_bytes:
        raise ValueError(f"value_and_grad: schedule was planned with {schedule.working_bytes} working bytes but "
                         f"this model needs {sizes.working_bytes} (another model, or lanes=); plan it with "
                         "mb.plan(T, budget=..., model=model, batch=..., dtype=...)")
    schedule.validate()
    return schedule


def _checked_loss(run: Run, results: list, schedule: Schedule, scale: float) -> float:
    """The mean loss, once every worker ran the schedule's forwards and it is finite."""
    for r in results:
        if r[1] != schedule.forward_steps:
            raise RuntimeError(f"value_and_grad: the sweep ran {r[1]} forwards but the schedule "
                               f"plans {schedule.forward_steps}; no gradients returned")
    loss_value = float(run.loss_sum(results) * scale)
    if not math.isfinite(loss_value):
        raise FloatingPointError("value_and_grad: the loss is not finite (NaN or inf); check the data and "
                                 "learning rate; no gradients returned")
    return loss_value


def value_and_grad(model: Sequence, params: dict, xs: np.ndarray, ys: np.ndarray, *, budget: Any = None,
                   policy: str | None = None, schedule: Schedule | None = None, h0: Any = None,
                   mask: np.ndarray | None = None, lengths: np.ndarray | None = None,
                   return_h0_grad: bool = False, return_report: bool = False, ds_norms: np.ndarray | None = None):
    """Loss and exact gradients of a Sequence over (xs, ys) within a memory budget.

    ``budget``: bytes, "64MiB"-style, or a fraction of plain BPTT's memory; no
    budget means plain BPTT (policy "full"). ``policy`` defaults to "msm" when
    a budget is given. Or pass a ready ``schedule`` from :func:`plan` (same T,
    batch and dtype). Gradients are bit-identical to policy="full".

    xs is (T, batch, input_size) floats, or (T, batch) token ids for a model
    with an embedding; it is read in place (a read-only array or an
    ``np.memmap`` too) when C-contiguous. ys is (T, batch, output_size) for
    "mse" or (T, batch) labels for "cross_entropy"; with
    ``loss_at="last"`` one per sequence, (batch, output_size) or (batch,).

    ``lengths`` (batch,) gives each sequence's valid steps (1..T) of a padded
    batch, and ``mask`` (T, batch) 0/1 or weights >= 0 for the steps'
    losses: the loss is the mean over the counted elements (the weighted
    mean ``sum(w * loss) / sum(w)`` for weights), PyTorch's
    ``reduction="mean"`` over the valid targets. A sequence's steps after its
    length are still computed (on its padding, which may hold any finite
    value; token ids must be in the vocabulary), so a padded batch costs what
    a full one does, but they add exactly nothing to the loss and gradients.

    Returns ``(loss, grads)``; with ``return_h0_grad=True`` also dL/dh0, and
    with ``return_report=True`` a :class:`Report` last. ``ds_norms``, a float64
    array of length T+1, receives ||dL/dh_t|| at index t (t = 1..T); see
    :func:`memopt_bptt.grad_norm_by_lag`.

    Example::

        loss, grads = mb.value_and_grad(model, params, xs, ys, budget="4MiB")
    """
    if not isinstance(model, Sequence):
        raise TypeError(f"value_and_grad: model must be a memopt_bptt.Sequence, got {type(model).__name__}")
    arrays = model.check_params(params)
    dtype = arrays[0].dtype
    checked = model.check_data(xs, ys, dtype, h0=h0, mask=mask, lengths=lengths)
    h0_flat = checked.h0
    T, B = checked.xs.shape[:2]
    if schedule is None:  # a given schedule was planned for the split as it is
        calibrate_if_asked(model, B, dtype)  # MEMOPT_BPTT_CALIBRATION_AUTO=1 only
    sizes = model.sizes(batch=B, dtype=dtype)
    if schedule is None:
        budget, policy = resolve_policy(budget, policy, where="value_and_grad")
        schedule, plan_stats = cached_plan(T, budget=budget, policy=policy, model=model, batch=B, dtype=dtype)
    else:
        schedule, plan_stats = _given_schedule(schedule, budget, policy, T, sizes), None
    if ds_norms is None:
        norms = np.zeros(0, np.float64)
    else:
        if not isinstance(ds_norms, np.ndarray) or ds_norms.dtype != np.float64 or ds_norms.shape != (T + 1,):
            raise ValueError(f"value_and_grad: ds_norms must be a float64 array of shape ({T + 1},)")
        norms = ds_norms
    grads = {name: np.zeros_like(a) for name, a in zip(model.param_shapes, arrays)}
    scale = 1.0 / checked.n_terms
    run = Run(model, arrays, Data.of(checked), sizes, loss_kind=0 if model.loss == "mse" else 1, scale=scale,
              loss_mode=checked.loss_mode)
    del checked
    codes = schedule.codes  # read in place: slots are scaled to element offsets inside the sweep

    if return_report:
        # Compile (or load) the sweep first, on an empty schedule, so the
        # measured peak is the sweep's and not the compiler's.
        run.run(codes[:0], run.allocate(0, h0_flat, tuple(np.zeros_like(a) for a in arrays), norms[:0]))
        tracemalloc.start()
        tracemalloc.reset_peak()
        base = tracemalloc.get_traced_memory()[0]
    t0 = time.perf_counter()
    try:
        jobs = run.allocate(schedule.pool_quanta, h0_flat, tuple(grads.values()), norms)
        del h0_flat  # each worker's first action copies the state it needs into its pool
        allocated = run.nbytes(jobs)
        results = run.run(codes, jobs)
        loss_value = _checked_loss(run, results, schedule, scale)
    except BaseException:
        if return_report:
            tracemalloc.stop()
        raise
    run.reduce(jobs)
    wall = time.perf_counter() - t0
    result: list[Any] = [loss_value, grads]
    if return_h0_grad:
        result.append(model.user_state(run.gather_state(results, 2), B))
    if return_report:
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        measured = peak - base  # the gradients were allocated before tracing began
        result.append(Report(schedule, int(results[0][1]), wall, int(schedule.peak_bytes), int(allocated),
                             int(measured), schedule.time_ratio,
                             None if plan_stats is None else plan_stats.seconds,
                             None if plan_stats is None else plan_stats.peak_bytes, run.how(jobs)))
    return tuple(result)


def final_state(model: Sequence, params: dict, xs: np.ndarray, *, h0: Any = None,
                lengths: np.ndarray | None = None) -> Any:
    """The state after every step of ``xs``, from ``h0`` (zeros if None), with no gradient.

    Returns new arrays of shape ``model.state_shape(batch)``, what ``h0=``
    accepts, so a long sequence can be run piece by piece: the same sweep and
    forward kernels as :func:`value_and_grad`, bit for bit, in O(1) memory.
    With ``lengths``, each sequence's state after its own last valid step
    (PyTorch's h_n for a packed batch).

    Example::

        h = mb.final_state(model, params, xs[:500])
        h = mb.final_state(model, params, xs[500:], h0=h)   # == mb.final_state(model, params, xs)
    """
    if not isinstance(model, Sequence):
        raise TypeError(f"final_state: model must be a memopt_bptt.Sequence, got {type(model).__name__}")
    arrays = model.check_params(params, where="final_state")
    dtype = arrays[0].dtype
    xs_c, h_flat = model.check_inputs(xs, dtype, where="final_state", h0=h0)
    T, B = xs_c.shape[:2]
    stops = np.full(B, T, np.int64) if lengths is None else _inputs.check_lengths(lengths, T, B, where="final_state")
    sizes = model.sizes(batch=B, dtype=dtype)
    grads = tuple(np.zeros_like(a) for a in arrays)
    out = np.empty_like(h_flat)
    done = 0
    # One sweep per distinct length, each from the state the last one ended at (xs's steps as views).
    for stop in np.unique(stops):
        piece = xs_c[done: stop]
        dummy = Data(piece, np.zeros((1, 1, 1), dtype), np.zeros((1, 1), np.int64), np.zeros((1, 1)),
                     np.full(B, len(piece), np.int64))
        run = Run(model, arrays, dummy, sizes, loss_kind=0, scale=1.0)
        codes = np.array([[Op.ADVANCE, len(piece), -1]], np.int64)
        codes.flags.writeable = False  # as a Schedule's codes are: the same compiled sweep
        results = run.run(codes, run.allocate(0, h_flat, grads, np.zeros(0, np.float64)))
        h_flat = run.gather_state(results, 3)
        for b in np.flatnonzero(stops == stop):
            model.copy_rows(out, B, int(b), h_flat, B, int(b), 1)
        done = int(stop)
    return model.user_state(out, B)
