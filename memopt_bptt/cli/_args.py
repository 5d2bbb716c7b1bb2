"""Argument parsing of the ``memopt-bptt`` command line: option types, the parser, its help.

Option values are checked as they are parsed (a positive integer, a budget,
a list of policies), so a bad value is reported by argparse naming the
option; :class:`CliError` carries every other bad-input message, one line on
stderr with exit code 2 (see :func:`memopt_bptt.cli.main`).
"""

from __future__ import annotations

import argparse
import math
import re
import textwrap

import memopt_bptt as mb

__all__ = ["CliError", "build_parser", "parse_cli_budget"]

PROG = "memopt-bptt"
CELLS = {"lstm": mb.LSTM, "gru": mb.GRU, "elman": mb.Elman, "jordan": mb.Jordan}
DTYPES = ("float32", "float64")
# Defaults of the cell options: the reference LSTM of the benchmarks (input 64,
# hidden 256, batch 16, float32) with a 4-wide readout.
CELL_DEFAULTS = {"cell": "lstm", "input": 64, "hidden": 256, "output": 4, "batch": 16, "dtype": "float32",
                 "layers": 1, "vocab": 0}
CELL_OPTIONS = tuple(CELL_DEFAULTS)
TIMELINE_MAX_T = 100      # the ASCII timeline is drawn for T up to this
BUDGET_HELP = "bytes (4096), a size ('512KiB', '64MiB', '1GB'), a percentage ('5%') or a fraction in (0, 1] ('0.05')"


class CliError(Exception):
    """Bad command-line input: one line on stderr, exit code 2."""


# ---- argument types ----------------------------------------------------------
def _non_negative_int(text: str) -> int:
    if not re.fullmatch(r"\s*\+?[0-9]+\s*", text):
        raise argparse.ArgumentTypeError(f"{text!r} is not a non-negative integer (e.g. 65)")
    return int(text)


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




def _h(text: str) -> str:
    """Escape % for argparse, which %-formats help strings."""
    return text.replace("%", "%%")


def parse_cli_budget(text: str) -> int | float:
    """A budget from the command line: an int of bytes or a float fraction.

    Read by :func:`memopt_bptt.parse_budget`, so ``--budget 0.05`` means what
    ``budget="0.05"`` means in the API (a fraction of plain BPTT's memory; a
    bare integer is bytes), and a bad value gets the same message.
    """
    kind, amount = mb.parse_budget(text)
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


def _add_cell_options(p: argparse.ArgumentParser, *, measure: bool = True) -> None:
    g = p.add_argument_group(
        "model (sizes the states in bytes; defaults: " +
        ", ".join(f"--{k} {v}" for k, v in CELL_DEFAULTS.items()) + ")")
    g.add_argument("--cell", choices=tuple(CELLS), default=None, help="recurrent cell")
    g.add_argument("--input", type=_positive_int, default=None, metavar="I", help="input size")
    g.add_argument("--hidden", type=_positive_int, default=None, metavar="H", help="hidden size")
    g.add_argument("--output", type=_positive_int, default=None, metavar="O", help="readout size")
    g.add_argument("--batch", type=_positive_int, default=None, metavar="N", help="batch size")
    g.add_argument("--dtype", choices=DTYPES, default=None, help="floating-point type")
    g.add_argument("--layers", type=_positive_int, default=None, metavar="L",
                   help="stacked layers of the cell, each of --hidden units (mb.Sequence([...]))")
    g.add_argument("--vocab", type=_non_negative_int, default=None, metavar="V",
                   help="token ids through an embedding of V rows and --input columns (0: float inputs)")
    if not measure:
        return
    g.add_argument("--measure", action="store_true",
                   help="time this cell here (mb.measure_step_times, mb.measure_byte_cost; a few seconds) "
                        "and predict time with what it measures instead of the cell's b/f alone")


def build_parser() -> argparse.ArgumentParser:
    """The argparse parser of the whole program (subcommands plan, compare, calibrate, demo)."""
    parser = _Parser(
        prog=PROG, formatter_class=_Formatter,
        description="Memory-efficient Backpropagation Through Time (Gruslys et al. 2016): plan which states "
                    "to keep for a memory budget, compare policies, run a demo.",
        epilog=textwrap.dedent(f"""\
            examples:
              {PROG} plan --steps 1000 --budget 5%
              {PROG} compare --steps 500 --budgets 1%,5%,20%
              {PROG} calibrate --hidden 256 --batch 16
              {PROG} demo
            run '{PROG} COMMAND --help' for a command's options"""))
    parser.add_argument("--version", action="version", version=f"{PROG} {mb.__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    p = sub.add_parser(
        "plan", formatter_class=_Formatter, help="print the schedule for T steps and a memory budget",
        description="Plan the reversal of a T-step sequence within a memory budget and print the schedule: "
                    "forward steps, predicted time against plain BPTT, slots, checkpoint positions and "
                    "actions (with an ASCII timeline for T <= %d). Budgets are counted against plain BPTT, "
                    "i.e. the bytes of policy 'full' (every internal state kept)." % TIMELINE_MAX_T,
        epilog=textwrap.dedent(f"""\
            examples:
              {PROG} plan --steps 1000 --budget 5%
              {PROG} plan --steps 1000 --budget 64MiB --cell gru --hidden 512 --batch 32
              {PROG} plan --steps 60 --budget 0.1 --plot schedule.png
              {PROG} plan --steps 10 --slots 3 --policy hsm          # abstract model: 25 forward steps
              {PROG} plan --steps 100 --slots 10 --alpha 3.5 --format json > schedule.json
            budgets: {BUDGET_HELP}"""))
    p.add_argument("--steps", type=_positive_int, required=True, metavar="T", help="sequence length T")
    p.add_argument("--budget", type=_budget_arg, default=None, metavar="B",
                   help=_h("memory budget (required with a cell; with --alpha a fraction): " + BUDGET_HELP))
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
                    "and peak memory; a policy that does not fit shows the least budget it needs.",
        epilog=textwrap.dedent(f"""\
            examples:
              {PROG} compare --steps 500 --budgets 1%,5%,20%
              {PROG} compare --steps 1000 --budgets 2MiB,8MiB,32MiB --cell gru --plot costs.png
              {PROG} compare --steps 20000 --budgets 1%,10% --policies revolve,sqrt,full
              {PROG} compare --steps 300 --alpha 3.5 --budgets 2%,5%,10%   # abstract model
            budgets: {BUDGET_HELP}"""))
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

    k = sub.add_parser(
        "calibrate", formatter_class=_Formatter, help="time a model's splits on this machine and keep the fastest",
        description="mb.calibrate: time the ways a sweep of this model and batch can be split between threads "
                    "(one sweep, two unit threads, two lanes) on this machine, plain BPTT on random data, "
                    "interleaved, and keep the fastest for every model of its class (cell kinds, sizes and batch "
                    "within a factor of sqrt(2)) whose lanes= and unit_threads= are automatic. The file lives "
                    "beside Numba's cache (MEMOPT_BPTT_CALIBRATION=<path> puts it elsewhere, =off ignores it).",
        epilog=textwrap.dedent(f"""\
            examples:
              {PROG} calibrate --cell lstm --hidden 256 --batch 16
              {PROG} calibrate --cell gru --hidden 512 --layers 2 --batch 32 --seconds 6
              {PROG} calibrate --hidden 1024 --batch 1 --dry-run"""))
    _add_cell_options(k, measure=False)
    k.add_argument("--seconds", type=_positive_float, default=3.0,
                   help="time the timed calls may take in all, compiling aside (default: %(default)s)")
    k.add_argument("--rounds", type=_positive_int, default=5, help="timed rounds (default: %(default)s)")
    k.add_argument("--dry-run", action="store_true", help="measure and print, but keep nothing")

    d = sub.add_parser(
        "demo", formatter_class=_Formatter,
        help="train an LSTM on the adding problem under 5%% of plain BPTT's memory",
        description="Train an LSTM on the adding problem (mb.adding_problem: inputs are a random value and a "
                    "0/1 marker per step, two markers per sequence; the target at every step is the sum of the "
                    "marked values so far) with mb.train and mb.Adam, a fresh batch per update, under a memory "
                    "budget, with a progress bar. Then, on a fresh batch, prints the loss against the best "
                    "constant prediction's (the targets' variance), the measured peak memory next to plain "
                    "BPTT's planned bytes, and checks the gradient bit-for-bit against plain BPTT (exit code 1 "
                    "if it differs). The defaults learn the task (the loss ends at a few percent of the "
                    "constant prediction's) in well under a minute, the first update including Numba "
                    "compiling the sweep.",
        epilog=textwrap.dedent(f"""\
            examples:
              {PROG} demo
              {PROG} demo --steps 1000 --updates 1000 --budget 2%
              {PROG} demo --steps 100 --updates 50 --budget 20%"""))
    d.add_argument("--steps", type=_positive_int, default=300, metavar="T", help="sequence length T (default: %(default)s)")
    d.add_argument("--updates", type=_positive_int, default=500, metavar="N", help="Adam updates (default: %(default)s)")
    d.add_argument("--budget", type=_budget_arg, default=_budget_arg("5%"), metavar="B",
                   help=_h("memory budget: " + BUDGET_HELP + " (default 5%)"))
    d.add_argument("--policy", choices=mb.POLICIES, default="msm", help="what to keep (default: %(default)s)")
    d.add_argument("--hidden", type=_positive_int, default=32, metavar="H", help="LSTM hidden size (default: %(default)s)")
    d.add_argument("--batch", type=_positive_int, default=16, metavar="N", help="sequences per update (default: %(default)s)")
    d.add_argument("--dtype", choices=DTYPES, default="float32",
                   help="floating-point type (default: %(default)s)")
    d.add_argument("--lr", type=_positive_float, default=0.03, help="Adam learning rate (default: %(default)s)")
    d.add_argument("--seed", type=_seed, default=0, help="random seed of the data and initial weights (default: %(default)s)")
    return parser


