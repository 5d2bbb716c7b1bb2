"""Count an executor's kernel calls with Numba's JIT disabled (run as a subprocess).

Used by tests/test_executor.py. With ``NUMBA_DISABLE_JIT=1`` every ``@njit``
function is plain Python, so a custom :class:`memopt_bptt.Cell` can wrap the
LSTM kernels in Python counters and the executor's sweep calls them like any
other kernel. The counts are independent of the executor's own bookkeeping.

Usage::

    NUMBA_DISABLE_JIT=1 python tests/_count_forwards.py OUT.npz

Writes to OUT.npz, for every (T, budget, policy) in the grid below:
inputs, loss, gradients, counted forward/backward/rebuild calls and the
schedule's ``forward_steps``. The library runs unmodified (its BLAS wrapper
has a NumPy path when the JIT is off).
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys

import numpy as np

if os.environ.get("NUMBA_DISABLE_JIT") != "1":
    sys.exit("run with NUMBA_DISABLE_JIT=1: the counters wrap the kernels' Python functions")

import memopt_bptt as mb  # noqa: E402
from memopt_bptt.testing import least_budget  # noqa: E402

INPUT, HIDDEN, OUTPUT, BATCH = 3, 4, 2, 2
GRID_T = (1, 2, 3, 5, 8, 12)
FRACTIONS = ("least", 0.15, 0.35, 0.6, 1.0)
POLICIES = ("msm", "hsm", "ism", "revolve", "sqrt", "full")


class Counter:
    def __init__(self) -> None:
        self.counts = {"forward": 0, "backward": 0, "rebuild": 0}

    def wrap(self, key, fn):
        def counted(*args):
            self.counts[key] += 1
            return fn(*args)
        return counted


def counting_model(counter: Counter, loss: str = "mse") -> mb.Sequence:
    base = mb.LSTM(input_size=INPUT, hidden_size=HIDDEN)
    cell = dataclasses.replace(
        base, kind="counting_lstm",
        forward_step=counter.wrap("forward", base.forward_step),
        backward_step=counter.wrap("backward", base.backward_step),
        state_from_internal=counter.wrap("rebuild", base.state_from_internal))
    return mb.Sequence(cell, output_size=OUTPUT, loss=loss)


def main(out_path: str) -> None:
    out: dict[str, np.ndarray] = {}
    counter = Counter()
    model = counting_model(counter)
    params = model.init_params(seed=1)
    for name, a in params.items():
        out[f"param/{name}"] = a
    cases = []
    for T in GRID_T:
        rng = np.random.default_rng(T)
        xs = rng.normal(size=(T, BATCH, INPUT))
        ys = rng.normal(size=(T, BATCH, OUTPUT))
        out[f"xs/{T}"] = xs
        out[f"ys/{T}"] = ys
        full_bytes = mb.plan(T, budget=1.0, model=model, batch=BATCH, policy="full").budget_bytes
        least_msm = least_budget(model, T=T, batch=BATCH)
        for policy in POLICIES:
            least_pol = least_budget(model, T=T, batch=BATCH, policy=policy)
            budgets = sorted({max(least_pol, least_msm if f == "least"
                                  else int(least_msm + f * (full_bytes - least_msm))) for f in FRACTIONS})
            for budget in budgets:
                schedule = mb.plan(T, budget=budget, model=model, batch=BATCH, policy=policy)
                for key in counter.counts:
                    counter.counts[key] = 0
                loss, grads = mb.value_and_grad(model, params, xs, ys, schedule=schedule)
                n_reverse_reads = sum(1 for a in schedule.actions if a.op in ("reverse", "restore_internal"))
                tag = f"{T}/{policy}/{budget}"
                cases.append({"T": T, "policy": policy, "budget": budget, "tag": tag,
                              "forward_steps": schedule.forward_steps,
                              "n_reverse_reads": n_reverse_reads, **counter.counts})
                out[f"loss/{tag}"] = np.array(loss)
                for name, g in grads.items():
                    out[f"grad/{tag}/{name}"] = g
    out["cases"] = np.array(json.dumps(cases))
    np.savez(out_path, **out)


if __name__ == "__main__":
    main(sys.argv[1])
