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

Example::

    from distributed import Client
    import memopt_bptt.distributed as mbd
    client = Client("tcp://scheduler:8786")          # or Client(LocalCluster(...))
    loss, grads = mbd.value_and_grad(client, model, params, xs, ys, budget=0.05, shards=8)
    params, history = mbd.train(model, params, (xs, ys), client=client, shards=8,
                                budget=0.05, optimizer=mb.Adam(1e-3), steps=100)
"""

from __future__ import annotations

import dataclasses
import functools
import math
import time
import types
import uuid
import weakref
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import numpy as np
from tqdm import tqdm

try:
    import dask
    import dask.array as da
    import distributed
    from distributed.client import FutureCancelledError
except ImportError as _exc:  # pragma: no cover - exercised only without the extra
    raise ImportError("memopt_bptt.distributed needs dask and distributed: "
                      "pip install 'memopt_bptt[dask]'") from _exc

from . import GRU
from . import LSTM
from . import POLICIES
from . import Elman
from . import Embedding
from . import Jordan
from . import MemoryBudgetError
from . import Sequence
from . import __version__
from . import clip_by_global_norm
from . import global_norm
from . import parse_budget
from . import value_and_grad as _core_value_and_grad

__all__ = ["Stats", "shard_rows", "train", "value_and_grad"]

ROW_AXES = {"mask": 1, "lengths": 0}
"""Keyword arguments with one entry per batch row, and the axis that holds the
rows (``h0``'s axis comes from ``model.state_shape``)."""
_REFUSED = {
    "schedule": "a schedule is planned for one batch size and each worker plans its own shard's; pass budget= "
                "and policy=",
    "ds_norms": "an output array cannot be filled from other processes",
    "return_report": "a report holds the whole schedule; pass return_stats=True for the shards' workers and times",
}
MAX_ATTEMPTS = 3
"""Times an update is submitted when a worker dies and takes data with it
(Dask itself reruns a task whose worker died while running it)."""
WAIT_FOR_WORKERS = 30.0
"""Seconds a call waits for a first worker to join before saying the cluster has none."""
_PROBE = "__import__('memopt_bptt').__version__"
_CHECKED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


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


# ---- what runs on the workers ---------------------------------------------------

_CELLS = {"lstm": LSTM, "gru": GRU, "elman": Elman, "jordan": Jordan}


class _Recipe(NamedTuple):
    """A model of built-in layers as its constructors' arguments. A pickled
    model carries its Numba kernels by value, and a worker compiles such
    copies again (a minute and more with an empty cache); rebuilt from the
    recipe, the model uses the worker's own module-level kernels, cached."""

    layers: tuple     # ("embedding", vocab, dim, ()) or (cell kind, input, hidden, options as items)
    stacked: bool     # a list of layers (PyTorch's rnn.* names) rather than one cell
    settings: tuple   # output_size, loss, lanes, unit_threads, loss_at


@functools.lru_cache(maxsize=16)
def _model_of(recipe: _Recipe) -> Sequence:
    layers = [Embedding(a, b) if kind == "embedding" else _CELLS[kind](a, b, **dict(options))
              for kind, a, b, options in recipe.layers]
    output_size, loss, lanes, unit_threads, loss_at = recipe.settings
    return Sequence(layers if recipe.stacked else layers[0], output_size=output_size, loss=loss, lanes=lanes,
                    unit_threads=unit_threads, loss_at=loss_at)


def _same_field(a: Any, b: Any) -> bool:
    """Equal, the same object, or the same Python function's code over equal closure values."""
    if a is b or (not callable(a) and a == b):
        return True
    if isinstance(a, types.FunctionType) and isinstance(b, types.FunctionType) and a.__code__ is b.__code__:
        return [c.cell_contents for c in a.__closure__ or ()] == [c.cell_contents for c in b.__closure__ or ()]
    if isinstance(a, tuple) and isinstance(b, tuple) and len(a) == len(b):
        return all(_same_field(x, y) for x, y in zip(a, b))
    return False


def _portable(model: Sequence) -> Sequence | _Recipe:
    """The model's recipe when rebuilding it gives the same cells (the same Numba kernels), else the model."""
    try:
        layers = [("embedding", model.embedding.vocab_size, model.embedding.embedding_dim, ())] \
            if model.embedding is not None else []
        layers += [(c.kind, c.input_size, c.hidden_size, tuple(sorted(c.options.items()))) for c in model.cells]
        recipe = _Recipe(tuple(layers), bool(model.layers.stacked),
                         (model.output_size, model.loss, model.lanes, model.unit_threads, model.loss_at))
        rebuilt = _model_of(recipe)
    except (KeyError, TypeError, ValueError, AttributeError):
        return model
    same = repr(rebuilt) == repr(model) and rebuilt.param_shapes == model.param_shapes and all(
        _same_field(getattr(a, f.name), getattr(b, f.name))
        for a, b in zip(rebuilt.cells, model.cells) for f in dataclasses.fields(a))
    return recipe if same else model


class _Failure(NamedTuple):
    shard: int
    rows: tuple[int, int]
    worker: str
    kind: str
    message: str
    least_bytes: int | None


class _Part(NamedTuple):
    """The result of one shard (a leaf) or of adjacent shards (a node of the tree)."""

    count: float         # loss terms (times a constant common to every shard)
    loss: float          # the mean loss (mean), or the float64 sum of count * mean loss
    grads: dict | None   # the mean's gradients in the params' dtype (mean), or float64 sums of count * gradient
    mean: bool           # a leaf, or the root once divided by the total count
    h0_grads: tuple      # (count, dL/dh0 of its mean) per shard (one for the root), with return_h0_grad
    workers: tuple
    seconds: tuple
    failures: tuple


def _worker_address() -> str:
    try:
        return distributed.get_worker().address
    except ValueError:  # not on a worker: a test's single-process run of the same code
        return "local"


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


def _shard_value_and_grad(model: Sequence, params: dict, piece: tuple, shard: int, rows: tuple[int, int],
                         options: dict) -> _Part:
    """One shard's loss and gradients on a worker, as a leaf of the reduction tree."""
    xs, ys, extras = piece
    worker = _worker_address()
    t0 = time.perf_counter()
    model = _model_of(model) if isinstance(model, _Recipe) else model
    count = _loss_terms(xs.shape[0], xs.shape[1], extras, model.loss_at)
    try:
        if count == 0:  # every term of this shard masked out: nothing to add
            grads = {k: np.zeros(v.shape, np.float64) for k, v in params.items()}
            dtype = next(iter(params.values())).dtype
            h0_grad = (0.0, _map_state(lambda shape, _: np.zeros(shape, dtype), model.state_shape(xs.shape[1]),
                                       _state_axes(model)))
            part = _Part(0.0, 0.0, grads, False, (h0_grad,) if options.get("return_h0_grad") else (),
                         (worker,), (0.0,), ())
            return part._replace(seconds=(time.perf_counter() - t0,))
        out = _core_value_and_grad(model, params, xs, ys, **extras, **options)
    except (ValueError, TypeError, FloatingPointError) as exc:  # MemoryBudgetError is a ValueError
        failure = _Failure(shard, rows, worker, type(exc).__name__, str(exc), getattr(exc, "least_bytes", None))
        return _Part(count, math.nan, None, True, (), (worker,), (time.perf_counter() - t0,), (failure,))
    h0_grads = ((count, out[2]),) if options.get("return_h0_grad") else ()
    return _Part(count, float(out[0]), out[1], True, h0_grads, (worker,), (time.perf_counter() - t0,), ())


def _sums(part: _Part) -> tuple[float, dict]:
    """(sum of count * loss, float64 sums of count * gradient) of a part."""
    if not part.mean:
        return part.loss, part.grads
    return part.count * part.loss, {k: g.astype(np.float64) * part.count for k, g in part.grads.items()}


def _combine(left: _Part, right: _Part, root: tuple | None = None) -> _Part:
    """Two adjacent parts of the tree as one, left's shards first. At the
    ``root=(dtype, h0's batch axis)`` the sums are divided by the total count
    and cast, there on the worker, so the client receives the params' dtype."""
    failures = left.failures + right.failures
    workers, seconds = left.workers + right.workers, left.seconds + right.seconds
    if failures:
        return _Part(math.nan, math.nan, None, False, (), workers, seconds, failures)
    loss_l, grads_l = _sums(left)
    loss_r, grads_r = _sums(right)
    count, loss = left.count + right.count, loss_l + loss_r
    grads = {k: np.add(grads_l[k], grads_r[k]) for k in grads_l}
    h0_grads = left.h0_grads + right.h0_grads
    if root is None:
        return _Part(count, loss, grads, False, h0_grads, workers, seconds, ())
    if count == 0:  # the client says so
        return _Part(0.0, math.nan, None, False, (), workers, seconds, ())
    dtype, axes = root
    grads = {k: (g / count).astype(dtype) for k, g in grads.items()}
    if h0_grads:
        scaled = [_map_state(lambda g, _, f=c / count: (g * f).astype(dtype), g, axes) for c, g in h0_grads]
        h0_grads = ((count, _join_states(scaled, axes)),)
    return _Part(count, loss / count, grads, True, h0_grads, workers, seconds, ())


# ---- checks on the client, before any work is sent -----------------------------------

def _is_array(value: Any) -> bool:
    return isinstance(value, (np.ndarray, da.Array))


def _check_client(client: Any, where: str) -> None:
    if not isinstance(client, distributed.Client):
        raise TypeError(f"{where}: client must be a distributed.Client, e.g. Client('tcp://scheduler:8786') "
                        f"or Client(LocalCluster()); got {type(client).__name__}")
    if client.asynchronous:
        raise TypeError(f"{where}: client is asynchronous; pass a Client made with asynchronous=False")
    if client.status != "running":
        raise ValueError(f"{where}: client is {client.status}, not running; pass an open distributed.Client "
                         "(a closed one cannot be reopened: make a new one)")


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


def _is_state(value: Any) -> bool:
    return _is_array(value) or (isinstance(value, (list, tuple)) and bool(value) and all(map(_is_array, value)))


def _check_options(model: Sequence, dtype: np.dtype, kwargs: dict, where: str) -> tuple[dict, dict]:
    """(per-row arrays by name with their batch axis, the other keyword arguments)."""
    rows: dict[str, tuple[Any, int]] = {}
    options: dict[str, Any] = {}
    for name, value in kwargs.items():
        if name in _REFUSED:
            raise ValueError(f"{where}: {name}= is not taken here: {_REFUSED[name]}")
        if value is None and (name in ("budget", "policy", "h0") or name in ROW_AXES):
            continue  # the default
        if value is None:
            options[name] = value
        elif name == "h0":
            if not _is_state(value):
                raise TypeError(f"{where}: h0 must be a numpy or dask array (a list of them, one per layer, for "
                                f"a stack of several kinds or sizes), got {type(value).__name__}")
            rows[name] = (list(value) if isinstance(value, tuple) else value, _state_axes(model))
        elif name in ROW_AXES:
            if not _is_array(value):
                raise TypeError(f"{where}: {name} must be a numpy or dask array, got {type(value).__name__}")
            rows[name] = (value, ROW_AXES[name])
        elif _is_array(value):
            raise ValueError(f"{where}: keyword argument {name}= is an array this module does not know how to "
                             f"split by batch rows (it splits {sorted([*ROW_AXES, 'h0'])}); pass it per shard "
                             "with memopt_bptt.value_and_grad instead")
        else:
            options[name] = value
    budget, policy = options.get("budget"), options.get("policy")
    if budget is not None:
        try:
            parse_budget(budget)
        except (TypeError, ValueError) as exc:
            raise type(exc)(f"{where}: {exc}") from None
    if policy is not None and policy not in POLICIES:
        raise ValueError(f"{where}: policy={policy!r} is not known; use one of {POLICIES}")
    if policy not in (None, "full") and budget is None:
        raise ValueError(f"{where}: policy={policy!r} needs budget= (bytes, '64MiB' or a fraction)")
    h0 = rows.get("h0", (None, 0))[0]
    for a in ([] if h0 is None else h0 if isinstance(h0, list) else [h0]):
        if a.dtype != dtype:
            raise TypeError(f"{where}: h0 is {a.dtype} but params are {dtype}; cast h0 to match")
    return rows, options


def _check_batch(model: Sequence, dtype: np.dtype, xs: Any, ys: Any, rows: dict, where: str) -> int:
    """The batch size, once xs, ys and the per-row arrays agree on it."""
    for name, a, axis in (("xs", xs, 1), ("ys", ys, _ys_axis(model))):
        if not _is_array(a):
            raise TypeError(f"{where}: {name} must be a numpy or dask array, got {type(a).__name__}")
        if a.ndim <= axis or any(math.isnan(s) for s in a.shape):
            raise ValueError(f"{where}: {name} has shape {a.shape}; expected the batch on axis {axis} and known "
                             "sizes (for a dask array of unknown chunks call .compute_chunk_sizes() first)")
    T, batch = xs.shape[:2]
    if model.loss_at == "last" and ys.shape[0] != batch:
        raise ValueError(f"{where}: ys has shape {ys.shape} but xs has batch {batch}; with loss_at='last' ys "
                         "holds one target per sequence, (batch, ...)")
    if model.loss_at != "last" and ys.shape[:2] != (T, batch):
        raise ValueError(f"{where}: ys has shape {ys.shape} but xs has (T, batch) = {(T, batch)}; "
                         "give ys the same first two axes")
    if np.issubdtype(xs.dtype, np.floating) and xs.dtype != dtype:
        raise TypeError(f"{where}: xs is {xs.dtype} but params are {dtype}; cast one to match "
                        f"(e.g. xs.astype(np.{dtype.name}))")
    for name, (a, axis) in rows.items():
        expect = model.state_shape(batch) if name == "h0" else ((T, batch) if name == "mask" else (batch,))
        got = [tuple(p.shape) for p in a] if isinstance(a, list) else tuple(a.shape)
        if got != expect:
            raise ValueError(f"{where}: {name} has shape {got}, expected {expect} (split along axis {axis} with "
                             "the batch)")
    counted = {k: rows[k][0] for k in ROW_AXES if k in rows}
    if counted and all(isinstance(a, np.ndarray) for a in counted.values()) \
            and _loss_terms(T, batch, counted, model.loss_at) == 0:
        raise ValueError(f"{where}: every loss term of the batch is masked out (mask/lengths); nothing to "
                         "differentiate")
    return int(batch)


def _check_workers(client: distributed.Client, where: str) -> None:
    """Every worker imports this package at the client's version (each one is asked once)."""
    workers = set(client.scheduler_info(n_workers=-1)["workers"])
    if not workers:  # none yet, or one restarting: wait a little before saying so
        try:
            client.wait_for_workers(1, timeout=WAIT_FOR_WORKERS)
        except (TimeoutError, distributed.TimeoutError):
            pass
        workers = set(client.scheduler_info(n_workers=-1)["workers"])
    if not workers:
        raise RuntimeError(f"{where}: the cluster has no workers; start some (LocalCluster(n_workers=2), "
                           "or `dask worker tcp://scheduler:8786` on each machine)")
    checked = _CHECKED.setdefault(client, set())
    new = sorted(workers - checked)
    if not new:
        return
    # eval of a constant: a probe that needs nothing of ours on the worker to be read
    answers = client.run(eval, _PROBE, workers=new, on_error="return")
    bad = {w: a for w, a in answers.items() if a != __version__}
    if bad:
        worker, answer = sorted(bad.items())[0]
        got = f"cannot import memopt_bptt ({type(answer).__name__}: {answer})" if isinstance(answer, BaseException) \
            else f"has memopt_bptt {answer} but the client has {__version__}"
        raise RuntimeError(f"{where}: worker {worker} {got} ({len(bad)} of {len(new)} new workers so); install "
                           f"memopt_bptt[dask]=={__version__} in every worker's environment")
    checked.update(answers)


# ---- shards on the workers ----------------------------------------------------------

def _take(a: Any, axis: int, b0: int, b1: int) -> Any:
    index = [slice(None)] * a.ndim
    index[axis] = slice(b0, b1)
    return a[tuple(index)]


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


def _start(client: Any, model: Any, params: Any, where: str) -> np.dtype:
    _check_client(client, where)
    if not isinstance(model, Sequence):
        raise TypeError(f"{where}: model must be a memopt_bptt.Sequence, got {type(model).__name__}")
    return model.check_params(params, where=where)[0].dtype


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


# ---- training ------------------------------------------------------------------------

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
