"""The recurrent part of a Sequence: an optional embedding and a stack of cells.

Every layer runs at every time step, so the stack is one recurrence to the
planner: its state is every layer's state one after the other, its internal
state every layer's internal state, and alpha is their ratio. Layer k reads
layer k-1's h_t as its input x_t; the first layer reads the sequence's
inputs, or the embedding's rows of the token ids. Parameter names follow
PyTorch: a single cell given alone keeps ``nn.LSTMCell``-style names under
``cell.``; a list of layers gets ``nn.LSTM(num_layers=k)``'s names under
``rnn.`` (``rnn.weight_ih_l0``, ``rnn.bias_hh_l1``, ...), the embedding
``embedding.weight`` (``nn.Embedding``) and the readout ``readout.weight``
and ``readout.bias`` (``nn.Linear``), so a torch module with attributes
``embedding``, ``rnn`` and ``readout`` has the same ``state_dict`` keys.

:func:`layout` says where each layer's blocks sit in the executor's flat
buffers, for a number of batch rows; the sizes the planner charges and the
buffers the executor allocates both come from it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np

from .cells import Cell

__all__ = ["Embedding", "Layers", "LayerBuffers", "layout"]

# Columns of the layout table, one row per layer (elements, for the rows of one worker).
S_OFF, S_LEN, I_OFF, I_LEN, X_OFF, XC_OFF, C_OFF, C_LEN, IN_SIZE, HIDDEN, CHUNK = range(11)
N_COLS = 11


@dataclass(frozen=True, eq=False)
class Embedding:
    """A lookup table in front of the first layer (PyTorch's ``nn.Embedding``
    layout: ``embedding.weight`` of shape (vocab_size, embedding_dim)).

    The inputs are then integer token ids of shape (T, batch); their rows'
    gradients are added into ``embedding.weight``'s, with no one-hot.

    Example::

        model = mb.Sequence([mb.Embedding(65, 32), mb.LSTM(32, 128), mb.LSTM(128, 128)],
                            output_size=65, loss="cross_entropy")
    """

    vocab_size: int
    embedding_dim: int

    def __post_init__(self) -> None:
        for name in ("vocab_size", "embedding_dim"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
                raise ValueError(f"Embedding: {name}={value!r} must be a positive int")

    @property
    def kind(self) -> str:
        return "embedding"

    def __repr__(self) -> str:
        return f"Embedding(vocab_size={self.vocab_size}, embedding_dim={self.embedding_dim})"


class LayerBuffers(NamedTuple):
    """Where each layer's blocks sit in one worker's flat buffers (see :func:`layout`)."""

    table: np.ndarray   # (layers, N_COLS) int64
    xbuf_len: int       # layer inputs built per step (above the first layer, or from the embedding)
    xchunk_len: int     # layer inputs kept for a block of deferred weight gradients
    dx_len: int         # dL/dx_t of the first layer, for the embedding's gradient
    chunk_len: int      # every layer's deferred weight-gradient block


class Layers:
    """An optional :class:`Embedding` and one or more cells, checked to chain."""

    def __init__(self, layers: Any, *, output_size: int, where: str = "Sequence"):
        self.stacked = isinstance(layers, (list, tuple))
        items = list(layers) if self.stacked else [layers]
        if not items:
            raise ValueError(f"{where}: the list of layers is empty; give at least one cell, e.g. [mb.LSTM(8, 32)]")
        self.embedding = items.pop(0) if isinstance(items[0], Embedding) else None
        if not items:
            raise ValueError(f"{where}: an Embedding needs a cell after it, e.g. [mb.Embedding(100, 16), "
                             "mb.LSTM(16, 64)]")
        for k, c in enumerate(items):
            if isinstance(c, Embedding):
                raise ValueError(f"{where}: an Embedding can only be the first layer (found one at layer {k})")
            if not isinstance(c, Cell):
                raise TypeError(f"{where}: layer {k} ({c!r}) must be a memopt_bptt cell (mb.LSTM(...), "
                                "mb.GRU(...), ...) or, first, an mb.Embedding")
        self.cells: tuple[Cell, ...] = tuple(items)
        width = self.embedding.embedding_dim if self.embedding else None
        for k, c in enumerate(self.cells):
            if width is not None and c.input_size != width:
                below = "the embedding's embedding_dim" if k == 0 else f"layer {k - 1}'s hidden_size"
                raise ValueError(f"{where}: layer {k} ({c!r}) has input_size={c.input_size} but {below} is "
                                 f"{width}; make them equal")
            if (c.output_is_state or c.recurrent_from_output) and (len(self.cells) > 1 or self.embedding):
                raise ValueError(f"{where}: a {c.kind!r} cell feeds its output back and computes the readout "
                                 "itself, so it cannot be stacked or follow an embedding; use it as the only layer")
            needs_input_grad = k > 0 or self.embedding is not None
            if needs_input_grad and c.input_grad is None:
                raise ValueError(f"{where}: layer {k} ({c!r}) has no input gradient (Cell.input_grad), so it "
                                 "can only be the first layer with no embedding in front")
            width = c.hidden_size
        self.output_size = int(output_size)

    # ---- what the stack is -------------------------------------------------------
    @property
    def top(self) -> Cell:
        return self.cells[-1]

    @property
    def n_params(self) -> int:
        """Arrays in kernel order: four per layer, the readout's two, the embedding's one."""
        return 4 * len(self.cells) + 2 + (1 if self.embedding else 0)

    def kind(self) -> str:
        kinds = "+".join(c.kind for c in self.cells)
        return f"embedding+{kinds}" if self.embedding else kinds

    def param_shapes(self) -> dict[str, tuple[int, ...]]:
        """Names and shapes in kernel order (the order the executor's params tuple has)."""
        out_size = self.output_size
        if not self.stacked:
            return self.cells[0].param_shapes(out_size)
        shapes: dict[str, tuple[int, ...]] = {}
        for k, c in enumerate(self.cells):
            cell_shapes = list(c.param_shapes(out_size).values())
            for name, shape in zip(("weight_ih", "weight_hh", "bias_ih", "bias_hh"), cell_shapes[:4]):
                shapes[f"rnn.{name}_l{k}"] = shape
        shapes["readout.weight"] = (out_size, self.top.hidden_size)
        shapes["readout.bias"] = (out_size,)
        if self.embedding:
            shapes["embedding.weight"] = (self.embedding.vocab_size, self.embedding.embedding_dim)
        return shapes

    def fan_in_hidden(self, name: str) -> int:
        """The hidden size PyTorch's uniform(-1/sqrt(H), 1/sqrt(H)) initialisation uses for a parameter."""
        if self.stacked and name.startswith("rnn."):
            return self.cells[int(name.rsplit("_l", 1)[1])].hidden_size
        return self.top.hidden_size

    def state_widths(self) -> list[int]:
        return [int(c.state_width(self.output_size)) for c in self.cells]

    def internal_widths(self) -> list[int]:
        return [int(c.internal_width(self.output_size)) for c in self.cells]

    def input_sizes(self) -> list[int]:
        first = self.embedding.embedding_dim if self.embedding else self.cells[0].input_size
        return [first] + [c.hidden_size for c in self.cells[:-1]]

    def built_input(self, k: int) -> bool:
        """Whether layer k's input is built per step into a buffer (not read from xs in place)."""
        return k > 0 or self.embedding is not None


def layout(layers: Layers, rows: int, *, lane: bool) -> LayerBuffers:
    """Offsets and lengths (elements) of each layer's blocks for ``rows`` batch
    rows: its state and internal state inside the stack's, its input buffer,
    its kept inputs for deferred weight gradients (above the first layer, from
    the embedding, or in a lane, which cannot read xs in place) and its block
    of deferred weight gradients."""
    out = layers.output_size
    table = np.zeros((len(layers.cells), N_COLS), np.int64)
    s = i = x = xc = ch = 0
    for k, (c, n_in) in enumerate(zip(layers.cells, layers.input_sizes())):
        sl, il = rows * int(c.state_width(out)), rows * int(c.internal_width(out))
        steps = c.chunk_steps(rows)  # deferred weight-gradient steps per flush (0: none)
        chunk = steps or 1
        cl = int(steps * c.chunk_width(rows, out)) if steps else 0
        built = layers.built_input(k)
        table[k] = (s, sl, i, il, x if built else -1, xc if c.grad_chunk and (built or lane) else -1,
                    ch, cl, n_in, c.hidden_size, chunk)
        s, i, ch = s + sl, i + il, ch + cl
        if built:
            x += rows * n_in
        if c.grad_chunk and (built or lane):
            xc += chunk * rows * n_in
    dx = rows * layers.embedding.embedding_dim if layers.embedding else 0
    return LayerBuffers(table, x, xc, dx, ch)


# ---- states at the boundary: the user's shapes and the kernels' flat layout --------------------------

def _blocks(cell: Cell, out: int) -> int:
    return int(cell.state_width(out)) // cell.hidden_size


def state_shape(cell: Cell, out: int, batch: int) -> tuple[int, ...]:
    sw = int(cell.state_width(out))
    if cell.state_blocks:
        return (sw // cell.hidden_size, batch, cell.hidden_size)
    return (batch, sw)


def flat_state(cell: Cell, out: int, state: np.ndarray) -> np.ndarray:
    """A new 1-D copy of one layer's state in the kernels' layout."""
    a = np.ascontiguousarray(state)
    if not cell.feature_major:
        return a.reshape(-1).copy()
    P, H = _blocks(cell, out), cell.hidden_size
    B = a.shape[-2] if cell.state_blocks else a.shape[0]
    blocks = a.reshape(P, B, H) if cell.state_blocks else a.reshape(B, P, H).transpose(1, 0, 2)
    return np.ascontiguousarray(blocks.transpose(0, 2, 1)).reshape(-1)


def user_state(cell: Cell, out: int, flat: np.ndarray, batch: int) -> np.ndarray:
    """The inverse of :func:`flat_state`: a new array of the layer's state shape."""
    shape = state_shape(cell, out, batch)
    if not cell.feature_major:
        return np.array(flat).reshape(shape)
    P, H = _blocks(cell, out), cell.hidden_size
    blocks = np.asarray(flat).reshape(P, H, batch).transpose(0, 2, 1)
    res = blocks if cell.state_blocks else blocks.transpose(1, 0, 2)
    return np.ascontiguousarray(res).reshape(shape)


def row_view(cell: Cell, out: int, flat: np.ndarray, batch: int, b0: int, b1: int) -> np.ndarray:
    """A view of batch rows b0..b1-1 of one layer's flat state of ``batch`` rows."""
    if cell.feature_major:
        return flat.reshape(_blocks(cell, out), cell.hidden_size, batch)[:, :, b0:b1]
    return flat.reshape(batch, -1)[b0:b1]


def copy_rows(layers: Layers, dst: np.ndarray, dst_batch: int, d0: int, src: np.ndarray, src_batch: int,
              s0: int, n: int) -> None:
    """dst's rows d0..d0+n-1 = src's rows s0..s0+n-1, layer by layer, for flat
    stack states of dst_batch and src_batch rows (no temporaries)."""
    out = layers.output_size
    a_dst = a_src = 0
    for c in layers.cells:
        sw = int(c.state_width(out))
        d = dst[a_dst: a_dst + dst_batch * sw]
        s = src[a_src: a_src + src_batch * sw]
        row_view(c, out, d, dst_batch, d0, d0 + n)[...] = row_view(c, out, s, src_batch, s0, s0 + n)
        a_dst += dst_batch * sw
        a_src += src_batch * sw


def elements(shape: tuple[int, ...]) -> int:
    return math.prod(shape)
