"""The closed vocabulary of schedule actions.

A schedule is a tuple of :class:`Action`. There is one *current state*
buffer (the state the forward sweep is at), one working internal-state
buffer, and a checkpoint pool addressed by ``slot``, an offset into the pool
measured in quanta (see :mod:`memopt_bptt._planner`). Actions:

=================  =====================================================  ==========
op                 meaning                                                forwards
=================  =====================================================  ==========
takeshot           copy the current state (at position ``step``) into     0
                   the pool at ``slot`` (a hidden-state checkpoint)
restore            current state := hidden checkpoint at ``slot``, which   0
                   must hold position ``step``
advance            run forward steps from the current position up to       to - from
                   position ``step``, keeping no internal state
keep               run forward step ``step`` and keep its internal state   1
                   at ``slot`` (``slot == -1``: the working buffer, valid
                   only for an immediately following ``reverse``)
restore_internal   current state := s_step rebuilt from the internal       0
                   state kept at ``slot``
reverse            backward of step ``step`` with its internal state at    0 (one backward)
                   ``slot`` (``-1``: working buffer)
=================  =====================================================  ==========

In Revolve's terms (Griewank & Walther 2000): ``takeshot``/``restore``/
``advance`` are the same; ``keep`` + ``reverse`` play ``firsturn``/``youturn``.
"""

from __future__ import annotations

from typing import NamedTuple

__all__ = ["Action", "OPS", "OP_CODES", "WORKING"]

OPS = ("takeshot", "restore", "advance", "keep", "restore_internal", "reverse")
OP_CODES = {name: code for code, name in enumerate(OPS)}
WORKING = -1
"""``slot`` value naming the working internal-state buffer."""


class Action(NamedTuple):
    """One schedule action: ``op`` from :data:`OPS`, a position/step and a pool slot."""

    op: str
    step: int
    slot: int = WORKING

    def __str__(self) -> str:
        if self.op == "advance":
            return f"advance->{self.step}"
        where = "w" if self.slot == WORKING else str(self.slot)
        return f"{self.op}({self.step}@{where})"
