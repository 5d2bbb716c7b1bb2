"""The cell contract: a bundle of jitted kernels plus its parameter layout.

A cell is plain data. It holds no arrays and no hidden state; the executor
calls its kernels with arrays it owns. Cells import nothing else from the
package, so a user can write one without knowing the planner or executor.

Layout conventions (per batch of ``B`` rows, one float dtype throughout):

* The *state* ``s_t`` (what the recurrence carries, one memory unit) is a 1-D
  array of ``B * state_width`` elements. Unless ``output_is_state`` is set, its
  first ``B * hidden_size`` elements are ``h_t`` in row-major ``(B, H)`` order;
  the readout reads them. A ``feature_major`` cell stores every
  ``hidden_size``-wide block of the state transposed instead, ``(H, B)``
  (so ``state_width`` is a multiple of ``hidden_size``); the executor converts
  h0 and its gradient at the boundary, so users never see the difference.
* The *internal state* ``I_t`` is a 1-D array of ``B * internal_width``
  elements holding everything the backward of step t reads (besides ``x_t``
  and the parameters), and enough to rebuild ``s_t`` exactly
  (``state_from_internal``). ``alpha = internal_width / state_width``.
* ``work`` is a scratch 1-D array of ``work_size(B, output_size)`` elements
  the kernels may overwrite freely; it counts against the memory budget.

Kernel signatures (positional; ``P`` stands for the six parameter arrays
``w_ih, w_hh, b_ih, b_hh, w_out, b_out`` and ``G`` for their gradients, in
the same order)::

    forward_step(*P, x, s_prev, s_new, internal, work)        # writes s_new, internal
    backward_step(*P, x, internal, ds, ds_prev, *G, work)     # G += dL/dP via this step;
                                                              # ds_prev = dL/ds_{t-1}
    state_from_internal(*P, x, internal, s_out, work)         # s_out = s_t, bit-exact

A cell may defer its weight gradients to sum several steps in one GEMM
(``grad_chunk = c > 0``; the built-in LSTM and GRU do, c = 2 by default, more at
batches under 4 rows: ``chunk_rows``, :meth:`Cell.chunk_steps`). Its
backward then takes two more arguments and a third kernel flushes::

    backward_step(*P, x, internal, ds, ds_prev, *G, work, chunk, j)
    flush_grads(*P, xs_chunk, chunk, w, *G)

``chunk`` is a buffer of ``c * chunk_width(B, output_size)`` elements that
persists between calls (the forward never touches it); step t of the
sequence uses column ``j = (t - 1) % c``. After reversing the first step of
each block of c steps (steps ``q*c+1 .. q*c+w``, ``w <= c`` for the last
block), the executor calls ``flush_grads`` with ``xs_chunk`` = those steps'
inputs as a ``(w * B, input_size)`` array. The blocks are fixed by step
index and reversal always runs T..1, so the summation order, hence every
bit of the gradients, is the same under every schedule.

A feature-major cell with deferred gradients may also give ``unit_kernels``,
the same step split by hidden units, so that threads can share one step
(each takes a range ``u0..u1`` of units: their rows of every gate and their
elements of every block; the built-in LSTM and GRU do)::

    forward(*P, x, s_prev, s_new, internal, work, u0, u1)      # reads all of h_{t-1}
    rebuild(*P, x, internal, s_out, work, u0, u1)
    backward_local(*P, x, internal, ds, ds_prev, work, chunk, j, part, u0, u1)
        # reads only the units' elements of internal and ds; writes their
        # elements of ds_prev but dL/dh_{t-1}, their part of the chunk's
        # column block j, and into ``part`` (batch * hidden) what their
        # gates contribute to every unit's dL/dh_{t-1}
    backward_shared(*P, x, ds_prev, parts, u0, u1)             # after every thread's
        # backward_local: the units' dL/dh_{t-1}, the threads' parts (one row
        # of ``parts`` each) added in thread order
    flush(*P, xs_chunk, chunk, w, *G, u0, u1)                   # the units' rows of G

A feature-major cell may also give ``input_grad``, which a layer needs to
sit above another layer or an embedding (``mb.Sequence([...])``): called
right after ``backward_step`` of step t with the same ``work`` (and, with
deferred gradients, before the block is flushed), it adds dL/dx_t into
``dx``, an ``(input_size, B)`` array (feature-major, as the layer below
keeps h_t)::

    input_grad(*P, x, work, dx)

A layer with unit kernels above another (``mb.Sequence([mb.LSTM(...),
mb.LSTM(...)])``) also needs ``unit_input_grad``, ``input_grad`` split the
same way: right after ``backward_local`` of step t with the same ``work``,
it writes into ``part`` (batch * input_size, row-major ``(B, input)``) what
the units' gates contribute to dL/dx_t; the executor adds the threads' parts
in thread order into the layer below's dL/dh_t, each thread its own units::

    unit_input_grad(*P, x, work, part, u0, u1)

In a stack, ``x`` of a layer above the first is the layer below's h_t, a
transposed view of its ``(H, B)`` block (``x.T`` is C-contiguous): the
forward may read all of it; ``rebuild``, ``backward_local`` and
``unit_input_grad`` may read only its shape.

The executor runs the unit kernels between barriers, so every read of another thread's
units comes after that thread wrote them; ``parts`` alternates between two
buffers by step parity. ``work`` is each thread's own.

``ds`` holds dL/ds_t in full (from later steps and this step's loss); the
kernel may overwrite it. Kernels must not allocate arrays per call (use
``work``), so the executor's sweep makes no allocations that grow with T.
Every kernel must be deterministic: the same inputs give the same bits,
because gradients are promised bit-identical across schedules.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

__all__ = ["Cell"]


def _check_size(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be a positive int, got {value!r}")
    if value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return value


def _check_chunk(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"grad_chunk={value!r} must be a positive int (steps of weight gradients per GEMM)")
    return value


CHUNK_ROWS_MIN_WEIGHTS = 1 << 16
"""Weights (gates x hidden x (hidden + input) elements) from which LSTM's and GRU's default
grad_chunk defers more steps at small batches, to 8 rows (LSTM 128 over an input of 64 and up)."""

CHUNK_WIDE_MIN_WEIGHTS = 3 << 20
"""Weights from which the default defers steps up to 64 rows at every batch (LSTM and GRU 1024 over
an input of 64; LSTM 768 is below)."""


def auto_chunk_rows(weights: int) -> int:
    """``Cell.chunk_rows`` of LSTM(grad_chunk=None) and GRU's for ``weights`` elements of weights.

    A flush reads and writes the whole weight gradient. Where the weights and their gradient outgrow
    the caches, that traffic every 2 steps cost as much as the steps' own products: at hidden 1024,
    batch 16 (float32, Zen 5), 4 steps per flush (64 rows) made the plain sweep 1.16-1.2x faster for
    LSTM and GRU, at batch 1 64 steps 1.15x (also with AVX2 code), where LSTM 768 and 512 gained
    nothing. 64 rows keep the block at 5 x 64 x hidden elements, which a 5% budget at T = 200 still
    holds (128 rows made that LSTM 1024 sweep 2.4x slower: the block took the checkpoints' room)."""
    if weights >= CHUNK_WIDE_MIN_WEIGHTS:
        return 64
    return 8 if weights >= CHUNK_ROWS_MIN_WEIGHTS else 0


@dataclass(frozen=True, eq=False)
class Cell:
    """A recurrent cell: jitted kernels, sizes and PyTorch-style parameter layout.

    Built-in cells are made by :func:`memopt_bptt.LSTM` and friends; a custom
    cell passes its own kernels (see the module docstring for the contract).

    Example::

        cell = Cell(kind="mycell", input_size=3, hidden_size=5, n_gates=1,
                    forward_step=f, backward_step=b, state_from_internal=r,
                    state_width=lambda out: 5, internal_width=lambda out: 15,
                    work_size=lambda batch, out: 2 * batch)

    Args:
        kind: short name shown in schedules and reports.
        input_size, hidden_size: sizes of ``x_t`` and ``h_t``.
        n_gates: rows of ``weight_ih`` are ``n_gates * hidden_size``.
        forward_step, backward_step, state_from_internal: Numba-jitted kernels.
        state_width, internal_width: elements per batch row of the state and
            internal state, as functions of output_size.
        work_size: elements of scratch, as a function of (batch, output_size).
        recurrent_from_output: ``weight_hh`` has ``output_size`` columns
            (a Jordan network feeds the previous output back).
        output_is_state: the state is the network's output ``y_t`` (the cell
            applies the readout itself, as a Jordan network does).
        backward_forward_ratio: measured backward/forward time of one step,
            used only for time predictions.
        feature_major: the state's blocks are stored ``(hidden, batch)``
            (see the module docstring); the built-in Elman, GRU and LSTM do.
        grad_chunk, chunk_width, flush_grads: deferred weight gradients (see
            the module docstring); 0 / None for a cell that adds its weight
            gradients in ``backward_step``.
        chunk_rows: with deferred gradients, the least batch rows (steps x
            rows) a flush's GEMM sums over: a sweep of fewer rows defers more
            steps (:meth:`chunk_steps`); 0: always ``grad_chunk`` steps.
        unit_kernels: optional (forward, rebuild, backward_local,
            backward_shared, flush), the step split by hidden units for
            threads that share it (see the module docstring); needs
            ``feature_major`` and ``grad_chunk > 0``.
        state_blocks: h0 and its gradient have the shape (state_width /
            hidden_size, batch, hidden_size), as nn.LSTM's (h0, c0) stacked;
            otherwise (batch, state_width).
        input_grad: optional jitted kernel giving dL/dx_t, which a layer needs
            above another layer or an embedding (see the module docstring);
            needs ``feature_major``.
        unit_input_grad: optional, ``input_grad`` split by hidden units,
            which a layer with unit kernels needs above another for threads
            to share a stack's steps (see the module docstring); needs
            ``unit_kernels`` and ``input_grad``.
    """

    kind: str
    input_size: int
    hidden_size: int
    n_gates: int
    forward_step: Callable[..., None]
    backward_step: Callable[..., None]
    state_from_internal: Callable[..., None]
    state_width: Callable[[int], int]
    internal_width: Callable[[int], int]
    work_size: Callable[[int, int], int]
    recurrent_from_output: bool = False
    output_is_state: bool = False
    backward_forward_ratio: float = 2.0
    feature_major: bool = False
    grad_chunk: int = 0
    chunk_rows: int = 0
    chunk_width: Callable[[int, int], int] | None = None
    flush_grads: Callable[..., None] | None = None
    unit_kernels: tuple | None = None
    state_blocks: bool = False
    input_grad: Callable[..., None] | None = None
    unit_input_grad: Callable[..., None] | None = None
    options: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        _check_size("input_size", self.input_size)
        _check_size("hidden_size", self.hidden_size)
        _check_size("n_gates", self.n_gates)
        for name in ("forward_step", "backward_step", "state_from_internal"):
            if not callable(getattr(self, name)):
                raise TypeError(f"Cell.{name} must be a Numba-jitted function")
        if isinstance(self.grad_chunk, bool) or not isinstance(self.grad_chunk, int) or self.grad_chunk < 0:
            raise ValueError(f"Cell: grad_chunk={self.grad_chunk!r} must be an int >= 0 (0: no deferred gradients)")
        if self.grad_chunk and not (callable(self.chunk_width) and callable(self.flush_grads)):
            raise TypeError("Cell: grad_chunk > 0 needs chunk_width (a function of batch, output_size) "
                            "and a jitted flush_grads kernel")
        if self.unit_kernels is not None:
            if not (isinstance(self.unit_kernels, tuple) and len(self.unit_kernels) == 5
                    and all(callable(k) for k in self.unit_kernels)):
                raise TypeError("Cell: unit_kernels must be a tuple of five jitted kernels (forward, rebuild, "
                                "backward_local, backward_shared, flush) or None")
            if not (self.feature_major and self.grad_chunk and not self.recurrent_from_output):
                raise ValueError("Cell: unit_kernels need feature_major=True, grad_chunk > 0 and "
                                 "recurrent_from_output=False")
        if self.input_grad is not None and not (callable(self.input_grad) and self.feature_major):
            raise ValueError("Cell: input_grad must be a jitted kernel, and needs feature_major=True")
        if self.unit_input_grad is not None and not (callable(self.unit_input_grad) and self.unit_kernels
                                                     and self.input_grad is not None):
            raise ValueError("Cell: unit_input_grad must be a jitted kernel, and needs unit_kernels and input_grad")
        if self.state_blocks and not self.feature_major:
            raise ValueError("Cell: state_blocks=True needs feature_major=True")
        if self.feature_major and self.output_is_state:
            raise ValueError("Cell: feature_major=True needs output_is_state=False (the readout reads h_t)")

    def param_shapes(self, output_size: int) -> dict[str, tuple[int, ...]]:
        """Parameter names and shapes (PyTorch's nn.RNN/GRU/LSTM + nn.Linear)."""
        rows = self.n_gates * self.hidden_size
        rec = output_size if self.recurrent_from_output else self.hidden_size
        return {
            "cell.weight_ih": (rows, self.input_size),
            "cell.weight_hh": (rows, rec),
            "cell.bias_ih": (rows,),
            "cell.bias_hh": (rows,),
            "readout.weight": (output_size, self.hidden_size),
            "readout.bias": (output_size,),
        }

    def chunk_steps(self, rows: int) -> int:
        """Steps of weight gradients a sweep over ``rows`` batch rows defers into one GEMM:
        ``grad_chunk``, or more where that many steps of these rows are fewer than
        ``chunk_rows`` (0 without deferred gradients). Depends only on the cell and the
        rows, so every schedule of a sweep uses the same and gives the same bits."""
        if not self.grad_chunk:
            return 0
        return max(self.grad_chunk, -(-self.chunk_rows // rows)) if self.chunk_rows else self.grad_chunk

    def alpha(self, output_size: int) -> float:
        """Internal-state size over hidden-state size (the planner's alpha)."""
        return self.internal_width(output_size) / self.state_width(output_size)

    def __repr__(self) -> str:
        extra = "".join(f", {k}={v!r}" for k, v in self.options.items())
        return (f"{type(self).__name__}(kind={self.kind!r}, input_size={self.input_size}, "
                f"hidden_size={self.hidden_size}{extra})")
