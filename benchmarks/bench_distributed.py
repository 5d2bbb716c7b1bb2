"""memopt_bptt.distributed on a LocalCluster against one process: time, overhead and bytes per update.

The workload (issue 17): LSTM input 64 -> hidden 256, readout 16, mse,
float32, T = 1000, a 5% budget (per shard), batch 64; and the same at other
batches, to find where two workers start paying off. Configurations:

* ``process 2 threads``: ``mb.value_and_grad`` on the whole batch in one
  process with the library's defaults (the LSTM's two unit threads share
  every step), BLAS/Numba pinned to 2 threads;
* ``process 1 thread``: the same with ``unit_threads=1, lanes=1`` and 1
  thread, what one worker computes;
* ``cluster 1 worker`` and ``cluster 2 workers``: LocalCluster worker
  processes with one thread each (``unit_threads=1, lanes=1`` in the model),
  ``mbd.train`` with ``shards=2`` (the same shards on both, so the same bits).

Each round runs every configuration once, in turn (A B C D, A B C D, ...):
the two processes are long-lived children that run ``--updates`` gradients
of the whole batch when asked; each cluster runs ``mbd.train`` for
``--updates`` SGD steps on data placed once per call. The first update of a
call is a warm-up and is dropped. Per update:

* seconds: one gradient (``Stats.wall_time`` on a cluster: from sending the
  parameters to the reduced result);
* overhead: ``Stats.overhead``, the update's wall time less the busiest
  worker's shard time (scheduling, transfers, the reduction tree);
* bytes: what the workers sent (their ``transfer_outgoing_bytes_total``:
  parameters fetched from each other, the tree's transfers, the result),
  plus the parameters the client scattered (``sizeof``); and, as a
  cross-check of everything on the wire, the loopback interface's bytes
  (``/proc/net/dev``, both directions of each hop, minus the idle rate
  measured first: other processes on this machine count too).

Then bytes per update at T = 100 against T = 1000 (nothing O(T) moves) and
on 1, 2 and 4 workers (shards = workers) to check the per-worker formula the
README extrapolates to 8 and 64 workers. Final parameters of the 1- and
2-worker runs are compared bit for bit in every round.

    python benchmarks/bench_distributed.py            # ~15 minutes on 2 cores
    python benchmarks/bench_distributed.py --quick    # smoke test: T = 100, batches 8 and 16, 2 rounds

Writes benchmarks/results/bench_distributed.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)
from _memory import THREAD_VARS, pin_threads  # noqa: E402

INPUT, HIDDEN, OUTPUT, DTYPE = 64, 256, 16, "float32"
BUDGET = 0.05
SHARDS = 2


def _parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="T=100 at a 30%% budget, batches 8,16, 2 rounds, 3 updates")
    p.add_argument("--budget", type=float, default=None, help="budget per shard, a fraction (default 0.05)")
    p.add_argument("--T", type=int, default=None, help="sequence length (default 1000)")
    p.add_argument("--batches", default=None, help="comma-separated batch sizes (default 8,16,32,64,128)")
    p.add_argument("--rounds", type=int, default=None, help="rounds of every configuration (default 5)")
    p.add_argument("--updates", type=int, default=None, help="updates per call, the first dropped (default 4)")
    p.add_argument("--out", default=os.path.join(HERE, "results", "bench_distributed.json"))
    p.add_argument("--serve", type=int, default=None, help=argparse.SUPPRESS)  # a process configuration's child
    return p.parse_args(argv)


def make_model(mb, threads: int):
    """One thread: no unit threads, no lanes (what each worker runs); 2: the library's defaults."""
    cell = mb.LSTM(INPUT, HIDDEN)
    if threads == 1:
        return mb.Sequence(cell, output_size=OUTPUT, unit_threads=1, lanes=1)
    return mb.Sequence(cell, output_size=OUTPUT)


def make_data(np, T: int, batch: int):
    rng = np.random.default_rng(batch)
    return (rng.standard_normal((T, batch, INPUT)).astype(DTYPE),
            rng.standard_normal((T, batch, OUTPUT)).astype(DTYPE))


def serve(threads: int) -> None:
    """A long-lived child: for each request line {T, batch, updates} print the gradients' seconds."""
    import numpy as np
    import memopt_bptt as mb
    model = make_model(mb, threads)
    params = model.init_params(seed=0, dtype=DTYPE)
    for line in sys.stdin:
        req = json.loads(line)
        xs, ys = make_data(np, req["T"], req["batch"])
        seconds = []
        for _ in range(req["updates"]):
            t0 = time.perf_counter()
            mb.value_and_grad(model, params, xs, ys, budget=req["budget"])
            seconds.append(time.perf_counter() - t0)
        print(json.dumps({"seconds": seconds[1:]}), flush=True)


class Process:
    """A ``--serve`` child pinned to ``threads`` threads."""

    def __init__(self, threads: int):
        env = dict(os.environ, **{v: str(threads) for v in THREAD_VARS})
        self.proc = subprocess.Popen([sys.executable, os.path.abspath(__file__), "--serve", str(threads)],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env, cwd=ROOT)

    def run(self, T: int, batch: int, updates: int, budget: float) -> dict:
        self.proc.stdin.write(json.dumps({"T": T, "batch": batch, "updates": updates, "budget": budget}) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError("a --serve child ended; run it alone to see why")
        return json.loads(line)

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(timeout=60)


def loopback_bytes() -> int:
    """Bytes received on the loopback interface so far (each byte sent on lo is received once)."""
    with open("/proc/net/dev") as fh:
        for line in fh:
            name, _, rest = line.partition(":")
            if name.strip() == "lo":
                return int(rest.split()[0])
    return 0


def worker_sent(client) -> int:
    return sum(client.run(lambda dask_worker: dask_worker.transfer_outgoing_bytes_total).values())


def cluster_run(mb, mbd, client, model, params, xs, ys, updates: int, idle_rate: float, budget: float,
                shards: int = SHARDS) -> dict:
    """``updates`` training steps; per update after the first: seconds, overhead, bytes."""
    from dask.sizeof import sizeof
    marks = []

    def mark(update, current, history):
        marks.append((time.perf_counter(), worker_sent(client), loopback_bytes()))
    final, history = mbd.train(model, params, (xs, ys), client=client, shards=shards, budget=budget,
                               optimizer=mb.SGD(1e-3), steps=updates, progress=False, callback=mark)
    stats = history["stats"][1:]
    span = marks[-1][0] - marks[0][0]
    n = len(marks) - 1
    return {
        "seconds": [s.wall_time for s in stats],
        "overhead": [s.overhead for s in stats],
        "attempts": [s.attempts for s in stats],
        "workers_sent_bytes": (marks[-1][1] - marks[0][1]) / n,
        "scattered_bytes": sizeof(params),
        "loopback_bytes": (marks[-1][2] - marks[0][2] - idle_rate * span) / n,
        "final": final,
    }


def idle_loopback_rate(seconds: float = 3.0) -> float:
    a = loopback_bytes()
    time.sleep(seconds)
    return (loopback_bytes() - a) / seconds


def median(xs):
    return statistics.median(xs) if xs else float("nan")


def main() -> None:
    args = _parse_args()
    if args.serve is not None:
        pin_threads(args.serve)
        serve(args.serve)
        return
    pin_threads(1)   # this process: the client (the optimizer step) and the LocalClusters' workers
    T = args.T or (100 if args.quick else 1000)
    batches = [int(b) for b in (args.batches or ("8,16" if args.quick else "8,16,32,64,128")).split(",")]
    rounds = args.rounds or (2 if args.quick else 5)
    updates = args.updates or (3 if args.quick else 4)
    budget = args.budget or (0.3 if args.quick else BUDGET)

    import numpy as np
    import distributed
    import memopt_bptt as mb
    import memopt_bptt.distributed as mbd
    from bench_grid import machine_info

    machine = machine_info()
    print(f"CPU: {machine['lscpu_model']} | avx512f: {machine['avx512f']} | L2 {machine['l2']} | "
          f"{machine['cpus']} CPUs | load average {os.getloadavg()}")
    model = make_model(mb, 1)
    params = model.init_params(seed=0, dtype=DTYPE)
    processes = {"process 2 threads": Process(2), "process 1 thread": Process(1)}
    clusters = {}
    for n in (1, 2):
        cluster = distributed.LocalCluster(n_workers=n, threads_per_worker=1, processes=True,
                                           dashboard_address=":0")
        clusters[f"cluster {n} worker{'s' if n > 1 else ''}"] = (cluster, distributed.Client(cluster))
    results: dict = {"machine": machine, "T": T, "budget": budget, "shards": SHARDS, "rounds": rounds,
                     "updates_per_call": updates, "load_before": os.getloadavg(), "batches": {}}
    try:
        idle = idle_loopback_rate()
        results["idle_loopback_bytes_per_s"] = idle
        print(f"idle loopback traffic: {idle:.0f} B/s (subtracted)")
        for batch in batches:
            xs, ys = make_data(np, T, batch)
            for proc in processes.values():   # warm-up: compile, plan
                proc.run(T, batch, 2, budget)
            for _, client in clusters.values():
                cluster_run(mb, mbd, client, model, params, xs, ys, 2, idle, budget)
            rows: dict = {name: {"seconds": [], "overhead": [], "workers_sent_bytes": [], "loopback_bytes": [],
                                 "attempts": []} for name in [*processes, *clusters]}
            same = []
            for r in range(rounds):
                finals = {}
                for name, proc in processes.items():
                    rows[name]["seconds"] += proc.run(T, batch, updates, budget)["seconds"]
                for name, (_, client) in clusters.items():
                    out = cluster_run(mb, mbd, client, model, params, xs, ys, updates, idle, budget)
                    finals[name] = out.pop("final")
                    for key in ("seconds", "overhead", "attempts"):
                        rows[name][key] += out[key]
                    for key in ("workers_sent_bytes", "loopback_bytes"):
                        rows[name][key].append(out[key])
                    rows[name]["scattered_bytes"] = out["scattered_bytes"]
                one, two = finals.values()
                same.append(all(np.array_equal(one[k], two[k]) for k in one))
            summary = {}
            for name, row in rows.items():
                s = median(row["seconds"])
                summary[name] = {"seconds_median": s, "seconds_min": min(row["seconds"]),
                                 "updates_per_s": 1.0 / s, "samples": len(row["seconds"])}
                if name in clusters:
                    summary[name].update({
                        "overhead_median": median(row["overhead"]),
                        "overhead_fraction": median(row["overhead"]) / s,
                        "bytes_per_update": median(row["workers_sent_bytes"]) + row["scattered_bytes"],
                        "workers_sent_bytes": median(row["workers_sent_bytes"]),
                        "scattered_bytes": row["scattered_bytes"],
                        "loopback_bytes": median(row["loopback_bytes"]),
                        "max_attempts": max(row["attempts"]),
                    })
            speedup = summary["cluster 2 workers"]["updates_per_s"] / summary["cluster 1 worker"]["updates_per_s"]
            results["batches"][batch] = {"rows": rows, "summary": summary, "speedup_2_over_1": speedup,
                                         "same_bits_1_vs_2_workers": all(same)}
            print(f"\nbatch {batch}, T {T}, budget {budget:.0%} per shard, {SHARDS} shards on the clusters "
                  f"(medians of {rounds} rounds x {updates - 1} updates)")
            print(f"{'':20s} {'s/update':>9s} {'updates/s':>9s} {'overhead':>14s} {'bytes/update':>14s} "
                  f"{'loopback':>10s}")
            for name, row in summary.items():
                extra = ""
                if "overhead_median" in row:
                    extra = (f" {row['overhead_median'] * 1e3:7.1f} ms {row['overhead_fraction']:4.1%} "
                             f"{row['bytes_per_update'] / 2**20:10.2f} MiB {row['loopback_bytes'] / 2**20:6.2f} MiB")
                print(f"{name:20s} {row['seconds_median']:9.3f} {row['updates_per_s']:9.2f}{extra}")
            print(f"2 workers / 1 worker: {speedup:.2f}x updates per second; final parameters 1 vs 2 workers "
                  f"{'bit-identical' if all(same) else 'DIFFER'}")
    finally:
        for proc in processes.values():
            proc.close()
        for cluster, client in clusters.values():
            client.close()
            cluster.close()

    # bytes only: T = 100 against T, and 1, 2, 4 workers with shards = workers
    small = max(batches) if args.quick else 64
    bytes_rows = []
    for n in (1, 2, 4):
        with distributed.LocalCluster(n_workers=n, threads_per_worker=1, processes=True,
                                      dashboard_address=":0") as cluster, distributed.Client(cluster) as client:
            for steps in sorted({100, T}):
                xs, ys = make_data(np, steps, small)
                cluster_run(mb, mbd, client, model, params, xs, ys, 2, 0.0, 0.3, n)   # warm-up
                out = cluster_run(mb, mbd, client, model, params, xs, ys, 4, 0.0, 0.3, n)
                row = {"workers": n, "shards": n, "T": steps, "batch": small,
                       "bytes_per_update": out["workers_sent_bytes"] + out["scattered_bytes"],
                       "workers_sent_bytes": out["workers_sent_bytes"], "scattered_bytes": out["scattered_bytes"]}
                bytes_rows.append(row)
                print(f"bytes: {n} worker(s), shards {n}, T {steps}: {row['bytes_per_update'] / 2**20:.2f} MiB "
                      f"per update ({row['bytes_per_update'] / out['scattered_bytes']:.2f} copies of the "
                      "parameters)")
    results["bytes"] = bytes_rows
    results["param_bytes"] = int(sum(a.nbytes for a in params.values()))
    results["load_after"] = os.getloadavg()
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as fh:
        json.dump(results, fh, indent=1, default=float)
    print(f"wrote {os.path.relpath(args.out, ROOT)}")


if __name__ == "__main__":
    main()
