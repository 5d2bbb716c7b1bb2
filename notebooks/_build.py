"""Build the notebooks from the Python source in this file (so they are reviewable).

Each notebook is a list of markdown and code cells below. Run from anywhere::

    python notebooks/_build.py              # write the .ipynb files (no outputs)
    python notebooks/_build.py --execute    # write them, then run each in place
                                            # (cwd = notebooks/) and keep outputs
    python notebooks/_build.py --execute 03_long_sequence_training

Executing writes the figures to ../plots/ (relative to notebooks/), or to the
folder named by the environment variable MEMOPT_BPTT_PLOTS_DIR when it is set
(tests/test_notebooks.py sets it to a temporary folder). The notebooks use
only the public API (``import memopt_bptt as mb``, ``memopt_bptt.testing``).
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

HERE = os.path.dirname(os.path.abspath(__file__))

SETUP = """\
import os
import time

import matplotlib
matplotlib.use("Agg")  # no display needed; figures are written as PNG
import matplotlib.pyplot as plt
import numpy as np
from IPython.display import Image, Markdown, display

import memopt_bptt as mb

# figures go to ../plots/ (relative to notebooks/) unless MEMOPT_BPTT_PLOTS_DIR names another
# folder (the tests point it at a temporary one, so running them leaves plots/ alone)
PLOTS = os.environ.get("MEMOPT_BPTT_PLOTS_DIR") or os.path.join("..", "plots")
os.makedirs(PLOTS, exist_ok=True)
print("memopt_bptt", mb.__version__)
"""

TABLE_HELPER = """\
def md_table(header, rows):
    \"\"\"A Markdown table from a header and rows of already formatted cells.\"\"\"
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return Markdown("\\n".join(lines))
"""


def md(text: str):
    return new_markdown_cell(text.strip("\n"))


def code(text: str):
    return new_code_cell(text.strip("\n"))


# ---------------------------------------------------------------------------
# 01: planner trade-offs
# ---------------------------------------------------------------------------
NB01 = [
    md("""
# 01 — Planner trade-offs: forward steps and time against memory

Plain backpropagation through time keeps every step's internal state (the
gates, pre-activations and inputs that the step's backward reads), so its
memory grows with the sequence length T. Gruslys, Munos, Danihelka, Lanctot &
Graves (2016), *Memory-Efficient Backpropagation Through Time* (NIPS 2016,
arXiv:1606.03401), keep only some states and replay forward segments in the
backward sweep, choosing by dynamic programming *what* to keep so that the
recomputation is the least possible for a memory budget:

* **BPTT-HSM** keeps hidden states only (1 memory unit each). Its optimum
  equals Griewank & Walther's Revolve (2000) plus one forward per step; the
  `revolve` policy uses that closed form instead of a table.
* **BPTT-ISM** keeps internal states only (alpha units each, where
  alpha = size of an internal state / size of a hidden state).
* **BPTT-MSM** chooses between the two at every split; it can never be worse
  than either (the planner's default, `policy="msm"`).
* **sqrt** is Chen, Xu, Zhang & Guestrin (2016), *Training Deep Nets with
  Sublinear Memory Cost*: a hidden-state checkpoint every ceil(sqrt(T)) steps,
  each segment replayed once. It needs a fixed amount of memory, so it is a
  single point on each plot.
* **full** is plain BPTT: T forward steps, 1 + (T-1)·alpha units.

This notebook uses the planner's *abstract model*:
`mb.plan(T, slots=m, alpha=a, policy=...)`, where `slots` is the memory
budget in units of one hidden state (the initial state's slot included, as in
the paper) — no network is run. It plots the number of forward steps per time
step against the budget, in the shape of the cost-versus-memory figures of
Gruslys et al., and the predicted time per iteration relative to plain BPTT,
`(forward_steps + T·b/f) / (T·(1 + b/f))` with the backward/forward time ratio
b/f = 2. For real cells alpha follows from the sizes: with this library's
cells an LSTM has alpha = 3.5, a GRU 5 and an Elman network 2.
"""),
    code(SETUP),
    code(TABLE_HELPER),
    md("""
## The closed form and the planner agree

Gruslys et al. give C(t, m) for BPTT-HSM; it equals t + Revolve's `numforw(t, m)`.
The values below are computed three ways: the closed form (`mb.hsm_cost`), the
Revolve-style planner (`policy="revolve"`), and the dynamic-programming table
(`policy="hsm"`, alpha = 1).
"""),
    code("""
rows = []
for t, m in [(10, 2), (10, 3), (100, 5), (300, 10)]:
    closed = mb.hsm_cost(t, m)
    rev = mb.plan(t, slots=m, policy="revolve").forward_steps
    dp = mb.plan(t, slots=m, alpha=1, policy="hsm").forward_steps
    rows.append((t, m, closed, rev, dp))
display(md_table(["T", "slots m", "C(T, m) closed form", "revolve planner", "HSM table"], rows))
"""),
    md("""
## Sweep: every policy, four values of alpha, budgets from 2 units to plain BPTT's

T = 300 keeps the MSM/ISM table (O(T²·m) time) quick. Budgets are spaced
geometrically from 2 units to what plain BPTT keeps. A budget that a policy
cannot use (ISM below alpha + 1 units has no room for an internal state and
falls back to replaying everything) is still plotted; a policy that cannot run
at all in a budget (sqrt, full) is only shown where it fits.
"""),
    code("""
T = 300
ALPHAS = [1, 2, 3.5, 5]
POLICIES = ["msm", "hsm", "ism", "revolve"]
N_BUDGETS = 22

t0 = time.perf_counter()
sweep = {}        # (alpha, policy) -> list of (budget units, peak units, forward steps, time ratio)
fixed = {}        # (alpha, policy) -> (peak units, forward steps, time ratio) for sqrt and full
for alpha in ALPHAS:
    full_units = 1 + (T - 1) * alpha
    budgets = np.unique(np.round(np.geomspace(2, full_units, N_BUDGETS), 1))
    for policy in POLICIES:
        points = []
        for units in budgets:
            s = mb.plan(T, slots=float(units), alpha=alpha, policy=policy)
            assert s.peak_units <= units + 1e-9  # the schedule fits its budget
            points.append((float(units), s.peak_units, s.forward_steps, s.time_ratio))
        sweep[alpha, policy] = points
    for policy in ["sqrt", "full"]:
        s = mb.plan(T, slots=full_units, alpha=alpha, policy=policy)
        fixed[alpha, policy] = (s.peak_units, s.forward_steps, s.time_ratio)
print(f"planned {sum(len(v) for v in sweep.values()) + len(fixed)} schedules in {time.perf_counter() - t0:.1f} s")
"""),
    md("""
What the sweep shows, checked point by point (these hold for every budget in
the sweep, and the plots below draw the same numbers):

* MSM never needs more forward steps than HSM or ISM at the same budget;
* the closed-form `revolve` planner gives exactly HSM's forward steps.
"""),
    code("""
n_strict = 0
for alpha in ALPHAS:
    msm = [p[2] for p in sweep[alpha, "msm"]]
    hsm = [p[2] for p in sweep[alpha, "hsm"]]
    ism = [p[2] for p in sweep[alpha, "ism"]]
    rev = [p[2] for p in sweep[alpha, "revolve"]]
    assert all(a <= min(b, c) for a, b, c in zip(msm, hsm, ism))
    assert rev == hsm
    n_strict += sum(a < min(b, c) for a, b, c in zip(msm, hsm, ism))
n_points = sum(len(sweep[a, "msm"]) for a in ALPHAS)
print(f"MSM <= min(HSM, ISM) at all {n_points} (alpha, budget) points; "
      f"strictly better than both at {n_strict} of them")
"""),
    code("""
STYLE = {
    "msm": dict(color="C0", marker="o", ms=4, lw=2, label="MSM (mixed)"),
    "hsm": dict(color="C1", marker="s", ms=4, lw=1.5, label="HSM (hidden states)"),
    "ism": dict(color="C2", marker="^", ms=4, lw=1.5, label="ISM (internal states)"),
    "revolve": dict(color="k", marker="x", ms=5, lw=0, label="revolve (closed form)"),
}

fig, axes = plt.subplots(2, 2, figsize=(11, 8), sharey=True)
for ax, alpha in zip(axes.flat, ALPHAS):
    for policy in POLICIES:
        pts = sweep[alpha, policy]
        ax.plot([p[0] for p in pts], [p[2] / T for p in pts], **STYLE[policy])
    peak, fwd, _ = fixed[alpha, "sqrt"]
    ax.plot([peak], [fwd / T], "D", color="C3", ms=8, label="sqrt (Chen et al. 2016)")
    peak, fwd, _ = fixed[alpha, "full"]
    ax.plot([peak], [fwd / T], "*", color="C4", ms=12, label="plain BPTT (full)")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_title(f"alpha = {alpha:g}" + {3.5: " (an LSTM)", 5: " (a GRU)", 2: " (an Elman RNN)"}.get(alpha, ""))
    ax.set_xlabel("memory budget (hidden-state units, initial state included)")
    ax.grid(True, which="both", alpha=0.3)
for ax in axes[:, 0]:
    ax.set_ylabel("forward steps per time step")
axes[0, 0].legend(fontsize=8)
fig.suptitle(f"Forward steps per time step against memory, T = {T} (abstract model)")
fig.tight_layout()
fig.savefig(os.path.join(PLOTS, "01_cost_vs_memory.png"), dpi=110)
plt.close(fig)
display(Image(os.path.join(PLOTS, "01_cost_vs_memory.png")))
"""),
    md("""
Reading the figure: at the smallest budgets every policy degenerates to
replaying from the few states it can hold (ISM, which cannot store even one
internal state there, replays everything: T(T+1)/2 forwards). As memory grows
HSM saturates — it still replays each step once before its backward, so it
never drops below about 2 forward steps per time step — while ISM reaches 1
(no recomputation) once it can keep every internal state. MSM follows HSM on
the left, ISM on the right, and is below both in between. The larger alpha,
the further right the crossing.

## Predicted time per iteration against the memory saved

The same schedules, with the memory as a fraction of plain BPTT's for the same
alpha and the predicted time relative to plain BPTT (b/f = 2).
"""),
    code("""
fig, ax = plt.subplots(figsize=(8, 5))
for i, alpha in enumerate(ALPHAS):
    full_units = 1 + (T - 1) * alpha
    pts = sweep[alpha, "msm"]
    ax.plot([100 * p[1] / full_units for p in pts], [p[3] for p in pts], "o-", color=f"C{i}", ms=3,
            label=f"MSM, alpha = {alpha:g}")
    hs = sweep[alpha, "hsm"]
    ax.plot([100 * p[1] / full_units for p in hs], [p[3] for p in hs], ":", color=f"C{i}", lw=1)
    peak, _, ratio = fixed[alpha, "sqrt"]
    ax.plot([100 * peak / full_units], [ratio], "D", color=f"C{i}", ms=6)
ax.plot([], [], "k:", lw=1, label="HSM (dotted)")
ax.plot([], [], "kD", ms=6, label="sqrt (diamonds)")
ax.axvline(5, color="grey", lw=0.8, ls="--")
ax.text(5.3, 2.85, "5% of plain BPTT", color="grey", fontsize=8)
ax.set_xscale("log")
ax.set_ylim(0.95, 3.0)
ax.set_xlabel("memory kept, % of plain BPTT's (peak of the schedule)")
ax.set_ylabel("predicted time / plain BPTT's time")
ax.set_title(f"Predicted time against memory, T = {T}, b/f = 2")
ax.grid(True, which="both", alpha=0.3)
ax.legend(fontsize=8)
fig.tight_layout()
fig.savefig(os.path.join(PLOTS, "01_time_vs_memory.png"), dpi=110)
plt.close(fig)
display(Image(os.path.join(PLOTS, "01_time_vs_memory.png")))
"""),
    md("""
## A table at a few budgets

Forward steps (and the predicted time ratio) at budgets given as fractions of
plain BPTT's memory, `mb.plan(T, budget=fraction, alpha=...)`. "–" means the
policy does not fit in that budget (`mb.MemoryBudgetError`).
"""),
    code("""
FRACTIONS = [0.02, 0.05, 0.1, 0.25, 0.5]
rows = []
for alpha in ALPHAS:
    for frac in FRACTIONS:
        row = [f"{alpha:g}", f"{100 * frac:g}%"]
        for policy in ["msm", "hsm", "ism", "sqrt"]:
            try:
                s = mb.plan(T, budget=frac, alpha=alpha, policy=policy)
                row.append(f"{s.forward_steps} ({s.time_ratio:.2f}x)")
            except mb.MemoryBudgetError:
                row.append("–")
        rows.append(row)
display(md_table(["alpha", "budget", "MSM", "HSM", "ISM", "sqrt"], rows))
"""),
    md("""
## The paper's headline at T = 1000

Gruslys et al. report that for sequences of length 1000 the method saves 95% of
the memory for about one third more time per iteration than plain BPTT. The
planner's numbers for 5% of plain BPTT's memory at T = 1000:
"""),
    code("""
rows = []
for alpha in ALPHAS:
    s = mb.plan(1000, budget=0.05, alpha=alpha)
    full_units = 1 + 999 * alpha
    rows.append((f"{alpha:g}", s.forward_steps, f"{s.peak_units:g} of {full_units:g}",
                 f"{100 * s.peak_units / full_units:.2f}%", f"{s.time_ratio:.3f}",
                 f"{s.n_hidden_slots} / {s.n_internal_slots}"))
display(md_table(["alpha", "forward steps", "peak units", "memory kept", "predicted time ratio",
                  "hidden / internal slots"], rows))
"""),
]


# ---------------------------------------------------------------------------
# 02: exact gradients under a budget
# ---------------------------------------------------------------------------
NB02 = [
    md("""
# 02 — Exact gradients under a memory budget

The schedules of Gruslys et al. (2016) change *when* each forward step is
computed and what is kept, never *what* is computed: the executor rebuilds
each step's state from its internal state and accumulates the loss and the
parameter gradients in the same order under every schedule. So the loss and
every gradient are **bit-for-bit identical** to plain BPTT's (Rumelhart,
Hinton & Williams 1985; Werbos 1990), whatever the policy and the budget.

This notebook checks that with `np.array_equal` for an LSTM and a GRU across
the policies (msm, hsm, ism, revolve, and Chen et al. 2016's sqrt) and
budgets from 2% to 100% of plain BPTT's memory, and then compares the memory
the executor actually allocated (measured with `tracemalloc` by
`value_and_grad(..., return_report=True)`) with the budget and with the
planner's prediction.
"""),
    code(SETUP),
    code(TABLE_HELPER),
    md("""
## Models and data

Small sizes (T = 200, batch 8, hidden 48, float64) keep the notebook quick; the
first call per cell type compiles the executor with Numba (a few seconds).
"""),
    code("""
T, BATCH, N_IN, N_HID, N_OUT = 200, 8, 5, 48, 3
rng = np.random.default_rng(0)
xs = rng.standard_normal((T, BATCH, N_IN))
ys = rng.standard_normal((T, BATCH, N_OUT))

models = {
    "LSTM": mb.Sequence(mb.LSTM(input_size=N_IN, hidden_size=N_HID), output_size=N_OUT, loss="mse"),
    "GRU": mb.Sequence(mb.GRU(input_size=N_IN, hidden_size=N_HID), output_size=N_OUT, loss="mse"),
}
params = {name: m.init_params(seed=1) for name, m in models.items()}
reference = {}
for name, m in models.items():
    t0 = time.perf_counter()
    reference[name] = mb.value_and_grad(m, params[name], xs, ys)  # plain BPTT (policy "full")
    print(f"{name}: plain BPTT loss {reference[name][0]:.6f}  (first call incl. compile {time.perf_counter() - t0:.1f} s)")
"""),
    md("""
## Plain BPTT itself is right: central differences

Before comparing schedules with plain BPTT, check plain BPTT against an
independent oracle: `memopt_bptt.testing.check_grads` compares every
gradient with central finite differences of the loss (float64, step 1e-6) on
a few random entries of each parameter, and of dL/dh0; it raises on the
first entry out of tolerance and otherwise returns the largest differences
per parameter. (An entry near zero can show a large relative difference while
its absolute one is at the rounding of the difference quotient, about
1e-16 / 1e-6 of the loss; the check passes it through its absolute tolerance.)
"""),
    code("""
from memopt_bptt.testing import check_grads

rows = []
for name, m in models.items():
    result = check_grads(m, params[name], xs, ys, n_checks=3, check_h0=True, seed=2)
    rows += [(name, key, result.n_checked[key], f"{result.max_abs_error[key]:.1e}", f"{err:.1e}")
             for key, err in result.max_rel_error.items()]
display(md_table(["cell", "parameter", "entries checked", "largest absolute difference",
                  "largest relative difference"], rows))
"""),
    md("""
## Bit-equality across policies and budgets

For each cell, policy and budget (a fraction of plain BPTT's memory, and one
budget in bytes), run `mb.value_and_grad` and compare the loss and every
gradient array with plain BPTT's using `np.array_equal` (exact, no tolerance).
"""),
    code("""
POLICIES = ["msm", "hsm", "ism", "revolve", "sqrt"]
BUDGETS = [0.02, 0.05, 0.1, 0.25, 0.5, 1.0, "64KiB"]

results = []   # dicts, one per run
rows = []
for name, m in models.items():
    loss_ref, g_ref = reference[name]
    for policy in POLICIES:
        for budget in BUDGETS:
            try:
                loss, grads, report = mb.value_and_grad(m, params[name], xs, ys, budget=budget, policy=policy,
                                                        return_report=True)
            except mb.MemoryBudgetError as exc:
                rows.append((name, policy, budget, "does not fit", f"needs {exc.least_bytes} B", "", "", ""))
                continue
            same_loss = loss == loss_ref
            same_grads = all(np.array_equal(grads[k], g_ref[k]) for k in g_ref)
            max_diff = max(float(np.max(np.abs(grads[k] - g_ref[k]))) for k in g_ref)
            results.append(dict(cell=name, policy=policy, budget=budget, report=report,
                                same_loss=same_loss, same_grads=same_grads))
            rows.append((name, policy, budget, report.schedule.budget_bytes, report.forward_steps,
                         "yes" if same_loss else "NO", "yes" if same_grads else "NO", f"{max_diff:.1e}"))
display(md_table(["cell", "policy", "budget", "budget bytes", "forward steps", "loss identical",
                  "all gradients identical", "max abs difference"], rows))
n_same = sum(r["same_loss"] and r["same_grads"] for r in results)
print(f"{n_same} of {len(results)} runs bit-identical to plain BPTT "
      f"({len(rows) - len(results)} budget/policy pairs did not fit)")
"""),
    md("""
## Memory: measured against the budget and the plan

`Report.planned_bytes` is the planner's peak (checkpoint pool plus the working
buffers), `allocated_bytes` what the executor allocated for the sweep, and
`measured_peak_bytes` the `tracemalloc` peak during the call minus the
returned gradients. The measured peak also contains a small constant that is
not in any buffer (NumPy array headers and Numba's call overhead); it is
shown separately rather than hidden.
"""),
    code("""
rows = []
for r in results:
    rep = r["report"]
    if r["policy"] not in ("msm", "sqrt"):
        continue
    rows.append((r["cell"], r["policy"], r["budget"], rep.schedule.budget_bytes, rep.planned_bytes,
                 rep.allocated_bytes, rep.measured_peak_bytes, rep.measured_peak_bytes - rep.allocated_bytes,
                 "yes" if rep.allocated_bytes <= rep.schedule.budget_bytes else "NO",
                 "yes" if rep.measured_peak_bytes <= rep.schedule.budget_bytes else "no"))
display(md_table(["cell", "policy", "budget", "budget bytes", "planned", "allocated", "measured peak",
                  "measured - allocated", "allocated <= budget", "measured <= budget"], rows))
for name, m in models.items():
    _, _, rep_full = mb.value_and_grad(m, params[name], xs, ys, return_report=True)
    print(f"{name} plain BPTT: planned {rep_full.planned_bytes} B, measured peak {rep_full.measured_peak_bytes} B")
"""),
    code("""
fig, axes = plt.subplots(2, 2, figsize=(12, 8.5), gridspec_kw={"height_ratios": [3, 2]}, sharex="col")
for col, name in enumerate(models):
    ax, ax_r = axes[0, col], axes[1, col]
    lo, hi = np.inf, 0
    for j, policy in enumerate(POLICIES):
        sel = sorted((r["report"] for r in results if r["cell"] == name and r["policy"] == policy),
                     key=lambda rep: rep.schedule.budget_bytes)
        b = np.array([rep.schedule.budget_bytes for rep in sel], float)
        measured = np.array([rep.measured_peak_bytes for rep in sel], float)
        planned = np.array([rep.planned_bytes for rep in sel], float)
        ax.plot(b, measured, "o", color=f"C{j}", ms=9 - j, mfc="none", label=f"{policy}: measured")
        ax.plot(b, planned, "x", color=f"C{j}", ms=6, label=f"{policy}: planned")
        ax_r.plot(b, measured / b, "o-", color=f"C{j}", ms=9 - j, mfc="none", lw=1, label=f"{policy}: measured")
        ax_r.plot(b, planned / b, "x:", color=f"C{j}", ms=6, lw=1)
        lo, hi = min(lo, b.min()), max(hi, b.max())
    grid = np.geomspace(lo * 0.8, hi * 1.25, 10)
    ax.plot(grid, grid, "k--", lw=1, label="budget (y = x)")
    _, _, rep_full = mb.value_and_grad(models[name], params[name], xs, ys, return_report=True)
    ax.axhline(rep_full.measured_peak_bytes, color="grey", lw=1, ls=":", label="plain BPTT, measured")
    ax_r.axhline(1.0, color="k", lw=1, ls="--")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_ylabel("bytes")
    ax.set_title(f"{name}, T = {T}, batch {BATCH}, hidden {N_HID}, float64")
    ax.grid(True, which="both", alpha=0.3)
    ax_r.set_xscale("log")
    ax_r.set_ylabel("bytes / budget (x: planned, o: measured)")
    ax_r.set_xlabel("budget (bytes)")
    ax_r.grid(True, which="both", alpha=0.3)
axes[0, 0].legend(fontsize=7, ncol=2)
fig.tight_layout()
fig.savefig(os.path.join(PLOTS, "02_memory_vs_budget.png"), dpi=110)
plt.close(fig)
display(Image(os.path.join(PLOTS, "02_memory_vs_budget.png")))
"""),
    md("""
Points on or below the dashed line stay within the budget. The lower panels
show the same numbers divided by the budget: the planned bytes and the
executor's allocated buffers never exceed it; the `tracemalloc` peak is a few
KiB above them (the constant in the table), which shows as a ratio slightly
above 1 only where the budget is small or fully used. Policies with a
fixed footprint (sqrt) and HSM/revolve, which stop gaining once every useful
hidden checkpoint is kept, use less than large budgets allow; MSM and ISM use
what they are given, because keeping more internal states always saves
recomputation.

## Forward steps against the budget, measured

`Report.forward_steps` counts the forward steps the sweep really ran (it must
equal the schedule's, or `value_and_grad` raises); the wall time of each
sweep is shown beside it. Times on a shared machine are noisy; see
`benchmarks/` for careful timings.
"""),
    code("""
fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
for j, policy in enumerate(POLICIES):
    sel = sorted((r["report"] for r in results if r["cell"] == "LSTM" and r["policy"] == policy),
                 key=lambda rep: rep.schedule.budget_bytes)
    b = [rep.schedule.budget_bytes for rep in sel]
    axes[0].plot(b, [rep.forward_steps / T for rep in sel], "o-", color=f"C{j}", label=policy)
    axes[1].plot(b, [rep.wall_time * 1e3 for rep in sel], "o-", color=f"C{j}", label=policy)
axes[0].set_ylabel("forward steps per time step (counted)")
axes[1].set_ylabel("sweep wall time (ms)")
for ax in axes:
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("budget (bytes)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
fig.suptitle(f"LSTM, T = {T}: counted forward steps and wall time per call")
fig.tight_layout()
fig.savefig(os.path.join(PLOTS, "02_forward_steps_vs_budget.png"), dpi=110)
plt.close(fig)
display(Image(os.path.join(PLOTS, "02_forward_steps_vs_budget.png")))
"""),
    md("""
At the smallest budgets (64 KiB for the LSTM holds the working buffers and
the initial state but no checkpoint) every policy falls back to replaying
from the start for every step, T(T+1)/2 forward steps, and the time follows.

## float32

The same check in single precision, on a shorter sequence. Bit-equality in
float32 needs each cell's forward to produce exactly the state that the
cell's `state_from_internal` rebuilds from the stored (rounded) internal
state; schedules that restart the forward from a kept internal state (MSM,
ISM) depend on it. The table shows what the current cells do.
"""),
    code("""
T32 = 100
xs32 = xs[:T32].astype(np.float32)
ys32 = ys[:T32].astype(np.float32)
rows = []
for name, m in models.items():
    p32 = {k: v.astype(np.float32) for k, v in params[name].items()}
    loss_ref, g_ref = mb.value_and_grad(m, p32, xs32, ys32)
    for policy in ["msm", "hsm", "ism", "sqrt"]:
        for budget in [0.1, 0.5]:
            try:
                loss, grads = mb.value_and_grad(m, p32, xs32, ys32, budget=budget, policy=policy)
            except mb.MemoryBudgetError:
                rows.append((name, policy, budget, "does not fit", "", ""))
                continue
            same = loss == loss_ref and all(np.array_equal(grads[k], g_ref[k]) for k in g_ref)
            rel = max(float(np.max(np.abs(grads[k] - g_ref[k]))) / float(np.max(np.abs(g_ref[k]))) for k in g_ref)
            rows.append((name, policy, budget, "yes" if same else "NO", f"{abs(loss - loss_ref):.1e}", f"{rel:.1e}"))
display(md_table(["cell", "policy", "budget", "loss and gradients bit-identical", "|loss difference|",
                  "max relative gradient difference"], rows))
"""),
]

# ---------------------------------------------------------------------------
# 03: long-sequence training under 5% of plain BPTT's memory
# ---------------------------------------------------------------------------
NB03 = [
    md("""
# 03 — Training on long sequences with 5% of plain BPTT's memory

Gruslys et al. (2016) report that for sequences of length 1000 their method
saves 95% of the memory for about one third more time per iteration. Here an
LSTM is trained on the **adding problem** (Hochreiter & Schmidhuber 1997, in
the form of Le, Jaitly & Hinton 2015) with T = 500 twice, from the same
initial weights and the same batches:

* with plain BPTT (`policy="full"`: every internal state kept), and
* with BPTT-MSM under a budget of **5% of what plain BPTT keeps**
  (`budget=0.05`).

Because every gradient of the second run is bit-identical to the first's (see
notebook 02), the two runs are the same computation: the same losses, the same
parameters after every update. What differs is the memory and the time, shown
side by side.

`mb.adding_problem` gives inputs `(value, marker)` and, as targets, the running
sum of the marked values, so the loss (a mean over all steps) carries the
task at every step and its last step is the classic adding-problem target.
Remembering the first marked value needs memory over up to T - 1 steps. The
forget-gate bias is set to +5 at initialisation (Gers, Schmidhuber & Cummins
2000; Jozefowicz, Zaremba & Sutskever 2015) so the gradient reaches that far
from the start (notebook 04 shows what happens without it).
"""),
    code(SETUP),
    code(TABLE_HELPER),
    code("""
T, BATCH, HIDDEN, STEPS, LR = 500, 16, 16, 200, 0.02
BUDGET = 0.05  # a fraction of plain BPTT's memory for this T, batch and dtype

model = mb.Sequence(mb.LSTM(input_size=2, hidden_size=HIDDEN), output_size=1, loss="mse")
params0 = model.init_params(seed=0)
params0["cell.bias_ih"][HIDDEN:2 * HIDDEN] += 2.5   # PyTorch gate order i, f, g, o: f is the 2nd block
params0["cell.bias_hh"][HIDDEN:2 * HIDDEN] += 2.5


def draw(rng):
    \"\"\"A fresh batch per update, drawn from the training loop's own generator (seeded by train's seed).\"\"\"
    return mb.adding_problem(T, BATCH, seed=int(rng.integers(2**31)))


full_plan = mb.plan(T, budget=1.0, model=model, batch=BATCH, policy="full")
small_plan = mb.plan(T, budget=BUDGET, model=model, batch=BATCH)
print("plain BPTT:", full_plan, "\\n")
print(f"MSM at {100 * BUDGET:g}%:", small_plan)
"""),
    md("""
## Two baselines for the loss

To read the loss: predicting the overall mean of the targets, and predicting
the expected running sum given only *how many* markers have been seen (0, 0.5
or 1; this needs no memory of values). A network below the second line has
started to remember the marked values. Computed on a separate batch of 2048
sequences.
"""),
    code("""
xs_eval, ys_eval = mb.adding_problem(T, 2048, seed=10**6)
count = np.cumsum(xs_eval[..., 1], axis=0)[..., None]
loss_mean = float(np.mean((ys_eval - ys_eval.mean()) ** 2))
loss_count = float(np.mean((ys_eval - 0.5 * count) ** 2))
print(f"constant prediction: {loss_mean:.4f}   expected sum from the marker count: {loss_count:.4f}")
"""),
    md("""
## Train twice: plain BPTT and 5% of its memory

The first call compiles the Numba executor for this cell (a few seconds); it
is made before training so the training times below do not include it.
"""),
    code("""
xs0, ys0 = mb.adding_problem(T, BATCH, seed=0)
t0 = time.perf_counter()
mb.value_and_grad(model, params0, xs0, ys0)
print(f"compile + first call: {time.perf_counter() - t0:.1f} s")

runs = {}
for label, kwargs in [("plain BPTT", dict(policy="full")), (f"MSM, {100 * BUDGET:g}% budget", dict(budget=BUDGET))]:
    t0 = time.perf_counter()
    params, history = mb.train(model, params0, draw, optimizer=mb.Adam(LR), steps=STEPS, clip_norm=1.0,
                               seed=0, progress=False, **kwargs)
    runs[label] = (params, history, time.perf_counter() - t0)
    loss = np.array(history["loss"])
    print(f"{label:20s} {STEPS} updates in {runs[label][2]:.1f} s; loss {loss[:10].mean():.4f} (first 10) "
          f"-> {loss[-10:].mean():.4f} (last 10)")
"""),
    code("""
(label_a, (params_a, hist_a, _)), (label_b, (params_b, hist_b, _)) = runs.items()
same_losses = hist_a["loss"] == hist_b["loss"]
same_params = all(np.array_equal(params_a[k], params_b[k]) for k in params_a)
max_diff = max(abs(a - b) for a, b in zip(hist_a["loss"], hist_b["loss"]))
print(f"all {STEPS} losses identical: {same_losses} (largest difference {max_diff:.1e})")
print(f"final parameters bit-identical: {same_params}")
"""),
    md("""
## Memory and time, measured

Memory: one gradient per configuration with `return_report=True`: the planned
peak (checkpoints plus working buffers) and the `tracemalloc` peak during the
call. Time: the two configurations alternated (A B A B ...), five gradients
each after a warm-up, median, on the same batch; beside it the planner's
prediction, `(forward_steps + T·b/f) / (T·(1 + b/f))` with b/f = 2. The
prediction counts forward and backward steps and nothing else; the measured
ratio is shown as measured, whichever way it differs. The training wall time
above is noisier (sequential runs on a shared machine).
"""),
    code("""
configs = {label_a: dict(policy="full"), label_b: dict(budget=BUDGET)}
reports = {label: mb.value_and_grad(model, params0, xs0, ys0, return_report=True, **kw)[2]
           for label, kw in configs.items()}
schedules = {label: reports[label].schedule for label in configs}   # planned once, reused below
times = {label: [] for label in configs}
for _ in range(5):
    for label in configs:
        t0 = time.perf_counter()
        mb.value_and_grad(model, params0, xs0, ys0, schedule=schedules[label])
        times[label].append(time.perf_counter() - t0)
median = {label: float(np.median(v)) for label, v in times.items()}
rows = []
for label in configs:
    rep = reports[label]
    rows.append((label, rep.schedule.budget_bytes, rep.planned_bytes, rep.measured_peak_bytes,
                 f"{100 * rep.measured_peak_bytes / reports[label_a].measured_peak_bytes:.1f}%",
                 rep.forward_steps, f"{1e3 * median[label]:.1f} ms",
                 f"{median[label] / median[label_a]:.2f}x", f"{rep.schedule.time_ratio:.2f}x"))
display(md_table(["run", "budget bytes", "planned bytes", "measured peak bytes", "of plain BPTT's",
                  "forward steps", "median time per gradient", "measured time ratio", "predicted time ratio"], rows))
"""),
    code("""
fig, axes = plt.subplots(1, 3, figsize=(15, 4.5), gridspec_kw={"width_ratios": [2.2, 1, 1]})
ax = axes[0]
steps = np.arange(1, STEPS + 1)
ax.plot(steps, hist_a["loss"], "-", color="C0", lw=3, alpha=0.5, label=label_a)
ax.plot(steps, hist_b["loss"], "--", color="C3", lw=1.2, label=label_b)
ax.axhline(loss_mean, color="grey", lw=1, ls=":", label="constant prediction")
ax.axhline(loss_count, color="k", lw=1, ls="-.", label="sum expected from marker count")
ax.set_xlabel("update")
ax.set_ylabel("training loss (MSE, mean over all steps)")
ax.set_yscale("log")
ax.set_title(f"Adding problem, T = {T}, LSTM hidden {HIDDEN}: "
             + ("identical losses" if same_losses else "losses differ"))
ax.legend(fontsize=8)
ax.grid(True, alpha=0.3)

labels = [label_a, label_b]
short = ["plain BPTT", f"{100 * BUDGET:g}% budget"]
x = np.arange(2)
ax = axes[1]
planned = [reports[lb].planned_bytes / 2**20 for lb in labels]
measured = [reports[lb].measured_peak_bytes / 2**20 for lb in labels]
ax.bar(x - 0.2, planned, 0.4, label="planned", color="C0")
ax.bar(x + 0.2, measured, 0.4, label="measured (tracemalloc)", color="C1")
for i in range(2):
    ax.text(x[i] + 0.2, measured[i], f"{measured[i]:.2f}", ha="center", va="bottom", fontsize=8)
ax.set_xticks(x, short)
ax.set_ylabel("MiB per gradient")
ax.set_title("memory")
ax.set_ylim(0, 1.3 * max(planned + measured))
ax.legend(fontsize=8, loc="upper right")

ax = axes[2]
ax.bar(x - 0.2, [1e3 * median[lb] for lb in labels], 0.4, label="measured (median of 5)", color="C0")
ax.bar(x + 0.2, [1e3 * median[label_a] * schedules[lb].time_ratio for lb in labels], 0.4,
       label="predicted from plain BPTT's", color="C2")
ax.set_xticks(x, short)
ax.set_ylabel("ms per gradient")
ax.set_title("time")
ax.set_ylim(0, 1.3 * 1e3 * max(max(median.values()), median[label_a] * schedules[label_b].time_ratio))
ax.legend(fontsize=8, loc="upper left")
fig.tight_layout()
fig.savefig(os.path.join(PLOTS, "03_long_sequence_training.png"), dpi=110)
plt.close(fig)
display(Image(os.path.join(PLOTS, "03_long_sequence_training.png")))
"""),
    md("""
200 updates are far from solving the adding problem at T = 500 (published
runs use thousands); the curves show how far this short run gets against the
two baselines. The claim this notebook tests is the other one: the run under
5% of the memory is the same run, update for update.
"""),
]


# ---------------------------------------------------------------------------
# 04: vanishing gradients and truncation
# ---------------------------------------------------------------------------
NB04 = [
    md("""
# 04 — How far back does the gradient reach? Vanishing gradients and truncation

The gradient of a loss at step T with respect to the hidden state k steps
earlier is a product of k step Jacobians; for the usual initialisations it
shrinks geometrically with k (Bengio, Simard & Frasconi 1994; Hochreiter
1991). `mb.grad_norm_by_lag(model, params, xs, ys)` returns ||dL/dh_t|| for
t = 1..T, computed in the same single sweep as the gradient (and under a
memory budget if one is given).

Truncated BPTT(h; h') (Williams & Peng 1990) back-propagates only h steps.
If the gradient has vanished within h steps, truncation loses little; the
memory-efficient BPTT of Gruslys et al. (2016) is for when it has not — when
the error must travel further than any affordable h — and gives the exact
gradient over the whole sequence within the budget instead.
"""),
    code(SETUP),
    code(TABLE_HELPER),
    md("""
## Models

Elman (tanh), GRU and LSTM networks with hidden size 32 and PyTorch's default
initialisation (uniform in ±1/sqrt(hidden)), plus the same LSTM with its
forget-gate bias raised to +3 (a common initialisation that keeps the cell
state for longer). Inputs are a random sequence of T = 1000 steps.
"""),
    code("""
T, BATCH, N_IN, HIDDEN, N_OUT = 1000, 8, 4, 32, 2
rng = np.random.default_rng(0)
xs = rng.standard_normal((T, BATCH, N_IN))
ys_random = rng.standard_normal((T, BATCH, N_OUT))

models, params = {}, {}
for name, cell in [("Elman (tanh)", mb.Elman(input_size=N_IN, hidden_size=HIDDEN)),
                   ("GRU", mb.GRU(input_size=N_IN, hidden_size=HIDDEN)),
                   ("LSTM", mb.LSTM(input_size=N_IN, hidden_size=HIDDEN))]:
    models[name] = mb.Sequence(cell, output_size=N_OUT, loss="mse")
    params[name] = models[name].init_params(seed=0)
models["LSTM, forget bias +3"] = models["LSTM"]
p = {k: v.copy() for k, v in params["LSTM"].items()}
p["cell.bias_ih"][HIDDEN:2 * HIDDEN] += 1.5   # gate order i, f, g, o
p["cell.bias_hh"][HIDDEN:2 * HIDDEN] += 1.5
params["LSTM, forget bias +3"] = p

t0 = time.perf_counter()
for name in ["Elman (tanh)", "GRU", "LSTM"]:
    mb.value_and_grad(models[name], params[name], xs[:5], ys_random[:5])  # compile once per cell type
print(f"compiled three cell types in {time.perf_counter() - t0:.1f} s")
"""),
    md("""
## Gradient norm by lag

The loss is a mean over all steps, so with an error at every step,
dL/dh_t sums the error injected at t and everything propagated back from
later steps; its norm stays at the level of one step's error and hides the
decay (right panel). To see how far an error travels, the left panel puts one
large error at the last step only: targets are 0 except `ys[T-1] = 1e8`. Then
||dL/dh_{T-k}|| is the back-propagated error of step T after k steps, until
it falls to the floor set by the errors of the other steps (whose targets
are 0), shown dotted: the same run without the spike. Lags are counted from the end: k = T - t.
"""),
    code("""
SPIKE = 1e8
ys_spike = np.zeros_like(ys_random)
ys_spike[-1] = SPIKE
ys_floor = np.zeros_like(ys_random)

norms = {}
for name in models:
    spike = mb.grad_norm_by_lag(models[name], params[name], xs, ys_spike)[::-1]   # index k = lag from the end
    floor = mb.grad_norm_by_lag(models[name], params[name], xs, ys_floor)[::-1]
    random = mb.grad_norm_by_lag(models[name], params[name], xs, ys_random)[::-1]
    norms[name] = dict(spike=spike, floor=floor, random=random)

rows = []
for name, n in norms.items():
    rel = n["spike"] / n["spike"][0]
    above = np.nonzero(n["spike"] > 10 * n["floor"])[0]
    reach = int(above.max()) if len(above) else 0
    rows.append((name, *(f"{rel[k]:.1e}" for k in [1, 10, 50, 100, 500]), reach))
display(md_table(["model", "lag 1", "lag 10", "lag 50", "lag 100", "lag 500",
                  "largest lag with norm > 10x floor"], rows))
"""),
    code("""
lags = np.arange(1, T)   # log scale: lag 0 (the last step itself) is 1 by construction
fig, axes = plt.subplots(1, 2, figsize=(13, 4.8), gridspec_kw={"width_ratios": [1.6, 1]})
for i, (name, n) in enumerate(norms.items()):
    scale = n["spike"][0]
    axes[0].plot(lags, n["spike"][1:] / scale, color=f"C{i}", lw=1.5, label=name)
    axes[0].plot(lags, n["floor"][1:] / scale, ":", color=f"C{i}", lw=1)
    axes[1].plot(lags, n["random"][1:], color=f"C{i}", lw=1, label=name)
axes[0].plot([], [], "k:", lw=1, label="floor: errors of the other steps")
axes[0].set_yscale("log")
axes[0].set_xscale("log")
axes[0].set_xlabel("lag k (steps back from the last step)")
axes[0].set_ylabel("||dL/dh_{T-k}|| / ||dL/dh_T||")
axes[0].set_title(f"One error at the last step (T = {T})")
axes[0].legend(fontsize=8)
axes[1].set_yscale("log")
axes[1].set_xscale("log")
axes[1].set_xlabel("lag k")
axes[1].set_ylabel("||dL/dh_{T-k}||")
axes[1].set_title("Errors at every step (random targets)")
for ax in axes:
    ax.grid(True, which="both", alpha=0.3)
fig.tight_layout()
fig.savefig(os.path.join(PLOTS, "04_grad_norm_by_lag.png"), dpi=110)
plt.close(fig)
display(Image(os.path.join(PLOTS, "04_grad_norm_by_lag.png")))
"""),
    md("""
## What truncation drops

`mb.truncated_value_and_grad(model, params, xs, ys, h=h, h_prime=h')` computes
the gradient of Williams & Peng's BPTT(h; h'): every h' steps the error of the
last h' steps is back-propagated h steps (from the carried state; nothing is
reset). Below, the relative error of that gradient against the exact one,
||g_h - g|| / ||g||, for the random-target loss, as h grows, for h' = h and
h' = h/2 (dashed). h = T is exact (relative error 0, checked bit for bit in
the table, not drawn on the log scale). The loss itself does not depend on h.

With h' = h the error of the first step after each window boundary is
back-propagated one step only, so part of every error is always cut short,
however fast the gradient vanishes. With h' < h every error travels at least
h - h' steps — Williams & Peng's reason for h > h'.
"""),
    code("""
H_VALUES = [1, 2, 5, 10, 20, 50, 100, 200, 500]
trunc = {}
t0 = time.perf_counter()
for name in models:
    loss, g = mb.value_and_grad(models[name], params[name], xs, ys_random)
    g_norm = np.sqrt(sum(float(np.sum(v * v)) for v in g.values()))
    errs, errs_half, loss_gap = [], [], 0.0
    for h in H_VALUES:
        for h_prime, out in [(h, errs), (max(1, h // 2), errs_half)]:
            loss_h, g_h = mb.truncated_value_and_grad(models[name], params[name], xs, ys_random, h=h, h_prime=h_prime)
            out.append(np.sqrt(sum(float(np.sum((g_h[k] - g[k]) ** 2)) for k in g)) / g_norm)
            loss_gap = max(loss_gap, abs(loss_h - loss))
    loss_T, g_T = mb.truncated_value_and_grad(models[name], params[name], xs, ys_random, h=T, h_prime=T)
    exact_at_T = loss_T == loss and all(np.array_equal(g_T[k], g[k]) for k in g)
    trunc[name] = dict(errs=errs, errs_half=errs_half, loss_gap=loss_gap, exact_at_T=exact_at_T)
print(f"{len(models) * (2 * len(H_VALUES) + 1)} truncated gradients in {time.perf_counter() - t0:.1f} s")
rows = [(name, *(f"{e:.1e}" for e in r["errs"]), "yes" if r["exact_at_T"] else "NO", f"{r['loss_gap']:.1e}")
        for name, r in trunc.items()]
display(md_table(["model"] + [f"h={h}" for h in H_VALUES] + ["h=T bit-identical to BPTT", "max |loss_h - loss|"],
                 rows))
"""),
    code("""
fig, ax = plt.subplots(figsize=(8, 5))
for i, (name, r) in enumerate(trunc.items()):
    ax.plot(H_VALUES, r["errs"], "o-", color=f"C{i}", label=f"{name}, h' = h")
    ax.plot(H_VALUES, r["errs_half"], "s--", color=f"C{i}", ms=4, lw=1)
ax.plot([], [], "ks--", ms=4, lw=1, label="h' = h/2")
ax.set_xscale("log")
ax.set_yscale("log")
ax.set_xlabel("truncation length h (steps back-propagated)")
ax.set_ylabel("||g_h - g|| / ||g||")
ax.set_title(f"Truncated BPTT(h; h') against the exact gradient, T = {T}")
ax.grid(True, which="both", alpha=0.3)
ax.legend(fontsize=8)
fig.tight_layout()
fig.savefig(os.path.join(PLOTS, "04_truncation_error.png"), dpi=110)
plt.close(fig)
display(Image(os.path.join(PLOTS, "04_truncation_error.png")))
"""),
    md("""
Reading the two figures together: with PyTorch's default initialisations
the back-propagated error of every cell here has fallen to the floor within
a few dozen steps, and BPTT(h; h/2) is then exact to rounding once h/2 is past
that range; with h' = h the error decreases only like 1/h. The LSTM with a
raised forget-gate bias carries the error over the whole sequence, and
truncation drops a large part of its gradient for any h much shorter than T —
the case for the exact, memory-bounded gradient of notebook 03.
"""),
]


# ---------------------------------------------------------------------------
# 05: a stacked character model with an embedding
# ---------------------------------------------------------------------------
NB05 = [
    md("""
# 05 — A 2-layer LSTM character model under 5% of plain BPTT's memory

A character language model as people train one: token ids through an
embedding (`mb.Embedding`, PyTorch's `nn.Embedding` layout), two stacked LSTM
layers (PyTorch's `nn.LSTM(num_layers=2)` names), a readout and
cross-entropy at every step, on the chapter of *Alice's Adventures in
Wonderland* shipped with the package (`mb.char_lm(..., ids=True)`).

The same training runs twice from the same seed: with plain BPTT, and with
the planner's MSM schedule at 5% of plain BPTT's memory. Gradients are
bit-identical across schedules, so the two loss curves are the same numbers,
not just close. Then the trained model writes some text, and the memory the
planner charged is set beside what `tracemalloc` measured.
"""),
    code(SETUP),
    code(TABLE_HELPER),
    code("""
T, BATCH, EMBED, HIDDEN, UPDATES, LR = 200, 16, 16, 64, 300, 0.01
_, _, vocab = mb.char_lm(T, 1, seed=0, ids=True)
V = len(vocab)

model = mb.Sequence([mb.Embedding(V, EMBED), mb.LSTM(EMBED, HIDDEN), mb.LSTM(HIDDEN, HIDDEN)],
                    output_size=V, loss="cross_entropy", lanes=1)   # lanes=1: a second lane's buffers
params0 = model.init_params(seed=0, dtype="float32")                  # would not fit 5% at T=200
print(model.describe())
print({name: a.shape for name, a in params0.items()})


def draw(rng):
    \"\"\"A fresh batch of windows of the text per update (token ids and next-character labels).\"\"\"
    xs, ys, _ = mb.char_lm(T, BATCH, seed=int(rng.integers(2**31)), ids=True)
    return xs, ys


full_plan = mb.plan(T, budget=1.0, model=model, batch=BATCH, dtype="float32", policy="full")
small_plan = mb.plan(T, budget=0.05, model=model, batch=BATCH, dtype="float32")
print("plain BPTT:", full_plan, "\\n")
print("MSM at 5%:", small_plan)
"""),
    md("""
## The same training, plain and at 5%
"""),
    code("""
runs = {}
for label, budget in (("plain BPTT", None), ("MSM at 5%", 0.05)):
    t0 = time.perf_counter()
    params, history = mb.train(model, params0, draw, steps=UPDATES, optimizer=mb.Adam(LR), budget=budget,
                               clip_norm=5.0, seed=1, progress=False)
    runs[label] = (params, history, time.perf_counter() - t0)
    print(f"{label}: final loss {np.mean(history['loss'][-20:]):.3f} nats/char, {runs[label][2]:.1f} s")

plain, small = runs["plain BPTT"][1]["loss"], runs["MSM at 5%"][1]["loss"]
print("loss curves identical, bit for bit:", plain == small)
same_params = all(np.array_equal(runs["plain BPTT"][0][k], runs["MSM at 5%"][0][k]) for k in params0)
print("trained parameters identical, bit for bit:", same_params)
assert plain == small and same_params
print(f"uniform guess: {np.log(V):.3f} nats/char")
"""),
    code("""
fig, ax = plt.subplots(figsize=(7, 3.6))
ax.plot(plain, label="plain BPTT", lw=3, alpha=0.5)
ax.plot(small, label="MSM at 5% of plain BPTT's memory", lw=1, ls="--", color="black")
ax.axhline(np.log(V), color="gray", lw=0.8, ls=":", label="uniform guess")
ax.set_xlabel("update")
ax.set_ylabel("cross-entropy (nats / character)")
ax.set_title(f"embedding {EMBED} > LSTM {HIDDEN} > LSTM {HIDDEN} > readout {V}, T={T}, batch {BATCH}", fontsize=9)
ax.legend()
fig.tight_layout()
fig.savefig(os.path.join(PLOTS, "05_stacked_char_lm.png"), dpi=110)
plt.close(fig)
display(Image(os.path.join(PLOTS, "05_stacked_char_lm.png")))
"""),
    md("""
## Text from the trained model

One character at a time: `mb.final_state` advances the stack by one step
from the state it returned last (its state is PyTorch's `(h, c)` of shape
(2, layers, batch, hidden)), and the readout of the top layer's `h` gives
the next character's distribution, sampled at temperature 0.8.
"""),
    code("""
params = runs["MSM at 5%"][0]
rng = np.random.default_rng(0)
text = "Alice "
state = mb.final_state(model, params, np.array([[vocab.index(c)] for c in text[:-1]], np.int64))
token = vocab.index(text[-1])
for _ in range(300):
    state = mb.final_state(model, params, np.array([[token]], np.int64), h0=state)
    logits = state[0, -1] @ params["readout.weight"].T + params["readout.bias"]   # top layer's h
    p = np.exp((logits[0] - logits[0].max()) / 0.8)
    token = int(rng.choice(V, p=p / p.sum()))
    text += vocab[token]
print(text)
"""),
    md("""
## Memory: planned against measured

`return_report=True` traces one gradient with `tracemalloc`: the buffers the
sweep allocated and the peak during the call (a few KiB of Python objects
included), beside the schedule's charge.
"""),
    code("""
xs, ys, _ = mb.char_lm(T, BATCH, seed=7, ids=True)
rows = []
for label, budget in (("plain BPTT", None), ("MSM at 5%", 0.05)):
    *_, report = mb.value_and_grad(model, params, xs, ys, budget=budget, return_report=True)
    rows.append([label, mb.format_bytes(report.planned_bytes), mb.format_bytes(report.allocated_bytes),
                 mb.format_bytes(report.measured_peak_bytes), report.forward_steps])
md_table(["schedule", "planned", "allocated", "measured peak", "forward steps"], rows)
"""),
]


NOTEBOOKS = {
    "01_planner_tradeoffs": NB01,
    "02_exact_gradients": NB02,
    "03_long_sequence_training": NB03,
    "04_vanishing_gradients": NB04,
    "05_stacked_char_lm": NB05,
}


def build(name: str) -> str:
    nb = new_notebook(cells=NOTEBOOKS[name])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.metadata["language_info"] = {"name": "python"}
    path = os.path.join(HERE, name + ".ipynb")
    nbformat.write(nb, path)
    return path


def execute(path: str) -> float:
    from nbclient import NotebookClient

    nb = nbformat.read(path, as_version=4)
    t0 = time.perf_counter()
    NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": HERE}}).execute()
    wall = time.perf_counter() - t0
    nbformat.write(nb, path)
    return wall


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("names", nargs="*", help="notebooks to build (default: all)")
    parser.add_argument("--execute", action="store_true", help="run each notebook and keep its outputs")
    args = parser.parse_args(argv)
    names = args.names or list(NOTEBOOKS)
    unknown = [n for n in names if n not in NOTEBOOKS]
    if unknown:
        parser.error(f"unknown notebook(s) {unknown}; choose from {list(NOTEBOOKS)}")
    for name in names:
        path = build(name)
        if args.execute:
            print(f"{name}: executed in {execute(path):.1f} s", flush=True)
        else:
            print(f"{name}: written", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
