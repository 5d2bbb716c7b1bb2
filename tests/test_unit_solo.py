"""Unit threads on a crowded machine: one thread runs every share, with the same bits.

A units-mode sweep splits each step's hidden units into shares, one per
thread, that meet at barriers. When the threads would not each have a CPU,
the sweep starts with one thread that runs every share (``_runner.crowded``),
and threads that keep stalling at barriers hand the rest of the sweep to
thread 0 (``_executor/_units.py``, "One thread or several").

Oracle: the same sweep with a thread per share, which is itself checked
against plain BPTT, PyTorch and finite differences in test_unit_threads.py
and test_stack_units.py; every way of running the shares must give its bits
(loss, every gradient, dL/dh0 and the gradient norms). The hand-over is
forced at a chosen barrier (``Run.switch_at``) so every point of the
dispatch is tried, and once for real, beside busy processes (slow).
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import memopt_bptt as mb
import memopt_bptt._executor._runner as runner

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _tracing import least_bytes  # noqa: E402

I, O = 3, 2


def model_of(hidden, threads, loss):
    sizes = [I, *hidden]
    cells = [mb.LSTM(sizes[k], h, grad_chunk=2) for k, h in enumerate(hidden)]
    return mb.Sequence(cells if len(cells) > 1 else cells[0], output_size=O, loss=loss, unit_threads=threads,
                       lanes=1)


def initial_state(model, batch, rng):
    shapes = model.state_shape(batch)
    if isinstance(shapes, list):  # a stack: one state per layer
        return [rng.normal(scale=0.5, size=s) for s in shapes]
    return rng.normal(scale=0.5, size=shapes)


def gradient(monkeypatch, model, params, xs, ys, h0, *, budget, crowded, switch_at=0, lengths=None):
    monkeypatch.setattr(runner, "crowded", lambda threads: crowded)
    monkeypatch.setattr(runner.Run, "switch_at", switch_at)
    norms = np.zeros(xs.shape[0] + 1)
    loss, grads, dh0 = mb.value_and_grad(model, params, xs, ys, h0=h0, budget=budget, return_h0_grad=True,
                                         ds_norms=norms, lengths=lengths)
    return loss, grads, dh0, norms


def assert_same_bits(got, want, what):
    assert got[0] == want[0], what
    for name in want[1]:
        assert np.array_equal(got[1][name], want[1][name]), (what, name)
    for g, w in zip(got[2] if isinstance(got[2], list) else [got[2]], want[2] if isinstance(want[2], list) else [want[2]]):
        assert np.array_equal(g, w), (what, "dL/dh0")
    assert np.array_equal(got[3], want[3]), (what, "norms")


# the 2-layer stack compiles a units sweep of its own (about 50 s on a slow 2-core machine): CI's slow step
@pytest.mark.parametrize("layers", [1, pytest.param(2, marks=pytest.mark.slow)])
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                 HealthCheck.function_scoped_fixture])
@given(threads=st.integers(2, 3), T=st.integers(1, 14), batch=st.integers(1, 4),
       width=st.integers(3, 7), loss=st.sampled_from(["mse", "cross_entropy"]), tight=st.booleans(),
       ragged=st.booleans(), switch_at=st.integers(1, 80), seed=st.integers(0, 2**16))
def test_one_thread_for_every_share_gives_the_bits_of_a_thread_per_share(monkeypatch, layers, threads, T, batch,
                                                                         width, loss, tight, ragged, switch_at,
                                                                         seed):
    hidden = [width + 2 * k for k in range(layers)]  # unequal layers: a share's units differ between them
    model = model_of(hidden, threads, loss)
    assert len(model.unit_split(batch)) == min(threads, hidden[-1])
    params = model.init_params(seed=seed)
    rng = np.random.default_rng(seed)
    xs = rng.normal(size=(T, batch, I))
    ys = rng.normal(size=(T, batch, O)) if loss == "mse" else rng.integers(0, O, size=(T, batch))
    h0 = initial_state(model, batch, rng)
    lengths = rng.integers(1, T + 1, size=batch) if ragged else None
    budget = least_bytes(model, T, batch) + 3 * model.sizes(batch=batch).state_bytes if tight else None
    kw = dict(budget=budget, lengths=lengths)
    per_share = gradient(monkeypatch, model, params, xs, ys, h0, crowded=False, **kw)
    assert_same_bits(gradient(monkeypatch, model, params, xs, ys, h0, crowded=True, **kw), per_share, "one thread")
    handed = gradient(monkeypatch, model, params, xs, ys, h0, crowded=False, switch_at=switch_at, **kw)
    assert_same_bits(handed, per_share, f"thread 0 alone after barrier {switch_at}")


@pytest.mark.slow  # compiles the 3-layer stack's units sweep
@pytest.mark.parametrize("switch_at", [1, 2, 5, 17, 40])
def test_a_three_layer_stack_hands_over_at_any_barrier(monkeypatch, switch_at):
    model = model_of([5, 7, 4], 2, "mse")
    T, batch = 11, 3
    params = model.init_params(seed=5)
    rng = np.random.default_rng(5)
    xs, ys = rng.normal(size=(T, batch, I)), rng.normal(size=(T, batch, O))
    h0 = initial_state(model, batch, rng)
    for budget in (None, least_bytes(model, T, batch) + 3 * model.sizes(batch=batch).state_bytes):
        per_share = gradient(monkeypatch, model, params, xs, ys, h0, budget=budget, crowded=False)
        assert_same_bits(gradient(monkeypatch, model, params, xs, ys, h0, budget=budget, crowded=True), per_share,
                         "one thread")
        assert_same_bits(gradient(monkeypatch, model, params, xs, ys, h0, budget=budget, crowded=False,
                                  switch_at=switch_at), per_share, f"after barrier {switch_at}")


def test_one_thread_runs_the_sweep_on_a_crowded_machine(monkeypatch):
    model = model_of([6], 2, "mse")
    params = model.init_params(seed=1)
    arrays = model.check_params(params)
    xs, ys = np.zeros((4, 2, I)), np.zeros((4, 2, O))
    checked = model.check_data(xs, ys, arrays[0].dtype)
    sizes = model.sizes(batch=2)

    def run_when(crowded):
        monkeypatch.setattr(runner, "crowded", lambda threads: crowded)
        return runner.Run(model, arrays, runner.Data.of(checked), sizes, loss_kind=0, scale=1.0)

    alone, shared = run_when(True), run_when(False)
    assert (alone.solo, alone.n_workers, alone.spin) == (True, 1, 0)
    assert (shared.solo, shared.n_workers) == (False, 2)
    grads = tuple(np.zeros_like(a) for a in arrays)
    jobs = alone.allocate(0, checked.h0, grads, np.zeros(0))
    table = jobs[0][0].units
    assert len(jobs) == 1 and list(table[0, 1, 1:4]) == [0, 2, 1]  # thread 0 runs shares 0..1, alone
    assert [list(table[s, 0, :2]) for s in range(2)] == [[0, 3], [3, 6]]
    # a thread per share: thread s runs share s
    jobs = shared.allocate(0, checked.h0, grads, np.zeros(0))
    assert len(jobs) == 2 and [list(jobs[0][0].units[s, 1, 1:4]) for s in range(2)] == [[0, 1, 0], [1, 2, 0]]


@pytest.mark.parametrize("free, others, busy, threads, want", [
    (1, 0, False, 2, True),      # fewer usable CPUs than threads
    (2, 0, True, 2, False),      # a CPU each, nothing else running now
    (2, 1, True, 2, True),       # one other runnable thread on a busy machine: one of ours would wait
    (2, 1, False, 2, False),     # ... but the load average says the machine was idle: a moment's spin
    (4, 2, True, 2, False),      # two others, four CPUs
    (4, 3, True, 2, True),
    (2, None, True, 2, True),    # no run queue to read: the load average decides
    (2, None, False, 2, False),
])
def test_crowded_counts_cpus_against_threads(monkeypatch, free, others, busy, threads, want):
    monkeypatch.setattr(runner, "usable_cpus", lambda: free)
    monkeypatch.setattr(runner.os, "cpu_count", lambda: free)
    monkeypatch.setattr(runner, "others_running", lambda enough=1: others)
    monkeypatch.setattr(runner, "machine_busy", lambda: busy)
    assert runner.crowded(threads) is want


def test_a_process_held_to_some_cpus_does_not_read_the_whole_machines_run_queue(monkeypatch):
    monkeypatch.setattr(runner, "usable_cpus", lambda: 2)
    monkeypatch.setattr(runner.os, "cpu_count", lambda: 64)
    monkeypatch.setattr(runner, "others_running", lambda enough=1: 40)
    monkeypatch.setattr(runner, "machine_busy", lambda: True)
    assert runner.crowded(2) is False   # the 40 may run on the other 62 CPUs
    assert runner.crowded(3) is True    # fewer CPUs than threads


@pytest.mark.skipif(__import__("platform").machine().lower() not in ("x86_64", "amd64"),
                    reason="the stall clock is x86's time-stamp counter")
def test_the_stall_clock_counts_a_sleep():
    import time

    from memopt_bptt._kernels.sync import cycles

    start = cycles()
    time.sleep(0.02)  # longer than any time slice
    waited = cycles() - start
    assert waited > 1 << 22  # 20 ms at any clock above 0.2 GHz: waits are measured in cycles


HOG = "import sys\nwhile True:\n    pass\n"


@pytest.mark.skipif(not os.path.exists("/proc/loadavg"), reason="no /proc/loadavg on this platform")
def test_others_running_sees_busy_processes():
    hogs = [subprocess.Popen([sys.executable, "-c", HOG]) for _ in range(2)]
    try:
        import time
        time.sleep(0.5)  # started and spinning
        assert runner.others_running() >= 2
    finally:
        for h in hogs:
            h.kill()
            h.wait()


@pytest.mark.skipif(not os.path.exists("/proc/self/task"), reason="no /proc/self/task on this platform")
def test_this_processs_own_busy_threads_are_not_other_work():
    """A BLAS pool spinning after a product, or any thread of this process, is this process's
    work: the run queue's count less this process's running threads."""
    import threading

    done = threading.Event()

    def busy():  # numpy's loops release the GIL: the thread stays running
        a = np.ones(1 << 20)
        while not done.is_set():
            np.sqrt(a, out=a)

    th = threading.Thread(target=busy, daemon=True)
    th.start()
    try:
        import time
        seen = 0
        for _ in range(50):  # the thread is running most of the time, not every look
            seen = max(seen, runner._own_running())
            time.sleep(0.002)
        assert seen >= 2  # this thread and the busy one
    finally:
        done.set()
        th.join()


@pytest.mark.slow  # a units sweep whose two threads share one CPU with a busy process: seconds
@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="needs CPU affinity to pin to one CPU")
def test_threads_that_stall_beside_busy_processes_go_on_with_one(tmp_path):
    """Two unit threads and a busy process on one CPU, the sweep told the machine is free: each
    thread waits at every barrier while its partner and the busy process have the CPU, so they
    hand the work to thread 0, and give the bits of the same sweep on a quiet machine.

    One CPU, not busy processes beside two: a scheduler that favours threads which sleep at
    barriers over busy processes (Linux's EEVDF) can keep both threads running on two CPUs
    shared with four busy processes, and then they rightly never hand over; on one CPU a
    thread's partner can only run while it waits."""
    script = textwrap.dedent(f"""
        import os, subprocess, sys
        import numpy as np
        import memopt_bptt as mb
        import memopt_bptt._executor._runner as runner
        from memopt_bptt._kernels.sync import SLOT, SWITCH
        cpu = {{min(os.sched_getaffinity(0))}}
        runner.crowded = lambda threads: False
        switches = []
        run = runner.Run.run
        def spy(self, codes, jobs):
            out = run(self, codes, jobs)
            switches.append(int(jobs[0][0].flags[-SLOT + SWITCH]))
            return out
        runner.Run.run = spy
        model = mb.Sequence(mb.LSTM(16, 128, grad_chunk=2), output_size=4, unit_threads=2, lanes=1)
        params = model.init_params(seed=0)
        rng = np.random.default_rng(0)
        xs, ys = rng.normal(size=(3000, 8, 16)), rng.normal(size=(3000, 8, 4))
        quiet = mb.value_and_grad(model, params, xs, ys, budget=0.1)
        os.sched_setaffinity(0, cpu)  # this process's threads, from here on, and the busy one
        hog = subprocess.Popen([sys.executable, "-c", {HOG!r}])
        os.sched_setaffinity(hog.pid, cpu)
        try:
            busy = mb.value_and_grad(model, params, xs, ys, budget=0.1)
        finally:
            hog.kill()
        assert switches[1] > 0, switches  # on one CPU: thread 0 went on alone
        assert busy[0] == quiet[0]
        for k in quiet[1]:
            assert np.array_equal(busy[1][k], quiet[1][k]), k
        print("ok", switches)
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "ok" in out.stdout


def test_the_report_says_how_the_shares_ran(monkeypatch):
    model = model_of([6], 2, "mse")
    params = model.init_params(seed=2)
    rng = np.random.default_rng(2)
    xs, ys = rng.normal(size=(9, 3, I)), rng.normal(size=(9, 3, O))
    said = {}
    for case, crowded, switch_at in (("threads", False, 0), ("one", True, 0), ("handed", False, 4)):
        monkeypatch.setattr(runner, "crowded", lambda threads, c=crowded: c)
        monkeypatch.setattr(runner.Run, "switch_at", switch_at)
        *_, report = mb.value_and_grad(model, params, xs, ys, budget=None, return_report=True)
        said[case] = report.workers
        assert f"workers         {report.workers}" in str(report)
    assert said["threads"] == "2 unit threads"
    assert said["one"].startswith("one thread ran all 2 unit shares")
    assert said["handed"].startswith("2 unit threads;") and "after barrier 4" in said["handed"]
    lanes = mb.Sequence(mb.LSTM(I, 6), output_size=O, lanes=2, unit_threads=1)
    *_, report = mb.value_and_grad(lanes, lanes.init_params(seed=2), xs, ys, return_report=True)
    assert report.workers == "2 lanes of [2, 1] batch rows"


def test_the_unit_threads_pool_is_mapped_before_they_start(monkeypatch):
    """_runner._touch_pages writes a zero byte into each page of the checkpoint pool before the
    threads start (a page first touched inside the sweep stalls one thread while the other
    waits at a barrier, which once handed a quiet sweep to one thread), and nothing else."""
    a = np.full(3 * runner.PAGE_BYTES // 4 + 5, 1.5, np.float32)
    runner._touch_pages(a)
    raw = a.view(np.uint8)
    touched = np.arange(0, raw.size, runner.PAGE_BYTES)
    assert np.all(raw[touched] == 0) and len(touched) == 4
    rest = np.delete(raw, touched)
    assert np.array_equal(rest, np.delete(np.full(a.size, 1.5, np.float32).view(np.uint8), touched))

    seen = []
    monkeypatch.setattr(runner, "_touch_pages", lambda pool: seen.append(pool.size))
    monkeypatch.setattr(runner, "crowded", lambda threads: False)
    model = model_of([6], 2, "mse")
    arrays = model.check_params(model.init_params(seed=1))
    checked = model.check_data(np.zeros((4, 2, I)), np.zeros((4, 2, O)), arrays[0].dtype)
    run = runner.Run(model, arrays, runner.Data.of(checked), model.sizes(batch=2), loss_kind=0, scale=1.0)
    jobs = run.allocate(3, checked.h0, tuple(np.zeros_like(x) for x in arrays), np.zeros(0))
    assert seen == [jobs[0][0].pool.size] and jobs[0][0].pool.size > 0
