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
# Likewise the L2 cache per core that the rule reads (memopt_bptt._split.units_over_lanes): pinned to
# 2 MiB, so the automatic splits the tests check are the same on every machine; tests/test_split_machine.py
# sets other sizes.
os.environ["MEMOPT_BPTT_L2_BYTES"] = str(2 << 20)

for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")


# The files that compile the most, heaviest first, and the ones that compile the same sweeps together
# (the first to compile a sweep caches it on disk for the other worker, but two workers that reach it
# at once both compile it: 30-60 s each on a slow 2-core machine). Every other file follows in its
# own group, in collection order. Measured on a 2-core AMD EPYC (clean cache, CI's settings): 719 s in
# one process, 446-452 s with a file to a worker in alphabetical order, 397 s with these groups first.
_HEAVY_FIRST = [("test_executor.py", "test_testing.py"),   # every built-in cell's float64 sweep
                ("test_cli.py",),                          # the demo, in a fresh process
                ("test_misuse.py", "test_model.py"),       # the Elman's float64 and float32 sweeps
                ("test_models.py",)]                       # the stacks'


_RANK = {name: k for k, files in enumerate(_HEAVY_FIRST) for name in files}
_GROUP = {name: files[0] for files in _HEAVY_FIRST for name in files}


def pytest_xdist_make_scheduler(config, log):
    """A worker gets a whole group: a file, or the files above that share sweeps (what ``--dist
    loadgroup`` would do with marks, but that loses its groups with pytest 9.2: pytest-xdist issue
    1386). Only for setup.cfg's ``--dist loadfile``: another ``--dist`` on the command line is xdist's."""
    if config.getoption("dist") != "loadfile":
        return None
    from xdist.scheduler import LoadScopeScheduling

    class Groups(LoadScopeScheduling):
        def _split_scope(self, nodeid):
            path = nodeid.split("::", 1)[0]
            return _GROUP.get(path.rsplit("/", 1)[-1], path)

    return Groups(config, log)


def pytest_collection_modifyitems(config, items):
    """The heavy groups go out first (the scheduler takes them in this order), so no worker starts a
    long one last."""
    items.sort(key=lambda item: _RANK.get(item.path.name, len(_HEAVY_FIRST)))


def pytest_xdist_auto_num_workers(config):
    """``-n auto`` (setup.cfg): a worker per CPU this process may use, at most 4 (more workers compile
    more of the same sweeps than they save)."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not on Linux
        cpus = os.cpu_count() or 1
    return max(1, min(cpus, 4))
