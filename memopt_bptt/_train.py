"""Training utilities: optimizers, clipping, a training loop, truncated BPTT,
parameter files and gradient norms by time lag.

Everything here sits on the public :func:`memopt_bptt.value_and_grad`: each
gradient (of a whole sequence, or of one truncated-BPTT window) is computed
under the caller's memory ``budget``/``policy`` and is exact for what it
differentiates. Optimizers are small pure objects in the style of optax:
``init(params) -> state`` and ``update(params, grads, state) -> (params,
state)``, plain NumPy, never mutating the caller's arrays.

Truncated BPTT(h; h') follows Williams & Peng (1990), "An efficient
gradient-based algorithm for on-line training of recurrent network
trajectories", Neural Computation 2(4): every h' steps the network is
back-propagated through the last h steps (h >= h'), the error being injected
at the h' most recent steps only; the state is carried forward across
windows, never reset. See :func:`truncated_value_and_grad` for the exact
quantity computed and :func:`train` for the on-line variant that updates
after every window.
"""

from __future__ import annotations

import math
import os
import tempfile
import time
from collections.abc import Callable, Iterable, Mapping, Sized
from typing import Any, NamedTuple

import numpy as np
from tqdm import tqdm

from ._budget import MemoryBudgetError, parse_budget
from ._executor import value_and_grad
from ._model import Sequence
from ._planner import plan
from ._schedule import Schedule

__all__ = [
    "SGD",
    "SGDState",
    "Adam",
    "AdamState",
    "clip_by_global_norm",
    "global_norm",
    "train",
    "truncated_value_and_grad",
    "truncation_windows",
    "save_params",
    "load_params",
    "grad_norm_by_lag",
]

Params = dict[str, np.ndarray]


# ---- optimizers ---------------------------------------------------------------------------------

def _check_tree(params: Any, grads: Any, *, where: str) -> None:
    if not isinstance(params, Mapping) or not isinstance(grads, Mapping):
        raise TypeError(f"{where}: params and grads must be dicts of arrays")
    if set(params) != set(grads):
        raise ValueError(f"{where}: grads has keys {sorted(grads)} but params has {sorted(params)}; "
                         "pass the grads returned for these params")
    for k, p in params.items():
        g = grads[k]
        if not isinstance(p, np.ndarray) or not isinstance(g, np.ndarray) or p.shape != g.shape:
            raise ValueError(f"{where}: params[{k!r}] and grads[{k!r}] must be arrays of one shape")


def _positive_float(value: Any, *, name: str, where: str, allow_zero: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.floating, np.integer)):
        raise TypeError(f"{where}: {name}={value!r} must be a number")
    v = float(value)
    if not math.isfinite(v) or v < 0 or (v == 0 and not allow_zero):
        raise ValueError(f"{where}: {name}={value!r} must be a finite number "
                         f"{'>= 0' if allow_zero else '> 0'}")
    return v


class SGDState(NamedTuple):
    """SGD's state: the momentum buffers (None without momentum)."""

    velocity: dict[str, np.ndarray] | None


class SGD:
    """Stochastic gradient descent, optionally with (heavy-ball) momentum.

    PyTorch's convention: ``v = momentum * v + g; p = p - lr * v`` (``v = g``
    on the first step).

    Example::

        opt = mb.SGD(0.1, momentum=0.9)
        state = opt.init(params)
        params, state = opt.update(params, grads, state)
    """

    def __init__(self, lr: float, *, momentum: float = 0.0):
        self.lr = _positive_float(lr, name="lr", where="SGD")
        self.momentum = _positive_float(momentum, name="momentum", where="SGD", allow_zero=True)
        if self.momentum >= 1.0:
            raise ValueError(f"SGD: momentum={momentum!r} must be in [0, 1)")

    def __repr__(self) -> str:
        return f"SGD(lr={self.lr:g}, momentum={self.momentum:g})"

    def init(self, params: Mapping[str, np.ndarray]) -> SGDState:
        """The initial state for ``params`` (no momentum buffers yet)."""
        return SGDState(None)

    def update(self, params: Mapping[str, np.ndarray], grads: Mapping[str, np.ndarray],
               state: SGDState) -> tuple[Params, SGDState]:
        """One step: new params and state; the inputs are not modified."""
        _check_tree(params, grads, where="SGD.update")
        if not isinstance(state, SGDState):
            raise TypeError("SGD.update: state must come from SGD.init (or a previous update)")
        if self.momentum == 0.0:
            return {k: p - self.lr * grads[k] for k, p in params.items()}, state
        if state.velocity is None:
            velocity = {k: np.array(g, copy=True) for k, g in grads.items()}
        else:
            velocity = {k: self.momentum * state.velocity[k] + g for k, g in grads.items()}
        return {k: p - self.lr * velocity[k] for k, p in params.items()}, SGDState(velocity)


class AdamState(NamedTuple):
    """Adam's state: the step count and the first and second moment estimates."""

    count: int
    mu: dict[str, np.ndarray]
    nu: dict[str, np.ndarray]


class Adam:
    """Adam (Kingma & Ba 2015), bias-corrected, as in ``torch.optim.Adam``.

    ``m = b1 m + (1-b1) g``, ``v = b2 v + (1-b2) g**2``,
    ``p -= lr * (m / (1-b1**t)) / (sqrt(v / (1-b2**t)) + eps)``.
    Computed in the parameters' dtype.

    Example::

        opt = mb.Adam(1e-2)
        state = opt.init(params)
        params, state = opt.update(params, grads, state)
    """

    def __init__(self, lr: float = 1e-3, *, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8):
        self.lr = _positive_float(lr, name="lr", where="Adam")
        if not isinstance(betas, (tuple, list)) or len(betas) != 2:
            raise TypeError(f"Adam: betas={betas!r} must be a pair (b1, b2)")
        b1 = _positive_float(betas[0], name="betas[0]", where="Adam", allow_zero=True)
        b2 = _positive_float(betas[1], name="betas[1]", where="Adam", allow_zero=True)
        if b1 >= 1.0 or b2 >= 1.0:
            raise ValueError(f"Adam: betas={betas!r} must both be in [0, 1)")
        self.betas = (b1, b2)
        self.eps = _positive_float(eps, name="eps", where="Adam")

    def __repr__(self) -> str:
        return f"Adam(lr={self.lr:g}, betas={self.betas}, eps={self.eps:g})"

    def init(self, params: Mapping[str, np.ndarray]) -> AdamState:
        """Zero moment estimates shaped like ``params``."""
        if not isinstance(params, Mapping):
            raise TypeError("Adam.init: params must be a dict of arrays")
        return AdamState(0, {k: np.zeros_like(p) for k, p in params.items()},
                         {k: np.zeros_like(p) for k, p in params.items()})

    def update(self, params: Mapping[str, np.ndarray], grads: Mapping[str, np.ndarray],
               state: AdamState) -> tuple[Params, AdamState]:
        """One step: new params and state; the inputs are not modified."""
        _check_tree(params, grads, where="Adam.update")
        if not isinstance(state, AdamState) or set(state.mu) != set(params):
            raise TypeError("Adam.update: state must come from Adam.init(params) (or a previous update)")
        b1, b2 = self.betas
        count = state.count + 1
        c1 = 1.0 - b1 ** count
        c2 = 1.0 - b2 ** count
        mu, nu, new = {}, {}, {}
        for k, p in params.items():
            g = grads[k]
            mu[k] = b1 * state.mu[k] + (1.0 - b1) * g
            nu[k] = b2 * state.nu[k] + (1.0 - b2) * (g * g)
            new[k] = p - self.lr * (mu[k] / c1) / (np.sqrt(nu[k] / c2) + self.eps)
        return new, AdamState(count, mu, nu)


def global_norm(grads: Mapping[str, np.ndarray]) -> float:
    """The Euclidean norm of all gradient entries together (accumulated in float64).

    Example::

        mb.global_norm(grads)
    """
    if not isinstance(grads, Mapping):
        raise TypeError("global_norm: grads must be a dict of arrays")
    total = 0.0
    for g in grads.values():
        g64 = np.asarray(g, dtype=np.float64)
        total += float(np.dot(g64.ravel(), g64.ravel()))
    return math.sqrt(total)


def clip_by_global_norm(grads: Mapping[str, np.ndarray], max_norm: float) -> tuple[Params, float]:
    """Scale all gradients by ``max_norm / norm`` when their global norm exceeds ``max_norm``.

    Returns ``(clipped, norm)`` with ``norm`` the global norm *before*
    clipping. When no clipping is needed the returned dict holds the same
    (unmodified) arrays. Raises FloatingPointError if the norm is not finite.

    Example::

        grads, norm = mb.clip_by_global_norm(grads, 1.0)
    """
    max_norm = _positive_float(max_norm, name="max_norm", where="clip_by_global_norm")
    norm = global_norm(grads)
    if not math.isfinite(norm):
        raise FloatingPointError("clip_by_global_norm: the gradient norm is not finite; check the data and "
                                 "learning rate")
    if norm <= max_norm:
        return dict(grads), norm
    scale = max_norm / norm
    return {k: (g * scale).astype(g.dtype, copy=False) for k, g in grads.items()}, norm


# ---- plain forward (for carrying states across truncation windows) ------------------------------

class _Forward:
    """Run the cell's forward kernel step by step, with no gradient and O(1) memory."""

    def __init__(self, model: Sequence, arrays: tuple[np.ndarray, ...], batch: int):
        sizes = model.sizes(batch=batch, dtype=arrays[0].dtype)
        self.kernel = model.cell.forward_step
        self.arrays = arrays
        self.nxt = np.empty(sizes.state_len, arrays[0].dtype)
        self.internal = np.empty(sizes.internal_len, arrays[0].dtype)
        self.work = np.empty(max(sizes.work_len, 1), arrays[0].dtype)

    def run(self, state: np.ndarray, xs: np.ndarray, start: int, stop: int,
            record: Iterable[int] = ()) -> tuple[np.ndarray, dict[int, np.ndarray]]:
        """Advance a flat state from position ``start`` to ``stop``; copies of the
        states at the positions in ``record`` (within (start, stop]) are returned."""
        wanted = set(record)
        cur = np.array(state, copy=True)
        nxt = self.nxt
        kept = {}
        for t in range(start, stop):
            self.kernel(*self.arrays, xs[t], cur, nxt, self.internal, self.work)
            cur, nxt = nxt, cur
            if t + 1 in wanted:
                kept[t + 1] = cur.copy()
        self.nxt = nxt
        return cur, kept


# ---- schedules, cached per sequence length ------------------------------------------------------

class _Plans:
    """One schedule per (T, batch, dtype) for the caller's budget and policy.

    A fractional budget is a fraction of what plain BPTT keeps for a
    *reference* length: the sequence itself, or for truncated BPTT the
    longest window, min(h, T); shorter windows then get the same bytes.
    """

    def __init__(self, model: Sequence, budget: Any, policy: str | None, *, where: str):
        if policy is None:
            policy = "full" if budget is None else "msm"
        if budget is None and policy != "full":
            raise ValueError(f"{where}: policy={policy!r} needs budget= (bytes, '64MiB' or a fraction)")
        self.model = model
        self.budget = 1.0 if budget is None else budget
        self.fraction = budget is not None and parse_budget(budget)[0] == "fraction"
        self.policy = policy
        self.cache: dict[tuple[int, int, str, int], Schedule] = {}

    def get(self, T: int, batch: int, dtype: np.dtype, ref_T: int | None = None) -> Schedule:
        ref_T = T if (ref_T is None or not self.fraction) else ref_T
        key = (T, batch, np.dtype(dtype).name, ref_T)
        if key not in self.cache:
            budget = self.budget
            try:
                if ref_T != T:
                    budget = plan(ref_T, budget=budget, model=self.model, batch=batch, dtype=dtype,
                                  policy=self.policy).budget_bytes
                self.cache[key] = plan(T, budget=budget, model=self.model, batch=batch, dtype=dtype,
                                       policy=self.policy)
            except MemoryBudgetError as exc:
                if not self.fraction:
                    raise
                raise MemoryBudgetError(
                    f"{exc} (budget={self.budget!r} is a fraction of what plain BPTT keeps for "
                    f"{ref_T} steps, the longest sequence or truncation window; give more, or bytes)",
                    least_bytes=exc.least_bytes) from None
        return self.cache[key]

    def value_and_grad(self, params: Params, xs: np.ndarray, ys: np.ndarray, h0: np.ndarray | None = None,
                       ref_T: int | None = None) -> tuple[float, Params]:
        schedule = self.get(xs.shape[0], xs.shape[1], xs.dtype, ref_T)
        return value_and_grad(self.model, params, xs, ys, schedule=schedule, h0=h0)

    def summaries(self) -> dict[int, dict[str, Any]]:
        out = {}
        for (T, batch, dtype, _), s in sorted(self.cache.items()):
            out[T] = {"T": T, "batch": batch, "dtype": dtype, "policy": s.policy,
                      "forward_steps": s.forward_steps, "peak_bytes": s.peak_bytes,
                      "budget_bytes": s.budget_bytes, "time_ratio": s.time_ratio,
                      "n_hidden_slots": s.n_hidden_slots, "n_internal_slots": s.n_internal_slots}
        return out


# ---- truncated BPTT ------------------------------------------------------------------------------

def _check_truncate(h: Any, h_prime: Any, *, where: str) -> tuple[int, int]:
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
    h, h_prime = _check_truncate(h, h_prime, where="truncation_windows")
    windows = []
    prev = 0
    while prev < T:
        end = min(prev + h_prime, T)
        windows.append((max(0, end - h), prev, end))
        prev = end
    return windows


def _window_value_and_grad(plans: _Plans, params: Params, xs: np.ndarray, ys: np.ndarray, h0: np.ndarray,
                           start: int, loss_from: int, end: int, ref_T: int) -> tuple[float, Params]:
    """Mean loss over steps loss_from+1..end and its gradient back-propagated to ``start``.

    The loss at steps start+1..loss_from must not inject error. value_and_grad
    has no loss mask, so the window is differentiated twice from the same h0:
    over start..end and over start..loss_from, and the second (step-summed)
    result is subtracted. Both runs stay within the budget; the result is
    exact up to rounding (bit-exact when loss_from == start).
    """
    loss_all, g_all = plans.value_and_grad(params, xs[start:end], ys[start:end], h0, ref_T)
    n_pre = loss_from - start
    if n_pre == 0:
        return loss_all, g_all
    n_all = end - start
    n_loss = end - loss_from
    loss_pre, g_pre = plans.value_and_grad(params, xs[start:loss_from], ys[start:loss_from], h0, ref_T)
    loss = (n_all * loss_all - n_pre * loss_pre) / n_loss
    grads = {k: ((n_all * g - n_pre * g_pre[k]) / n_loss).astype(g.dtype, copy=False) for k, g in g_all.items()}
    return loss, grads


def _truncated_passes(model: Sequence, get_params: Callable[[], Params], xs: np.ndarray, ys: np.ndarray,
                      h: int, h_prime: int, plans: _Plans, *, where: str):
    """Yield ``(n_loss_steps, loss, grads)`` per window, fetching the current
    parameters before each window (so a caller may update them in between).

    The state is carried on-line: the forward over steps loss_from+1..end runs
    with the parameters current at that window, and the states at later
    windows' start positions are recorded on the way.
    """
    T, B = xs.shape[:2]
    windows = truncation_windows(T, h=h, h_prime=h_prime)
    starts = {w[0] for w in windows}
    stored: dict[int, np.ndarray] = {}
    cur = None
    for k, (start, loss_from, end) in enumerate(windows):
        params = get_params()
        arrays = model.check_params(params, where=where)
        if cur is None:
            cur = np.zeros(model.sizes(batch=B, dtype=arrays[0].dtype).state_len, arrays[0].dtype)
            stored[0] = cur.copy()
        h0 = model.user_state(stored[start], B)
        # Advance the carried state through this window's new steps, keeping later starts.
        later = [s for s in starts if loss_from < s <= end]
        if k + 1 < len(windows):
            cur, kept = _Forward(model, arrays, B).run(cur, xs, loss_from, end, record=later)
            stored.update(kept)
        loss, grads = _window_value_and_grad(plans, params, xs, ys, h0, start, loss_from, end, min(h, T))
        if k + 1 < len(windows):
            nxt_start = windows[k + 1][0]
            for p in [p for p in stored if p < nxt_start]:
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
    h, h_prime = _check_truncate(h, h_prime, where=where)
    arrays = model.check_params(params, where=where)
    model.check_data(xs, ys, arrays[0].dtype, where=where)
    plans = _Plans(model, budget, policy, where=where)
    T = xs.shape[0]
    loss_total: float | None = None
    grads_total: Params | None = None
    for n_k, loss, grads in _truncated_passes(model, lambda: params, xs, ys, h, h_prime, plans, where=where):
        w = n_k / T  # exactly 1.0 when one window covers the sequence
        if grads_total is None:
            loss_total = w * loss
            grads_total = {k: (w * g).astype(g.dtype, copy=False) for k, g in grads.items()}
        else:
            loss_total += w * loss
            for k, g in grads.items():
                grads_total[k] = (grads_total[k] + w * g).astype(g.dtype, copy=False)
    return float(loss_total), grads_total


# ---- the training loop ---------------------------------------------------------------------------

def _is_pair(data: Any) -> bool:
    return isinstance(data, tuple) and len(data) == 2 and all(isinstance(a, np.ndarray) for a in data)


def _batches(data: Any, steps: int | None, epochs: int | None, seed: int):
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
                    raise TypeError("train: data(rng) must return a tuple (xs, ys) of numpy arrays, got "
                                    f"{type(batch).__name__}")
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
          callback: Callable[[int, Params, dict], Any] | None = None) -> tuple[Params, dict[str, Any]]:
    """Train ``params`` by gradient descent; every gradient fits the memory budget.

    ``data`` is one of

    * a tuple ``(xs, ys)``: the same full batch at every step (``steps=N``;
      ``epochs=N`` means the same, one batch per epoch);
    * a callable ``data(rng) -> (xs, ys)`` drawing a fresh batch per step
      from ``rng = np.random.default_rng(seed)`` (``steps=`` only);
    * an iterable of ``(xs, ys)`` batches: ``epochs=`` passes over it, or
      ``steps=`` batches cycling through it.

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
        clip_norm = _positive_float(clip_norm, name="clip_norm", where=where)
    if truncate is not None:
        if not isinstance(truncate, (tuple, list)) or len(truncate) != 2:
            raise ValueError(f"{where}: truncate={truncate!r} must be a pair (h, h_prime) with h >= h_prime >= 1")
        truncate = _check_truncate(truncate[0], truncate[1], where=where)
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"{where}: seed={seed!r} must be a non-negative int")
    if callback is not None and not callable(callback):
        raise TypeError(f"{where}: callback must be callable as callback(update, params, history)")
    plans = _Plans(model, budget, policy, where=where)
    batches, n_batches = _batches(data, steps, epochs, int(seed))

    current = {k: np.array(v, copy=True) for k, v in params.items()}
    opt_state = optimizer.init(current)
    history: dict[str, Any] = {"loss": [], "grad_norm": [], "time": [], "batch": []}
    t_start = time.perf_counter()
    stop = False
    n_done = 0
    bar = tqdm(total=n_batches, desc="train", unit="batch", disable=not progress, leave=False)
    try:
        for b, batch in enumerate(batches):
            if not _is_pair(batch):
                raise TypeError(f"{where}: batch {b} is {type(batch).__name__}, not a tuple (xs, ys) of arrays")
            xs, ys = batch
            if truncate is None:
                updates = [plans.value_and_grad(current, xs, ys)]
            else:
                model.check_data(xs, ys, current[next(iter(current))].dtype, where=where)
                updates = ((loss, grads) for _, loss, grads in
                           _truncated_passes(model, lambda: current, xs, ys, truncate[0], truncate[1], plans,
                                             where=where))
            for loss, grads in updates:
                if clip_norm is not None:
                    grads, norm = clip_by_global_norm(grads, clip_norm)
                else:
                    norm = global_norm(grads)
                current, opt_state = optimizer.update(current, grads, opt_state)
                history["loss"].append(float(loss))
                history["grad_norm"].append(float(norm))
                history["time"].append(time.perf_counter() - t_start)
                history["batch"].append(b)
                if callback is not None and callback(len(history["loss"]) - 1, current, history) is True:
                    stop = True
                    break
            n_done = b + 1
            bar.update(1)
            bar.set_postfix(loss=f"{history['loss'][-1]:.4g}")
            if stop:
                break
    finally:
        bar.close()
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
    return current, history


# ---- parameter files -----------------------------------------------------------------------------

def save_params(path: str | os.PathLike, params: Mapping[str, np.ndarray]) -> None:
    """Write params to an ``.npz`` file at exactly ``path``, atomically.

    The arrays go to a temporary file in the same directory, which then
    replaces ``path`` (``os.replace``), so a crash never leaves a half-written
    file under that name.

    Example::

        mb.save_params("lstm.npz", params)
    """
    if not isinstance(params, Mapping) or not params:
        raise TypeError("save_params: params must be a non-empty dict of numpy arrays")
    for k, v in params.items():
        if not isinstance(k, str) or not isinstance(v, np.ndarray):
            raise TypeError(f"save_params: params[{k!r}] must be a numpy array under a str name")
        if v.dtype == object:
            raise TypeError(f"save_params: params[{k!r}] has dtype object; only numeric arrays are saved")
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".npz", dir=directory)
    try:
        with os.fdopen(fd, "wb") as fh:
            np.savez(fh, **params)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def load_params(path: str | os.PathLike, model: Sequence | None = None) -> Params:
    """Read params written by :func:`save_params` (or any ``.npz`` of arrays).

    With ``model``, the names and shapes must match ``model.param_shapes``;
    otherwise a ValueError lists every missing, unexpected and mis-shaped
    entry.

    Example::

        params = mb.load_params("lstm.npz", model)
    """
    with np.load(os.fspath(path), allow_pickle=False) as npz:
        params = {k: np.array(npz[k]) for k in npz.files}
    if model is None:
        return params
    if not isinstance(model, Sequence):
        raise TypeError(f"load_params: model must be a memopt_bptt.Sequence, got {type(model).__name__}")
    expected = model.param_shapes
    problems = []
    missing = [k for k in expected if k not in params]
    extra = [k for k in params if k not in expected]
    if missing:
        problems.append(f"missing {missing}")
    if extra:
        problems.append(f"unexpected {extra}")
    for k, shape in expected.items():
        if k in params and params[k].shape != tuple(shape):
            problems.append(f"{k!r} has shape {params[k].shape}, the model expects {tuple(shape)}")
    if problems:
        raise ValueError(f"load_params: {os.fspath(path)!r} does not fit {model!r}: " + "; ".join(problems))
    model.check_params(params, where="load_params")
    return {k: params[k] for k in expected}


# ---- gradient norms by time lag ------------------------------------------------------------------

def grad_norm_by_lag(model: Sequence, params: Params, xs: np.ndarray, ys: np.ndarray, *, budget: Any = None,
                     policy: str | None = None) -> np.ndarray:
    """``||dL/dh_t||`` for t = 1..T (float64 array of length T), L the mean loss.

    The total derivative through every later step, of the hidden output h
    (for an LSTM only h, not c; for a Jordan network the fed-back output y).
    Plotted against t it shows how far back the error reaches (vanishing or
    exploding gradients). Computed in one :func:`value_and_grad` sweep under
    ``budget``/``policy``.

    Example::

        norms = mb.grad_norm_by_lag(model, params, xs, ys)
        norms[0]    # ||dL/dh_1||, the longest lag from the end
    """
    if not isinstance(model, Sequence):
        raise TypeError(f"grad_norm_by_lag: model must be a memopt_bptt.Sequence, got {type(model).__name__}")
    if not isinstance(xs, np.ndarray) or xs.ndim != 3:
        raise ValueError("grad_norm_by_lag: xs must be a numpy array of shape (T, batch, input_size)")
    norms = np.zeros(xs.shape[0] + 1, np.float64)
    value_and_grad(model, params, xs, ys, budget=budget, policy=policy, ds_norms=norms)
    return norms[1:].copy()
