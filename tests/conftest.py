"""Test-session settings.

OpenBLAS's worker threads spin while they wait; with the small per-step GEMMs
of these tests and several test subprocesses at once, two BLAS threads per
process on a 2-core machine slow everything down many times over. One BLAS
thread per process keeps the suite fast and predictable (subprocesses inherit
this). Benchmarks pin their own thread counts.
"""

import os

# A calibration file (mb.calibrate) would change the automatic splits the tests check against the rule;
# the tests that calibrate point MEMOPT_BPTT_CALIBRATION at their own temporary file.
os.environ["MEMOPT_BPTT_CALIBRATION"] = "off"

for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")
