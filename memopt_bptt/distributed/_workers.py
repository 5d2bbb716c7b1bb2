"""What runs on the workers: a model travels as a recipe of its
constructors' arguments where it can; each shard's loss and gradients come
from the core's value_and_grad as a leaf of the reduction tree, and
:func:`_combine` adds two adjacent parts, dividing at the root (see the
package docstring for the order of the sums)."""

from __future__ import annotations

import dataclasses
import functools
import math
import time
import types
from typing import Any, NamedTuple

import distributed
import numpy as np

from .. import GRU
from .. import LSTM
from .. import Elman
from .. import Embedding
from .. import Jordan
from .. import Sequence
from .. import value_and_grad as _core_value_and_grad
from ._shards import _join_states, _loss_terms, _map_state, _state_axes


_CELLS = {"lstm": LSTM, "gru": GRU, "elman": Elman, "jordan": Jordan}


class _Recipe(NamedTuple):
    """A model of built-in layers as its constructors' arguments. A pickled
    model carries its Numba kernels by value, and a worker compiles such
    copies again (a minute and more with an empty cache); rebuilt from the
    recipe, the model uses the worker's own module-level kernels, cached."""

    layers: tuple     # ("embedding", vocab, dim, ()) or (cell kind, input, hidden, options as items)
    stacked: bool     # a list of layers (PyTorch's rnn.* names) rather than one cell
    settings: tuple   # output_size, loss, lanes, unit_threads, loss_at, flush_denormals


@functools.lru_cache(maxsize=16)
def _model_of(recipe: _Recipe) -> Sequence:
    layers = [Embedding(a, b) if kind == "embedding" else _CELLS[kind](a, b, **dict(options))
              for kind, a, b, options in recipe.layers]
    output_size, loss, lanes, unit_threads, loss_at, flush_denormals = recipe.settings
    return Sequence(layers if recipe.stacked else layers[0], output_size=output_size, loss=loss, lanes=lanes,
                    unit_threads=unit_threads, loss_at=loss_at, flush_denormals=flush_denormals)


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
                         (model.output_size, model.loss, model.lanes, model.unit_threads, model.loss_at,
                          model.flush_denormals))
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
