"""One update on the cluster: the shards placed on the workers once (sent,
or computed there from dask arrays), the parameters sent to one worker, the
shards' tasks and the reduction tree submitted, and everything sent again
when a worker dies with data (up to ``MAX_ATTEMPTS`` times); the root's
failures become the client's errors, naming the shard."""

from __future__ import annotations

import time
import uuid
from typing import Any, NamedTuple

import dask
import dask.array as da
import distributed
from distributed.client import FutureCancelledError

from .. import MemoryBudgetError
from ._shards import _map_state, _state_axes, _take
from ._workers import _combine, _model_of, _Part, _Recipe, _shard_value_and_grad

__all__ = ["MAX_ATTEMPTS", "Stats"]


MAX_ATTEMPTS = 3
"""Times an update is submitted when a worker dies and takes data with it
(Dask itself reruns a task whose worker died while running it)."""


class Stats(NamedTuple):
    """Where and how long each shard ran (``return_stats=True``; train's history)."""

    rows: tuple[tuple[int, int], ...]   # (first row, end row) of each shard, in shard order
    workers: tuple[str, ...]            # the worker that computed each shard
    shard_seconds: tuple[float, ...]    # each shard's value_and_grad on its worker
    wall_time: float                    # seconds, from sending the parameters to the reduced result
    attempts: int                       # 1, or more when a worker died with a shard's data

    @property
    def busiest_seconds(self) -> float:
        """The most shard time any one worker spent in the update."""
        per_worker: dict[str, float] = {}
        for worker, seconds in zip(self.workers, self.shard_seconds):
            per_worker[worker] = per_worker.get(worker, 0.0) + seconds
        return max(per_worker.values())

    @property
    def overhead(self) -> float:
        """Wall time not spent computing on the busiest worker: scheduling,
        transfers and the reduction."""
        return self.wall_time - self.busiest_seconds


def _piece(xs: Any, ys: Any, extras: dict) -> tuple:
    return xs, ys, extras


_GONE = ("cancelled", "lost", "error")


class _Sent:
    """One object sent to one worker, from which the others fetch it when a
    task needs it (Dask's transfers: once per worker), and sent again only if
    every copy was lost. Not broadcast: replicating to a worker that has just
    died waits for connection timeouts."""

    def __init__(self, client: distributed.Client, value: Any):
        self.client, self.value, self.future = client, value, None

    def get(self) -> Any:
        if self.future is None or self.future.status in _GONE:
            [self.future] = self.client.scatter([self.value], hash=False)
        return self.future


class _Batch:
    """One batch's shards placed on the workers: a future per shard holding
    (xs, ys, per-row arrays), and what places a lost one again."""

    def __init__(self, client: distributed.Client, xs: Any, ys: Any, ys_axis: int, rows: dict, bounds: tuple):
        self.client = client
        self.bounds = bounds
        arrays = [xs, ys] + [p for a, _ in rows.values() for p in (a if isinstance(a, list) else [a])]
        self.lazy = any(isinstance(a, da.Array) for a in arrays)
        self.sources = []
        for b0, b1 in bounds:
            extras = {name: _map_state(lambda a, axis: _take(a, axis, b0, b1), value, axes)
                      for name, (value, axes) in rows.items()}
            shard = (_take(xs, 1, b0, b1), _take(ys, ys_axis, b0, b1), extras)
            self.sources.append(dask.delayed(_piece)(*shard) if self.lazy else shard)
        self.futures: list = [None] * len(bounds)
        self.place()

    def place(self) -> None:
        """Send (or compute on the workers) every shard not held by a worker."""
        lost = [k for k, f in enumerate(self.futures) if f is None or f.status in _GONE]
        if not lost:
            return
        sources = [self.sources[k] for k in lost]
        futures = self.client.compute(sources) if self.lazy else self.client.scatter(sources, hash=False)
        for k, f in zip(lost, futures):
            self.futures[k] = f


def _submit(client: distributed.Client, model: _Sent, params: _Sent, batch: _Batch, options: dict,
            leaves: list, root: tuple) -> Any:
    """Submit the shards not already computing, and the reduction tree over all of them; the root's future."""
    tag = uuid.uuid4().hex
    for k, (future, rows) in enumerate(zip(batch.futures, batch.bounds)):
        if leaves[k] is None or leaves[k].status in _GONE:
            leaves[k] = client.submit(_shard_value_and_grad, model.get(), params.get(), future, k, rows, options,
                                      key=f"memopt_bptt-shard-{k}-{tag}", pure=False)
    level = list(leaves)
    depth = 0
    while len(level) > 1:
        depth += 1
        last = root if len(level) == 2 else None
        pairs = [client.submit(_combine, level[i], level[i + 1], last, key=f"memopt_bptt-sum-{depth}-{i // 2}-{tag}",
                               pure=False) for i in range(0, len(level) - 1, 2)]
        level = pairs + level[len(pairs) * 2:]
    return level[0]


def _run(client: distributed.Client, model: _Sent, params: dict, batch: _Batch, options: dict,
         where: str) -> tuple[_Part, Stats]:
    """One update's reduced part: parameters sent once, shards computed where their data is."""
    t0 = time.perf_counter()
    value = model.value
    root = (next(iter(params.values())).dtype, _state_axes(_model_of(value) if isinstance(value, _Recipe) else value))
    leaves: list = [None] * len(batch.bounds)
    sent = _Sent(client, params)
    for attempt in range(1, MAX_ATTEMPTS + 1):
        batch.place()
        try:
            result = _submit(client, model, sent, batch, options, leaves, root).result()
        except FutureCancelledError:  # a worker died with a shard's data (or the parameters): send them again
            if attempt == MAX_ATTEMPTS:
                raise RuntimeError(f"{where}: workers died holding shard data {MAX_ATTEMPTS} times in one update; "
                                   "check the workers' logs (memory limits, crashes)") from None
            continue
        stats = Stats(batch.bounds, result.workers, result.seconds, time.perf_counter() - t0, attempt)
        return result, stats
    raise AssertionError("unreachable")


def _finish(root: _Part, where: str) -> tuple:
    """(loss, grads, h0 grads or None) of the whole batch from the tree's root."""
    if root.failures:
        first = root.failures[0]
        others = f" ({len(root.failures) - 1} other shards failed too)" if len(root.failures) > 1 else ""
        message = (f"{where}: shard {first.shard} (batch rows {first.rows[0]}..{first.rows[1] - 1}, on worker "
                   f"{first.worker}): {first.message}{others}")
        if first.kind == "MemoryBudgetError":
            raise MemoryBudgetError(message, least_bytes=first.least_bytes)
        raise {"TypeError": TypeError, "FloatingPointError": FloatingPointError}.get(first.kind, ValueError)(message)
    if not root.mean:
        raise ValueError(f"{where}: every loss term of the batch is masked out (mask/lengths); nothing to "
                         "differentiate")
    return root.loss, root.grads, root.h0_grads[0][1] if root.h0_grads else None
