"""Sequence: a cell, a linear readout and a loss, with input checking."""

from __future__ import annotations

import math
from typing import Any, Mapping, NamedTuple

import numpy as np

from . import _split
from .cells import Cell

__all__ = ["Sequence", "Sizes", "LOSSES"]

LOSSES = ("mse", "cross_entropy")
PYTHON_OVERHEAD_BYTES = 10240
"""Not charged to budgets: the Python objects of one call (array headers,
argument tuples, small input copies), a constant 4-10 KB under tracemalloc
whatever T and the sizes (it depends on the cell's number of buffers). The
budget covers the data the sweep keeps (checkpoints and working buffers), as
the contract says."""
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
    lanes: tuple = ()     # batch rows per lane when the batch is split (Sequence.lane_batches), else ()
    lane_extra_len: int = 0  # elements the split (lanes or unit threads) adds to the working buffers
    unit_threads: int = 1  # threads that share each step by hidden units (Sequence.unit_split)

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
        the cell's deferred-gradient buffer; with lanes, each lane's own set and
        the other lanes' gradient accumulators."""
        return (4 * self.state_len + self.internal_len + self.work_len + self.output_len
                + self.chunk_len + self.lane_extra_len) * self.itemsize


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

    ``lanes`` splits the batch into independent sweeps on separate threads:
    None (automatic, for small recurrent GEMMs), or a number of lanes (1:
    never); see :meth:`lane_batches`. ``unit_threads`` splits every step's
    hidden units between threads instead: None (automatic, for large
    recurrent GEMMs of a cell that supports it), or a number of threads (1:
    never); see :meth:`unit_split`.

    Example::

        model = mb.Sequence(mb.LSTM(input_size=8, hidden_size=32), output_size=4, loss="mse")
        params = model.init_params(seed=0)
    """

    def __init__(self, cell: Cell, *, output_size: int, loss: str = "mse", lanes: int | None = None,
                 unit_threads: int | None = None):
        if not isinstance(cell, Cell):
            raise TypeError(f"Sequence: cell={cell!r} must be a memopt_bptt cell (mb.LSTM(...), mb.GRU(...), ...)")
        if isinstance(output_size, bool) or not isinstance(output_size, (int, np.integer)) or output_size < 1:
            raise ValueError(f"Sequence: output_size={output_size!r} must be a positive int")
        if loss not in LOSSES:
            raise ValueError(f"Sequence: loss={loss!r} is not known; use 'mse' or 'cross_entropy'")
        if lanes is not None and (isinstance(lanes, bool) or not isinstance(lanes, (int, np.integer)) or lanes < 1):
            raise ValueError(f"Sequence: lanes={lanes!r} must be None (automatic) or a positive int "
                             "(1: never split the batch)")
        if unit_threads is not None:
            if isinstance(unit_threads, bool) or not isinstance(unit_threads, (int, np.integer)) or unit_threads < 1:
                raise ValueError(f"Sequence: unit_threads={unit_threads!r} must be None (automatic) or a positive "
                                 "int (1: never split the hidden units)")
            if unit_threads > 1 and cell.unit_kernels is None:
                raise ValueError(f"Sequence: unit_threads={unit_threads} needs a cell with unit kernels "
                                 f"(Cell.unit_kernels; the built-in LSTM has them, {cell.kind!r} does not); "
                                 "use unit_threads=None or 1")
            if unit_threads > 1 and lanes is not None and lanes > 1:
                raise ValueError(f"Sequence: lanes={lanes} and unit_threads={unit_threads} cannot both split "
                                 "the work; set one of them to 1")
        self.cell = cell
        self.output_size = int(output_size)
        self.loss = loss
        self.lanes = None if lanes is None else int(lanes)
        self.unit_threads = None if unit_threads is None else int(unit_threads)

    def __repr__(self) -> str:
        extra = "" if self.lanes is None else f", lanes={self.lanes}"
        extra += "" if self.unit_threads is None else f", unit_threads={self.unit_threads}"
        return f"Sequence({self.cell!r}, output_size={self.output_size}, loss={self.loss!r}{extra})"

    def lane_batches(self, batch: int) -> tuple[int, ...]:
        """How the batch is split into lanes: batch rows per lane, in order.

        Batch rows are independent through the recurrence, so the executor runs
        each lane's rows as a separate sweep of the same schedule, on its own
        core when there is one, and adds the lanes' weight gradients at the end
        in lane order. The split depends only on the model and the batch, never
        on the machine, so a model's gradients are the same bits everywhere
        (and bit-identical across policies, as always); they may differ from a
        one-lane run's in the last bits (a sum taken in another order).

        ``lanes=None`` (the default) splits a model whose recurrent GEMM has
        ``MIN_LANE_MACS`` up to ``LANE_MAX_MACS`` (see memopt_bptt._split) multiply-adds (LSTM hidden 64
        to 128 and Elman up to 256 at batch 16, ...) into two lanes
        when each gets at least ``MIN_LANE_BATCH`` rows; ``lanes=k`` asks for
        k lanes (at most one per batch row), ``lanes=1`` for none. Every lane
        after the first costs one more gradient accumulator (the parameters'
        size) of the budget: little for long sequences (LSTM 64, batch 16,
        T=1000 at 5%: 1960 forward steps instead of 1954), much for tight
        budgets on short ones (T=200 at 5%: 2670 instead of 524), where
        ``lanes=1`` is the better choice.

        Example::

            mb.Sequence(mb.LSTM(64, 64), output_size=16).lane_batches(16)   # (8, 8)
        """
        return _split.lane_batches(self, batch)

    def unit_split(self, batch: int) -> tuple[tuple[int, int], ...]:
        """How each step's hidden units are split between threads: (u0, u1) per thread.

        The threads run the same schedule together; each computes its units'
        rows of every GEMM and its units' elements of every block, and they
        meet at a barrier wherever one reads what another wrote (two or three
        times per step). Unlike lanes, this needs no second gradient
        accumulator, only a second scratch buffer and small exchange blocks,
        and pays off where one step's GEMMs are large (LSTM hidden 256, batch
        16, float32, T=1000: plain BPTT 0.215 s against 0.29 s for one step on
        two BLAS threads, where the elementwise work runs on one core; at 5%
        of its memory 0.267 s against 0.356 s).

        ``unit_threads=None`` (the default) uses two threads for a cell with
        unit kernels (Cell.unit_kernels: the built-in LSTM) whose recurrent
        GEMM has at least ``LANE_MAX_MACS`` multiply-adds (where automatic
        lanes stop) and at least ``2 * MIN_UNIT_HIDDEN`` hidden units; else
        one thread, ``((0, hidden),)``. Like lanes, the split depends only on
        the model and the batch, never on the machine: where fewer CPUs are
        usable the threads take turns, with the same bits.

        Example::

            mb.Sequence(mb.LSTM(64, 256), output_size=16).unit_split(16)   # ((0, 128), (128, 256))
        """
        return _split.unit_split(self, batch)

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

    def sizes(self, *, batch: int, dtype: Any = None, split: bool = True) -> Sizes:
        """State, internal-state and working-buffer sizes for a batch and dtype.

        With ``split`` (the default) the working bytes include what splitting
        the batch into lanes adds (:meth:`lane_batches`): each lane's own
        buffers, a copy of its inputs' rows for deferred weight gradients, and
        for every lane but the first a gradient accumulator, and
        ``LANE_PYTHON_BYTES`` per lane for its thread. Splitting the hidden
        units (:meth:`unit_split`) adds a scratch buffer for every thread but
        the first, and for every thread a readout buffer (twice the outputs
        and its units' h_t), two (hidden, batch) blocks of partial gradients
        it shares, and ``UNIT_PYTHON_BYTES``.
        """
        if isinstance(batch, bool) or not isinstance(batch, (int, np.integer)) or batch < 1:
            raise ValueError(f"batch={batch!r} must be a positive int")
        dt = _dtype_of("float64" if dtype is None else dtype, where="sizes")
        batch = int(batch)
        whole = self._sizes(batch, dt)
        return _split.split_sizes(self, whole, dt) if split else whole

    def split_note(self, sizes: Sizes) -> str:
        """What splitting the work (lanes or unit threads) adds to the working
        buffers, and how to save it, for a budget error's message ("" if unsplit)."""
        return _split.split_note(sizes)

    def lane_chunk_rows(self, lane_batch: int) -> int:
        """Rows of the input copy a lane keeps for deferred weight gradients
        (its rows of ``grad_chunk`` steps; a whole-batch run reads them in place)."""
        return _split.lane_chunk_rows(self, lane_batch)

    def _sizes(self, batch: int, dt: np.dtype) -> Sizes:
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

    def check_inputs(self, xs: Any, dtype: np.dtype, *, where: str, h0: Any = None) -> tuple[np.ndarray, np.ndarray]:
        """(xs, flat h0) checked and contiguous, for a forward without targets."""
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
        B = xs.shape[1]
        if h0 is None:
            h0_arr = np.zeros(B * self.cell.state_width(self.output_size), dtype)
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
        return np.ascontiguousarray(xs), h0_arr

    def check_data(self, xs: Any, ys: Any, dtype: np.dtype, *, where: str = "value_and_grad",
                   h0: Any = None) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(xs, ys_float, ys_int, h0) checked and contiguous; one of the ys is a dummy."""
        xs, h0_arr = self.check_inputs(xs, dtype, where=where, h0=h0)
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
        return xs, ys_f, ys_i, h0_arr

    def _state_blocks(self) -> tuple[int, bool]:
        """(number of hidden-wide blocks, whether state_shape lists blocks first)."""
        sw = self.cell.state_width(self.output_size)
        return sw // self.cell.hidden_size, self.cell.state_blocks

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

    def lane_rows(self, flat: np.ndarray, batch: int, b0: int, b1: int) -> np.ndarray:
        """A view of batch rows b0..b1-1 of a flat state of ``batch`` rows (in the
        kernels' layout); the same view of a lane's own flat state (b0=0, b1=its
        rows) has the same shape, so states move between them without temporaries."""
        if self.cell.feature_major:
            P = self.cell.state_width(self.output_size) // self.cell.hidden_size
            return flat.reshape(P, self.cell.hidden_size, batch)[:, :, b0:b1]
        return flat.reshape(batch, -1)[b0:b1]

    def state_shape(self, batch: int) -> tuple[int, ...]:
        """Shape of the initial state h0 (and of its gradient) for a batch.

        (batch, hidden) for Elman and GRU, (2, batch, hidden) for LSTM (h0, c0),
        (batch, output_size) for Jordan (the fed-back output y_0); other cells
        (batch, state_width), or (blocks, batch, hidden) with ``Cell.state_blocks``.
        """
        sw = self.cell.state_width(self.output_size)
        if self.cell.state_blocks:
            return (sw // self.cell.hidden_size, batch, self.cell.hidden_size)
        return (batch, sw)
