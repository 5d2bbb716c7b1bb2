"""Optimizers and gradient clipping, in plain NumPy.

Small pure objects in the style of optax: ``init(params) -> state`` and
``update(params, grads, state) -> (params, state)``; the state is a
NamedTuple, and the caller's arrays are never modified. :class:`SGD` and
:class:`Adam` follow ``torch.optim``'s conventions, so a step here and a step
there agree to rounding (tests/test_train.py checks both).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, NamedTuple

import numpy as np

__all__ = [
    "SGD",
    "SGDState",
    "Adam",
    "AdamState",
    "clip_by_global_norm",
    "global_norm",
]

Params = dict[str, np.ndarray]


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


def positive_number(value: Any, *, name: str, where: str, allow_zero: bool = False) -> float:
    """``value`` as a finite float > 0 (>= 0 with ``allow_zero``); the error names ``where`` and ``name``."""
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
        self.lr = positive_number(lr, name="lr", where="SGD")
        self.momentum = positive_number(momentum, name="momentum", where="SGD", allow_zero=True)
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
        self.lr = positive_number(lr, name="lr", where="Adam")
        if not isinstance(betas, (tuple, list)) or len(betas) != 2:
            raise TypeError(f"Adam: betas={betas!r} must be a pair (b1, b2)")
        b1 = positive_number(betas[0], name="betas[0]", where="Adam", allow_zero=True)
        b2 = positive_number(betas[1], name="betas[1]", where="Adam", allow_zero=True)
        if b1 >= 1.0 or b2 >= 1.0:
            raise ValueError(f"Adam: betas={betas!r} must both be in [0, 1)")
        self.betas = (b1, b2)
        self.eps = positive_number(eps, name="eps", where="Adam")

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
    max_norm = positive_number(max_norm, name="max_norm", where="clip_by_global_norm")
    norm = global_norm(grads)
    if not math.isfinite(norm):
        raise FloatingPointError("clip_by_global_norm: the gradient norm is not finite; check the data and "
                                 "learning rate")
    if norm <= max_norm:
        return dict(grads), norm
    scale = max_norm / norm
    return {k: (g * scale).astype(g.dtype, copy=False) for k, g in grads.items()}, norm
