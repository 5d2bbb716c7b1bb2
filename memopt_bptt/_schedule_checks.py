"""Checking a Schedule: its fields' types and ranges, and the simulation of
its actions on a model of the buffers (what :meth:`Schedule.validate` runs).

Both hold a schedule read from a file (``Schedule.from_json``) or built by
hand to what the planner guarantees; memopt_bptt._schedule holds the value
itself and its JSON form.
"""

from __future__ import annotations

import bisect
import math
import numbers
from dataclasses import dataclass
from typing import Any

import numpy as np

from ._actions import WORKING, Op

__all__ = ["MAX_SIZE", "ScheduleError"]


class ScheduleError(ValueError):
    """A schedule that does not simulate correctly (see :meth:`Schedule.validate`)."""


@dataclass(frozen=True)
class _Stats:
    forward_steps: int
    extent: int                # quanta the actions use (the pool's high-water mark)
    n_hidden_slots: int
    n_internal_slots: int
    hidden_marks: bytearray    # 1 at each position ever kept as a hidden state
    internal_marks: bytearray  # 1 at each step whose internal state is ever kept


_CHUNK = 4096  # rows converted to Python at a time when a long schedule is read row by row
MAX_SIZE = 2 ** 62
"""Largest step count, quanta or byte count a Schedule accepts: anything
larger is no schedule a machine runs, and products of two such sizes would
overflow the executor's int64 arithmetic long before."""

# (field, least value, may be None, what it is) of the integer fields
_INT_FIELDS = (
    ("T", 1, False, "the number of steps"),
    ("hidden_quanta", 1, False, "quanta of one hidden state"),
    ("internal_quanta", 1, False, "quanta of one internal state"),
    ("pool_quanta", 1, False, "the checkpoint pool's size in quanta"),
    ("forward_steps", 0, False, "forward steps the actions run"),
    ("quantum_bytes", 1, True, "bytes of one quantum"),
    ("working_bytes", 0, True, "bytes of the working buffers"),
    ("budget_bytes", 1, True, "the budget planned for, in bytes"),
)
# (field, may be None, what it is) of the real fields; each must be finite and >= 0
_REAL_FIELDS = (
    ("backward_forward_ratio", False, "a backward step's time over a forward step's"),
    ("budget_units", True, "the budget planned for, in hidden-state units"),
    ("byte_cost", False, "forward steps per checkpoint byte; 0 leaves memory out of the time model"),
)


def _checked_int(name: str, value: Any, least: int, optional: bool, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"Schedule: {name}={value!r} must be an int ({what}){' or None' if optional else ''}")
    if not least <= value <= MAX_SIZE:
        raise ValueError(f"Schedule: {name}={value!r} must be an int in [{least}, 2**62] ({what})")
    return int(value)


def _checked_real(name: str, value: Any, optional: bool, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"Schedule: {name}={value!r} must be a number ({what}){' or None' if optional else ''}")
    value = float(value)
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"Schedule: {name}={value!r} must be a finite number >= 0 ({what})")
    return value


def _rows(codes: np.ndarray, chunk: int = _CHUNK):
    """(index, (op, step, slot)) over the rows, converting a chunk at a time, so
    simulating a long schedule does not build a Python list as long as it."""
    for start in range(0, codes.shape[0], chunk):
        yield from enumerate(codes[start: start + chunk].tolist(), start)


def _simulate(T: int, codes: np.ndarray, hq: int, kq: int, pool_quanta: int) -> _Stats:
    """Run the actions on a model of the buffers; raise ScheduleError on misuse.

    Memory is O(actions): live checkpoints are intervals of the pool kept by
    their start (a sorted list and a dict), never one entry per quantum, so
    an absurd ``pool_quanta`` or state size costs nothing to check.
    """
    if codes.shape[0] < T:
        # before the O(T) marks below: T reverses need T actions
        raise ScheduleError(f"the schedule has {codes.shape[0]} actions, too few to reverse T={T} steps")
    kinds = ("hidden", "internal")
    live: dict[int, tuple[int, int, int]] = {}  # start -> (kind: 0 hidden, 1 internal, position, size)
    starts: list[int] = []                       # the keys of live, ascending; the intervals are disjoint
    count = [0, 0]                               # live checkpoints per kind
    peak = [0, 0]
    extent = 0                                   # quanta the actions use: the pool's high-water mark

    def write(offset: int, kind: int, pos: int, size: int, i: int) -> None:
        nonlocal extent
        if offset < 0 or offset + size > pool_quanta:
            raise ScheduleError(f"action {i}: slot {offset} (+{size}) is outside the pool of {pool_quanta} quanta")
        end = offset + size
        if not starts or offset >= starts[-1] + live[starts[-1]][2]:
            starts.append(offset)  # above every live state (a stack's push): nothing to evict
        else:
            # evict what the new state overwrites: the interval starting before it if it reaches
            # in, then every interval starting inside it
            j = bisect.bisect_left(starts, offset)
            if j and starts[j - 1] + live[starts[j - 1]][2] > offset:
                j -= 1
            k = j
            while k < len(starts) and starts[k] < end:
                count[live.pop(starts[k])[0]] -= 1
                k += 1
            starts[j:k] = [offset]
        live[offset] = (kind, pos, size)
        count[kind] += 1
        if count[kind] > peak[kind]:
            peak[kind] = count[kind]
        if end > extent:
            extent = end

    def read(offset: int, kind: int, pos: int, i: int) -> None:
        got = live.get(offset)
        if got is None or got[0] != kind or got[1] != pos:
            raise ScheduleError(f"action {i}: no {kinds[kind]} state of position {pos} at slot {offset}")

    cur = 0
    working = None
    next_rev = T
    forwards = 0
    # one byte per position, not a Python set, so a long schedule stays cheap to check
    hidden_pos = bytearray(T + 1)
    internal_pos = bytearray(T + 1)
    # plain ints bound once: an enum attribute lookup per row made validating a long schedule much slower
    takeshot, restore, advance, keep = int(Op.TAKESHOT), int(Op.RESTORE), int(Op.ADVANCE), int(Op.KEEP)
    restore_internal, reverse = int(Op.RESTORE_INTERNAL), int(Op.REVERSE)
    for i, (op, step, slot) in _rows(codes):
        if op == reverse:
            if step != next_rev:
                raise ScheduleError(f"action {i}: reverse of step {step}, expected {next_rev}")
            if slot == WORKING:
                if working != step:
                    raise ScheduleError(f"action {i}: reverse of step {step} but the working buffer holds {working}")
                working = None
            else:
                read(slot, 1, step, i)
            next_rev -= 1
        elif op == keep:
            if step != cur + 1 or step > T:
                raise ScheduleError(f"action {i}: keep of step {step} from position {cur}")
            forwards += 1
            cur = step
            working = None
            if slot == WORKING:
                working = step
            else:
                write(slot, 1, step, kq, i)
                internal_pos[step] = 1
        elif op == advance:
            if step <= cur or step > T:
                raise ScheduleError(f"action {i}: advance from {cur} to {step}")
            forwards += step - cur
            cur = step
            working = None
        elif op == takeshot:
            if step != cur:
                raise ScheduleError(f"action {i}: takeshot of position {step} but current is {cur}")
            write(slot, 0, step, hq, i)
            hidden_pos[step] = 1
        elif op == restore:
            read(slot, 0, step, i)
            cur = step
        elif op == restore_internal:
            read(slot, 1, step, i)
            cur = step
        else:
            raise ScheduleError(f"action {i}: unknown op code {op}")
    if next_rev != 0:
        raise ScheduleError(f"steps {next_rev}..1 are never reversed")
    return _Stats(forwards, extent, peak[0], peak[1], hidden_pos, internal_pos)
