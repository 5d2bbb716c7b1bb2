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


def window_weights(window: Window, B: int, mask: np.ndarray | None, lengths: np.ndarray | None) -> np.ndarray:
    """The loss weights of ``window = (start, loss_from, end)``, (end - start, B)
    float64: 0 at steps start+1..loss_from (no error injected there), and the
    call's own weights at loss_from+1..end (1, or the mask's, and 0 after a
    sequence's length)."""
    start, loss_from, end = window
    w = np.zeros((end - start, B))
    own = np.ones((end - loss_from, B)) if mask is None else np.asarray(mask[loss_from:end], dtype=np.float64)
    if lengths is not None:
        own = np.where(np.arange(loss_from, end)[:, None] < lengths[None, :], own, 0.0)
    w[loss_from - start:] = own
    return w


def window_value_and_grad(plans: BudgetedPlans, params: Params, xs: np.ndarray, ys: np.ndarray,
                           h0: Any, window: Window, *, budget: WindowBudget, mask: np.ndarray | None = None,
                           lengths: np.ndarray | None = None) -> tuple[float, Params | None, float]:
    """``(loss, grads, weight)`` of ``window = (start, loss_from, end)``: the
    mean loss over its counted steps loss_from+1..end, its gradient
    back-propagated to ``start`` from the state ``h0`` there, and the sum of
    the counted weights (the loss's denominator); grads is None when the
    window counts nothing (every step masked or after every length).

    Steps start+1..loss_from inject no error: they weigh 0 in the loss's mask
    (see :func:`window_weights`), so the result is exact; a window with
    neither such steps nor a caller's mask runs unmasked (h = h' = T is plain
    BPTT bit for bit). The run stays within ``budget`` (``plans.budget_for``).
    """
    start, loss_from, end = window
    B = xs.shape[1]
    model = plans.model
    per_step = model.output_size if model.loss == "mse" else 1
    dtype = next(iter(params.values())).dtype  # the parameters' (xs may hold int token ids); one dtype, checked
    schedule = plans.schedule(end - start, B, dtype, budget=budget)
    if loss_from == start and mask is None and lengths is None:
        loss, grads = value_and_grad(model, params, xs[start:end], ys[start:end], schedule=schedule, h0=h0)
        return loss, grads, float((end - start) * B * per_step)
    weights = window_weights(window, B, mask, lengths)
    total = float(weights.sum()) * per_step
    if total <= 0.0:
        return 0.0, None, 0.0
    loss, grads = value_and_grad(model, params, xs[start:end], ys[start:end], schedule=schedule, h0=h0,
                                 mask=weights)
    return loss, grads, total


def window_gradients(model: Sequence, get_params: Callable[[], Params], xs: np.ndarray, ys: np.ndarray,
                      h: int, h_prime: int, plans: BudgetedPlans, *, where: str, mask: np.ndarray | None = None,
                      lengths: np.ndarray | None = None) -> Iterator[tuple[float, float, Params | None]]:
    """Yield ``(weight, loss, grads)`` per window (see :func:`window_value_and_grad`;
    grads None for a window that counts nothing), fetching the current
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
        loss, grads, weight = window_value_and_grad(plans, params, xs, ys, h0, (start, loss_from, end),
                                                    budget=budget, mask=mask, lengths=lengths)
        if k + 1 < len(windows):
            next_start = windows[k + 1][0]
            for p in [p for p in stored if p < next_start]:
                del stored[p]
        yield weight, loss, grads


def truncated_value_and_grad(model: Sequence, params: Params, xs: np.ndarray, ys: np.ndarray, *, h: int,
                             h_prime: int, budget: Any = None, policy: str | None = None,
                             mask: np.ndarray | None = None, lengths: np.ndarray | None = None
                             ) -> tuple[float, Params]:
    """Loss and truncated-BPTT(h; h') gradient of a sequence, parameters held fixed.

    The sequence is cut into windows by :func:`truncation_windows`: window k
    ends at ``e_k = min(k h', T)``, injects the error of its own steps
    ``e_{k-1}+1 .. e_k`` (n_k of them) and back-propagates it to position
    ``max(0, e_k - h)``, starting there from the carried state (computed by
    running the forward from the initial zero state; nothing is reset).
    With ``l_t`` the loss of step t (as in :func:`value_and_grad`: mean over
    batch, and over outputs for "mse"):

    * ``loss = sum_k (W_k / W) * mean_{t in window k} l_t``, with W_k the
      number of loss terms window k counts and W all of them: the plain
      mean loss over all T steps (up to rounding);
    * ``grads = sum_k (W_k / W) * g_k`` with ``g_k`` the gradient of window
      k's mean loss, back-propagated only h steps. Equivalently: the full
      gradient of the mean loss with every path from the loss at step t to
      parameters used before step ``e_k - h + 1`` cut (t in window k).

    So h = h' = T gives plain BPTT exactly (bit for bit), and h >= T gives
    the exact gradient up to rounding for any h'. Every window is
    differentiated by :func:`value_and_grad` under ``budget``/``policy``
    (planned for the window's length), its steps without injected error
    (h > h', or the last window) weighing 0 in the loss. ``mask`` and
    ``lengths`` count steps as in :func:`value_and_grad` (W_k is then the
    window's sum of weights; a window that counts nothing adds nothing).
    Stacked layers and token inputs work as everywhere; ``loss_at="last"``
    has one loss per sequence and no per-step error to truncate, and is refused.

    Example::

        loss, grads = mb.truncated_value_and_grad(model, params, xs, ys, h=20, h_prime=10)
    """
    where = "truncated_value_and_grad"
    if not isinstance(model, Sequence):
        raise TypeError(f"{where}: model must be a memopt_bptt.Sequence, got {type(model).__name__}")
    h, h_prime = check_truncate(h, h_prime, where=where)
    arrays = model.check_params(params, where=where)
    checked = check_window_data(model, xs, ys, arrays[0].dtype, where=where, mask=mask, lengths=lengths)
    plans = BudgetedPlans(model, budget, policy, where=where)
    pieces = window_gradients(model, lambda: params, xs, ys, h, h_prime, plans, where=where, mask=mask,
                              lengths=None if lengths is None else checked.lengths)
    loss_total: float | None = None
    grads_total: Params | None = None
    for weight, loss, grads in pieces:
        if grads is None:
            continue
        w = weight / checked.n_terms  # the windows' weights add up to the whole loss's; 1.0 for one window
        if grads_total is None:
            loss_total = w * loss
            grads_total = {k: (w * g).astype(g.dtype, copy=False) for k, g in grads.items()}
        else:
            loss_total += w * loss
            for k, g in grads.items():
                grads_total[k] = (grads_total[k] + w * g).astype(g.dtype, copy=False)
    return float(loss_total), grads_total


def check_window_data(model: Sequence, xs: Any, ys: Any, dtype: np.dtype, *, where: str, mask: Any = None,
                      lengths: Any = None) -> Any:
    """The data checked as value_and_grad checks it, for truncated BPTT (which needs a loss at every step)."""
    if model.loss_at == "last":
        raise ValueError(f"{where}: loss_at='last' has one loss per sequence, and truncated BPTT injects "
                         "per-step errors; train such a model without truncate=, or use loss_at='every' "
                         "with a mask")
    return model.check_data(xs, ys, dtype, where=where, mask=mask, lengths=lengths)
