"""memopt_bptt.torch.scan_loss against PyTorch's own checkpointing, side by side in one run.

nn.LSTMCell input 64, hidden 256, batch 16, float32, a per-step readout
nn.Linear(256, 16) + mse, T = 1000, torch.set_num_threads(2) with every
BLAS/OpenMP pool pinned to 2 threads (the shared MEASURING.md is the method).
Methods:

* plain: the unrolled loop, every step's graph kept, stack(losses).mean();
* ours 5%: mbt.scan_loss(cell, loss_fn, ..., budget="5%") (policy msm): 5% of
  the plain loop's activation memory as the scan measures it (a kept step per
  time step, the initial state, the sweep's working states);
* ours @ckpt: scan_loss with the budget at which its measured peak equals
  the smaller of the two torch checkpointings' (their peak minus what ours
  measured beyond its budget at 5%: gradients, losses, the schedule);
* ckpt sqrt(T): torch.utils.checkpoint (use_reentrant=False) around each
  ceil(sqrt(T))-step segment of the loop, readout and loss inside;
* ckpt_sequential: torch.utils.checkpoint.checkpoint_sequential over the T
  steps as functions of (h, c, loss sum), ceil(sqrt(T))-step segments.

(a) Memory, one fresh process per method: after a warm-up (the same call
    once: imports, first-call work, ours' plan, which it then caches),
    malloc_trim + VmHWM - VmRSS around one forward+backward
    (benchmarks/_memory.py); then glibc's heap in use at its peak, sampled
    by a thread during another call (what the call holds, without the
    allocator's fragmentation); ours also reports its tracked peak
    (ScanStats, from a last call). The recomputation count is the step's calls
    beyond T, from a counting wrapper.
(b) Time, one process: the methods interleaved in a rotating order, after a
    warm-up round, each run preceded by a short pause; medians, and the
    median over rounds of each method's time over plain's in the same round,
    for wall time and for the process's CPU time (which other jobs on a
    loaded machine disturb less; with 2 threads it includes the pool's
    spinning).
(c) Flat in T, one fresh process each: ours at a fixed byte budget (5% of
    the plain loop's memory at T=1000) and ckpt sqrt(T) at T = 1000, 3000,
    10000 (plain at 1000 and 3000); resident peaks only (sampling the heap
    of a checkpointed T = 10^4 run took minutes).

    python benchmarks/bench_torch.py              # several minutes
    python benchmarks/bench_torch.py --quick      # T=200, 3 rounds, (c) at 200 and 600

Prints tables; writes benchmarks/results/bench_torch.json and plots/bench_torch.png.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


def _parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="T=200, 3 rounds; (c) at T=200 and 600")
    p.add_argument("--threads", type=int, default=2, help="threads for torch and the BLAS pools (default 2)")
    p.add_argument("--rounds", type=int, default=None, help="timed rounds (default 7, quick 3)")
    p.add_argument("--skip-flat", action="store_true", help="skip (c)")
    p.add_argument("--out", default=os.path.join(HERE, "results", "bench_torch.json"))
    p.add_argument("--plot", default=os.path.join(ROOT, "plots", "bench_torch.png"))
    p.add_argument("--worker", nargs="+", default=None, help=argparse.SUPPRESS)
    return p.parse_args(argv)


ARGS = _parse_args() if __name__ == "__main__" else None
sys.path.insert(0, HERE)
from _memory import emit, peak_of, pin_threads, run_worker  # noqa: E402

pin_threads(ARGS.threads if ARGS else 2)  # before torch loads its pools

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch.utils.checkpoint import checkpoint, checkpoint_sequential  # noqa: E402

import memopt_bptt.torch as mbt  # noqa: E402

INPUT, HIDDEN, OUTPUT, BATCH = 64, 256, 16, 16
FRACTION = "5%"
PAUSE = 0.2
MiB = 2 ** 20
METHODS = ("plain", "ours 5%", "ours @ckpt", "ckpt sqrt(T)", "ckpt_sequential")


class Problem:
    """The cell, readout and data; ``calls`` counts the step's calls."""

    def __init__(self, T: int, seed: int = 0):
        torch.manual_seed(seed)
        self.T = T
        self.cell = torch.nn.LSTMCell(INPUT, HIDDEN)
        self.head = torch.nn.Linear(HIDDEN, OUTPUT)
        self.xs = torch.randn(T, BATCH, INPUT)
        self.ys = torch.randn(T, BATCH, OUTPUT)
        self.state0 = (torch.zeros(BATCH, HIDDEN), torch.zeros(BATCH, HIDDEN))
        self.calls = 0

    def step(self, x, state):
        self.calls += 1
        return self.cell(x, state)

    def loss_fn(self, state, y):
        return F.mse_loss(self.head(state[0]), y)

    def zero_grad(self):
        self.cell.zero_grad(set_to_none=True)
        self.head.zero_grad(set_to_none=True)


def segment_length(T: int) -> int:
    return math.ceil(math.sqrt(T))


def run_plain(p: Problem, budget=None, stats=None):
    state, losses = p.state0, []
    for t in range(p.T):
        state = p.step(p.xs[t], state)
        losses.append(p.loss_fn(state, p.ys[t]))
    torch.stack(losses).mean().backward()


def run_ours(p: Problem, budget, stats=None):
    mbt.scan_loss(p.step, p.loss_fn, p.state0, p.xs, p.ys, budget=budget, stats=stats).backward()


def run_ckpt(p: Problem, budget=None, stats=None):
    def segment(h, c, lo, hi):
        state, total = (h, c), torch.zeros(())
        for t in range(lo, hi):
            state = p.step(p.xs[t], state)
            total = total + p.loss_fn(state, p.ys[t])
        return state[0], state[1], total

    k = segment_length(p.T)
    h, c = p.state0
    total = torch.zeros(())
    for lo in range(0, p.T, k):
        h, c, part = checkpoint(segment, h, c, lo, min(lo + k, p.T), use_reentrant=False)
        total = total + part
    (total / p.T).backward()


def run_ckpt_sequential(p: Problem, budget=None, stats=None):
    def step_fn(t):
        def f(carry):
            h, c, total = carry
            h, c = p.step(p.xs[t], (h, c))
            return h, c, total + p.loss_fn((h, c), p.ys[t])
        return f

    functions = [step_fn(t) for t in range(p.T)]
    segments = math.ceil(p.T / segment_length(p.T))
    h, c, total = checkpoint_sequential(functions, segments, (*p.state0, torch.zeros(())), use_reentrant=False)
    (total / p.T).backward()


RUNS = {"plain": run_plain, "ours": run_ours, "ckpt sqrt(T)": run_ckpt, "ckpt_sequential": run_ckpt_sequential}


def runner(method: str):
    return RUNS["ours" if method.startswith("ours") else method]


# ---- workers (fresh processes) -------------------------------------------------------------------

class HeapSampler:
    """The peak of glibc's heap in use (mallinfo2: small blocks + mmapped ones) during a call, sampled by a
    thread every millisecond (mallinfo2 walks the heap under its lock: sampling every 20 us slowed a
    checkpointed T = 10^4 run several-fold); ``peak`` is None where mallinfo2 is missing. Beside the
    resident peak it separates what the call holds from the allocator's fragmentation."""

    def __init__(self):
        import ctypes
        import threading

        class MallInfo2(ctypes.Structure):
            _fields_ = [(name, ctypes.c_size_t) for name in ("arena", "ordblks", "smblks", "hblks", "hblkhd",
                                                              "usmblks", "fsmblks", "uordblks", "fordblks",
                                                              "keepcost")]
        try:
            self._mallinfo2 = ctypes.CDLL("libc.so.6").mallinfo2
            self._mallinfo2.restype = MallInfo2
        except (OSError, AttributeError):
            self._mallinfo2 = None
        self._threading = threading
        self.peak = None

    def _heap(self) -> int:
        info = self._mallinfo2()
        return info.uordblks + info.hblkhd

    def __call__(self, fn):
        if self._mallinfo2 is None:
            return fn()
        start, top, done = self._heap(), [0], [False]

        def sample():
            while not done[0]:
                top[0] = max(top[0], self._heap())
                time.sleep(1e-3)

        thread = self._threading.Thread(target=sample, daemon=True)
        thread.start()
        try:
            return fn()
        finally:
            done[0] = True
            thread.join()
            self.peak = max(top[0], self._heap()) - start


def worker(args: list[str]) -> None:
    torch.set_num_threads(ARGS.threads)
    kind = args[0]
    if kind == "mem":
        method, T, budget, heap = args[1], int(args[2]), args[3], args[4] == "heap"
        budget = int(budget) if budget.isdigit() else None if budget == "-" else budget
        run = runner(method)
        p = Problem(T)
        run(p, budget)    # warm-up, the same call: imports, first-call work, ours' plan (then cached)
        p.zero_grad()
        p.calls = 0
        peak, wall, _ = peak_of(lambda: run(p, budget))
        record = {"method": method, "T": T, "peak_bytes": peak, "seconds": wall, "calls": p.calls,
                  "recomputed": p.calls - T}
        record["heap_peak_bytes"] = None
        if heap:
            sampler = HeapSampler()        # a second call, sampled: the heap in use, fragmentation apart
            p.zero_grad()
            sampler(lambda: run(p, budget))
            record["heap_peak_bytes"] = sampler.peak
        if budget is not None:
            stats = mbt.ScanStats()
            p.zero_grad()
            run(p, budget, stats)
            record.update(budget_bytes=stats.budget_bytes, tracked_peak_bytes=stats.peak_bytes,
                          forward_steps=stats.forward_steps, internal_bytes=stats.internal_bytes,
                          state_bytes=stats.state_bytes, schedule=repr(stats.schedule),
                          predicted_time_ratio=stats.schedule.time_ratio)
        emit(record)
    elif kind == "time":
        T, rounds, same = int(args[1]), int(args[2]), int(args[3])
        p = Problem(T)
        budgets = {"ours 5%": FRACTION, "ours @ckpt": same}
        times: dict[str, list[float]] = {m: [] for m in METHODS}
        cpu: dict[str, list[float]] = {m: [] for m in METHODS}
        calls: dict[str, int] = {}
        for r in range(rounds + 1):      # round 0 warms up
            order = METHODS[r % len(METHODS):] + METHODS[:r % len(METHODS)]
            for method in order:
                p.zero_grad()
                time.sleep(PAUSE)
                p.calls = 0
                c0, t0 = time.process_time(), time.perf_counter()
                runner(method)(p, budgets.get(method))
                if r:
                    times[method].append(time.perf_counter() - t0)
                    cpu[method].append(time.process_time() - c0)
                calls[method] = p.calls
        emit({"T": T, "times": times, "cpu": cpu, "calls": calls})
    else:
        raise SystemExit(f"unknown worker {args}")


# ---- the run -------------------------------------------------------------------------------------

def measure_memory(method: str, T: int, budget, heap: bool = True) -> dict:
    """One fresh process's memory record; ``heap=False`` skips the sampled heap (part (c): mallinfo2 walks a
    heap of O(T) chunks, which at T = 10^4 made the checkpointed run minutes long)."""
    arg = "-" if budget is None else str(budget)
    return run_worker(__file__, ["mem", method, str(T), arg, "heap" if heap else "-", "--threads",
                                 str(ARGS.threads)])


def main() -> dict:
    from bench_grid import machine_info

    T = 200 if ARGS.quick else 1000
    rounds = ARGS.rounds or (3 if ARGS.quick else 7)
    machine = machine_info()
    result = {"config": {"input": INPUT, "hidden": HIDDEN, "output": OUTPUT, "batch": BATCH, "dtype": "float32",
                         "T": T, "threads": ARGS.threads, "rounds": rounds, "segment": segment_length(T),
                         "torch": torch.__version__},
              "machine": machine, "load_before": os.getloadavg()}
    print(f"CPU: {machine['lscpu_model']} | avx512f: {machine['avx512f']} | L2 {machine['l2']} | "
          f"{machine['cpus']} CPUs | load average {os.getloadavg()[0]:.2f} | torch {torch.__version__}")

    # (a) memory, one fresh process per method
    memory = {}
    for method in ("plain", "ours 5%", "ckpt sqrt(T)", "ckpt_sequential"):
        memory[method] = measure_memory(method, T, FRACTION if method == "ours 5%" else None)
        print(f"  memory {method}: {memory[method]['peak_bytes'] / MiB:.1f} MiB", flush=True)
    ours = memory["ours 5%"]
    # "at no more memory" by both measures: the budget that puts ours' resident peak, and its heap peak,
    # at the lesser of torch's two checkpointings' (what ours holds beyond its budget: gradients, the T
    # losses, the schedule, the allocator's slack, as measured at 5%)
    same = None
    for key in ("peak_bytes", "heap_peak_bytes"):
        if ours.get(key) is None:
            continue
        beyond = ours[key] - ours["budget_bytes"]
        torch_least = min(memory["ckpt sqrt(T)"][key], memory["ckpt_sequential"][key])
        same = torch_least - beyond if same is None else min(same, torch_least - beyond)
    same = max(same, ours["budget_bytes"])
    memory["ours @ckpt"] = measure_memory("ours @ckpt", T, same)
    print(f"  memory ours @ckpt (budget {same / MiB:.2f} MiB): {memory['ours @ckpt']['peak_bytes'] / MiB:.1f} MiB",
          flush=True)

    # (b) time, interleaved in one process
    timing = run_worker(__file__, ["time", str(T), str(rounds), str(same), "--threads", str(ARGS.threads)])
    times, cpu = timing["times"], timing["cpu"]
    rows = []
    for method in METHODS:
        ratios = [a / b for a, b in zip(times[method], times["plain"])]
        cpu_ratios = [a / b for a, b in zip(cpu[method], cpu["plain"])]
        mem = memory[method]
        rows.append({"method": method, "median_seconds": statistics.median(times[method]),
                     "min_seconds": min(times[method]), "seconds": times[method],
                     "ratio_to_plain": statistics.median(ratios), "cpu_seconds": cpu[method],
                     "median_cpu_seconds": statistics.median(cpu[method]),
                     "cpu_ratio_to_plain": statistics.median(cpu_ratios), "peak_bytes": mem["peak_bytes"],
                     "recomputed_steps": timing["calls"][method] - T,
                     "budget_bytes": mem.get("budget_bytes"), "tracked_peak_bytes": mem.get("tracked_peak_bytes"),
                     "predicted_time_ratio": mem.get("predicted_time_ratio"),
                     "heap_peak_bytes": mem.get("heap_peak_bytes")})
    result["rows"] = rows
    result["memory_workers"] = memory

    print(f"\nLSTMCell {INPUT}->{HIDDEN}, batch {BATCH}, float32, T={T}, readout {OUTPUT} + mse, "
          f"{ARGS.threads} threads; medians of {rounds} interleaved rounds")
    print(f"{'method':<16} {'seconds':>8} {'x plain':>8} {'cpu s':>7} {'x plain':>8} {'peak MiB':>9} "
          f"{'heap MiB':>9} {'budget MiB':>11} {'tracked MiB':>12} {'recomputed':>11}")
    for row in rows:
        budget = "" if row["budget_bytes"] is None else f"{row['budget_bytes'] / MiB:.2f}"
        tracked = "" if row["tracked_peak_bytes"] is None else f"{row['tracked_peak_bytes'] / MiB:.2f}"
        print(f"{row['method']:<16} {row['median_seconds']:8.3f} {row['ratio_to_plain']:8.2f} "
              f"{row['median_cpu_seconds']:7.3f} {row['cpu_ratio_to_plain']:8.2f} {row['peak_bytes'] / MiB:9.1f} "
              f"{_mib(row['heap_peak_bytes']):>9} {budget:>11} {tracked:>12} {row['recomputed_steps']:11d}")
    print("seconds: wall time; cpu s: the process's CPU time (both threads), less disturbed by other jobs "
          "on a loaded machine; x plain: median over rounds of the ratio to plain's run in the same round; "
          "peak: resident memory above the start; heap: glibc's heap in use at its sampled peak (what the "
          "call holds; the rest of peak is the allocator's fragmentation)")
    print(f"ours' schedule at 5%: {ours['schedule']}; kept step {ours['internal_bytes']} bytes, state "
          f"{ours['state_bytes']} bytes (alpha {ours['internal_bytes'] / ours['state_bytes']:.2f}); predicted "
          f"time ratio {ours['predicted_time_ratio']:.3f} (b/f = 2)")

    # (c) flat in T
    if not ARGS.skip_flat:
        fixed = ours["budget_bytes"]
        Ts = (200, 600) if ARGS.quick else (1000, 3000, 10000)
        flat = []
        for t in Ts:
            for method, budget in (("ours", fixed), ("ckpt sqrt(T)", None), ("plain", None)):
                if method == "plain" and t > 3000:
                    continue
                rec = measure_memory(method, t, budget, heap=False)
                flat.append(rec)
                print(f"  T={t:>6} {method:<13} peak {rec['peak_bytes'] / MiB:8.1f} MiB"
                      + (f" (budget {budget / MiB:.2f} MiB, tracked {rec['tracked_peak_bytes'] / MiB:.2f} MiB)"
                         if budget else ""), flush=True)
        result["flat_in_T"] = {"budget_bytes": fixed, "rows": flat}

    result["load_after"] = os.getloadavg()
    print(f"load average before {result['load_before'][0]:.2f}, after {result['load_after'][0]:.2f}")
    os.makedirs(os.path.dirname(ARGS.out), exist_ok=True)
    with open(ARGS.out, "w", encoding="utf-8") as fh:
        json.dump(result, fh, indent=2)
    print(f"wrote {os.path.relpath(ARGS.out, ROOT)}")
    plot(result)
    return result


def _mib(n) -> str:
    return "" if n is None else f"{n / MiB:.1f}"


def plot(result: dict) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = result["rows"]
    names = [r["method"] for r in rows]
    fig, axes = plt.subplots(1, 3 if "flat_in_T" in result else 2, figsize=(15, 4.2))
    axes[0].bar(names, [r["median_seconds"] for r in rows], color="tab:blue")
    axes[0].set_ylabel("seconds (median)")
    axes[0].set_title(f"forward + backward, T={result['config']['T']}")
    axes[1].bar(names, [r["peak_bytes"] / MiB for r in rows], color="tab:orange")
    axes[1].set_yscale("log")
    axes[1].set_ylabel("peak memory, MiB (log)")
    axes[1].set_title("peak RSS above the start (fresh process each)")
    for ax in axes[:2]:
        ax.tick_params(axis="x", rotation=25)
    if "flat_in_T" in result:
        by_method: dict[str, list] = {}
        for rec in result["flat_in_T"]["rows"]:
            by_method.setdefault(rec["method"], []).append((rec["T"], rec["peak_bytes"] / MiB))
        for method, points in by_method.items():
            xs, ys = zip(*sorted(points))
            label = f"ours, {result['flat_in_T']['budget_bytes'] / MiB:.1f} MiB budget" if method == "ours" else method
            axes[2].plot(xs, ys, marker="o", label=label)
        axes[2].set_xscale("log")
        axes[2].set_yscale("log")
        axes[2].set_xlabel("T")
        axes[2].set_ylabel("peak memory, MiB (log)")
        axes[2].set_title("peak memory against T")
        axes[2].legend()
    m = result["machine"]
    fig.suptitle(f"memopt_bptt.torch vs torch checkpointing: LSTMCell 64->256, batch 16, float32, "
                 f"{result['config']['threads']} threads; {m['lscpu_model']}, "
                 f"{'AVX-512' if m['avx512f'] else 'AVX2'}, {m['cpus']} CPUs")
    fig.tight_layout()
    os.makedirs(os.path.dirname(ARGS.plot), exist_ok=True)
    fig.savefig(ARGS.plot, dpi=110)
    print(f"wrote {os.path.relpath(ARGS.plot, ROOT)}")


if __name__ == "__main__":
    if ARGS.worker:
        worker(ARGS.worker)
    else:
        main()
