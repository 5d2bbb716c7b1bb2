"""Data-parallel exact gradients on a Dask cluster (the optional ``[dask]`` extra).

Batch rows are independent through the recurrence, so a batch splits into
*shards* of rows: each worker computes its shards' loss and gradients with
:func:`memopt_bptt.value_and_grad` under its own memory ``budget`` (per
shard: a fraction means a fraction of plain BPTT for the shard's rows), and
the shards' results add up to the whole batch's. Scheduling, data placement,
transfer and recovery from lost workers are Dask's (``distributed``); this
module decides only what a shard is and how the shards add up.

How shards add up. The loss is a mean over its terms (every step and batch
row; with ``mask=``/``lengths=``, the valid ones), so shard k's gradient
g_k is its terms' sum divided by its own count n_k, and the whole batch's is
``sum_k n_k g_k / N`` with ``N = sum_k n_k``. Each shard reports n_k with
its result; the products n_k g_k are added in float64 over a fixed pairwise
tree of shard indices (((0 + 1) + (2 + 3)) + ...: pairs, then pairs of
pairs, an odd last one carried up), each addition a task on a worker, and
the root divides by N and casts to the parameters' dtype. The result
depends on the shard count and the data, never on the number of workers or
the order they finish in: the same bits on 1 or 64 workers. One shard gives
the core's result unchanged; more shards agree with the unsharded batch to
rounding (a sum taken in another order, as with the core's lanes).

Keyword arguments go to every shard's :func:`memopt_bptt.value_and_grad`.
Those holding one entry per batch row are split with the batch: ``h0``
along its batch axis (``model.state_shape``; per layer for a list of
layers' states), ``mask`` (T, batch) and ``lengths`` (batch,); ys along
axis 1, or axis 0 for ``loss_at="last"`` (one target per sequence). Any
other array is refused rather than sent whole to every shard.

Inputs are numpy arrays (split on the client and sent once, each shard to
one worker; the client keeps them and sends a shard again if its worker
dies) or dask arrays (each shard's rows assembled on a worker from the
array's chunks, and recomputed by Dask if its worker dies). The parameters
go to one worker per update and the others fetch them from there or from
each other. A budget error names the shard and keeps ``least_bytes``; other
errors on a worker name the shard too. Every call first checks that each
worker imports this package at the client's version (a worker without it
would fail to read the task and never answer). Transfers between the client
and the workers pass through the scheduler unless the client is made with
``Client(..., direct_to_workers=True)``.

The package's modules, each one idea: ``_shards`` (what a shard is: rows
and the batch axis of every argument), ``_checks`` (checks on the client
before any work is sent), ``_workers`` (what runs on the workers: a shard's
value_and_grad and the reduction), ``_cluster`` (one update: placing shards,
submitting the tree, sending again what a dead worker lost), and the two
public calls, ``_value_and_grad`` and ``_train``.

Example::

    from distributed import Client
    import memopt_bptt.distributed as mbd
    client = Client("tcp://scheduler:8786")          # or Client(LocalCluster(...))
    loss, grads = mbd.value_and_grad(client, model, params, xs, ys, budget=0.05, shards=8)
    params, history = mbd.train(model, params, (xs, ys), client=client, shards=8,
                                budget=0.05, optimizer=mb.Adam(1e-3), steps=100)
"""

from __future__ import annotations

try:  # the extra's presence, checked before the modules below import from it
    import dask  # noqa: F401
    import dask.array as da  # noqa: F401
    import distributed  # noqa: F401
    from distributed.client import FutureCancelledError  # noqa: F401
except ImportError as _exc:  # pragma: no cover - exercised only without the extra
    raise ImportError("memopt_bptt.distributed needs dask and distributed: "
                      "pip install 'memopt_bptt[dask]'") from _exc

from ._checks import WAIT_FOR_WORKERS
from ._cluster import MAX_ATTEMPTS
from ._cluster import Stats
from ._shards import ROW_AXES
from ._shards import shard_rows
from ._train import train
from ._value_and_grad import value_and_grad
from ._workers import _model_of  # noqa: F401 - for tests: a model's recipe rebuilt
from ._workers import _portable  # noqa: F401
from ._workers import _Recipe  # noqa: F401

__all__ = ["Stats", "shard_rows", "train", "value_and_grad"]
