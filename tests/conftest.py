"""Test-session settings.

OpenBLAS's worker threads spin while they wait; with the small per-step GEMMs
of these tests and several test subprocesses at once, two BLAS threads per
process on a 2-core machine slow everything down many times over. One BLAS
thread per process keeps the suite fast and predictable (subprocesses inherit
this). Benchmarks pin their own thread counts.
"""

import os

import pytest

# A calibration file (mb.calibrate) would change the automatic splits the tests check against the rule;
# the tests that calibrate point MEMOPT_BPTT_CALIBRATION at their own temporary file.
os.environ["MEMOPT_BPTT_CALIBRATION"] = "off"

for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")


# The files that compile the most, heaviest first, and the ones that compile the same sweeps together
# (the first to compile a sweep caches it on disk for the other worker, but two workers that reach it
# at once both compile it: 30-60 s each on a slow 2-core machine). Every other file follows in its
# own group, in collection order. Measured on a 2-core AMD EPYC: 451 s with a file to a worker in
# alphabetical order.
_HEAVY_FIRST = [("test_executor.py", "test_testing.py"),   # every built-in cell's float64 sweep
                ("test_cli.py",),                          # the demo, in a fresh process
                ("test_misuse.py", "test_model.py"),       # the Elman's float64 and float32 sweeps
                ("test_models.py",)]                       # the stacks'


@pytest.hookimpl(tryfirst=True)  # before xdist's own hook reads the groups
def pytest_collection_modifyitems(config, items):
    """A worker gets a whole group (``--dist loadgroup``, setup.cfg): a file, or the files above that
    share sweeps; the heavy groups go out first, so no worker starts a long one last."""
    rank, group = {}, {}
    for k, files in enumerate(_HEAVY_FIRST):
        for name in files:
            rank[name], group[name] = k, files[0]
    for item in items:
        name = item.path.name
        item.add_marker(pytest.mark.xdist_group(group.get(name, name)))
    items.sort(key=lambda item: rank.get(item.path.name, len(_HEAVY_FIRST)))


def pytest_xdist_auto_num_workers(config):
    """``-n auto`` (setup.cfg): a worker per CPU this process may use, at most 4 (more workers compile
    more of the same sweeps than they save)."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not on Linux
        cpus = os.cpu_count() or 1
    return max(1, min(cpus, 4))
