"""Bytes a scan holds: tensor data per distinct storage, plus what autograd and torch keep around it.

A kept step's internal state is its autograd graph. What that graph holds is
(1) the tensors autograd saved for its backward, which
``torch.autograd.graph.saved_tensors_hooks`` shows as they are saved
(:func:`saving_into`), counted once per storage (views share their base's;
:func:`distinct_bytes`), leaving out storages the caller owns anyway
(parameters, ``xs``, ``targets``); and (2) host-memory metadata: the C++
node objects, their saved-variable records and the tensor headers, about
21 KiB per LSTMCell step whatever its size. Leaving (2) out would let a small
cell's scan hold several times its budget, so it is charged by
:func:`graph_bytes` from the graph's node and saved-tensor counts, and every
kept tensor is charged a header (:func:`held_bytes`).

The constants are measured, not derived: glibc's ``mallinfo2`` heap growth
per kept step of nn.RNNCell, GRUCell, LSTMCell and a two-state custom cell
on torch 2.13 (CPython 3.11, x86-64) was 10.8-21.8 KiB at 8-18 nodes and
8-18 saved tensors; the constants below cover every one of them, with up to
about 20% to spare (``tests/test_torch_scan.py`` measures it again where
``mallinfo2`` exists). The metadata is host memory even for CUDA tensors;
it is charged there too.

:class:`Tracker` keeps a running count of the live bytes of everything
registered with it (checkpoints, kept graphs, the current state and
gradients) and of their peak.
"""

from __future__ import annotations

import contextlib
from typing import Iterable, Iterator

import torch

__all__ = ["ALIGNMENT", "NODE_BYTES", "SAVED_BYTES", "TENSOR_BYTES", "Tracker", "distinct_bytes",
           "graph_bytes", "held_bytes", "saving_into", "storage_key"]

ALIGNMENT = 64
"""torch's CPU allocator rounds tensor data up to 64 bytes."""
TENSOR_BYTES = 384
"""Host memory of one tensor kept alive apart from its data (TensorImpl, StorageImpl, allocator header)."""
NODE_BYTES = 1088
"""Host memory of one autograd node of a kept graph (AccumulateGrad nodes not counted)."""
SAVED_BYTES = 352
"""Host memory of one saved tensor's record (its SavedVariable and alias), data apart."""


def held_bytes(data_bytes: int) -> int:
    """What one tensor with ``data_bytes`` of data costs while it is kept: aligned data and a header."""
    return -(-data_bytes // ALIGNMENT) * ALIGNMENT + TENSOR_BYTES


def graph_bytes(n_nodes: int, n_saved: int) -> int:
    """Host-memory metadata of a kept graph of ``n_nodes`` nodes and ``n_saved`` saved tensors."""
    return n_nodes * NODE_BYTES + n_saved * SAVED_BYTES


def storage_key(t: torch.Tensor) -> tuple[str, int | None, int]:
    """Identifies the storage behind ``t`` (device and address)."""
    return t.device.type, t.device.index, t.untyped_storage().data_ptr()


def _data_bytes(t: torch.Tensor) -> int:
    return -(-t.untyped_storage().nbytes() // ALIGNMENT) * ALIGNMENT


def distinct_bytes(tensors: Iterable[torch.Tensor], exclude: frozenset = frozenset()) -> int:
    """Aligned data bytes of the distinct storages behind ``tensors``, leaving out the keys in ``exclude``."""
    sizes: dict[tuple, int] = {}
    for t in tensors:
        key = storage_key(t)
        if key not in exclude:
            sizes[key] = _data_bytes(t)
    return sum(sizes.values())


@contextlib.contextmanager
def saving_into(saved: list) -> Iterator[None]:
    """Inside, every tensor autograd saves for a backward is also appended to ``saved``.

    The hook hands autograd a detached alias (same storage, no grad_fn), so
    the list holds no reference back into the graph.
    """
    def pack(t: torch.Tensor) -> torch.Tensor:
        alias = t.detach()
        saved.append(alias)
        return alias

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda alias: alias):
        yield


class Tracker:
    """Live bytes of the registered objects and their peak.

    ``add`` and ``remove`` take the tensors of one object (a checkpoint, a
    kept step, the current state) and its metadata bytes; a storage
    registered by several objects is counted once, until the last of them
    is removed.
    """

    def __init__(self, exclude: frozenset = frozenset()):
        self.exclude = exclude
        self.live = 0
        self.peak = 0
        self._refs: dict[tuple, list[int]] = {}  # key -> [bytes, registrations]

    def add(self, tensors: Iterable[torch.Tensor], metadata: int = 0) -> None:
        self.live += metadata
        for t in tensors:
            key = storage_key(t)
            if key in self.exclude:
                continue
            entry = self._refs.get(key)
            if entry is None:
                size = _data_bytes(t)
                self._refs[key] = [size, 1]
                self.live += size
            else:
                entry[1] += 1
        self.peak = max(self.peak, self.live)

    def remove(self, tensors: Iterable[torch.Tensor], metadata: int = 0) -> None:
        self.live -= metadata
        for t in tensors:
            key = storage_key(t)
            if key in self.exclude:
                continue
            entry = self._refs[key]
            entry[1] -= 1
            if entry[1] == 0:
                del self._refs[key]
                self.live -= entry[0]
