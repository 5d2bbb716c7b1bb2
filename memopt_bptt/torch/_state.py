"""The recurrent state's structure: one tensor, or a tuple / list / NamedTuple of tensors.

A scan keeps states as flat tuples of tensors and hands ``step`` and
``loss_fn`` the user's structure. Every state ``step`` returns is checked
against ``state0``'s structure, shapes, dtypes and devices, so a step that
changes any of them fails at once instead of being replayed wrongly.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import torch

__all__ = ["StateSpec", "describe"]


def _tensor_text(shape: Any, dtype: torch.dtype, device: torch.device) -> str:
    return f"a {dtype} tensor of shape {tuple(shape)} on {device}"


def _sequence_text(container: type, parts: list[str]) -> str:
    inner = ", ".join(parts[:4]) + (", ..." if len(parts) > 4 else "")
    return f"a {container.__name__} of {len(parts)} ({inner})"


def describe(value: Any) -> str:
    """A short description of a state-like value for error messages."""
    if isinstance(value, torch.Tensor):
        return _tensor_text(value.shape, value.dtype, value.device)
    if isinstance(value, (tuple, list)):
        return _sequence_text(type(value), [describe(v) for v in value])
    return f"a {type(value).__name__}"


class StateSpec(NamedTuple):
    """What every state of a scan looks like (read from ``state0``)."""

    container: type | None            # None: a single tensor
    shapes: tuple[torch.Size, ...]
    dtypes: tuple[torch.dtype, ...]
    devices: tuple[torch.device, ...]
    differentiable: tuple[bool, ...]  # which tensors can carry a gradient (floating point or complex)

    @classmethod
    def of(cls, state0: Any) -> "StateSpec":
        """The spec of ``state0``; TypeError/ValueError naming ``state0`` if it is not a state."""
        if isinstance(state0, torch.Tensor):
            flat, container = (state0,), None
        elif isinstance(state0, (tuple, list)) and len(state0) > 0 \
                and all(isinstance(c, torch.Tensor) for c in state0):
            flat, container = tuple(state0), type(state0)
        else:
            raise TypeError(f"scan_loss: state0 is {describe(state0)}; it must be a tensor or a non-empty "
                            "tuple/list of tensors, e.g. (h0, c0) for nn.LSTMCell")
        if any(c.numel() == 0 for c in flat):
            raise ValueError(f"scan_loss: state0 is {describe(state0)}, with an empty tensor; every state "
                             "tensor needs at least one element")
        return cls(container, tuple(c.shape for c in flat), tuple(c.dtype for c in flat),
                   tuple(c.device for c in flat),
                   tuple(c.dtype.is_floating_point or c.dtype.is_complex for c in flat))

    @property
    def data_bytes(self) -> tuple[int, ...]:
        """Data bytes of each of the state's tensors."""
        return tuple(shape.numel() * torch.empty((), dtype=dtype).element_size()
                     for shape, dtype in zip(self.shapes, self.dtypes))

    def describe(self) -> str:
        """What a state must look like, in the words of :func:`describe`."""
        parts = [_tensor_text(*spec) for spec in zip(self.shapes, self.dtypes, self.devices)]
        return parts[0] if self.container is None else _sequence_text(self.container, parts)

    def build(self, flat: tuple[torch.Tensor, ...]) -> Any:
        """The user's structure from a flat tuple."""
        if self.container is None:
            return flat[0]
        if self.container is tuple or self.container is list:
            return self.container(flat)
        if hasattr(self.container, "_fields"):  # a NamedTuple
            return self.container(*flat)
        return self.container(flat)

    def flatten(self, state: Any, *, step: int) -> tuple[torch.Tensor, ...]:
        """``state`` (what ``step`` returned at time step ``step``) as a flat tuple, checked."""
        if self.container is None:
            flat = (state,) if isinstance(state, torch.Tensor) else None
        elif isinstance(state, (tuple, list)) and len(state) == len(self.shapes):
            flat = tuple(state)
        else:
            flat = None
        ok = flat is not None
        if ok:
            for c, shape, dtype, device in zip(flat, self.shapes, self.dtypes, self.devices):
                if not (isinstance(c, torch.Tensor) and c.shape == shape and c.dtype == dtype
                        and c.device == device):
                    ok = False
                    break
        if not ok:
            raise ValueError(
                f"scan_loss: step returned {describe(state)} at t={step}, but state0 is {self.describe()}; "
                "step(x_t, state) must return the state in state0's structure, with the same shapes, "
                "dtypes and devices")
        return flat
