"""Sequence at its boundary, as PyTorch's: parameter names, shapes and
initialisation, state_dict conversion (memopt_bptt._torch_names), and the
user's state shapes against the kernels' flat layout."""

from __future__ import annotations

import math
from typing import Any, Mapping

import numpy as np

from . import _layers, _torch_names
from ._model_checks import _dtype_of


class _Boundary:
    """Sequence's parameters and states as PyTorch lays them out (a part of :class:`memopt_bptt.Sequence`)."""

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

