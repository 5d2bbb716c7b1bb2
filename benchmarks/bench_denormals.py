"""Subnormal numbers: a loss only at the last step, with and without flushing them to zero.

A sequence-level loss (``loss_at="last"``) sends back a gradient that shrinks
step by step; in float32 it passes through the subnormal range (below
1.2e-38) on its way to zero, where every x86 operation that reads or writes
one takes a microcode assist. ``mb.Sequence(flush_denormals=True)``, the
default, sets FTZ and DAZ on the executor's threads for the sweep
(memopt_bptt/_kernels/fpmode.py). This measures, in one process with the
calls interleaved (A B C ... each round, median of the rounds):

    ours last, flushed        loss_at="last", flush_denormals=True  (the default)
    ours last, IEEE           loss_at="last", flush_denormals=False
    ours every step           loss_at="every" (gradients stay large: no subnormals)

plain BPTT and at 5% of its memory, for LSTM 64 -> 256 and GRU 64 -> 256 at
batch 16, T = 1000, float32, 2 threads; then, in a process of its own, torch's
``nn.LSTM`` with a readout and mse loss at the last step only, with
``torch.set_flush_denormal`` False (its default) and True, for reference.
Every result is checked: the two modes' losses equal, their gradients within
float32 rounding.

    python benchmarks/bench_denormals.py            # about 2 minutes
    python benchmarks/bench_denormals.py --quick    # T = 300, 3 rounds
    NUMBA_CPU_NAME=haswell NUMBA_CPU_FEATURES="" OPENBLAS_CORETYPE=Haswell \
        python benchmarks/bench_denormals.py --out benchmarks/results/bench_denormals_avx2.json   # AVX2 code

Prints the CPU's model name first; writes benchmarks/results/bench_denormals.json (or --out).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from _memory import cpu_model, pin_threads, timed_rounds  # noqa: E402

INPUT, HIDDEN, BATCH, OUTPUT = 64, 256, 16, 16
PAUSE = 0.2


def _args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="T = 300, 3 rounds")
    p.add_argument("--T", type=int, default=None)
    p.add_argument("--reps", type=int, default=None, help="rounds (default 5, quick 3)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", default=os.path.join(HERE, "results", "bench_denormals.json"))
    p.add_argument("--torch-child", type=int, default=None, help=argparse.SUPPRESS)  # T: torch's side
    return p.parse_args(argv)


def _data(T):
    import numpy as np
    rng = np.random.default_rng(0)
    xs = rng.normal(size=(T, BATCH, INPUT)).astype("float32")
    return xs, rng.normal(size=(BATCH, OUTPUT)).astype("float32"), rng.normal(size=(T, BATCH, OUTPUT)).astype("float32")


def torch_side(T, reps, threads):
    """torch nn.LSTM, readout and mse at the last step; set_flush_denormal False / True, interleaved."""
    import numpy as np
    import torch
    torch.set_num_threads(threads)
    xs, ylast, _ = _data(T)
    torch.manual_seed(0)
    lstm, lin = torch.nn.LSTM(INPUT, HIDDEN), torch.nn.Linear(HIDDEN, OUTPUT)
    x, y = torch.from_numpy(xs), torch.from_numpy(ylast)

    def call():
        lstm.zero_grad()
        lin.zero_grad()
        out, _ = lstm(x)
        loss = torch.nn.functional.mse_loss(lin(out[-1]), y)
        loss.backward()
        return float(loss)

    def in_mode(mode):
        def f():
            torch.set_flush_denormal(mode)
            call()
        return f

    fns = {False: in_mode(False), True: in_mode(True)}
    for f in fns.values():
        f()
    times = timed_rounds(fns, reps, PAUSE)
    torch.set_flush_denormal(False)
    return {"torch last, IEEE": statistics.median(times[False]),
            "torch last, flushed": statistics.median(times[True]), "torch": torch.__version__,
            "ratio": float(np.median(np.array(times[False]) / np.array(times[True])))}


def ours(cell_name, T, reps):
    import numpy as np

    import memopt_bptt as mb
    make = {"lstm": mb.LSTM, "gru": mb.GRU}[cell_name]
    xs, ylast, ys = _data(T)
    models = {"ours last, flushed": (mb.Sequence(make(INPUT, HIDDEN), output_size=OUTPUT, loss_at="last"), ylast),
              "ours last, IEEE": (mb.Sequence(make(INPUT, HIDDEN), output_size=OUTPUT, loss_at="last",
                                              flush_denormals=False), ylast),
              "ours every step": (mb.Sequence(make(INPUT, HIDDEN), output_size=OUTPUT), ys)}
    params = models["ours every step"][0].init_params(seed=0, dtype="float32")
    rows = {}
    for budget in (None, 0.05):
        fns = {k: (lambda m=m, y=y: mb.value_and_grad(m, params, xs, y, budget=budget)) for k, (m, y) in models.items()}
        first = {k: f() for k, f in fns.items()}
        a, b = first["ours last, flushed"], first["ours last, IEEE"]
        assert a[0] == b[0], (a[0], b[0])
        worst = max(float(np.max(np.abs(a[1][k] - b[1][k]) / (np.abs(b[1][k]) + 1e-30))) for k in a[1])
        times = timed_rounds(fns, reps, PAUSE)
        med = {k: statistics.median(v) for k, v in times.items()}
        ratio = statistics.median(x / y for x, y in zip(times["ours last, IEEE"], times["ours last, flushed"]))
        rows["plain" if budget is None else "5%"] = {"seconds": med, "ieee_over_flushed": ratio,
                                                     "max_relative_grad_difference": worst,
                                                     "split": models["ours every step"][0].describe_split(BATCH)}
    return rows


def main(args):
    pin_threads(args.threads)
    T = args.T or (300 if args.quick else 1000)
    reps = args.reps or (3 if args.quick else 5)
    cpu = cpu_model()
    print(f"CPU: {cpu}; T={T}, batch {BATCH}, input {INPUT}, hidden {HIDDEN}, float32, {args.threads} threads, "
          f"{reps} rounds", flush=True)
    env = {k: os.environ.get(k) for k in ("NUMBA_CPU_NAME", "NUMBA_CPU_FEATURES", "OPENBLAS_CORETYPE")}
    result = {"cpu": cpu, "T": T, "reps": reps, "threads": args.threads, "environment": env, "cells": {}}
    for cell in ("lstm", "gru"):
        rows = ours(cell, T, reps)
        result["cells"][cell] = rows
        for budget, r in rows.items():
            s = r["seconds"]
            print(f"{cell:>4} {budget:>5}: last flushed {s['ours last, flushed']:.3f} s | last IEEE "
                  f"{s['ours last, IEEE']:.3f} s | every step {s['ours every step']:.3f} s | IEEE / flushed "
                  f"{r['ieee_over_flushed']:.2f}x | gradients differ by at most {r['max_relative_grad_difference']:.1e} "
                  "relative", flush=True)
    out = subprocess.run([sys.executable, __file__, "--torch-child", str(T), "--reps", str(reps),
                          "--threads", str(args.threads)], capture_output=True, text=True)
    if out.returncode == 0:
        result["torch"] = json.loads(out.stdout.strip().splitlines()[-1])
        t = result["torch"]
        print(f"torch {t['torch']} nn.LSTM, loss at the last step: IEEE {t['torch last, IEEE']:.3f} s, "
              f"set_flush_denormal(True) {t['torch last, flushed']:.3f} s ({t['ratio']:.2f}x)")
    else:
        result["torch"] = None
        print("torch side skipped:", (out.stderr.strip().splitlines() or ["?"])[-1])
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as fh:
        json.dump(result, fh, indent=1)
    print(f"wrote {os.path.relpath(args.out)}")


if __name__ == "__main__":
    a = _args()
    if a.torch_child:
        pin_threads(a.threads)
        print(json.dumps(torch_side(a.torch_child, a.reps or 5, a.threads)))
    else:
        main(a)
