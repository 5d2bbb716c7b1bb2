"""Peak resident memory of one call, measured the way MEASURING.md prescribes.

glibc keeps freed heap, so a second iteration in the same process shows
almost no peak: measure one configuration per fresh process. Inside it, warm
up (compile, import), then ``malloc_trim(0)``, reset the kernel's high-water
mark (``echo 5 > /proc/self/clear_refs``) and read VmHWM - VmRSS after the
measured call. Linux only; elsewhere :func:`peak_of` returns ``None`` for the
peak.

Also: :func:`pin_threads` (call before numpy/numba/torch are imported),
:func:`run_worker` (run a benchmark's ``--worker`` mode in a fresh process and
read the JSON line it prints last), :func:`timed_rounds` (interleaved timing)
and :func:`cpu_model` (the CPU's model name, for every speed figure).
"""

from __future__ import annotations

import ctypes
import gc
import json
import os
import platform
import subprocess
import sys
import time
from typing import Any, Callable

__all__ = ["THREAD_VARS", "pin_threads", "malloc_trim", "reset_peak", "status_bytes", "peak_of",
           "run_worker", "emit", "timed_rounds", "cpu_model", "REUSE_ENV"]

THREAD_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS")
REUSE_ENV = {"MALLOC_MMAP_MAX_": "0", "MALLOC_TRIM_THRESHOLD_": str(1 << 40)}
"""``--reuse-memory`` (bench_grid, bench_executor): glibc keeps what a call frees for the next call
of the same process, every side alike, instead of unmapping it and mapping fresh pages (see
bench_grid.py's docstring: on a VM with free page reporting each fresh page costs a host fault)."""


def pin_threads(n: int) -> None:
    """Pin BLAS/OpenMP/Numba thread pools to ``n`` (effective only before they load), and time the
    split rule's choices: a calibration file this machine may hold (mb.calibrate) is ignored unless
    MEMOPT_BPTT_CALIBRATION is set (bench_split.py --calibrate sets its own)."""
    for var in THREAD_VARS:
        os.environ[var] = str(n)
    os.environ.setdefault("MEMOPT_BPTT_CALIBRATION", "off")


def malloc_trim() -> bool:
    """Return freed heap to the OS (glibc); False where unavailable."""
    try:
        return bool(ctypes.CDLL("libc.so.6").malloc_trim(0))
    except (OSError, AttributeError):
        return False


def reset_peak() -> bool:
    """Reset this process's VmHWM to its current RSS; False where unavailable."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


def status_bytes() -> dict[str, int]:
    """VmRSS and VmHWM of this process, in bytes (empty where /proc is missing)."""
    out = {}
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                key, _, rest = line.partition(":")
                if key in ("VmRSS", "VmHWM"):
                    out[key] = int(rest.split()[0]) * 1024
    except OSError:
        pass
    return out


def peak_of(fn: Callable[[], Any]) -> tuple[int | None, float, Any]:
    """(peak bytes above the starting RSS, wall seconds, fn's result) of one call.

    Call it once per fresh process, after a warm-up: the peak of a repeated
    configuration is hidden by the allocator's cached heap.
    """
    gc.collect()
    malloc_trim()
    ok = reset_peak()
    before = status_bytes()
    t0 = time.perf_counter()
    result = fn()
    wall = time.perf_counter() - t0
    after = status_bytes()
    if not ok or "VmHWM" not in after or "VmRSS" not in before:
        return None, wall, result
    return after["VmHWM"] - before["VmRSS"], wall, result


def emit(record: dict) -> None:
    """Print a worker's result as the last line of stdout (read by run_worker)."""
    sys.stdout.write(json.dumps(record) + "\n")
    sys.stdout.flush()


def run_worker(script: str, args: list[str], *, timeout: float = 3600.0) -> dict:
    """Run ``python script --worker ARGS`` in a fresh process; its last stdout line, parsed."""
    proc = subprocess.run([sys.executable, script, "--worker", *args], capture_output=True, text=True,
                          timeout=timeout, env=dict(os.environ))
    if proc.returncode != 0:
        raise RuntimeError(f"worker {args} failed:\n{proc.stderr[-4000:]}")
    lines = [ln for ln in proc.stdout.strip().splitlines() if ln.startswith("{")]
    if not lines:
        raise RuntimeError(f"worker {args} printed no result:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
    return json.loads(lines[-1])


def timed_rounds(fns: dict, reps: int, pause: float) -> dict:
    """Seconds of each call of ``fns`` (name: function) over ``reps`` rounds, the calls of a round
    one after another (A B C, A B C, ...), each after ``pause`` seconds so the previous call's
    spinning thread pools go idle."""
    times = {k: [] for k in fns}
    for _ in range(reps):
        for k, f in fns.items():
            time.sleep(pause)
            t = time.perf_counter()
            f()
            times[k].append(time.perf_counter() - t)
    return times


def cpu_model() -> str:
    """The CPU's model name (/proc/cpuinfo's, as lscpu prints it), or what platform knows elsewhere."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"
