"""Drawing schedules: the ASCII timeline, the schedule plot and compare's cost curves.

:func:`schedule_events` replays a schedule's actions into step computations
(first forward, replay, backward) on a clock of forward-step units; the
timeline and the schedule plot draw those. Plots go through matplotlib's
Agg backend, imported only when a plot is asked for.
"""

from __future__ import annotations

import os
from typing import Any, Iterator, NamedTuple

import memopt_bptt as mb

from ._args import CliError

__all__ = ["Event", "ascii_timeline", "check_plot_path", "code_chunks", "plot_compare", "plot_schedule",
           "schedule_events"]

TIMELINE_ROWS = 25        # at most this many rows (steps are binned above it)
TIMELINE_COLS = 100       # at most this many columns (ticks are binned above it)


class Event(NamedTuple):
    """One step computation of a schedule on a clock of forward-step units."""

    kind: str      # "F" first forward of a step, "R" replay, "B" backward
    step: int      # the step computed (1..T)
    start: float   # clock at its start, in forward-step units
    length: float  # 1 for a forward, backward_forward_ratio (or 1) for a backward


def schedule_events(schedule: mb.Schedule, *, backward_length: float = 1.0) -> Iterator[Event]:
    """Every step computation of a schedule, in order, on a clock of forward-step units."""
    cur = reached = 0
    clock = 0.0
    for rows in code_chunks(schedule.codes):
        for op, step, _slot in rows:
            name = mb.OPS[op]
            if name in ("advance", "keep"):
                for s in range(cur + 1, step + 1):
                    yield Event("F" if s > reached else "R", s, clock, 1.0)
                    clock += 1.0
                    reached = max(reached, s)
                cur = step
            elif name in ("restore", "restore_internal"):
                cur = step
            elif name == "reverse":
                yield Event("B", step, clock, backward_length)
                clock += backward_length


def code_chunks(codes: Any, size: int = 4096) -> Iterator[list]:
    """The rows of a schedule's codes as Python lists, a chunk at a time (never all at once)."""
    for start in range(0, len(codes), size):
        yield codes[start: start + size].tolist()


def ascii_timeline(schedule: mb.Schedule, *, rows: int = TIMELINE_ROWS, cols: int = TIMELINE_COLS) -> list[str]:
    """Steps (rows, step T on top) against time (columns): F first forward, r replay, B backward."""
    events = list(schedule_events(schedule))
    T = schedule.T
    ticks = len(events)
    per_row = -(-T // rows)
    per_col = -(-ticks // cols)
    n_rows = -(-T // per_row)
    n_cols = -(-ticks // per_col)
    grid = [["."] * n_cols for _ in range(n_rows)]
    rank = {".": 0, "F": 1, "r": 2, "B": 3}
    for i, ev in enumerate(events):
        r = (ev.step - 1) // per_row
        c = i // per_col
        ch = "r" if ev.kind == "R" else ev.kind
        if rank[ch] > rank[grid[r][c]]:
            grid[r][c] = ch
    width = len(str(T))
    out = [f"timeline         rows: steps, {per_row} per row, step {T} on top; columns: time, "
           f"{per_col} step computation{'s' if per_col > 1 else ''} each",
           "                 F first forward, r replay, B backward, . idle"]
    for r in range(n_rows - 1, -1, -1):
        lo, hi = r * per_row + 1, min((r + 1) * per_row, T)
        label = f"{lo}" if lo == hi else f"{lo}-{hi}"
        out.append(f"  {label:>{2 * width + 1}} |" + "".join(grid[r]))
    return out


def plot_schedule(schedule: mb.Schedule, path: str, title: str) -> None:
    """Step against time: first forwards, replays and backwards as line segments."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.collections import LineCollection

    rho = schedule.backward_forward_ratio
    segs: dict[str, list] = {"F": [], "R": [], "B": []}
    run: list = []  # merge consecutive computations of one kind into one segment
    for ev in schedule_events(schedule, backward_length=rho):
        if ev.kind == "B":
            p0, p1 = (ev.start, ev.step), (ev.start + ev.length, ev.step - 1)
        else:
            p0, p1 = (ev.start, ev.step - 1), (ev.start + ev.length, ev.step)
        if run and run[0] == ev.kind and run[2] == p0:
            run[2] = p1
        else:
            if run:
                segs[run[0]].append([run[1], run[2]])
            run = [ev.kind, p0, p1]
    if run:
        segs[run[0]].append([run[1], run[2]])
    fig, ax = plt.subplots(figsize=(9, 5))
    styles = {"F": ("tab:blue", "first forward"), "R": ("tab:orange", "replay"), "B": ("tab:red", "backward")}
    for kind, (color, label) in styles.items():
        if segs[kind]:
            ax.add_collection(LineCollection(segs[kind], colors=color, linewidths=1.5, label=label))
    ax.autoscale()
    ax.set_xlabel(f"time (forward-step units; a backward step takes {rho:g})")
    ax.set_ylabel("position in the sequence (step)")
    ax.set_title(title, fontsize=10)
    ax.legend(loc="upper left")
    _save(fig, path)


_PLOT_SUFFIXES = (".png", ".pdf", ".svg", ".jpg", ".jpeg", ".eps", ".ps", ".tif", ".tiff", ".webp")


def check_plot_path(path: str | None) -> None:
    """Refuse an unwritable --plot before any work is done or printed."""
    if path is None:
        return
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder) or not os.access(folder, os.W_OK):
        raise CliError(f"--plot {path}: the folder {folder!r} does not exist or is not writable; "
                       "give a path in an existing folder")
    if not path.lower().endswith(_PLOT_SUFFIXES):
        raise CliError(f"--plot {path}: unknown image type; end the name with .png (or .pdf, .svg)")


def _save(fig: Any, path: str) -> None:
    import matplotlib.pyplot as plt
    try:
        fig.tight_layout()
        fig.savefig(path, dpi=110)
    except (OSError, ValueError) as exc:
        raise CliError(f"--plot {path}: cannot write the image ({exc}); give a writable path ending in .png")
    finally:
        plt.close(fig)


def plot_compare(rows: list[dict], path: str, T: int, target: Any) -> None:
    """Cost-memory curves of compare's rows, one line per policy (forward steps, predicted time)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from matplotlib.ticker import FuncFormatter, NullFormatter

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.5))
    # distinct markers and dashes: equal costs (hsm and revolve are the same optimum) stay visible
    looks = {"msm": ("o", "-"), "hsm": ("s", "--"), "ism": ("^", "-."), "revolve": ("x", ":"),
             "sqrt": ("D", "-"), "full": ("*", "-")}
    for policy in dict.fromkeys(r["policy"] for r in rows):
        pts = sorted((r["budget_fraction"], r["forward_steps"] / T, r["time_ratio"])
                     for r in rows if r["policy"] == policy and r["fits"])
        if not pts:
            continue
        x = [p[0] * 100 for p in pts]
        marker, dash = looks.get(policy, ("o", "-"))
        ax1.plot(x, [p[1] for p in pts], marker=marker, linestyle=dash, label=policy)
        ax2.plot(x, [p[2] for p in pts], marker=marker, linestyle=dash, label=policy)
    for ax, ylabel in ((ax1, "forward steps per step"), (ax2, "predicted time / plain BPTT")):
        ax.set_xscale("log")
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}%"))
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_xticks(sorted({r["budget_fraction"] * 100 for r in rows}))
        ax.set_xlabel("budget (of plain BPTT's memory)")
        ax.set_ylabel(ylabel)
        ax.grid(True, alpha=0.3)
        ax.legend()
    fig.suptitle(f"cost against memory, T={T}, {target.describe()}", fontsize=10)
    _save(fig, path)
