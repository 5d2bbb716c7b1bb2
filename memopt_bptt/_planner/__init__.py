"""The planner: the fewest forward steps that reverse a T-step chain in a budget.

Gruslys, Munos, Danihelka, Lanctot & Graves (2016), "Memory-Efficient
Backpropagation Through Time" (arXiv 1606.03401), section 3: BPTT-HSM keeps
hidden states, BPTT-ISM internal states, BPTT-MSM chooses per split.

Model and conventions
---------------------
Step t costs one forward; its backward reads the internal state I_t (which
also rebuilds s_t exactly, see the cell contract). Memory is counted in
integer *quanta*: a hidden state takes ``hq``, an internal state ``kq``
(alpha = kq / hq; a model's sizes are divided by their gcd, an abstract alpha
is a fraction p/q with q <= 64). The executor has working buffers outside the
quanta — the current state, one internal state, gradients and the cell's
scratch — whose bytes are subtracted from a byte budget first; the initial
state is checkpoint slot 0 (``hq`` quanta), so ``slots=m`` in the abstract
model counts it, as Gruslys et al.'s m does.

R(t, m) is the least number of forwards that reverses a segment of t steps
whose start state is available (in a slot), with m free quanta:

    R(0, m) = 0
    R(t, m) = min( t + R(t-1, m),                                   # W
                   min_{1<=y<t} y + R(t-y, m-hq) + R(y, m),          # H, m >= hq
                   min_{1<=y<t} y + R(t-y, m-kq) + R(y-1, m) )       # I, m >= kq

W replays the whole segment and reverses its last step from the working
buffer. H runs y steps, keeps s_y as a hidden checkpoint, reverses the right
part with hq quanta fewer, frees the slot, then the left part. I runs y steps
keeping I_y (kq quanta): the right part starts from s_y rebuilt from I_y, step
y is then reversed with no replay, and the left part has y-1 steps. HSM uses
W and H only; ISM W and I; MSM all three, so MSM <= min(HSM, ISM). Checkpoints
are allocated as a stack (each split's slot is freed before its left part),
so a pool of ``hq + m`` quanta never fragments.

HSM's R equals the Revolve optimum: R(t, (m-1)*hq) = t + numforw(t, m)
(Griewank & Walther 2000); the ``revolve`` policy uses that closed form and a
binary search over the convex split cost, with no table. ``full`` keeps every
internal state (T forwards); ``sqrt`` (Chen et al. 2016) keeps a hidden state
every ceil(sqrt(T)) steps and replays each segment once keeping its internal
states.

Speed: ``revolve`` (closed form) scales to T = 10^6. ISM counts memory in
whole internal slots and finds each split by binary search (its cost is
convex in t), O(T n log T) for n slots. MSM's cost is *not* convex in t, so
no binary search is exact. ``msm`` (kq >= hq) first computes, in O(M),
tau(m): the largest t up to which R(t, m) equals the lower bound
max(t, 2t - floor(m'/kq) - 1) (m' = m, plus hq for an owned start). Both
are proven: the bound by counting the steps forwarded only once, the
equality by an induction over m with an explicit split (``_lb_taus``,
``_lb_choice``, the proof in ``_msm_fast_table``'s docstring). Where
T <= tau(M) the schedule is emitted from those splits alone, O(T + M) with
no table, and its forward count is checked to equal the bound (so it is
optimal). For the LSTM (hq=2, kq=7) tau(m) is about m^2/90 for large m, so
this covers 5% and 20% of plain BPTT's memory at T = 10^4 and 1% to 20% at
T = 10^5. Otherwise ``_msm_fast_table`` runs the same recurrence row by row
in m (kq + 1 rows of costs kept, plus a 2-byte choice per cell while
T < 2^15): cells with t <= tau(m) in closed form, the rest with a first
probe at the previous split and split scans that end on proven bounds of
the cost's slopes (see its docstring); the two start kinds of a row are a
two-iteration parallel loop, which plan_quanta runs on one thread (two were
measured slower). It returns the naive table's
costs exactly (every cell checked for T <= 300 and several (hq, kq) in
tests/test_planner_fast.py); the scans are long (hundreds of evaluations
per cell) in rows with few internal slots, and no better worst case than
O(T^2 m) is proven. That R exceeds the bound wherever t > tau(m) is
verified (every cell for T <= 300, 12 (hq, kq)), not proven, and not
needed for exactness. When the table's cells exceed ``MSM_EXACT_MAX_WORK``
``msm`` returns the better of ``ism`` and ``revolve`` with a warning, which
is optimal among single-kind schedules but not proven MSM-optimal. With
kq < hq (alpha < 1) rows would depend on larger m, so ``msm`` runs the
naive full-scan table instead, under the same limit on its inner-loop
iterations. Measured (LSTM hq=2, kq=7, one thread, ``benchmarks/bench_planner.py
--policies msm``, budgets as fractions of plain BPTT's memory): T = 10^4 takes
1.6 s of CPU at 1% (the table; 3.3 s wall while another job shared the core)
and 1.4 to 2.3 ms at 5% and 20% (closed form); T = 10^5 takes 11 to 23 ms at
1%, 5% and 20% (closed form); T = 10^3 about 9 ms at 1%, 0.15 ms at 5%, 20%.
Where the table is needed its time grows about as T^2 at a fixed small budget
(669 free quanta: 1.6 s at T = 10^4, 5.3 s at 2*10^4, 19 s at 4*10^4, CPU).

Modules
-------
One idea each: ``_closed`` (beta, numforw, hsm_cost and Revolve's split;
the fixed policies' pools), ``_tables`` (the full-scan table ``_dp_table``,
ISM's ``_ism_table``, and the lower bound: ``_lb_of``, ``_lb_taus``,
``_lb_choice``), ``_msm`` (the pruned exact MSM table ``_msm_fast_table``
and its proofs), ``_emit`` (walking the splits into action codes). This
module chooses among them (``plan_quanta``) and turns budgets into quanta
(``plan``).
"""

from __future__ import annotations

import math
import os
import warnings
from fractions import Fraction
from typing import Any

import numba
import numpy as np

from .._budget import MemoryBudgetError, format_bytes, parse_budget
from .._interrupt import call_interruptibly
from .._schedule import Schedule, plain_pool_quanta
from ._closed import _fixed_pool, _sqrt_segment, beta, hsm_cost, numforw
from ._emit import _MODE_FULL, _MODE_ISM, _MODE_REVOLVE, _MODE_SQRT, _MODE_TABLE, _emit, emit_bytes
from ._msm import PAIR_MIN_CELLS, _msm_fast_table, _msm_fast_table_pair
from ._tables import _dp_table, _ism_table, _lb_of, _lb_taus

__all__ = ["plan", "beta", "numforw", "hsm_cost", "POLICIES"]

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
    # Every mode hands _emit its choices the same way, [own, m, t], C-ordered, of one dtype for a T
    # (each other array type would compile _emit again, ~4 s on a machine's first plan).
    dummy = np.zeros((2, 1, 1), _choice_dtype(T))
    no_tau = np.zeros((2, 1), np.int64)
    if policy in ("full", "sqrt"):
        need = _fixed_pool(T, hq, kq, policy, sqrt_k)
        if need > hq + M:
            raise _TooSmall(need)
        _reserve(T, 0, "")
        mode = _MODE_FULL if policy == "full" else _MODE_SQRT
        return _emit(T, M, hq, kq, mode, dummy, sqrt_k, no_tau)
    if policy == "revolve":
        _reserve(T, 0, "")
        return _emit(T, M, hq, kq, _MODE_REVOLVE, dummy, sqrt_k, no_tau)
    if policy == "ism":
        n_slots = min(M // kq, max(T - 1, 0))
        _reserve(T, (T + 1) * (n_slots + 1) * (12 + np.dtype(_choice_dtype(T)).itemsize), "ISM's table")
        _, choice = _ism_table(T, n_slots)
        ism_choice = np.ascontiguousarray(choice.T, dtype=_choice_dtype(T))[None]  # [0, n, t]
        return _emit(T, n_slots * kq, hq, kq, _MODE_ISM, ism_choice, sqrt_k, no_tau)
    if policy == "hsm" and float(T) * T * min(M, max(T - 1, 0) * hq) > HSM_TABLE_MAX_WORK:
        # the table equals the closed form (tests prove it for T <= 500, m <= 20): use it
        _reserve(T, 0, "")
        return _emit(T, M, hq, kq, _MODE_REVOLVE, dummy, sqrt_k, no_tau)
    # msm_table_work's lower-bound table (kq >= hq) or its per-step sums (kq < hq)
    _reserve(T, 16 * (min(M, max(T - 1, 0) * kq) + 1) if kq >= hq else 24 * T, "the lower-bound table")
    work = msm_table_work(T, M, hq, kq)
    if policy == "msm" and kq >= hq and work <= MSM_EXACT_MAX_WORK:
        # memory above what keeping every internal state needs changes nothing
        cap = min(M, max(T - 1, 0) * kq)
        tau = _lb_taus(cap, hq, kq, T)
        if T <= tau[0, cap]:
            # R(T, cap) is its lower bound, reached by _lb_choice's splits alone: no table
            res = _emit(T, cap, hq, kq, _MODE_TABLE, dummy, sqrt_k, tau)
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
        # the choices, and _msm_buffers' two cost tables of kq + 1 rows and six of 3 rows
        _reserve(T, cells * np.dtype(_choice_dtype(T)).itemsize + 16 * (2 * (kq + 1) + 6) * (T + 1)
                 + 16 * (cap + 1), "the MSM table")
        choice = np.zeros((2, cap + 1, T + 1), _choice_dtype(T))
        # One thread: the two-kind parallel rows measured slower on two (T=10^4 at 1%:
        # 2.45 s against 1.65 s), their synchronisation per row outweighing the split.
        if kq > hq and (cap + 1) * (T + 1) >= PAIR_MIN_CELLS:
            threads = numba.get_num_threads()
            numba.set_num_threads(1)
            try:
                _msm_fast_table_pair(T, cap, hq, kq, kq + 1, choice, tau)
            finally:
                numba.set_num_threads(threads)
        else:
            _msm_fast_table(T, cap, hq, kq, kq + 1, choice, tau)
        return _emit(T, cap, hq, kq, _MODE_TABLE, choice, sqrt_k, tau)
    _reserve(T, cells * (12 + np.dtype(_choice_dtype(T)).itemsize), "the full-scan table")
    _, choice = _dp_table(T, cap, hq, kq, use_h, use_i)  # a [own, t, m] view of [own, m, t]
    return _emit(T, cap, hq, kq, _MODE_TABLE, choice.transpose(0, 2, 1).astype(_choice_dtype(T)), sqrt_k,
                 no_tau)


class _TooSmall(Exception):
    def __init__(self, need: int):
        self.need = need


class _TooLarge(Exception):
    """Planning would need more memory than this process can get: refused before allocating."""

    def __init__(self, need: int, available: int, table: str):
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


def _reserve(T: int, table_bytes: int, table: str) -> None:
    """Refuse, before allocating, a plan whose tables and emitted schedule
    (``emit_bytes``) need more memory than :func:`available_bytes`."""
    need = emit_bytes(T) + int(table_bytes)
    avail = available_bytes()
    if avail is not None and need > avail:
        raise _TooLarge(need, avail, table)


def _too_large_error(T: int, exc: _TooLarge) -> MemoryError:
    what = f"{exc.table} and the schedule" if exc.table else "the schedule"
    return MemoryError(
        f"plan: T={T} needs up to {format_bytes(exc.need)} ({exc.need} bytes; {what}) to plan, but this "
        f"process can get {format_bytes(exc.available)}; plan fewer steps (train on windows with truncate=, or "
        "run a long sequence in pieces with final_state) or with a smaller budget")


def _check_T(T: Any) -> int:
    if isinstance(T, bool) or not isinstance(T, (int, np.integer)):
        raise TypeError(f"plan: T={T!r} must be a positive int (the number of time steps)")
    if T < 1:
        raise ValueError(f"plan: T={T} must be a positive int (the number of time steps)")
    return int(T)


def _check_time_model(name: str, value: Any, what: str) -> None:
    """A number of the time model (b/f, byte cost): None, or finite and >= 0."""
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise TypeError(f"plan: {name}={value!r} must be a number ({what})")
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"plan: {name}={value!r} must be a finite number >= 0 ({what})")


def _quanta_from_alpha(alpha: float) -> tuple[int, int]:
    frac = Fraction(alpha).limit_denominator(64)
    if frac <= 0:
        raise ValueError(f"plan: alpha={alpha!r} rounds to 0 as a ratio p/q with q <= 64, the planner's unit; "
                         "give alpha >= 1/64")
    if abs(float(frac) - alpha) > 1e-9 * max(1.0, alpha):
        raise ValueError(f"plan: alpha={alpha!r} is not a ratio p/q with q <= 64; round it (e.g. alpha={float(frac):g})")
    return frac.denominator, frac.numerator


def plan(T: int, *, budget: Any = None, model: Any = None, batch: int | None = None, dtype: Any = None,
         policy: str = "msm", slots: float | None = None, alpha: float | None = None,
         backward_forward_ratio: float | None = None, byte_cost: float | None = None) -> Schedule:
    """The schedule with the fewest forward steps that fits the budget.

    With ``model`` (a :class:`memopt_bptt.Sequence`) and ``batch``, ``budget``
    is bytes (int), a string like "64MiB", or a fraction in (0, 1] of what
    plain BPTT (policy "full") keeps for this T, batch and dtype; working
    buffers and the initial state are paid from it first. Without a model,
    plan in the abstract model: ``slots`` memory units of one hidden state
    (counting the initial state's slot) and ``alpha`` = internal/hidden size;
    ``budget`` may then only be a fraction.

    Example::

        s = mb.plan(1000, budget="4MiB", model=model, batch=16)
        s = mb.plan(10, slots=3, policy="hsm")        # s.forward_steps == 25
        s = mb.plan(100, slots=10, alpha=3.5)         # MSM in the abstract model

    ``backward_forward_ratio`` (b/f) and ``byte_cost`` (with a model: what
    one byte of checkpoint pool costs in forward steps) only feed the
    predicted :attr:`Schedule.time_ratio`; :func:`memopt_bptt.measure_step_times`
    and :func:`memopt_bptt.measure_byte_cost` measure them. The schedule
    itself minimises forward steps.

    Raises :class:`memopt_bptt.MemoryBudgetError` (a ValueError) when the
    budget is below the least that works; its message gives that least.
    """
    # The tables and Numba's first compile run on a worker thread, so Ctrl-C reaches the caller at once.
    return call_interruptibly(_plan, T, budget=budget, model=model, batch=batch, dtype=dtype, policy=policy,
                              slots=slots, alpha=alpha, backward_forward_ratio=backward_forward_ratio,
                              byte_cost=byte_cost)


def _plan(T: int, *, budget: Any = None, model: Any = None, batch: int | None = None, dtype: Any = None,
          policy: str = "msm", slots: float | None = None, alpha: float | None = None,
          backward_forward_ratio: float | None = None, byte_cost: float | None = None) -> Schedule:
    """plan, on the calling thread."""
    T = _check_T(T)
    if policy not in POLICIES:
        raise ValueError(f"plan: policy={policy!r} is not known; use one of {', '.join(POLICIES)}")
    _check_time_model("backward_forward_ratio", backward_forward_ratio,
                      "a backward step's time over a forward step's; mb.measure_step_times measures it")
    _check_time_model("byte_cost", byte_cost,
                      "forward steps per checkpoint byte; mb.measure_byte_cost measures it")
    if model is not None:
        return _plan_for_model(T, budget=budget, model=model, batch=batch, dtype=dtype, policy=policy,
                               slots=slots, alpha=alpha, rho=backward_forward_ratio, byte_cost=byte_cost)
    if byte_cost is not None:
        raise ValueError("plan: byte_cost= prices checkpoint bytes, which needs model= and batch=")
    if batch is not None or dtype is not None:
        raise ValueError("plan: batch= and dtype= size a model's states; pass model= too, or plan with slots=/alpha=")
    if alpha is None:
        if policy in ("hsm", "revolve"):
            alpha = 1.0
        else:
            raise ValueError(f"plan: policy={policy!r} in the abstract model needs alpha= "
                             "(internal-state size over hidden-state size, e.g. alpha=3.5 for an LSTM)")
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not math.isfinite(alpha) or alpha <= 0:
        raise ValueError(f"plan: alpha={alpha!r} must be a positive number")
    hq, kq = _quanta_from_alpha(float(alpha))
    full_units = 1 + (T - 1) * float(alpha)
    if slots is not None and budget is not None:
        raise ValueError("plan: give either slots= (units) or budget= (a fraction), not both")
    if slots is None and budget is None:
        raise ValueError("plan: give a memory budget: slots= (hidden-state units) or budget= with model=")
    if budget is not None:
        kind, value = parse_budget(budget)
        if kind == "bytes":
            raise ValueError(f"plan: budget={budget!r} is in bytes, which needs model= and batch=; "
                             "in the abstract model use slots= or a fraction")
        units = value * full_units
    else:
        if isinstance(slots, bool) or not isinstance(slots, (int, float)) or not math.isfinite(slots):
            raise TypeError(f"plan: slots={slots!r} must be a number of hidden-state units")
        units = float(slots)
    least_units = 1.0
    if policy in ("full", "sqrt"):
        least_units = _fixed_pool(T, hq, kq, policy, _sqrt_segment(T)) / hq
    if units < least_units:
        raise MemoryBudgetError(
            f"plan: a budget of {units:g} units is below the least that works for T={T} with "
            f"policy={policy!r}: {least_units:g} units", least_units=least_units)
    free = int(math.floor((units - 1) * hq + 1e-9))
    try:
        codes, forwards, pool = plan_quanta(T, free, hq, kq, policy)
    except _TooLarge as exc:
        raise _too_large_error(T, exc) from None
    except _TooSmall as exc:
        least = exc.need / hq
        raise MemoryBudgetError(f"plan: policy={policy!r} needs at least {least:g} units for T={T}; "
                                f"the budget gives {units:g}", least_units=least) from None
    rho = 2.0 if backward_forward_ratio is None else float(backward_forward_ratio)
    return Schedule(T=T, policy=policy, codes=codes, hidden_quanta=hq, internal_quanta=kq, pool_quanta=pool,
                    forward_steps=int(forwards), backward_forward_ratio=rho, budget_units=units,
                    description=f"abstract model, alpha={alpha:g}")


def _plan_for_model(T, *, budget, model, batch, dtype, policy, slots, alpha, rho, byte_cost) -> Schedule:
    if slots is not None or alpha is not None:
        raise ValueError("plan: slots= and alpha= are for the abstract model; with model= give budget=")
    if batch is None:
        raise ValueError("plan: model= needs batch= (the batch size) to size its states in bytes")
    if budget is None:
        raise ValueError("plan: give budget= (bytes, e.g. '64MiB', or a fraction of plain BPTT's memory)")
    sizes = model.sizes(batch=batch, dtype=dtype)
    _, hq, kq = sizes.quantum
    quantum_bytes = sizes.quantum_bytes
    working = sizes.working_bytes
    full_bytes = working + plain_pool_quanta(T, hq, kq) * quantum_bytes
    kind, value = parse_budget(budget)
    budget_bytes = int(math.floor(value * full_bytes)) if kind == "fraction" else int(value)
    least_pool, pool_what = hq, "initial state"
    if policy in ("full", "sqrt"):
        least_pool = _fixed_pool(T, hq, kq, policy, _sqrt_segment(T))
        pool_what = f"the checkpoints policy={policy!r} keeps"
    least_any = working + least_pool * quantum_bytes
    if budget_bytes < least_any:
        # the model may say which of its settings the working buffers grow with
        split_note = getattr(model, "split_note", None)
        note = split_note(sizes) if split_note is not None else ""
        raise MemoryBudgetError(
            f"plan: budget={budget!r} ({budget_bytes} bytes) is below the least that works for T={T}, "
            f"batch={sizes.batch}: {least_any} bytes (working buffers {working} + {pool_what} "
            f"{least_pool * quantum_bytes}){note}", least_bytes=least_any)
    free = (budget_bytes - working - hq * quantum_bytes) // quantum_bytes
    try:
        codes, forwards, pool = plan_quanta(T, free, hq, kq, policy)
    except _TooLarge as exc:
        raise _too_large_error(T, exc) from None
    except _TooSmall as exc:
        least = working + exc.need * quantum_bytes
        raise MemoryBudgetError(
            f"plan: budget={budget!r} ({budget_bytes} bytes) is below what policy={policy!r} needs for T={T}: "
            f"{least} bytes", least_bytes=least) from None
    rho = model.backward_forward_ratio if rho is None else float(rho)
    return Schedule(T=T, policy=policy, codes=codes, hidden_quanta=hq, internal_quanta=kq, pool_quanta=pool,
                    forward_steps=int(forwards), backward_forward_ratio=rho, quantum_bytes=quantum_bytes,
                    working_bytes=working, budget_bytes=budget_bytes,
                    description=f"{model.describe()}, batch={sizes.batch}, {sizes.dtype}",
                    byte_cost=0.0 if byte_cost is None else byte_cost)
