"""Gradient norms by time lag: how far back the error reaches.

:func:`grad_norm_by_lag` asks :func:`memopt_bptt.value_and_grad` for the norm
of dL/dh_t at every step during its one backward sweep (``ds_norms=``), so it
costs one gradient under the caller's budget and keeps nothing per step but
one float.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .._model import Sequence
from .._value_and_grad import value_and_grad

__all__ = ["grad_norm_by_lag"]

Params = dict[str, np.ndarray]


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
