"""The ``memopt-bptt`` command line: plan, compare and demo.

``memopt-bptt plan`` prints the schedule :func:`memopt_bptt.plan` makes for a
sequence length and a memory budget (text, JSON or one action per line, with
an ASCII timeline for short sequences and an optional PNG plot);
``memopt-bptt compare`` tabulates every policy's cost over a list of budgets;
``memopt-bptt demo`` trains an LSTM on the adding problem under 5% of plain
BPTT's memory and checks one gradient bit-for-bit against plain BPTT.
``python -m memopt_bptt`` is the same program.

Bad input prints one line on stderr naming the option and the fix, and exits
with code 2. Only the public API of :mod:`memopt_bptt` is used here.

Example::

    memopt-bptt plan --steps 1000 --budget 5%
    memopt-bptt plan --steps 10 --slots 3 --policy hsm
    memopt-bptt compare --steps 500 --budgets 1%,5%,20%
    memopt-bptt demo
"""

from __future__ import annotations

import argparse
import math
import os
import re
import sys
import textwrap
import time
from typing import Any, Iterator, NamedTuple, Sequence as Seq

import numpy as np

import memopt_bptt as mb

__all__ = ["main", "build_parser"]

PROG = "memopt-bptt"
CELLS = {"lstm": mb.LSTM, "gru": mb.GRU, "elman": mb.Elman, "jordan": mb.Jordan}
DTYPES = ("float32", "float64")
# Defaults of the cell options: the reference LSTM of the benchmarks (input 64,
# hidden 256, batch 16, float32) with a 4-wide readout.
CELL_DEFAULTS = {"cell": "lstm", "input": 64, "hidden": 256, "output": 4, "batch": 16, "dtype": "float32"}
TIMELINE_MAX_T = 100      # the ASCII timeline is drawn for T up to this
TIMELINE_ROWS = 25        # at most this many rows (steps are binned above it)
TIMELINE_COLS = 100       # at most this many columns (ticks are binned above it)
TABLE_POLICIES = ("msm", "hsm", "ism")  # built from the O(T^2 m) table
SLOW_TABLE_T = 2000       # above this, warn that those take a while

_TABLE_NOTE = ("Policies msm, hsm and ism solve a dynamic programme of O(T^2 * m) time (m = the budget in "
               "hidden-state units): about a second for T=1000 at 5%, growing with T squared and with the "
               "budget; for T beyond a few thousand use --policy revolve or sqrt (closed forms, instant).")


class CliError(Exception):
    """Bad command-line input: one line on stderr, exit code 2."""


# ---- argument types ----------------------------------------------------------
def _positive_int(text: str) -> int:
    if not re.fullmatch(r"\s*\+?[0-9]+\s*", text) or int(text) < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive integer (e.g. 1000)")
    return int(text)


def _seed(text: str) -> int:
    if not re.fullmatch(r"\s*\+?[0-9]+\s*", text):
        raise argparse.ArgumentTypeError(f"{text!r} is not a non-negative integer (e.g. 0)")
    return int(text)


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive number (e.g. 3.5)")
    return value


_BUDGET_HELP = "bytes (4096), a size ('512KiB', '64MiB', '1GB'), a percentage ('5%') or a fraction in (0, 1] ('0.05')"


def _h(text: str) -> str:
    """Escape % for argparse, which %-formats help strings."""
    return text.replace("%", "%%")


def parse_cli_budget(text: str) -> int | float:
    """A budget from the command line: an int of bytes or a float fraction.

    A bare integer is bytes; a bare number with a dot is a fraction of plain
    BPTT's memory and must be in (0, 1]; anything else goes to
    :func:`memopt_bptt.parse_budget` ("64MiB", "5%").
    """
    s = text.strip()
    if re.fullmatch(r"[0-9]+", s):
        value: Any = int(s)
    elif re.fullmatch(r"[0-9]*\.[0-9]+|[0-9]+\.", s):
        value = float(s)
        if not 0.0 < value <= 1.0:
            raise ValueError(f"{text!r}: a bare number with a dot is a fraction of plain BPTT's memory and must be "
                             "in (0, 1]; give bytes as an integer (4096) or with a unit ('64MiB')")
    else:
        value = s
    try:
        kind, amount = mb.parse_budget(value)
    except (ValueError, TypeError):
        raise ValueError(f"{text!r} is not a budget: give {_BUDGET_HELP}") from None
    return int(amount) if kind == "bytes" else float(amount)


def _budget_arg(text: str) -> int | float:
    try:
        return parse_cli_budget(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _budget_list_arg(text: str) -> list[tuple[str, int | float]]:
    items = [t.strip() for t in text.split(",")]
    if not items or any(not t for t in items):
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of budgets (e.g. 1%,5%,20%)")
    return [(t, _budget_arg(t)) for t in items]


def _policy_list_arg(text: str) -> list[str]:
    items = [t.strip() for t in text.split(",")]
    bad = [t for t in items if t not in mb.POLICIES]
    if bad:
        raise argparse.ArgumentTypeError(f"unknown policy {bad[0]!r}; use a comma-separated subset of "
                                         f"{','.join(mb.POLICIES)}")
    return list(dict.fromkeys(items))


# ---- the parser --------------------------------------------------------------
class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors: raise CliError instead of printing usage."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise CliError(f"{self.prog}: error: {message}; see '{self.prog} --help'")


class _Formatter(argparse.HelpFormatter):
    """Wraps long prose lines; keeps indented lines (the examples) as written."""

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        out = []
        for line in text.splitlines():
            if line.startswith(" ") or len(line) <= width:
                out.append(indent + line)
            else:
                out.append(textwrap.fill(line, width, initial_indent=indent, subsequent_indent=indent + "  "
                                         if line.startswith("budgets:") else indent))
        return "\n".join(out)


def _add_cell_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group(
        "model (sizes the states in bytes; defaults: " +
        ", ".join(f"--{k} {v}" for k, v in CELL_DEFAULTS.items()) + ")")
    g.add_argument("--cell", choices=tuple(CELLS), default=None, help="recurrent cell")
    g.add_argument("--input", type=_positive_int, default=None, metavar="I", help="input size")
    g.add_argument("--hidden", type=_positive_int, default=None, metavar="H", help="hidden size")
    g.add_argument("--output", type=_positive_int, default=None, metavar="O", help="readout size")
    g.add_argument("--batch", type=_positive_int, default=None, metavar="N", help="batch size")
    g.add_argument("--dtype", choices=DTYPES, default=None, help="floating-point type")
    g.add_argument("--measure", action="store_true",
                   help="time this cell here (mb.measure_step_times, mb.measure_byte_cost; a few seconds) "
                        "and predict time with what it measures instead of the cell's b/f alone")


def build_parser() -> argparse.ArgumentParser:
    """The argparse parser of the whole program (subcommands plan, compare, demo)."""
    parser = _Parser(
        prog=PROG, formatter_class=_Formatter,
        description="Memory-efficient Backpropagation Through Time (Gruslys et al. 2016): plan which states "
                    "to keep for a memory budget, compare policies, run a demo.",
        epilog=textwrap.dedent(f"""\
            examples:
              {PROG} plan --steps 1000 --budget 5%
              {PROG} compare --steps 500 --budgets 1%,5%,20%
              {PROG} demo
            run '{PROG} COMMAND --help' for a command's options"""))
    parser.add_argument("--version", action="version", version=f"{PROG} {mb.__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    p = sub.add_parser(
        "plan", formatter_class=_Formatter, help="print the schedule for T steps and a memory budget",
        description="Plan the reversal of a T-step sequence within a memory budget and print the schedule: "
                    "forward steps, predicted time against plain BPTT, slots, checkpoint positions and "
                    "actions (with an ASCII timeline for T <= %d). Budgets are counted against plain BPTT, "
                    "i.e. the bytes of policy 'full' (every internal state kept). %s"
                    % (TIMELINE_MAX_T, _TABLE_NOTE),
        epilog=textwrap.dedent(f"""\
            examples:
              {PROG} plan --steps 1000 --budget 5%
              {PROG} plan --steps 1000 --budget 64MiB --cell gru --hidden 512 --batch 32
              {PROG} plan --steps 60 --budget 0.1 --plot schedule.png
              {PROG} plan --steps 10 --slots 3 --policy hsm          # abstract model: 25 forward steps
              {PROG} plan --steps 100 --slots 10 --alpha 3.5 --format json > schedule.json
            budgets: {_BUDGET_HELP}"""))
    p.add_argument("--steps", type=_positive_int, required=True, metavar="T", help="sequence length T")
    p.add_argument("--budget", type=_budget_arg, default=None, metavar="B",
                   help=_h("memory budget (required with a cell; with --alpha a fraction): " + _BUDGET_HELP))
    p.add_argument("--policy", choices=mb.POLICIES, default="msm", help="what to keep; msm is the optimal mix (default: %(default)s)")
    _add_cell_options(p)
    a = p.add_argument_group("abstract model (instead of a cell: memory in hidden-state units)")
    a.add_argument("--slots", type=_positive_float, default=None, metavar="M",
                   help="memory in hidden-state units, the initial state's slot included")
    a.add_argument("--alpha", type=_positive_float, default=None, metavar="A",
                   help="internal-state size over hidden-state size (3.5 for an LSTM; hsm/revolve default 1)")
    p.add_argument("--format", choices=("text", "json", "actions"), default="text",
                   help="text summary, Schedule.to_json(), or one action per line ('op step slot') (default: %(default)s)")
    p.add_argument("--plot", default=None, metavar="FILE.png",
                   help="also draw the schedule (step against time) into this image")

    c = sub.add_parser(
        "compare", formatter_class=_Formatter, help="tabulate every policy's cost over a list of budgets",
        description="For each budget, plan every policy and print its forward steps, predicted time ratio "
                    "and peak memory; a policy that does not fit shows the least budget it needs. %s"
                    % _TABLE_NOTE,
        epilog=textwrap.dedent(f"""\
            examples:
              {PROG} compare --steps 500 --budgets 1%,5%,20%
              {PROG} compare --steps 1000 --budgets 2MiB,8MiB,32MiB --cell gru --plot costs.png
              {PROG} compare --steps 20000 --budgets 1%,10% --policies revolve,sqrt,full
              {PROG} compare --steps 300 --alpha 3.5 --budgets 2%,5%,10%   # abstract model
            budgets: {_BUDGET_HELP}"""))
    c.add_argument("--steps", type=_positive_int, required=True, metavar="T", help="sequence length T")
    c.add_argument("--budgets", type=_budget_list_arg, default=_budget_list_arg("1%,5%,20%"), metavar="B,B,...",
                   help=_h("comma-separated budgets (default: 1%,5%,20%)"))
    c.add_argument("--policies", type=_policy_list_arg, default=list(mb.POLICIES), metavar="P,P,...",
                   help="comma-separated subset of " + ",".join(mb.POLICIES) + " (default: all)")
    _add_cell_options(c)
    c.add_argument("--alpha", type=_positive_float, default=None, metavar="A",
                   help="abstract model instead of a cell (budgets are then fractions)")
    c.add_argument("--format", choices=("text", "json"), default="text", help="table or JSON rows (default: %(default)s)")
    c.add_argument("--plot", default=None, metavar="FILE.png",
                   help="also draw cost-memory curves (one line per policy) into this image")

    d = sub.add_parser(
        "demo", formatter_class=_Formatter,
        help="train an LSTM on the adding problem under 5%% of plain BPTT's memory",
        description="Train an LSTM on the adding problem (inputs: a random value and a 0/1 marker per "
                    "step, two markers per sequence; target at every step: the sum of the marked values "
                    "so far) with Adam, under a memory budget, with a progress bar. Prints the loss, the "
                    "measured peak memory next to plain BPTT's planned bytes, and checks one gradient "
                    "bit-for-bit against plain BPTT (exit code 1 if it differs). Takes well under a "
                    "minute with the defaults, most of it Numba compiling the sweep once.",
        epilog=textwrap.dedent(f"""\
            examples:
              {PROG} demo
              {PROG} demo --steps 2000 --updates 60 --budget 2%
              {PROG} demo --steps 200 --updates 10"""))
    d.add_argument("--steps", type=_positive_int, default=1000, metavar="T", help="sequence length T (default: %(default)s)")
    d.add_argument("--updates", type=_positive_int, default=40, metavar="N", help="Adam updates (default: %(default)s)")
    d.add_argument("--budget", type=_budget_arg, default=_budget_arg("5%"), metavar="B",
                   help=_h("memory budget: " + _BUDGET_HELP + " (default 5%)"))
    d.add_argument("--policy", choices=mb.POLICIES, default="msm", help="what to keep (default: %(default)s)")
    d.add_argument("--hidden", type=_positive_int, default=32, metavar="H", help="LSTM hidden size (default: %(default)s)")
    d.add_argument("--batch", type=_positive_int, default=32, metavar="N", help="sequences per update (default: %(default)s)")
    d.add_argument("--dtype", choices=DTYPES, default="float32",
                   help="floating-point type (default: %(default)s)")
    d.add_argument("--lr", type=_positive_float, default=0.01, help="Adam learning rate (default: %(default)s)")
    d.add_argument("--seed", type=_seed, default=0, help="random seed of the data and initial weights (default: %(default)s)")
    return parser


# ---- formatting helpers --------------------------------------------------------
fmt_bytes = mb.format_bytes


def _elide(values: Seq[int], keep: int = 12) -> str:
    if not values:
        return "(none)"
    if len(values) <= 2 * keep + 1:
        return " ".join(map(str, values))
    return (" ".join(map(str, values[:keep])) + f" ... ({len(values) - 2 * keep} more) ... "
            + " ".join(map(str, values[-keep:])))


def _wrap(prefix: str, words: Seq[str], width: int = 100) -> list[str]:
    return textwrap.wrap(" ".join(words), width=width, initial_indent=prefix,
                         subsequent_indent=" " * len(prefix), break_on_hyphens=False) or [prefix]


# ---- the model from the options -------------------------------------------------
class Target(NamedTuple):
    """What a plan is for: a model (bytes) or the abstract model (units)."""

    model: Any              # mb.Sequence, or None in the abstract model
    batch: int | None
    dtype: str | None
    alpha: float | None     # abstract model only
    plain: float            # plain BPTT's memory: bytes (model) or units (abstract)
    rho: float | None = None        # measured backward/forward (--measure), else the cell's
    byte_cost: float | None = None  # measured forward steps per checkpoint byte (--measure), else 0

    @property
    def abstract(self) -> bool:
        return self.model is None

    def amount(self, value: float | None) -> str:
        if value is None:
            return "-"
        return f"{value:g} units" if self.abstract else fmt_bytes(value)

    def describe(self) -> str:
        if self.abstract:
            return f"abstract model, alpha={self.alpha:g}"
        return f"{self.model.describe()}, batch {self.batch}, {self.dtype}"


_CELL_OPTIONS = ("cell", "input", "hidden", "output", "batch", "dtype")


def _given_cell_options(args: argparse.Namespace) -> list[str]:
    return [f"--{k}" for k in _CELL_OPTIONS if getattr(args, k) is not None]


def _build_target(args: argparse.Namespace, T: int, *, alpha: float | None, abstract: bool) -> Target:
    if abstract:
        given = _given_cell_options(args) + (["--measure"] if args.measure else [])
        if given:
            raise CliError(f"{given[0]} is for a cell, but --slots/--alpha select the abstract model; "
                           "drop one or the other")
        a = 1.0 if alpha is None else alpha
        plain = mb.plan(T, budget=1.0, alpha=a, policy="full").peak_units
        return Target(None, None, None, a, plain)
    opts = {k: (getattr(args, k) if getattr(args, k) is not None else CELL_DEFAULTS[k]) for k in _CELL_OPTIONS}
    cell = CELLS[opts["cell"]](input_size=opts["input"], hidden_size=opts["hidden"])
    model = mb.Sequence(cell, output_size=opts["output"], loss="mse")
    plain = mb.plan(T, budget=1.0, model=model, batch=opts["batch"], dtype=opts["dtype"], policy="full").peak_bytes
    rho = byte_cost = None
    if args.measure:
        f, b = mb.measure_step_times(model, batch=opts["batch"], dtype=opts["dtype"])
        m = mb.measure_byte_cost(model, batch=opts["batch"], dtype=opts["dtype"], T=min(T, 1000))
        rho, byte_cost = b / f, m / f
    return Target(model, opts["batch"], opts["dtype"], None, float(plain), rho, byte_cost)


def _warn_if_slow(T: int, policies: Seq[str]) -> None:
    slow = [p for p in policies if p in TABLE_POLICIES]
    if T > SLOW_TABLE_T and slow:
        print(f"{PROG}: note: planning {'/'.join(slow)} for T={T} solves an O(T^2 * m) table and may take "
              "minutes; --policy revolve or sqrt is instant", file=sys.stderr, flush=True)


def _plan(target: Target, T: int, policy: str, *, budget: int | float | None = None,
          slots: float | None = None) -> mb.Schedule:
    if target.abstract:
        alpha = target.alpha
        if slots is not None:
            return mb.plan(T, slots=slots, alpha=alpha, policy=policy)
        return mb.plan(T, budget=budget, alpha=alpha, policy=policy)
    return mb.plan(T, budget=budget, model=target.model, batch=target.batch, dtype=target.dtype, policy=policy,
                   backward_forward_ratio=target.rho, byte_cost=target.byte_cost)


def least_budget(exc: mb.MemoryBudgetError, target: Target, T: int, policy: str) -> float | None:
    """The least budget that plans: bytes (model) or units (abstract), from a MemoryBudgetError.

    The error's least can be a lower bound only (the initial state and working
    buffers, before the policy's own needs are known), so it is tried and, if
    it fails too, raised to the next error's least until a plan succeeds.
    """
    for _ in range(8):
        least = exc.least_bytes if exc.least_bytes is not None else exc.least_units
        if least is None:
            return None
        try:
            if target.abstract:
                _plan(target, T, policy, slots=float(least))
            else:
                _plan(target, T, policy, budget=int(least))
            return least
        except mb.MemoryBudgetError as again:
            exc = again
    return None


def _least_text(exc: mb.MemoryBudgetError, target: Target, T: int, policy: str) -> tuple[str, str]:
    """(the least budget, the option that asks for it) from a MemoryBudgetError."""
    least = least_budget(exc, target, T, policy)
    if least is None:
        return "unknown", "a larger budget"
    if not target.abstract:
        least = int(least)
        return (f"{least} bytes ({fmt_bytes(least)}, {least / target.plain:.2%} of plain BPTT)",
                f"--budget {least}")
    return f"{least:g} units ({least / target.plain:.2%} of plain BPTT)", f"--slots {least:g}"


# ---- the timeline ----------------------------------------------------------------
class Event(NamedTuple):
    kind: str      # "F" first forward of a step, "R" replay, "B" backward
    step: int      # the step computed (1..T)
    start: float   # clock at its start, in forward-step units
    length: float  # 1 for a forward, backward_forward_ratio (or 1) for a backward


def schedule_events(schedule: mb.Schedule, *, backward_length: float = 1.0) -> Iterator[Event]:
    """Every step computation of a schedule, in order, on a clock of forward-step units."""
    cur = reached = 0
    clock = 0.0
    for op, step, _slot in schedule.codes.tolist():
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


def _plot_schedule(schedule: mb.Schedule, path: str, title: str) -> None:
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


def _check_plot_path(path: str | None) -> None:
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


# ---- plan ----------------------------------------------------------------------
def cmd_plan(args: argparse.Namespace, out: Any) -> int:
    T = args.steps
    _check_plot_path(args.plot)
    abstract = args.slots is not None or args.alpha is not None
    if abstract:
        if args.slots is not None and args.budget is not None:
            raise CliError("--slots and --budget both set the memory in the abstract model; give one of them")
        if args.slots is None and args.budget is None:
            raise CliError("the abstract model needs --slots M (hidden-state units) or --budget as a fraction "
                           "(e.g. --budget 5%)")
        if isinstance(args.budget, int):
            raise CliError(f"--budget {args.budget} is in bytes, which needs a cell; with --alpha give a "
                           "fraction (e.g. --budget 5%) or use --slots")
        if args.alpha is None and args.policy not in ("hsm", "revolve"):
            raise CliError(f"--policy {args.policy} in the abstract model needs --alpha (internal-state over "
                           "hidden-state size, e.g. --alpha 3.5 for an LSTM)")
    elif args.budget is None:
        raise CliError("--budget is required with a cell: give " + _BUDGET_HELP)
    target = _build_target(args, T, alpha=args.alpha, abstract=abstract)
    _warn_if_slow(T, [args.policy])
    try:
        schedule = _plan(target, T, args.policy, budget=args.budget, slots=args.slots)
    except mb.MemoryBudgetError as exc:
        what = f"--slots {args.slots:g}" if args.slots is not None else "--budget"
        least, fix = _least_text(exc, target, T, args.policy)
        raise CliError(f"{what} is below the least that works for T={T} with --policy {args.policy}: "
                       f"{least}; use {fix} or more") from None
    if args.format == "json":
        print(schedule.to_json(), file=out)
    elif args.format == "actions":
        for op, step, slot in schedule.codes.tolist():
            print(f"{mb.OPS[op]} {step} {slot}", file=out)
    else:
        print("\n".join(plan_text(schedule, target)), file=out)
    if args.plot:
        _plot_schedule(schedule, args.plot,
                       f"{args.policy} schedule, T={T}, {target.describe()}: {schedule.forward_steps} forward "
                       f"steps, predicted time x{schedule.time_ratio:.2f}")
        if args.format == "text":
            print(f"plot written to {args.plot}", file=out)
    return 0


def plan_text(schedule: mb.Schedule, target: Target) -> list[str]:
    """The text report of ``memopt-bptt plan``."""
    T = schedule.T
    plain = target.plain
    if target.abstract:
        budget = schedule.budget_units
        peak = schedule.peak_units
        peak_detail = ""
    else:
        budget = schedule.budget_bytes
        peak = schedule.peak_bytes
        peak_detail = (f" = checkpoints {fmt_bytes(schedule.pool_bytes)} + working buffers "
                       f"{fmt_bytes(schedule.working_bytes)}")
    lines = [
        f"policy           {schedule.policy}",
        f"model            {target.describe()}",
        f"T                {T} steps",
        f"plain BPTT       {target.amount(plain)} (policy full: every internal state kept)",
        f"budget           {target.amount(budget)} ({budget / plain:.2%} of plain BPTT)",
        f"peak memory      {target.amount(peak)} ({peak / plain:.2%} of plain BPTT){peak_detail}",
        f"slots            {schedule.n_hidden_slots} hidden (initial state included), "
        f"{schedule.n_internal_slots} internal; alpha = {schedule.alpha:g}",
        f"forward steps    {schedule.forward_steps} ({schedule.forward_steps / T:.3f} per step; plain BPTT {T})",
        f"time ratio       {schedule.time_ratio:.3f} x plain BPTT (predicted, backward/forward = "
        f"{schedule.backward_forward_ratio:.3g}"
        + (f", {schedule.byte_cost * 2 ** 20:.3g} forward steps per MiB of checkpoints, measured here)"
           if target.rho is not None else ")"),
    ]
    hp, ip = schedule.hidden_positions, schedule.internal_positions
    lines += _wrap(f"hidden kept at   ({len(hp)}) ", [_elide(hp)])
    lines += _wrap(f"internal kept at ({len(ip)}) ", [_elide(ip)])
    acts = [str(a) for a in schedule.actions]
    shown = acts if len(acts) <= 60 else acts[:45] + [f"... ({len(acts) - 55} more; --format actions lists "
                                                      "all) ..."] + acts[-10:]
    lines += _wrap(f"actions ({len(acts)}) ", shown)
    if T <= TIMELINE_MAX_T:
        lines += ascii_timeline(schedule)
    return lines


# ---- compare ---------------------------------------------------------------------
def cmd_compare(args: argparse.Namespace, out: Any) -> int:
    T = args.steps
    _check_plot_path(args.plot)
    abstract = args.alpha is not None
    if abstract:
        for text, value in args.budgets:
            if isinstance(value, int):
                raise CliError(f"--budgets entry {text!r} is in bytes, which needs a cell; with --alpha give "
                               "fractions (e.g. --budgets 1%,5%,20%)")
    target = _build_target(args, T, alpha=args.alpha, abstract=abstract)
    _warn_if_slow(T, args.policies)
    rows = []
    for text, value in args.budgets:
        amount = value * target.plain if isinstance(value, float) else float(value)
        for policy in args.policies:
            row: dict[str, Any] = {"budget": text, "budget_fraction": amount / target.plain, "policy": policy}
            try:
                s = _plan(target, T, policy, budget=value)
            except mb.MemoryBudgetError as exc:
                row.update(fits=False, least=least_budget(exc, target, T, policy))
            else:
                row.update(fits=True, forward_steps=s.forward_steps, time_ratio=s.time_ratio,
                           peak=s.peak_units if abstract else s.peak_bytes)
            rows.append(row)
    unit = "units" if abstract else "bytes"
    if args.format == "json":
        import json
        for r in rows:
            r[f"peak_{unit}" if r["fits"] else f"least_{unit}"] = r.pop("peak" if r["fits"] else "least")
        print(json.dumps({"T": T, "model": target.describe(), f"plain_{unit}": target.plain, "rows": rows}),
              file=out)
    else:
        print(f"T = {T}, {target.describe()}; plain BPTT keeps {target.amount(target.plain)}", file=out)
        head = f"{'budget':>16}  {'policy':<8} {'forwards':>9} {'per step':>9} {'time ratio':>10}  {'peak':>22}"
        print(head, file=out)
        print("-" * len(head), file=out)
        for r in rows:
            b = f"{r['budget']} ({r['budget_fraction']:.1%})"
            if r["fits"]:
                peak = f"{target.amount(r['peak'])} ({r['peak'] / target.plain:.1%})"
                print(f"{b:>16}  {r['policy']:<8} {r['forward_steps']:>9} {r['forward_steps'] / T:>9.3f} "
                      f"{r['time_ratio']:>10.3f}  {peak:>22}", file=out)
            else:
                print(f"{b:>16}  {r['policy']:<8} does not fit: needs at least {target.amount(r['least'])} "
                      f"({r['least'] / target.plain:.1%})", file=out)
    if args.plot:
        _plot_compare(rows, args.plot, T, target)
        if args.format == "text":
            print(f"plot written to {args.plot}", file=out)
    return 0


def _plot_compare(rows: list[dict], path: str, T: int, target: Target) -> None:
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


# ---- demo ----------------------------------------------------------------------
def adding_batch(rng: np.random.Generator, T: int, batch: int, dtype: Any = np.float32) -> tuple[np.ndarray, np.ndarray]:
    """The adding problem (Hochreiter & Schmidhuber 1997), with a target at every step.

    x_t = (value uniform in [0, 1), marker); one marker in the first tenth of
    the sequence (at least its first step) and one in the second half. The
    target at step t is the sum of the marked values up to t, so the last
    target is the classic adding problem's answer and the first marked value
    must be remembered for most of the sequence.
    """
    xs = np.zeros((T, batch, 2), dtype)
    xs[:, :, 0] = rng.random((T, batch))
    cols = np.arange(batch)
    first = rng.integers(0, max(T // 10, 1), batch)
    second = rng.integers(T // 2, T, batch) if T > 1 else first
    second = np.where(second == first, (first + 1) % T, second) if T > 1 else second
    xs[first, cols, 1] = 1.0
    xs[second, cols, 1] = 1.0
    ys = np.cumsum(xs[:, :, 0] * xs[:, :, 1], axis=0, dtype=np.float64)[:, :, None].astype(dtype)
    return xs, ys


def cmd_demo(args: argparse.Namespace, out: Any) -> int:
    from tqdm import tqdm

    t_start = time.perf_counter()
    T, B, dtype = args.steps, args.batch, args.dtype
    model = mb.Sequence(mb.LSTM(input_size=2, hidden_size=args.hidden), output_size=1, loss="mse")
    params = model.init_params(seed=args.seed, dtype=dtype)
    rng = np.random.default_rng(args.seed)
    plain = mb.plan(T, budget=1.0, model=model, batch=B, dtype=dtype, policy="full")
    target = Target(model, B, dtype, None, float(plain.peak_bytes))
    try:
        schedule = mb.plan(T, budget=args.budget, model=model, batch=B, dtype=dtype, policy=args.policy)
    except mb.MemoryBudgetError as exc:
        least, fix = _least_text(exc, target, T, args.policy)
        raise CliError(f"--budget is below the least that works for the demo (T={T}, batch {B}) with "
                       f"--policy {args.policy}: {least}; use {fix} or more") from None
    print(f"{PROG} demo: {model.describe()} on the adding problem, T={T}, batch {B}, {dtype}, "
          f"{args.updates} Adam updates", file=out)
    print(f"plan: {args.policy} in {fmt_bytes(schedule.budget_bytes)} "
          f"({schedule.budget_bytes / plain.peak_bytes:.1%} of plain BPTT's {fmt_bytes(plain.peak_bytes)}): "
          f"{schedule.forward_steps} forward steps for {T} ({schedule.forward_steps / T:.2f} per step), "
          f"predicted time x{schedule.time_ratio:.2f}, {schedule.n_hidden_slots} hidden + "
          f"{schedule.n_internal_slots} internal slots", file=out)
    print("(the first update includes Numba compiling the sweep, a few seconds)", file=out)
    out.flush()

    # Adam (Kingma & Ba 2015), plain numpy
    b1, b2, eps = 0.9, 0.999, 1e-8
    moment1 = {k: np.zeros_like(v) for k, v in params.items()}
    moment2 = {k: np.zeros_like(v) for k, v in params.items()}
    losses = []
    bar = tqdm(range(1, args.updates + 1), desc="training", unit="update", file=sys.stderr,
               dynamic_ncols=True, mininterval=0.5)
    for n in bar:
        xs, ys = adding_batch(rng, T, B, dtype)
        loss, grads = mb.value_and_grad(model, params, xs, ys, schedule=schedule)
        losses.append(loss)
        for k, g in grads.items():
            moment1[k] = b1 * moment1[k] + (1 - b1) * g
            moment2[k] = b2 * moment2[k] + (1 - b2) * g * g
            step = args.lr * (moment1[k] / (1 - b1 ** n)) / (np.sqrt(moment2[k] / (1 - b2 ** n)) + eps)
            params[k] = (params[k] - step).astype(params[k].dtype)
        bar.set_postfix(loss=f"{loss:.4f}")
    bar.close()
    k = max(1, min(5, len(losses) // 2))
    print(f"loss: {np.mean(losses[:k]):.4f} (mean of the first {k} updates) -> {np.mean(losses[-k:]):.4f} "
          f"(last {k}); for scale, the best constant prediction scores {_baseline_loss(rng, T, B):.4f}: "
          "solving the task itself takes thousands of updates", file=out)

    xs, ys = adding_batch(rng, T, B, dtype)
    loss, grads, report = mb.value_and_grad(model, params, xs, ys, schedule=schedule, return_report=True)
    plain_loss, plain_grads = mb.value_and_grad(model, params, xs, ys, policy="full", budget=1.0)
    print(f"memory: measured peak {fmt_bytes(report.measured_peak_bytes)} (tracemalloc, one update) "
          f"against plain BPTT's planned {fmt_bytes(plain.peak_bytes)} "
          f"({report.measured_peak_bytes / plain.peak_bytes:.1%}); this schedule planned "
          f"{fmt_bytes(report.planned_bytes)} within a budget of {fmt_bytes(schedule.budget_bytes)}", file=out)
    print(f"forward steps: {report.forward_steps} counted (planned {schedule.forward_steps}, plain BPTT {T})",
          file=out)
    same = loss == plain_loss and all(np.array_equal(grads[name], plain_grads[name]) for name in grads)
    if same:
        print(f"gradient check: loss and all {len(grads)} parameter gradients are bit-identical to plain BPTT "
              "(np.array_equal)", file=out)
    else:
        bad = [name for name in grads if not np.array_equal(grads[name], plain_grads[name])]
        print(f"gradient check FAILED: {bad or ['loss']} differ from plain BPTT", file=out)
    print(f"wall time: {time.perf_counter() - t_start:.1f} s", file=out)
    return 0 if same else 1


def _baseline_loss(rng: np.random.Generator, T: int, B: int) -> float:
    """MSE of the best constant prediction on a fresh batch (a yardstick for the loss)."""
    _, ys = adding_batch(np.random.default_rng(rng.integers(2**32)), T, B, np.float64)
    return float(np.mean((ys - ys.mean()) ** 2))


# ---- main ----------------------------------------------------------------------
_COMMANDS = {"plan": cmd_plan, "compare": cmd_compare, "demo": cmd_demo}
_VALUE_OPTIONS = {"--steps", "--budget", "--budgets", "--input", "--hidden", "--output", "--batch", "--slots",
                  "--alpha", "--updates", "--lr", "--seed"}


def _join_negative_values(argv: list[str]) -> list[str]:
    """'--budget -3MiB' -> '--budget=-3MiB', so argparse reports the bad value, not a missing one."""
    out: list[str] = []
    i = 0
    while i < len(argv):
        if argv[i] in _VALUE_OPTIONS and i + 1 < len(argv) and re.match(r"-[0-9.]", argv[i + 1]):
            out.append(f"{argv[i]}={argv[i + 1]}")
            i += 2
        else:
            out.append(argv[i])
            i += 1
    return out


def main(argv: Seq[str] | None = None) -> int:
    """Run the program; returns the exit code (0 ok, 1 a failed demo check, 2 bad input)."""
    parser = build_parser()
    command = None
    try:
        try:
            args = parser.parse_args(_join_negative_values(sys.argv[1:] if argv is None else list(argv)))
        except SystemExit as exc:  # --help and --version
            return exc.code if isinstance(exc.code, int) else 0
        command = args.command
        if command is None:
            parser.print_help()
            return 2
        return _COMMANDS[command](args, sys.stdout)
    except (CliError, ValueError, TypeError) as exc:
        # CliError: our own checks; ValueError/TypeError (MemoryBudgetError among them): the
        # library's checks, which name the argument and the fix
        where = f"{PROG} {command}" if command else PROG
        line = " ".join(str(exc).split())
        print(line if line.startswith(PROG) else f"{where}: error: {line}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # e.g. piped into head
        sys.stderr.close()
        return 0
