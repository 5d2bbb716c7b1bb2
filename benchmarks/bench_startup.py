"""Time to the first gradient in a fresh process, with an empty and a warm Numba cache.

What it measures (see shared MEASURING.md for the method):

1. For every built-in cell (LSTM, GRU, Elman tanh, Elman relu, Jordan; input
   64, hidden 256, readout 16 + mse, batch 16, T=1000, float32) and for LSTM
   hidden 64 (two lanes at batch 16) a fresh ``python -c`` child that times,
   inside itself: ``import memopt_bptt``; the first ``mb.value_and_grad`` (plain
   BPTT, no budget), from just before the call to its return; a second call
   with a 5% budget (``budget=0.05``, policy msm: the planner's own Numba
   functions); a third, plain again (the steady time, nothing left to load).
   The parent times the whole process. Each row says which split
   value_and_grad uses (``model.lane_batches`` / ``model.unit_split``): whole
   batch, lanes or unit threads; LSTM hidden 256 is the unit-thread row.
   A "demo-like" row does the same for the demo's model (LSTM 2 -> 32 -> 1,
   batch 32, T=1000) with its 5% budget first: the demo's first update.
2. Empty cache: NUMBA_CACHE_DIR is a fresh temporary directory, so every
   Numba function the call reaches (cells, planner, sweep) compiles. Warm
   cache: the same child again with the same directory (the cold run fills
   it). The parent counts the files a warm run writes into the cache: a
   non-zero count means something recompiled (e.g. a source file changed
   under the run: other people edit this tree).
3. ``memopt-bptt demo`` as it is, as a whole, with an empty and a warm cache:
   its wall time, when each line of its output arrived, and its first update,
   counted from the process's start (import, planning and compiling
   included): the demo's own "first update was done X s after the demo
   started" plus the process's wall time outside the demo's clock (Python
   and the import), or its progress bar where one shows (a terminal).
4. Where a warm first call's time goes (the first configuration, LSTM hidden
   256 in a full run, warm cache): import
   (the largest modules by ``python -X importtime``), the first ``mb.plan``
   (Numba's first cache load in the process), building the sweep, the first
   and the second plain ``value_and_grad``.

Cold runs are one per configuration (each is ~10^1 s of compiling), warm ones
the median of ``--warm-reps``; configurations alternate (A B C ... A B C ...).
Threads are pinned (OMP, OpenBLAS, MKL, Numba) in every child the same way.

    python benchmarks/bench_startup.py            # full run, ~15 minutes on 2 cores
    python benchmarks/bench_startup.py --quick    # smoke test: one cell, the demo-like row, a short demo

Writes benchmarks/results/bench_startup.json and plots/bench_startup.png.
"""

from __future__ import annotations

import argparse
import os
import sys


def _parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="smoke test: Elman 256 and the demo-like row only, 1 warm rep, short demo")
    p.add_argument("--threads", type=int, default=2, help="threads for BLAS and Numba in every child (default 2)")
    p.add_argument("--warm-reps", type=int, default=None, help="warm runs per configuration (default 3, quick 1)")
    p.add_argument("--cold-reps", type=int, default=1, help="empty-cache runs per configuration (default 1)")
    p.add_argument("--no-demo", action="store_true", help="skip the memopt-bptt demo runs")
    p.add_argument("--out", default=None, help="JSON path (default benchmarks/results/bench_startup.json)")
    p.add_argument("--plot", default=None, help="PNG path (default plots/bench_startup.png)")
    return p.parse_args(argv)


ARGS = _parse_args() if __name__ == "__main__" else None
_THREADS = str(ARGS.threads if ARGS else 2)
# Pin threads before anything loads a pool; the children inherit these.
for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS"):
    os.environ[_var] = _THREADS

import json  # noqa: E402
import platform  # noqa: E402
import re  # noqa: E402
import shutil  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
TARGET_WARM_S = 1.5    # first gradient, fresh process, warm cache
TARGET_DEMO_COLD_S = 15.0  # the demo's first update, empty cache
PAUSE = 0.3            # seconds between children (let the last one's threads go)

# ---- the child: one fresh process per measurement ------------------------------------

SETUP = r"""
import json, sys, time
t0 = time.perf_counter()
import memopt_bptt as mb
t_import = time.perf_counter() - t0
import numpy as np
cfg = json.loads(sys.argv[1])
kind, H = cfg["cell"], cfg["hidden"]
if kind == "elman-tanh":
    cell = mb.Elman(input_size=cfg["input"], hidden_size=H, nonlinearity="tanh")
elif kind == "elman-relu":
    cell = mb.Elman(input_size=cfg["input"], hidden_size=H, nonlinearity="relu")
elif kind == "jordan":
    cell = mb.Jordan(input_size=cfg["input"], hidden_size=H)
elif kind == "gru":
    cell = mb.GRU(input_size=cfg["input"], hidden_size=H)
else:
    cell = mb.LSTM(input_size=cfg["input"], hidden_size=H)
model = mb.Sequence(cell, output_size=cfg["output"], loss="mse")
B, T = cfg["batch"], cfg["T"]
params = model.init_params(seed=0, dtype="float32")
rng = np.random.default_rng(0)
xs = rng.standard_normal((T, B, cfg["input"])).astype(np.float32)
ys = rng.standard_normal((T, B, cfg["output"])).astype(np.float32)
"""

CHILD = SETUP + r"""
lanes = [int(b) for b in model.lane_batches(B)]
units = [[int(u0), int(u1)] for u0, u1 in model.unit_split(B)]
calls = []
for kw in cfg["calls"]:
    t1 = time.perf_counter()
    loss, grads = mb.value_and_grad(model, params, xs, ys, **kw)
    calls.append(time.perf_counter() - t1)
print("RESULT " + json.dumps({"import_s": t_import, "calls_s": calls, "lanes": lanes, "unit_split": units,
                              "loss": float(loss)}))
"""

BREAKDOWN = SETUP + r"""
from memopt_bptt._executor._compile import sweep_for
out = {"import_s": t_import}
mode = "units" if len(model.unit_split(B)) > 1 else "rows"
def timed(name, fn):
    t = time.perf_counter(); fn(); out[name] = time.perf_counter() - t
timed("first_numba_call_plan_full_s",
      lambda: mb.plan(T, budget=1.0, model=model, batch=B, dtype="float32", policy="full"))
timed("build_sweep_s", lambda: sweep_for(model, mode))
timed("first_vag_plain_s", lambda: mb.value_and_grad(model, params, xs, ys))
timed("second_vag_plain_s", lambda: mb.value_and_grad(model, params, xs, ys))
timed("first_vag_budget5_s", lambda: mb.value_and_grad(model, params, xs, ys, budget=0.05))
timed("second_vag_budget5_s", lambda: mb.value_and_grad(model, params, xs, ys, budget=0.05))
out["mode"] = mode
out["config"] = cfg["name"]
print("RESULT " + json.dumps(out))
"""

CELL_CONFIGS = [
    # name, cell, input, hidden, output, batch, calls (labels, value_and_grad keywords)
    ("lstm-256", "lstm", 64, 256, 16, 16),
    ("gru-256", "gru", 64, 256, 16, 16),
    ("elman-tanh-256", "elman-tanh", 64, 256, 16, 16),
    ("elman-relu-256", "elman-relu", 64, 256, 16, 16),
    ("jordan-256", "jordan", 64, 256, 16, 16),
    ("lstm-64", "lstm", 64, 64, 16, 16),
]
CELL_CALLS = [("plain", {}), ("budget 5%", {"budget": 0.05}), ("plain again", {})]
DEMO_LIKE = ("demo-like", "lstm", 2, 32, 1, 32)   # memopt-bptt demo's defaults: hidden 32, batch 32
DEMO_CALLS = [("budget 5%", {"budget": 0.05}), ("budget 5% again", {"budget": 0.05})]


def _config(row, T: int) -> dict:
    name, cell, inp, hidden, out, batch = row
    calls = DEMO_CALLS if name == "demo-like" else CELL_CALLS
    return {"name": name, "cell": cell, "input": inp, "hidden": hidden, "output": out, "batch": batch, "T": T,
            "call_labels": [c[0] for c in calls], "calls": [c[1] for c in calls]}


def _split_text(lanes: list, units: list) -> str:
    if len(units) > 1:
        return f"unit threads x{len(units)} ({'+'.join(str(u1 - u0) for u0, u1 in units)} units)"
    if len(lanes) > 1:
        return f"lanes x{len(lanes)} ({'+'.join(map(str, lanes))} rows)"
    return "whole batch"


def _files_written(cache_dir: str, since: float) -> int:
    n = 0
    for base, _, files in os.walk(cache_dir):
        for f in files:
            try:
                if os.path.getmtime(os.path.join(base, f)) >= since:
                    n += 1
            except OSError:
                pass
    return n


def _child_env(cache_dir: str) -> dict:
    env = dict(os.environ)
    env["NUMBA_CACHE_DIR"] = cache_dir
    env["PYTHONUNBUFFERED"] = "1"   # output lines arrive when printed (the demo's timings)
    env.pop("PYTHONPROFILEIMPORTTIME", None)
    return env


def _run_child(code: str, cfg: dict | None, cache_dir: str, extra_args=()) -> dict:
    """One fresh process; the child's RESULT line, the parent's wall time and the files it cached."""
    time.sleep(PAUSE)
    load = os.getloadavg()[0]
    since = time.time() - 1e-3
    t0 = time.perf_counter()
    argv = [sys.executable, *extra_args, "-c", code] + ([json.dumps(cfg)] if cfg is not None else [])
    proc = subprocess.run(argv, env=_child_env(cache_dir), capture_output=True, text=True, cwd=tempfile.gettempdir())
    wall = time.perf_counter() - t0
    res = None
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            res = json.loads(line[7:])
    if proc.returncode != 0 or res is None:
        raise RuntimeError(f"child failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    res.update(process_wall_s=wall, files_written=_files_written(cache_dir, since), loadavg=load,
               stderr_tail=proc.stderr[-500:] if proc.stderr.strip() else "")
    if extra_args:
        res["stderr"] = proc.stderr
    return res


def _demo_command() -> list:
    exe = shutil.which("memopt-bptt")
    return [exe] if exe else [sys.executable, "-m", "memopt_bptt"]


def _read_timed(stream, t0: float, sink: list) -> None:
    """Append [seconds since t0, text] for every \\r- or \\n-terminated piece of a binary stream."""
    buf = b""
    while True:
        chunk = stream.read1(4096)
        if not chunk:
            break
        buf += chunk
        parts = re.split(rb"[\r\n]", buf)
        buf = parts.pop()
        now = round(time.perf_counter() - t0, 3)
        sink.extend([now, x.decode("utf-8", "replace")] for x in parts if x.strip())
    if buf.strip():
        sink.append([round(time.perf_counter() - t0, 3), buf.decode("utf-8", "replace")])


def _run_demo(cache_dir: str, demo_args: list) -> dict:
    """memopt-bptt demo as it is: its wall time, when each line of its stdout arrived, and when its
    first update was done (see the module's docstring, 3.)."""
    import threading
    time.sleep(PAUSE)
    load = os.getloadavg()[0]
    since = time.time() - 1e-3
    t0 = time.perf_counter()
    proc = subprocess.Popen([*_demo_command(), "demo", *demo_args], env=_child_env(cache_dir),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=tempfile.gettempdir())
    lines, err = [], []
    readers = [threading.Thread(target=_read_timed, args=(proc.stdout, t0, lines)),
               threading.Thread(target=_read_timed, args=(proc.stderr, t0, err))]
    for th in readers:
        th.start()
    for th in readers:
        th.join()
    proc.wait()
    wall = time.perf_counter() - t0
    res = {"process_wall_s": wall, "exit_code": proc.returncode, "lines": lines, "loadavg": load,
           "stderr_tail": [x for _, x in err][-5:], "files_written": _files_written(cache_dir, since)}
    for t, text in lines:
        m = re.search(r"wall time: ([0-9.]+) s", text)
        if m:
            res["demo_reported_wall_s"] = float(m.group(1))
        m = re.search(r"training loss: .*\), ([0-9.]+) s(;|$)", text)
        if m:
            res["demo_reported_training_s"] = float(m.group(1))
        m = re.search(r"first update was done ([0-9.]+) s after the demo started", text)
        if m:
            res["demo_reported_first_update_s"] = float(m.group(1))
    if "demo_reported_first_update_s" in res and "demo_reported_wall_s" in res:
        # The demo counts from its own start; what came before it (Python, import memopt_bptt) is the
        # process's wall time less the demo's own: the first update since the process started (the
        # progress bar, below, shows only on a terminal).
        res["first_update_done_s"] = res["demo_reported_first_update_s"] + wall - res["demo_reported_wall_s"]
    for t, text in err:   # tqdm: "train:  2%|...| 1/40 [...]" (a terminal only)
        m = re.search(r"\|\s*(\d+)/(\d+)\s*\[", text)
        if m and int(m.group(1)) >= 1 and "first_update_done_s" not in res:
            res["first_update_done_s"] = t   # since the process started: import, planning, compiling, one update
            res["first_update_bar_text"] = text.strip()[:120]
            break
    for t, text in err:
        m = re.search(r"\|\s*0/(\d+)\s*\[", text)
        if m:
            res["bar_started_s"] = t
            break
    return res


def _importtime(cache_dir: str, top: int = 10) -> list:
    """The modules with the largest cumulative import time under ``import memopt_bptt``."""
    proc = subprocess.run([sys.executable, "-X", "importtime", "-c", "import memopt_bptt"],
                          env=_child_env(cache_dir), capture_output=True, text=True, cwd=tempfile.gettempdir())
    rows = []
    for line in proc.stderr.splitlines():
        m = re.match(r"import time:\s+(\d+) \|\s+(\d+) \|( *)(\S+)", line)
        if m:
            rows.append({"module": m.group(4), "self_ms": int(m.group(1)) / 1e3, "cumulative_ms": int(m.group(2)) / 1e3,
                         "depth": len(m.group(3)) // 2})
    best: dict = {}   # the largest entry of each top-level package
    for r in rows:
        pkg = r["module"].split(".")[0]
        if pkg not in best or r["cumulative_ms"] > best[pkg]["cumulative_ms"]:
            best[pkg] = r
    return sorted(best.values(), key=lambda r: -r["cumulative_ms"])[:top]


def _lscpu() -> dict:
    info = {"model": platform.processor() or "unknown", "flags_summary": "", "l2": "", "numba_host_cpu": ""}
    try:
        text = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    except OSError:
        text = ""
    fields = {}
    for line in text.splitlines():
        if ":" in line:
            k, v = line.split(":", 1)
            fields[k.strip()] = v.strip()
    info["model"] = fields.get("Model name", info["model"])
    flags = set(fields.get("Flags", "").split())
    vec = [f for f in ("avx512f", "avx512bw", "avx512vl", "avx512_fp16", "avx2", "fma") if f in flags]
    info["flags_summary"] = ("AVX-512" if "avx512f" in flags else "AVX2" if "avx2" in flags else "no AVX2") + \
        f" ({' '.join(vec)})"
    info["l2"] = fields.get("L2 cache", "")
    info["cpus"] = fields.get("CPU(s)", str(os.cpu_count()))
    try:
        from llvmlite import binding as ll
        info["numba_host_cpu"] = ll.get_host_cpu_name()
    except Exception:  # noqa: BLE001 - informational only
        pass
    return info


def _versions() -> dict:
    code = ("import json, numba, numpy, memopt_bptt; print(json.dumps({'numba': numba.__version__, "
            "'numpy': numpy.__version__, 'memopt_bptt': memopt_bptt.__version__}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout.strip().splitlines()
    v = json.loads(out[-1]) if out else {}
    v["python"] = platform.python_version()
    return v


def _git_head() -> str:
    try:
        return subprocess.run(["git", "-C", ROOT, "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True).stdout.strip()
    except OSError:
        return ""


def _med(xs):
    return statistics.median(xs) if xs else None


def _fmt(v, spec=".2f"):
    return "-" if v is None else format(v, spec)


# ---- main -----------------------------------------------------------------------------

def main(args) -> dict:
    warm_reps = args.warm_reps or (1 if args.quick else 3)
    T = 1000
    rows = [r for r in CELL_CONFIGS if not args.quick or r[0] == "elman-tanh-256"] + [DEMO_LIKE]
    configs = [_config(r, T) for r in rows]
    demo_args = ["--steps", "200", "--updates", "3"] if args.quick else []
    demo_warm_reps = 1 if args.quick else 2

    cpu = _lscpu()
    info = {"quick": args.quick, "threads": args.threads, "warm_reps": warm_reps, "cold_reps": args.cold_reps,
            "T": T, "dtype": "float32", "git_head": _git_head(), **_versions(), "cpu": cpu,
            "loadavg_start": os.getloadavg(), "n_cpus": os.cpu_count(),
            "targets": {"warm_first_gradient_s": TARGET_WARM_S, "demo_first_update_cold_s": TARGET_DEMO_COLD_S}}
    print(f"cpu: {cpu['model']}, {cpu['cpus']} CPUs, {cpu['flags_summary']}, L2 {cpu['l2']}, "
          f"Numba/LLVM host cpu {cpu['numba_host_cpu'] or '?'}")
    print(f"python {info['python']}, numba {info.get('numba')}, numpy {info.get('numpy')}, "
          f"memopt_bptt {info.get('memopt_bptt')} (git {info['git_head']}); threads={args.threads}, "
          f"warm reps={warm_reps}, cold reps={args.cold_reps}; load average {info['loadavg_start'][0]:.1f}")
    if info["loadavg_start"][0] > 0.5 * (os.cpu_count() or 1):
        print("warning: the machine is busy (1-min load average above half the cores): every figure below is "
              "inflated by other processes", file=sys.stderr)

    tmp_root = tempfile.mkdtemp(prefix="bench_startup_")
    results = {c["name"]: {"config": c, "cold": [], "warm": []} for c in configs}
    # the command as a user types it: no path of this machine in the results
    command = _demo_command()
    shown = [os.path.basename(command[0])] + command[1:]
    demo = {"args": demo_args, "command": " ".join(shown + ["demo"] + demo_args), "cold": [], "warm": []}
    warm_dirs: dict = {}
    t_start = time.perf_counter()
    try:
        # Empty cache, alternating configurations; the first cold run's directory is then the warm one.
        for rep in range(args.cold_reps):
            for c in configs:
                d = tempfile.mkdtemp(prefix=f"cold_{c['name']}_", dir=tmp_root)
                r = _run_child(CHILD, c, d)
                results[c["name"]]["cold"].append(r)
                warm_dirs.setdefault(c["name"], d)
                print(f"  cold {c['name']:15s} import {r['import_s']:.2f} s, calls "
                      f"{', '.join(f'{t:.2f}' for t in r['calls_s'])} s, process {r['process_wall_s']:.1f} s "
                      f"(load {r['loadavg']:.1f})", flush=True)
            if not args.no_demo:
                d = tempfile.mkdtemp(prefix="cold_demo_", dir=tmp_root)
                r = _run_demo(d, demo_args)
                demo["cold"].append(r)
                warm_dirs.setdefault("demo", d)
                print(f"  cold demo            process {r['process_wall_s']:.1f} s, exit {r['exit_code']} "
                      f"(load {r['loadavg']:.1f})", flush=True)
        # Warm cache: the same children again, same directories, alternating.
        for rep in range(warm_reps):
            for c in configs:
                r = _run_child(CHILD, c, warm_dirs[c["name"]])
                results[c["name"]]["warm"].append(r)
                print(f"  warm {c['name']:15s} import {r['import_s']:.2f} s, calls "
                      f"{', '.join(f'{t:.2f}' for t in r['calls_s'])} s, process {r['process_wall_s']:.1f} s, "
                      f"{r['files_written']} cache files written (load {r['loadavg']:.1f})", flush=True)
            if not args.no_demo and rep < demo_warm_reps:
                r = _run_demo(warm_dirs["demo"], demo_args)
                demo["warm"].append(r)
                print(f"  warm demo            process {r['process_wall_s']:.1f} s, exit {r['exit_code']}, "
                      f"{r['files_written']} cache files written (load {r['loadavg']:.1f})", flush=True)
        # Where a warm first call's time goes (LSTM 256, its warm directory).
        d = warm_dirs[configs[0]["name"]]
        breakdown = _run_child(BREAKDOWN, configs[0], d)
        breakdown["importtime_top"] = _importtime(d)
    finally:
        shutil.rmtree(tmp_root, ignore_errors=True)
    info["elapsed_s"] = time.perf_counter() - t_start
    info["loadavg_end"] = os.getloadavg()

    # ---- summary rows --------------------------------------------------------------
    table = []
    for c in configs:
        res = results[c["name"]]
        cold, warm = res["cold"], res["warm"]
        ref = warm[0] if warm else cold[0]
        labels = c["call_labels"]
        row = {"name": c["name"], "cell": c["cell"], "input": c["input"], "hidden": c["hidden"],
               "output": c["output"], "batch": c["batch"], "T": T, "call_labels": labels,
               "split": _split_text(ref["lanes"], ref["unit_split"]), "lanes": ref["lanes"],
               "unit_split": ref["unit_split"],
               "cold_import_s": _med([r["import_s"] for r in cold]),
               "cold_calls_s": [_med([r["calls_s"][i] for r in cold]) for i in range(len(labels))],
               "cold_process_s": _med([r["process_wall_s"] for r in cold]),
               "warm_import_s": _med([r["import_s"] for r in warm]),
               "warm_calls_s": [_med([r["calls_s"][i] for r in warm]) for i in range(len(labels))],
               "warm_calls_min_s": [min(r["calls_s"][i] for r in warm) for i in range(len(labels))] if warm else [],
               "warm_process_s": _med([r["process_wall_s"] for r in warm]),
               "warm_files_written": [r["files_written"] for r in warm],
               "cold_runs": cold, "warm_runs": warm}
        row["warm_first_gradient_s"] = row["warm_calls_s"][0] if warm else None
        row["warm_first_overhead_s"] = (row["warm_calls_s"][0] - row["warm_calls_s"][-1]) if warm else None
        row["cold_compile_s"] = row["cold_calls_s"][0] - (row["warm_calls_s"][0] if warm else 0.0)
        row["meets_warm_target"] = None if not warm else row["warm_first_gradient_s"] < TARGET_WARM_S
        table.append(row)

    print(f"\nFirst gradient in a fresh process (float32, T={T}; seconds; warm = median of {warm_reps}, "
          f"cold = {'median of ' + str(args.cold_reps) if args.cold_reps > 1 else 'one run'}; target: warm "
          f"first call < {TARGET_WARM_S} s)")
    head = (f"{'config':15s} {'split':32s} | {'import':>6s} {'1st':>6s} {'2nd':>6s} {'proc':>6s} | "
            f"{'import':>6s} {'1st':>6s} {'(min)':>6s} {'2nd':>6s} {'steady':>6s} {'proc':>6s} {'new':>3s} | "
            f"{'<1.5s':>5s}")
    print(f"{'':15s} {'':32s} | {'empty cache':^27s} | {'warm cache':^48s} |")
    print(head)
    print("-" * len(head))
    for r in table:
        w = r["warm_calls_s"] + [None] * 3
        wm = r["warm_calls_min_s"] + [None]
        print(f"{r['name']:15s} {r['split']:32s} | {_fmt(r['cold_import_s']):>6s} {_fmt(r['cold_calls_s'][0], '.1f'):>6s} "
              f"{_fmt(r['cold_calls_s'][1], '.1f'):>6s} {_fmt(r['cold_process_s'], '.1f'):>6s} | "
              f"{_fmt(r['warm_import_s']):>6s} {_fmt(w[0]):>6s} {_fmt(wm[0]):>6s} {_fmt(w[1]):>6s} "
              f"{_fmt(w[len(r['call_labels']) - 1]):>6s} "
              f"{_fmt(r['warm_process_s'], '.1f'):>6s} {max(r['warm_files_written'] or [0]):>3d} | "
              f"{('yes' if r['meets_warm_target'] else 'NO') if r['meets_warm_target'] is not None else '-':>5s}")
    print("1st: first mb.value_and_grad (plain BPTT; demo-like: 5% budget); 2nd: then with budget=0.05 "
          "(demo-like: the same again); steady: the last call (plain again; demo-like: = 2nd); proc: the whole child process (parent's clock); "
          "new: cache files a warm run wrote (0 = all loaded from the cache)")

    dsum = {}
    if not args.no_demo:
        dsum = {"cold_process_s": _med([r["process_wall_s"] for r in demo["cold"]]),
                "warm_process_s": _med([r["process_wall_s"] for r in demo["warm"]]),
                "cold_exit": [r["exit_code"] for r in demo["cold"]],
                "warm_exit": [r["exit_code"] for r in demo["warm"]],
                "cold_reported_training_s": _med([r.get("demo_reported_training_s") for r in demo["cold"]
                                                  if r.get("demo_reported_training_s") is not None]),
                "warm_reported_training_s": _med([r.get("demo_reported_training_s") for r in demo["warm"]
                                                  if r.get("demo_reported_training_s") is not None]),
                "cold_first_update_done_s": _med([r["first_update_done_s"] for r in demo["cold"]
                                                  if "first_update_done_s" in r]),
                "warm_first_update_done_s": _med([r["first_update_done_s"] for r in demo["warm"]
                                                  if "first_update_done_s" in r])}
        demo["summary"] = dsum
        print(f"\n{demo['command']}: whole run {_fmt(dsum['cold_process_s'], '.1f')} s with an empty cache, "
              f"{_fmt(dsum['warm_process_s'], '.1f')} s warm (exit codes {dsum['cold_exit']} / {dsum['warm_exit']}); "
              f"training as it reports it: {_fmt(dsum['cold_reported_training_s'], '.1f')} s / "
              f"{_fmt(dsum['warm_reported_training_s'], '.1f')} s"
              )
        print(f"  its first update done (since the process started, import and planning included: the demo's "
              f"'first update was done' plus the process's time outside the demo's own clock): {_fmt(dsum['cold_first_update_done_s'], '.1f')} s empty cache (target < "
              f"{TARGET_DEMO_COLD_S:g} s), {_fmt(dsum['warm_first_update_done_s'], '.1f')} s warm")

    print(f"\nWarm first call, {breakdown['config']} ({breakdown['mode']}), steps in one fresh process: import "
          f"{breakdown['import_s']:.2f} s; first mb.plan (Numba's first cache load in the process) "
          f"{breakdown['first_numba_call_plan_full_s']:.2f} s; building the sweep {breakdown['build_sweep_s']:.3f} s; "
          f"first value_and_grad {breakdown['first_vag_plain_s']:.2f} s, second {breakdown['second_vag_plain_s']:.2f} s; "
          f"first with 5% budget {breakdown['first_vag_budget5_s']:.2f} s, second {breakdown['second_vag_budget5_s']:.2f} s")
    print("largest imports under `import memopt_bptt` (python -X importtime, cumulative ms): " +
          ", ".join(f"{r['module']} {r['cumulative_ms']:.0f}" for r in breakdown["importtime_top"][:6]))
    print(f"\nelapsed {info['elapsed_s'] / 60:.1f} min; load average {info['loadavg_start'][0]:.1f} at the start, "
          f"{info['loadavg_end'][0]:.1f} at the end ({os.cpu_count()} CPUs)")

    result = {"info": info, "rows": table, "demo": demo, "warm_breakdown": breakdown}
    out = args.out or os.path.join(HERE, "results", "bench_startup.json")
    os.makedirs(os.path.dirname(out), exist_ok=True)
    with open(out, "w", encoding="utf-8") as fh:
        json.dump(result, fh, indent=2)
    print(f"wrote {os.path.relpath(out)}")
    png = args.plot or os.path.join(ROOT, "plots", "bench_startup.png")
    _plot(table, dsum, info, png)
    print(f"wrote {os.path.relpath(png)}")
    return result


def _plot(table: list, dsum: dict, info: dict, path: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    names = [r["name"] for r in table] + (["demo (whole)"] if dsum else [])
    cold = [r["cold_calls_s"][0] for r in table] + ([dsum["cold_process_s"]] if dsum else [])
    warm = [r["warm_first_gradient_s"] or np.nan for r in table] + ([dsum["warm_process_s"] or np.nan] if dsum else [])
    steady = [r["warm_calls_s"][-1] if r["warm_calls_s"] else np.nan for r in table] + ([np.nan] if dsum else [])
    x = np.arange(len(names))
    fig, ax = plt.subplots(figsize=(10, 4.8))
    w = 0.27
    ax.bar(x - w, cold, w, label="first call, empty cache (demo: whole run)", color="#c44e52")
    ax.bar(x, warm, w, label="first call, warm cache (median)", color="#4c72b0")
    ax.bar(x + w, steady, w, label="steady call (same process, warm)", color="#55a868")
    ax.axhline(TARGET_WARM_S, color="k", ls="--", lw=1, label=f"warm target {TARGET_WARM_S} s")
    ax.set_yscale("log")
    ax.set_xticks(x)
    ax.set_xticklabels(names, rotation=20, ha="right")
    ax.set_ylabel("seconds (log)")
    ax.set_title(f"Time to the first mb.value_and_grad in a fresh process (T={info['T']}, float32, "
                 f"{info['threads']} threads)\n{info['cpu']['model']}, {info['cpu']['flags_summary'].split(' ')[0]}, "
                 f"load avg {info['loadavg_start'][0]:.1f} on {info['n_cpus']} CPUs (shared machine: noisy)", fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    os.makedirs(os.path.dirname(path), exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main(ARGS)
