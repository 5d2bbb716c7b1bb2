"""The executor's time and memory under a budget, beside plain BPTT and PyTorch CPU.

LSTM input 64, hidden 256, readout 16 + mse loss, batch 16, float32, threads
pinned for every side (shared MEASURING.md is the method):

(a) Time against budget, T=1000: budgets of 1, 2, 5, 10, 20, 50 and 100% of
    plain BPTT's memory for policies msm, hsm and sqrt. Each schedule's
    measured time over our plain BPTT (policy "full"), interleaved
    A B1 A B2 ... A (each B against the mean of its two neighbouring A's),
    median over >= 5 rounds after a warm-up, beside the planner's predicted
    ``schedule.time_ratio``, planned with the b/f that mb.measure_step_times
    and the byte cost that mb.measure_byte_cost measure on this machine
    first (pred(steps) leaves the byte cost out); measured/predicted. Planning time is
    reported separately (it is not part of the timed calls). A least-squares
    fit of time = F*f + T*b over all schedules gives the measured b/f.
(b) T in {10^3, 10^4, 10^5} with a fixed 16 MiB budget, one fresh process per
    configuration: peak RSS of one value_and_grad call with a ready schedule
    (malloc_trim + VmHWM - VmRSS, benchmarks/_memory.py), the gradients and
    the lowered schedule (an int64 copy of schedule.codes) shown apart, and
    time per step. msm at T=10^3 (its table is O(T^2 m) time, O(T m) memory);
    revolve at every T (closed form, no table).
(c) PyTorch CPU where installed: plain nn.LSTM, and torch.utils.checkpoint
    (use_reentrant=False) over ceil(sqrt(T))-step segments of nn.LSTM (readout
    and loss inside each segment): time (interleaved with ours plain and ours
    msm at 5%, and ours msm with a byte budget equal to torch checkpoint's
    measured peak, "at the same memory") and peak memory (fresh process
    each), T=1000. Every timed run is preceded by a 0.3 s pause so the
    previous run's spinning OpenBLAS/OpenMP workers are idle.

(d) Stacked and masked (issue 13's row): a 2-layer LSTM (input 64, hidden 256,
    the same readout, batch 16, float32, T=1000) against PyTorch's
    nn.LSTM(num_layers=2): ours plain and msm at 5% against torch plain and
    torch.utils.checkpoint per ceil(sqrt(T))-step segment, interleaved, with
    peak memory (fresh process each); and ours plain on a padded batch with
    lengths uniform over [T/2, T] (lengths=) against the unmasked batch.

    python benchmarks/bench_executor.py             # full run, several minutes
    python benchmarks/bench_executor.py --quick     # short run: T=200, T<=10^4, 3 rounds
    python benchmarks/bench_executor.py --threads 1 # on a machine shared with other jobs
    python benchmarks/bench_executor.py --only-d --reuse-memory   # (d), freed memory reused: computation only

Prints tables; writes benchmarks/results/bench_executor.json and
plots/bench_executor.png.
"""

from __future__ import annotations

import argparse
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


def _parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="short run: T=200 in (a)/(c), T up to 10^4 in (b)")
    p.add_argument("--threads", type=int, default=2, help="threads for BLAS, Numba and torch (default 2)")
    p.add_argument("--reps", type=int, default=None, help="timed rounds (default 5, quick 3)")
    p.add_argument("--no-torch", action="store_true", help="skip part (c)")
    p.add_argument("--only-d", action="store_true", help="run part (d) alone (stacked and masked)")
    p.add_argument("--reuse-memory", action="store_true",
                   help="glibc keeps freed memory for the next call in this process and its workers "
                        "(MALLOC_MMAP_MAX_=0, MALLOC_TRIM_THRESHOLD_; bench_grid.py's --reuse-memory): the "
                        "computation without fresh page faults")
    p.add_argument("--skip-b", action="store_true", help="skip part (b) (fresh processes up to T=10^5)")
    p.add_argument("--out", default=os.path.join(HERE, "results", "bench_executor.json"))
    p.add_argument("--plot", default=os.path.join(ROOT, "plots", "bench_executor.png"))
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)  # JSON spec, fresh-process measurement
    return p.parse_args(argv)


ARGS = _parse_args() if __name__ == "__main__" else None
sys.path.insert(0, HERE)
from _memory import REUSE_ENV, cpu_model, emit, peak_of, pin_threads, run_worker  # noqa: E402

if ARGS and ARGS.reuse_memory and any(os.environ.get(k) != v for k, v in REUSE_ENV.items()):
    # glibc reads these at start-up: run again with them (the workers inherit them)
    os.execve(sys.executable, [sys.executable, os.path.abspath(__file__), *sys.argv[1:]], {**os.environ, **REUSE_ENV})

pin_threads(ARGS.threads if ARGS else 2)  # before numpy, numba or torch load their pools

import json  # noqa: E402
import math  # noqa: E402
import platform  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402
import warnings  # noqa: E402

import numpy as np  # noqa: E402

import memopt_bptt as mb  # noqa: E402

INPUT, HIDDEN, OUTPUT, BATCH, DTYPE = 64, 256, 16, 16, "float32"
FRACTIONS = (0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0)
POLICIES_A = ("msm", "hsm", "sqrt")
FIXED_BUDGET = "16MiB"
MiB = 2**20


def _torch():
    try:
        import torch
    except ImportError:
        return None
    return torch


def make_model(layers=1):
    if layers == 1:
        return mb.Sequence(mb.LSTM(input_size=INPUT, hidden_size=HIDDEN), output_size=OUTPUT, loss="mse")
    cells = [mb.LSTM(input_size=INPUT if k == 0 else HIDDEN, hidden_size=HIDDEN) for k in range(layers)]
    return mb.Sequence(cells, output_size=OUTPUT, loss="mse")


def make_data(T, seed=0):
    rng = np.random.default_rng(seed)
    xs = rng.standard_normal((T, BATCH, INPUT), dtype=np.float32)
    ys = rng.standard_normal((T, BATCH, OUTPUT), dtype=np.float32)
    return xs, ys


RHO: dict = {}  # measured backward/forward step-time ratio, filled once by measured_rho()
PAUSE = 0.3  # seconds before each timed run: spinning OpenBLAS/OpenMP workers of the previous run go idle


def measured_rho(model, T=1000) -> float:
    """b/f of one LSTM step on this machine (mb.measure_step_times), and what a byte of checkpoint
    pool costs in forward steps (mb.measure_byte_cost over T steps), for the planner's predictions."""
    if "rho" not in RHO:
        f, b = mb.measure_step_times(model, batch=BATCH, dtype=DTYPE, repeats=100)
        m = mb.measure_byte_cost(model, batch=BATCH, dtype=DTYPE, T=T)
        RHO.update(rho=b / f, forward_seconds=f, backward_seconds=b, byte_seconds=m, byte_cost=m / f)
    return RHO["rho"]


def plan(model, T, budget, policy):
    """(schedule or None, planning seconds, note); predictions use the measured b/f and byte cost."""
    rho = measured_rho(model, T)
    t0 = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            schedule = mb.plan(T, budget=budget, model=model, batch=BATCH, dtype=DTYPE, policy=policy,
                               backward_forward_ratio=rho, byte_cost=RHO["byte_cost"])
        except mb.MemoryBudgetError as exc:
            return None, time.perf_counter() - t0, f"needs {exc.least_bytes / MiB:.2f} MiB"
    note = "; ".join(str(w.message).split(";")[0] for w in caught)
    return schedule, time.perf_counter() - t0, note


# ---- PyTorch side ----------------------------------------------------------------
def torch_setup(torch, T, params, threads, layers=1):
    torch.set_num_threads(threads)
    lstm = torch.nn.LSTM(INPUT, HIDDEN, num_layers=layers)
    lin = torch.nn.Linear(HIDDEN, OUTPUT)
    with torch.no_grad():  # the same weights as ours (PyTorch layout)
        if layers == 1:
            for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
                getattr(lstm, f"{name}_l0").copy_(torch.from_numpy(params[f"cell.{name}"]))
        else:
            for name, p in lstm.named_parameters():
                p.copy_(torch.from_numpy(params[f"rnn.{name}"]))
        lin.weight.copy_(torch.from_numpy(params["readout.weight"]))
        lin.bias.copy_(torch.from_numpy(params["readout.bias"]))
    xs, ys = make_data(T)
    x, y = torch.from_numpy(xs), torch.from_numpy(ys)
    seg = math.isqrt(T - 1) + 1 if T > 1 else 1
    from torch.utils.checkpoint import checkpoint

    def segment(xa, ya, h, c):
        out, (h2, c2) = lstm(xa, (h, c))
        return ((lin(out) - ya) ** 2).sum(), h2, c2

    def zero_grads():
        for p in list(lstm.parameters()) + list(lin.parameters()):
            p.grad = None

    def plain():
        zero_grads()
        out, _ = lstm(x)
        loss = torch.nn.functional.mse_loss(lin(out), y)
        loss.backward()
        return float(loss.detach())

    def checkpointed():
        zero_grads()
        h = torch.zeros(layers, BATCH, HIDDEN)
        c = torch.zeros(layers, BATCH, HIDDEN)
        total = 0.0
        for a in range(0, T, seg):
            part, h, c = checkpoint(segment, x[a: a + seg], y[a: a + seg], h, c, use_reentrant=False)
            total = total + part
        loss = total / (T * BATCH * OUTPUT)
        loss.backward()
        return float(loss.detach())

    return {"torch plain": plain, "torch checkpoint": checkpointed}, seg


# ---- fresh-process worker ----------------------------------------------------------
def worker(spec: dict, threads: int) -> dict:
    T = spec["T"]
    layers = spec.get("layers", 1)
    model = make_model(layers)
    params = model.init_params(seed=0, dtype=DTYPE)
    if spec["side"] == "torch":
        torch = _torch()
        fns, seg = torch_setup(torch, T, params, threads, layers)
        fn = fns[spec["mode"]]
        fn()  # warm-up: first checkpoint call imports modules and grows the heap
        peak, wall, loss = peak_of(fn)
        return {**spec, "peak_bytes": peak, "wall": wall, "loss": loss, "segment": seg}
    xs, ys = make_data(T)
    # warm up (Numba loads its runtime and compiles the sweep on first use) on a tiny T
    xs3, ys3 = make_data(3, seed=1)
    mb.value_and_grad(model, params, xs3, ys3)
    mb.value_and_grad(model, params, xs3, ys3, budget=1.0, policy=spec["policy"])
    # plan (its table is measured apart), then the call with the ready schedule
    plan_peak, plan_wall, (schedule, _, note) = peak_of(lambda: plan(model, T, spec["budget"], spec["policy"]))
    peak, wall, (loss, grads) = peak_of(lambda: mb.value_and_grad(model, params, xs, ys, schedule=schedule))
    # value_and_grad's input checks alone (np.isfinite makes T*batch*size temporaries)
    check_peak, _, _ = peak_of(lambda: model.check_data(xs, ys, np.dtype(DTYPE)))
    return {**spec, "peak_bytes": peak, "wall": wall, "loss": loss, "note": note,
            "plan_peak_bytes": plan_peak, "plan_seconds": plan_wall, "check_peak_bytes": check_peak,
            "grads_bytes": int(sum(g.nbytes for g in grads.values())),
            "codes_bytes": int(schedule.codes.nbytes), "planned_bytes": int(schedule.peak_bytes),
            "budget_bytes": int(schedule.budget_bytes), "forward_steps": int(schedule.forward_steps),
            "predicted_ratio": schedule.time_ratio}


def fresh(spec: dict, threads: int) -> dict:
    return run_worker(os.path.abspath(__file__), [json.dumps(spec), "--threads", str(threads)])


# ---- part (a) ------------------------------------------------------------------------
def interleaved(fns: dict, reference: str, rounds: int) -> dict:
    """Median of per-round ratios t(B)/mean(t(A) before, t(A) after), and median times.

    Order per round: A B1 A B2 ... A Bn A (every B has an A on each side).
    """
    names = [n for n in fns if n != reference]
    for fn in fns.values():  # warm-up
        fn()
    times = {n: [] for n in fns}
    ratios = {n: [] for n in names}

    def timed(fn):
        time.sleep(PAUSE)
        t0 = time.perf_counter()
        fn()
        return time.perf_counter() - t0

    for _ in range(rounds):
        a_prev = timed(fns[reference])
        times[reference].append(a_prev)
        for n in names:
            tb = timed(fns[n])
            a_next = timed(fns[reference])
            times[n].append(tb)
            times[reference].append(a_next)
            ratios[n].append(tb / (0.5 * (a_prev + a_next)))
            a_prev = a_next
    return {"median_seconds": {n: statistics.median(v) for n, v in times.items()},
            "min_seconds": {n: min(v) for n, v in times.items()},
            "ratio": {n: statistics.median(v) for n, v in ratios.items()},
            "ratio_spread": {n: [min(v), max(v)] for n, v in ratios.items()}}


def part_a(T, rounds):
    model = make_model()
    params = model.init_params(seed=0, dtype=DTYPE)
    xs, ys = make_data(T)
    full = mb.plan(T, budget=1.0, model=model, batch=BATCH, dtype=DTYPE, policy="full")
    rows, fns = [], {"plain": lambda: mb.value_and_grad(model, params, xs, ys, schedule=full)}
    for frac in FRACTIONS:
        for policy in POLICIES_A:
            schedule, secs, note = plan(model, T, frac, policy)
            row = {"fraction": frac, "policy": policy, "plan_seconds": secs, "note": note}
            if schedule is not None:
                key = f"{policy}@{frac:g}"
                fns[key] = (lambda s: lambda: mb.value_and_grad(model, params, xs, ys, schedule=s))(schedule)
                row.update(key=key, forward_steps=int(schedule.forward_steps),
                           predicted_ratio=schedule.time_ratio, budget_bytes=int(schedule.budget_bytes),
                           planned_bytes=int(schedule.peak_bytes))
            rows.append(row)
            print(f"  planned {policy:5s} {frac:5.0%}: {secs:6.2f} s {note}", flush=True)
    res = interleaved(fns, "plain", rounds)
    for row in rows:
        if "key" in row:
            row["measured_ratio"] = res["ratio"][row["key"]]
            row["ratio_spread"] = res["ratio_spread"][row["key"]]
            row["seconds"] = res["median_seconds"][row["key"]]
            row["measured_over_predicted"] = row["measured_ratio"] / row["predicted_ratio"]
            # fastest over fastest: plain's big fresh pool sometimes costs 0.1-0.2 s more (see print_a)
            row["fastest_ratio"] = res["min_seconds"][row["key"]] / res["min_seconds"]["plain"]
            row["fastest_over_predicted"] = row["fastest_ratio"] / row["predicted_ratio"]
    # time = F * f + T * b (+ c): least squares over every schedule's median time
    ok = [r for r in rows if "key" in r]
    F = np.array([r["forward_steps"] for r in ok] + [T], float)
    t = np.array([r["seconds"] for r in ok] + [res["median_seconds"]["plain"]])
    A = np.stack([F, np.full_like(F, T), np.ones_like(F)], axis=1)
    (f, b, c), *_ = np.linalg.lstsq(A, t, rcond=None)
    fit = {"forward_seconds": f, "backward_seconds": b, "constant_seconds": c, "b_over_f": b / f}
    rho = b / f
    for r in ok:  # the planner's prediction redone with the measured b/f; and with steps alone
        r["predicted_ratio_fitted"] = (r["forward_steps"] / T + rho) / (1.0 + rho)
        r["predicted_ratio_steps"] = (r["forward_steps"] / T + RHO["rho"]) / (1.0 + RHO["rho"])
        r["measured_over_steps_only"] = r["measured_ratio"] / r["predicted_ratio_steps"]
        r["measured_over_fitted"] = r["measured_ratio"] / r["predicted_ratio_fitted"]
    return {"T": T, "plain_seconds": res["median_seconds"]["plain"],
            "plain_seconds_min": res["min_seconds"]["plain"], "rows": rows, "fit": fit,
            "full_bytes": int(full.budget_bytes)}


def print_a(a):
    print(f"\n(a) time against budget, T={a['T']}, plain BPTT {a['plain_seconds']:.3f} s, "
          f"{a['full_bytes'] / MiB:.1f} MiB kept; measured step: forward {RHO['forward_seconds'] * 1e6:.1f} us, "
          f"backward {RHO['backward_seconds'] * 1e6:.1f} us, b/f {RHO['rho']:.2f}; checkpoint byte "
          f"{RHO['byte_seconds'] * 1e12:.0f} ps ({RHO['byte_cost'] * 1e6:.2f} forward steps per MB)")
    print(f"{'budget':>7} {'policy':>6} {'MiB':>7} {'fwd/T':>6} {'predicted':>9} {'measured':>9} "
          f"{'[min, max]':>15} {'meas/pred':>9} {'fastest':>7} {'f/pred':>6} {'pred(steps)':>11} {'pred(fit)':>9} "
          f"{'plan s':>7}  note")
    for r in a["rows"]:
        if "key" not in r:
            print(f"{r['fraction']:7.0%} {r['policy']:>6} {'-':>7} {'-':>6} {'n/a':>9} {'n/a':>9} {'':>15} "
                  f"{'':>9} {'':>7} {'':>6} {'':>11} {'':>9} {r['plan_seconds']:7.2f}  {r['note']}")
            continue
        lo, hi = r["ratio_spread"]
        print(f"{r['fraction']:7.0%} {r['policy']:>6} {r['planned_bytes'] / MiB:7.2f} "
              f"{r['forward_steps'] / a['T']:6.3f} {r['predicted_ratio']:9.3f} {r['measured_ratio']:9.3f} "
              f"{'[' + f'{lo:.2f}, {hi:.2f}' + ']':>15} {r['measured_over_predicted']:9.3f} "
              f"{r['fastest_ratio']:7.3f} {r['fastest_over_predicted']:6.3f} {r['predicted_ratio_steps']:11.3f} {r['predicted_ratio_fitted']:9.3f} {r['plan_seconds']:7.2f}  "
              f"{r['note']}")
    print(f"measured: median of the ratios to the neighbouring plain runs; fastest: fastest run over plain's "
          f"fastest ({a['plain_seconds_min']:.3f} s). On this VM a fresh 110 MiB pool sometimes costs plain BPTT "
          "0.1-0.2 s more (freed memory handed back to the host between runs), which lowers the median ratios.")
    fit = a["fit"]
    print(f"fit time = F*f + T*b + c: f = {fit['forward_seconds'] * 1e3:.3f} ms, b = "
          f"{fit['backward_seconds'] * 1e3:.3f} ms, c = {fit['constant_seconds'] * 1e3:.1f} ms, "
          f"b/f = {fit['b_over_f']:.2f} (predictions use the b/f of mb.measure_step_times and mb.measure_byte_cost; pred(steps) the "
          "b/f alone; pred(fit) the fitted b/f alone)")


# ---- part (b) ------------------------------------------------------------------------
def part_b(Ts, threads):
    rows = []
    for T in Ts:
        policies = ("msm", "revolve") if T <= 1000 else ("revolve",)
        for policy in policies:
            r = fresh({"side": "ours", "T": T, "policy": policy, "budget": FIXED_BUDGET}, threads)
            r["seconds_per_step"] = r["wall"] / T
            rows.append(r)
            print(f"  T={T} {policy}: {r['wall']:.1f} s, peak {_mib(r['peak_bytes'])} MiB", flush=True)
    return rows


def _mib(v):
    return "n/a" if v is None else f"{v / MiB:.2f}"


def print_b(rows):
    print(f"\n(b) fixed budget {FIXED_BUDGET}, one fresh process per row (peak = VmHWM - VmRSS of one call)")
    print(f"{'T':>7} {'policy':>7} {'planned':>8} {'peak':>8} {'grads':>6} {'codes':>7} {'peak-g-c':>8} "
          f"{'fwd/T':>6} {'us/step':>8} {'plan s':>7} {'plan peak':>9} {'check peak':>10}")
    for r in rows:
        rest = None if r["peak_bytes"] is None else r["peak_bytes"] - r["grads_bytes"] - r["codes_bytes"]
        print(f"{r['T']:>7} {r['policy']:>7} {r['planned_bytes'] / MiB:8.2f} {_mib(r['peak_bytes']):>8} "
              f"{r['grads_bytes'] / MiB:6.2f} {r['codes_bytes'] / MiB:7.2f} {_mib(rest):>8} "
              f"{r['forward_steps'] / r['T']:6.3f} {r['seconds_per_step'] * 1e6:8.1f} {r['plan_seconds']:7.2f} "
              f"{_mib(r['plan_peak_bytes']):>9} {_mib(r['check_peak_bytes']):>10}")
    print("MiB throughout; peak includes the returned gradients (grads) and the lowered schedule (codes);\n"
          "plan peak: mb.plan alone; check peak: value_and_grad's input checks alone (model.check_data).")


# ---- part (c) ------------------------------------------------------------------------
def part_c(T, rounds, threads):
    torch = _torch()
    if torch is None:
        return None
    model = make_model()
    params = model.init_params(seed=0, dtype=DTYPE)
    xs, ys = make_data(T)
    full = mb.plan(T, budget=1.0, model=model, batch=BATCH, dtype=DTYPE, policy="full")
    five, _, _ = plan(model, T, 0.05, "msm")
    # torch checkpoint's memory first (fresh process), so ours can also run at exactly that budget
    mem = {"torch plain": fresh({"side": "torch", "T": T, "mode": "torch plain"}, threads),
           "torch checkpoint": fresh({"side": "torch", "T": T, "mode": "torch checkpoint"}, threads)}
    ckpt_bytes = mem["torch checkpoint"]["peak_bytes"]
    same, _, _ = plan(model, T, int(ckpt_bytes), "msm") if ckpt_bytes else (None, 0, "")
    torch_fns, seg = torch_setup(torch, T, params, threads)
    fns = {"ours plain": lambda: mb.value_and_grad(model, params, xs, ys, schedule=full),
           "ours msm 5%": lambda: mb.value_and_grad(model, params, xs, ys, schedule=five), **torch_fns}
    if same is not None:
        fns["ours msm @ckpt mem"] = lambda: mb.value_and_grad(model, params, xs, ys, schedule=same)
    res = interleaved(fns, "ours plain", rounds)
    ours_loss = mb.value_and_grad(model, params, xs, ys, schedule=full)[0]
    torch_loss = torch_fns["torch plain"]()
    mem["ours plain"] = fresh({"side": "ours", "T": T, "policy": "full", "budget": 1.0}, threads)
    mem["ours msm 5%"] = fresh({"side": "ours", "T": T, "policy": "msm", "budget": 0.05}, threads)
    if same is not None:
        mem["ours msm @ckpt mem"] = fresh({"side": "ours", "T": T, "policy": "msm", "budget": int(ckpt_bytes)},
                                          threads)
    return {"T": T, "segment": seg, "torch_version": torch.__version__,
            "forward_steps": {"ours msm 5%": int(five.forward_steps),
                              **({"ours msm @ckpt mem": int(same.forward_steps)} if same is not None else {})},
            "seconds": res["median_seconds"], "ratio_to_ours_plain": {"ours plain": 1.0, **res["ratio"]},
            "fastest_seconds": res["min_seconds"],
            "predicted": {"ours msm 5%": five.time_ratio,
                          **({"ours msm @ckpt mem": same.time_ratio} if same is not None else {})},
            "peak_bytes": {k: v["peak_bytes"] for k, v in mem.items()},
            "loss": {"ours": ours_loss, "torch": torch_loss}}


def print_c(c):
    if c is None:
        print("\n(c) PyTorch is not installed: skipped")
        return
    print(f"\n(c) PyTorch {c['torch_version']} CPU, T={c['T']}, checkpoint segments of {c['segment']} steps "
          f"(loss ours {c['loss']['ours']:.6f}, torch {c['loss']['torch']:.6f})")
    print(f"{'':>17} {'seconds':>8} {'/ ours plain':>12} {'fastest':>8} {'predicted':>9} {'peak MiB':>9}")
    for k in ("ours plain", "ours msm 5%", "ours msm @ckpt mem", "torch plain", "torch checkpoint"):
        if k in c["seconds"]:
            pred = c["predicted"].get(k, 1.0 if k == "ours plain" else None)
            print(f"{k:>18} {c['seconds'][k]:8.3f} {c['ratio_to_ours_plain'][k]:12.3f} "
                  f"{c['fastest_seconds'][k]:8.3f} {'' if pred is None else f'{pred:.3f}':>9} "
                  f"{_mib(c['peak_bytes'][k]):>9}")
    sec, fast = c["seconds"], c["fastest_seconds"]
    for k in ("ours msm 5%", "ours msm @ckpt mem"):
        if k in sec:
            # median seconds over median seconds: the neighbour ratios go through ours plain, whose
            # occasional slow runs (a fresh 110 MiB pool) would skew a ratio of ratios
            print(f"{k} / torch checkpoint: time {sec[k] / sec['torch checkpoint']:.2f}x "
                  f"(fastest runs {fast[k] / fast['torch checkpoint']:.2f}x)"
                  + (f", memory {c['peak_bytes'][k] / c['peak_bytes']['torch checkpoint']:.2f}x"
                     if c["peak_bytes"]["torch checkpoint"] and c["peak_bytes"][k] else ""))


# ---- part (d): stacked layers and a masked batch ----------------------------------------
def part_d(T, rounds, threads):
    load_start = os.getloadavg()
    torch = _torch()
    model = make_model(2)
    params = model.init_params(seed=0, dtype=DTYPE)
    xs, ys = make_data(T)
    lengths = np.random.default_rng(3).integers(T // 2, T + 1, size=BATCH)
    full = mb.plan(T, budget=1.0, model=model, batch=BATCH, dtype=DTYPE, policy="full")
    five = mb.plan(T, budget=0.05, model=model, batch=BATCH, dtype=DTYPE)
    fns = {"ours plain": lambda: mb.value_and_grad(model, params, xs, ys, schedule=full),
           "ours msm 5%": lambda: mb.value_and_grad(model, params, xs, ys, schedule=five),
           "ours plain, lengths": lambda: mb.value_and_grad(model, params, xs, ys, schedule=full, lengths=lengths)}
    mem = {"ours plain": fresh({"side": "ours", "T": T, "policy": "full", "budget": 1.0, "layers": 2}, threads),
           "ours msm 5%": fresh({"side": "ours", "T": T, "policy": "msm", "budget": 0.05, "layers": 2}, threads)}
    seg = None
    if torch is not None:
        torch_fns, seg = torch_setup(torch, T, params, threads, 2)
        fns.update(torch_fns)
        for k in torch_fns:
            mem[k] = fresh({"side": "torch", "T": T, "mode": k, "layers": 2}, threads)
    res = interleaved(fns, "ours plain", rounds)
    return {"T": T, "layers": 2, "segment": seg, "forward_steps": {"ours msm 5%": int(five.forward_steps)},
            "seconds": res["median_seconds"], "ratio_to_ours_plain": {"ours plain": 1.0, **res["ratio"]},
            "fastest_seconds": res["min_seconds"], "peak_bytes": {k: v["peak_bytes"] for k, v in mem.items()},
            "ratio_spread": res["ratio_spread"], "lengths": [int(v) for v in lengths],
            "load_start": list(load_start), "load_end": list(os.getloadavg())}


def print_d(d):
    print(f"\n(d) 2-layer LSTM {INPUT}->{HIDDEN}->{HIDDEN}, T={d['T']}, batch {BATCH}, {DTYPE}; torch checkpoint "
          f"segments of {d['segment']} steps; lengths uniform over [T/2, T]; load (1, 5, 15 min) "
          f"{', '.join(f'{v:.2f}' for v in d['load_start'])} at the start, "
          f"{', '.join(f'{v:.2f}' for v in d['load_end'])} at the end")
    print(f"{'':>20} {'seconds':>8} {'/ ours plain':>12} {'fastest':>8} {'peak MiB':>9}")
    for k in ("ours plain", "ours msm 5%", "ours plain, lengths", "torch plain", "torch checkpoint"):
        if k in d["seconds"]:
            peak = d["peak_bytes"].get(k)
            print(f"{k:>20} {d['seconds'][k]:8.3f} {d['ratio_to_ours_plain'][k]:12.3f} "
                  f"{d['fastest_seconds'][k]:8.3f} {'' if peak is None else _mib(peak):>9}")
    sec, peak = d["seconds"], d["peak_bytes"]
    if "torch plain" in sec:
        print(f"ours plain / torch plain: {sec['ours plain'] / sec['torch plain']:.2f}x;  ours msm 5% / torch "
              f"checkpoint: time {sec['ours msm 5%'] / sec['torch checkpoint']:.2f}x, memory "
              f"{peak['ours msm 5%'] / peak['torch checkpoint']:.2f}x;  padded / full batch: "
              f"{sec['ours plain, lengths'] / sec['ours plain']:.2f}x")


# ---- plot ----------------------------------------------------------------------------
def plot(result, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.6))
    a = result["a"]
    ax = axes[0]
    for policy, color in zip(POLICIES_A, ("C0", "C1", "C2")):
        rows = [r for r in a["rows"] if r["policy"] == policy and "key" in r]
        if not rows:
            continue
        x = [100 * r["fraction"] for r in rows]
        ax.plot(x, [r["predicted_ratio"] for r in rows], "--", color=color, label=f"{policy} predicted")
        ax.plot(x, [r["measured_ratio"] for r in rows], "o-", color=color, alpha=0.5,
                label=f"{policy} measured (median of neighbour ratios)")
        if all("fastest_ratio" in r for r in rows):
            ax.plot(x, [r["fastest_ratio"] for r in rows], "x:", color=color, ms=8,
                    label=f"{policy} fastest / plain's fastest")
    ax.set_xscale("log")
    ax.set_xlabel("budget, % of plain BPTT's memory")
    ax.set_ylabel("time / plain BPTT")
    ax.set_title(f"(a) LSTM 256, batch 16, T={a['T']}")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    ax = axes[1]
    for policy, marker, color in (("msm", "s", "C0"), ("revolve", "o", "C1")):
        rows = [r for r in result["b"] or [] if r["policy"] == policy and r["peak_bytes"] is not None]
        if rows:
            Ts = [r["T"] for r in rows]
            ax.plot(Ts, [r["peak_bytes"] / MiB for r in rows], marker + "-", color=color,
                    label=f"{policy}: peak RSS of the call")
            ax.plot(Ts, [(r["peak_bytes"] - r["grads_bytes"] - r["codes_bytes"]) / MiB for r in rows],
                    marker + "--", color=color, alpha=0.6, label=f"{policy}: minus gradients and schedule")
            ax.plot(Ts, [r["planned_bytes"] / MiB for r in rows], marker + ":", color=color, alpha=0.4,
                    label=f"{policy}: planned (pool + working)")
    rows = [r for r in result["b"] or [] if r["policy"] == "revolve" and r.get("check_peak_bytes") is not None]
    if rows:
        ax.plot([r["T"] for r in rows], [r["check_peak_bytes"] / MiB for r in rows], "x-.", color="C3",
                label="input checks alone (np.isfinite temporaries)")
    ax.axhline(16, color="k", lw=0.8, label="budget 16 MiB")
    ax.set_xscale("log")
    ax.set_xlabel("T")
    ax.set_ylabel("MiB")
    ax.set_title("(b) fixed 16 MiB budget")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    ax = axes[2]
    c = result["c"]
    if c is not None:
        names = ["ours plain", "ours msm 5%", "torch plain", "torch checkpoint"]
        secs = [c["seconds"][n] for n in names]
        mems = [(c["peak_bytes"][n] or 0) / MiB for n in names]
        xpos = np.arange(len(names))
        ax.bar(xpos - 0.2, secs, 0.4, label="seconds (fwd+bwd)", color="C0")
        ax2 = ax.twinx()
        ax2.bar(xpos + 0.2, mems, 0.4, label="peak MiB", color="C3")
        ax.set_xticks(xpos, [n.replace(" ", "\n", 1) for n in names], fontsize=8)
        ax.set_ylabel("seconds")
        ax2.set_ylabel("peak MiB")
        ax.set_title(f"(c) against PyTorch CPU, T={c['T']}")
        ax.legend(loc="upper left", fontsize=8)
        ax2.legend(loc="upper right", fontsize=8)
    else:
        ax.text(0.5, 0.5, "PyTorch not installed", ha="center")
    fig.tight_layout()
    os.makedirs(os.path.dirname(path), exist_ok=True)
    fig.savefig(path, dpi=110)


def main(args):
    quick = args.quick
    rounds = args.reps or (3 if quick else 5)
    T_a = 200 if quick else 1000
    Ts = (1000, 10_000) if quick else (1000, 10_000, 100_000)
    t_start = time.perf_counter()
    print(f"bench_executor: threads={args.threads}, rounds={rounds}, {platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} cpus, load {os.getloadavg()[0]:.1f}", flush=True)
    if args.only_d:
        d = part_d(T_a, rounds, args.threads)
        print_d(d)
        os.makedirs(os.path.dirname(args.out), exist_ok=True)
        with open(args.out.replace(".json", "_d.json"), "w") as fh:
            json.dump({"d": d, "load_at_start": d["load_start"][0], "cpu": cpu_model(), "memopt_bptt": mb.__version__,
                       "reuse_memory": args.reuse_memory}, fh, indent=1)
        return
    print(f"(a) planning T={T_a} ...", flush=True)
    a = part_a(T_a, rounds)
    print_a(a)
    b = None
    if not args.skip_b:
        print("\n(b) fresh processes ...", flush=True)
        b = part_b(Ts, args.threads)
        print_b(b)
    c = None
    if not args.no_torch:
        print("\n(c) PyTorch ...", flush=True)
        c = part_c(T_a, rounds, args.threads)
        print_c(c)
    print("\n(d) stacked and masked ...", flush=True)
    d = part_d(T_a, rounds, args.threads)
    print_d(d)
    result = {"config": {"input": INPUT, "hidden": HIDDEN, "output": OUTPUT, "batch": BATCH, "dtype": DTYPE,
                         "threads": args.threads, "rounds": rounds, "quick": quick, "reuse_memory": args.reuse_memory,
                         "machine": platform.machine(), "cpus": os.cpu_count(),
                         "load_at_start": os.getloadavg()[0], "numpy": np.__version__,
                         "memopt_bptt": mb.__version__},
              "a": a, "b": b, "c": c, "d": d, "seconds_total": time.perf_counter() - t_start}
    if c is not None:
        five = next(r for r in a["rows"] if r["policy"] == "msm" and r["fraction"] == 0.05)
        result["summary_5pct"] = {
            "ours_msm_over_ours_plain": five.get("measured_ratio"),
            "predicted": five.get("predicted_ratio"),
            "measured_over_predicted": five.get("measured_over_predicted"),
            "predicted_with_fitted_b_over_f": five.get("predicted_ratio_fitted"),
            "predicted_steps_only": five.get("predicted_ratio_steps"),
            "measured_over_steps_only": five.get("measured_over_steps_only"),
            "ours_msm_over_torch_checkpoint_time": c["seconds"]["ours msm 5%"] / c["seconds"]["torch checkpoint"],
            "ours_msm_over_ours_plain_in_c": c["ratio_to_ours_plain"]["ours msm 5%"],
            "ours_msm_over_ours_plain_in_c_seconds": c["seconds"]["ours msm 5%"] / c["seconds"]["ours plain"],
            "predicted_in_c": c["predicted"]["ours msm 5%"],
        }
        if "ours msm @ckpt mem" in c["seconds"]:
            result["summary_5pct"]["ours_at_checkpoint_memory_over_torch_checkpoint_time"] = (
                c["seconds"]["ours msm @ckpt mem"] / c["seconds"]["torch checkpoint"])
    result["measured_step"] = dict(RHO)
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as fh:
        json.dump(result, fh, indent=1, default=float)
    plot(result, args.plot)
    print(f"\nwrote {os.path.relpath(args.out)} and {os.path.relpath(args.plot)} "
          f"({result['seconds_total']:.0f} s)")


if __name__ == "__main__":
    if ARGS.worker is not None:
        emit(worker(json.loads(ARGS.worker), ARGS.threads))
    else:
        main(ARGS)
