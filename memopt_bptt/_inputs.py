"""Checking a call's data: inputs or token ids, targets, masks, lengths and h0.

Inputs are read in place: xs (a read-only array or an ``np.memmap`` too) is
handed to the executor as it is when C-contiguous, and every check streams
over it with reductions or in chunks of ``CHUNK_STEPS`` steps, so checking
allocates O(chunk), never O(T). Masks and labels become small contiguous
arrays of their own (float64 weights, int64 labels) unless they already are.

The loss of one call is ``sum(w[t, b] * loss[t, b]) / sum(w[t, b])`` over
the steps and rows counted (times ``output_size`` for "mse", whose loss is
the mean over output elements): w is 1 at every step (``loss_at="every"``,
no mask), 1 before each sequence's length (``lengths=``), the mask's value
there (``mask=``, 0/1 or weights >= 0), or 1 only at each sequence's last
valid step (``loss_at="last"``). With 0/1 weights that is PyTorch's
``reduction="mean"`` over the counted targets.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np

__all__ = ["CHUNK_STEPS", "Checked", "EVERY", "LENGTHS", "MASK", "LAST", "all_finite", "check_data", "check_xs"]

CHUNK_STEPS = 4096
EVERY, LENGTHS, MASK, LAST = 0, 1, 2, 3  # loss modes: how the sweep weighs each step's rows


class Checked(NamedTuple):
    """One call's data in the executor's form."""

    xs: np.ndarray        # (T, batch, input) floats, or (T, batch) token ids; read in place
    ys_f: np.ndarray      # float targets (steps, batch, output), (1, batch, output) for loss_at="last"; or a dummy
    ys_i: np.ndarray      # int64 labels (steps, batch), (1, batch) for loss_at="last"; or a dummy
    mask: np.ndarray      # float64 (T, batch) weights, or a (1, 1) dummy
    lengths: np.ndarray   # int64 (batch,): each sequence's valid steps (T when not given)
    h0: np.ndarray        # the flat initial state
    loss_mode: int        # EVERY, LENGTHS, MASK or LAST
    n_terms: float        # the loss's denominator: sum of the weights (times output_size for mse)


def all_finite(a: np.ndarray) -> bool:
    """No NaN or inf, without a temporary as large as ``a`` (min/max propagate NaN)."""
    if a.size == 0 or not np.issubdtype(a.dtype, np.inexact):
        return True
    return bool(np.isfinite(a.min()) and np.isfinite(a.max()))


def batch_of(xs: Any) -> int:
    return xs.shape[1] if isinstance(xs, np.ndarray) and xs.ndim >= 2 else 0


def _in_place(a: np.ndarray) -> np.ndarray:
    """A plain ndarray view of ``a`` (a memmap stays on disk), contiguous; copied only if it is not."""
    a = a.view(np.ndarray) if type(a) is not np.ndarray else a
    return a if a.flags.c_contiguous else np.ascontiguousarray(a)


def check_xs(model: Any, xs: Any, dtype: np.dtype, *, where: str) -> np.ndarray:
    """xs checked: floats of shape (T, batch, input_size), or token ids (T, batch) with an embedding."""
    emb = model.embedding
    if emb is not None:
        if not isinstance(xs, np.ndarray) or xs.ndim != 2 or xs.shape[0] < 1 or xs.shape[1] < 1:
            got = xs.shape if isinstance(xs, np.ndarray) else type(xs).__name__
            raise ValueError(f"{where}: xs must hold token ids of shape (T, batch) for a model with an "
                             f"embedding, got {got}")
        if not np.issubdtype(xs.dtype, np.integer):
            raise TypeError(f"{where}: xs must hold integer token ids for a model with an embedding, got {xs.dtype}")
        lo, hi = int(xs.min()), int(xs.max())
        if lo < 0 or hi >= emb.vocab_size:
            raise ValueError(f"{where}: xs holds token ids {lo}..{hi}, outside the vocabulary [0, {emb.vocab_size}) "
                             "(padding too: every step is run); map them into range or enlarge vocab_size")
        return _in_place(xs)
    n_in = model.input_size
    if not isinstance(xs, np.ndarray):
        raise TypeError(f"{where}: xs must be a numpy array of shape (T, batch, {n_in})")
    if xs.ndim != 3 or xs.shape[2] != n_in or xs.shape[0] < 1 or xs.shape[1] < 1:
        raise ValueError(f"{where}: xs has shape {xs.shape}, expected (T, batch, {n_in}) with T >= 1 and batch >= 1")
    if xs.dtype != dtype:
        raise TypeError(f"{where}: xs is {xs.dtype} but params are {dtype}; cast one to match "
                        f"(e.g. xs.astype(np.{dtype.name}))")
    if not all_finite(xs):
        raise ValueError(f"{where}: xs contains NaN or inf")
    return _in_place(xs)


def check_lengths(lengths: Any, T: int, B: int, *, where: str) -> np.ndarray:
    if not isinstance(lengths, np.ndarray) or lengths.shape != (B,):
        got = lengths.shape if isinstance(lengths, np.ndarray) else type(lengths).__name__
        raise ValueError(f"{where}: lengths has shape {got}, expected (batch,) = ({B},): one length per sequence")
    if not np.issubdtype(lengths.dtype, np.integer):
        raise TypeError(f"{where}: lengths must be integers (steps per sequence), got {lengths.dtype}")
    lo, hi = int(lengths.min()), int(lengths.max())
    if lo < 1 or hi > T:
        bad = int(np.flatnonzero((lengths < 1) | (lengths > T))[0])
        raise ValueError(f"{where}: lengths[{bad}] = {int(lengths[bad])} is outside 1..T = 1..{T}; every sequence "
                         "needs at least one step and at most xs's T (drop empty sequences from the batch)")
    return np.ascontiguousarray(lengths, dtype=np.int64)


def _check_mask(mask: Any, T: int, B: int, *, where: str) -> np.ndarray:
    if not isinstance(mask, np.ndarray) or mask.shape != (T, B):
        got = mask.shape if isinstance(mask, np.ndarray) else type(mask).__name__
        raise ValueError(f"{where}: mask has shape {got}, expected (T, batch) = ({T}, {B})")
    if not (np.issubdtype(mask.dtype, np.number) or mask.dtype == np.bool_):
        raise TypeError(f"{where}: mask must be 0/1, bool or float weights, got {mask.dtype}")
    w = np.ascontiguousarray(mask, dtype=np.float64)
    if not all_finite(w) or w.min() < 0:
        raise ValueError(f"{where}: mask must hold finite weights >= 0 (0/1 to leave steps out)")
    return w


def _weighted_sum(mask: np.ndarray, lengths: np.ndarray, T: int) -> float:
    """sum of mask[t, b] over t < lengths[b], streamed over T in chunks (a fixed order: the same bits always)."""
    total = 0.0
    for a in range(0, T, CHUNK_STEPS):
        z = min(a + CHUNK_STEPS, T)
        valid = np.arange(a, z)[:, None] < lengths[None, :]
        total += float(np.where(valid, mask[a:z], 0.0).sum())
    return total


def _check_labels(ys: np.ndarray, n_out: int, mode: int, mask: np.ndarray, lengths: np.ndarray, *,
                  where: str) -> None:
    """Labels in [0, n_out) wherever they are counted (padding may hold anything, e.g. -100)."""
    if mode in (EVERY, LAST):
        if ys.size and (ys.min() < 0 or ys.max() >= n_out):
            raise ValueError(f"{where}: ys labels must be in [0, {n_out}); found {int(ys.min())}..{int(ys.max())}")
        return
    T = ys.shape[0]
    for a in range(0, T, CHUNK_STEPS):
        z = min(a + CHUNK_STEPS, T)
        counted = np.arange(a, z)[:, None] < lengths[None, :]
        if mode == MASK:
            counted &= mask[a:z] > 0
        labels = ys[a:z][counted]
        if labels.size and (labels.min() < 0 or labels.max() >= n_out):
            raise ValueError(f"{where}: ys labels at counted steps must be in [0, {n_out}); found "
                             f"{int(labels.min())}..{int(labels.max())}")


def check_data(model: Any, xs: Any, ys: Any, dtype: np.dtype, *, where: str, h0: Any = None, mask: Any = None,
               lengths: Any = None) -> Checked:
    """Everything a call's sweep reads, checked (see the module docstring for the loss's weights)."""
    xs_c = check_xs(model, xs, dtype, where=where)
    T, B = xs_c.shape[:2]
    h0_flat = model.check_h0(h0, B, dtype, where=where)
    last = model.loss_at == "last"
    if last and mask is not None:
        raise ValueError(f"{where}: mask= and loss_at='last' both choose the steps counted; give lengths= for "
                         "where each sequence ends, or a mask with loss_at='every'")
    lens = (check_lengths(lengths, T, B, where=where) if lengths is not None
            else np.full(B, T, np.int64))
    weights = _check_mask(mask, T, B, where=where) if mask is not None else np.zeros((1, 1), np.float64)
    mode = LAST if last else MASK if mask is not None else LENGTHS if lengths is not None else EVERY
    rows = 1 if last else T
    n_out = model.output_size
    if not isinstance(ys, np.ndarray):
        raise TypeError(f"{where}: ys must be a numpy array")
    if model.loss == "mse":
        expect = (B, n_out) if last else (T, B, n_out)
        if ys.shape != expect:
            raise ValueError(f"{where}: ys has shape {ys.shape}, expected {expect} for loss='mse'"
                             + (" and loss_at='last' (one target per sequence)" if last else
                                " (T, batch, output_size)"))
        if ys.dtype != dtype:
            raise TypeError(f"{where}: ys is {ys.dtype} but params are {dtype}; cast ys to match")
        if not all_finite(ys):
            raise ValueError(f"{where}: ys contains NaN or inf")
        ys_f = _in_place(ys).reshape((rows, B, n_out))
        ys_i = np.zeros((1, 1), np.int64)
    else:
        expect = (B,) if last else (T, B)
        if ys.shape != expect:
            raise ValueError(f"{where}: ys has shape {ys.shape}, expected integer labels of shape {expect} for "
                             "loss='cross_entropy'" + (" and loss_at='last' (one label per sequence)" if last
                                                        else " (T, batch)"))
        if not np.issubdtype(ys.dtype, np.integer):
            raise TypeError(f"{where}: ys must hold integer class labels for loss='cross_entropy', got {ys.dtype}")
        _check_labels(ys.reshape((rows, B)), n_out, mode, weights, lens, where=where)
        ys_i = np.ascontiguousarray(ys, dtype=np.int64).reshape((rows, B))
        ys_f = np.zeros((1, 1, 1), dtype)
    if mode == EVERY:
        n_terms = float(T * B)
    elif mode == LENGTHS:
        n_terms = float(lens.sum())
    elif mode == LAST:
        n_terms = float(B)
    else:
        n_terms = _weighted_sum(weights, lens, T)
        if n_terms <= 0.0:
            raise ValueError(f"{where}: the mask leaves no step counted (every weight before each sequence's "
                             "length is 0); there is no loss to differentiate")
    if model.loss == "mse":
        n_terms *= n_out
    return Checked(xs_c, ys_f, ys_i, weights, lens, h0_flat, mode, n_terms)
