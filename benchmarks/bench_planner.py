"""Planner benchmark: planning time and memory, and what the schedules cost.

Part 1 - planning cost. For an LSTM (input 64, hidden 256, batch 16, float32)
and T in {10^3, 10^4, 10^5, 10^6}, budgets of 1%, 5% and 20% of plain BPTT's
bytes and every policy: wall time of ``mb.plan`` (median of up to 5 runs after
a warm-up), peak memory of the planning call (fresh process per
configuration: VmHWM - VmRSS after malloc_trim and a high-water-mark reset,
see MEASURING.md; plus tracemalloc's peak, which does not see Numba's
allocations), the size of the DP tables (computed from T and the budget), and
the time per emitted action. Configurations whose estimated time or table
size exceeds the limits are skipped with "skipped: estimated N s / M GB"; the
time estimate is the planner's DP work (cells x inner loop, from T and the
budget) times the seconds per unit of work measured at the last smaller T of
the same policy and budget (or at T = 400). msm runs the pruned exact table
(memopt_bptt._planner._msm._msm_fast_table; its work unit is a table cell), or,
where the optimum is its proven lower bound, no table at all (work T + M); where
even that is too much work the planner's ``msm`` returns the better of ism
and revolve with a warning; those rows say "fallback" and are estimated from
ism + revolve.

Part 2 - what the schedules cost. For the same LSTM at T = 1000 and budgets
of 1, 2, 5, 10 and 20% of plain BPTT: forward steps and the predicted time
ratio (F + T*b/f) / (T*(1 + b/f)) for msm, hsm, ism, revolve and sqrt, next to
Gruslys et al. (2016)'s headline: 5% of the memory for ~1.33x the time.

Run:  python benchmarks/bench_planner.py [--quick]
      python benchmarks/bench_planner.py --policies msm --T 1e3,1e4,1e5 --out /tmp/msm.json
      (msm's planning times only; msm brings ism and revolve, its fallback)
Writes benchmarks/results/bench_planner.json.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time
import tracemalloc
import warnings

import numpy as np

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS"):
    os.environ.setdefault(_var, "2")

HERE = os.path.dirname(os.path.abspath(__file__))
RESULTS = os.path.join(HERE, "results", "bench_planner.json")

INPUT, HIDDEN, BATCH, DTYPE, OUTPUT = 64, 256, 16, "float32", 1
POLICIES = ("hsm", "revolve", "ism", "msm", "sqrt", "full")  # ism before msm: msm's fallback uses it
TABLE_POLICIES = ("msm", "hsm", "ism")
CALIBRATION_T = 400  # 1% of plain BPTT needs T >= ~300 to fit at all
HEADLINE = {"source": "Gruslys et al. 2016 (arXiv 1606.03401), T=1000", "memory_fraction": 0.05,
            "time_ratio": 1.33}



sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _memory import malloc_trim, reset_peak  # noqa: E402

def _model():
    import memopt_bptt as mb
    return mb.Sequence(mb.LSTM(input_size=INPUT, hidden_size=HIDDEN), output_size=OUTPUT, loss="mse")


def _layout():
    """Quanta and bytes of the LSTM's states, as the planner derives them."""
    sizes = _model().sizes(batch=BATCH, dtype=DTYPE)
    g = math.gcd(sizes.state_width, sizes.internal_width)
    hq, kq = sizes.state_width // g, sizes.internal_width // g
    return {"hq": hq, "kq": kq, "quantum_bytes": g * sizes.batch * sizes.itemsize,
            "working_bytes": sizes.working_bytes}


def full_bytes(T, lay):
    """Plain BPTT's bytes (policy "full"): working buffers + s_0 + T-1 internal states."""
    return lay["working_bytes"] + (lay["hq"] + (T - 1) * lay["kq"]) * lay["quantum_bytes"]


def free_quanta(T, fraction, lay):
    budget = math.floor(fraction * full_bytes(T, lay))
    return max((budget - lay["working_bytes"] - lay["hq"] * lay["quantum_bytes"]) // lay["quantum_bytes"], 0)


def msm_falls_back(T, fraction, lay):
    """Whether plan(policy="msm") skips its exact table (too much work) and returns
    the better of ism and revolve with a warning (memopt_bptt._planner's rule)."""
    from memopt_bptt import _planner
    work = getattr(_planner, "msm_table_work", None)
    limit = getattr(_planner, "MSM_EXACT_MAX_WORK", None)
    if work is None or limit is None:
        return False
    return work(T, free_quanta(T, fraction, lay), lay["hq"], lay["kq"]) > limit


def msm_closed_form(T, fraction, lay):
    """Whether plan(policy="msm") needs no table: the optimum is its proven lower
    bound (memopt_bptt._planner._tables._lb_taus), planned in O(T + M)."""
    from memopt_bptt._planner import _tables
    taus = getattr(_tables, "_lb_taus", None)
    if taus is None:
        return False
    M = free_quanta(T, fraction, lay)
    cap = min(M, (T - 1) * lay["kq"])
    return T <= taus(cap, lay["hq"], lay["kq"], T)[0, cap]


def hsm_closed_form(T, fraction, lay):
    """Whether plan_quanta emits hsm from the closed form (its table would exceed HSM_TABLE_MAX_WORK)."""
    from memopt_bptt._planner import HSM_TABLE_MAX_WORK
    M = free_quanta(T, fraction, lay)
    return float(T) * T * min(M, max(T - 1, 0) * lay["hq"]) > HSM_TABLE_MAX_WORK


def table_bytes(policy, T, fraction, lay):
    """Bytes of the planner's DP tables (int64 cost + int32 choice per cell).

    msm/hsm: 2 start kinds x (T+1) x (capped free quanta + 1); ism: (T+1) x
    (free internal slots + 1). Mirrors memopt_bptt._planner at the time of
    writing; the measured VmHWM column is the ground truth."""
    M = free_quanta(T, fraction, lay)
    hq, kq = lay["hq"], lay["kq"]
    if policy == "msm":
        if msm_falls_back(T, fraction, lay):
            return table_bytes("ism", T, fraction, lay)
        cap = min(M, (T - 1) * kq)
        tau = 2 * (cap + 1) * 8  # _lb_taus: where the optimum is its lower bound
        if msm_closed_form(T, fraction, lay):
            return tau
        # _msm_fast_table: a 2-byte choice per cell (4 from T = 2^15), kq + 1 rows of int64 costs
        # and slope maxima per start kind, 3 stacks of int64 pairs per start kind
        cells = 2 * (T + 1) * (cap + 1)
        return tau + cells * (2 if T < 2**15 else 4) + 2 * 2 * (kq + 1) * (T + 1) * 8 + 6 * 2 * (T + 1) * 8
    if policy == "hsm":
        if hsm_closed_form(T, fraction, lay):
            return 0
        return 12 * 2 * (T + 1) * (min(M, (T - 1) * hq) + 1)
    if policy == "ism":
        return 12 * (T + 1) * (min(M // kq, T - 1) + 1)
    return 0


# ---- the measured planning call (runs in a fresh process) -----------------------
def _status_kib(field):
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return None


def _reset_peak():
    gc.collect()
    malloc_trim()
    return reset_peak()


def worker(T, fraction, policy, max_repeat_seconds):
    import memopt_bptt as mb
    model = _model()
    kw = dict(model=model, batch=BATCH, dtype=DTYPE, policy=policy)
    mb.plan(64, budget=1.0, **kw)  # warm-up: load the cached Numba code
    if policy == "msm":
        mb.plan(200, slots=10, alpha=3.5, policy="msm")  # and msm's table code (the LSTM's alpha, 7/2)
    row = {"T": T, "fraction": fraction, "policy": policy}
    reset_ok = _reset_peak()
    rss0 = _status_kib("VmRSS")
    t0 = time.perf_counter()
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            s = mb.plan(T, budget=fraction, **kw)
    except mb.MemoryBudgetError as exc:
        row.update(status="does not fit", least_bytes=exc.least_bytes,
                   least_fraction=exc.least_bytes / full_bytes(T, _layout()))
        return row
    times = [time.perf_counter() - t0]
    hwm = _status_kib("VmHWM")
    if caught:
        row["warning"] = str(caught[0].message)
    row.update(status="ok", forward_steps=s.forward_steps, time_ratio=s.time_ratio, n_actions=int(len(s.codes)),
               peak_bytes=s.peak_bytes, budget_bytes=s.budget_bytes,
               rss_peak_bytes=(hwm - rss0) * 1024 if reset_ok else None)
    del s
    warnings.simplefilter("ignore")
    while len(times) < 5 and sum(times) < max_repeat_seconds:
        t0 = time.perf_counter()
        mb.plan(T, budget=fraction, **kw)
        times.append(time.perf_counter() - t0)
    row["seconds"] = statistics.median(times)
    row["runs"] = len(times)
    row["us_per_action"] = 1e6 * row["seconds"] / row["n_actions"]
    if times[0] < max_repeat_seconds:
        gc.collect()
        tracemalloc.start()
        mb.plan(T, budget=fraction, **kw)
        row["tracemalloc_peak_bytes"] = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    return row


def run_worker(T, fraction, policy, max_repeat_seconds, timeout):
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", str(T), repr(fraction), policy,
           repr(max_repeat_seconds)]
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        return {"T": T, "fraction": fraction, "policy": policy, "status": f"timeout after {timeout:.0f} s"}
    lines = [ln for ln in out.stdout.splitlines() if ln.startswith("{")]
    if out.returncode != 0 or not lines:
        return {"T": T, "fraction": fraction, "policy": policy, "status": "error",
                "stderr": out.stderr.strip().splitlines()[-3:]}
    return json.loads(lines[-1])


# ---- calibration for the skip estimates --------------------------------------------
def work(policy, T, fraction, lay):
    """Inner-loop iterations of the planner's DP for this policy: the time model.

    msm: the planner's own msm_table_work (cells of the pruned exact table:
    2 x (T+1) x (capped quanta + 1)); hsm: T^2 x (capped quanta); ism: binary
    search, T x slots x log2 T."""
    M = free_quanta(T, fraction, lay)
    hq, kq = lay["hq"], lay["kq"]
    if policy == "msm":
        from memopt_bptt._planner import msm_table_work
        # plus T + M: where the optimum is its lower bound there is no table (work 0), only that
        return msm_table_work(T, M, hq, kq) + T + M
    if policy == "hsm":
        if hsm_closed_form(T, fraction, lay):
            return float(T)  # the closed form (Revolve), as plan_quanta chooses
        return float(T) * (T + 1) * (min(M, (T - 1) * hq) + 1)
    if policy == "ism":
        return float(T + 1) * (min(M // kq, T - 1) + 1) * max(1.0, math.log2(T))
    return None


def calibrate(fractions, lay, policies=TABLE_POLICIES):
    """Seconds per unit of work() at T = CALIBRATION_T (doubled until the budget
    fits the working buffers), per (table policy, fraction)."""
    import memopt_bptt as mb
    model = _model()
    rates = {}
    for policy in policies:
        mb.plan(64, budget=1.0, model=model, batch=BATCH, dtype=DTYPE, policy=policy)
        if policy == "msm":
            mb.plan(200, slots=10, alpha=3.5, policy="msm")  # msm's table code too
        for f in fractions:
            T = CALIBRATION_T
            while free_quanta(T, f, lay) < lay["kq"]:
                T *= 2
            runs = []
            while len(runs) < 5 and sum(runs) < 2.0:
                t0 = time.perf_counter()
                mb.plan(T, budget=f, model=model, batch=BATCH, dtype=DTYPE, policy=policy)
                runs.append(time.perf_counter() - t0)
            rates[(policy, f)] = statistics.median(runs) / work(policy, T, f, lay)
    return rates


def fmt_bytes(n):
    if n is None:
        return "-"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024


def fmt_seconds(s):
    return "-" if s is None else (f"{s * 1e3:.2f} ms" if s < 1 else f"{s:.2f} s")


def part1(Ts, fractions, max_seconds, max_gb, lay, policies=POLICIES):
    print(f"Part 1: planning cost, LSTM(in={INPUT}, hidden={HIDDEN}), batch {BATCH}, {DTYPE}; "
          f"limits ~{max_seconds:.0f} s / ~{max_gb:g} GB per configuration")
    rates = calibrate(fractions, lay, [p for p in TABLE_POLICIES if p in policies])
    print(f"  ns per unit of DP work at T={CALIBRATION_T}: "
          + ", ".join(f"{p}@{f:.0%}: {1e9 * v:.2f}" for (p, f), v in rates.items()))
    rows = []
    header = (f"{'T':>8} {'budget':>6} {'policy':>7} {'plan time':>12} {'us/action':>9} {'actions':>9} "
              f"{'forwards':>9} {'DP tables':>10} {'RSS peak':>10} {'tracemalloc':>11}  note")
    print(header)
    print("-" * len(header))
    anchors = {}
    by_key = {}
    for policy in policies:
        for f in fractions:
            skipping = False
            for T in Ts:
                tb = table_bytes(policy, T, f, lay)
                est = None
                fallback = policy == "msm" and msm_falls_back(T, f, lay)
                skip_now = skipping
                if fallback:
                    # msm = the better of ism and revolve here: it costs what they cost
                    parts = [by_key.get((T, f, p), {}) for p in ("ism", "revolve")]
                    est = sum(r.get("seconds") or r.get("estimated_seconds") or 0.0 for r in parts)
                    skip_now = any(r.get("status") == "skipped" for r in parts)
                elif policy in TABLE_POLICIES:
                    est = anchors.get((policy, f), rates[(policy, f)]) * work(policy, T, f, lay)
                if skip_now or (est is not None and est > max_seconds) or tb > max_gb * 2**30:
                    note = f"skipped: estimated {est:.3g} s / {tb / 2**30:.3g} GB" if est is not None else "skipped"
                    if fallback:
                        note += " (msm falls back to ism/revolve here)"
                    row = {"T": T, "fraction": f, "policy": policy, "status": "skipped",
                           "estimated_seconds": est, "table_bytes": tb, "msm_fallback": fallback}
                    print(f"{T:>8} {f:>6.0%} {policy:>7}  {note}")
                    rows.append(row)
                    by_key[(T, f, policy)] = row
                    skipping = not fallback  # a fallback's cost does not grow like the exact table's
                    continue
                row = run_worker(T, f, policy, max_repeat_seconds=min(10.0, max_seconds),
                                 timeout=max(4 * max_seconds, 60))
                row["table_bytes"] = tb
                row["estimated_seconds"] = est
                row["msm_fallback"] = fallback
                rows.append(row)
                by_key[(T, f, policy)] = row
                if row["status"] != "ok":
                    note = row["status"]
                    if "least_fraction" in row:
                        note += f" (needs {row['least_fraction']:.1%} of plain BPTT)"
                    print(f"{T:>8} {f:>6.0%} {policy:>7}  {note}")
                    if row["status"] != "does not fit":
                        skipping = True
                    continue
                if not fallback and policy in TABLE_POLICIES:
                    anchors[(policy, f)] = row["seconds"] / work(policy, T, f, lay)
                note = f"est. {est:.3g} s" if est is not None else ""
                if "warning" in row:
                    note += " fallback: best of ism/revolve (warned)"
                print(f"{T:>8} {f:>6.0%} {policy:>7} {fmt_seconds(row['seconds']):>12} "
                      f"{row['us_per_action']:>9.3f} {row['n_actions']:>9} {row['forward_steps']:>9} "
                      f"{fmt_bytes(tb) if tb else '-':>10} {fmt_bytes(row['rss_peak_bytes']):>10} "
                      f"{fmt_bytes(row.get('tracemalloc_peak_bytes')):>11}  {note}")
    return rows, {f"{p}@{f}": v for (p, f), v in rates.items()}


def part2(fractions, done, lay):
    import memopt_bptt as mb
    T = 1000
    model = _model()
    rho = model.cell.backward_forward_ratio
    policies = ("msm", "hsm", "ism", "revolve", "sqrt")
    print()
    print(f"Part 2: LSTM at T={T} (alpha = {lay['kq']}/{lay['hq']} = {lay['kq'] / lay['hq']:g}, "
          f"b/f = {rho:g}); forward steps and predicted time ratio vs plain BPTT")
    print(f"  plain BPTT keeps {fmt_bytes(full_bytes(T, lay))}; "
          f"{HEADLINE['source']}: {HEADLINE['memory_fraction']:.0%} memory -> ~{HEADLINE['time_ratio']}x time")
    header = f"{'budget':>6} {'bytes':>10} " + " ".join(f"{p:>15}" for p in policies)
    print(header)
    print("-" * len(header))
    rows = []
    for f in fractions:
        cells = []
        for policy in policies:
            prior = done.get((T, f, policy))
            if prior is not None and prior.get("status") == "ok":
                fw, ratio = prior["forward_steps"], prior["time_ratio"]
            else:
                try:
                    s = mb.plan(T, budget=f, model=model, batch=BATCH, dtype=DTYPE, policy=policy)
                    fw, ratio = s.forward_steps, s.time_ratio
                except mb.MemoryBudgetError as exc:
                    fw, ratio = None, None
                    rows.append({"T": T, "fraction": f, "policy": policy, "status": "does not fit",
                                 "least_bytes": exc.least_bytes})
                    cells.append(f"{'needs ' + format(exc.least_bytes / full_bytes(T, lay), '.1%'):>15}")
                    continue
            rows.append({"T": T, "fraction": f, "policy": policy, "status": "ok", "forward_steps": fw,
                         "time_ratio": ratio})
            cells.append(f"{fw:>6} {ratio:>6.3f}x ")
        print(f"{f:>6.0%} {fmt_bytes(math.floor(f * full_bytes(T, lay))):>10} " + " ".join(cells))
    print("  (each cell: forward steps, predicted time ratio; plain BPTT = 1000 steps, 1.000x)")
    return rows


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="T in {10^3, 10^4}, lower limits (a few minutes)")
    ap.add_argument("--max-seconds", type=float, default=None, help="skip configurations estimated slower")
    ap.add_argument("--max-gb", type=float, default=4.0, help="skip configurations whose DP tables are larger")
    ap.add_argument("--out", default=RESULTS, help="JSON output path")
    ap.add_argument("--policies", default=",".join(POLICIES),
                    help="comma-separated policies for part 1 (msm brings ism and revolve, its fallback); "
                         "part 2 is skipped unless all are run")
    ap.add_argument("--T", default=None, help="comma-separated T values for part 1 (default 10^3..10^6)")
    ap.add_argument("--worker", nargs=4, metavar=("T", "FRACTION", "POLICY", "REPEAT_SECONDS"),
                    help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        T, f, policy, rep = args.worker
        print(json.dumps(worker(int(T), float(f), policy, float(rep))))
        return 0
    import memopt_bptt as mb
    import numba
    Ts = (10**3, 10**4) if args.quick else (10**3, 10**4, 10**5, 10**6)
    if args.T:
        Ts = tuple(int(float(x)) for x in args.T.split(","))
    wanted = set(args.policies.split(","))
    if not wanted <= set(POLICIES):
        ap.error(f"--policies: unknown {sorted(wanted - set(POLICIES))}; use {', '.join(POLICIES)}")
    if "msm" in wanted:
        wanted |= {"ism", "revolve"}
    policies = tuple(p for p in POLICIES if p in wanted)
    max_seconds = args.max_seconds if args.max_seconds is not None else (20.0 if args.quick else 120.0)
    fractions = (0.01, 0.05, 0.2)
    lay = _layout()
    started = time.time()
    rows, exps = part1(Ts, fractions, max_seconds, args.max_gb, lay, policies)
    done = {(r["T"], r["fraction"], r["policy"]): r for r in rows}
    table2 = part2((0.01, 0.02, 0.05, 0.1, 0.2), done, lay) if policies == POLICIES else None
    revolve_big = [r for r in rows if r["policy"] == "revolve" and r.get("status") == "ok"]
    if revolve_big:
        r = max(revolve_big, key=lambda r: (r["T"], r["fraction"]))
        print(f"\nrevolve at T={r['T']}, {r['fraction']:.0%}: {r['seconds']:.3f} s for {r['n_actions']} actions "
              f"= {r['us_per_action']:.3f} us per action")
    result = {
        "benchmark": "bench_planner",
        "quick": args.quick,
        "model": {"cell": "LSTM", "input_size": INPUT, "hidden_size": HIDDEN, "output_size": OUTPUT,
                  "batch": BATCH, "dtype": DTYPE, **lay},
        "limits": {"max_seconds": max_seconds, "max_gb": args.max_gb},
        "seconds_per_work_unit_at_calibration": exps,
        "planning": rows,
        "schedules_T1000": table2,
        "headline": HEADLINE,
        "machine": {"python": platform.python_version(), "platform": platform.platform(),
                    "cpus": os.cpu_count(), "numpy": np.__version__, "numba": numba.__version__,
                    "memopt_bptt": mb.__version__},
        "wall_seconds": time.time() - started,
    }
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as fh:
        json.dump(result, fh, indent=1)
    print(f"\nwrote {os.path.relpath(args.out)} ({time.time() - started:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
