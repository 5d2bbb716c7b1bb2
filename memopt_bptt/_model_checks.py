"""Checking a call's parameters and initial state at Sequence's boundary
(dtypes, names, shapes, finiteness); the data's checks are memopt_bptt._inputs'."""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from . import _inputs

_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


def _dtype_of(dtype: Any, *, where: str) -> np.dtype:
    try:
        dt = np.dtype(dtype)
    except TypeError:
        raise TypeError(f"{where}: dtype={dtype!r} is not a dtype; use 'float32' or 'float64'") from None
    if dt not in _DTYPES:
        raise TypeError(f"{where}: dtype={dtype!r} is not supported; use 'float32' or 'float64'")
    return dt


class _Checks:
    """Sequence's input checks (a part of :class:`memopt_bptt.Sequence`)."""

    def check_params(self, params: Any, *, where: str = "value_and_grad") -> tuple[np.ndarray, ...]:
        """The parameter arrays in kernel order, checked; dtype must agree."""
        if not isinstance(params, Mapping):
            raise TypeError(f"{where}: params must be a dict of arrays (see model.init_params), got {type(params).__name__}")
        shapes = self.param_shapes
        missing = [k for k in shapes if k not in params]
        extra = [k for k in params if k not in shapes]
        if missing or extra:
            raise ValueError(f"{where}: params has missing {missing} / unexpected {extra} entries; "
                             f"expected {list(shapes)}")
        arrays = []
        dtype = None
        for name, shape in shapes.items():
            a = params[name]
            if not isinstance(a, np.ndarray):
                raise TypeError(f"{where}: params[{name!r}] must be a numpy array, got {type(a).__name__}")
            if a.shape != shape:
                raise ValueError(f"{where}: params[{name!r}] has shape {a.shape}, expected {shape}")
            if a.dtype not in _DTYPES:
                raise TypeError(f"{where}: params[{name!r}] has dtype {a.dtype}; use float32 or float64")
            if dtype is None:
                dtype = a.dtype
            elif a.dtype != dtype:
                raise TypeError(f"{where}: params[{name!r}] is {a.dtype} but other parameters are {dtype}; "
                                "use one dtype")
            if not _inputs.all_finite(a):
                raise ValueError(f"{where}: params[{name!r}] contains NaN or inf")
            arrays.append(np.ascontiguousarray(a))
        return tuple(arrays)

    def check_data(self, xs: Any, ys: Any, dtype: np.dtype, *, where: str = "value_and_grad", h0: Any = None,
                   mask: Any = None, lengths: Any = None) -> "_inputs.Checked":
        """xs, targets, mask, lengths and h0 checked, in the executor's form (see ``_inputs.Checked``)."""
        return _inputs.check_data(self, xs, ys, dtype, where=where, h0=h0, mask=mask, lengths=lengths)

    def check_inputs(self, xs: Any, dtype: np.dtype, *, where: str, h0: Any = None) -> tuple[np.ndarray, np.ndarray]:
        """(xs, flat h0) checked, read in place where they can be, for a forward without targets."""
        return _inputs.check_xs(self, xs, dtype, where=where), self.check_h0(h0, _inputs.batch_of(xs), dtype,
                                                                             where=where)

    def check_h0(self, h0: Any, batch: int, dtype: np.dtype, *, where: str) -> np.ndarray:
        """The flat initial state (zeros for None), checked against :meth:`state_shape`."""
        if h0 is None:
            return np.zeros(batch * sum(self.layers.state_widths()), dtype)
        expect = self.state_shape(batch)
        parts = h0 if isinstance(expect, list) else [h0]
        shapes = expect if isinstance(expect, list) else [expect]
        if isinstance(expect, list) and not (isinstance(h0, (list, tuple)) and len(h0) == len(expect)):
            raise ValueError(f"{where}: h0 must be a list of {len(expect)} arrays, one per layer, of shapes {expect}")
        for k, (a, shape) in enumerate(zip(parts, shapes)):
            label = "h0" if len(shapes) == 1 else f"h0[{k}]"
            if not isinstance(a, np.ndarray) or a.shape != shape:
                got = a.shape if isinstance(a, np.ndarray) else type(a).__name__
                raise ValueError(f"{where}: {label} has shape {got}, expected {shape}")
            if a.dtype != dtype:
                raise TypeError(f"{where}: {label} is {a.dtype} but params are {dtype}; cast it to match")
            if not _inputs.all_finite(a):
                raise ValueError(f"{where}: {label} contains NaN or inf")
        return self.flat_state(h0)
