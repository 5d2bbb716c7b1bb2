"""Bytes a scan holds: the distinct storages behind the tensors it keeps, each counted once.

A kept step's internal state is its autograd graph; what that graph holds
is the tensors autograd saved for its backward, which
``torch.autograd.graph.saved_tensors_hooks`` shows as they are saved
(:func:`saving_into`). Views share their base's storage, so bytes are
counted per storage (:func:`distinct_bytes`), and storages the caller owns
anyway (parameters, ``xs``, ``targets``) are left out: they are inputs, not
what the scan keeps. :class:`Tracker` keeps a running count of the live
bytes of everything registered with it (checkpoints, kept graphs' saved
tensors, the current state and gradients) and its peak.
"""

from __future__ import annotations

import contextlib
from typing import Iterable, Iterator

import torch

__all__ = ["Tracker", "distinct_bytes", "saving_into", "storage_key"]


def storage_key(t: torch.Tensor) -> tuple[str, int | None, int]:
    """Identifies the storage behind ``t`` (device and address)."""
    return t.device.type, t.device.index, t.untyped_storage().data_ptr()


def distinct_bytes(tensors: Iterable[torch.Tensor], exclude: frozenset = frozenset()) -> int:
    """Bytes of the distinct storages behind ``tensors``, leaving out the keys in ``exclude``."""
    sizes: dict[tuple, int] = {}
    for t in tensors:
        key = storage_key(t)
        if key not in exclude:
            sizes[key] = t.untyped_storage().nbytes()
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
    """Live bytes of the registered tensors' distinct storages, and their peak.

    ``add`` and ``remove`` take the tensors of one object (a checkpoint, a
    kept step, the current state); a storage registered by several objects
    is counted once, until the last of them is removed.
    """

    def __init__(self, exclude: frozenset = frozenset()):
        self.exclude = exclude
        self.live = 0
        self.peak = 0
        self._refs: dict[tuple, list[int]] = {}  # key -> [bytes, registrations]

    def add(self, tensors: Iterable[torch.Tensor]) -> None:
        for t in tensors:
            key = storage_key(t)
            if key in self.exclude:
                continue
            entry = self._refs.get(key)
            if entry is None:
                size = t.untyped_storage().nbytes()
                self._refs[key] = [size, 1]
                self.live += size
            else:
                entry[1] += 1
        self.peak = max(self.peak, self.live)

    def remove(self, tensors: Iterable[torch.Tensor]) -> None:
        for t in tensors:
            key = storage_key(t)
            if key in self.exclude:
                continue
            entry = self._refs[key]
            entry[1] -= 1
            if entry[1] == 0:
                del self._refs[key]
                self.live -= entry[0]
