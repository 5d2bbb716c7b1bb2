"""Per-step forward/backward time of every cell, beside PyTorch CPU, and plain
BPTT of an LSTM over T=1000 against torch nn.LSTM.

What it measures (see shared MEASURING.md for the method):

1. Time per step, as value_and_grad's sweep runs it (whole batch, lanes or
   unit threads): plain BPTT's schedule, its forward half (every step kept)
   and its reverse half (each reversal with its rebuild, readout and loss);
   batch 16, input 64, hidden 64 and 256, float32 and float64. Beside it, the same
   network as torch nn.RNN / nn.GRU / nn.LSTM over the whole sequence (forward
   with autograd recording, then backward), per step. Jordan has no torch
   counterpart. Also mb.value_and_grad (readout + mse loss, fwd+bwd) per step.
2. Plain BPTT, LSTM input 64, batch 16, float32, T=1000, hidden 256 and 64,
   readout 16 + mse loss on both sides: mb.value_and_grad (policy full)
   versus torch nn.LSTM + nn.Linear + mse_loss + backward; the ratio.
3. This machine's sgemm rate (numpy 2048^2 float32 matmul) and the fraction
   of it the LSTM step reaches (2*B*4H*(I+H) flops forward, twice that
   backward).

Every figure is a median of >= 5 repetitions after warm-up, the two sides
interleaved (A B A B ...), threads pinned the same for everyone, with a 0.3 s
pause before each timed run: OpenBLAS and OpenMP workers spin for a while
after a call, and without the pause one side's spinning threads steal a core
from the other (measured: torch hidden 64 took 3x longer right after ours).
Ours runs its BLAS on one thread where the GEMMs are small
(memopt_bptt._split.SMALL_GEMM_MACS), as value_and_grad does.

    python benchmarks/bench_cells.py            # full run, a few minutes
    python benchmarks/bench_cells.py --quick    # short run (fewer sizes and steps)

Writes benchmarks/results/bench_cells.json.
"""

from __future__ import annotations

import argparse
import os
import sys


def _parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="short run: hidden 64 only, fewer steps")
    p.add_argument("--threads", type=int, default=2, help="threads for BLAS, Numba and torch (default 2)")
    p.add_argument("--reps", type=int, default=None, help="timed repetitions per figure (default 7, quick 5)")
    p.add_argument("--out", default=None, help="JSON path (default benchmarks/results/bench_cells.json)")
    return p.parse_args(argv)


ARGS = _parse_args() if __name__ == "__main__" else None
_THREADS = str(ARGS.threads if ARGS else 2)
# Pin every side's threads before numpy, numba or torch load their pools.
for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS"):
    os.environ[_var] = _THREADS

import json  # noqa: E402
import platform  # noqa: E402
import statistics  # noqa: E402

import numba  # noqa: E402
import numpy as np  # noqa: E402

import memopt_bptt as mb  # noqa: E402
from memopt_bptt._actions import Op  # noqa: E402
from memopt_bptt._executor._runner import Data, Run  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _memory import cpu_model, timed_rounds  # noqa: E402

try:
    import torch  # noqa: E402
except ImportError:  # the torch columns are left empty
    torch = None

BATCH, INPUT, OUTPUT = 16, 64, 16
PAUSE = 0.3  # seconds between timed runs, see _median_interleaved


# ---- jitted drivers: call a cell's kernels in a loop, as plain BPTT does -------

# ---- helpers -----------------------------------------------------------------------

_MINIMA: dict = {}  # name -> fastest repetition of the last _median_interleaved call, for the JSON


def _median_interleaved(variants: dict, reps: int, warmup: int = 1) -> dict:
    """{name: fn} -> {name: median seconds}, run A B A B ... after warm-up.

    The fastest repetition of each is left in ``_MINIMA`` (a second view when
    the machine is busy: contention only ever adds time)."""
    for _ in range(warmup):
        for fn in variants.values():
            fn()
    times = timed_rounds(variants, reps, PAUSE)  # PAUSE: the other side's spinning pools go idle first
    _MINIMA.clear()
    _MINIMA.update({name: min(ts) for name, ts in times.items()})
    return {name: statistics.median(ts) for name, ts in times.items()}


def _make_cell(kind: str, hidden: int):
    if kind == "elman-tanh":
        return mb.Elman(input_size=INPUT, hidden_size=hidden, nonlinearity="tanh")
    if kind == "elman-relu":
        return mb.Elman(input_size=INPUT, hidden_size=hidden, nonlinearity="relu")
    if kind == "jordan":
        return mb.Jordan(input_size=INPUT, hidden_size=hidden)
    if kind == "gru":
        return mb.GRU(input_size=INPUT, hidden_size=hidden)
    return mb.LSTM(input_size=INPUT, hidden_size=hidden)


def _torch_module(kind: str, hidden: int, dtype: str):
    if torch is None or kind == "jordan":
        return None
    if kind.startswith("elman"):
        mod = torch.nn.RNN(INPUT, hidden, nonlinearity=kind.split("-")[1])
    elif kind == "gru":
        mod = torch.nn.GRU(INPUT, hidden)
    else:
        mod = torch.nn.LSTM(INPUT, hidden)
    return mod.to(getattr(torch, dtype))


def _copy_to_torch(params: dict, rnn, linear=None) -> None:
    with torch.no_grad():
        for ours, theirs in (("cell.weight_ih", "weight_ih_l0"), ("cell.weight_hh", "weight_hh_l0"),
                             ("cell.bias_ih", "bias_ih_l0"), ("cell.bias_hh", "bias_hh_l0")):
            getattr(rnn, theirs).copy_(torch.from_numpy(params[ours]))
        if linear is not None:
            linear.weight.copy_(torch.from_numpy(params["readout.weight"]))
            linear.bias.copy_(torch.from_numpy(params["readout.bias"]))


def sgemm_gflops(reps: int, n: int = 2048) -> float:
    rng = np.random.default_rng(0)
    a = rng.standard_normal((n, n)).astype(np.float32)
    b = rng.standard_normal((n, n)).astype(np.float32)
    out = np.empty((n, n), np.float32)
    t = _median_interleaved({"sgemm": lambda: np.matmul(a, b, out=out)}, reps, warmup=2)["sgemm"]
    return 2.0 * n ** 3 / t / 1e9


def lstm_step_flops(batch: int, inp: int, hidden: int) -> float:
    return 2.0 * batch * 4 * hidden * (inp + hidden)


# ---- 1. per-step kernel times ----------------------------------------------------------

def bench_step(kind: str, hidden: int, dtype: str, n_steps: int, reps: int) -> dict:
    model = mb.Sequence(_make_cell(kind, hidden), output_size=OUTPUT, loss="mse")
    params = model.init_params(seed=0, dtype=dtype)
    P = tuple(params.values())
    sizes = model.sizes(batch=BATCH, dtype=dtype)
    rng = np.random.default_rng(1)
    xs = rng.standard_normal((n_steps, BATCH, INPUT)).astype(dtype)
    ys = rng.standard_normal((n_steps, BATCH, OUTPUT)).astype(dtype)
    s0 = np.zeros(sizes.state_len, dtype)
    grads = tuple(np.zeros_like(a) for a in P)
    # As value_and_grad runs it (whole batch, lanes or unit threads, with its BLAS threads): plain
    # BPTT's schedule split in its forward half (every step kept in the pool) and its reverse half
    # (each reversal with its rebuild, readout and loss), on one set of buffers.
    full = mb.plan(n_steps, budget=1.0, model=model, batch=BATCH, dtype=dtype, policy="full")
    codes = full.codes
    r0 = int(np.argmax(codes[:, 0] == Op.REVERSE))
    checked = model.check_data(xs, ys, np.dtype(dtype))  # the inputs as value_and_grad hands them to the sweep
    run = Run(model, P, Data.of(checked), sizes, loss_kind=0, scale=1.0 / checked.n_terms, loss_mode=checked.loss_mode)
    jobs = run.allocate(full.pool_quanta, s0, grads, np.zeros(0))

    def ours_fwd():
        run.run(codes[:r0], jobs)

    def ours_bwd():
        run.run(codes[r0:], jobs)

    def ours_vag():
        mb.value_and_grad(model, params, xs, ys)

    variants = {"ours_fwd": ours_fwd, "ours_bwd": ours_bwd, "ours_vag": ours_vag}
    rnn = _torch_module(kind, hidden, dtype)
    if rnn is not None:
        _copy_to_torch(params, rnn)
        x_t = torch.from_numpy(xs)
        dy_t = torch.from_numpy(rng.standard_normal((n_steps, BATCH, hidden)).astype(dtype))
        holder = {}

        def torch_fwd():
            for p in rnn.parameters():
                p.grad = None
            out, _ = rnn(x_t)
            holder["loss"] = (out * dy_t).sum()

        def torch_bwd():
            holder.pop("loss").backward()

        # torch_bwd needs the graph of the torch_fwd just before it
        variants["torch_fwd"] = torch_fwd
        variants["torch_bwd"] = torch_bwd

    med = _median_interleaved(variants, reps)
    row = {"cell": kind, "hidden": hidden, "dtype": dtype, "batch": BATCH, "input": INPUT, "steps": n_steps}
    for name, t in med.items():
        row[name + "_us_per_step"] = 1e6 * t / n_steps
        row[name + "_us_per_step_min"] = 1e6 * _MINIMA[name] / n_steps
    if "torch_fwd" in med:
        row["fwd_ratio_ours_over_torch"] = med["ours_fwd"] / med["torch_fwd"]
        row["bwd_ratio_ours_over_torch"] = med["ours_bwd"] / med["torch_bwd"]
        row["fwdbwd_ratio_vag_over_torch"] = med["ours_vag"] / (med["torch_fwd"] + med["torch_bwd"])
    if kind == "lstm":
        flops = lstm_step_flops(BATCH, INPUT, hidden)
        row["fwd_gflops"] = flops / (med["ours_fwd"] / n_steps) / 1e9
        row["bwd_gflops"] = 2 * flops / (med["ours_bwd"] / n_steps) / 1e9
    return row


# ---- 2. plain BPTT over a long sequence --------------------------------------------------

def bench_long_lstm(hidden: int, T: int, reps: int, dtype: str = "float32") -> dict:
    model = mb.Sequence(mb.LSTM(input_size=INPUT, hidden_size=hidden), output_size=OUTPUT, loss="mse")
    params = model.init_params(seed=0, dtype=dtype)
    rng = np.random.default_rng(2)
    xs = rng.standard_normal((T, BATCH, INPUT)).astype(dtype)
    ys = rng.standard_normal((T, BATCH, OUTPUT)).astype(dtype)
    variants = {"ours": lambda: mb.value_and_grad(model, params, xs, ys)}
    if torch is not None:
        rnn = _torch_module("lstm", hidden, dtype)
        linear = torch.nn.Linear(hidden, OUTPUT).to(getattr(torch, dtype))
        _copy_to_torch(params, rnn, linear)
        x_t, y_t = torch.from_numpy(xs), torch.from_numpy(ys)

        def torch_run():
            for p in list(rnn.parameters()) + list(linear.parameters()):
                p.grad = None
            out, _ = rnn(x_t)
            torch.nn.functional.mse_loss(linear(out), y_t).backward()

        variants["torch"] = torch_run
    med = _median_interleaved(variants, reps)
    minima = dict(_MINIMA)
    flops = 3 * lstm_step_flops(BATCH, INPUT, hidden) * T   # forward + backward (2x)
    row = {"hidden": hidden, "T": T, "dtype": dtype, "batch": BATCH, "input": INPUT, "output": OUTPUT,
           "ours_s": med["ours"], "ours_s_min": minima["ours"], "ours_lstm_gflops": flops / med["ours"] / 1e9}
    if "torch" in med:
        row["torch_s"] = med["torch"]
        row["torch_s_min"] = minima["torch"]
        row["ratio_ours_over_torch"] = med["ours"] / med["torch"]
    return row


def _fmt(v, spec=".1f"):
    return "-" if v is None else format(v, spec)


def main(args) -> dict:
    reps = args.reps or (5 if args.quick else 7)
    if reps < 5:
        print(f"note: --reps {reps} is below the 5 MEASURING.md asks for", file=sys.stderr)
    if torch is not None:
        torch.set_num_threads(args.threads)
    hiddens = (64,) if args.quick else (64, 256)
    n_steps = 50 if args.quick else 200
    long_T = 200 if args.quick else 1000
    cells = ("elman-tanh", "elman-relu", "jordan", "gru", "lstm")

    info = {
        "quick": args.quick, "threads": args.threads, "reps": reps,
        "python": platform.python_version(), "numpy": np.__version__, "numba": numba.__version__,
        "torch": None if torch is None else torch.__version__, "memopt_bptt": mb.__version__,
        "cpu": cpu_model(), "n_cpus": os.cpu_count(), "loadavg_start": os.getloadavg()[0],
    }
    print(f"threads={args.threads} reps={reps} (median) cpu={info['cpu']} torch={info['torch']} "
          f"load={info['loadavg_start']:.1f}")
    if info["loadavg_start"] > 0.5 * (os.cpu_count() or 1):
        print("warning: the machine is busy (1-min load average above half the cores); other processes "
              "distort these figures, torch's spinning OpenMP threads most", file=sys.stderr)
    gf = sgemm_gflops(reps)
    info["sgemm_gflops"] = gf
    print(f"numpy sgemm 2048^2 float32: {gf:.1f} GFLOP/s")

    steps = []
    print(f"\nPer-step times, batch {BATCH}, input {INPUT}, {n_steps} steps (us per step; ratio = ours/torch)")
    head = (f"{'cell':11s} {'H':>4s} {'dtype':7s} | {'fwd':>8s} {'bwd':>8s} {'vag':>8s} | "
            f"{'t.fwd':>8s} {'t.bwd':>8s} | {'fwd x':>6s} {'bwd x':>6s} {'f+b x':>6s}")
    print(head)
    print("-" * len(head))
    for hidden in hiddens:
        for dtype in ("float32", "float64"):
            for kind in cells:
                r = bench_step(kind, hidden, dtype, n_steps, reps)
                steps.append(r)
                print(f"{kind:11s} {hidden:4d} {dtype:7s} | {_fmt(r['ours_fwd_us_per_step']):>8s} "
                      f"{_fmt(r['ours_bwd_us_per_step']):>8s} {_fmt(r['ours_vag_us_per_step']):>8s} | "
                      f"{_fmt(r.get('torch_fwd_us_per_step')):>8s} {_fmt(r.get('torch_bwd_us_per_step')):>8s} | "
                      f"{_fmt(r.get('fwd_ratio_ours_over_torch'), '.2f'):>6s} "
                      f"{_fmt(r.get('bwd_ratio_ours_over_torch'), '.2f'):>6s} "
                      f"{_fmt(r.get('fwdbwd_ratio_vag_over_torch'), '.2f'):>6s}", flush=True)

    for r in steps:
        if r["cell"] == "lstm" and r["dtype"] == "float32":
            r["fwd_fraction_of_sgemm"] = r["fwd_gflops"] / gf
            r["bwd_fraction_of_sgemm"] = r["bwd_gflops"] / gf
            print(f"LSTM H={r['hidden']} float32 kernels: fwd {r['fwd_gflops']:.1f} GFLOP/s "
                  f"({100 * r['fwd_fraction_of_sgemm']:.0f}% of sgemm), bwd {r['bwd_gflops']:.1f} GFLOP/s "
                  f"({100 * r['bwd_fraction_of_sgemm']:.0f}%)")

    longs = []
    print(f"\nPlain BPTT, LSTM input {INPUT}, batch {BATCH}, readout {OUTPUT} + mse, float32, T={long_T}, fwd+bwd")
    for hidden in (256, 64):
        r = bench_long_lstm(hidden, long_T, reps)
        r["fraction_of_sgemm"] = r["ours_lstm_gflops"] / gf
        longs.append(r)
        print(f"  H={hidden:3d}: ours {r['ours_s']:.3f} s, torch {_fmt(r.get('torch_s'), '.3f')} s, "
              f"ours/torch {_fmt(r.get('ratio_ours_over_torch'), '.2f')}; ours {r['ours_lstm_gflops']:.1f} GFLOP/s "
              f"= {100 * r['fraction_of_sgemm']:.0f}% of sgemm (fastest: ours {r['ours_s_min']:.3f} s, "
              f"torch {_fmt(r.get('torch_s_min'), '.3f')} s)", flush=True)

    info["loadavg_end"] = os.getloadavg()[0]
    result = {"info": info, "steps": steps, "long_lstm": longs}
    out = args.out or os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", "bench_cells.json")
    os.makedirs(os.path.dirname(out), exist_ok=True)
    with open(out, "w", encoding="utf-8") as fh:
        json.dump(result, fh, indent=2)
    print(f"\nwrote {os.path.relpath(out)}")
    return result


if __name__ == "__main__":
    main(ARGS)
