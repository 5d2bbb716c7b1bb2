"""What a shard is: its batch rows (:func:`shard_rows`), the batch axis of
every argument split with it (xs, ys, h0, mask, lengths), taking and joining
those rows, and how many loss terms a shard's mean is over (what the
reduction weighs it by)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from .. import Sequence

__all__ = ["ROW_AXES", "shard_rows"]


ROW_AXES = {"mask": 1, "lengths": 0}
"""Keyword arguments with one entry per batch row, and the axis that holds the
rows (``h0``'s axis comes from ``model.state_shape``)."""


def shard_rows(batch: int, shards: Any, *, where: str = "shard_rows") -> tuple[tuple[int, int], ...]:
    """(first row, end row) of each shard: ``shards`` equal shards, or the sizes given.

    ``shards=k`` needs k to divide the batch (unequal shards weigh unequally in
    time and must be asked for); a tuple of sizes asks for them.

    Example::

        shard_rows(8, 4)           # ((0, 2), (2, 4), (4, 6), (6, 8))
        shard_rows(10, (4, 3, 3))  # ((0, 4), (4, 7), (7, 10))
    """
    if isinstance(shards, (tuple, list)):
        sizes = tuple(shards)
        if not sizes or any(isinstance(s, bool) or not isinstance(s, (int, np.integer)) or s < 1 for s in sizes):
            raise ValueError(f"{where}: shards={shards!r} must be an int >= 1 or a tuple of positive row counts")
        if sum(sizes) != batch:
            raise ValueError(f"{where}: shards={shards!r} adds up to {sum(sizes)} rows but the batch has {batch}; "
                             "give sizes that add up to the batch")
    else:
        if isinstance(shards, bool) or not isinstance(shards, (int, np.integer)) or shards < 1:
            raise ValueError(f"{where}: shards={shards!r} must be an int >= 1 (equal shards of the batch) "
                             "or a tuple of row counts")
        if shards > batch:
            raise ValueError(f"{where}: shards={shards} is more than the batch's {batch} rows; "
                             f"use at most shards={batch}")
        if batch % shards:
            divisors = [d for d in range(1, batch + 1) if batch % d == 0]
            sizes = tuple(batch // shards + (i < batch % shards) for i in range(shards))
            raise ValueError(f"{where}: shards={shards} does not divide the batch of {batch} rows; use one of "
                             f"{divisors}, or ask for unequal shards with shards={sizes}")
        sizes = (batch // int(shards),) * int(shards)
    ends = np.cumsum(sizes).tolist()
    return tuple((int(e - s), int(e)) for s, e in zip(sizes, ends))


def _state_axes(model: Sequence) -> int | list[int]:
    """The batch axis of h0 (``model.state_shape``), or one per layer where h0 is a list of layers' states."""
    def axis(one: tuple, two: tuple) -> int:
        return next(a for a, (p, q) in enumerate(zip(one, two)) if p != q)
    one, two = model.state_shape(1), model.state_shape(2)
    return [axis(p, q) for p, q in zip(one, two)] if isinstance(one, list) else axis(one, two)


def _map_state(fn: Callable[[Any, int], Any], state: Any, axes: int | list[int]) -> Any:
    """``fn(array, batch axis)`` over a state: one array, or a list of layers' arrays."""
    if isinstance(axes, list):
        return [fn(a, axis) for a, axis in zip(state, axes)]
    return fn(state, axes)


def _join_states(parts: list, axes: int | list[int]) -> Any:
    """The shards' states, in shard order, as one batch's."""
    if isinstance(axes, list):
        return [np.concatenate([p[k] for p in parts], axis=axis) for k, axis in enumerate(axes)]
    return np.concatenate(parts, axis=axes)


def _ys_axis(model: Sequence) -> int:
    """ys's batch axis: (T, batch, ...) targets, or one per sequence (batch, ...) with loss_at="last"."""
    return 0 if model.loss_at == "last" else 1


def _take(a: Any, axis: int, b0: int, b1: int) -> Any:
    index = [slice(None)] * a.ndim
    index[axis] = slice(b0, b1)
    return a[tuple(index)]


def _loss_terms(n_steps: int, rows: int, extras: Mapping[str, Any], loss_at: str) -> float:
    """How many loss terms a shard's mean loss is over, up to a factor common
    to every shard (the output size for "mse"), as the core counts them: T *
    rows; one per row with ``loss_at="last"``; or the sum of the weights of
    ``mask`` (1 without one) before each row's ``lengths``.

    Example::

        _loss_terms(100, 8, {}, "every")                                # 800.0
        _loss_terms(3, 2, {"lengths": np.array([3, 1])}, "every")       # 4.0
    """
    mask = extras.get("mask")
    lengths = extras.get("lengths")
    if loss_at == "last":
        return float(rows)
    if mask is None and lengths is None:
        return float(n_steps * rows)
    weights = np.ones((n_steps, rows)) if mask is None else np.asarray(mask, dtype=np.float64)
    if lengths is not None:
        steps = np.arange(n_steps)[:, None]
        weights = np.where(steps < np.asarray(lengths)[None, :], weights, 0.0)
    return float(weights.sum())
