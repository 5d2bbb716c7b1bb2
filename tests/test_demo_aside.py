"""The demo's first run plans in a second process while it compiles the sweep (cli/_demo.py, ``_plan_aside``).

Oracles: Numba's own compile events (a process that plans after the child
compiles nothing of the planner: it loaded it from the cache the child
filled), the demo's bit-identity check, and /proc (no child outlives a
Ctrl-C). Each test starts from an empty Numba cache, so each compiles for
seconds: slow.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest
from _compile_events import LISTENER
from _signals import default_sigint

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not hasattr(os, "sched_getaffinity") or len(os.sched_getaffinity(0)) < 2,
                                 reason="the aside runs only with two or more CPUs")]

_START_ASIDE = textwrap.dedent("""
    import argparse, sys
    from memopt_bptt.cli import _demo
    from memopt_bptt._plans import planner_cached
    assert not planner_cached(), "the cache was not empty"
    args = argparse.Namespace(steps=120, batch=4, dtype="float32", hidden=8, budget=0.2, policy="msm")
    child = _demo._plan_aside(args)
    assert child is not None, "no child started on an empty cache"
    sys.exit(child.wait(timeout=300))
""")

_PLAN_AFTER = LISTENER + textwrap.dedent("""
    import memopt_bptt as mb
    from memopt_bptt._plans import planner_cached
    assert planner_cached()
    model = mb.Sequence(mb.LSTM(input_size=2, hidden_size=8), output_size=1, loss="mse")
    s = mb.plan(120, budget=0.2, model=model, batch=4, dtype="float32", policy="msm")
    assert s.forward_steps > 120
    planner = [name for name, _ in compiled if name.startswith("memopt_bptt._planner")]
    assert not planner, planner
    print("ok")
""")


def test_the_child_fills_the_cache_the_demo_then_plans_from(tmp_path):
    env = dict(os.environ, NUMBA_CACHE_DIR=str(tmp_path / "cache"))
    first = subprocess.run([sys.executable, "-c", _START_ASIDE], capture_output=True, text=True, timeout=600, env=env)
    assert first.returncode == 0, first.stderr[-3000:]
    after = subprocess.run([sys.executable, "-c", _PLAN_AFTER], capture_output=True, text=True, timeout=600, env=env)
    assert after.returncode == 0 and after.stdout.strip() == "ok", after.stderr[-3000:]


def _asides() -> list[str]:
    """Pids of running plan-aside children (their command line holds the aside's code)."""
    found = []
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                with open(f"/proc/{pid}/cmdline", "rb") as f:
                    if b"T, B, dtype, hidden, budget, policy = sys.argv[1:]" in f.read():
                        found.append(pid)
            except OSError:
                continue
    return found


@pytest.mark.skipif(not os.path.isdir("/proc"), reason="lists processes through /proc")
def test_a_first_demo_works_and_ctrl_c_leaves_no_child(tmp_path):
    env = dict(os.environ, NUMBA_CACHE_DIR=str(tmp_path / "cache"))
    demo = [sys.executable, "-m", "memopt_bptt", "demo", "--steps", "200", "--updates", "2"]
    # interrupted while both processes compile: exit 130, and the child is gone with the parent
    proc = subprocess.Popen(demo, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                            preexec_fn=default_sigint)
    try:
        deadline = time.monotonic() + 30
        while not _asides() and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.1)
        assert _asides(), "the demo started no planning child on an empty cache"
        time.sleep(1.0)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 130, err[-2000:]
    time.sleep(0.5)
    assert not _asides(), "a planning child outlived the interrupted demo"
    # the same first run, to its end: the plan, training and the bit-identity check
    done = subprocess.run(demo, capture_output=True, text=True, timeout=600, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "gradient check: loss and all 6 parameter gradients are bit-identical to plain BPTT" in done.stdout
    assert not _asides()
