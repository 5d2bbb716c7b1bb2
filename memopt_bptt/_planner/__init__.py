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
in m (kq + 1 rows of costs kept; each row's choices kept as runs along t,
``_runs``, 22 cells a run on average for the LSTM at T = 2*10^4): cells
with t <= tau(m) in closed form, the rest with a first probe at the
previous split and split scans that end on proven bounds of the cost's
slopes (see its docstring); the two start kinds of a row are a
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
and its proofs), ``_runs`` (a table's choices as runs, and their lookup),
``_emit`` (walking the splits into action codes),
``_choose`` (``plan_quanta``: which table or closed form a policy and
budget take, and refusing a plan this process cannot hold) and ``_plan``
(``plan``: a budget in bytes, a fraction or slots turned into quanta, and
the Schedule). This module states the model and re-exports.
"""

from __future__ import annotations

from ._choose import HSM_TABLE_MAX_WORK
from ._choose import MSM_EXACT_MAX_WORK
from ._choose import POLICIES
from ._choose import msm_table_work
from ._choose import plan_quanta
from ._closed import beta
from ._closed import hsm_cost
from ._closed import numforw
from ._plan import plan

__all__ = ["plan", "beta", "numforw", "hsm_cost", "POLICIES"]
