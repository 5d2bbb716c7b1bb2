"""The Schedule: an immutable value describing one reversal, its cost model's
numbers and its versioned JSON form. Its fields' checks and the simulator
that validates it are memopt_bptt._schedule_checks'."""

from __future__ import annotations

import io
import json
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import numpy as np

from ._actions import OP_CODES, OPS, Action
from ._schedule_checks import (_CHUNK, _INT_FIELDS, _REAL_FIELDS, MAX_SIZE, ScheduleError, _checked_int,
                               _checked_real, _simulate, _Stats)

__all__ = ["Schedule", "ScheduleError"]


# the fields to_json writes (besides format, summary, actions and byte_cost), all required by from_json
_JSON_FIELDS = ("T", "policy", "hidden_quanta", "internal_quanta", "pool_quanta", "forward_steps",
                "backward_forward_ratio", "quantum_bytes", "working_bytes", "budget_bytes", "budget_units",
                "description")


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
        # Every field is checked here, so a schedule from a file (from_json) or built by hand
        # is held to what the planner guarantees; integers are stored as Python ints.
        for name, least, optional, what in _INT_FIELDS:
            value = getattr(self, name)
            if value is None and optional:
                continue
            object.__setattr__(self, name, _checked_int(name, value, least, optional, what))
        for name, optional, what in _REAL_FIELDS:
            value = getattr(self, name)
            if value is None and optional:
                continue
            object.__setattr__(self, name, _checked_real(name, value, optional, what))
        for name in ("policy", "description"):
            if not isinstance(getattr(self, name), str):
                raise TypeError(f"Schedule: {name}={getattr(self, name)!r} must be a str")
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
        Before simulating, the sizes: the pool and working buffers fit the
        schedule's own ``budget_bytes`` (or ``budget_units``); after, the
        pool is exactly what the actions use (a larger one would be
        allocated for nothing: an edited file, not a plan). Memory is
        O(actions), whatever the sizes claim.
        Returns self, so ``plan(...).validate()`` chains.
        """
        self._check_budget()
        stats = self._stats
        if stats.forward_steps != self.forward_steps:
            raise ScheduleError(f"forward_steps={self.forward_steps} but the actions run {stats.forward_steps}")
        if stats.extent != self.pool_quanta:
            raise ScheduleError(f"pool_quanta={self.pool_quanta} but the actions use {stats.extent} quanta; "
                                "the pool must be what the actions use (plan the schedule again with mb.plan)")
        return self

    def _check_budget(self) -> None:
        """The planned sizes fit the schedule's own budget (ScheduleError if not)."""
        if self.budget_bytes is not None:
            if self.quantum_bytes is None or self.working_bytes is None:
                raise ScheduleError(f"budget_bytes={self.budget_bytes} but quantum_bytes={self.quantum_bytes} "
                                    f"and working_bytes={self.working_bytes}: a byte budget needs both sizes")
            if self.peak_bytes > self.budget_bytes:
                raise ScheduleError(
                    f"pool_quanta={self.pool_quanta} x quantum_bytes={self.quantum_bytes} + working_bytes="
                    f"{self.working_bytes} = {self.peak_bytes} bytes exceeds the schedule's budget_bytes="
                    f"{self.budget_bytes}; plan the schedule again with mb.plan")
        if self.budget_units is not None and self.pool_quanta > self.budget_units * self.hidden_quanta + 1e-6:
            # plan() gives at most floor((units - 1) * hq + 1e-9) quanta besides the initial state's hq
            raise ScheduleError(f"pool_quanta={self.pool_quanta} is {self.peak_units:g} hidden-state units, "
                                f"above the schedule's budget_units={self.budget_units:g}; plan the schedule "
                                "again with mb.plan")

    # ---- serialisation -------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        data = self._header()
        data["actions"] = [[OPS[op], step, slot] for op, step, slot in self.codes.tolist()]
        return data

    def _header(self) -> dict[str, Any]:
        """Every field of the JSON form but the actions."""
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
        }

    def to_json(self, **kwargs: Any) -> str:
        """The schedule as JSON; :meth:`from_json` reads it back. ``kwargs`` go to ``json.dumps``."""
        if kwargs:
            return json.dumps(self.to_dict(), **kwargs)
        out = io.StringIO()
        self.write_json(out)
        return out.getvalue()

    def write_json(self, file: Any) -> None:
        """Write :meth:`to_json`'s text to a text file, the actions a chunk at
        a time: a long schedule is never held as Python lists.

        Example::

            with open("schedule.json", "w") as fh:
                schedule.write_json(fh)
        """
        head = json.dumps(self._header())
        file.write(head[:-1] + ', "actions": [')
        sep = ""
        for start in range(0, self.codes.shape[0], _CHUNK):
            rows = self.codes[start: start + _CHUNK].tolist()
            file.write(sep + ", ".join(f'["{OPS[op]}", {step}, {slot}]' for op, step, slot in rows))
            sep = ", "
        file.write("]}")

    @classmethod
    def from_json(cls, text: str) -> "Schedule":
        """Read a schedule written by :meth:`to_json`.

        The text is untrusted input: every field's type and range is checked
        (ValueError naming the field), unknown fields are refused, and the
        ``summary`` is informational (recomputed, never read). The actions
        are simulated by :meth:`validate`, which ``value_and_grad`` calls
        before running a schedule it is given.
        """
        where = "Schedule.from_json"
        if not isinstance(text, (str, bytes, bytearray)):
            raise TypeError(f"{where}: text must be a str (the JSON of Schedule.to_json), got {type(text).__name__}")
        try:
            data = json.loads(text)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"{where}: text is not JSON ({exc})") from None
        if not isinstance(data, dict) or data.get("format") != "memopt_bptt.Schedule/1":
            raise ValueError(f"{where}: text is not a memopt_bptt schedule (format field missing)")
        if "actions" not in data:
            raise ValueError(f"{where}: malformed schedule: no 'actions' list")
        unknown = sorted(set(data) - set(_JSON_FIELDS) - {"format", "summary", "actions", "byte_cost"})
        if unknown:
            raise ValueError(f"{where}: unknown field(s) {', '.join(map(repr, unknown))} in a "
                             "memopt_bptt.Schedule/1 schedule")
        missing = [k for k in _JSON_FIELDS if k not in data]
        if missing:
            raise ValueError(f"{where}: malformed schedule: field(s) {', '.join(map(repr, missing))} missing")
        if not isinstance(data.get("summary", {}), dict):
            raise ValueError(f"{where}: 'summary' must be an object")
        actions = data["actions"]
        if not isinstance(actions, list):
            raise ValueError(f"{where}: 'actions' must be a list of [op, step, slot], got {type(actions).__name__}")
        codes = np.empty((len(actions), 3), np.int64)
        for i, row in enumerate(actions):
            if not (isinstance(row, list) and len(row) == 3 and isinstance(row[0], str) and row[0] in OP_CODES
                    and all(type(v) is int and -MAX_SIZE <= v <= MAX_SIZE for v in row[1:])):
                raise ValueError(f"{where}: action {i} is {row!r}; an action is [op, step, slot] with op one of "
                                 f"{', '.join(OPS)} and step, slot ints")
            codes[i] = (OP_CODES[row[0]], row[1], row[2])
        kwargs = {k: data[k] for k in _JSON_FIELDS}
        if "byte_cost" in data:  # absent before 0.3
            kwargs["byte_cost"] = data["byte_cost"]
        try:
            return cls(codes=codes, **kwargs)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"{where}: {str(exc).removeprefix('Schedule: ')}") from None

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
        shown = [Action(OPS[op], step, slot) for op, step, slot in self.codes[:40].tolist()]  # not every action
        lines.append("  actions         " + " ".join(str(a) for a in shown)
                     + (f" ... (+{len(self.codes) - len(shown)} more)" if len(self.codes) > len(shown) else ""))
        return "\n".join(lines)

    def __repr__(self) -> str:
        return (f"Schedule(T={self.T}, policy={self.policy!r}, forward_steps={self.forward_steps}, "
                f"peak_units={self.peak_units:g}, n_actions={len(self.codes)})")
