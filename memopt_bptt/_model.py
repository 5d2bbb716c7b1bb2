"""Sequence: an optional embedding, a stack of cells, a linear readout and a loss."""

from __future__ import annotations

import math
from typing import Any, Mapping, NamedTuple

import numpy as np

from . import _layers, _split
from ._layers import Embedding, Layers, layout
from .cells import Cell

__all__ = ["Sequence", "Sizes", "LOSSES", "LOSS_AT"]

LOSSES = ("mse", "cross_entropy")
LOSS_AT = ("every", "last")
PYTHON_OVERHEAD_BYTES = 12288
"""Not charged to budgets: the Python objects of one call (array headers,
argument tuples, the layers' offset table, the lengths and stop flag, small
input copies), a constant 4-11 KB under tracemalloc whatever T and the sizes
(it grows with the number of buffers and layers: a single LSTM measured
9.2-9.8 KB, a 3-layer LSTM stack with an embedding 10.4-10.8 KB). The budget
covers the data the sweep keeps (checkpoints and working buffers), as the
contract says."""
_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


class Sizes(NamedTuple):
    """Element and byte sizes of one model's states for a batch and dtype."""

    batch: int
    dtype: str
    itemsize: int
    state_width: int      # elements per batch row of a hidden state (every layer's)
    internal_width: int   # elements per batch row of an internal state (every layer's)
    state_len: int        # batch * state_width
    internal_len: int     # batch * internal_width
    work_len: int         # the cells' scratch (the largest layer's), elements
    output_len: int       # batch * output_size (loss buffer)
    chunk_len: int = 0    # deferred weight-gradient blocks, elements (Cell.grad_chunk)
    lanes: tuple = ()     # batch rows per lane when the batch is split (Sequence.lane_batches), else ()
    lane_extra_len: int = 0  # elements the split (lanes or unit threads) adds to the working buffers
    unit_threads: int = 1  # threads that share each step by hidden units (Sequence.unit_split)
    input_len: int = 0    # layer inputs built or kept per step, the embedding's dL/dx and the row weights

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
        state, two state gradients, one internal state, cell scratch, outputs,
        the deferred-gradient blocks and the layers' input buffers; with lanes,
        each lane's own set and the other lanes' gradient accumulators."""
        return (4 * self.state_len + self.internal_len + self.work_len + self.output_len
                + self.chunk_len + self.lane_extra_len + self.input_len) * self.itemsize


def _dtype_of(dtype: Any, *, where: str) -> np.dtype:
    try:
        dt = np.dtype(dtype)
    except TypeError:
        raise TypeError(f"{where}: dtype={dtype!r} is not a dtype; use 'float32' or 'float64'") from None
    if dt not in _DTYPES:
        raise TypeError(f"{where}: dtype={dtype!r} is not supported; use 'float32' or 'float64'")
    return dt


def _unit_cells(layers: Layers) -> tuple[Cell, ...] | None:
    cells = layers.cells
    if layers.embedding is not None or any(c.unit_kernels is None for c in cells):
        return None
    if any(c.unit_input_grad is None for c in cells[1:]):
        return None
    return cells


def _positive_or_none(value: Any, name: str, meaning: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"Sequence: {name}={value!r} must be None (automatic) or a positive int ({meaning})")
    return int(value)


class Sequence:
    """A recurrent network over a sequence: layers, a linear readout and a mean loss.

    ``layers`` is one cell (``mb.LSTM(...)``), or a list: optionally an
    :class:`mb.Embedding <memopt_bptt.Embedding>` first (the inputs are then
    integer token ids of shape (T, batch)), then one or more cells, each
    reading the h_t of the one below (GRU over LSTM is fine). Parameter names
    follow PyTorch (see :attr:`param_shapes`): a single cell's are
    ``nn.LSTMCell``'s under ``cell.``, a list's ``nn.LSTM(num_layers=k)``'s
    under ``rnn.`` (``rnn.weight_ih_l0`` ...) with ``embedding.weight``;
    :meth:`params_from_torch` and :meth:`params_to_torch` convert a torch
    ``state_dict``.

    The loss is a mean: "mse" is PyTorch's ``mse_loss(reduction="mean")`` over
    every output element counted, "cross_entropy" the mean of softmax
    cross-entropy over the labels counted (``cross_entropy(reduction="mean")``).
    ``loss_at="every"`` (the default) counts every step of every sequence (or,
    with ``mask=``/``lengths=`` in :func:`value_and_grad`, the valid ones);
    ``loss_at="last"`` only each sequence's last valid step (many-to-one:
    targets of shape (batch, output_size) or (batch,)), and the readout runs
    only at the steps where some sequence ends.

    ``lanes`` splits the batch into independent sweeps on separate threads:
    None (automatic, for small recurrent GEMMs), or a number of lanes (1:
    never); see :meth:`lane_batches`. ``unit_threads`` splits every step's
    hidden units between threads instead (every layer's, in a stack of cells
    with unit kernels and no embedding): None (automatic, for large
    recurrent GEMMs of cells that support it), or a number of threads (1:
    never); see :meth:`unit_split`.

    Example::

        model = mb.Sequence(mb.LSTM(input_size=8, hidden_size=32), output_size=4, loss="mse")
        stacked = mb.Sequence([mb.Embedding(65, 16), mb.LSTM(16, 64), mb.GRU(64, 64)],
                              output_size=65, loss="cross_entropy")
    """

    def __init__(self, layers: Any, *, output_size: int, loss: str = "mse", lanes: int | None = None,
                 unit_threads: int | None = None, loss_at: str = "every"):
        if isinstance(output_size, bool) or not isinstance(output_size, (int, np.integer)) or output_size < 1:
            raise ValueError(f"Sequence: output_size={output_size!r} must be a positive int")
        if isinstance(layers, Cell) or isinstance(layers, (list, tuple)):
            self.layers = Layers(layers, output_size=int(output_size))
        else:
            raise TypeError(f"Sequence: layers={layers!r} must be a memopt_bptt cell (mb.LSTM(...), mb.GRU(...), "
                            "...) or a list of them, optionally after an mb.Embedding")
        if loss not in LOSSES:
            raise ValueError(f"Sequence: loss={loss!r} is not known; use 'mse' or 'cross_entropy'")
        if loss_at not in LOSS_AT:
            raise ValueError(f"Sequence: loss_at={loss_at!r} is not known; use 'every' (a loss at every step) "
                             "or 'last' (only at each sequence's last valid step)")
        lanes = _positive_or_none(lanes, "lanes", "1: never split the batch")
        unit_threads = _positive_or_none(unit_threads, "unit_threads", "1: never split the hidden units")
        if unit_threads is not None and unit_threads > 1:
            if _unit_cells(self.layers) is None:
                raise ValueError(f"Sequence: unit_threads={unit_threads} needs a cell with unit kernels "
                                 f"(Cell.unit_kernels; the built-in LSTM has them, {self.layers.kind()!r} does not) "
                                 "in every layer, and no embedding; use unit_threads=None or 1")
            if lanes is not None and lanes > 1:
                raise ValueError(f"Sequence: lanes={lanes} and unit_threads={unit_threads} cannot both split "
                                 "the work; set one of them to 1")
        self.output_size = int(output_size)
        self.loss = loss
        self.loss_at = loss_at
        self.lanes = lanes
        self.unit_threads = unit_threads

    def __repr__(self) -> str:
        layers = self.layers
        if layers.stacked:
            items = ([layers.embedding] if layers.embedding else []) + list(layers.cells)
            first = "[" + ", ".join(repr(c) for c in items) + "]"
        else:
            first = repr(layers.cells[0])
        extra = "" if self.lanes is None else f", lanes={self.lanes}"
        extra += "" if self.unit_threads is None else f", unit_threads={self.unit_threads}"
        extra += "" if self.loss_at == "every" else f", loss_at={self.loss_at!r}"
        return f"Sequence({first}, output_size={self.output_size}, loss={self.loss!r}{extra})"

    # ---- what the model is ------------------------------------------------------------
    @property
    def cells(self) -> tuple[Cell, ...]:
        """The recurrent layers, bottom first."""
        return self.layers.cells

    @property
    def cell(self) -> Cell:
        """The one cell of a single-layer model (a stack has :attr:`cells`)."""
        if len(self.layers.cells) != 1:
            raise AttributeError(f"Sequence.cell: this model has {len(self.layers.cells)} layers; use .cells")
        return self.layers.cells[0]

    @property
    def embedding(self) -> Embedding | None:
        return self.layers.embedding

    @property
    def input_size(self) -> int | None:
        """Features per step of xs, or None when xs holds token ids (an embedding)."""
        return None if self.layers.embedding else self.layers.cells[0].input_size

    @property
    def hidden_size(self) -> int:
        """The top layer's hidden size (what the readout reads)."""
        return self.layers.top.hidden_size

    @property
    def kind(self) -> str:
        return self.layers.kind()

    @property
    def backward_forward_ratio(self) -> float:
        """The layers' b/f ratios weighted by their multiply-adds per step (the planner's time model)."""
        cells = self.layers.cells
        weights = [c.n_gates * c.hidden_size * (c.hidden_size + n) for c, n in zip(cells, self.layers.input_sizes())]
        return float(sum(w * c.backward_forward_ratio for w, c in zip(weights, cells)) / sum(weights))

    def recurrent_macs(self, batch: int, *, largest: bool = False) -> int:
        """Multiply-adds of one step's recurrent GEMMs, every layer's (``largest``: the largest one's)."""
        macs = [c.n_gates * c.hidden_size * (self.output_size if c.recurrent_from_output else c.hidden_size) * batch
                for c in self.layers.cells]
        return max(macs) if largest else sum(macs)

    def describe(self) -> str:
        layers = self.layers
        parts = [f"{c.kind}(in={n}, hidden={c.hidden_size})" for c, n in zip(layers.cells, layers.input_sizes())]
        if layers.embedding:
            parts.insert(0, f"embedding(vocab={layers.embedding.vocab_size}, dim={layers.embedding.embedding_dim})")
        if len(parts) == 1:
            c = layers.cells[0]
            return f"{c.kind}(in={c.input_size}, hidden={c.hidden_size}, out={self.output_size})"
        last = "" if self.loss_at == "every" else ", loss at the last step"
        return " > ".join(parts) + f" > readout(out={self.output_size}){last}"

    def lane_batches(self, batch: int) -> tuple[int, ...]:
        """How the batch is split into lanes: batch rows per lane, in order.

        Batch rows are independent through the recurrence, so the executor runs
        each lane's rows as a separate sweep of the same schedule, on its own
        core when there is one, and adds the lanes' weight gradients at the end
        in lane order. The split depends only on the model and the batch, never
        on the machine, so a model's gradients are the same bits everywhere
        (and bit-identical across policies, as always); they may differ from a
        one-lane run's in the last bits (a sum taken in another order).

        ``lanes=None`` (the default) splits a model whose recurrent GEMMs have
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

    def unit_split(self, batch: int, *, layer: int = -1) -> tuple[tuple[int, int], ...]:
        """How each step's hidden units of ``layer`` (the top one by default) are
        split between threads: (u0, u1) per thread.

        The threads run the same schedule together; each computes its units'
        rows of every GEMM and its units' elements of every block, in every
        layer of a stack (each layer's hidden units split alike), and they
        meet at a barrier wherever one reads what another wrote (two or three
        times per step and layer). Unlike lanes, this needs no second gradient
        accumulator, only a second scratch buffer and small exchange blocks,
        and pays off where one step's GEMMs are large.

        ``unit_threads=None`` (the default) uses two threads for cells with
        unit kernels (Cell.unit_kernels: the built-in LSTM) in every layer
        and no embedding, where the largest layer's recurrent GEMM has at
        least ``LANE_MAX_MACS`` multiply-adds (where automatic lanes stop) and
        every layer at least ``2 * MIN_UNIT_HIDDEN`` hidden units; else one
        thread, ``((0, hidden),)``. Like lanes, the split depends only on the
        model and the batch, never on the machine: where fewer CPUs are
        usable the threads take turns, with the same bits.

        Example::

            mb.Sequence(mb.LSTM(64, 256), output_size=16).unit_split(16)   # ((0, 128), (128, 256))
        """
        if isinstance(layer, bool) or not isinstance(layer, (int, np.integer)) \
                or not -len(self.cells) <= layer < len(self.cells):
            raise ValueError(f"Sequence.unit_split: layer={layer!r} must be an int in "
                             f"[{-len(self.cells)}, {len(self.cells)}) (this model has {len(self.cells)} layers)")
        return _split.unit_split(self, batch, int(layer))

    def describe_split(self, batch: int, *, dtype: Any = "float32") -> str:
        """Which path a sweep of this batch takes (lanes, unit threads, BLAS
        threads) and why, e.g. "2 unit threads splitting the hidden units, BLAS
        on 1 thread each (recurrent GEMM of 4,194,304 >= 2,097,152 multiply-adds)".

        Example::

            print(model.describe_split(16))
        """
        return _split.explain(self, self.sizes(batch=batch, dtype=dtype))

    @property
    def unit_cells(self) -> tuple[Cell, ...] | None:
        """The layers whose hidden units threads can split, or None: every layer
        needs unit kernels (and, above the first, ``Cell.unit_input_grad``), and
        there is no embedding."""
        return _unit_cells(self.layers)

    @property
    def param_shapes(self) -> dict[str, tuple[int, ...]]:
        """Parameter names and shapes, PyTorch's (see the class docstring)."""
        return self.layers.param_shapes()

    def init_params(self, seed: int = 0, *, dtype: Any = "float64") -> dict[str, np.ndarray]:
        """PyTorch-style initialisation, seeded: uniform(-1/sqrt(H), 1/sqrt(H))
        with H the hidden size of the layer a parameter belongs to (the top
        layer's for the readout), and standard normal for an embedding.

        Example::

            params = model.init_params(seed=0, dtype="float32")
        """
        dt = _dtype_of(dtype, where="init_params")
        rng = np.random.default_rng(seed)
        out = {}
        for name, shape in self.param_shapes.items():
            if name == "embedding.weight":
                out[name] = rng.standard_normal(size=shape).astype(dt)
                continue
            bound = 1.0 / math.sqrt(self.layers.fan_in_hidden(name))
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
        and its units' h_t), two blocks of partial gradients it shares
        (per layer (hidden, batch), and (input, batch) above the first), and
        ``UNIT_PYTHON_BYTES``; the layers' input buffers go (unit threads
        read the layer below's h_t in place).
        """
        if isinstance(batch, bool) or not isinstance(batch, (int, np.integer)) or batch < 1:
            raise ValueError(f"batch={batch!r} must be a positive int")
        dt = _dtype_of("float64" if dtype is None else dtype, where="sizes")
        batch = int(batch)
        whole = self.rows_sizes(batch, dt, lane=False)
        return _split.split_sizes(self, whole, dt) if split else whole

    def rows_sizes(self, rows: int, dt: np.dtype, *, lane: bool) -> Sizes:
        """Sizes of one worker's sweep over ``rows`` batch rows (a lane keeps
        copies of its inputs for deferred weight gradients: ``lane=True``)."""
        layers, out = self.layers, self.output_size
        sw, iw = sum(layers.state_widths()), sum(layers.internal_widths())
        wl = max(int(c.work_size(rows, out)) for c in layers.cells)
        if sw < 1 or iw < 1 or wl < 0:
            raise ValueError(f"cells {layers.kind()!r} report invalid sizes: state {sw}, internal {iw}, work {wl}")
        lay = layout(layers, rows, lane=lane)
        row_weights = -(-rows * 8 // dt.itemsize)  # float64 loss weights of the step's rows
        inputs = lay.xbuf_len + lay.xchunk_len + lay.dx_len + row_weights
        return Sizes(rows, dt.name, dt.itemsize, sw, iw, rows * sw, rows * iw, wl, rows * out, lay.chunk_len,
                     input_len=inputs)

    def split_note(self, sizes: Sizes) -> str:
        """What splitting the work (lanes or unit threads) adds to the working
        buffers, and how to save it, for a budget error's message ("" if unsplit)."""
        return _split.split_note(sizes)

    # ---- checking inputs -------------------------------------------------------
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

    # ---- states at the boundary ------------------------------------------------
    def _uniform(self) -> bool:
        """A stack of one kind of cell and one hidden size: its state is one array, as torch's."""
        cells = self.layers.cells
        first = cells[0]
        return all(c.kind == first.kind and c.hidden_size == first.hidden_size
                   and c.state_width(self.output_size) == first.state_width(self.output_size) for c in cells)

    def state_shape(self, batch: int) -> tuple[int, ...] | list[tuple[int, ...]]:
        """Shape of the initial state h0 (and of its gradient) for a batch.

        One layer: (batch, hidden) for Elman and GRU, (2, batch, hidden) for
        LSTM (h0, c0), (batch, output_size) for Jordan (the fed-back output
        y_0); other cells (batch, state_width), or (blocks, batch, hidden) with
        ``Cell.state_blocks``. A list of layers of one kind and hidden size:
        PyTorch's, (layers, batch, hidden) for nn.GRU/nn.RNN and (2, layers,
        batch, hidden) for nn.LSTM's (h0, c0) stacked. Layers of several kinds
        or sizes: a list of each layer's own shape.
        """
        out = self.output_size
        cells = self.layers.cells
        if not self.layers.stacked:
            return _layers.state_shape(cells[0], out, batch)
        if not self._uniform():
            return [_layers.state_shape(c, out, batch) for c in cells]
        one = _layers.state_shape(cells[0], out, batch)
        if cells[0].state_blocks:
            return (one[0], len(cells)) + one[1:]
        return (len(cells),) + one

    def _layer_states(self, state: Any) -> list:
        """Each layer's part of a user's state (see :meth:`state_shape`)."""
        cells = self.layers.cells
        if not self.layers.stacked:
            return [state]
        if not self._uniform():
            return list(state)
        return [state[:, k] if cells[0].state_blocks else state[k] for k in range(len(cells))]

    def flat_state(self, state: Any) -> np.ndarray:
        """A new 1-D copy of a state of shape ``state_shape(batch)`` in the kernels' layout."""
        out = self.output_size
        parts = [_layers.flat_state(c, out, s) for c, s in zip(self.layers.cells, self._layer_states(state))]
        return parts[0] if len(parts) == 1 else np.concatenate(parts)

    def user_state(self, flat: np.ndarray, batch: int) -> Any:
        """The inverse of :meth:`flat_state`: new arrays of shape ``state_shape(batch)``."""
        out = self.output_size
        cells = self.layers.cells
        parts, a = [], 0
        for c in cells:
            n = batch * int(c.state_width(out))
            parts.append(_layers.user_state(c, out, flat[a: a + n], batch))
            a += n
        if not self.layers.stacked:
            return parts[0]
        if not self._uniform():
            return parts
        return np.stack(parts, axis=1 if cells[0].state_blocks else 0)

    def copy_rows(self, dst: np.ndarray, dst_batch: int, d0: int, src: np.ndarray, src_batch: int, s0: int,
                  n: int) -> None:
        """Rows d0.. of a flat state of dst_batch rows = rows s0.. of one of src_batch rows (n rows)."""
        _layers.copy_rows(self.layers, dst, dst_batch, d0, src, src_batch, s0, n)

    # ---- PyTorch state_dicts ------------------------------------------------------
    def params_from_torch(self, state_dict: Mapping, *, dtype: Any = None, prefixes: Mapping | None = None
                          ) -> dict[str, np.ndarray]:
        """Parameters from a PyTorch ``state_dict`` (tensors or arrays), in this model's names.

        ``prefixes`` maps this model's module names ("cell", "rnn",
        "embedding", "readout") to the torch module's attribute names when
        they differ, e.g. ``{"rnn": "lstm", "readout": "fc"}``; a prefix of ""
        takes keys without one (``nn.LSTM(...).state_dict()`` itself). Every
        key must match: missing and unexpected ones are listed in one error.

        Example::

            params = model.params_from_torch(torch_model.state_dict(), prefixes={"rnn": "lstm"})
        """
        return _torch_names.params_from_torch(self, state_dict, dtype=dtype, prefixes=prefixes)

    def params_to_torch(self, params: Mapping, *, prefixes: Mapping | None = None, tensors: bool = False) -> dict:
        """The inverse of :meth:`params_from_torch`: a dict keyed by the torch
        module's names, of numpy arrays (``tensors=True``: torch tensors, which
        imports torch), for ``module.load_state_dict``.

        Example::

            torch_model.load_state_dict(model.params_to_torch(params, tensors=True))
        """
        return _torch_names.params_to_torch(self, params, prefixes=prefixes, tensors=tensors)


from . import _inputs  # noqa: E402 - reads Sequence's attributes only at call time
from . import _torch_names  # noqa: E402
