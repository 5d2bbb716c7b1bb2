"""How many barriers unit threads cross per sweep: the count ``_executor/_units.py`` documents.

Every barrier is a wait for the slowest thread, so their number is part of
the speed: a change that adds one per step shows here, not only in a
benchmark. The count is read from the barrier's own counters (each thread's
counter ends at the number of barriers it crossed), and the gradients are
checked against plain BPTT's bits at the same time.
"""

from __future__ import annotations

import numpy as np
import pytest

import memopt_bptt as mb
from memopt_bptt._actions import Op
from memopt_bptt._executor import Data, Run, _runner
from memopt_bptt._kernels.sync import SLOT, SWITCH


def expected_barriers(codes: np.ndarray, n_layers: int) -> int:
    """The count _units.py documents. One layer: a barrier after every action and every forward
    step, and one inside a reversed step. A stack: one between layers in a forward step, none
    after it but one before the next restore or rebuild; a reversed step one after its rebuild
    and one per layer above the first, and one more before a pool write right after it (a saved
    state, a step kept into a slot); its last one more (no next step to lean on)."""
    total = 0
    pos = 0
    state_owed = pool_owed = False
    for op, step, slot in codes:
        if n_layers == 1:
            total += (step - pos) if op == Op.ADVANCE else 2 if op == Op.REVERSE else 1
        elif op in (Op.ADVANCE, Op.KEEP):
            total += (1 if op == Op.KEEP else step - pos) * (n_layers - 1)
            total += 1 if op == Op.KEEP and slot >= 0 and pool_owed else 0
            state_owed, pool_owed = True, False
        else:
            paid = state_owed if op in (Op.RESTORE, Op.RESTORE_INTERNAL, Op.REVERSE) else pool_owed
            total += 1 + paid
            if op == Op.REVERSE:
                total += n_layers - 1 + (step == 1)
            state_owed, pool_owed = False, op == Op.REVERSE and step > 1
        if op in (Op.RESTORE, Op.ADVANCE, Op.KEEP, Op.RESTORE_INTERNAL):
            pos = step
    return total


def sweep_counts(model, params, xs, ys, schedule):
    """Each unit thread's barrier count after one sweep of ``schedule``, and the gradients."""
    arrays = model.check_params(params)
    checked = model.check_data(xs, ys, arrays[0].dtype)
    sizes = model.sizes(batch=xs.shape[1], dtype=arrays[0].dtype)
    run = Run(model, arrays, Data.of(checked), sizes, loss_kind=0, scale=1.0 / checked.n_terms,
              loss_mode=checked.loss_mode)
    assert run.mode == "units"
    grads = tuple(np.zeros_like(a) for a in arrays)
    jobs = run.allocate(schedule.pool_quanta, checked.h0, grads, np.zeros(0))
    run.run(schedule.codes, jobs)
    flags = jobs[0][0].flags
    return [int(flags[k * SLOT]) for k in range(len(jobs))], int(flags[-SLOT + SWITCH]), grads


# the stack (9, 6) compiles a units sweep of its own (about 50 s on a slow 2-core machine): CI's slow step
@pytest.mark.parametrize("hidden", [(9,), pytest.param((9, 6), marks=pytest.mark.slow)])
def test_barriers_per_sweep_are_the_documented_count(hidden, monkeypatch):
    monkeypatch.setattr(_runner, "crowded", lambda threads: False)  # a thread per share, even on a busy machine
    T, batch = 23, 4
    sizes = [3, *hidden]
    cells = [mb.LSTM(sizes[k], h) for k, h in enumerate(hidden)]
    model = mb.Sequence(cells if len(cells) > 1 else cells[0], output_size=3, unit_threads=2)
    params = model.init_params(seed=3)
    rng = np.random.default_rng(3)
    xs, ys = rng.normal(size=(T, batch, 3)), rng.normal(size=(T, batch, 3))
    plain = mb.plan(T, budget=1.0, model=model, batch=batch, policy="full")
    *_, reference = sweep_counts(model, params, xs, ys, plain)
    for policy, budget in (("full", 1.0), ("msm", 0.4), ("revolve", 0.4), ("sqrt", 0.6)):
        schedule = mb.plan(T, budget=budget, model=model, batch=batch, policy=policy)
        counts, switch, grads = sweep_counts(model, params, xs, ys, schedule)
        want = expected_barriers(schedule.codes, len(hidden))
        if switch:  # the threads stalled (a crowded machine) and thread 0 went on alone after that barrier
            assert counts == [switch, switch] and switch <= want, (policy, counts, want)
        else:
            assert counts == [want, want], (policy, counts, want)
        for g, r in zip(grads, reference):
            assert np.array_equal(g, r), policy
    if len(hidden) > 1:  # plain BPTT: one per forward step and two per reversed step (was 2 and 3.5)
        assert expected_barriers(plain.codes, 2) == 1 + T + (1 + 2 * T) + 1
