"""The default split of a sweep against every explicit one, interleaved in one process (issue 14's
target "default path within 5% of the fastest available configuration of the library").

A sweep runs in one lane (BLAS threads on the whole batch), in two lanes (``lanes=2``: independent
sweeps over disjoint batch rows) or with two unit threads (``unit_threads=2``: every step's hidden
units split between threads; LSTM and GRU); memopt_bptt._split picks one from the model, the batch and
the machine. For every configuration below this times, in ONE process, the default path and every
explicit alternative, plain BPTT and at a 5% budget (policy msm):

    default                  mb.Sequence(cell, output_size=16)           (whatever _split chooses)
    lanes=1,unit_threads=1   one lane, BLAS on the whole batch
    lanes=2                  two lanes (batch >= 2)
    unit_threads=2           two unit threads (cells with unit kernels: LSTM, GRU)

Configurations (input 64, readout 16 + mse loss, float32, forward + backward): issue 14's grid,
LSTM hidden 64 / 128 / 256 / 512 / 1024 at batch 16, LSTM 256 at batch 1 and 64, GRU 64 / 256 /
1024, Elman 256 / 1024, and where lanes and unit threads were close: LSTM 256 at batch 32 and 128,
GRU 256 and LSTM 512 at batch 64, and at batch 1-2 (LSTM 256 at batch 2, GRU 256 and 384 at
batch 1), where unit threads compete with one thread. T is the grid's for the small rows and shorter for the large
ones (see CONFIGS), so that a full run stays within ~15 minutes on 2 busy cores; a shorter T makes
the 5% budget tighter in checkpoints, which is where a second lane's gradient accumulator costs
recomputation (lanes=2 does not fit 5% of LSTM 1024 / GRU 1024 at T=200 at all).

How it is timed: every (path, plain/5%) pair of a configuration is warmed up once (compile or load
Numba's cache, plan), then the timed calls go round-robin over all pairs, one call each per round,
in an order shuffled every round (seeded), with a pause before every call so the previous call's
spinning BLAS workers go idle. A path's figure is the median over rounds of its time over the
default's time in the same round, divided by the least such median of that mode (so the fastest
path reads 1.00); "*" flags a row whose default is more than 5% slower than the fastest. The
1-minute load (``os.getloadavg``) is recorded before every round, and whether the executor saw
the machine as busy (load above the CPUs + 0.5: BLAS on one thread, unit threads yield at barriers
at once), since a busy machine changes what the paths do.

``--avx2`` runs the same in a child process compiled for AVX2 (NUMBA_CPU_NAME=haswell,
NUMBA_CPU_FEATURES="", OPENBLAS_CORETYPE=Haswell, set before numba loads): the other machine
kind's vector width and OpenBLAS kernels on this host (its caches stay this host's).

    python benchmarks/bench_split.py                 # every configuration, ~10-15 minutes
    python benchmarks/bench_split.py --quick         # smoke test: 4 configurations, short T, 3 rounds
    python benchmarks/bench_split.py --avx2          # the same compiled for AVX2
    python benchmarks/bench_split.py --rows lstm-256,lstm-256-b64 --rounds 9
    python benchmarks/bench_split.py --calibrate      # mb.calibrate each row first: the default is calibrated

Writes benchmarks/results/bench_split.json (bench_split_avx2.json with --avx2, ..._quick.json with
--quick, bench_split_calibrated*.json with --calibrate; --out for another). Without --calibrate the
default is the rule's (MEMOPT_BPTT_CALIBRATION=off); with it, each row first runs
mb.calibrate(model, batch) into a temporary file, and the table's default is the calibrated split.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)
from _memory import pin_threads  # noqa: E402

INPUT, OUTPUT, DTYPE = 64, 16, "float32"
BUDGET = 0.05
PAUSE = 0.15
TARGET = 1.05

AVX2_ENV = {"NUMBA_CPU_NAME": "haswell", "NUMBA_CPU_FEATURES": "", "OPENBLAS_CORETYPE": "Haswell"}
"""--avx2: the child's environment, set before numpy or numba load."""

# name: (cell, hidden, batch, T); T at most the grid's (benchmarks/bench_grid.py), shorter where a call is
# long, to fit ~15 minutes; every path but lanes=2 fits 5% at these T (lanes=2 needs T >= ~280 at hidden 1024)
CONFIGS = {
    "lstm-64": ("lstm", 64, 16, 1000),
    "lstm-128": ("lstm", 128, 16, 1000),
    "lstm-256": ("lstm", 256, 16, 500),
    "lstm-512": ("lstm", 512, 16, 300),
    "lstm-1024": ("lstm", 1024, 16, 200),
    "lstm-256-b1": ("lstm", 256, 1, 1000),
    "lstm-256-b2": ("lstm", 256, 2, 1000),
    "lstm-256-b32": ("lstm", 256, 32, 400),
    "lstm-256-b64": ("lstm", 256, 64, 300),
    "lstm-256-b128": ("lstm", 256, 128, 200),
    "lstm-512-b64": ("lstm", 512, 64, 200),
    "gru-64": ("gru", 64, 16, 1000),
    "gru-256": ("gru", 256, 16, 500),
    "gru-256-b64": ("gru", 256, 64, 300),
    "gru-256-b1": ("gru", 256, 1, 1000),
    "gru-384-b1": ("gru", 384, 1, 1000),
    "gru-1024": ("gru", 1024, 16, 200),
    "elman-256": ("elman", 256, 16, 1000),
    "elman-1024": ("elman", 1024, 16, 300),
}
QUICK = ("lstm-64", "lstm-256", "gru-256")
QUICK_T = 200

PATHS = {
    "default": {},
    "lanes=1,unit_threads=1": {"lanes": 1, "unit_threads": 1},
    "lanes=2": {"lanes": 2},
    "unit_threads=2": {"unit_threads": 2},
}
SHORT = {"default": "default", "lanes=1,unit_threads=1": "one", "lanes=2": "lanes2", "unit_threads=2": "units2"}
MODES = {"plain": {}, "5%": {"budget": BUDGET}}


def paths_for(cell: str, batch: int) -> list[str]:
    out = ["default", "lanes=1,unit_threads=1"]
    if batch >= 2:
        out.append("lanes=2")
    if cell in ("lstm", "gru"):  # the built-in cells with unit kernels
        out.append("unit_threads=2")
    return out


def _args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help=f"smoke test: {', '.join(QUICK)} at T={QUICK_T}, 3 rounds")
    p.add_argument("--rows", default=None, help=f"comma-separated configurations (of {', '.join(CONFIGS)})")
    p.add_argument("--T", type=int, default=None, help="override every configuration's T")
    p.add_argument("--rounds", type=int, default=None, help="timed rounds (default 5, quick 3)")
    p.add_argument("--threads", type=int, default=2, help="BLAS / OpenMP / Numba threads (default 2)")
    p.add_argument("--avx2", action="store_true", help="run in a child process compiled for AVX2 (haswell)")
    p.add_argument("--calibrate", action="store_true",
                   help="run mb.calibrate for each row first (into a temporary file), so the default is the "
                        "calibrated split; the rule's choice is then the explicit path of the same split")
    p.add_argument("--calibrate-seconds", type=float, default=3.0, help="mb.calibrate's seconds= (default 3)")
    p.add_argument("--out", default=None, help="JSON path (default benchmarks/results/bench_split[_avx2].json)")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    return p.parse_args(argv)


def _cell(mb, cell: str, hidden: int):
    if cell == "lstm":
        return mb.LSTM(input_size=INPUT, hidden_size=hidden)
    if cell == "gru":
        return mb.GRU(input_size=INPUT, hidden_size=hidden)
    return mb.Elman(input_size=INPUT, hidden_size=hidden, nonlinearity="tanh")


def _busy() -> bool:
    from memopt_bptt._executor._runner import machine_busy
    return machine_busy()


def _ratio(a: list, b: list):
    r = [x / y for x, y in zip(a, b) if x is not None and y is not None]
    return statistics.median(r) if r else None


def run_config(name: str, cell: str, hidden: int, batch: int, T: int, rounds: int, seed: int,
               calibrate: float | None = None) -> dict:
    import numpy as np
    import memopt_bptt as mb
    from memopt_bptt._calibrate import _name
    from memopt_bptt._split import rule_split
    cal = None
    if calibrate:  # before the models are built: the default one takes the kept split
        model = mb.Sequence(_cell(mb, cell, hidden), output_size=OUTPUT, loss="mse")
        c = mb.calibrate(model, batch, dtype=DTYPE, seconds=calibrate)
        cal = {"chosen": c.chosen, "rule": c.rule, "T": c.T, "seconds": c.seconds, "over_rule": c.over_rule,
               "calibration_seconds": c.calibration_seconds}
    rng = np.random.default_rng(1)
    xs = rng.standard_normal((T, batch, INPUT), dtype=np.float32)
    ys = rng.standard_normal((T, batch, OUTPUT), dtype=np.float32)
    models = {p: mb.Sequence(_cell(mb, cell, hidden), output_size=OUTPUT, loss="mse", **PATHS[p])
              for p in paths_for(cell, batch)}
    params = models["default"].init_params(seed=0, dtype=DTYPE)
    pairs = [(p, m) for p in models for m in MODES]
    calls = {(p, m): (lambda p=p, m=m: mb.value_and_grad(models[p], params, xs, ys, **MODES[m])) for p, m in pairs}
    info = {p: {"lane_batches": list(models[p].lane_batches(batch)), "unit_threads": len(models[p].unit_split(batch)),
                "describe_split": models[p].describe_split(batch)} for p in models}
    errors, warm, steps, losses = {}, {}, {}, {}
    for key in pairs:  # compile (or load the cache) and plan, once per pair
        t0 = time.perf_counter()
        try:
            loss, _, rep = mb.value_and_grad(models[key[0]], params, xs, ys, return_report=True, **MODES[key[1]])
            warm[key], steps[key], losses[key] = time.perf_counter() - t0, int(rep.forward_steps), float(loss)
        except Exception as exc:  # noqa: BLE001  (MemoryBudgetError: the path's buffers exceed the budget)
            errors[key] = f"{type(exc).__name__}: {exc}"[:300]
    live = [k for k in pairs if k not in errors]
    times = {k: [] for k in pairs}
    loads, busy = [], []
    for r in range(rounds):
        loads.append(os.getloadavg()[0])
        order = list(live)
        random.Random(seed * 1000 + r).shuffle(order)
        done = {}
        for key in order:
            time.sleep(PAUSE)
            busy.append(_busy())
            t0 = time.perf_counter()
            calls[key]()
            done[key] = time.perf_counter() - t0
        for key in pairs:
            times[key].append(done.get(key))
    rule = _name(*rule_split(models["default"], batch))
    row = {"name": name, "cell": cell, "hidden": hidden, "batch": batch, "T": T, "paths": info,
           "rule": rule, "calibration": cal,
           "load_per_round": loads, "busy_fraction": sum(busy) / len(busy) if busy else None, "modes": {}}
    for m in MODES:
        over_default = {p: (_ratio(times[(p, m)], times[("default", m)]) if (p, m) in live else None) for p in models}
        ran = {p: v for p, v in over_default.items() if v is not None}
        best = min(ran.values()) if ran else None
        row["modes"][m] = {
            p: {"median_seconds": statistics.median([t for t in times[(p, m)] if t is not None])
                if (p, m) in live else None,
                "times": times[(p, m)], "over_default": over_default[p],
                "over_fastest": over_default[p] / best if over_default[p] is not None else None,
                "forward_steps": steps.get((p, m)), "loss": losses.get((p, m)), "warm_seconds": warm.get((p, m)),
                "error": errors.get((p, m))}
            for p in models}
        row["modes"][m]["_fastest"] = min(ran, key=ran.get) if ran else None
    return row


def _f(v, spec=".2f", na="-"):
    return na if v is None else format(v, spec)


def default_label(row) -> str:
    d = row["paths"]["default"]
    if len(d["lane_batches"]) > 1:
        return "lanes2"
    return "units2" if d["unit_threads"] > 1 else "one"


def print_table(rows) -> None:
    print(f"\ntime over the fastest path of the row (median of per-round ratios); * default > {TARGET:.2f}x the "
          "fastest; n/a: the path failed (a budget its buffers do not fit)")
    head = (f"{'row':14s} {'T':>4s} {'default':>7s} {'load':>5s} | " + " ".join(f"{SHORT[p]:>6s}" for p in PATHS)
            + " | " + " ".join(f"{SHORT[p]:>6s}" for p in PATHS))
    print(f"{'':34s} | {'plain':^27s} | {'5% budget':^27s}")
    print(head)
    print("-" * len(head))
    for r in rows:
        cells = []
        for m in MODES:
            vals = []
            for p in PATHS:
                a = r["modes"][m].get(p)
                vals.append(f"{'':>6s}" if a is None else f"{'n/a':>6s}" if a["over_fastest"] is None
                            else f"{a['over_fastest']:6.2f}")
            d = r["modes"][m]["default"]["over_fastest"]
            cells.append(" ".join(vals) + ("*" if d is not None and d > TARGET else " "))
        load = statistics.median(r["load_per_round"]) if r["load_per_round"] else None
        print(f"{r['name']:14s} {r['T']:4d} {default_label(r):>7s} {_f(load, '.1f'):>5s} | {cells[0]}| {cells[1]}")


def machine() -> dict:
    from memopt_bptt._kernels.mm import vector_bytes
    out = {"vector_bytes": vector_bytes(), "cpus": os.cpu_count()}
    try:
        text = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10,
                              env={**os.environ, "LC_ALL": "C"}).stdout
    except (OSError, subprocess.SubprocessError):
        text = ""
    for line in text.splitlines():
        key, _, val = line.partition(":")
        if key.strip() in ("Model name", "L2 cache", "L3 cache"):
            out[key.strip()] = val.strip()
        elif key.strip() == "Flags":
            out["avx512f"] = "avx512f" in val.split()
    try:
        from memopt_bptt._kernels.blas import blas_core
        from memopt_bptt._split import l2_bytes
        out["l2_bytes"] = l2_bytes()
        out["blas_core"] = blas_core()
    except ImportError:
        pass
    return out


def main(args) -> None:
    import numba
    import memopt_bptt as mb
    from memopt_bptt import _split
    names = ([n.strip() for n in args.rows.split(",") if n.strip()] if args.rows
             else list(QUICK if args.quick else CONFIGS))
    unknown = [n for n in names if n not in CONFIGS]
    if unknown:
        sys.exit(f"bench_split: unknown rows {unknown}; known: {', '.join(CONFIGS)}")
    rounds = args.rounds or (3 if args.quick else 5)
    T_over = args.T or (QUICK_T if args.quick else None)
    m = machine()
    head = subprocess.run(["git", "-C", ROOT, "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout
    print(f"CPU {m.get('Model name')}, avx512f {m.get('avx512f')}, L2 {m.get('L2 cache')}; our code for "
          f"{numba.config.CPU_NAME or 'the host'} ({m['vector_bytes']}-byte vectors), OPENBLAS_CORETYPE="
          f"{os.environ.get('OPENBLAS_CORETYPE', '-')}; threads {args.threads}, rounds {rounds}, pause {PAUSE} s; "
          f"git {head.strip()}; load {os.getloadavg()}", flush=True)
    t_start, load_start = time.perf_counter(), os.getloadavg()
    rows = []
    for i, n in enumerate(names):
        cell, H, B, T = CONFIGS[n]
        t0 = time.perf_counter()
        row = run_config(n, cell, H, B, T_over or T, rounds, i, args.calibrate_seconds if args.calibrate else None)
        if row["calibration"]:
            c = row["calibration"]
            print(f"{n:14s} calibrated {c['chosen']} (rule {c['rule']}) in {c['calibration_seconds']:.1f} s: "
                  + ", ".join(f"{k} {v:.2f}x" for k, v in c["over_rule"].items()), flush=True)
        row["seconds"] = time.perf_counter() - t0
        rows.append(row)
        d = {mo: row["modes"][mo]["default"]["over_fastest"] for mo in MODES}
        print(f"{n:14s} T={row['T']:4d} default {default_label(row):6s} "
              + "  ".join(f"{mo}: " + " ".join(f"{SHORT[p]} {_f(a['over_fastest'])}" for p, a in row["modes"][mo].items()
                                                if not p.startswith("_")) for mo in MODES)
              + f"  (default/fastest {_f(d['plain'])} / {_f(d['5%'])}, load {os.getloadavg()[0]:.1f}, "
              f"busy {_f(row['busy_fraction'])}, {row['seconds']:.0f} s)", flush=True)
    print_table(rows)
    over = [r["modes"][mo]["default"]["over_fastest"] for r in rows for mo in MODES]
    within = sum(1 for v in over if v is not None and v <= TARGET)
    if args.calibrate:  # the rule's choice is the explicit path of the same split
        rule_over = [r["modes"][mo][r["rule"]]["over_fastest"] for r in rows for mo in MODES]
        print(f"the rule's choice within {TARGET:.2f}x of the fastest: "
              f"{sum(1 for v in rule_over if v is not None and v <= TARGET)} of {len(rule_over)}")
    print(f"default within {TARGET:.2f}x of the fastest: {within} of {len(over)} (row, mode) pairs; "
          f"load {load_start} at the start, {os.getloadavg()} at the end; {time.perf_counter() - t_start:.0f} s")
    result = {"config": {"quick": args.quick, "rounds": rounds, "calibrate": args.calibrate,
                         "calibrate_seconds": args.calibrate_seconds if args.calibrate else None, "threads": args.threads, "pause_seconds": PAUSE,
                         "budget_fraction": BUDGET, "input": INPUT, "output": OUTPUT, "dtype": DTYPE,
                         "T_override": T_over, "numba_cpu_name": numba.config.CPU_NAME,
                         "numba_cpu_features": numba.config.CPU_FEATURES,
                         "openblas_coretype": os.environ.get("OPENBLAS_CORETYPE"), "git_head": head.strip(),
                         "memopt_bptt": mb.__version__, "numba": numba.__version__,
                         "loadavg_start": load_start, "loadavg_end": os.getloadavg(),
                         "rule": {k: getattr(_split, k) for k in dir(_split) if k.isupper()
                                  and isinstance(getattr(_split, k), (int, float))},
                         "method": "every (path, mode) in one process, warmed up once, then round-robin one call "
                                   f"each per round in a shuffled order with a {PAUSE} s pause before each; "
                                   "over_default = median over rounds of time / default's time in that round; "
                                   "over_fastest = over_default / the least over_default of the mode"},
              "machine": m, "rows": rows, "default_within_target": [within, len(over)],
              "seconds_total": time.perf_counter() - t_start}
    if args.quick:
        result["QUICK"] = f"smoke test: {', '.join(names)} at T={T_over}, {rounds} rounds"
    out = args.out or os.path.join(HERE, "results", f"bench_split{'_calibrated' if args.calibrate else ''}"
                                                    f"{'_avx2' if args.avx2 else ''}"
                                                    f"{'_quick' if args.quick else ''}.json")
    os.makedirs(os.path.dirname(out), exist_ok=True)
    with open(out, "w") as fh:
        json.dump(result, fh, indent=1)
    print(f"wrote {os.path.relpath(out)}")


if __name__ == "__main__":
    ARGS = _args()
    if ARGS.avx2 and not ARGS.child:
        env = {**os.environ, **AVX2_ENV}
        sys.exit(subprocess.run([sys.executable, os.path.abspath(__file__), "--child", *sys.argv[1:]],
                                env=env).returncode)
    if ARGS.calibrate:  # a file of this run's own, never the user's
        import tempfile
        os.environ["MEMOPT_BPTT_CALIBRATION"] = os.path.join(tempfile.mkdtemp(prefix="bench_split_"), "cal.json")
    else:  # the rule's choices, whatever this machine's calibration file holds
        os.environ["MEMOPT_BPTT_CALIBRATION"] = "off"
    pin_threads(ARGS.threads)  # before numpy or numba load their pools
    main(ARGS)
