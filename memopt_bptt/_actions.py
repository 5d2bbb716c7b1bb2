"""The closed vocabulary of schedule actions.

A schedule is a tuple of :class:`Action`. There is one *current state*
buffer (the state the forward sweep is at), one working internal-state
buffer, and a checkpoint pool addressed by ``slot``, an offset into the pool
measured in quanta (see :mod:`memopt_bptt._planner`). Actions, in the order
of their codes (:class:`Op`, column 0 of ``Schedule.codes``):

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

import enum
from typing import NamedTuple

__all__ = ["Action", "Op", "OPS", "OP_CODES", "WORKING"]


class Op(enum.IntEnum):
    """An action's code in a schedule's ``codes`` array (column 0); the order is the format."""

    TAKESHOT = 0
    RESTORE = 1
    ADVANCE = 2
    KEEP = 3
    RESTORE_INTERNAL = 4
    REVERSE = 5


OPS = tuple(op.name.lower() for op in Op)
"""The action names, indexed by code: ``OPS[Op.KEEP] == "keep"``."""
OP_CODES = {name: Op(code) for code, name in enumerate(OPS)}
"""Name -> :class:`Op`: ``OP_CODES["keep"] is Op.KEEP``."""
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
