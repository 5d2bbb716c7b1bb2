"""Checks on the client, before any work is sent: the client, the model and
parameters, the keyword arguments (per-row arrays split with the batch, the
rest passed to every shard, a few refused), the batch's shapes, and every
worker importing this package at the client's version."""

from __future__ import annotations

import math
import weakref
from typing import Any

import dask.array as da
import distributed
import numpy as np

from .. import POLICIES
from .. import Sequence
from .. import __version__
from .. import parse_budget
from ._shards import ROW_AXES, _loss_terms, _state_axes, _ys_axis

__all__ = ["WAIT_FOR_WORKERS"]


_REFUSED = {
    "schedule": "a schedule is planned for one batch size and each worker plans its own shard's; pass budget= "
                "and policy=",
    "ds_norms": "an output array cannot be filled from other processes",
    "return_report": "a report holds the whole schedule; pass return_stats=True for the shards' workers and times",
}


WAIT_FOR_WORKERS = 30.0
"""Seconds a call waits for a first worker to join before saying the cluster has none."""


_PROBE = "__import__('memopt_bptt').__version__"


_CHECKED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


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


def _start(client: Any, model: Any, params: Any, where: str) -> np.dtype:
    _check_client(client, where)
    if not isinstance(model, Sequence):
        raise TypeError(f"{where}: model must be a memopt_bptt.Sequence, got {type(model).__name__}")
    return model.check_params(params, where=where)[0].dtype
