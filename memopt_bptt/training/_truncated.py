"""Truncated BPTT(h; h'): gradients of windows of a long sequence.

Williams & Peng (1990), "An efficient gradient-based algorithm for on-line
training of recurrent network trajectories", Neural Computation 2(4): every
h' steps the network is back-propagated through the last h steps (h >= h'),
the error being injected at the h' most recent steps only; the state is
carried forward across windows, never reset.

:func:`truncation_windows` names the windows, :func:`truncated_value_and_grad`
sums their gradients with the parameters held fixed, and
:func:`memopt_bptt.train` (``truncate=``) applies each window's gradient as
soon as it is computed. Each window is differentiated by
:func:`memopt_bptt.value_and_grad` from the carried state (``h0=``), which
:func:`memopt_bptt.final_state` advances window by window.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

from .._model import Sequence
from .._value_and_grad import final_state, value_and_grad
from ._budgeted import BudgetedPlans, WindowBudget

__all__ = ["truncated_value_and_grad", "truncation_windows"]

Params = dict[str, np.ndarray]
Window = tuple[int, int, int]


def check_truncate(h: Any, h_prime: Any, *, where: str) -> tuple[int, int]:
    """(h, h_prime) as ints with h >= h_prime >= 1; the error names ``where``."""
    for name, v in (("h", h), ("h_prime", h_prime)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
            raise ValueError(f"{where}: {name}={v!r} must be an int >= 1")
    if h < h_prime:
        raise ValueError(f"{where}: h={h} must be >= h_prime={h_prime} (back-propagate at least the "
                         "steps whose error is injected)")
    return int(h), int(h_prime)


def truncation_windows(T: int, *, h: int, h_prime: int) -> list[tuple[int, int, int]]:
    """The windows of truncated BPTT(h; h') over T steps, as ``(start, loss_from, end)``.

    Window k ends at ``end = min(k * h', T)``; its loss covers steps
    ``loss_from + 1 .. end`` (``loss_from`` is the previous window's end, so
    every step's loss is counted exactly once) and it back-propagates from
    ``end`` back to position ``start = max(0, end - h)``. Positions count
    states: position p is the state after p steps (0 is the initial state).

    Example::

        mb.truncation_windows(10, h=4, h_prime=4)   # [(0, 0, 4), (4, 4, 8), (6, 8, 10)]
    """
    if isinstance(T, bool) or not isinstance(T, (int, np.integer)) or T < 1:
        raise ValueError(f"truncation_windows: T={T!r} must be an int >= 1")
    h, h_prime = check_truncate(h, h_prime, where="truncation_windows")
    windows = []
    prev = 0
    while prev < T:
        end = min(prev + h_prime, T)
        windows.append((max(0, end - h), prev, end))
        prev = end
    return windows


def window_value_and_grad(plans: BudgetedPlans, params: Params, xs: np.ndarray, ys: np.ndarray,
                           h0: np.ndarray | None, window: Window, *, budget: WindowBudget) -> tuple[float, Params]:
    """Mean loss over steps loss_from+1..end of ``window = (start, loss_from, end)``
    and its gradient back-propagated to ``start``, from the state ``h0`` there.

    The loss at steps start+1..loss_from must not inject error. value_and_grad
    has no loss mask, so the window is differentiated twice from the same h0:
    over start..end and over start..loss_from, and the second (step-summed)
    result is subtracted. Both runs stay within ``budget`` (from
    ``plans.budget_for``); the result is exact up to rounding (bit-exact when
    loss_from == start).
    """
    start, loss_from, end = window
    B = xs.shape[1]

    def run(stop: int) -> tuple[float, Params]:
        schedule = plans.schedule(stop - start, B, xs.dtype, budget=budget)
        return value_and_grad(plans.model, params, xs[start:stop], ys[start:stop], schedule=schedule, h0=h0)

    loss_all, g_all = run(end)
    n_pre = loss_from - start
    if n_pre == 0:
        return loss_all, g_all
    n_all = end - start
    n_loss = end - loss_from
    loss_pre, g_pre = run(loss_from)
    loss = (n_all * loss_all - n_pre * loss_pre) / n_loss
    grads = {k: ((n_all * g - n_pre * g_pre[k]) / n_loss).astype(g.dtype, copy=False) for k, g in g_all.items()}
    return loss, grads


def window_gradients(model: Sequence, get_params: Callable[[], Params], xs: np.ndarray, ys: np.ndarray,
                      h: int, h_prime: int, plans: BudgetedPlans, *, where: str) -> Iterator[tuple[int, float, Params]]:
    """Yield ``(n_loss_steps, loss, grads)`` per window, fetching the current
    parameters before each window (so a caller may update them in between).

    The state is carried on-line: the forward over steps loss_from+1..end runs
    with the parameters current at that window (one :func:`final_state` call
    per stretch between recorded positions), and the states at later
    windows' start positions are recorded on the way.
    """
    T, B = xs.shape[:2]
    windows = truncation_windows(T, h=h, h_prime=h_prime)
    starts = {w[0] for w in windows}
    stored: dict[int, np.ndarray | None] = {0: None}  # None: the zero initial state
    carried: np.ndarray | None = None                  # the state at position loss_from
    budget = None
    for k, (start, loss_from, end) in enumerate(windows):
        params = get_params()
        if budget is None:
            dtype = model.check_params(params, where=where)[0].dtype
            budget = plans.budget_for(min(h, T), B, dtype)
        h0 = stored[start]
        if k + 1 < len(windows):
            pos = loss_from
            for stop in sorted(s for s in starts if loss_from < s < end) + [end]:
                carried = final_state(model, params, xs[pos:stop], h0=carried)
                pos = stop
                if stop in starts:
                    stored[stop] = carried
        loss, grads = window_value_and_grad(plans, params, xs, ys, h0, (start, loss_from, end), budget=budget)
        if k + 1 < len(windows):
            next_start = windows[k + 1][0]
            for p in [p for p in stored if p < next_start]:
                del stored[p]
        yield end - loss_from, loss, grads


def truncated_value_and_grad(model: Sequence, params: Params, xs: np.ndarray, ys: np.ndarray, *, h: int,
                             h_prime: int, budget: Any = None, policy: str | None = None) -> tuple[float, Params]:
    """Loss and truncated-BPTT(h; h') gradient of a sequence, parameters held fixed.

    The sequence is cut into windows by :func:`truncation_windows`: window k
    ends at ``e_k = min(k h', T)``, injects the error of its own steps
    ``e_{k-1}+1 .. e_k`` (n_k of them) and back-propagates it to position
    ``max(0, e_k - h)``, starting there from the carried state (computed by
    running the forward from the initial zero state; nothing is reset).
    With ``l_t`` the loss of step t (as in :func:`value_and_grad`: mean over
    batch, and over outputs for "mse"):

    * ``loss = sum_k (n_k / T) * mean_{t in window k} l_t``, which is the
      plain mean loss over all T steps (up to rounding);
    * ``grads = sum_k (n_k / T) * g_k`` with ``g_k`` the gradient of window
      k's mean loss, back-propagated only h steps. Equivalently: the full
      gradient of the mean loss with every path from the loss at step t to
      parameters used before step ``e_k - h + 1`` cut (t in window k).

    So h = h' = T gives plain BPTT exactly (bit for bit), and h >= T gives
    the exact gradient up to rounding for any h'. Every window is
    differentiated by :func:`value_and_grad` under ``budget``/``policy``
    (planned for the window's length); where a window has steps without
    injected error (h > h', or the last window), it is differentiated twice
    and the error-free prefix subtracted, so results then agree with a
    masked loss up to rounding.

    Example::

        loss, grads = mb.truncated_value_and_grad(model, params, xs, ys, h=20, h_prime=10)
    """
    where = "truncated_value_and_grad"
    if not isinstance(model, Sequence):
        raise TypeError(f"{where}: model must be a memopt_bptt.Sequence, got {type(model).__name__}")
    h, h_prime = check_truncate(h, h_prime, where=where)
    arrays = model.check_params(params, where=where)
    model.check_data(xs, ys, arrays[0].dtype, where=where)
    plans = BudgetedPlans(model, budget, policy, where=where)
    T = xs.shape[0]
    loss_total: float | None = None
    grads_total: Params | None = None
    for n_k, loss, grads in window_gradients(model, lambda: params, xs, ys, h, h_prime, plans, where=where):
        w = n_k / T  # exactly 1.0 when one window covers the sequence
        if grads_total is None:
            loss_total = w * loss
            grads_total = {k: (w * g).astype(g.dtype, copy=False) for k, g in grads.items()}
        else:
            loss_total += w * loss
            for k, g in grads.items():
                grads_total[k] = (grads_total[k] + w * g).astype(g.dtype, copy=False)
    return float(loss_total), grads_total
