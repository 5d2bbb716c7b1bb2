"""The tensors a step differentiates, found in the autograd graph of its first run.

The scan's autograd Function takes every tensor that the step and the loss
read and that needs a gradient as an input, so that ``loss.backward()`` and
``torch.autograd.grad(loss, ...)`` both reach them. They are found by walking
the graph of the first step (and its loss) from its outputs: every
``AccumulateGrad`` node on the way holds a leaf that requires grad (a
parameter), unless it is one of the scan's own leaves (the state, x_t,
y_t). A node created *before* the step started (its sequence number is lower
than a marker's taken just before) belongs to a computation outside the step:
a non-leaf such as ``w = raw.exp()`` computed once and read by every step.
That is accepted only where the caller listed the tensor in ``params=``; the
walk stops there and the gradient is taken with respect to it.

The same walk counts a kept step's nodes (:func:`count_nodes`), which its
host-memory metadata grows with (``_memory.graph_bytes``).
"""

from __future__ import annotations

from typing import Any, Iterable, Iterator

import torch

__all__ = ["count_nodes", "find_params", "sequence_mark", "stops_of"]


def sequence_mark() -> int:
    """A sequence number below those of every autograd node created after this call (in this thread)."""
    with torch.enable_grad():
        marker = torch.zeros((), requires_grad=True).mul(1)
    return marker.grad_fn._sequence_nr()


def _nodes(roots: Iterable[torch.Tensor], stops: set) -> Iterator[Any]:
    """Every node of the roots' graph once, not going past AccumulateGrad nodes or ``stops``."""
    stack = [r.grad_fn for r in roots if r.grad_fn is not None]
    seen = set()
    while stack:
        node = stack.pop()
        if node is None or node in seen or node in stops:
            continue
        seen.add(node)
        yield node
        if getattr(node, "variable", None) is None:
            stack.extend(fn for fn, _ in node.next_functions)


def count_nodes(roots: Iterable[torch.Tensor], stops: set = frozenset()) -> int:
    """The graph's nodes other than AccumulateGrad (what a kept step's metadata grows with)."""
    return sum(1 for node in _nodes(roots, stops) if getattr(node, "variable", None) is None)


def find_params(roots: Iterable[torch.Tensor], own: Iterable[torch.Tensor], extra: tuple[torch.Tensor, ...],
                mark: int) -> tuple[torch.Tensor, ...]:
    """``extra``, then the leaves requiring grad that ``roots``' graph reaches (other than ``own``).

    Raises ValueError naming the node where the graph leaves the step
    through a non-leaf tensor that ``extra`` does not list.
    """
    own_ids = {id(t) for t in own}
    found: dict[int, torch.Tensor] = {id(t): t for t in extra}
    for node in _nodes(roots, stops_of(extra)):
        variable = getattr(node, "variable", None)   # AccumulateGrad
        if variable is not None:
            if id(variable) not in own_ids:
                found.setdefault(id(variable), variable)
            continue
        sequence = getattr(node, "_sequence_nr", None)
        if sequence is not None and sequence() < mark:
            raise ValueError(
                f"scan_loss: step or loss_fn reads a tensor that requires grad and was computed before the "
                f"scan (autograd node {node.name()}), e.g. a weight transformed outside the step. Pass that "
                "tensor in params=[...] so its gradient is returned to the computation that made it, or "
                "compute it inside step/loss_fn")
    return tuple(found.values())


def stops_of(extra: Iterable[torch.Tensor]) -> set:
    """Where a walk stops: the nodes that made the non-leaf tensors of ``params=``."""
    return {t.grad_fn for t in extra if t.grad_fn is not None}
