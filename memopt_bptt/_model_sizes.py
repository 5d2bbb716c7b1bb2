"""A model's sizes and the split's questions: Sizes (the element and byte
sizes of a batch's states and working buffers, which the planner charges),
and the Sequence methods that ask memopt_bptt._split how a batch's work is
split (lanes, unit threads) and what that adds to the buffers."""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import numpy as np

from . import _split
from ._layers import Layers, layout
from ._model_checks import _dtype_of
from .cells import Cell

__all__ = ["Sizes"]


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


def _unit_cells(layers: Layers) -> tuple[Cell, ...] | None:
    cells = layers.cells
    if layers.embedding is not None or any(c.unit_kernels is None for c in cells):
        return None
    if any(c.unit_input_grad is None for c in cells[1:]):
        return None
    return cells


class _SplitQueries:
    """Sequence's sizes and the split's questions (a part of :class:`memopt_bptt.Sequence`)."""

    def lane_batches(self, batch: int) -> tuple[int, ...]:
        """How the batch is split into lanes: batch rows per lane, in order.

        Batch rows are independent through the recurrence, so the executor runs
        each lane's rows as a separate sweep of the same schedule, on its own
        core when there is one, and adds the lanes' weight gradients at the end
        in lane order. The split depends only on the model and the batch (and
        on this machine's calibration, if ``mb.calibrate`` kept one for the
        model's class), never on the budget or the policy, so gradients are
        bit-identical across policies, as always; they may differ from a
        one-lane run's in the last bits (a sum taken in another order).

        ``lanes=None`` (the default) splits a model whose recurrent GEMMs have
        ``MIN_LANE_MACS`` up to ``LANE_MAX_MACS`` (see memopt_bptt._split) multiply-adds (LSTM hidden 64
        to 128 and Elman up to 256 at batch 16, ...), or more on a wide batch, where a
        second gradient accumulator is at most ``LANE_MAX_ACCUMULATOR_STATES`` hidden
        states of the batch (LSTM 256 from batch 41, GRU 256 from 62), into two lanes
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
        unit kernels (Cell.unit_kernels: the built-in LSTM and GRU) in every layer
        and no embedding, not split into lanes, where the largest layer's recurrent GEMM has at
        least ``LANE_MAX_MACS`` multiply-adds (where automatic lanes stop, wide batches aside) and
        every layer at least ``2 * MIN_UNIT_HIDDEN`` hidden units; else one
        thread, ``((0, hidden),)``; a split calibrated on this machine
        (``mb.calibrate``) for the model's class replaces the rule's where both
        ``lanes`` and ``unit_threads`` are automatic. Like lanes, the split does
        not depend on the machine's load: where the threads would not
        each have a CPU, one thread runs every share of the split in turn, with
        the same bits (memopt_bptt._executor._units, "One thread or several").

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
