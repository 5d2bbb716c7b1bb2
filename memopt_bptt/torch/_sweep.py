"""A Schedule's actions run over torch tensors: the scan's interpreter.

The same six actions as the Numba executor (``memopt_bptt/_actions.py``
has the table), with torch objects in the buffers:

* a *hidden* checkpoint (:class:`Hidden`) is a state: the step's output
  tensors, referenced, not copied (a scan never writes a state in place and
  checks that the step did not either), plus the random generators' state at
  that position where the step draws random numbers;
* an *internal* state (:class:`Kept`) is a step run with grad enabled: its
  autograd graph (what autograd saved for its backward), its output state and
  its loss. A step kept right after the kept step t-1 whose output it starts
  from takes that output in its graph (the two are one graph); otherwise it
  starts from detached leaves;
* ``reverse`` runs the autograd engine once per run of consecutive
  reversals of one graph (MSM schedules reverse long runs of kept steps: at
  5% of the memory and T = 1000, about 85 runs), seeded with dL/ds_t,
  dL/dloss_u and each parameter's gradient summed so far, asking for
  dL/ds below the run, dL/dx_u (dL/dy_u) and the parameters' new sums. Those
  sums come out in the order T, T-1, ..., 1, plain autograd's order over the
  unrolled loop, so they are the same bits (see :meth:`Sweep._reverse`);
* ``advance`` runs steps under ``torch.no_grad()``.

The first pass (every action before the first ``reverse``) runs in the
autograd Function's forward and records each step's loss; it computes every
step once, so the forward count of the whole call is the schedule's
``forward_steps``. The rest runs in the Function's backward. Reversals free
what they reverse, so a second backward (``retain_graph=True``) runs the
first pass again, from state0, before its own. Step 1 is run
before planning, with grad, to measure a kept step's bytes: the sweep uses
that run (the *probe*) as its step 1 instead of computing it again.
"""

from __future__ import annotations

import bisect
import contextlib
from typing import Any, Iterator

import numpy as np
import torch

try:
    # what torch.autograd.grad calls once it has checked its arguments: the seeds here come from autograd
    # itself, of the roots' shapes, and the checks cost some 40 us a step (a third of an engine call here)
    from torch.autograd.graph import _engine_run_backward
except ImportError:  # pragma: no cover - a torch without it takes the public path
    _engine_run_backward = None

from .. import Op
from .._actions import WORKING
from ._context import RngState
from ._memory import TENSOR_BYTES, Tracker, distinct_bytes
from ._step import Hidden, Kept, Problem, keep_step, record_loss, run_step

__all__ = ["Sweep"]

_TAKESHOT, _RESTORE, _ADVANCE = int(Op.TAKESHOT), int(Op.RESTORE), int(Op.ADVANCE)
_KEEP, _RESTORE_INTERNAL, _REVERSE = int(Op.KEEP), int(Op.RESTORE_INTERNAL), int(Op.REVERSE)


def _rows(codes: np.ndarray, start: int, chunk: int = 1024) -> Iterator[tuple[int, int, int, int]]:
    """(row, op, step, slot) from ``start`` on, a chunk at a time: the Python ints of a whole schedule
    would be some 100 bytes per action, held for the sweep (O(T) beside a budget that is not)."""
    for first in range(start, codes.shape[0], chunk):
        block = codes[first: first + chunk]
        yield from zip(range(first, first + len(block)), block[:, 0].tolist(), block[:, 1].tolist(),
                       block[:, 2].tolist())


def _vjp(roots: list, seeds: list, wrt: tuple) -> tuple[torch.Tensor | None, ...]:
    """torch.autograd.grad(roots, wrt, seeds, allow_unused=True), freeing the graph as it goes."""
    if _engine_run_backward is None:
        return torch.autograd.grad(roots, wrt, seeds, allow_unused=True)
    return _engine_run_backward(tuple(roots), tuple(seeds), False, False, wrt, True, accumulate_grad=False)


class _Pool:
    """Live checkpoints by offset in the pool (quanta). A write over any quantum of a live
    checkpoint destroys it, as in the planner's model (``Schedule.validate`` simulates the same)."""

    def __init__(self, tracker: Tracker | None):
        self._starts: list[int] = []                                 # sorted offsets of live checkpoints
        self._entries: dict[int, tuple[int, Hidden | Kept]] = {}     # offset -> (end, checkpoint)
        self._tracker = tracker

    def put(self, offset: int, size: int, entry: Hidden | Kept) -> None:
        self.clear(offset, offset + size)
        bisect.insort(self._starts, offset)
        self._entries[offset] = (offset + size, entry)
        if self._tracker is not None:
            self._tracker.add(entry.tensors(), entry.metadata())

    def clear(self, start: int, end: int) -> None:
        """Drop every checkpoint overlapping quanta [start, end)."""
        starts = self._starts
        i = bisect.bisect_left(starts, start)
        if i > 0 and self._entries[starts[i - 1]][0] > start:
            i -= 1
        j = bisect.bisect_left(starts, end, lo=i)
        for offset in starts[i:j]:
            _, entry = self._entries.pop(offset)
            if self._tracker is not None:
                self._tracker.remove(entry.tensors(), entry.metadata())
        del starts[i:j]

    def get(self, offset: int, kind: type, position: int) -> Any:
        held = self._entries.get(offset)
        entry = None if held is None else held[1]
        if not isinstance(entry, kind) or entry.position != position:
            found = "nothing" if entry is None else f"a {type(entry).__name__} of position {entry.position}"
            raise RuntimeError(f"scan_loss: the schedule reads a {kind.__name__} of position {position} at pool "
                               f"offset {offset}, which holds {found} (a planner or interpreter bug)")
        return entry


class Sweep:
    """One scan's run of a schedule: :meth:`forward` (the first pass), then :meth:`backward` (again for
    each further backward through the loss, from the first pass on)."""

    def __init__(self, problem: Problem, schedule: Any, *, state0: tuple[torch.Tensor, ...], probe: Kept,
                 rng0: RngState | None, tracker: Tracker | None, persistent: frozenset = frozenset()):
        self.problem = problem
        self.T = schedule.T
        self._codes = schedule.codes
        self._hq, self._kq = schedule.hidden_quanta, schedule.internal_quanta
        self._tracker = tracker
        self._persistent = persistent
        self._pool = _Pool(tracker)
        self._rng0 = rng0
        self._probe: Kept | None = probe
        self._working: Kept | None = None
        self._current: tuple[torch.Tensor, ...] = ()
        self._grads: tuple[torch.Tensor | None, ...] = (None,) * len(state0)
        self._position = 0
        self._next_row = 0
        self.losses = torch.empty(self.T, dtype=probe.loss.dtype, device=probe.loss.device)
        self.forward_steps = 1          # the probe is step 1
        self.reversals = 0
        self.engine_calls = 0           # autograd engine runs: one per run of chained reversals
        self.largest_kept_bytes = 0     # tracked only
        self._param_grads: list[torch.Tensor | None] = []
        self._chain: Kept | None = None   # the kept step whose output is the current state
        self._dxs = self._dys = None
        self._state0 = state0
        self._spent = False             # a backward ran: the next one starts from state0 again
        if tracker is not None:
            tracker.add(probe.tensors(), probe.metadata())
            self.largest_kept_bytes = self._kept_bytes(probe)
        self._set_current(state0)

    @property
    def peak_bytes(self) -> int:
        """The tracked peak (0 when not tracking)."""
        return 0 if self._tracker is None else self._tracker.peak

    # ---- bookkeeping ----------------------------------------------------------------------------
    def _kept_bytes(self, kept: Kept) -> int:
        return distinct_bytes(kept.tensors(), self._persistent) + kept.metadata()

    def _hold(self, tensors: Any, old: Any) -> None:
        """Register ``tensors`` (a state, gradients) with the tracker, then let ``old`` go."""
        if self._tracker is not None:
            new = [t for t in tensors if t is not None]
            self._tracker.add(new, TENSOR_BYTES * len(new))
            gone = [t for t in old if t is not None]
            self._tracker.remove(gone, TENSOR_BYTES * len(gone))

    def _set_current(self, state: tuple[torch.Tensor, ...]) -> None:
        self._hold(state, self._current)
        self._current = state

    def _set_working(self, kept: Kept | None) -> None:
        if self._tracker is not None:
            if kept is not None:
                self._tracker.add(kept.tensors(), kept.metadata())
            if self._working is not None:
                self._tracker.remove(self._working.tensors(), self._working.metadata())
        self._working = kept

    def _set_grads(self, grads: tuple[torch.Tensor | None, ...]) -> None:
        self._hold(grads, self._grads)
        self._grads = grads

    def _take_probe(self) -> Kept:
        """Step 1, already run: its loss recorded; the caller places it or lets it go."""
        probe, self._probe = self._probe, None
        record_loss(self.losses, 1, probe.loss)
        return probe

    def _let_go_probe(self, probe: Kept) -> None:
        if self._tracker is not None:
            self._tracker.remove(probe.tensors(), probe.metadata())

    # ---- the actions but reverse ----------------------------------------------------------------
    def _act(self, op: int, t: int, slot: int, first: bool) -> None:
        if op == _ADVANCE:
            self._advance(t, first)
        elif op == _KEEP:
            self._keep(t, slot, first)
        elif op == _TAKESHOT:
            self._takeshot(t, slot)
        elif op == _RESTORE:
            self._restore(t, slot)
        elif op == _RESTORE_INTERNAL:
            kept = self._pool.get(slot, Kept, t)
            self._resume(t, kept.state(), kept.rng)
            self._chain = kept
        else:
            raise RuntimeError(f"scan_loss: unknown action code {op} in the schedule")

    def _advance(self, to: int, first: bool) -> None:
        for t in range(self._position + 1, to + 1):
            if t == 1 and self._probe is not None:
                probe = self._take_probe()
                self._set_current(probe.state())
                self._let_go_probe(probe)
                continue
            state, loss = run_step(self.problem, t, self._current, with_loss=first)
            self.forward_steps += 1
            if first:
                record_loss(self.losses, t, loss)
            self._set_current(state)
        self._position = to
        self._chain = None

    def _keep(self, t: int, slot: int, first: bool) -> None:
        if slot != WORKING:
            self._pool.clear(slot, slot + self._kq)   # what the slot held is dead: free it before the step
        elif self._working is not None:
            self._set_working(None)
        probe = None
        if t == 1 and self._probe is not None:
            kept = probe = self._take_probe()
        else:
            saved = None if self._tracker is None else []
            kept = keep_step(self.problem, t, self._current, after=self._chain, saved=saved)
            self.forward_steps += 1
            if first:
                record_loss(self.losses, t, kept.loss)
            if self._tracker is not None:
                self.largest_kept_bytes = max(self.largest_kept_bytes, self._kept_bytes(kept))
        if slot == WORKING:
            self._set_working(kept)
        else:
            self._pool.put(slot, self._kq, kept)
        if probe is not None:
            self._let_go_probe(probe)
        self._set_current(kept.state())
        self._position = t
        self._chain = kept

    def _takeshot(self, t: int, slot: int) -> None:
        generators = self.problem.generators
        rng = None
        if generators is not None:
            # at position 0 the generators have moved on by the probe's step 1; elsewhere they are at t
            rng = self._rng0 if t == 0 else generators.capture()
        state = self._current
        self._pool.put(slot, self._hq, Hidden(t, state, tuple(s._version for s in state), rng))

    def _restore(self, t: int, slot: int) -> None:
        hidden = self._pool.get(slot, Hidden, t)
        if tuple(s._version for s in hidden.state) != hidden.versions:
            raise RuntimeError(f"scan_loss: the state at t={t}, kept as a checkpoint, was modified in place "
                               "(by step, loss_fn or the caller); step must return new tensors, not write "
                               "into its input state")
        self._resume(t, hidden.state, hidden.rng)
        self._chain = None

    def _resume(self, t: int, state: tuple[torch.Tensor, ...], rng: RngState | None) -> None:
        self._set_current(state)
        self._position = t
        if rng is not None:
            self.problem.generators.restore(rng)

    # ---- the two passes -------------------------------------------------------------------------
    def forward(self) -> torch.Tensor:
        """Every action before the first reverse; returns the T losses (step 1's first)."""
        with contextlib.closing(_rows(self._codes, 0)) as rows:   # its chunk is not kept for the backward
            for i, op, t, slot in rows:
                if op == _REVERSE:
                    self._next_row = i
                    break
                self._act(op, t, slot, first=True)
            else:
                raise RuntimeError("scan_loss: the schedule reverses no step (a planner bug)")
        return self.losses

    def backward(self, grad_losses: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        """The rest of the schedule: gradients for (state0's tensors, xs, targets, *params)."""
        problem = self.problem
        self._param_grads = [None] * len(problem.params)
        self._dxs = torch.zeros_like(problem.xs) if problem.x_grad else None
        self._dys = torch.zeros_like(problem.targets) if problem.y_grad else None
        forked = contextlib.nullcontext() if problem.generators is None else problem.generators.fork()
        run: list[tuple[Kept, int]] = []      # reversals not yet run: consecutive steps of one graph
        with forked:
            if self._spent:
                self._first_pass_again()
            for _, op, t, slot in _rows(self._codes, self._next_row):
                if op == _REVERSE:
                    kept = self._working if slot == WORKING else self._pool.get(slot, Kept, t)
                    if kept is None or kept.position != t:
                        raise RuntimeError(f"scan_loss: the schedule reverses step {t} from the working buffer, "
                                           "which does not hold it (a planner or interpreter bug)")
                    if run and not any(a is b for a, b in zip(run[-1][0].inputs, kept.outputs)):
                        self._reverse(run, grad_losses)
                        run = []
                    run.append((kept, slot))
                else:
                    if run:
                        self._reverse(run, grad_losses)
                        run = []
                    self._act(op, t, slot, first=False)
            if run:
                self._reverse(run, grad_losses)
        grads = (*self._grads, self._dxs, self._dys, *self._param_grads)
        self._chain = None
        self._pool.clear(0, 1 << 62)
        self._set_current(())
        self._set_grads((None,) * len(self._state0))
        self._spent = True
        return grads

    def _first_pass_again(self) -> None:
        """For a second backward (retain_graph=True): the first pass's actions again, from state0 and the
        generators' state at the start, recording no losses (they are the returned tensor's)."""
        self._set_current(self._state0)
        self._position = 0
        self._chain = None
        if self._rng0 is not None:
            self.problem.generators.restore(self._rng0)
        with contextlib.closing(_rows(self._codes, 0)) as rows:
            for _, op, t, slot in rows:
                if op == _REVERSE:
                    break
                self._act(op, t, slot, first=False)

    def _reverse(self, run: list[tuple[Kept, int]], grad_losses: torch.Tensor) -> None:
        """Reverse steps t, t-1, ..., t-k of one graph (each kept step chained to the next) in one engine call.

        Seeds: dL/ds_t at step t's outputs, dL/dloss_u at every loss, and each parameter's gradient
        summed so far at an alias of it made now. The alias is the graph's newest node, so autograd,
        which runs newer nodes first, adds that sum before the run's contributions, in the order t,
        t-1, ...: the same left-to-right sum as over the unrolled loop, whatever the runs are.
        """
        problem = self.problem
        top, bottom = run[0][0], run[-1][0]
        roots, seeds = [], []
        with torch.enable_grad():
            for param, total in zip(problem.params, self._param_grads):
                if total is not None:
                    roots.append(param.view_as(param))
                    seeds.append(total)
        for out, grad in zip(top.outputs, self._grads):
            if grad is not None and out.requires_grad:
                roots.append(out)
                seeds.append(grad)
        for kept, _ in run:
            if kept.loss.requires_grad:
                roots.append(kept.loss)
                seeds.append(grad_losses[kept.position - 1])
        wanted = [d and s.requires_grad for s, d in zip(bottom.inputs, problem.spec.differentiable)]
        leaves = [(kept.position, kept.x_leaf, kept.y_leaf) for kept, _ in run]
        wrt = (*(s for s, w in zip(bottom.inputs, wanted) if w),
               *(x for _, x, _ in leaves if x is not None), *(y for _, _, y in leaves if y is not None),
               *problem.params)
        got = iter(_vjp(roots, seeds, wrt) if roots else (None,) * len(wrt))
        grads = tuple(next(got) if w else None for w in wanted)
        for buffer, k in ((self._dxs, 1), (self._dys, 2)):
            for position, *pair in leaves:
                if pair[k - 1] is not None:
                    grad = next(got)
                    if grad is not None:
                        buffer[position - 1] = grad
        for k, total in enumerate(got):
            self._param_grads[k] = total
        self.reversals += len(run)
        self.engine_calls += 1
        self._hold(grads, ())          # dL/ds below the run counted beside dL/ds_t and the graphs
        for kept, slot in run:
            if slot == WORKING:
                self._set_working(None)
            else:
                self._pool.clear(slot, slot + 1)
        self._set_grads(grads)
        self._hold((), grads)
