"""The Schedule: an immutable value describing one reversal, and its simulator."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import numpy as np

from ._actions import OP_CODES, OPS, WORKING, Action, Op

__all__ = ["Schedule", "ScheduleError"]


class ScheduleError(ValueError):
    """A schedule that does not simulate correctly (see :meth:`Schedule.validate`)."""


@dataclass(frozen=True)
class _Stats:
    forward_steps: int
    pool_quanta: int
    n_hidden_slots: int
    n_internal_slots: int
    hidden_marks: bytearray    # 1 at each position ever kept as a hidden state
    internal_marks: bytearray  # 1 at each step whose internal state is ever kept


def plain_pool_quanta(T: int, hidden_quanta: int, internal_quanta: int) -> int:
    """Pool quanta of plain BPTT (policy "full"): the initial state and T-1 internal states."""
    return hidden_quanta + max(T - 1, 0) * internal_quanta


@dataclass(frozen=True, eq=False)
class Schedule:
    """One reversal of a T-step chain: actions plus the cost model's numbers.

    Memory is counted in *quanta*: a hidden state takes ``hidden_quanta``, an
    internal state ``internal_quanta`` (alpha is their ratio). The pool holds
    every checkpoint, including the initial state at slot 0; ``peak_units`` is
    the pool's peak in hidden-state units. Where the schedule was planned for
    a model, ``quantum_bytes`` and ``working_bytes`` turn that into bytes.

    Build one with :func:`memopt_bptt.plan`; run it with
    :func:`memopt_bptt.value_and_grad`.

    Example::

        s = mb.plan(10, slots=3, policy="hsm")
        s.forward_steps   # 25
        s.validate()
    """

    T: int
    policy: str
    codes: np.ndarray = field(repr=False)
    hidden_quanta: int
    internal_quanta: int
    pool_quanta: int
    forward_steps: int
    backward_forward_ratio: float = 2.0
    quantum_bytes: int | None = None
    working_bytes: int | None = None
    budget_bytes: int | None = None
    budget_units: float | None = None
    description: str = ""
    byte_cost: float = 0.0

    def __post_init__(self) -> None:
        cost = self.byte_cost
        if isinstance(cost, bool) or not isinstance(cost, (int, float)) or not math.isfinite(cost) or cost < 0:
            raise ValueError(f"Schedule: byte_cost={cost!r} must be a finite number >= 0 (forward steps per "
                             "checkpoint byte; 0 leaves memory out of the time model)")
        codes = np.array(self.codes, dtype=np.int64, order="C", copy=True)
        if codes.ndim != 2 or codes.shape[1] != 3:
            raise ValueError("Schedule.codes must have shape (n_actions, 3)")
        # A private copy, read-only, exposed through a view: a view of a
        # read-only base cannot be made writeable again, and nobody else holds
        # the base. One copy, so a long schedule is not duplicated twice over.
        codes.flags.writeable = False
        frozen = codes.view()
        object.__setattr__(self, "codes", frozen)

    # ---- views --------------------------------------------------------------
    @cached_property
    def actions(self) -> tuple[Action, ...]:
        """The schedule as a tuple of :class:`Action` (built on first access)."""
        return tuple(Action(OPS[op], int(step), int(slot)) for op, step, slot in self.codes.tolist())

    @property
    def alpha(self) -> float:
        return self.internal_quanta / self.hidden_quanta

    @property
    def peak_units(self) -> float:
        """Peak checkpoint memory in hidden-state units (initial state included)."""
        return self.pool_quanta / self.hidden_quanta

    @property
    def pool_bytes(self) -> int | None:
        return None if self.quantum_bytes is None else self.pool_quanta * self.quantum_bytes

    @property
    def peak_bytes(self) -> int | None:
        """Checkpoint pool plus working buffers, in bytes (None in the abstract model)."""
        if self.quantum_bytes is None:
            return None
        return self.pool_quanta * self.quantum_bytes + int(self.working_bytes or 0)

    @property
    def time_ratio(self) -> float:
        """Predicted time over plain BPTT's: (F + T*b/f + c*P) / (T + T*b/f + c*P_full).

        F forward steps, b/f ``backward_forward_ratio``; c ``byte_cost`` (what
        one byte of checkpoint pool costs, in forward steps: fresh pages
        written and read back from memory) times the pool bytes P of this
        schedule and P_full of plain BPTT's (T-1 internal states and the
        initial state). With c = 0, or no bytes (the abstract model), only
        steps count.
        """
        rho = self.backward_forward_ratio
        steps = self.forward_steps + self.T * rho
        plain = self.T * (1.0 + rho)
        if self.byte_cost and self.quantum_bytes is not None:
            full_quanta = plain_pool_quanta(self.T, self.hidden_quanta, self.internal_quanta)
            steps += self.byte_cost * self.pool_quanta * self.quantum_bytes
            plain += self.byte_cost * full_quanta * self.quantum_bytes
        return steps / plain

    @cached_property
    def _stats(self) -> _Stats:
        return _simulate(self.T, self.codes, self.hidden_quanta, self.internal_quanta, self.pool_quanta)

    @property
    def n_hidden_slots(self) -> int:
        """Most hidden-state checkpoints alive at once (initial state included)."""
        return self._stats.n_hidden_slots

    @property
    def n_internal_slots(self) -> int:
        """Most internal-state checkpoints alive at once."""
        return self._stats.n_internal_slots

    @property
    def hidden_positions(self) -> tuple[int, ...]:
        """Positions ever stored as hidden checkpoints, ascending."""
        return tuple(int(v) for v in np.flatnonzero(np.frombuffer(self._stats.hidden_marks, np.uint8)))

    @property
    def internal_positions(self) -> tuple[int, ...]:
        """Steps whose internal state is ever kept in the pool, ascending."""
        return tuple(int(v) for v in np.flatnonzero(np.frombuffer(self._stats.internal_marks, np.uint8)))

    def validate(self) -> "Schedule":
        """Simulate the actions; raise :class:`ScheduleError` on any violation.

        Checks: the pool never exceeds ``pool_quanta``; every restore finds the
        state it names (not overwritten); forward steps run from the right
        position; steps are reversed exactly once, in order T..1, each with its
        own internal state; the forward count equals ``forward_steps``.
        Returns self, so ``plan(...).validate()`` chains.
        """
        stats = self._stats
        if stats.forward_steps != self.forward_steps:
            raise ScheduleError(f"forward_steps={self.forward_steps} but the actions run {stats.forward_steps}")
        return self

    # ---- serialisation -------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {
            "format": "memopt_bptt.Schedule/1",
            "T": self.T,
            "policy": self.policy,
            "hidden_quanta": self.hidden_quanta,
            "internal_quanta": self.internal_quanta,
            "pool_quanta": self.pool_quanta,
            "forward_steps": self.forward_steps,
            "backward_forward_ratio": self.backward_forward_ratio,
            "quantum_bytes": self.quantum_bytes,
            "working_bytes": self.working_bytes,
            "budget_bytes": self.budget_bytes,
            "budget_units": self.budget_units,
            "description": self.description,
            "byte_cost": self.byte_cost,
            "summary": {
                "alpha": self.alpha,
                "peak_units": self.peak_units,
                "peak_bytes": self.peak_bytes,
                "n_hidden_slots": self.n_hidden_slots,
                "n_internal_slots": self.n_internal_slots,
                "time_ratio": self.time_ratio,
            },
            "actions": [[OPS[op], step, slot] for op, step, slot in self.codes.tolist()],
        }

    def to_json(self, **kwargs: Any) -> str:
        """The schedule as JSON; :meth:`from_json` reads it back."""
        return json.dumps(self.to_dict(), **kwargs)

    @classmethod
    def from_json(cls, text: str) -> "Schedule":
        try:
            data = json.loads(text)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"Schedule.from_json: text is not JSON ({exc})") from None
        if not isinstance(data, dict) or data.get("format") != "memopt_bptt.Schedule/1":
            raise ValueError("Schedule.from_json: text is not a memopt_bptt schedule (format field missing)")
        if "actions" not in data:
            raise ValueError("Schedule.from_json: malformed schedule: no 'actions' list")
        try:
            rows = []
            for op, step, slot in data["actions"]:
                if op not in OP_CODES:
                    raise ValueError(f"unknown action {op!r}")
                rows.append([OP_CODES[op], int(step), int(slot)])
            codes = np.array(rows, dtype=np.int64).reshape(-1, 3)
            kwargs = {k: data[k] for k in (
                "T", "policy", "hidden_quanta", "internal_quanta", "pool_quanta", "forward_steps",
                "backward_forward_ratio", "quantum_bytes", "working_bytes", "budget_bytes",
                "budget_units", "description")}
            kwargs["byte_cost"] = float(data.get("byte_cost", 0.0))  # absent before 0.3
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"Schedule.from_json: malformed schedule ({exc!r})") from None
        return cls(codes=codes, **kwargs)

    def _key(self) -> tuple:
        return (self.T, self.policy, self.hidden_quanta, self.internal_quanta, self.pool_quanta,
                self.forward_steps, self.backward_forward_ratio, self.quantum_bytes, self.working_bytes,
                self.budget_bytes, self.budget_units, self.description, self.byte_cost, self.codes.shape,
                self.codes.tobytes())

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Schedule):
            return NotImplemented
        return self._key() == other._key()

    def __hash__(self) -> int:
        return hash(self._key())

    def summary_lines(self) -> list[str]:
        lines = [
            f"policy          {self.policy}",
            f"T               {self.T}",
            f"alpha           {self.alpha:g}",
            f"forward steps   {self.forward_steps} ({self.forward_steps / self.T:.3f} per step)",
            f"time ratio      {self.time_ratio:.3f} x plain BPTT (b/f = {self.backward_forward_ratio:g})",
            f"peak memory     {self.peak_units:g} hidden-state units"
            f" ({self.n_hidden_slots} hidden, {self.n_internal_slots} internal slots)",
        ]
        if self.peak_bytes is not None:
            lines.append(f"peak bytes      {self.peak_bytes} (pool {self.pool_bytes}, working {self.working_bytes})")
        if self.budget_bytes is not None:
            lines.append(f"budget          {self.budget_bytes} bytes")
        elif self.budget_units is not None:
            lines.append(f"budget          {self.budget_units:g} units")
        return lines

    def __str__(self) -> str:
        lines = ["Schedule"] + ["  " + ln for ln in self.summary_lines()]
        shown = self.actions[:40]
        lines.append("  actions         " + " ".join(str(a) for a in shown)
                     + (f" ... (+{len(self.codes) - len(shown)} more)" if len(self.codes) > len(shown) else ""))
        return "\n".join(lines)

    def __repr__(self) -> str:
        return (f"Schedule(T={self.T}, policy={self.policy!r}, forward_steps={self.forward_steps}, "
                f"peak_units={self.peak_units:g}, n_actions={len(self.codes)})")


def _rows(codes: np.ndarray, chunk: int = 4096):
    """(index, (op, step, slot)) over the rows, converting a chunk at a time, so
    simulating a long schedule does not build a Python list as long as it."""
    for start in range(0, codes.shape[0], chunk):
        yield from enumerate(codes[start: start + chunk].tolist(), start)


def _simulate(T: int, codes: np.ndarray, hq: int, kq: int, pool_quanta: int) -> _Stats:
    """Run the actions on a model of the buffers; raise ScheduleError on misuse."""
    live: dict[int, tuple[str, int, int]] = {}  # offset -> (kind, position, size)
    owner = [-1] * pool_quanta  # quantum -> offset of the live object covering it
    count = {"hidden": 0, "internal": 0}

    def write(offset: int, kind: str, pos: int, size: int, i: int) -> None:
        if offset < 0 or offset + size > pool_quanta:
            raise ScheduleError(f"action {i}: slot {offset} (+{size}) is outside the pool of {pool_quanta} quanta")
        for q in range(offset, offset + size):
            o = owner[q]
            if o >= 0 and o in live:
                old_kind, _, old_size = live.pop(o)
                count[old_kind] -= 1
                for r in range(o, o + old_size):
                    owner[r] = -1
        for q in range(offset, offset + size):
            owner[q] = offset
        live[offset] = (kind, pos, size)
        count[kind] += 1

    def read(offset: int, kind: str, pos: int, i: int) -> None:
        if live.get(offset, (None, None, None))[:2] != (kind, pos):
            raise ScheduleError(f"action {i}: no {kind} state of position {pos} at slot {offset}")

    cur = 0
    working = None
    next_rev = T
    forwards = 0
    peak_h = peak_i = 0
    # one byte per position, not a Python set, so a long schedule stays cheap to check
    hidden_pos = bytearray(T + 1)
    internal_pos = bytearray(T + 1)
    # bound once: an enum attribute lookup per row made validating a long schedule much slower
    takeshot, restore, advance, keep = Op.TAKESHOT, Op.RESTORE, Op.ADVANCE, Op.KEEP
    restore_internal, reverse = Op.RESTORE_INTERNAL, Op.REVERSE
    for i, (op, step, slot) in _rows(codes):
        if op == takeshot:
            if step != cur:
                raise ScheduleError(f"action {i}: takeshot of position {step} but current is {cur}")
            write(slot, "hidden", step, hq, i)
            hidden_pos[step] = 1
        elif op == restore:
            read(slot, "hidden", step, i)
            cur = step
        elif op == restore_internal:
            read(slot, "internal", step, i)
            cur = step
        elif op == advance:
            if step <= cur or step > T:
                raise ScheduleError(f"action {i}: advance from {cur} to {step}")
            forwards += step - cur
            cur = step
            working = None
        elif op == keep:
            if step != cur + 1 or step > T:
                raise ScheduleError(f"action {i}: keep of step {step} from position {cur}")
            forwards += 1
            cur = step
            working = None
            if slot == WORKING:
                working = step
            else:
                write(slot, "internal", step, kq, i)
                internal_pos[step] = 1
        elif op == reverse:
            if step != next_rev:
                raise ScheduleError(f"action {i}: reverse of step {step}, expected {next_rev}")
            if slot == WORKING:
                if working != step:
                    raise ScheduleError(f"action {i}: reverse of step {step} but the working buffer holds {working}")
                working = None
            else:
                read(slot, "internal", step, i)
            next_rev -= 1
        else:
            raise ScheduleError(f"action {i}: unknown op code {op}")
        peak_h = max(peak_h, count["hidden"])
        peak_i = max(peak_i, count["internal"])
    if next_rev != 0:
        raise ScheduleError(f"steps {next_rev}..1 are never reversed")
    return _Stats(forwards, pool_quanta, peak_h, peak_i, hidden_pos, internal_pos)
