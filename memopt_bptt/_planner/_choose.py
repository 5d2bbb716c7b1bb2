"""plan_quanta: which table or closed form plans a policy in a budget of
quanta (see the package docstring for the recurrences and their proofs),
and the refusal, before allocating, of a plan whose tables and schedule
need more memory than this process can get."""

from __future__ import annotations

import os
import warnings

import numba
import numpy as np

from ._closed import _fixed_pool, _plain, _sqrt_segment
from ._emit import _MODE_ISM, _MODE_REVOLVE, _MODE_SQRT, _MODE_TABLE, _emit, emit_bytes
from ._msm import PAIR_MIN_CELLS, _msm_fast_table, _msm_fast_table_pair
from ._runs import _runs_of
from ._tables import _dp_table, _ism_table, _lb_of, _lb_taus

__all__ = ["HSM_TABLE_MAX_WORK", "MSM_EXACT_MAX_WORK", "POLICIES", "available_bytes", "msm_table_work",
           "plan_quanta"]

POLICIES = ("msm", "hsm", "ism", "revolve", "sqrt", "full")

MSM_EXACT_MAX_WORK = 1e9
"""msm_table_work above which msm falls back to the better of ism and revolve
(with a warning)."""
HSM_TABLE_MAX_WORK = 4e8
"""Inner-loop iterations (about T^2 m) of the HSM table above which ``hsm``
uses the closed form instead (the same cost, proven equal on T <= 500, m <= 20)."""


def msm_table_work(T: int, M: int, hq: int, kq: int) -> float:
    """Work of the exact MSM table for T steps and M free quanta: 0 when the
    optimum is its lower bound (T <= tau, no table), else cells of the pruned
    table (2 start kinds x (M'+1) x (T+1), M' = M capped at plain BPTT's need)
    when kq >= hq, else inner-loop iterations of the full scan (both start
    kinds, both options)."""
    cap = min(M, max(T - 1, 0) * kq)
    if kq >= hq:
        if T <= _lb_taus(cap, hq, kq, T)[0, cap]:
            return 0.0
        return 2.0 * (cap + 1) * (T + 1)
    t = np.arange(1, T + 1, dtype=np.float64)
    m_used = np.minimum(float(M), (t - 1) * kq)
    return float(np.sum(4.0 * t * m_used))


def _choice_dtype(T: int) -> type:
    """The splits' dtype: a split is at most T, so int16 up to 2^15 - 1 steps halves the table."""
    return np.int16 if T < 2 ** 15 else np.int32


def plan_quanta(T: int, free_quanta: int, hq: int, kq: int, policy: str = "msm") -> tuple[np.ndarray, int, int]:
    """Plan in quanta: (codes, forward_steps, pool_quanta). ``free_quanta`` excludes
    the initial state's slot. Raises ValueError if the policy cannot fit."""
    if policy not in POLICIES:
        raise ValueError(f"plan: policy={policy!r} is not known; use one of {', '.join(POLICIES)}")
    # Memory beyond every state kept changes no split (Revolve's costs are 2t - 1 from t slots on),
    # and capping it keeps the jitted arithmetic in int64 for any slots= a caller gives.
    M = min(max(int(free_quanta), 0), max(T - 1, 0) * (hq + kq))
    sqrt_k = _sqrt_segment(T)
    # Every mode hands _emit its choices the same way, as runs (_runs) of one dtype for a T
    # (each other array type would compile _emit again, ~4 s on a machine's first plan).
    dtype = _choice_dtype(T)
    none = (np.zeros(3, np.int64), np.zeros(1, dtype), np.zeros(1, dtype))
    no_tau = np.zeros((2, 1), np.int64)
    if policy in ("full", "sqrt"):
        need = _fixed_pool(T, hq, kq, policy, sqrt_k)
        if need > hq + M:
            raise _TooSmall(need)
        _reserve(T, 0, "")
        if policy == "full":
            return _plain(T, hq, kq)  # _emit's full mode, without compiling it
        return _emit(T, M, hq, kq, _MODE_SQRT, *none, sqrt_k, no_tau)
    if policy == "revolve":
        _reserve(T, 0, "")
        return _emit(T, M, hq, kq, _MODE_REVOLVE, *none, sqrt_k, no_tau)
    if policy == "ism":
        n_slots = min(M // kq, max(T - 1, 0))
        # the table, its choices in the dtype, and their runs (at most two values a cell)
        _reserve(T, (T + 1) * (n_slots + 1) * (12 + 3 * np.dtype(dtype).itemsize), "ISM's table")
        _, choice = _ism_table(T, n_slots)
        runs = _runs_of(np.ascontiguousarray(choice.T, dtype=dtype)[None], T)  # rows 2 n
        del choice
        return _emit(T, n_slots * kq, hq, kq, _MODE_ISM, *runs, sqrt_k, no_tau)
    if policy == "hsm" and float(T) * T * min(M, max(T - 1, 0) * hq) > HSM_TABLE_MAX_WORK:
        # the table equals the closed form (tests prove it for T <= 500, m <= 20): use it
        _reserve(T, 0, "")
        return _emit(T, M, hq, kq, _MODE_REVOLVE, *none, sqrt_k, no_tau)
    # msm_table_work's lower-bound table (kq >= hq) or its per-step sums (kq < hq)
    _reserve(T, 16 * (min(M, max(T - 1, 0) * kq) + 1) if kq >= hq else 24 * T, "the lower-bound table")
    work = msm_table_work(T, M, hq, kq)
    if policy == "msm" and kq >= hq and work <= MSM_EXACT_MAX_WORK:
        # memory above what keeping every internal state needs changes nothing
        cap = min(M, max(T - 1, 0) * kq)
        tau = _lb_taus(cap, hq, kq, T)
        if T <= tau[0, cap]:
            # R(T, cap) is its lower bound, reached by _lb_choice's splits alone: no table
            res = _emit(T, cap, hq, kq, _MODE_TABLE, *none, sqrt_k, tau)
            if res[1] == _lb_of(T, cap, 0, hq, kq):
                return res
            work = 2.0 * (cap + 1) * (T + 1)  # not expected (see _lb_taus): the table decides
    if policy == "msm" and work > MSM_EXACT_MAX_WORK:
        ism = plan_quanta(T, M, hq, kq, "ism")
        rev = plan_quanta(T, M, hq, kq, "revolve")
        best = ism if ism[1] <= rev[1] else rev
        warnings.warn(
            f"plan: the exact MSM table for T={T} and {M} quanta (~{work:.2g} steps) "
            f"is too slow; using the better of policy='ism' and 'revolve' ({best[1]} forward steps), which is "
            "optimal among hidden-only and internal-only schedules but not proven MSM-optimal",
            UserWarning, stacklevel=3)
        return best
    if policy == "msm" and M + hq < kq:
        # No internal state ever fits (not even in an owned start's slot): MSM's table is HSM's,
        # without the kq + 1 rows of costs the MSM table keeps (alpha = 1e9 would ask for 10^9).
        return plan_quanta(T, M, hq, kq, "hsm")
    use_h = policy in ("msm", "hsm")
    use_i = policy in ("msm", "ism")
    # memory above what keeping every internal state needs changes nothing
    cap = min(M, max(T - 1, 0) * kq if use_i else max(T - 1, 0) * hq)
    cells = 2 * (cap + 1) * (T + 1)
    if policy == "msm" and kq >= hq:
        # _msm_buffers' two cost tables of kq + 1 rows and six of 3 rows, a row of choices, the
        # runs' offsets; then the runs, as many as the memory left holds (with room to grow by half)
        fixed = 16 * (2 * (kq + 1) + 6) * (T + 1) + 4 * (T + 1) + 32 * (cap + 1)
        avail = _reserve(T, fixed, "the MSM table")
        run_bytes = 2 * np.dtype(dtype).itemsize
        max_runs = cells if avail is None else min(cells, (avail - emit_bytes(T) - fixed) * 2 // (5 * run_bytes))
        choice = np.zeros((2, 1, T + 1), dtype)  # one row, kept as runs after each m
        # One thread: the two-kind parallel rows measured slower on two (T=10^4 at 1%:
        # 2.45 s against 1.65 s), their synchronisation per row outweighing the split.
        if kq > hq and (cap + 1) * (T + 1) >= PAIR_MIN_CELLS:
            threads = numba.get_num_threads()
            numba.set_num_threads(1)
            try:
                table = _msm_fast_table_pair(T, cap, hq, kq, kq + 1, choice, tau, max_runs)
            finally:
                numba.set_num_threads(threads)
        else:
            table = _msm_fast_table(T, cap, hq, kq, kq + 1, choice, tau, max_runs)
        kept, runs = table[2], table[3:]
        del table
        if kept < 0:
            raise _TooLarge(None, avail, "the MSM table's splits")
        return _emit(T, cap, hq, kq, _MODE_TABLE, *runs, sqrt_k, tau)
    _reserve(T, cells * (12 + 3 * np.dtype(dtype).itemsize), "the full-scan table")
    _, choice = _dp_table(T, cap, hq, kq, use_h, use_i)  # a [own, t, m] view of [own, m, t]
    runs = _runs_of(choice.transpose(0, 2, 1).astype(dtype), T)
    del choice
    return _emit(T, cap, hq, kq, _MODE_TABLE, *runs, sqrt_k, no_tau)


class _TooSmall(Exception):
    def __init__(self, need: int):
        self.need = need


class _TooLarge(Exception):
    """Planning would need more memory than this process can get: refused before allocating
    (need known), or once the MSM table's runs outgrow what is left (need None)."""

    def __init__(self, need: int | None, available: int, table: str):
        self.need, self.available, self.table = need, available, table


def available_bytes() -> int | None:
    """Bytes this process can still allocate: the kernel's MemAvailable, less
    under an address-space limit (``ulimit -v``); None where unknown."""
    avail = None
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    avail = int(line.split()[1]) * 1024
                    break
    except (OSError, ValueError):
        try:
            avail = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (AttributeError, OSError, ValueError):
            avail = None
    try:
        import resource
        soft = resource.getrlimit(resource.RLIMIT_AS)[0]
        if soft != resource.RLIM_INFINITY:
            with open("/proc/self/statm") as fh:
                used = int(fh.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
            room = max(soft - used, 0)
            avail = room if avail is None else min(avail, room)
    except (ImportError, OSError, ValueError):
        pass
    return avail


def _reserve(T: int, table_bytes: int, table: str) -> int | None:
    """Refuse, before allocating, a plan whose tables and emitted schedule
    (``emit_bytes``) need more memory than :func:`available_bytes`; returns
    what that said (None: unknown)."""
    need = emit_bytes(T) + int(table_bytes)
    avail = available_bytes()
    if avail is not None and need > avail:
        raise _TooLarge(need, avail, table)
    return avail
