"""The demo: train an LSTM on the adding problem under a memory budget, then check it.

Everything is the public API: :func:`memopt_bptt.adding_problem` draws a
fresh batch per update, :func:`memopt_bptt.train` runs :class:`memopt_bptt.Adam`
with every gradient planned within the budget, and on a fresh batch
afterwards the demo prints

* the loss against the best constant prediction's (the mean target; its loss
  is the targets' variance), so learning shows as a ratio below one;
* the peak memory measured by :func:`memopt_bptt.value_and_grad`'s report
  next to what plain BPTT would keep;
* whether the loss and every gradient are bit-identical to plain BPTT's
  (exit code 1 if not).

On a machine's first run (nothing in Numba's cache) with two or more CPUs, a
child process plans the demo's schedules while this one compiles the sweep,
so the two compiles overlap (``_plan_aside``).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from typing import Any, NamedTuple

import numpy as np

import memopt_bptt as mb

from .._executor._runner import usable_cpus
from .._plans import planner_cached
from ._args import PROG, CliError
from ._target import Target, least_text

__all__ = ["DemoResult", "cmd_demo", "run_demo"]

EVAL_SEED_OFFSET = 2**31
"""The fresh batch's seed is this plus --seed: above every training batch's
seed, which train's generator draws below 2**31."""


class DemoResult(NamedTuple):
    """What the demo found, beside what it printed."""

    losses: list[float]     # training loss per update
    final_loss: float       # on a fresh batch, after training
    baseline_loss: float    # the best constant prediction's on that batch: the targets' variance
    same: bool              # loss and gradients bit-identical to plain BPTT


ASIDE_WAIT = 60.0
"""Seconds the demo waits for the planning child (it needs about 6 s on a 2-core machine)."""

_PLAN_ASIDE = """
import sys
import memopt_bptt as mb
from memopt_bptt.cli._demo import demo_model
T, B, dtype, hidden, budget, policy = sys.argv[1:]
mb.plan(int(T), budget=float(budget) if "." in budget else int(budget), model=demo_model(int(hidden)),
        batch=int(B), dtype=dtype, policy=policy)
"""


def demo_model(hidden: int) -> mb.Sequence:
    """The demo's model: an LSTM from the adding problem's two inputs to one output, mse."""
    return mb.Sequence(mb.LSTM(input_size=2, hidden_size=hidden), output_size=1, loss="mse")


def _plan_aside(args: argparse.Namespace) -> subprocess.Popen | None:
    """On a machine's first run, plan the demo's schedules in a child process.

    A first run compiles the planner (about 5 s) and the sweep (about 10 s on
    2 cores), and Numba compiles one function at a time in a process. With
    a second CPU and no planner in the cache, the child compiles and runs the
    planner, which fills Numba's cache, while this process compiles the
    sweep; this process's own planning then loads the planner from the cache.
    Nothing is taken from the child but the cache: if it fails or is slow,
    this process compiles the planner itself, as without it."""
    if usable_cpus() < 2 or planner_cached():
        return None
    argv = [str(args.steps), str(args.batch), args.dtype, str(args.hidden), repr(args.budget), args.policy]
    try:
        return subprocess.Popen([sys.executable, "-c", _PLAN_ASIDE, *argv], stdin=subprocess.DEVNULL,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    except OSError:
        return None


def cmd_demo(args: argparse.Namespace, out: Any) -> int:
    """``memopt-bptt demo``: exit code 0 when the gradient check passes, 1 when it fails."""
    return 0 if run_demo(args, out).same else 1


def run_demo(args: argparse.Namespace, out: Any) -> DemoResult:
    """Train, print the plan, the loss, the memory and the gradient check to ``out``."""
    t_start = time.perf_counter()
    aside = _plan_aside(args)
    try:
        return _run_demo(args, out, t_start, aside)
    finally:
        if aside is not None and aside.poll() is None:
            aside.kill()
            aside.wait()


def _run_demo(args: argparse.Namespace, out: Any, t_start: float, aside: subprocess.Popen | None) -> DemoResult:
    T, B, dtype = args.steps, args.batch, args.dtype
    model = demo_model(args.hidden)
    params = model.init_params(seed=args.seed, dtype=dtype)
    if aside is not None:  # compile the sweep meanwhile (one plain step), then plan from the child's cache
        xs, ys = mb.adding_problem(T, B, seed=args.seed, dtype=dtype)
        mb.value_and_grad(model, params, xs[:1], ys[:1])
        try:
            aside.wait(timeout=ASIDE_WAIT)
        except subprocess.TimeoutExpired:
            pass  # plan here, compiling what the child has not cached yet
    plain = mb.plan(T, budget=1.0, model=model, batch=B, dtype=dtype, policy="full")
    try:
        schedule = mb.plan(T, budget=args.budget, model=model, batch=B, dtype=dtype, policy=args.policy)
    except mb.MemoryBudgetError as exc:
        target = Target(model, B, dtype, None, float(plain.peak_bytes))
        least, fix = least_text(exc, target, T, args.policy)
        raise CliError(f"--budget is below the least that works for the demo (T={T}, batch {B}) with "
                       f"--policy {args.policy}: {least}; use {fix} or more") from None
    print(f"{PROG} demo: {model.describe()} on the adding problem (mb.adding_problem), T={T}, batch {B}, "
          f"{dtype}, {args.updates} updates of mb.Adam({args.lr:g}) by mb.train", file=out)
    print(f"plan: {args.policy} in {mb.format_bytes(schedule.budget_bytes)} "
          f"({schedule.budget_bytes / plain.peak_bytes:.1%} of plain BPTT's {mb.format_bytes(plain.peak_bytes)}): "
          f"{schedule.forward_steps} forward steps for {T} ({schedule.forward_steps / T:.2f} per step), "
          f"predicted time x{schedule.time_ratio:.2f}, {schedule.n_hidden_slots} hidden + "
          f"{schedule.n_internal_slots} internal slots", file=out)
    print("(the first run on a machine compiles the planner and the sweep: about 10 s on 2 cores, where a second "
          "process compiles the planner meanwhile; later runs load them from Numba's cache)", file=out)
    out.flush()

    def draw_batch(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        return mb.adding_problem(T, B, seed=int(rng.integers(EVAL_SEED_OFFSET)), dtype=dtype)

    # train plans through the same cache as mb.plan above: the same schedule
    t_train = time.perf_counter()
    params, history = mb.train(model, params, draw_batch, budget=args.budget, policy=args.policy,
                               optimizer=mb.Adam(args.lr), steps=args.updates, clip_norm=1.0, seed=args.seed,
                               progress=sys.stderr.isatty())  # a bar on a terminal, not a line per update in a log
    losses = history["loss"]
    k = max(1, min(10, len(losses) // 2))
    print(f"training loss: {np.mean(losses[:k]):.4f} (mean of the first {k} updates) -> "
          f"{np.mean(losses[-k:]):.4f} (last {k}), {history['time'][-1]:.1f} s; the first update was done "
          f"{t_train - t_start + history['time'][0]:.1f} s after the demo started", file=out)

    xs, ys = mb.adding_problem(T, B, seed=EVAL_SEED_OFFSET + args.seed, dtype=dtype)
    loss, grads, report = mb.value_and_grad(model, params, xs, ys, schedule=schedule, return_report=True)
    plain_loss, plain_grads = mb.value_and_grad(model, params, xs, ys)   # plain BPTT
    baseline = float(np.var(ys.astype(np.float64)))
    print(f"fresh batch: loss {loss:.4f}, {loss / baseline:.0%} of the best constant prediction's {baseline:.4f} "
          "(predicting the mean target; its loss is the targets' variance)", file=out)
    print(f"memory: measured peak {mb.format_bytes(report.measured_peak_bytes)} (tracemalloc, one update) "
          f"against plain BPTT's planned {mb.format_bytes(plain.peak_bytes)} "
          f"({report.measured_peak_bytes / plain.peak_bytes:.1%}); this schedule planned "
          f"{mb.format_bytes(report.planned_bytes)} within a budget of {mb.format_bytes(schedule.budget_bytes)}; "
          f"the other {mb.format_bytes(max(report.measured_peak_bytes - report.planned_bytes, 0))} measured are the "
          "call's Python objects (array headers, arguments, the thread's objects: a few KB whatever T, "
          "not charged to budgets)", file=out)
    print(f"forward steps: {report.forward_steps} counted (planned {schedule.forward_steps}, plain BPTT {T})",
          file=out)
    same = loss == plain_loss and all(np.array_equal(grads[name], plain_grads[name]) for name in grads)
    if same:
        print(f"gradient check: loss and all {len(grads)} parameter gradients are bit-identical to plain BPTT "
              "(np.array_equal)", file=out)
    else:
        bad = [name for name in grads if not np.array_equal(grads[name], plain_grads[name])]
        print(f"gradient check FAILED: {bad or ['loss']} differ from plain BPTT", file=out)
    print(f"wall time: {time.perf_counter() - t_start:.1f} s", file=out)
    return DemoResult(list(losses), float(loss), baseline, same)
