"""The speed grid of issue 14: ours against PyTorch CPU, cell by cell and size by size,
plain BPTT and at a 5% memory budget, and the default path against our other paths.

Rows (input 64, readout 16 + mse loss, float32, forward + backward):

    LSTM hidden 64 / 128 / 256 / 512 / 1024 at batch 16, LSTM hidden 256 at batch 1 and 64,
    GRU hidden 64 / 256 / 1024, Elman (tanh) hidden 256 / 1024;
    T = 1000, 500 for hidden 512 and Elman 1024, 200 for hidden 1024 (a call takes ~0.1-1 s).

Configurations of every row, each in its own fresh process (shared MEASURING.md is the method):

    torch plain        nn.LSTM / nn.GRU / nn.RNN + nn.Linear + mse_loss, backward
    torch ckpt         torch.utils.checkpoint(use_reentrant=False) over ceil(sqrt(T))-step
                       segments of the same module (readout and loss inside each segment)
    ours plain         mb.value_and_grad(mb.Sequence(cell, output_size=16), ...)   (the default path)
    ours 5%            the same with budget=0.05 (policy msm)
    ours ... lanes=1,unit_threads=1 / lanes=2 (batch >= 2) / unit_threads=2 (LSTM only: only the
                       LSTM has unit kernels), plain and at 5%: the library's other paths, to check
                       the target "default path within 5% of the fastest configuration of the library".

How it is timed: the processes of one row are started together, then warmed up one after another
(a full-size call; ours compiles or loads its Numba cache), and each measures its own peak memory
of one call right after its warm-up: malloc_trim(0), ``echo 5 > /proc/self/clear_refs``, the call,
VmHWM - VmRSS (benchmarks/_memory.py). Then the timed calls alternate between the processes,
A B C ... C A B ..., one call at a time (the others wait on a pipe, idle), 0.3 s of pause before
every timed call so the previous call's spinning OpenBLAS/OpenMP workers go idle; the order is
shuffled every round (seeded), so no configuration always runs right after the same other one
(the committed results/bench_grid.json was measured with a fixed cyclic order, rotated every
round, before this change). A ratio X/Y is the median over rounds of X's time over Y's time in the same
round; seconds are medians (and minima) over rounds. Every process pins OMP / OPENBLAS / MKL /
NUMBA threads (and torch.set_num_threads) to --threads (default 2).

``--cpu-name NAME`` sets NUMBA_CPU_NAME (and NUMBA_CPU_FEATURES, "" by default, so LLVM takes the
named CPU's own features; Numba would otherwise keep the host's, AVX-512 included) in OUR
processes only: e.g. ``--cpu-name haswell`` runs our jitted code with AVX2 instructions on an
AVX-512 host. Torch and numpy's OpenBLAS still use the host's instructions, and the host's caches
stay what they are, so this exercises only our jitted code's vector width, not another machine.
The first run for a new CPU name compiles every sweep afresh (about a minute each).

``--avx2`` caps every side at AVX2 on an AVX-512 host: our processes get NUMBA_CPU_NAME=haswell,
NUMBA_CPU_FEATURES="" and OPENBLAS_CORETYPE=Haswell (numpy/scipy's OpenBLAS takes its Haswell
kernels), torch's get ATEN_CPU_CAPABILITY=avx2, MKL_ENABLE_INSTRUCTIONS=AVX2 and
ONEDNN_MAX_CPU_ISA=AVX2. The vector width is then the other kind's; the caches stay this host's.

    python benchmarks/bench_grid.py                       # full grid, about 12 minutes on 2 cores
    python benchmarks/bench_grid.py --quick               # smoke test: 4 rows, T=100, 3 rounds
    python benchmarks/bench_grid.py --rows lstm-256,gru-256
    python benchmarks/bench_grid.py --cpu-name haswell    # our code with AVX2 only
    python benchmarks/bench_grid.py --avx2 --out /tmp/grid_avx2.json --plot /tmp/grid_avx2.png
    python benchmarks/bench_grid.py --reuse-memory        # compute only: no fresh pages per call

``--reuse-memory`` sets MALLOC_MMAP_MAX_=0 and a huge MALLOC_TRIM_THRESHOLD_ in every process
(ours and torch's alike): glibc then keeps the memory a call frees and hands it to the next call,
as a training loop's back-to-back calls get it, instead of unmapping it and mapping fresh pages
each call. On a virtual machine whose balloon reports free pages to the host (free page
reporting: memory free for about two seconds is given back), every fresh page of a call costs a
host fault (measured ~8 us per 4 KiB page on an Intel Xeon VM), so the calls of plain BPTT, which
allocate 100-400 MiB, become bimodal for both sides while the processes of a row wait their turn.
The default run measures what a user's one-off call costs; this one the computation alone. Peak
memory is measured the same way in both (malloc_trim(0) first).

Prints lscpu's model name, AVX-512 and L2 first, a table per row as it finishes and the grid at
the end; writes benchmarks/results/bench_grid.json and plots/bench_grid.png (another --out/--plot
for other runs, e.g. a --cpu-name run, so they do not overwrite the host's).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)
from _memory import REUSE_ENV, THREAD_VARS, malloc_trim, peak_of, pin_threads  # noqa: E402

INPUT, OUTPUT, DTYPE = 64, 16, "float32"
BUDGET = 0.05
PAUSE = 0.3
MiB = 2 ** 20

# name: (cell, hidden, batch, T)
ROWS = {
    "lstm-64": ("lstm", 64, 16, 1000),
    "lstm-128": ("lstm", 128, 16, 1000),
    "lstm-256": ("lstm", 256, 16, 1000),
    "lstm-512": ("lstm", 512, 16, 500),
    "lstm-1024": ("lstm", 1024, 16, 200),
    "lstm-256-b1": ("lstm", 256, 1, 1000),
    "lstm-256-b64": ("lstm", 256, 64, 1000),
    "gru-64": ("gru", 64, 16, 1000),
    "gru-256": ("gru", 256, 16, 1000),
    "gru-1024": ("gru", 1024, 16, 200),
    "elman-256": ("elman", 256, 16, 1000),
    "elman-1024": ("elman", 1024, 16, 500),
}
QUICK_ROWS = ("lstm-64", "lstm-256", "gru-256", "elman-256")
QUICK_T = 100

# our explicit configurations: label -> Sequence keyword arguments
VARIANTS = {
    "lanes=1,unit_threads=1": {"lanes": 1, "unit_threads": 1},
    "lanes=2": {"lanes": 2},
    "unit_threads=2": {"unit_threads": 2},
}


def variants_for(cell: str, batch: int) -> list[str]:
    out = ["lanes=1,unit_threads=1"]
    if batch >= 2:
        out.append("lanes=2")
    if cell == "lstm":
        out.append("unit_threads=2")
    return out


def _parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true",
                   help=f"smoke test: rows {','.join(QUICK_ROWS)}, T={QUICK_T}, 3 rounds")
    p.add_argument("--rows", default=None, help=f"comma-separated row names (of {', '.join(ROWS)})")
    p.add_argument("--T", type=int, default=None, help="override every row's T")
    p.add_argument("--reps", type=int, default=None, help="timed rounds (default 5, quick 3)")
    p.add_argument("--threads", type=int, default=2, help="threads for BLAS, OpenMP, Numba and torch (default 2)")
    p.add_argument("--cpu-name", default=None,
                   help="NUMBA_CPU_NAME for our processes only (e.g. haswell: AVX2 code paths)")
    p.add_argument("--cpu-features", default=None,
                   help="NUMBA_CPU_FEATURES for our processes (default with --cpu-name: '', the named CPU's own)")
    p.add_argument("--avx2", action="store_true",
                   help="every side at AVX2: ours compiled for haswell, OpenBLAS, torch's ATen/MKL/oneDNN capped")
    p.add_argument("--no-variants", action="store_true", help="time only the default path of ours")
    p.add_argument("--reuse-memory", action="store_true",
                   help="every process keeps freed memory for its next call (glibc MALLOC_MMAP_MAX_=0, "
                        "MALLOC_TRIM_THRESHOLD_): the computation without fresh page faults (see above)")
    p.add_argument("--out", default=os.path.join(HERE, "results", "bench_grid.json"))
    p.add_argument("--plot", default=os.path.join(ROOT, "plots", "bench_grid.png"))
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)  # JSON spec: one configuration
    return p.parse_args(argv)


# ---- one configuration, in its own process ------------------------------------------------------
def _send(out, record: dict) -> None:
    out.write(json.dumps(record) + "\n")
    out.flush()


def _load(path):
    import numpy as np
    with np.load(path) as z:
        return {k: z[k] for k in z.files}


def _torch_fn(spec, arrays, threads):
    import torch
    torch.set_num_threads(threads)
    cell, H, B, T = spec["cell"], spec["hidden"], spec["batch"], spec["T"]
    if cell == "lstm":
        rnn = torch.nn.LSTM(INPUT, H)
    elif cell == "gru":
        rnn = torch.nn.GRU(INPUT, H)
    else:
        rnn = torch.nn.RNN(INPUT, H, nonlinearity="tanh")
    lin = torch.nn.Linear(H, OUTPUT)
    with torch.no_grad():  # the same weights as ours (PyTorch's layout)
        for ours, theirs in (("cell.weight_ih", "weight_ih_l0"), ("cell.weight_hh", "weight_hh_l0"),
                             ("cell.bias_ih", "bias_ih_l0"), ("cell.bias_hh", "bias_hh_l0")):
            getattr(rnn, theirs).copy_(torch.from_numpy(arrays[ours]))
        lin.weight.copy_(torch.from_numpy(arrays["readout.weight"]))
        lin.bias.copy_(torch.from_numpy(arrays["readout.bias"]))
    x, y = torch.from_numpy(arrays["xs"]), torch.from_numpy(arrays["ys"])
    params = list(rnn.parameters()) + list(lin.parameters())
    seg = math.isqrt(T - 1) + 1 if T > 1 else 1

    def zero_grads():
        for p in params:
            p.grad = None

    if spec["mode"] == "plain":
        def fn():
            zero_grads()
            out, _ = rnn(x)
            loss = torch.nn.functional.mse_loss(lin(out), y)
            loss.backward()
            return float(loss.detach())
        return fn, {"segment": None, "torch": torch.__version__, "cpu_capability": torch.backends.cpu.get_cpu_capability()}

    from torch.utils.checkpoint import checkpoint

    def segment(xa, ya, *state):
        out, new = rnn(xa, state if cell == "lstm" else state[0])
        new = new if cell == "lstm" else (new,)
        return (((lin(out) - ya) ** 2).sum(), *new)

    def fn():
        zero_grads()
        state = tuple(torch.zeros(1, B, H) for _ in range(2 if cell == "lstm" else 1))
        total = 0.0
        for a in range(0, T, seg):
            part, *state = checkpoint(segment, x[a: a + seg], y[a: a + seg], *state, use_reentrant=False)
            total = total + part
        loss = total / (T * B * OUTPUT)
        loss.backward()
        return float(loss.detach())
    return fn, {"segment": seg, "torch": torch.__version__, "cpu_capability": torch.backends.cpu.get_cpu_capability()}


def _ours_fn(spec, arrays):
    import memopt_bptt as mb
    cell, H = spec["cell"], spec["hidden"]
    if cell == "lstm":
        c = mb.LSTM(input_size=INPUT, hidden_size=H)
    elif cell == "gru":
        c = mb.GRU(input_size=INPUT, hidden_size=H)
    else:
        c = mb.Elman(input_size=INPUT, hidden_size=H, nonlinearity="tanh")
    model = mb.Sequence(c, output_size=OUTPUT, loss="mse", **VARIANTS.get(spec["variant"], {}))
    params = {k: arrays[k] for k in model.param_shapes}
    xs, ys = arrays["xs"], arrays["ys"]
    kw = {} if spec["mode"] == "plain" else {"budget": BUDGET}

    def fn():
        loss, _, fn.rep = mb.value_and_grad(model, params, xs, ys, return_report=True, **kw)
        fn.workers = fn.rep.workers  # how this call ran (Report.workers): unit threads may hand over to one
        return loss

    def report():
        fn()
        rep = fn.rep
        return {"forward_steps": int(rep.forward_steps), "planned_bytes": int(rep.planned_bytes),
                "predicted_time_ratio": float(rep.predicted_time_ratio)}

    import numba
    info = {"lane_batches": list(model.lane_batches(spec["batch"])),
            "unit_split": [list(u) for u in model.unit_split(spec["batch"])],
            "describe": model.describe(), "repr": repr(model), "memopt_bptt": mb.__version__,
            "numba_cpu_name": numba.config.CPU_NAME, "numba_cpu_features": numba.config.CPU_FEATURES}
    return fn, report, info


def child(spec: dict, threads: int) -> None:
    out = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)  # anything else printed (warnings, compilers) goes to stderr, not into the protocol
    arrays = _load(spec["data"])
    report = None
    try:
        if spec["side"] == "torch":
            fn, info = _torch_fn(spec, arrays, threads)
        else:
            fn, report, info = _ours_fn(spec, arrays)
    except Exception as exc:  # noqa: BLE001
        _send(out, {"error": f"{type(exc).__name__}: {exc}"})
        return
    _send(out, {"ready": True, "pid": os.getpid(), **info})
    for line in sys.stdin:
        cmd = line.strip()
        try:
            if cmd == "warm":
                t0 = time.perf_counter()
                # ours: compiles (or loads the cache), plans (cached for the next calls), reports; torch: its
                # first checkpoint call imports ~800 modules
                if report is not None:
                    extra = report()
                else:
                    fn()
                    extra = {}
                warm = time.perf_counter() - t0
                peak, wall, loss = peak_of(fn)
                malloc_trim()
                _send(out, {"warm_seconds": warm, "peak_bytes": peak, "peak_call_seconds": wall, "loss": loss,
                            **extra})
            elif cmd == "time":
                time.sleep(PAUSE)
                t0 = time.perf_counter()
                fn()
                _send(out, {"seconds": time.perf_counter() - t0, "workers": getattr(fn, "workers", None),
                            "load": os.getloadavg()[0]})
            elif cmd == "quit":
                return
        except Exception as exc:  # noqa: BLE001  (MemoryBudgetError: a budget this path cannot meet)
            _send(out, {"error": f"{type(exc).__name__}: {exc}"})


# ---- the parent: one row at a time ---------------------------------------------------------------
class Proc:
    def __init__(self, key, spec, env, threads, errdir):
        self.key, self.spec = key, spec
        self.err_path = os.path.join(errdir, key.replace(" ", "_").replace("%", "pct").replace("=", "").replace(",", "_")
                                     + ".err")
        self.err = open(self.err_path, "w")
        self.p = subprocess.Popen([sys.executable, os.path.abspath(__file__), "--child", json.dumps(spec),
                                   "--threads", str(threads)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                  stderr=self.err, text=True, env=env)
        self.info, self.times, self.error = {}, [], None
        self.workers, self.loads = [], []  # per timed call: Report.workers (ours) and the 1-minute load

    def read(self) -> dict:
        line = self.p.stdout.readline()
        if not line:
            self.p.wait()
            self.err.flush()
            with open(self.err_path) as fh:
                tail = fh.read()[-1500:]
            return {"error": f"process ended (rc {self.p.returncode}): {tail}"}
        return json.loads(line)

    def ask(self, cmd: str) -> dict:
        if self.p.poll() is not None:
            return {"error": "process already ended"}
        self.p.stdin.write(cmd + "\n")
        self.p.stdin.flush()
        return self.read()

    def close(self):
        if self.p.poll() is None:
            try:
                self.p.stdin.write("quit\n")
                self.p.stdin.flush()
                self.p.wait(timeout=30)
            except (BrokenPipeError, subprocess.TimeoutExpired):
                self.p.kill()
                self.p.wait()
        self.err.close()


AVX2_ENV = {
    "ours": {"NUMBA_CPU_NAME": "haswell", "NUMBA_CPU_FEATURES": "", "OPENBLAS_CORETYPE": "Haswell"},
    "torch": {"ATEN_CPU_CAPABILITY": "avx2", "MKL_ENABLE_INSTRUCTIONS": "AVX2", "ONEDNN_MAX_CPU_ISA": "AVX2",
              "OPENBLAS_CORETYPE": "Haswell"},
}
"""--avx2: what caps each side's instructions at AVX2 (see the module docstring)."""


def _env(threads, ours, args):
    env = dict(os.environ)
    for var in THREAD_VARS:
        env[var] = str(threads)
    env.pop("NUMBA_CPU_NAME", None)
    env.pop("NUMBA_CPU_FEATURES", None)
    if args.avx2:
        env.update(AVX2_ENV["ours" if ours else "torch"])
    elif ours and args.cpu_name:
        env["NUMBA_CPU_NAME"] = args.cpu_name
        env["NUMBA_CPU_FEATURES"] = "" if args.cpu_features is None else args.cpu_features
    elif ours and args.cpu_features is not None:
        env["NUMBA_CPU_FEATURES"] = args.cpu_features
    for var in REUSE_ENV:
        env.pop(var, None)
    if args.reuse_memory:
        env.update(REUSE_ENV)
    return env


def _write_data(path, cell, H, B, T):
    import numpy as np
    import memopt_bptt as mb
    c = {"lstm": mb.LSTM, "gru": mb.GRU}.get(cell)
    c = c(input_size=INPUT, hidden_size=H) if c else mb.Elman(input_size=INPUT, hidden_size=H, nonlinearity="tanh")
    params = mb.Sequence(c, output_size=OUTPUT).init_params(seed=0, dtype=DTYPE)
    rng = np.random.default_rng(1)
    xs = rng.standard_normal((T, B, INPUT), dtype=np.float32)
    ys = rng.standard_normal((T, B, OUTPUT), dtype=np.float32)
    np.savez(path, xs=xs, ys=ys, **params)


def _pair_ratio(a: list, b: list):
    r = [x / y for x, y in zip(a, b) if x is not None and y is not None]
    return (statistics.median(r), min(r), max(r)) if r else (None, None, None)


def run_row(name, cell, H, B, T, args, reps, tmp):
    data = os.path.join(tmp, f"{name}.npz")
    _write_data(data, cell, H, B, T)
    base = {"cell": cell, "hidden": H, "batch": B, "T": T, "data": data}
    specs = {"torch plain": {**base, "side": "torch", "mode": "plain"},
             "torch ckpt": {**base, "side": "torch", "mode": "ckpt"},
             "ours plain": {**base, "side": "ours", "mode": "plain", "variant": "default"},
             "ours 5%": {**base, "side": "ours", "mode": "budget", "variant": "default"}}
    if not args.no_variants:
        for v in variants_for(cell, B):
            specs[f"ours plain {v}"] = {**base, "side": "ours", "mode": "plain", "variant": v}
            specs[f"ours 5% {v}"] = {**base, "side": "ours", "mode": "budget", "variant": v}
    procs = {k: Proc(k, s, _env(args.threads, s["side"] == "ours", args), args.threads, tmp)
             for k, s in specs.items()}
    try:
        for k, p in procs.items():  # all import together; nothing is timed yet
            msg = p.read()
            if "error" in msg:
                p.error = msg["error"]
            else:
                p.info.update(msg)
        for k, p in procs.items():  # warm-up and peak memory, one process at a time
            if p.error:
                continue
            msg = p.ask("warm")
            if "error" in msg:
                p.error = msg["error"]
            else:
                p.info.update(msg)
        live = [p for p in procs.values() if not p.error]
        for r in range(reps):
            order = list(live)
            random.Random(r).shuffle(order)  # a config's predecessor changes every round
            done = {}
            for p in order:
                msg = p.ask("time")
                done[p.key] = msg.get("seconds")
                p.workers.append(msg.get("workers"))
                p.loads.append(msg.get("load"))
                if "error" in msg and not p.error:
                    p.error = msg["error"]
            for p in procs.values():
                p.times.append(done.get(p.key))
    finally:
        for p in procs.values():
            p.close()
        os.unlink(data)
    return summarize(name, cell, H, B, T, procs)


def summarize(name, cell, H, B, T, procs):
    configs = {}
    for k, p in procs.items():
        ts = [t for t in p.times if t is not None]
        configs[k] = {"spec": {x: p.spec[x] for x in ("side", "mode") + (("variant",) if "variant" in p.spec else ())},
                      "error": p.error, "times": p.times, "workers_per_call": p.workers, "load_per_call": p.loads,
                      "median_seconds": statistics.median(ts) if ts else None,
                      "min_seconds": min(ts) if ts else None,
                      **{x: p.info[x] for x in ("peak_bytes", "peak_call_seconds", "warm_seconds", "loss",
                                                "forward_steps", "planned_bytes", "predicted_time_ratio",
                                                "lane_batches", "unit_split", "describe", "repr", "segment",
                                                "torch", "memopt_bptt", "numba_cpu_name", "numba_cpu_features")
                         if x in p.info}}
    row = {"name": name, "cell": cell, "hidden": H, "batch": B, "T": T, "input": INPUT, "output": OUTPUT,
           "dtype": DTYPE, "configs": configs}

    def times(k):
        return configs[k]["times"] if k in configs and not configs[k]["error"] else []

    for label, ours, theirs in (("plain", "ours plain", "torch plain"), ("5%", "ours 5%", "torch ckpt")):
        med, lo, hi = _pair_ratio(times(ours), times(theirs))
        row[f"ratio_{label}"] = med
        row[f"ratio_{label}_spread"] = [lo, hi]
        po, pt = configs[ours].get("peak_bytes"), configs[theirs].get("peak_bytes")
        row[f"peak_ratio_{label}"] = po / pt if po and pt else None
    default = configs["ours plain"]
    row["default_lane_batches"] = default.get("lane_batches")
    row["default_unit_split"] = default.get("unit_split")
    for label, prefix in (("plain", "ours plain"), ("5%", "ours 5%")):
        alts = {}
        for k in configs:
            if k.startswith(prefix + " "):
                v = k[len(prefix) + 1:]
                med, lo, hi = _pair_ratio(times(k), times(prefix))
                alts[v] = {"over_default": med, "spread": [lo, hi], "error": configs[k]["error"],
                           "median_seconds": configs[k]["median_seconds"]}
        valid = {v: a["over_default"] for v, a in alts.items() if a["over_default"] is not None}
        best = min(valid, key=valid.get) if valid else None
        row[f"variants_{label}"] = alts
        if best is not None and valid[best] < 1.0:
            row[f"fastest_{label}"] = best
            row[f"default_over_fastest_{label}"] = 1.0 / valid[best]
        elif times(prefix):
            row[f"fastest_{label}"] = "default"
            row[f"default_over_fastest_{label}"] = 1.0
        else:  # the default failed (at 5%: a budget its extra buffers do not fit); the fastest that ran
            ran = {k[len(prefix) + 1:]: configs[k]["median_seconds"] for k in configs
                   if k.startswith(prefix + " ") and configs[k]["median_seconds"] is not None}
            row[f"fastest_{label}"] = min(ran, key=ran.get) if ran else None
            row[f"default_over_fastest_{label}"] = None
        row[f"default_failed_{label}"] = bool(configs[prefix]["error"])
    return row


# ---- printing ------------------------------------------------------------------------------------
def _f(v, spec=".3f", na="-"):
    return na if v is None else format(v, spec)


def _mib(v):
    return "-" if v is None else f"{v / MiB:.1f}"


def split_label(row):
    lanes, units = row.get("default_lane_batches"), row.get("default_unit_split")
    if lanes and len(lanes) > 1:
        return f"lanes {'+'.join(map(str, lanes))}"
    if units and len(units) > 1:
        return f"units x{len(units)}"
    return "whole" if lanes else "?"


def print_row(row):
    c = row["configs"]
    print(f"\n{row['name']}: {row['cell']} hidden {row['hidden']}, batch {row['batch']}, T={row['T']}; "
          f"default path: {split_label(row)} (lane_batches {row['default_lane_batches']}, "
          f"unit_split {row['default_unit_split']})")
    print(f"  {'configuration':34s} {'median s':>9s} {'min s':>8s} {'peak MiB':>9s} {'fwd steps':>9s} {'loss':>10s}"
          f"  {'/ default':>9s}")
    for k, v in c.items():
        over = ""
        for label, prefix in (("plain", "ours plain "), ("5%", "ours 5% ")):
            if k.startswith(prefix):
                a = row[f"variants_{label}"].get(k[len(prefix):], {})
                over = _f(a.get("over_default"))
        err = f"  ({v['error'][:90]})" if v["error"] else ""
        print(f"  {k:34s} {_f(v['median_seconds']):>9s} {_f(v['min_seconds']):>8s} {_mib(v.get('peak_bytes')):>9s} "
              f"{_f(v.get('forward_steps'), 'd'):>9s} {_f(v.get('loss'), '.6f'):>10s}  {over:>9s}{err}")
    print(f"  ours/torch plain {_f(row['ratio_plain'])} (memory {_f(row['peak_ratio_plain'], '.2f')}x), "
          f"ours 5% / torch ckpt {_f(row['ratio_5%'])} (memory {_f(row['peak_ratio_5%'], '.2f')}x); "
          f"fastest of ours: plain {row['fastest_plain']} (default {_f(row['default_over_fastest_plain'])}x it), "
          f"5% {row['fastest_5%']} (default {_f(row['default_over_fastest_5%'])}x it)", flush=True)
    # Report.workers of a sweep whose unit shares one thread ran: "one thread ran all ..." / "... thread 0 ran all shares ..."
    alone = {k: sum(1 for w in c.get("workers_per_call") or [] if w and "ran all" in w) for k, c in row["configs"].items()}
    if any(alone.values()):
        print("  unit threads left their shares to one thread (Report.workers) in: "
              + ", ".join(f"{k} {n}/{len(row['configs'][k]['times'])}" for k, n in alone.items() if n), flush=True)


def gmean(vals):
    vals = [v for v in vals if v]
    return math.exp(sum(map(math.log, vals)) / len(vals)) if vals else None


def print_grid(rows, result):
    print("\nours / torch: median of per-round ratios (fresh processes, alternating); memory = peak RSS ratio")
    head = (f"{'row':13s} {'T':>5s} {'default':>12s} | {'ours s':>7s} {'torch s':>7s} {'ratio':>6s} {'mem':>6s} | "
            f"{'ours5% s':>8s} {'ckpt s':>7s} {'ratio':>6s} {'mem':>6s} {'MiB ours/ckpt':>14s}")
    print(head)
    print("-" * len(head))
    for r in rows:
        c = r["configs"]
        print(f"{r['name']:13s} {r['T']:5d} {split_label(r):>12s} | {_f(c['ours plain']['median_seconds']):>7s} "
              f"{_f(c['torch plain']['median_seconds']):>7s} {_f(r['ratio_plain'], '.2f'):>6s} "
              f"{_f(r['peak_ratio_plain'], '.2f'):>6s} | {_f(c['ours 5%']['median_seconds']):>8s} "
              f"{_f(c['torch ckpt']['median_seconds']):>7s} {_f(r['ratio_5%'], '.2f'):>6s} "
              f"{_f(r['peak_ratio_5%'], '.2f'):>6s} "
              f"{_mib(c['ours 5%'].get('peak_bytes')) + '/' + _mib(c['torch ckpt'].get('peak_bytes')):>14s}")
    g = result["geomean"]
    print(f"geometric mean ours/torch: plain {_f(g['plain'])} (target <= 0.85), "
          f"5% vs sqrt(T) checkpointing {_f(g['5%'])} (target <= 0.8)")
    if not any(r.get("variants_plain") for r in rows):
        return
    names = ["lanes=1,unit_threads=1", "lanes=2", "unit_threads=2"]
    short = {"lanes=1,unit_threads=1": "l1,u1", "lanes=2": "lanes2", "unit_threads=2": "units2"}
    print("\nour configurations: time / the default's (median of per-round ratios); default/fastest target <= 1.05")
    head = (f"{'row':13s} {'default':>12s} | " + " ".join(f"{short[n]:>7s}" for n in names)
            + f" {'dflt/best':>9s} | " + " ".join(f"{short[n]:>7s}" for n in names) + f" {'dflt/best':>9s}")
    print(f"{'':28s}{'plain':^36s}   {'5% budget':^36s}")
    print(head)
    print("-" * len(head))
    for r in rows:
        cols = []
        for label in ("plain", "5%"):
            vs = r[f"variants_{label}"]
            cells = []
            for n in names:
                a = vs.get(n)
                cells.append(f"{'':>7s}" if a is None else f"{a['over_default']:7.2f}" if a["over_default"] is not None
                             else f"{'ran':>7s}" if a["median_seconds"] is not None else f"{'n/a':>7s}")
            d = r[f"default_over_fastest_{label}"]
            flag = "*" if d is not None and d > 1.05 else "!" if r.get(f"default_failed_{label}") else " "
            cols.append(" ".join(cells) + f" {_f(d, '.2f', 'failed'):>8s}{flag}")
        print(f"{r['name']:13s} {split_label(r):>12s} | {cols[0]} | {cols[1]}")
    print("n/a: the configuration failed (at 5%: the budget cannot hold its extra buffers, see the JSON); "
          "ran: it ran where the default failed; "
          "*: default more than 5% slower than the fastest; failed!: the default path failed where another ran")


# ---- machine -------------------------------------------------------------------------------------
def machine_info():
    info = {"lscpu_model": None, "avx512f": None, "avx2": None, "l2": None, "l3": None, "cpus": os.cpu_count()}
    try:
        text = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10,
                              env={**os.environ, "LC_ALL": "C"}).stdout
    except (OSError, subprocess.SubprocessError):
        text = ""
    for line in text.splitlines():
        key, _, val = line.partition(":")
        key, val = key.strip(), val.strip()
        if key == "Model name":
            info["lscpu_model"] = val
        elif key == "Flags":
            flags = val.split()
            info["avx512f"] = "avx512f" in flags
            info["avx2"] = "avx2" in flags
        elif key == "L2 cache":
            info["l2"] = val
        elif key == "L3 cache":
            info["l3"] = val
        elif key == "Hypervisor vendor":
            info["hypervisor"] = val
    try:
        import llvmlite.binding as ll
        info["llvm_host_cpu"] = ll.get_host_cpu_name()
    except Exception:  # noqa: BLE001
        pass
    info["OPENBLAS_CORETYPE"] = os.environ.get("OPENBLAS_CORETYPE")  # the lanes' BLAS kernels (see _split)
    return info


def _git_head():
    try:
        return subprocess.run(["git", "-C", ROOT, "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, timeout=10).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


# ---- plot ----------------------------------------------------------------------------------------
def plot(result, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np
    rows = result["rows"]
    names = [r["name"] for r in rows]
    x = np.arange(len(rows))
    fig, axes = plt.subplots(1, 2, figsize=(15, 4.8), gridspec_kw={"width_ratios": [3, 2]})
    ax = axes[0]
    for off, label, color, title in ((-0.2, "plain", "C0", "plain BPTT / torch plain"),
                                     (0.2, "5%", "C1", "5% budget / torch sqrt(T) checkpointing")):
        vals = [r[f"ratio_{label}"] or 0.0 for r in rows]
        lo = [r[f"ratio_{label}"] - r[f"ratio_{label}_spread"][0] if r[f"ratio_{label}"] else 0 for r in rows]
        hi = [r[f"ratio_{label}_spread"][1] - r[f"ratio_{label}"] if r[f"ratio_{label}"] else 0 for r in rows]
        ax.bar(x + off, vals, 0.4, color=color, yerr=[lo, hi], capsize=2, label=title)
    ax.axhline(1.0, color="k", lw=1)
    ax.set_xticks(x, [f"{r['name']}\nT={r['T']}" for r in rows], fontsize=7, rotation=45, ha="right")
    ax.set_ylabel("ours / torch time (median of per-round ratios)")
    m = result["machine"]
    cpu = result["config"]["numba_cpu_name"]
    g = result["geomean"]
    ax.set_title(f"{m['lscpu_model']}, {'AVX-512' if m['avx512f'] else 'AVX2' if m['avx2'] else 'no AVX2'}, "
                 f"L2 {m['l2']}; our code for {cpu or 'the host'}; {result['config']['threads']} threads"
                 f"{' (QUICK)' if result['config']['quick'] else ''}"
                 f"{'; freed memory reused' if result['config'].get('reuse_memory') else ''}"
                 f"\ngeomean plain {_f(g['plain'], '.2f')}, "
                 f"5% {_f(g['5%'], '.2f')}", fontsize=9)
    ax.legend(fontsize=8)
    ax.grid(True, axis="y", alpha=0.3)
    ax = axes[1]
    for off, label, color in ((-0.2, "plain", "C0"), (0.2, "5%", "C1")):
        vals = [r.get(f"default_over_fastest_{label}") or 0.0 for r in rows]
        ax.bar(x + off, vals, 0.4, color=color, label=f"{label}: default / fastest of ours")
    ax.axhline(1.0, color="k", lw=1)
    ax.axhline(1.05, color="r", lw=0.8, ls="--", label="target 1.05")
    ax.set_ylim(0.9, max([1.2] + [r.get(f"default_over_fastest_{lb}") or 0 for r in rows for lb in ("plain", "5%")])
                + 0.05)
    ax.set_xticks(x, names, fontsize=7, rotation=45, ha="right")
    ax.set_title("default path against our other configurations", fontsize=9)
    ax.legend(fontsize=8)
    ax.grid(True, axis="y", alpha=0.3)
    fig.tight_layout()
    os.makedirs(os.path.dirname(path), exist_ok=True)
    fig.savefig(path, dpi=110)


# ---- main ----------------------------------------------------------------------------------------
def main(args):
    quick = args.quick
    reps = args.reps or (3 if quick else 5)
    if args.rows:
        names = [n.strip() for n in args.rows.split(",") if n.strip()]
        unknown = [n for n in names if n not in ROWS]
        if unknown:
            sys.exit(f"unknown rows {unknown}; known: {', '.join(ROWS)}")
    else:
        names = list(QUICK_ROWS if quick else ROWS)
    T_over = args.T or (QUICK_T if quick else None)
    m = machine_info()
    import numba
    import numpy as np
    import memopt_bptt as mb
    try:
        import torch
        torch_version = torch.__version__
        del torch
    except ImportError:
        sys.exit("bench_grid needs PyTorch (CPU) for its other side")
    print(f"CPU: {m['lscpu_model']} | avx512f: {'yes' if m['avx512f'] else 'no'} | avx2: "
          f"{'yes' if m['avx2'] else 'no'} | L2: {m['l2']} | L3: {m['l3']} | {m['cpus']} cpus | "
          f"LLVM host cpu {m.get('llvm_host_cpu')}")
    cpu_note = ("every side capped at AVX2: " + "; ".join(
                    f"{side}: " + " ".join(f"{k}={v!r}" for k, v in env.items()) for side, env in AVX2_ENV.items())
                if args.avx2 else "host" if not args.cpu_name else
                f"NUMBA_CPU_NAME={args.cpu_name} NUMBA_CPU_FEATURES='{'' if args.cpu_features is None else args.cpu_features}'"
                " in our processes only (torch and numpy's BLAS still use the host's instructions)")
    print(f"our jitted code: {cpu_note}")
    print("memory: " + ("every process reuses freed memory (" + " ".join(f"{k}={v}" for k, v in REUSE_ENV.items())
                        + "): computation only" if args.reuse_memory else "glibc's defaults (fresh pages per call)"))
    print(f"threads {args.threads}, rounds {reps}, pause {PAUSE} s, rows {', '.join(names)}"
          f"{f', T={T_over} for every row' if T_over else ''}{' (QUICK: not the grid)' if quick else ''}; "
          f"torch {torch_version}, numba {numba.__version__}, numpy {np.__version__}, memopt_bptt {mb.__version__}, "
          f"load {os.getloadavg()[0]:.2f}", flush=True)
    t_start = time.perf_counter()
    load_start = os.getloadavg()
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench_grid_") as tmp:
        for n in names:
            cell, H, B, T = ROWS[n]
            t0 = time.perf_counter()
            row = run_row(n, cell, H, B, T_over or T, args, reps, tmp)
            row["row_seconds"] = time.perf_counter() - t0
            rows.append(row)
            print_row(row)
            print(f"  ({row['row_seconds']:.0f} s for the row, {time.perf_counter() - t_start:.0f} s so far)",
                  flush=True)
    result = {
        "config": {"quick": quick, "reps": reps, "threads": args.threads, "pause_seconds": PAUSE,
                   "budget_fraction": BUDGET, "input": INPUT, "output": OUTPUT, "dtype": DTYPE,
                   "T_override": T_over, "avx2": args.avx2, "avx2_env": AVX2_ENV if args.avx2 else None,
                   "reuse_memory": args.reuse_memory, "reuse_env": REUSE_ENV if args.reuse_memory else None,
                   "numba_cpu_name": "haswell" if args.avx2 else args.cpu_name,
                   "numba_cpu_features": (None if not args.cpu_name and args.cpu_features is None else
                                          ("" if args.cpu_features is None else args.cpu_features)),
                   "cpu_name_note": cpu_note, "torch": torch_version, "numba": numba.__version__,
                   "numpy": np.__version__, "memopt_bptt": mb.__version__, "python": sys.version.split()[0],
                   "git_head": _git_head(), "loadavg_start": load_start,
                   "method": "each configuration in its own fresh process, started together, warmed up and "
                             "memory-measured one at a time (malloc_trim + clear_refs, VmHWM - VmRSS of one "
                             "call), then timed calls alternating between processes one at a time with a "
                             f"{PAUSE} s pause before each, order shuffled every round (seeded); ratios are medians of "
                             "per-round ratios"},
        "machine": m,
        "rows": rows,
        "geomean": {"plain": gmean([r["ratio_plain"] for r in rows]), "5%": gmean([r["ratio_5%"] for r in rows])},
        "seconds_total": time.perf_counter() - t_start,
    }
    result["config"]["loadavg_end"] = os.getloadavg()
    result["config"]["git_head_end"] = _git_head()  # another session may commit while the grid runs
    if quick:
        result["QUICK"] = (f"quick smoke test: rows {', '.join(names)} at T={T_over}, {reps} rounds; not the grid "
                           "of issue 14")
    print_grid(rows, result)
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as fh:
        json.dump(result, fh, indent=1)
    plot(result, args.plot)
    print(f"\nwrote {os.path.relpath(args.out)} and {os.path.relpath(args.plot)} ({result['seconds_total']:.0f} s)")


if __name__ == "__main__":
    ARGS = _parse_args()
    pin_threads(ARGS.threads)  # before numpy, numba or torch load their pools (children: and NUMBA_CPU_*)
    if ARGS.child is not None:
        child(json.loads(ARGS.child), ARGS.threads)
    else:
        main(ARGS)
