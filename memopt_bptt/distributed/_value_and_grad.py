"""distributed.value_and_grad: one batch's loss and exact gradients, its
shards computed on Dask workers and added by the reduction tree."""

from __future__ import annotations

from typing import Any

import distributed

from .. import Sequence
from ._checks import _check_batch, _check_options, _check_workers, _start
from ._cluster import _Batch, _finish, _run, _Sent
from ._shards import _ys_axis, shard_rows
from ._workers import _portable

__all__ = ["value_and_grad"]


def value_and_grad(client: distributed.Client, model: Sequence, params: dict, xs: Any, ys: Any, *,
                   shards: int | tuple[int, ...], budget: Any = None, policy: str | None = None,
                   return_h0_grad: bool = False, return_stats: bool = False, **kwargs: Any):
    """Loss and exact gradients of the whole batch, its shards computed on Dask workers.

    ``shards``: k equal shards of the batch's rows (k must divide the batch),
    or a tuple of row counts for unequal ones. Each shard runs
    :func:`memopt_bptt.value_and_grad` on a worker with ``budget``/``policy``
    (per shard) and ``kwargs``; ``h0``, ``mask`` and ``lengths`` are split
    with the batch. xs, ys and those arrays are numpy arrays or dask arrays.

    Returns ``(loss, grads)``, then dL/dh0 with ``return_h0_grad=True`` and
    a :class:`Stats` with ``return_stats=True``. The same shards give the same
    bits on any number of workers; see the module docstring for the reduction.

    Example::

        loss, grads = mbd.value_and_grad(client, model, params, xs, ys, budget="4MiB", shards=4)
    """
    where = "distributed.value_and_grad"
    dtype = _start(client, model, params, where)
    rows, options = _check_options(model, dtype, dict(kwargs, budget=budget, policy=policy), where)
    batch = _check_batch(model, dtype, xs, ys, rows, where)
    bounds = shard_rows(batch, shards, where=where)
    if return_h0_grad:
        options["return_h0_grad"] = True
    _check_workers(client, where)
    placed = _Batch(client, xs, ys, _ys_axis(model), rows, bounds)
    root, stats = _run(client, _Sent(client, _portable(model)), params, placed, options, where)
    loss, grads, h0 = _finish(root, where)
    result: list[Any] = [loss, grads]
    if return_h0_grad:
        result.append(h0)
    if return_stats:
        result.append(stats)
    return tuple(result)
