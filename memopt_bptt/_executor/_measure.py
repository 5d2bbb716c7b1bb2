"""Measuring a model's step times and byte cost on this machine, for the planner's time model."""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from .._actions import Op
from .._model import Sequence
from ._runner import Data, Run

__all__ = ["measure_step_times", "measure_byte_cost"]


def _codes(rows: list) -> np.ndarray:
    """Lowered actions, read-only as a Schedule's codes are (so the sweep compiled for those runs them)."""
    codes = np.array([[op, step, -1] for op, step in rows], np.int64).reshape((-1, 3))
    codes.flags.writeable = False
    return codes


def measure_step_times(model: Sequence, *, batch: int, dtype: Any = "float32", repeats: int = 50,
                       seed: int = 0) -> tuple[float, float]:
    """Seconds of one forward step and one backward step of ``model``'s layers.

    Both are timed through the sweep ``value_and_grad`` runs, on random data
    of the given batch and dtype: ``repeats`` forward steps (one ``advance``),
    and ``repeats`` reversals of one internal state, each with its rebuild,
    readout, loss and share of the deferred weight-gradient GEMM
    (``Cell.grad_chunk``), as every schedule reverses T steps. Median of 5
    rounds after a warm-up, less the time to start the threads. A model that
    splits this batch into lanes (:meth:`Sequence.lane_batches`) is timed on
    its first lane's rows with one BLAS thread, as each lane runs beside the
    others; one split by hidden units (:meth:`Sequence.unit_split`) as its
    threads run together. ``backward / forward`` is what
    ``mb.plan(..., backward_forward_ratio=...)`` uses to predict time.

    Example::

        f, b = mb.measure_step_times(model, batch=16)
        schedule = mb.plan(1000, budget=0.05, model=model, batch=16, backward_forward_ratio=b / f)
    """
    if isinstance(repeats, bool) or not isinstance(repeats, int) or repeats < 1:
        raise ValueError(f"measure_step_times: repeats={repeats!r} must be a positive int")
    sizes = model.sizes(batch=batch, dtype=dtype)
    if sizes.lanes:  # one lane of the split, with one BLAS thread, as it runs beside the others
        lane = sizes.lanes[0]
        sizes = model.sizes(batch=lane, dtype=dtype, split=False)._replace(lanes=(lane,))
    dt = np.dtype(sizes.dtype)
    B = sizes.batch
    params = model.init_params(seed=seed, dtype=dt)
    arrays = model.check_params(params, where="measure_step_times")
    rng = np.random.default_rng(seed)
    if model.embedding is not None:
        xs = rng.integers(0, model.embedding.vocab_size, (repeats, B)).astype(np.int64)
    else:
        xs = rng.standard_normal((repeats, B, model.input_size)).astype(dt)
    lengths, no_mask = np.full(B, repeats, np.int64), np.zeros((1, 1))
    if model.loss == "mse":
        ys = (rng.standard_normal((repeats, B, model.output_size)).astype(dt), np.zeros((1, 1), np.int64))
    else:
        ys = (np.zeros((1, 1, 1), dt), rng.integers(0, model.output_size, (repeats, B)).astype(np.int64))
    data = Data(xs, *ys, no_mask, lengths)
    run = Run(model, arrays, data, sizes, loss_kind=0 if model.loss == "mse" else 1, scale=1.0 / (repeats * B))
    h0 = (0.1 * rng.standard_normal(sizes.state_len)).astype(dt)
    grads = tuple(np.zeros_like(a) for a in arrays)
    no_norms = np.zeros(0, np.float64)
    keep = _codes([(Op.KEEP, 1)])  # one step into the working internal state, reversed over and over
    forward = _codes([(Op.ADVANCE, repeats)])
    reverse = _codes([(Op.REVERSE, t) for t in range(repeats, 0, -1)])
    empty = forward[:0]
    times = []
    for codes in (forward, reverse):
        rounds = []
        for r in range(6):
            jobs = run.allocate(0, h0, grads, no_norms)
            run.run(keep, jobs)
            t0 = time.perf_counter()
            run.run(empty, jobs)  # starting the threads: once per call, not per step
            t1 = time.perf_counter()
            run.run(codes, jobs)
            if r:  # the first is a warm-up
                rounds.append((time.perf_counter() - t1 - (t1 - t0)) / repeats)
        times.append(max(float(np.median(rounds)), 1e-9))
    return times[0], times[1]


def measure_byte_cost(model: Sequence, *, batch: int, dtype: Any = "float32", T: int = 1000,
                      repeats: int = 5) -> float:
    """Seconds one byte of checkpoint pool costs, as plain BPTT uses it.

    Writes T internal states (of ``model`` at this batch and dtype) one by one
    into a freshly allocated pool and reads them back in reverse, as plain
    BPTT's keeps and reversals do; subtracts the same copies through one
    reused buffer (the in-cache cost ``measure_step_times`` already
    includes). What is left, per byte, is the pages' first touch and the
    trips to memory. Median of ``repeats`` rounds after a warm-up. Divided by
    the forward step's time it is ``mb.plan(..., byte_cost=...)``.

    Example::

        f, b = mb.measure_step_times(model, batch=16)
        m = mb.measure_byte_cost(model, batch=16)
        schedule = mb.plan(1000, budget=0.05, model=model, batch=16, backward_forward_ratio=b / f,
                           byte_cost=m / f)
    """
    for name, value in (("T", T), ("repeats", repeats)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"measure_byte_cost: {name}={value!r} must be a positive int")
    sizes = model.sizes(batch=batch, dtype=dtype)
    dt = np.dtype(sizes.dtype)
    n = sizes.internal_len
    src = np.ones(n, dt)
    dst = np.empty(n, dt)

    def stream(fresh: bool) -> float:
        pool = np.empty(n * (T if fresh else 1), dt)
        t0 = time.perf_counter()
        for t in range(T):
            o = t * n if fresh else 0
            pool[o: o + n] = src
        for t in range(T - 1, -1, -1):
            o = t * n if fresh else 0
            dst[:] = pool[o: o + n]
        return time.perf_counter() - t0

    stream(True)
    stream(False)
    rounds = [(stream(True) - stream(False)) for _ in range(repeats)]
    return max(float(np.median(rounds)), 0.0) / (T * n * dt.itemsize)
