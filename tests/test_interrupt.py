"""Ctrl-C stops the work: real SIGINTs, in fresh processes (issue 15, part 1).

Each child starts a long call, has a timer thread send the process a real
SIGINT, and reports how long after the signal the caller saw
KeyboardInterrupt and which threads were left. Before the fix a one-lane
sweep surfaced as ``SystemError: CPUDispatcher(...) returned a result with
an exception set`` once the whole sweep had run, lanes kept computing after
the caller had been interrupted, and a SIGINT while Numba compiled was
swallowed.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest
from _signals import default_sigint

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")

_CHILD = textwrap.dedent("""
    import json, os, signal, sys, threading, time
    import numpy as np
    import memopt_bptt as mb

    kind, T, delay = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
    split = {"one": {"lanes": 1, "unit_threads": 1}, "lanes": {"lanes": 2},
             "units": {"unit_threads": 2}}[kind.split("-")[0]]
    hidden = 64 if kind.startswith("units") else 8
    model = mb.Sequence(mb.LSTM(4, hidden), output_size=2, **split)
    params = model.init_params(dtype="float32")
    rng = np.random.default_rng(0)
    xs = rng.standard_normal((T, 8, 4)).astype(np.float32)
    ys = rng.standard_normal((T, 8, 2)).astype(np.float32)
    if not kind.endswith("compile"):  # compile and plan first: interrupt the sweep itself
        mb.value_and_grad(model, params, xs[:20], ys[:20], budget=0.9)
        schedule = mb.plan(T, budget=0.02, model=model, batch=8, dtype="float32")
    sent = []
    def interrupt():
        sent.append(time.perf_counter())
        os.kill(os.getpid(), signal.SIGINT)
    threading.Timer(delay, interrupt).start()
    t0 = time.perf_counter()
    outcome = "finished"
    try:
        if kind.endswith("compile"):
            mb.value_and_grad(model, params, xs, ys, budget=0.02)
        else:
            mb.value_and_grad(model, params, xs, ys, schedule=schedule)
    except KeyboardInterrupt:
        outcome = "KeyboardInterrupt"
    except BaseException as exc:
        outcome = f"{type(exc).__name__}: {exc}"
    done = time.perf_counter()
    time.sleep(0.3)
    print(json.dumps({"outcome": outcome, "after_signal": done - sent[0] if sent else None,
                      "call": done - t0, "threads": [t.name for t in threading.enumerate()]}))
""")


def _child(kind: str, T: int, delay: float, env: dict | None = None) -> dict:
    proc = subprocess.run([sys.executable, "-c", _CHILD, kind, str(T), str(delay)], capture_output=True, text=True,
                          timeout=600, env=env, preexec_fn=default_sigint)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("kind", ["one", pytest.param("lanes", marks=pytest.mark.slow),
                                  pytest.param("units", marks=pytest.mark.slow)])
def test_sigint_during_a_sweep_raises_keyboard_interrupt_at_once(kind):
    report = _child(kind, 200_000, 0.3)
    assert report["outcome"] == "KeyboardInterrupt", report
    assert report["after_signal"] < 1.0, report                 # within a second of the signal
    assert report["threads"] == ["MainThread"], report          # no worker left computing


@pytest.mark.slow
def test_sigint_while_numba_compiles_raises_keyboard_interrupt(tmp_path):
    """An empty Numba cache: the first call compiles the planner and the sweep for many seconds."""
    env = dict(os.environ, NUMBA_CACHE_DIR=str(tmp_path))
    report = _child("one-compile", 5000, 2.0, env=env)
    assert report["outcome"] == "KeyboardInterrupt", report
    assert report["after_signal"] < 1.0, report


def test_cli_interrupted_prints_one_line_and_exits_130():
    """The demo trains for minutes; SIGINT once it has printed its plan stops it with exit code 130."""
    proc = subprocess.Popen([sys.executable, "-m", "memopt_bptt", "demo", "--updates", "100000", "--steps", "200"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, preexec_fn=default_sigint)
    try:
        first = proc.stdout.readline()  # the demo's first line, printed before any compile or training
        assert first, proc.stderr.read()
        time.sleep(3.0)
        sent = time.perf_counter()
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=30)
        waited = time.perf_counter() - sent
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 130, (proc.returncode, err[-2000:])
    assert waited < 5.0, waited
    lines = [line for line in err.splitlines() if line.strip()]  # no progress bar: stderr is not a terminal
    assert lines == ["memopt-bptt: interrupted"], err


def test_ctrl_c_while_threads_start_stops_the_started_ones():
    """A SIGINT can land while run_interruptibly starts its threads (Thread.start waits for the
    thread to run): the threads already started are asked to stop and joined, none left running."""
    import threading

    from memopt_bptt._interrupt import run_interruptibly

    stop_flag = threading.Event()

    def work():  # a worker that polls its stop flag, as the sweeps do
        while not stop_flag.wait(0.01):
            pass

    class Interrupted(threading.Thread):
        def start(self):
            raise KeyboardInterrupt

    first = threading.Thread(target=work, daemon=True)
    with pytest.raises(KeyboardInterrupt):
        run_interruptibly([first, Interrupted(target=work, daemon=True)], stop_flag.set)
    assert stop_flag.is_set()
    assert not first.is_alive()
