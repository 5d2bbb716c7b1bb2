"""One step of a scan over torch tensors: what the call computes (:class:`Problem`),
the two kinds of checkpoint (:class:`Hidden`, a state; :class:`Kept`, a step run
with grad and its graph), and running a step under no_grad (:func:`run_step`) or
keeping it with grad (:func:`keep_step`). The sweep (``_sweep.py``) places
these in the pool as the schedule's actions say."""

from __future__ import annotations

import contextlib
from typing import Any, Callable, NamedTuple

import torch

from ._context import Autocast, Generators, RngState
from ._graph import count_nodes
from ._memory import TENSOR_BYTES, graph_bytes, saving_into
from ._state import StateSpec, describe

__all__ = ["Hidden", "Kept", "Problem", "keep_step", "record_loss", "run_step"]


class Problem(NamedTuple):
    """What one scan computes, fixed for the whole call."""

    step: Callable[..., Any]
    loss_fn: Callable[..., Any]
    spec: StateSpec
    xs: torch.Tensor
    targets: torch.Tensor
    params: tuple[torch.Tensor, ...]   # tensors differentiated besides the state, x_t and y_t
    stops: frozenset                   # graph nodes that made the non-leaf params (walks end there)
    x_grad: bool                       # x_t is a leaf of each kept step (xs needs a gradient)
    y_grad: bool                       # the same for targets
    generators: Generators | None      # None: nothing draws random numbers, replays restore nothing
    replay_loss: bool                  # loss_fn draws random numbers, so replays run it too
    autocast: Autocast


class Hidden(NamedTuple):
    """A hidden-state checkpoint: the state at ``position``."""

    position: int
    state: tuple[torch.Tensor, ...]
    versions: tuple[int, ...]          # the tensors' version counters when kept
    rng: RngState | None

    def tensors(self) -> tuple[torch.Tensor, ...]:
        return self.state + (() if self.rng is None else self.rng.tensors)

    def metadata(self) -> int:
        return TENSOR_BYTES * len(self.tensors())


class Kept(NamedTuple):
    """Step ``position`` run with grad: its graph (the internal state I_t), output state and loss."""

    position: int
    inputs: tuple[torch.Tensor, ...]   # s_{t-1}: detached leaves, or kept step t-1's outputs (chained)
    x_leaf: torch.Tensor | None
    y_leaf: torch.Tensor | None
    outputs: tuple[torch.Tensor, ...]  # s_t, in the graph
    loss: torch.Tensor
    saved: tuple[torch.Tensor, ...]    # what autograd saved, where it was recorded (memory tracking)
    graph_metadata: int                # its nodes' host memory (_memory.graph_bytes), where recorded
    rng: RngState | None

    def tensors(self) -> tuple[torch.Tensor, ...]:
        return self.outputs + (self.loss,) + self.saved + (() if self.rng is None else self.rng.tensors)

    def metadata(self) -> int:
        return self.graph_metadata + (0 if self.rng is None else TENSOR_BYTES * len(self.rng.tensors))

    def state(self) -> tuple[torch.Tensor, ...]:
        return tuple(o.detach() for o in self.outputs)


def _check_loss(loss: Any, t: int) -> torch.Tensor:
    if not isinstance(loss, torch.Tensor) or loss.dim() != 0 or not loss.dtype.is_floating_point:
        raise ValueError(f"scan_loss: loss_fn returned {describe(loss)} at t={t}; it must return a scalar (a "
                         "0-dim floating-point tensor), e.g. F.mse_loss(readout(h), y_t) with its default "
                         "reduction='mean'")
    return loss


def record_loss(losses: torch.Tensor, t: int, loss: torch.Tensor) -> None:
    """losses[t-1] = loss, refusing a dtype or device other than step 1's (no silent cast)."""
    if loss.dtype != losses.dtype or loss.device != losses.device:
        raise ValueError(f"scan_loss: loss_fn returned a {loss.dtype} scalar on {loss.device} at t={t}, but a "
                         f"{losses.dtype} scalar on {losses.device} at t=1; it must return the same dtype and "
                         "device at every step")
    losses[t - 1] = loss.detach()


def run_step(problem: Problem, t: int, state: tuple[torch.Tensor, ...], *,
             with_loss: bool) -> tuple[tuple[torch.Tensor, ...], torch.Tensor | None]:
    """Step t under no_grad from s_{t-1}: (s_t, its loss if asked for or if loss_fn draws random numbers)."""
    spec = problem.spec
    with torch.no_grad(), problem.autocast.entered():
        new = spec.flatten(problem.step(problem.xs[t - 1], spec.build(state)), step=t)
        loss = None
        if with_loss or problem.replay_loss:
            loss = _check_loss(problem.loss_fn(spec.build(new), problem.targets[t - 1]), t)
    return new, loss


def _leaf(t: torch.Tensor) -> torch.Tensor:
    return t.detach().requires_grad_()


def keep_step(problem: Problem, t: int, state: tuple[torch.Tensor, ...], *, after: Kept | None = None,
              saved: list | None = None, rng_marks: list | None = None) -> Kept:
    """Step t and its loss with grad, from detached leaves of s_{t-1} (and of x_t, y_t where they need
    gradients), or, ``after`` the kept step t-1 whose output ``state`` is, from that output in its graph:
    the two steps are then one graph, which one engine call can reverse. ``saved``: record what autograd
    saves there, and count the graph's metadata; ``rng_marks``: append the generators' state between the
    step and the loss (how the first step finds out which of the two draws random numbers)."""
    spec = problem.spec
    if after is None:
        inputs = tuple(_leaf(s) if d else s for s, d in zip(state, spec.differentiable))
    else:
        inputs = tuple(o if o.requires_grad else _leaf(s) if d else s
                       for o, s, d in zip(after.outputs, state, spec.differentiable))
    x_leaf = _leaf(problem.xs[t - 1]) if problem.x_grad else None
    y_leaf = _leaf(problem.targets[t - 1]) if problem.y_grad else None
    x = problem.xs[t - 1] if x_leaf is None else x_leaf
    y = problem.targets[t - 1] if y_leaf is None else y_leaf
    recording = contextlib.nullcontext() if saved is None else saving_into(saved)
    with torch.enable_grad(), problem.autocast.entered(), recording:
        outputs = spec.flatten(problem.step(x, spec.build(inputs)), step=t)
        if rng_marks is not None:
            rng_marks.append(problem.generators.capture())
        loss = _check_loss(problem.loss_fn(spec.build(outputs), y), t)
    rng = None if problem.generators is None else problem.generators.capture()
    if saved is None:
        return Kept(t, inputs, x_leaf, y_leaf, outputs, loss, (), 0, rng)
    own_graph_ends = problem.stops | {s.grad_fn for s in inputs if s.grad_fn is not None}   # not step t-1's
    metadata = graph_bytes(count_nodes([loss, *outputs], own_graph_ends), len(saved))
    return Kept(t, inputs, x_leaf, y_leaf, outputs, loss, tuple(saved), metadata, rng)
