"""The training loop: batches in, one optimizer update per gradient.

:func:`train` draws batches from one of three kinds of source (a fixed
``(xs, ys)`` pair, a callable ``data(rng)``, an iterable of batches), takes
each gradient from :func:`memopt_bptt.value_and_grad` under the caller's
budget (or, with ``truncate=``, one per truncated-BPTT window, see
:mod:`._truncated`), clips it and applies the optimizer. The same arguments
and seed give bit-identical results.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sized
from typing import Any

import numpy as np
from tqdm import tqdm

from .._model import Sequence
from .._value_and_grad import value_and_grad
from ._budgeted import BudgetedPlans
from ._optim import clip_by_global_norm, global_norm, positive_number
from ._truncated import check_truncate, check_window_data, window_gradients

__all__ = ["DivergenceError", "ON_NONFINITE", "train"]

Params = dict[str, np.ndarray]


EXTRAS = ("mask", "lengths")


def _is_pair(data: Any) -> bool:
    """A batch: (xs, ys) arrays, or (xs, ys, extras) with extras a dict of mask= and lengths=."""
    if not isinstance(data, tuple) or len(data) not in (2, 3):
        return False
    if len(data) == 3 and not (isinstance(data[2], Mapping) and all(k in EXTRAS for k in data[2])):
        return False
    return all(isinstance(a, np.ndarray) for a in data[:2])


def _batches(data: Any, steps: int | None, epochs: int | None,
             seed: int) -> tuple[Iterator[tuple[np.ndarray, np.ndarray]], int | None]:
    """(iterator of (xs, ys), number of batches or None)."""
    if _is_pair(data):
        n = steps if steps is not None else epochs
        return (data for _ in range(n)), n
    if callable(data):
        if epochs is not None:
            raise ValueError("train: data is a callable batch source, which has no epochs; pass steps= "
                             "(the number of batches to draw)")
        rng = np.random.default_rng(seed)

        def draw():
            for _ in range(steps):
                batch = data(rng)
                if not _is_pair(batch):
                    raise TypeError("train: data(rng) must return a tuple (xs, ys) of numpy arrays, or "
                                    f"(xs, ys, {{'mask': ..., 'lengths': ...}}), got {type(batch).__name__}")
                yield batch
        return draw(), steps
    if isinstance(data, Iterable) and not isinstance(data, (str, bytes, Mapping, np.ndarray)):
        one_shot = iter(data) is data
        if one_shot and (epochs or 1) > 1:
            raise ValueError("train: data is a one-shot iterator, which cannot be re-read for epochs > 1; "
                             "pass a list of (xs, ys) batches")
        known = len(data) * epochs if (epochs is not None and isinstance(data, Sized)) else steps

        def walk():
            if epochs is not None:
                for _ in range(epochs):
                    for batch in data:
                        yield batch
                return
            done = 0
            while done < steps:
                got = 0
                for batch in data:
                    yield batch
                    got += 1
                    done += 1
                    if done == steps:
                        return
                if got == 0 or one_shot:
                    raise ValueError(f"train: data ran out after {done} batches but steps={steps}; pass "
                                     "fewer steps, or a list that can be cycled")
        return walk(), known
    raise TypeError("train: data must be a tuple (xs, ys) of arrays, a callable data(rng) -> (xs, ys), or an "
                    f"iterable of (xs, ys) batches; got {type(data).__name__}")


def train(model: Sequence, params: Params, data: Any, *, budget: Any = None, policy: str | None = None,
          optimizer: Any, steps: int | None = None, epochs: int | None = None, clip_norm: float | None = None,
          truncate: tuple[int, int] | None = None, seed: int = 0, progress: bool = True,
          callback: Callable[[int, Params, dict], Any] | None = None,
          on_nonfinite: str = "raise") -> tuple[Params, dict[str, Any]]:
    """Train ``params`` by gradient descent; every gradient fits the memory budget.

    ``data`` is one of

    * a tuple ``(xs, ys)``: the same full batch at every step (``steps=N``;
      ``epochs=N`` means the same, one batch per epoch);
    * a callable ``data(rng) -> (xs, ys)`` drawing a fresh batch per step
      from ``rng = np.random.default_rng(seed)`` (``steps=`` only);
    * an iterable of ``(xs, ys)`` batches: ``epochs=`` passes over it, or
      ``steps=`` batches cycling through it.

    A batch may also be ``(xs, ys, extras)`` with ``extras`` a dict of
    ``mask`` and/or ``lengths`` (see :func:`value_and_grad`); xs may hold
    token ids for a model with an embedding.

    Give exactly one of ``steps`` and ``epochs``. Each batch's gradient comes
    from :func:`value_and_grad` with ``budget``/``policy`` (schedules are
    planned once per sequence length and reused). ``clip_norm`` clips by
    global norm before the update. ``truncate=(h, h_prime)`` trains on-line
    with truncated BPTT(h; h') (Williams & Peng 1990): along each batch's
    sequence, every h' steps the window gradient (see
    :func:`truncated_value_and_grad`; error of the last h' steps,
    back-propagated h steps from the carried state) is applied at once, so one
    batch makes ceil(T / h') updates; the carried state is computed with the
    parameters current when those steps were run.

    Returns ``(params, history)``; history holds one entry per update in
    "loss" (the mean loss the update's gradient is of), "grad_norm" (global
    norm before clipping), "time" (seconds since the start) and "batch" (the
    batch index), plus "updates", "batches", "truncate", "budget", "policy",
    "optimizer", "seed", "schedule" (summary of the longest schedule used)
    and "schedules" (summaries keyed by sequence length).

    ``callback(update, params, history)`` runs after each update; returning
    True stops training. ``progress`` shows a tqdm bar with the loss. The
    same arguments and seed give bit-identical results. The caller's
    ``params`` are not modified.

    Divergence: an update whose loss or gradient is not finite (NaN or inf),
    or that would make a parameter non-finite, is never applied, and
    ``on_nonfinite`` says what follows:

    * ``"raise"`` (the default): :class:`DivergenceError` (a
      FloatingPointError) whose ``params``, ``opt_state`` and ``history``
      are the last good ones, as ``train`` would have returned them;
    * ``"stop"``: return ``(params, history)`` of the last good update, with
      ``history["stopped"]`` saying why;
    * ``"skip"``: leave params and optimizer state as they were and go on
      with the next batch (with ``truncate=``, the rest of that batch's
      windows are skipped too: they would start from the bad step).

    Every such update is listed in ``history["nonfinite"]`` as a dict of
    "update" (the index it would have had), "batch" and "what" (the loss,
    the gradient or the parameters).

    Example::

        xs, ys = mb.adding_problem(50, 16, seed=0)
        params, history = mb.train(model, params, (xs, ys), optimizer=mb.Adam(1e-2),
                                   steps=100, budget=0.1)
    """
    where = "train"
    if not isinstance(model, Sequence):
        raise TypeError(f"{where}: model must be a memopt_bptt.Sequence, got {type(model).__name__}")
    model.check_params(params, where=where)
    if not (callable(getattr(optimizer, "init", None)) and callable(getattr(optimizer, "update", None))):
        raise TypeError(f"{where}: optimizer={optimizer!r} must have init(params) and "
                        "update(params, grads, state), e.g. mb.Adam(1e-3) or mb.SGD(0.1)")
    if (steps is None) == (epochs is None):
        raise ValueError(f"{where}: give exactly one of steps= (number of batches) or epochs= "
                         f"(passes over an iterable of batches); got steps={steps!r}, epochs={epochs!r}")
    for name, v in (("steps", steps), ("epochs", epochs)):
        if v is not None and (isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1):
            raise ValueError(f"{where}: {name}={v!r} must be an int >= 1")
    steps = None if steps is None else int(steps)
    epochs = None if epochs is None else int(epochs)
    if clip_norm is not None:
        clip_norm = positive_number(clip_norm, name="clip_norm", where=where)
    if truncate is not None:
        if not isinstance(truncate, (tuple, list)) or len(truncate) != 2:
            raise ValueError(f"{where}: truncate={truncate!r} must be a pair (h, h_prime) with h >= h_prime >= 1")
        truncate = check_truncate(truncate[0], truncate[1], where=where)
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"{where}: seed={seed!r} must be a non-negative int")
    if callback is not None and not callable(callback):
        raise TypeError(f"{where}: callback must be callable as callback(update, params, history)")
    if on_nonfinite not in ON_NONFINITE:
        raise ValueError(f"{where}: on_nonfinite={on_nonfinite!r} must be one of "
                         f"{', '.join(map(repr, ON_NONFINITE))} (what a non-finite loss or gradient does)")
    plans = BudgetedPlans(model, budget, policy, where=where)
    batches, n_batches = _batches(data, steps, epochs, int(seed))

    current = {k: np.array(v, copy=True) for k, v in params.items()}
    opt_state = optimizer.init(current)
    history: dict[str, Any] = {"loss": [], "grad_norm": [], "time": [], "batch": [], "nonfinite": [],
                               "stopped": None}
    t_start = time.perf_counter()
    stop = False
    n_done = 0
    bar = tqdm(total=n_batches, desc="train", unit="batch", disable=not progress, leave=False)
    try:
        for b, batch in enumerate(batches):
            if not _is_pair(batch):
                raise TypeError(f"{where}: batch {b} is {type(batch).__name__}, not a tuple (xs, ys) of arrays "
                                "or (xs, ys, {'mask': ..., 'lengths': ...})")
            xs, ys = batch[:2]
            extras = dict(batch[2]) if len(batch) == 3 else {}
            dtype = current[next(iter(current))].dtype
            if truncate is None:
                if not isinstance(xs, np.ndarray) or xs.ndim != (2 if model.embedding else 3):
                    expect = "(T, batch) token ids" if model.embedding else "(T, batch, input_size)"
                    raise ValueError(f"{where}: batch {b}: xs must be a numpy array of shape {expect}")
                schedule = plans.schedule(xs.shape[0], xs.shape[1], dtype)
                updates = _lazily(value_and_grad, model, current, xs, ys, schedule=schedule, **extras)
            else:
                checked = check_window_data(model, xs, ys, dtype, where=where, **extras)
                if "lengths" in extras:
                    extras["lengths"] = checked.lengths
                updates = ((loss, grads) for _, loss, grads in
                           window_gradients(model, lambda: current, xs, ys, truncate[0], truncate[1], plans,
                                             where=where, **extras) if grads is not None)
            for loss, grads, what in _checked(updates):
                if what is None:
                    norm = global_norm(grads)  # float64: not finite when an entry is (or is beyond 1e154)
                    if not np.isfinite(norm):
                        what = "gradient"
                if what is None:
                    if clip_norm is not None:
                        grads, norm = clip_by_global_norm(grads, clip_norm)
                    with np.errstate(over="ignore", invalid="ignore"):  # checked just below
                        new_params, new_state = optimizer.update(current, grads, opt_state)
                    if not _all_finite(new_params.values()):
                        what = "parameters"
                if what is not None:
                    n_good = len(history["loss"])
                    history["nonfinite"].append({"update": n_good, "batch": b, "what": what})
                    if on_nonfinite == "skip":
                        break  # with truncate=, the batch's later windows go through the bad step too
                    message = (f"{where}: {_WHAT[what]} at update {n_good} (batch {b}); the {n_good} good "
                               "updates are kept")
                    _finish(history, plans, n_done, truncate, budget, optimizer, seed)
                    if on_nonfinite == "stop":
                        history["stopped"] = message
                        return current, history
                    raise DivergenceError(message + ": the error's params, opt_state and history hold them; "
                                          "lower the learning rate, clip with clip_norm=, or pass "
                                          "on_nonfinite='skip' or 'stop'", current, opt_state, history)
                current, opt_state = new_params, new_state
                history["loss"].append(float(loss))
                history["grad_norm"].append(float(norm))
                history["time"].append(time.perf_counter() - t_start)
                history["batch"].append(b)
                if callback is not None and callback(len(history["loss"]) - 1, current, history) is True:
                    stop = True
                    break
            n_done = b + 1
            bar.update(1)
            if history["loss"]:
                bar.set_postfix(loss=f"{history['loss'][-1]:.4g}")
            if stop:
                break
    finally:
        bar.close()
    _finish(history, plans, n_done, truncate, budget, optimizer, seed)
    return current, history


ON_NONFINITE = ("raise", "stop", "skip")
_WHAT = {"loss": "the loss is not finite", "gradient": "the gradient is not finite",
         "parameters": "the optimizer's update makes a parameter non-finite"}


class DivergenceError(FloatingPointError):
    """:func:`train` met a non-finite loss or gradient (``on_nonfinite="raise"``).

    ``params``, ``opt_state`` and ``history`` are those of the last good
    update, as :func:`train` would have returned them (``history["nonfinite"]``
    names the update that failed), so a long run is never lost::

        try:
            params, history = mb.train(model, params, data, optimizer=mb.SGD(1.0), steps=1000)
        except mb.DivergenceError as exc:
            params, history = exc.params, exc.history
    """

    def __init__(self, message: str, params: Params, opt_state: Any, history: dict[str, Any]):
        super().__init__(message)
        self.params, self.opt_state, self.history = params, opt_state, history


def _lazily(fn: Callable, *args: Any, **kwargs: Any) -> Iterator[Any]:
    """fn's one result as an iterator, computed when first asked for (as window gradients are)."""
    yield fn(*args, **kwargs)


def _checked(updates: Iterator[tuple[float, Params]]) -> Iterator[tuple[float, Params | None, str | None]]:
    """(loss, grads, None) per update, or (nan, None, "loss") for a loss value_and_grad found
    non-finite, after which the updates' source is spent."""
    it = iter(updates)
    while True:
        try:
            loss, grads = next(it)
        except StopIteration:
            return
        except FloatingPointError:  # value_and_grad: the loss is not finite
            yield float("nan"), None, "loss"
            return
        yield loss, grads, None


def _all_finite(arrays: Iterable[np.ndarray]) -> bool:
    return all(bool(np.isfinite(a).all()) for a in arrays)


def _finish(history: dict[str, Any], plans: BudgetedPlans, n_done: int, truncate: Any, budget: Any,
            optimizer: Any, seed: int) -> None:
    """The history's summary entries, as train returns them (and DivergenceError carries them)."""
    summaries = plans.summaries()
    history.update({
        "updates": len(history["loss"]),
        "batches": n_done,
        "truncate": truncate,
        "budget": budget,
        "policy": plans.policy,
        "optimizer": repr(optimizer),
        "seed": int(seed),
        "schedules": summaries,
        "schedule": summaries[max(summaries)] if summaries else None,
    })
