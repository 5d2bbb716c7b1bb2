"""distributed.train: memopt_bptt.train's loop with every gradient from the
cluster; the batches placed on the workers once, the optimizer step on the
client."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping
from typing import Any

import distributed
import numpy as np
from tqdm import tqdm

from .. import Sequence
from .. import clip_by_global_norm
from .. import global_norm
from ._checks import _check_batch, _check_options, _check_workers, _is_array, _start
from ._cluster import _Batch, _finish, _run, _Sent
from ._shards import _ys_axis, shard_rows
from ._workers import _portable

__all__ = ["train"]


def _batch_list(data: Any, where: str) -> list[tuple[Any, Any, dict]]:
    """data as a list of (xs, ys, per-batch keyword arguments)."""
    if isinstance(data, tuple) and len(data) == 2 and all(_is_array(a) for a in data):
        return [(data[0], data[1], {})]
    if callable(data):
        raise TypeError(f"{where}: data(rng) draws batches on the client; with client= pass (xs, ys) or a list "
                        "of batches, placed on the workers once (dask arrays load there)")
    if not isinstance(data, (list, tuple)) or not data:
        raise TypeError(f"{where}: data must be a tuple (xs, ys) of arrays or a non-empty list of batches "
                        f"(xs, ys) or (xs, ys, keyword arguments); got {type(data).__name__}")
    out = []
    for b, batch in enumerate(data):
        ok = isinstance(batch, tuple) and len(batch) in (2, 3) and all(_is_array(a) for a in batch[:2])
        if not ok or (len(batch) == 3 and not isinstance(batch[2], Mapping)):
            raise TypeError(f"{where}: batch {b} must be (xs, ys) or (xs, ys, {{'mask': ...}}) with numpy or "
                            "dask arrays")
        out.append((batch[0], batch[1], dict(batch[2]) if len(batch) == 3 else {}))
    return out


def train(model: Sequence, params: dict, data: Any, *, client: distributed.Client, shards: int | tuple[int, ...],
          optimizer: Any, budget: Any = None, policy: str | None = None, steps: int | None = None,
          epochs: int | None = None, clip_norm: float | None = None, progress: bool = True,
          callback: Callable[[int, dict, dict], Any] | None = None, **kwargs: Any) -> tuple[dict, dict]:
    """:func:`memopt_bptt.train`'s loop with each gradient from :func:`value_and_grad` on Dask workers.

    ``data`` is a tuple ``(xs, ys)`` (the same batch at every step) or a list
    of batches ``(xs, ys)`` or ``(xs, ys, {"mask": ...})``; numpy or dask
    arrays. Every batch is split into ``shards`` and placed on the workers
    once, before the first update; then each update sends the
    parameters once, the workers compute their shards where the data is,
    the reduction tree adds them, and the client clips (``clip_norm``) and
    takes the optimizer step. ``steps=`` updates cycle through the batches,
    or ``epochs=`` passes. ``kwargs`` go to every shard's
    :func:`memopt_bptt.value_and_grad` (``h0``/``mask``/``lengths`` split).

    Returns ``(params, history)`` as :func:`memopt_bptt.train` does ("loss",
    "grad_norm", "time", "batch" per update), plus "stats" (a :class:`Stats`
    per update) and "shards" (the rows of each shard of the first batch).
    The same data and shards give the same bits on any number of workers.

    Example::

        params, history = mbd.train(model, params, (xs, ys), client=client, shards=4, budget=0.05,
                                    optimizer=mb.Adam(1e-3), steps=100)
    """
    where = "distributed.train"
    dtype = _start(client, model, params, where)
    if not (callable(getattr(optimizer, "init", None)) and callable(getattr(optimizer, "update", None))):
        raise TypeError(f"{where}: optimizer={optimizer!r} must have init(params) and "
                        "update(params, grads, state), e.g. mb.Adam(1e-3) or mb.SGD(0.1)")
    given = [v for v in (steps, epochs) if v is not None]
    if len(given) != 1 or isinstance(given[0], bool) or not isinstance(given[0], (int, np.integer)) or given[0] < 1:
        raise ValueError(f"{where}: give exactly one of steps= (updates) or epochs= (passes over the batches), "
                         f"an int >= 1; got steps={steps!r}, epochs={epochs!r}")
    if callback is not None and not callable(callback):
        raise TypeError(f"{where}: callback must be callable as callback(update, params, history)")
    batches = _batch_list(data, where)
    shared_rows, options = _check_options(model, dtype, dict(kwargs, budget=budget, policy=policy), where)
    checked = []
    for b, (xs, ys, extras) in enumerate(batches):
        rows, more = _check_options(model, dtype, extras, f"{where}: batch {b}")
        if more:
            raise ValueError(f"{where}: batch {b}'s keyword arguments {sorted(more)} are not per-row arrays; "
                             "pass settings to train itself")
        rows = {**shared_rows, **rows}
        n_rows = _check_batch(model, dtype, xs, ys, rows, f"{where}: batch {b}")
        checked.append((xs, ys, rows, shard_rows(n_rows, shards, where=f"{where}: batch {b}")))
    if clip_norm is not None:
        clip_norm = float(clip_norm)
        if not math.isfinite(clip_norm) or clip_norm <= 0:
            raise ValueError(f"{where}: clip_norm={clip_norm!r} must be a finite number > 0")
    _check_workers(client, where)
    sent_model = _Sent(client, _portable(model))
    placed = [_Batch(client, xs, ys, _ys_axis(model), rows, bounds) for xs, ys, rows, bounds in checked]
    n_updates = int(steps) if steps is not None else int(epochs) * len(placed)
    current = {k: np.array(v, copy=True) for k, v in params.items()}
    opt_state = optimizer.init(current)
    history: dict[str, Any] = {"loss": [], "grad_norm": [], "time": [], "batch": [], "stats": []}
    t_start = time.perf_counter()
    bar = tqdm(total=n_updates, desc="train", unit="update", disable=not progress, leave=False)
    try:
        for update in range(n_updates):
            b = update % len(placed)
            root, stats = _run(client, sent_model, current, placed[b], options, where)
            loss, grads, _ = _finish(root, where)
            if clip_norm is not None:
                grads, norm = clip_by_global_norm(grads, clip_norm)
            else:
                norm = global_norm(grads)
            current, opt_state = optimizer.update(current, grads, opt_state)
            for key, value in (("loss", float(loss)), ("grad_norm", float(norm)),
                               ("time", time.perf_counter() - t_start), ("batch", b), ("stats", stats)):
                history[key].append(value)
            bar.update(1)
            bar.set_postfix(loss=f"{loss:.4g}")
            if callback is not None and callback(update, current, history) is True:
                break
    finally:
        bar.close()
    history.update({"updates": len(history["loss"]), "budget": budget, "policy": policy,
                    "optimizer": repr(optimizer), "shards": placed[0].bounds})
    return current, history
