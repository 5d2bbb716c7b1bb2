"""The one machine-dependent choice of the split rule (memopt_bptt._split.units_over_lanes): two
unit threads replace the rule's two lanes where the compiled code has 64-byte vectors, the L2
per core is below 1.5 MiB and the lanes' OpenBLAS runs narrower kernels (measured on an AMD EPYC
Zen 5 with OpenBLAS on its Haswell kernels, see UNITS_OVER_LANES_MAX_L2).

The machine facts are passed explicitly: the L2 through MEMOPT_BPTT_L2_BYTES, the vector width
through Numba's target (NUMBA_CPU_NAME's config), OpenBLAS's kernels by replacing blas_core, so
every machine kind is checked here whatever this host is. Oracle for the gradients: the same model with the split asked for explicitly (bit for
bit) and one sweep (to rounding).
"""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
from numba.core import config

import memopt_bptt as mb
from memopt_bptt import _split
from memopt_bptt._kernels import blas

MiB = 1 << 20


def _target(monkeypatch, vbytes, core=("Haswell", 32)):
    name = {64: "skylake-avx512", 32: "haswell"}[vbytes]
    monkeypatch.setattr(config, "CPU_NAME", name)
    monkeypatch.setattr(config, "CPU_FEATURES", "")
    monkeypatch.setattr(blas, "blas_core", lambda: core)


def _split_of(model, batch):
    return len(model.lane_batches(batch)), len(model.unit_split(batch))


@pytest.mark.parametrize("l2,vbytes,core,want", [
    (1 * MiB, 64, ("Haswell", 32), (1, 2)),      # Zen 5 with OpenBLAS on its Haswell kernels: unit threads
    (512 << 10, 64, ("Zen", 32), (1, 2)),
    (1 * MiB, 64, ("SkylakeX", 64), (2, 1)),     # Zen 5 with OpenBLAS's own choice: lanes
    (1 * MiB, 64, ("Zen9", None), (2, 1)),       # kernels of a width not known here: lanes
    (1 * MiB, 64, None, (2, 1)),                 # another BLAS: lanes
    (1 * MiB, 32, ("Haswell", 32), (2, 1)),      # AVX2 code on the same host: lanes
    (2 * MiB, 64, ("Haswell", 32), (2, 1)),      # Sapphire Rapids' kind: lanes
    (3 * MiB // 2, 64, ("Haswell", 32), (2, 1)),  # the bound itself: lanes
])
def test_units_replace_lanes_only_on_the_measured_kind(monkeypatch, l2, vbytes, core, want):
    monkeypatch.setenv("MEMOPT_BPTT_L2_BYTES", str(l2))
    _target(monkeypatch, vbytes, core)
    for cell, hidden, batch in (("LSTM", 128, 16), ("LSTM", 64, 8), ("GRU", 64, 16), ("LSTM", 256, 64),
                                ("GRU", 256, 64)):
        model = mb.Sequence(getattr(mb, cell)(64, hidden), output_size=16)
        assert _split_of(model, batch) == want, (cell, hidden, batch)
        why = model.describe_split(batch)
        if want == (1, 2):
            assert f"{l2 // 1024} KiB of L2 per core < 1536 KiB" in why and "64-byte vectors" in why
            assert f"OpenBLAS's {core[0]} kernels (32-byte vectors)" in why
        else:
            assert "lanes of" in why and "instead of lanes" not in why


def test_what_units_over_lanes_leaves_alone(monkeypatch):
    """Where the rule takes no lanes, for cells without unit kernels, layers too narrow to split, and
    wherever the user chose: the choice is the rule's as on any machine."""
    monkeypatch.setenv("MEMOPT_BPTT_L2_BYTES", str(MiB))
    _target(monkeypatch, 64)
    assert _split_of(mb.Sequence(mb.Elman(64, 256), output_size=16), 16) == (2, 1)    # no unit kernels
    assert _split_of(mb.Sequence(mb.LSTM(64, 48), output_size=16), 16) == (2, 1)     # 24 units a thread
    assert _split_of(mb.Sequence(mb.LSTM(64, 128), output_size=16), 7) == (1, 1)     # no lanes to replace
    assert _split_of(mb.Sequence(mb.LSTM(64, 128), output_size=16, lanes=2), 16) == (2, 1)
    assert _split_of(mb.Sequence(mb.LSTM(64, 128), output_size=16, unit_threads=1), 16) == (2, 1)
    assert _split_of(mb.Sequence(mb.LSTM(64, 128), output_size=16, lanes=1), 16) == (1, 1)
    assert _split_of(mb.Sequence(mb.LSTM(64, 256), output_size=16), 16) == (1, 2)     # the rule's own units
    embedded = mb.Sequence([mb.Embedding(50, 32), mb.LSTM(32, 128)], output_size=16)  # no unit kernels
    assert _split_of(embedded, 16) == (2, 1)


def test_blas_core_is_openblas_own_or_the_environments():
    """What OpenBLAS runs, read from the library: its own choice here, and in a process started
    with OPENBLAS_CORETYPE=Haswell (as this project's development machines were) its Haswell kernels."""
    found = blas.blas_core()
    if not blas.BLAS_LIBRARY.startswith("numpy-openblas"):
        assert found is None
        pytest.skip("SciPy's BLAS: no core to read")
    assert found[0] and found[1] in (None, 32, 64)
    code = "from memopt_bptt._kernels.blas import blas_core; print(blas_core())"
    env = dict(os.environ, OPENBLAS_CORETYPE="Haswell")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "('Haswell', 32)"


def test_l2_is_read_from_the_machine_or_the_environment(monkeypatch):
    monkeypatch.delenv("MEMOPT_BPTT_L2_BYTES", raising=False)
    found = _split.l2_bytes()
    if os.path.isdir("/sys/devices/system/cpu/cpu0/cache"):
        assert found is not None and 64 << 10 <= found <= 64 * MiB
    monkeypatch.setenv("MEMOPT_BPTT_L2_BYTES", "1048576")
    assert _split.l2_bytes() == MiB
    for bad in ("1M", "0", "-5"):
        monkeypatch.setenv("MEMOPT_BPTT_L2_BYTES", bad)
        with pytest.raises(ValueError, match="MEMOPT_BPTT_L2_BYTES"):
            mb.Sequence(mb.LSTM(64, 128), output_size=16).lane_batches(16)


def test_the_replaced_split_computes_the_unit_threads_gradients(monkeypatch):
    """The default on the measured kind is exactly unit_threads=2 (same bits), and one sweep's
    gradients to rounding; a budget plans for the unit threads' buffers."""
    monkeypatch.setenv("MEMOPT_BPTT_L2_BYTES", str(MiB))
    _target(monkeypatch, 64)
    rng = np.random.default_rng(3)
    T, B = 40, 8
    xs = rng.standard_normal((T, B, 6))
    ys = rng.standard_normal((T, B, 3))
    default = mb.Sequence(mb.LSTM(6, 64), output_size=3)
    assert _split_of(default, B) == (1, 2)
    units = mb.Sequence(mb.LSTM(6, 64), output_size=3, unit_threads=2)
    one = mb.Sequence(mb.LSTM(6, 64), output_size=3, lanes=1, unit_threads=1)
    params = default.init_params(seed=1)
    budget = 0.2  # a fraction of plain BPTT's memory: the schedule replays segments
    got = mb.value_and_grad(default, params, xs, ys, budget=budget)
    want = mb.value_and_grad(units, params, xs, ys, budget=budget)
    ref = mb.value_and_grad(one, params, xs, ys)
    assert got[0] == want[0]
    for k in params:
        assert np.array_equal(got[1][k], want[1][k]), k
        np.testing.assert_allclose(got[1][k], ref[1][k], rtol=1e-10, atol=1e-13)
