"""A register-tiled GEMM for the narrow products of one step, emitted as LLVM IR.

The LSTM step's GEMMs have a short side: the batch (16 columns) in the
forward and data backward, 32-64 rows of K in the weight gradients. OpenBLAS
packs its operands for every call; on whole-matrix products at batch 16 one
thread reaches 80-90 GFLOP/s here, against 149 for a large sgemm. This
kernel never packs. It keeps an R x V tile of C in vector
registers (V vectors of one 64-byte line each: 16 float32 or 8 float64),
and for every k broadcasts R elements of A against V vectors of B's row k;
A is read through its strides, so a transposed view costs no copy. Measured
one thread, float32 (benchmarks/bench_gemm_kernels.py): on the products one
of two unit threads computes per step at hidden 256, batch 16, it takes
0.78-1.03x OpenBLAS's time (110-154 GFLOP/s); on whole (1024 x 256)-sized
products 0.67-0.73x.

Every element of C is one chain of fused multiply-adds over k = 0..K-1 in
order, so the result is deterministic, and independent of how the rows of C
are split between threads (``matmul``'s; ``product`` hands wide products to
BLAS with AVX2, whose bits can depend on the rows a call gets, so a unit
thread's share computed by one thread or another still gets the same bits,
but not its halves computed apart).

The tile's shape follows the vector registers of the CPU Numba compiles for
(:func:`vector_bytes`: the host's, or ``NUMBA_CPU_NAME``/``NUMBA_CPU_FEATURES``'s):
with AVX-512 (32 registers of 64 bytes) a line is one register and a tile holds
16 of them; with AVX2 (16 registers of 32 bytes) a line is two registers and
the tiles hold 12 (6 rows of one line, 3 of two, 1 of four), so that the
accumulators, B's vectors and the broadcast A element stay in registers
(16 lines there would spill to the stack on every k). A tile's shape changes
no result: each element is the same chain of fused multiply-adds. With
AVX2, ``product`` hands products wider than two lines to BLAS
(:func:`tiled_max_lines`), where OpenBLAS's own kernels measured faster, but for products of
one or two rows.

:func:`column` computes a one-column product (batch 1) with a dot product per
row of a weight as stored (a line of lanes, summed in a fixed order) or, for a
transposed view, the tiles' one-row form; :func:`gemm_n` and :func:`gemm_t`
(``w @ b`` and ``w.T @ b``) are the cells' entry points (BLAS otherwise).

``matmul(a, b, c, accumulate)`` computes ``c = a @ b`` (or ``c += a @ b``) for
2-D arrays of one float dtype where b's and c's rows are contiguous and the
column count is a multiple of the vector width; :func:`fits` says whether it
applies (half a line, 8 float32 or 4 float64, also does: lanes of batch 8),
and callers fall back to BLAS otherwise.
"""

from __future__ import annotations

import numba
from llvmlite import ir
from numba import njit, types
from numba.core import cgutils
from numba.extending import intrinsic

from .._jit import inner
from .blas import gemm
from .dot import LINE_BYTES, _float_arrays, _make_dot, _operands

__all__ = ["matmul", "fits", "product", "column", "gemm_n", "gemm_t", "LINE_BYTES", "vector_bytes", "tile_rows",
           "tiled_max_lines"]


_AVX512_CPUS = frozenset({
    "knl", "knm", "skylake-avx512", "cascadelake", "cooperlake", "cannonlake", "icelake-client",
    "icelake-server", "tigerlake", "rocketlake", "sapphirerapids", "emeraldrapids", "graniterapids",
    "graniterapids-d", "diamondrapids", "znver4", "znver5", "x86-64-v4"})
_AVX_CPUS_LACKING = frozenset({
    "generic", "x86-64", "x86-64-v2", "core2", "penryn", "nehalem", "westmere", "corei7", "atom",
    "silvermont", "goldmont", "goldmont-plus", "tremont", "btver1", "btver2", "amdfam10", "k8"})


def _widest(flags: dict) -> int:
    return 64 if flags.get("avx512f") else 32 if flags.get("avx") else 16


def vector_bytes(cpu_name: str | None = None, features: str | None = None) -> int:
    """Bytes of the widest vector register of the CPU Numba compiles for: 64 (AVX-512), 32 (AVX) or 16.

    By default the target is Numba's: ``NUMBA_CPU_NAME`` and ``NUMBA_CPU_FEATURES`` when set
    (``NUMBA_CPU_NAME=haswell NUMBA_CPU_FEATURES=""`` compiles AVX2 code on any x86-64 host),
    else the host's. An explicit feature string ("+avx2,-avx512f,...") decides; a named CPU
    with no features is looked up by name; no name (or "host") and no features is the host."""
    if cpu_name is None and features is None:
        from numba.core import config
        cpu_name, features = config.CPU_NAME, config.CPU_FEATURES
    if features:
        return _widest({f[1:]: f[0] == "+" for f in features.split(",") if f[:1] in "+-"})
    if cpu_name in (None, "host"):
        import llvmlite.binding as ll
        return _widest(ll.get_host_cpu_features())
    name = cpu_name.lower()
    if name in _AVX512_CPUS:
        return 64
    return 16 if name in _AVX_CPUS_LACKING else 32


def tile_rows(vbytes: int) -> tuple[int, int, int, int]:
    """Rows of C per tile for one, two and four lines of columns, and for half-line columns,
    for vector registers of ``vbytes`` bytes (see the module docstring)."""
    if vbytes >= LINE_BYTES:
        return 16, 4, 4, 16
    if vbytes == 32:
        return 6, 3, 1, 12
    return 3, 1, 1, 6


def _make_tile(R: int, V: int, half: bool = False):
    @intrinsic
    def tile(typingctx, a, b, c, m0, n0, accumulate):
        """c[m0:m0+R, n0:n0+V*W] (+)= a[m0:m0+R, :] @ b[:, n0:n0+V*W] (W halved with ``half``)."""
        if not _float_arrays(a, b, c):
            return None
        sig = types.void(a, b, c, m0, n0, accumulate)

        def codegen(context, builder, signature, args):
            (a_arr, b_arr, c_arr), (m0_v, n0_v), acc_flag = _operands(context, builder, signature, args)
            flt = context.get_value_type(signature.args[0].dtype)
            size = 4 if signature.args[0].dtype == types.float32 else 8
            W = LINE_BYTES // size // (2 if half else 1)
            i32, i64 = ir.IntType(32), ir.IntType(64)
            vec = ir.VectorType(flt, W)
            itemsize = ir.Constant(i64, size)
            K = cgutils.unpack_tuple(builder, a_arr.shape, 2)[1]
            sm, sk = (builder.sdiv(s, itemsize) for s in cgutils.unpack_tuple(builder, a_arr.strides, 2))
            ldb = builder.sdiv(cgutils.unpack_tuple(builder, b_arr.strides, 2)[0], itemsize)
            ldc = builder.sdiv(cgutils.unpack_tuple(builder, c_arr.strides, 2)[0], itemsize)
            undef = ir.Constant(vec, ir.Undefined)
            splat = ir.Constant(ir.VectorType(i32, W), [0] * W)
            fma = cgutils.get_or_insert_function(builder.module, ir.FunctionType(vec, [vec] * 3),
                                                 f"llvm.fma.v{W}{'f32' if size == 4 else 'f64'}")

            def vptr(base, offset):
                return builder.bitcast(builder.gep(base, [offset]), vec.as_pointer())

            def c_off(r, v):
                return builder.add(builder.mul(builder.add(m0_v, ir.Constant(i64, r)), ldc),
                                   builder.add(n0_v, ir.Constant(i64, v * W)))

            accs = [[cgutils.alloca_once(builder, vec) for _ in range(V)] for _ in range(R)]
            zero = ir.Constant(vec, [0.0] * W)
            for r in range(R):
                for v in range(V):
                    builder.store(zero, accs[r][v])
            with builder.if_then(acc_flag):
                for r in range(R):
                    for v in range(V):
                        builder.store(builder.load(vptr(c_arr.data, c_off(r, v)), align=size), accs[r][v])
            a_rows = [builder.mul(builder.add(m0_v, ir.Constant(i64, r)), sm) for r in range(R)]
            with cgutils.for_range(builder, K) as loop:
                k = loop.index
                b_row = builder.add(builder.mul(k, ldb), n0_v)
                bvs = [builder.load(vptr(b_arr.data, builder.add(b_row, ir.Constant(i64, v * W))), align=size)
                       for v in range(V)]
                ak = builder.mul(k, sk)
                for r in range(R):
                    a_val = builder.load(builder.gep(a_arr.data, [builder.add(a_rows[r], ak)]))
                    va = builder.shuffle_vector(builder.insert_element(undef, a_val, ir.Constant(i32, 0)),
                                                undef, splat)
                    for v in range(V):
                        builder.store(builder.call(fma, [va, bvs[v], builder.load(accs[r][v])]), accs[r][v])
            for r in range(R):
                for v in range(V):
                    builder.store(builder.load(accs[r][v]), vptr(c_arr.data, c_off(r, v)), align=size)
            return context.get_dummy_value()

        return sig, codegen

    return tile


_DOT_ROWS = 4
_dR, _d1 = _make_dot(_DOT_ROWS), _make_dot(1)


@inner(cache=True)
def column(a, b, c, accumulate):
    """``c (+)= a @ b`` for a one-column c by this module's kernels; False (nothing done) where
    they do not apply, for the caller's BLAS. OpenBLAS runs one-column products through its
    GEMM. Measured one thread, float32 (bench_gemm_kernels.py, the batch-1 products of an LSTM):
    at hidden 256 these take 0.95-1.07x the time of OpenBLAS's SkylakeX kernels and 0.23-0.34x
    of its Haswell ones (AVX2 code, --avx2); at hidden 1024 0.50-0.82x and 0.37-0.49x.

    a's rows contiguous (a weight as stored): a dot product per row, ``_make_dot``; a
    transposed view of such a weight: ``c^T = b^T @ a^T``, the tile kernel's one-row tiles
    (needs c's length a multiple of half a line). Each element's arithmetic does not depend
    on which rows of c a call computes."""
    if a.strides[1] == a.itemsize:
        return _column_rows(a, b, c, 1.0 if accumulate else 0.0)
    return _column_t(a.T, b, c, 1.0 if accumulate else 0.0)


@inner(cache=True)
def _column_rows(w, b, c, beta):
    """column for a weight w as stored: c = w @ b + beta c (beta 0 or 1) by a dot product per row.

    beta is a float, never a literal bool: a jitted callee is compiled once per literal
    argument, and the callers' True and False would compile this twice."""
    accumulate = beta != 0.0
    size = c.itemsize
    if c.shape[1] != 1 or c.shape[0] == 0 or w.strides[1] != size or b.strides[0] != size:
        return False
    M = c.shape[0]
    m0 = 0
    while m0 + _DOT_ROWS <= M:
        _dR(w, b, c, m0, accumulate)
        m0 += _DOT_ROWS
    while m0 < M:
        _d1(w, b, c, m0, accumulate)
        m0 += 1
    return True


@inner(cache=True)
def _column_t(w, b, c, beta):
    """column for a transposed weight: c = w.T @ b + beta c, w as stored, as c^T = b^T @ w in
    one-row tiles (beta a float, as in _column_rows).

    c^T's columns in half lines run at half width: slower than OpenBLAS's SkylakeX kernels
    there (M = 1000: 27.9 against 12.7 us), not than its Haswell ones (25.8 against 42.0 us)."""
    accumulate = beta != 0.0
    if c.shape[1] != 1 or c.shape[0] == 0 or w.strides[1] != c.itemsize:
        return False
    if fits(w, c.T) and (c.shape[0] % _width(c) == 0 or _VBYTES < LINE_BYTES):
        _one_row(b.T, w, c.T, accumulate)
        return True
    return False


@inner(cache=True)
def _one_row(a, b, c, accumulate):
    """matmul for a one-row c: the same tiles (so the same bits), and only the four one-row
    ones compiled (matmul's nine, compiled again for column's transposed views, had added
    about 10 s to a cell's first batch-1 sweep)."""
    N = c.shape[1]
    w = _width(c)
    if _R4 > 1 and N % (4 * w) == 0:
        for n0 in range(0, N, 4 * w):
            _t1x4(a, b, c, 0, n0, accumulate)
    elif N % (2 * w) == 0:
        for n0 in range(0, N, 2 * w):
            _t1x2(a, b, c, 0, n0, accumulate)
    elif N % w != 0:
        for n0 in range(0, N, w // 2):
            _h1x1(a, b, c, 0, n0, accumulate)
    else:
        for n0 in range(0, N, w):
            _t1x1(a, b, c, 0, n0, accumulate)


def tiled_max_lines(vbytes: int) -> int:
    """Widest C (in 64-byte lines of columns) for which ``product`` takes the tiled kernel rather than
    BLAS, for vector registers of ``vbytes`` bytes; 0: no limit. Measured one thread, float32
    (bench_gemm_kernels.py, --avx2 for 32 bytes): with AVX-512 the tiles take 0.70-1.02x OpenBLAS's
    time at every width; with AVX2 0.68-0.85x up to 16 columns, 0.97x at 64 and 1.11-1.24x at 256,
    where OpenBLAS's own Haswell kernels win. Products of one or two rows (a unit thread's share of
    dL/dh_{t-1} at batch 1 or 2) take the tiles at any width: with them in OpenBLAS's GEMM, AVX2 code
    on an AMD Zen 5 ran LSTM 256 at batch 1 in 0.064 s with two unit threads, no faster than one
    thread (0.065 s); with the tiles in 0.040 s (bench_split.py --avx2, _split.MATVEC_MIN_UNITS)."""
    return 0 if vbytes >= LINE_BYTES else 2


LONG_ROW_BYTES = 4096
"""One line of columns of C, a's rows contiguous and at least this long (a weight of 1024 or
more float32 columns as stored, the forward product of hidden 1024): tiles of half the rows
(8 with AVX-512, so 8 rows of a read at once, not 16). Each row of a is a stream of its own
that the hardware prefetcher learns again at every page; 16 at once starved the tiles.
Measured one thread, float32, AMD EPYC Zen 5 (AVX-512), (M x K) @ (K x 16): K = 1024, M =
2048: 16-row tiles 549-876 us, 8-row 366-407 us (1.5-2.2x); M = 4096 1.2-2.3x; at K = 512
and 256 (rows of half a page and less) the 16-row tiles were 3-9% faster, so they stay. With
AVX2 (6-row tiles) the 6-row ones stay faster at every K (3-row: 1.15-1.4x their time)."""
TILED_ROWS = 2
"""Products of at most this many rows take the tiles at any width (:func:`tiled_max_lines`): a unit
thread's share of dL/dh_{t-1} on a batch of ``_split.MATVEC_MAX_BATCH`` rows or fewer."""
_VBYTES = vector_bytes()
_R1, _R2, _R4, _RH = tile_rows(_VBYTES)
_MAX_LINES = tiled_max_lines(_VBYTES)
_R1_HALF = _R1 // 2
_tR1, _tR1h, _t1x1 = _make_tile(_R1, 1), _make_tile(_R1_HALF, 1), _make_tile(1, 1)
_hRH, _h1x1 = _make_tile(_RH, 1, True), _make_tile(1, 1, True)  # half-width vectors (8 float32)
_tR2, _t1x2 = _make_tile(_R2, 2), _make_tile(1, 2)
_tR4, _t1x4 = _make_tile(_R4, 4), _make_tile(1, 4)


@njit(cache=True, inline="always")
def _width(c):
    return LINE_BYTES // c.itemsize


@njit(cache=True)
def fits(b, c):
    """Whether matmul applies: b's and c's rows contiguous, columns a multiple of half the width."""
    w = _width(c) // 2
    return (c.shape[1] % w == 0 and c.shape[1] > 0 and c.strides[1] == c.itemsize
            and b.strides[1] == b.itemsize)


@njit(cache=True)
def matmul(a, b, c, accumulate):
    """c = a @ b, or c += a @ b with ``accumulate`` (see the module docstring; needs ``fits(b, c)``)."""
    M = c.shape[0]
    N = c.shape[1]
    w = _width(c)
    if _R4 > 1 and N % (4 * w) == 0:  # four lines a row only where several rows fit beside them (AVX-512)
        for n0 in range(0, N, 4 * w):
            m0 = 0
            while m0 + _R4 <= M:
                _tR4(a, b, c, m0, n0, accumulate)
                m0 += _R4
            while m0 < M:
                _t1x4(a, b, c, m0, n0, accumulate)
                m0 += 1
    elif N % (2 * w) == 0:
        for n0 in range(0, N, 2 * w):
            m0 = 0
            while m0 + _R2 <= M:
                _tR2(a, b, c, m0, n0, accumulate)
                m0 += _R2
            while m0 < M:
                _t1x2(a, b, c, m0, n0, accumulate)
                m0 += 1
    elif N % w != 0:  # half-width vectors
        for n0 in range(0, N, w // 2):
            m0 = 0
            while m0 + _RH <= M:
                _hRH(a, b, c, m0, n0, accumulate)
                m0 += _RH
            while m0 < M:
                _h1x1(a, b, c, m0, n0, accumulate)
                m0 += 1
    else:
        # rows of a of a page or more, read in place: half-height tiles (LONG_ROW_BYTES)
        long_rows = _R1 >= 16 and a.strides[1] == a.itemsize and a.shape[1] * a.itemsize >= LONG_ROW_BYTES
        for n0 in range(0, N, w):
            m0 = 0
            while not long_rows and m0 + _R1 <= M:
                _tR1(a, b, c, m0, n0, accumulate)
                m0 += _R1
            while m0 + _R1_HALF <= M:
                _tR1h(a, b, c, m0, n0, accumulate)
                m0 += _R1_HALF
            while m0 < M:
                _t1x1(a, b, c, m0, n0, accumulate)
                m0 += 1


@inner(cache=True)
def gemm_n(w, b, c, beta):
    """``c = w @ b + beta c`` (beta 0.0 or 1.0, a float as BLAS's), w a weight as stored: BLAS, or
    :func:`column`'s dot products for a one-column c (one batch row). The cells' products; each
    call site compiles only its form."""
    if not _column_rows(w, b, c, beta):
        gemm(False, False, 1.0, w, b, beta, c)


@inner(cache=True)
def gemm_t(w, b, c, beta):
    """``c = w.T @ b + beta c``, w a weight as stored: BLAS, or :func:`column`'s one-row tiles for
    a one-column c."""
    if not _column_t(w, b, c, beta):
        gemm(True, False, 1.0, w, b, beta, c)


@njit(cache=True)
def product(a, b, c, accumulate):
    """matmul where it fits and pays (:func:`tiled_max_lines`), else BLAS: ``c (+)= a @ b``; b's and
    c's rows contiguous, and a's rows or (a transposed view) its columns."""
    # one column (batch 1): the dot products for a weight's rows; a transposed view's one column
    # (only the unit threads' readout) stays with BLAS, which saves compiling the one-row tiles
    # for every signature of product
    if c.shape[1] == 1 and a.strides[1] == a.itemsize and _column_rows(a, b, c, 1.0 if accumulate else 0.0):
        return
    # a few rows (a unit thread's share of dL/dh_{t-1} at batch 1 or 2) take the tiles at any width:
    # there OpenBLAS's Haswell GEMM is a call per gate and step that packs (tiled_max_lines)
    if fits(b, c) and (_MAX_LINES == 0 or c.shape[1] <= _MAX_LINES * _width(c) or c.shape[0] <= TILED_ROWS):
        matmul(a, b, c, accumulate)
    elif a.strides[1] == a.itemsize:
        gemm(False, False, 1.0, a, b, 1.0 if accumulate else 0.0, c)
    else:
        gemm(True, False, 1.0, a.T, b, 1.0 if accumulate else 0.0, c)


if numba.config.DISABLE_JIT:  # pragma: no cover - exercised in a NUMBA_DISABLE_JIT subprocess test
    # The intrinsics cannot run as Python: without Numba the products are numpy's.
    def column(a, b, c, accumulate):  # noqa: F811 - pure-numpy stand-in
        """Without Numba: False, so callers take BLAS's pure-numpy stand-in."""
        return False

    _column_rows = _column_t = column

    def matmul(a, b, c, accumulate):  # noqa: F811 - pure-numpy stand-in
        """Without Numba: ``c = a @ b`` or ``c += a @ b`` in numpy."""
        prod = a @ b
        if accumulate:
            c += prod
        else:
            c[...] = prod
