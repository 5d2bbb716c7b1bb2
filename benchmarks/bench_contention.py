"""The default path on a machine other work is using: time against one quiet CPU, and a soak.

LSTM input 64, hidden 256, readout 16 + mse, batch 16, float32, T=2000, msm
at 5% of plain BPTT's memory (issue 15's case). Every configuration runs in
a fresh process, beside ``--hogs`` busy-looping processes started by this
script (0: a quiet machine) and stopped after it:

(a) Time of one gradient (median of 3 after a warm-up, and how the workers
    ran in an untimed call after them, ``Report.workers``): the default path
    (unit threads here), ``unit_threads=1`` (BLAS threads), and
    ``unit_threads=1`` pinned to one CPU (``os.sched_setaffinity``), with 0,
    1 and 2 hogs; each over the best single-CPU time (pinned, no hog). The
    target: the default within 1.5x of that under a competing load.
(b) ``--soak``: 1000 updates of ``mb.train`` (T=200, 5%) for one lane,
    lanes and unit threads, each beside the hogs: seconds, RSS after every
    100 updates (flat: no growth) and that it finished (a timeout would say
    it hung).

    python benchmarks/bench_contention.py            # (a) with 0, 1 and 2 hogs
    python benchmarks/bench_contention.py --soak     # and (b)

Prints tables; writes benchmarks/results/bench_contention.json. The load
average at the start is printed: other work on the machine is a hog too.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import statistics
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from _memory import emit, run_worker, status_bytes  # noqa: E402

T, B, INPUT, HIDDEN, OUTPUT = 2000, 16, 64, 256, 16
CONFIGS = {"default": {}, "unit_threads=1": {"unit_threads": 1},
           "one CPU, unit_threads=1": {"unit_threads": 1, "pin": True}}
SOAK = {"one lane": {"lanes": 1, "unit_threads": 1}, "lanes": {"lanes": 2}, "unit threads": {"unit_threads": 2}}


def _hog() -> None:  # pragma: no cover - a busy loop in a child process
    x = 0
    while True:
        x += 1


def _data(T_, seed=0):
    import numpy as np
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((T_, B, INPUT)).astype(np.float32),
            rng.standard_normal((T_, B, OUTPUT)).astype(np.float32))


def worker_time(spec: dict) -> dict:
    if spec.pop("pin", False):
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})
    import memopt_bptt as mb
    model = mb.Sequence(mb.LSTM(INPUT, HIDDEN), output_size=OUTPUT, **spec)
    params = model.init_params(dtype="float32")
    xs, ys = _data(T)
    schedule = mb.plan(T, budget=0.05, model=model, batch=B, dtype="float32")
    mb.value_and_grad(model, params, xs[:50], ys[:50], budget=0.5)
    mb.value_and_grad(model, params, xs, ys, schedule=schedule)  # warm-up
    times = []
    for _ in range(3):
        t0 = time.perf_counter()
        mb.value_and_grad(model, params, xs, ys, schedule=schedule)
        times.append(time.perf_counter() - t0)
    *_, report = mb.value_and_grad(model, params, xs, ys, schedule=schedule, return_report=True)  # untimed
    return {"times": times, "median": statistics.median(times), "split": model.describe_split(B),
            "workers": report.workers}


def worker_soak(spec: dict) -> dict:
    import memopt_bptt as mb
    model = mb.Sequence(mb.LSTM(INPUT, HIDDEN if spec.get("unit_threads", 1) > 1 else 64), output_size=OUTPUT,
                        **spec)
    params = model.init_params(dtype="float32")
    xs, ys = _data(200)
    rss = []

    def every(update, params, history):
        if update % 100 == 99:
            rss.append(status_bytes().get("VmRSS"))

    t0 = time.perf_counter()
    _, history = mb.train(model, params, (xs, ys), steps=1000, optimizer=mb.SGD(1e-3), budget=0.05,
                          progress=False, callback=every)
    return {"seconds": time.perf_counter() - t0, "updates": history["updates"], "rss": rss,
            "split": model.describe_split(B)}


def main(args) -> None:
    print(f"bench_contention: {os.cpu_count()} cpus, usable {len(os.sched_getaffinity(0))}, load at start "
          f"{os.getloadavg()[0]:.1f}", flush=True)
    result = {"load_at_start": os.getloadavg()[0], "a": {}, "b": {}}
    script = os.path.abspath(__file__)
    out = os.path.join(HERE, "results", "bench_contention.json")
    os.makedirs(os.path.dirname(out), exist_ok=True)

    def save():  # after every record: a run stopped early (a soak can take very long beside hogs) keeps them
        with open(out, "w") as fh:
            json.dump(result, fh, indent=1)
    for hogs in args.hogs:
        procs = [multiprocessing.Process(target=_hog, daemon=True) for _ in range(hogs)]
        for p in procs:
            p.start()
        try:
            for name, spec in CONFIGS.items():
                rec = run_worker(script, ["time", json.dumps(spec)], timeout=1800)
                result["a"][f"{name}, {hogs} hogs"] = rec
                save()
                print(f"  {hogs} hogs  {name:>24}: {rec['median']:7.2f} s  {[round(t, 2) for t in rec['times']]}"
                      f"  ({rec['workers']}, an untimed call after)", flush=True)
            if args.soak:
                for name, spec in SOAK.items():
                    rec = run_worker(script, ["soak", json.dumps(spec)], timeout=3600)
                    result["b"][f"{name}, {hogs} hogs"] = rec
                    save()
                    mib = [round(r / 2**20, 1) for r in rec["rss"] if r]
                    print(f"  soak {hogs} hogs {name:>12}: {rec['updates']} updates in {rec['seconds']:.1f} s, "
                          f"RSS MiB every 100 updates {mib}", flush=True)
        finally:
            for p in procs:
                p.terminate()
                p.join()
    base = result["a"].get("one CPU, unit_threads=1, 0 hogs", {}).get("median")
    if base:
        print(f"\nover the best single-CPU time ({base:.2f} s, pinned, no hog):")
        for key, rec in result["a"].items():
            rec["over_single_cpu"] = rec["median"] / base
            print(f"  {key:>36}: {rec['over_single_cpu']:.2f}x")
    save()
    print(f"wrote {os.path.relpath(out)}")


if __name__ == "__main__":
    if len(sys.argv) > 2 and sys.argv[1] == "--worker":
        kind, spec = sys.argv[2], json.loads(sys.argv[3])
        emit(worker_time(spec) if kind == "time" else worker_soak(spec))
    else:
        p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
        p.add_argument("--hogs", type=lambda s: [int(v) for v in s.split(",")], default=[0, 1, 2],
                       help="numbers of busy-looping processes beside each configuration (default 0,1,2)")
        p.add_argument("--soak", action="store_true", help="also part (b), 1000 updates per configuration")
        main(p.parse_args())
