"""Both machine kinds from one machine: the tiled GEMM's shape follows the vector width Numba
compiles for, and AVX2 code (NUMBA_CPU_NAME=haswell) gives the same bits as this host's.

Oracles: numpy's float64 products (to rounding), and the host's own build of the same
products in another process (bit for bit: every element of C is one chain of fused
multiply-adds over k in order, whatever the tile's shape or the register width).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from memopt_bptt._kernels.mm import LINE_BYTES, tile_rows, tiled_max_lines, vector_bytes


@pytest.mark.parametrize("name,features,want", [
    ("haswell", "", 32), ("skylake", "", 32), ("znver3", "", 32), ("x86-64-v3", "", 32),
    ("skylake-avx512", "", 64), ("rocketlake", "", 64), ("znver4", "", 64), ("x86-64-v4", "", 64),
    ("nehalem", "", 16), ("x86-64", "", 16),
    ("rocketlake", "+avx,+avx2,-avx512f", 32), ("haswell", "+avx,+avx2,+avx512f", 64), (None, "+sse2,-avx", 16),
])
def test_vector_bytes_of_a_named_target(name, features, want):
    assert vector_bytes(name, features) == want


def test_vector_bytes_follows_numba_target(monkeypatch):
    from numba.core import config
    monkeypatch.setattr(config, "CPU_NAME", "haswell")
    monkeypatch.setattr(config, "CPU_FEATURES", "")
    assert vector_bytes() == 32
    monkeypatch.setattr(config, "CPU_FEATURES", "+avx,+avx2,+avx512f")
    assert vector_bytes() == 64
    # features set empty without a name: the host's (this once recursed without end)
    monkeypatch.setattr(config, "CPU_NAME", None)
    monkeypatch.setattr(config, "CPU_FEATURES", "")
    import llvmlite.binding as ll
    host = ll.get_host_cpu_features()
    assert vector_bytes() == (64 if host.get("avx512f") else 32 if host.get("avx") else 16)


@pytest.mark.parametrize("vbytes", [16, 32, 64])
def test_tiles_fit_the_vector_registers(vbytes):
    """Accumulators (rows x lines x registers per line) within the registers a kind has, leaving
    four for B's vectors and the broadcast A element (32 registers with AVX-512, 16 below it);
    a tile of one row is the least there is."""
    registers = 32 if vbytes == 64 else 16
    per_line = max(1, LINE_BYTES // vbytes)
    r1, r2, r4, rh = tile_rows(vbytes)
    for rows, lines in ((r1, 1), (r2, 2), (r4, 4), (rh, 0.5)):
        assert rows >= 1 and (rows == 1 or rows * max(1, int(lines * per_line)) <= registers - 4)


def test_the_tiled_kernel_is_chosen_only_where_it_measured_faster():
    """With AVX-512 every width; with AVX2 (and narrower) at most two lines of columns, BLAS beyond
    (bench_gemm_kernels.py --avx2: the tiles lost to OpenBLAS's Haswell kernels at 256 columns), but
    for products of one or two rows (test_avx2_build_gives_the_same_bits_as_the_host_build)."""
    assert tiled_max_lines(64) == 0
    assert tiled_max_lines(32) == 2 and tiled_max_lines(16) == 2
    from memopt_bptt import _split
    from memopt_bptt._kernels.mm import TILED_ROWS
    assert TILED_ROWS >= _split.MATVEC_MAX_BATCH  # every batch the matrix-vector rule splits by units


_PRODUCTS = """
import json, sys
import numpy as np
from numba import njit
from memopt_bptt._kernels.mm import column, matmul, product, vector_bytes
one_column = njit(lambda a, b, c: column(a, b, c, True))  # column has no Python wrapper (mm: inner)
out = {"vector_bytes": vector_bytes(), "c": []}
for dtype, M, K, N in ((np.float32, 37, 19, 16), (np.float32, 13, 7, 64), (np.float32, 9, 5, 32),
                       (np.float32, 21, 6, 8), (np.float64, 11, 9, 16)):
    rng = np.random.default_rng(M * N + K)
    a = rng.standard_normal((M, K)).astype(dtype)
    b = rng.standard_normal((K, N)).astype(dtype)
    c = rng.standard_normal((M, N)).astype(dtype)
    matmul(a, b, c, True)
    out["c"].append(c.astype(np.float64).tolist())
for M, K in ((1, 64), (2, 128)):   # one- and two-row products 16 lines wide: the tiles on both kinds
    rng = np.random.default_rng(M + K)
    a = rng.standard_normal((M, K)).astype(np.float32)
    b = rng.standard_normal((K, 256)).astype(np.float32)
    c = rng.standard_normal((M, 256)).astype(np.float32)
    product(a, b, c, True)
    out["c"].append(c.astype(np.float64).tolist())
for dtype, M, K in ((np.float32, 37, 50), (np.float64, 12, 21)):   # one-column products
    rng = np.random.default_rng(M + K)
    a = rng.standard_normal((M, K)).astype(dtype)
    b = rng.standard_normal((K, 1)).astype(dtype)
    c = rng.standard_normal((M, 1)).astype(dtype)
    assert one_column(a, b, c)
    out["c"].append(c.astype(np.float64).tolist())
print(json.dumps(out))
"""


def _products(env_extra: dict) -> dict:
    env = dict(os.environ, **env_extra)
    proc = subprocess.run([sys.executable, "-c", _PRODUCTS], capture_output=True, text=True, env=env,
                          timeout=600, check=True)
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_avx2_build_gives_the_same_bits_as_the_host_build():
    """The GEMM compiled for haswell (AVX2 tiles of 6 rows x 2 registers) in one process and for this
    host in another: equal bit for bit, and equal to numpy's float64 products to rounding; and so
    the one-column dot products (one 64-byte line of lanes: one register, or two with AVX2), and
    ``product``'s one- and two-row products of 256 columns, which the tiles take on both kinds
    (with AVX2 they went to OpenBLAS's GEMM once, whose sums come out in other bits)."""
    host = _products({})
    avx2 = _products({"NUMBA_CPU_NAME": "haswell", "NUMBA_CPU_FEATURES": ""})
    assert avx2["vector_bytes"] == 32
    assert host["c"] == avx2["c"]
    for dtype, M, K, N in ((np.float32, 37, 19, 16), (np.float32, 13, 7, 64)):
        rng = np.random.default_rng(M * N + K)
        a = rng.standard_normal((M, K)).astype(dtype)
        b = rng.standard_normal((K, N)).astype(dtype)
        c = rng.standard_normal((M, N)).astype(dtype)
        want = c.astype(np.float64) + a.astype(np.float64) @ b.astype(np.float64)
        got = np.array(avx2["c"][0 if N == 16 else 1])
        assert np.max(np.abs(got - want)) < 1e-4


def test_describe_split_names_the_tiles_of_the_target(monkeypatch):
    """The unit threads' description says which vector width their GEMM was built for (the target
    Numba compiles for: here monkeypatched to haswell, as NUMBA_CPU_NAME=haswell would set it)."""
    import memopt_bptt as mb
    from numba.core import config
    model = mb.Sequence(mb.LSTM(64, 256), output_size=4)
    assert model.describe_split(16).startswith("2 unit threads")
    monkeypatch.setattr(config, "CPU_NAME", "haswell")
    monkeypatch.setattr(config, "CPU_FEATURES", "")
    assert "tiled GEMM for 32-byte vectors (6-row tiles, up to 2 lines, BLAS beyond)" in model.describe_split(16)
    monkeypatch.setattr(config, "CPU_NAME", "skylake-avx512")
    assert ("tiled GEMM for 64-byte vectors (16-row tiles, 8 for rows of 4096 bytes or more, any width)"
            in model.describe_split(16))


def test_the_split_is_the_same_for_both_kinds(monkeypatch):
    """With 2 MiB of L2 per core (the suite's pin, tests/conftest.py) the split (lanes, unit
    threads) depends on the model and the batch only: the same under a haswell target as under
    this host's, so gradients are the same bits on both kinds (bench_split.py found the same
    lanes-versus-unit-threads choices best with both on such a machine). Below 1.5 MiB the
    vector width enters: tests/test_split_machine.py."""
    import memopt_bptt as mb
    from numba.core import config
    models = [mb.Sequence(mb.LSTM(64, h), output_size=16) for h in (64, 128, 256, 512, 1024)]
    models += [mb.Sequence(mb.GRU(64, 256), output_size=16), mb.Sequence(mb.Elman(64, 1024), output_size=16),
               mb.Sequence([mb.LSTM(64, 256), mb.LSTM(256, 256)], output_size=16)]

    def splits():
        return [(m.lane_batches(b), m.unit_split(b), m.describe_split(b).split(";")[0])
                for m in models for b in (1, 16, 32, 64, 128)]

    host = splits()
    monkeypatch.setattr(config, "CPU_NAME", "haswell")
    monkeypatch.setattr(config, "CPU_FEATURES", "")
    assert splits() == host
    wide = models[2]
    assert wide.lane_batches(64) == (32, 32) and wide.unit_split(16) == ((0, 128), (128, 256))
    assert models[5].lane_batches(64) == (32, 32) and models[5].lane_batches(16) == (16,)
