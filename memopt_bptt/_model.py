"""Sequence: a cell, a linear readout and a loss, with input checking."""

from __future__ import annotations

import math
from typing import Any, Mapping, NamedTuple

import numpy as np

from .cells import Cell

__all__ = ["Sequence", "Sizes", "LOSSES"]

LOSSES = ("mse", "cross_entropy")
PYTHON_OVERHEAD_BYTES = 3072
"""Not charged to budgets: the Python objects of one call (array headers,
argument tuples, small input copies), a constant 3-5 KB under tracemalloc whatever T and the
sizes. The budget covers the data the sweep keeps (checkpoints and working
buffers), as the contract says."""
_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


class Sizes(NamedTuple):
    """Element and byte sizes of one model's states for a batch and dtype."""

    batch: int
    dtype: str
    itemsize: int
    state_width: int      # elements per batch row of a hidden state
    internal_width: int   # elements per batch row of an internal state
    state_len: int        # batch * state_width
    internal_len: int     # batch * internal_width
    work_len: int         # the cell's scratch, elements
    output_len: int       # batch * output_size (loss buffer)
    chunk_len: int = 0    # deferred weight-gradient buffer, elements (Cell.grad_chunk)

    @property
    def state_bytes(self) -> int:
        return self.state_len * self.itemsize

    @property
    def internal_bytes(self) -> int:
        return self.internal_len * self.itemsize

    @property
    def quantum(self) -> tuple[int, int, int]:
        """(elements per batch row of one quantum, hidden quanta, internal quanta):
        the planner's memory unit, the gcd of the state and internal widths."""
        g = math.gcd(self.state_width, self.internal_width)
        return g, self.state_width // g, self.internal_width // g

    @property
    def quantum_bytes(self) -> int:
        return self.quantum[0] * self.batch * self.itemsize

    @property
    def working_bytes(self) -> int:
        """Buffers the executor keeps besides checkpoints: current state, rebuilt
        state, two state gradients, one internal state, cell scratch, outputs and
        the cell's deferred-gradient buffer."""
        return (4 * self.state_len + self.internal_len + self.work_len + self.output_len
                + self.chunk_len) * self.itemsize


def _all_finite(a: np.ndarray) -> bool:
    """No NaN or inf, without a temporary as large as ``a`` (min/max propagate NaN)."""
    if a.size == 0:
        return True
    if np.issubdtype(a.dtype, np.integer):
        return True
    return bool(np.isfinite(a.min()) and np.isfinite(a.max()))


def _dtype_of(dtype: Any, *, where: str) -> np.dtype:
    try:
        dt = np.dtype(dtype)
    except TypeError:
        raise TypeError(f"{where}: dtype={dtype!r} is not a dtype; use 'float32' or 'float64'") from None
    if dt not in _DTYPES:
        raise TypeError(f"{where}: dtype={dtype!r} is not supported; use 'float32' or 'float64'")
    return dt


class Sequence:
    """A recurrent network over a sequence: cell, linear readout, mean loss.

    The loss is the mean over all T steps and batch rows: "mse" is PyTorch's
    ``mse_loss(reduction="mean")`` over every output element, "cross_entropy"
    the mean over T*batch of softmax cross-entropy against integer labels.

    Example::

        model = mb.Sequence(mb.LSTM(input_size=8, hidden_size=32), output_size=4, loss="mse")
        params = model.init_params(seed=0)
    """

    def __init__(self, cell: Cell, *, output_size: int, loss: str = "mse"):
        if not isinstance(cell, Cell):
            raise TypeError(f"Sequence: cell={cell!r} must be a memopt_bptt cell (mb.LSTM(...), mb.GRU(...), ...)")
        if isinstance(output_size, bool) or not isinstance(output_size, (int, np.integer)) or output_size < 1:
            raise ValueError(f"Sequence: output_size={output_size!r} must be a positive int")
        if loss not in LOSSES:
            raise ValueError(f"Sequence: loss={loss!r} is not known; use 'mse' or 'cross_entropy'")
        self.cell = cell
        self.output_size = int(output_size)
        self.loss = loss

    def __repr__(self) -> str:
        return f"Sequence({self.cell!r}, output_size={self.output_size}, loss={self.loss!r})"

    def describe(self) -> str:
        c = self.cell
        return f"{c.kind}(in={c.input_size}, hidden={c.hidden_size}, out={self.output_size})"

    @property
    def param_shapes(self) -> dict[str, tuple[int, ...]]:
        return self.cell.param_shapes(self.output_size)

    def init_params(self, seed: int = 0, *, dtype: Any = "float64") -> dict[str, np.ndarray]:
        """PyTorch-style uniform(-1/sqrt(H), 1/sqrt(H)) initialisation, seeded.

        Example::

            params = model.init_params(seed=0, dtype="float32")
        """
        dt = _dtype_of(dtype, where="init_params")
        rng = np.random.default_rng(seed)
        out = {}
        for name, shape in self.param_shapes.items():
            fan = self.cell.hidden_size
            bound = 1.0 / math.sqrt(fan)
            out[name] = rng.uniform(-bound, bound, size=shape).astype(dt)
        return out

    def sizes(self, *, batch: int, dtype: Any = None) -> Sizes:
        """State, internal-state and working-buffer sizes for a batch and dtype."""
        if isinstance(batch, bool) or not isinstance(batch, (int, np.integer)) or batch < 1:
            raise ValueError(f"batch={batch!r} must be a positive int")
        dt = _dtype_of("float64" if dtype is None else dtype, where="sizes")
        batch = int(batch)
        sw = int(self.cell.state_width(self.output_size))
        iw = int(self.cell.internal_width(self.output_size))
        wl = int(self.cell.work_size(batch, self.output_size))
        cl = int(self.cell.grad_chunk * self.cell.chunk_width(batch, self.output_size)) if self.cell.grad_chunk else 0
        if sw < 1 or iw < 1 or wl < 0 or cl < 0:
            raise ValueError(f"cell {self.cell.kind!r} reports invalid sizes: state {sw}, internal {iw}, work {wl}, "
                             f"chunk {cl}")
        return Sizes(batch, dt.name, dt.itemsize, sw, iw, batch * sw, batch * iw, wl, batch * self.output_size, cl)

    # ---- checking inputs -------------------------------------------------------
    def check_params(self, params: Any, *, where: str = "value_and_grad") -> tuple[np.ndarray, ...]:
        """The six parameter arrays in kernel order, checked; dtype must agree."""
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
            if not _all_finite(a):
                raise ValueError(f"{where}: params[{name!r}] contains NaN or inf")
            arrays.append(np.ascontiguousarray(a))
        return tuple(arrays)

    def check_data(self, xs: Any, ys: Any, dtype: np.dtype, *, where: str = "value_and_grad",
                   h0: Any = None) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(xs, ys_float, ys_int, h0) checked and contiguous; one of the ys is a dummy."""
        if not isinstance(xs, np.ndarray):
            raise TypeError(f"{where}: xs must be a numpy array of shape (T, batch, {self.cell.input_size})")
        if xs.ndim != 3 or xs.shape[2] != self.cell.input_size or xs.shape[0] < 1 or xs.shape[1] < 1:
            raise ValueError(f"{where}: xs has shape {xs.shape}, expected (T, batch, {self.cell.input_size}) "
                             "with T >= 1 and batch >= 1")
        if xs.dtype != dtype:
            raise TypeError(f"{where}: xs is {xs.dtype} but params are {dtype}; cast one to match "
                            f"(e.g. xs.astype(np.{dtype.name}))")
        if not _all_finite(xs):
            raise ValueError(f"{where}: xs contains NaN or inf")
        T, B = xs.shape[:2]
        if not isinstance(ys, np.ndarray):
            raise TypeError(f"{where}: ys must be a numpy array")
        if self.loss == "mse":
            if ys.shape != (T, B, self.output_size):
                raise ValueError(f"{where}: ys has shape {ys.shape}, expected (T, batch, output_size) = "
                                 f"{(T, B, self.output_size)} for loss='mse'")
            if ys.dtype != dtype:
                raise TypeError(f"{where}: ys is {ys.dtype} but params are {dtype}; cast ys to match")
            if not _all_finite(ys):
                raise ValueError(f"{where}: ys contains NaN or inf")
            ys_f = np.ascontiguousarray(ys)
            ys_i = np.zeros((1, 1), np.int64)
        else:
            if ys.shape != (T, B):
                raise ValueError(f"{where}: ys has shape {ys.shape}, expected integer labels of shape "
                                 f"(T, batch) = {(T, B)} for loss='cross_entropy'")
            if not np.issubdtype(ys.dtype, np.integer):
                raise TypeError(f"{where}: ys must hold integer class labels for loss='cross_entropy', got {ys.dtype}")
            if ys.size and (ys.min() < 0 or ys.max() >= self.output_size):
                raise ValueError(f"{where}: ys labels must be in [0, {self.output_size}); "
                                 f"found {int(ys.min())}..{int(ys.max())}")
            ys_i = np.ascontiguousarray(ys, dtype=np.int64)
            ys_f = np.zeros((1, 1, 1), dtype)
        state_len = B * self.cell.state_width(self.output_size)
        if h0 is None:
            h0_arr = np.zeros(state_len, dtype)
        else:
            expect = self.state_shape(B)
            if not isinstance(h0, np.ndarray) or h0.shape != expect:
                got = h0.shape if isinstance(h0, np.ndarray) else type(h0).__name__
                raise ValueError(f"{where}: h0 has shape {got}, expected {expect}")
            if h0.dtype != dtype:
                raise TypeError(f"{where}: h0 is {h0.dtype} but params are {dtype}; cast h0 to match")
            if not _all_finite(h0):
                raise ValueError(f"{where}: h0 contains NaN or inf")
            h0_arr = self.flat_state(h0)
        return np.ascontiguousarray(xs), ys_f, ys_i, h0_arr

    def _state_blocks(self) -> tuple[int, bool]:
        """(number of hidden-wide blocks, whether state_shape lists blocks first)."""
        sw = self.cell.state_width(self.output_size)
        return sw // self.cell.hidden_size, self.cell.kind == "lstm"

    def flat_state(self, state: np.ndarray) -> np.ndarray:
        """A new 1-D copy of a state of shape ``state_shape(batch)`` in the kernels' layout."""
        a = np.ascontiguousarray(state)
        if not self.cell.feature_major:
            return a.reshape(-1).copy()
        P, blocks_first = self._state_blocks()
        B = a.shape[-2] if blocks_first else a.shape[0]  # (P, B, H) or (B, P*H)
        H = self.cell.hidden_size
        blocks = a.reshape(P, B, H) if blocks_first else a.reshape(B, P, H).transpose(1, 0, 2)
        return np.ascontiguousarray(blocks.transpose(0, 2, 1)).reshape(-1)

    def user_state(self, flat: np.ndarray, batch: int) -> np.ndarray:
        """The inverse of :meth:`flat_state`: a new array of shape ``state_shape(batch)``."""
        shape = self.state_shape(batch)
        if not self.cell.feature_major:
            return np.array(flat).reshape(shape)
        P, blocks_first = self._state_blocks()
        blocks = np.asarray(flat).reshape(P, self.cell.hidden_size, batch).transpose(0, 2, 1)
        out = blocks if blocks_first else blocks.transpose(1, 0, 2)
        return np.ascontiguousarray(out).reshape(shape)

    def state_shape(self, batch: int) -> tuple[int, ...]:
        """Shape of the initial state h0 (and of its gradient) for a batch.

        (batch, hidden) for Elman and GRU, (2, batch, hidden) for LSTM (h0, c0),
        (batch, output_size) for Jordan (the fed-back output y_0); other cells
        (batch, state_width).
        """
        kind = self.cell.kind
        sw = self.cell.state_width(self.output_size)
        if kind == "lstm":
            return (2, batch, self.cell.hidden_size)
        return (batch, sw)
