"""Sequence: an optional embedding, a stack of cells, a linear readout and a loss.

The class is assembled from parts, each in its own module: the sizes and
the split's questions (memopt_bptt._model_sizes), the input checks
(memopt_bptt._model_checks), and parameters and states at the boundary as
PyTorch's (memopt_bptt._model_boundary). This module keeps what the model is.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ._layers import Embedding, Layers
from ._model_boundary import _Boundary
from ._model_checks import _Checks
from ._model_sizes import Sizes, _SplitQueries, _unit_cells
from .cells import Cell

__all__ = ["Sequence", "Sizes", "LOSSES", "LOSS_AT"]

LOSSES = ("mse", "cross_entropy")
LOSS_AT = ("every", "last")
PYTHON_OVERHEAD_BYTES = 16384
"""Not charged to budgets: the Python objects of one call (array headers,
argument tuples, the layers' offset table, the lengths and stop flag, small
input copies, the worker thread's objects), a constant 4-13 KB under
tracemalloc whatever T and the sizes (it grows with the number of buffers
and layers: a single LSTM measured 9.2-9.8 KB, a 3-layer LSTM stack with an
embedding 10.4-10.8 KB, an Elman 3 -> 64 at batch 8, one sweep, 12.2-13.0
KB, 2026-11-30). The budget covers the data the sweep keeps (checkpoints and
working buffers), as the contract says."""


def _positive_or_none(value: Any, name: str, meaning: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"Sequence: {name}={value!r} must be None (automatic) or a positive int ({meaning})")
    return int(value)


class Sequence(_SplitQueries, _Checks, _Boundary):
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

    ``flush_denormals=True`` (the default) has the sweeps read and write
    subnormal numbers (below 1.2e-38 in float32, 2.2e-308 in float64) as
    zero, x86's FTZ and DAZ modes, on the executor's threads only: gradients
    that decay through a long sequence pass through that range, where each
    operation costs about a hundred cycles (a loss at the last of 1000 steps
    ran 3.2x slower without it, ``benchmarks/bench_denormals.py``). A value
    changes only where an intermediate result is that small; gradients stay
    bit-identical across policies and budgets either way. ``False`` keeps
    IEEE gradual underflow. Elsewhere than x86-64 it changes nothing.

    Example::

        model = mb.Sequence(mb.LSTM(input_size=8, hidden_size=32), output_size=4, loss="mse")
        stacked = mb.Sequence([mb.Embedding(65, 16), mb.LSTM(16, 64), mb.GRU(64, 64)],
                              output_size=65, loss="cross_entropy")
    """

    def __init__(self, layers: Any, *, output_size: int, loss: str = "mse", lanes: int | None = None,
                 unit_threads: int | None = None, loss_at: str = "every", flush_denormals: bool = True):
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
        if not isinstance(flush_denormals, (bool, np.bool_)):
            raise TypeError(f"Sequence: flush_denormals={flush_denormals!r} must be True (subnormal numbers "
                            "read and written as zero in the sweeps, the default) or False (IEEE gradual underflow)")
        lanes = _positive_or_none(lanes, "lanes", "1: never split the batch")
        unit_threads = _positive_or_none(unit_threads, "unit_threads", "1: never split the hidden units")
        if unit_threads is not None and unit_threads > 1:
            if _unit_cells(self.layers) is None:
                raise ValueError(f"Sequence: unit_threads={unit_threads} needs a cell with unit kernels "
                                 f"(Cell.unit_kernels; the built-in LSTM and GRU have them, {self.layers.kind()!r} does not) "
                                 "in every layer, and no embedding; use unit_threads=None or 1")
            if lanes is not None and lanes > 1:
                raise ValueError(f"Sequence: lanes={lanes} and unit_threads={unit_threads} cannot both split "
                                 "the work; set one of them to 1")
        self.output_size = int(output_size)
        self.loss = loss
        self.loss_at = loss_at
        self.lanes = lanes
        self.unit_threads = unit_threads
        self.flush_denormals = bool(flush_denormals)

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
        extra += "" if self.flush_denormals else ", flush_denormals=False"
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
