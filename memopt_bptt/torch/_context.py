"""What a replayed step must see as the first pass saw it: random generators and autocast.

A step replayed during the backward sweep must compute exactly what it
computed in the first pass. Two pieces of global state can change that:

* the random generators (dropout): every checkpoint carries the generators'
  state at its position (:class:`Generators`), restored when the sweep
  resumes from it, as ``torch.utils.checkpoint``'s ``preserve_rng_state``
  does for one segment; the backward sweep runs inside :meth:`Generators.fork`
  so the caller's generators are left as the first pass left them;
* autocast, which is thread-local: the backward may run in another thread,
  or the caller's, with other settings. :class:`Autocast` records it when the
  scan starts and every step and loss call (first pass and replays) runs
  under it; the reversals do not (autograd runs backward ops outside
  autocast, and so does the plain loop's backward).
"""

from __future__ import annotations

import contextlib
from typing import Iterator, NamedTuple

import torch

__all__ = ["Autocast", "Generators", "RngState"]


class RngState(NamedTuple):
    """The CPU generator's state and one state per CUDA device in the scan."""

    cpu: torch.Tensor
    cuda: tuple[torch.Tensor, ...]

    @property
    def tensors(self) -> tuple[torch.Tensor, ...]:
        return (self.cpu,) + self.cuda

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.tensors)

    def same_as(self, other: "RngState") -> bool:
        return all(torch.equal(a, b) for a, b in zip(self.tensors, other.tensors))


class Generators(NamedTuple):
    """The generators a scan may draw from: the CPU one and those of its CUDA devices."""

    cuda_devices: tuple[torch.device, ...]

    @classmethod
    def of(cls, tensors: tuple[torch.Tensor, ...]) -> "Generators":
        devices = sorted({t.device for t in tensors if t.device.type == "cuda"}, key=lambda d: d.index or 0)
        return cls(tuple(devices))

    def capture(self) -> RngState:
        return RngState(torch.get_rng_state(), tuple(torch.cuda.get_rng_state(d) for d in self.cuda_devices))

    def restore(self, state: RngState) -> None:
        torch.set_rng_state(state.cpu)
        for device, cuda_state in zip(self.cuda_devices, state.cuda):
            torch.cuda.set_rng_state(cuda_state, device)

    @contextlib.contextmanager
    def fork(self) -> Iterator[None]:
        """Run the body and put the generators back as they were."""
        saved = self.capture()
        try:
            yield
        finally:
            self.restore(saved)


_DEVICE_TYPES = ("cpu", "cuda")


class Autocast(NamedTuple):
    """Autocast's settings per device type when the scan started: (device type, enabled, dtype)."""

    settings: tuple[tuple[str, bool, torch.dtype], ...]

    @classmethod
    def capture(cls) -> "Autocast":
        kinds = [k for k in _DEVICE_TYPES if k == "cpu" or torch.cuda.is_available()]
        return cls(tuple((k, torch.is_autocast_enabled(k), torch.get_autocast_dtype(k)) for k in kinds))

    @property
    def enabled(self) -> bool:
        return any(enabled for _, enabled, _ in self.settings)

    def entered(self) -> contextlib.AbstractContextManager:
        """These settings inside (nothing to enter where they are already the thread's)."""
        if all(torch.is_autocast_enabled(kind) == enabled and (not enabled or torch.get_autocast_dtype(kind) == dtype)
               for kind, enabled, dtype in self.settings):
            return contextlib.nullcontext()
        stack = contextlib.ExitStack()
        for device_type, enabled, dtype in self.settings:
            stack.enter_context(torch.autocast(device_type, dtype=dtype, enabled=enabled))
        return stack
