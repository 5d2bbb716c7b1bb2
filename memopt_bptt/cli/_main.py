"""Running the program: parse, dispatch to a command, turn bad input into one line and exit code 2."""

from __future__ import annotations

import os
import re
import sys
from typing import Sequence as Seq

from ._args import PROG, CliError, build_parser
from ._calibrate import cmd_calibrate
from ._demo import cmd_demo
from ._plan_compare import cmd_compare, cmd_plan

__all__ = ["main"]

_COMMANDS = {"plan": cmd_plan, "compare": cmd_compare, "calibrate": cmd_calibrate, "demo": cmd_demo}
_VALUE_OPTIONS = {"--steps", "--budget", "--budgets", "--input", "--hidden", "--output", "--batch", "--slots",
                  "--alpha", "--updates", "--lr", "--seed", "--seconds", "--rounds"}


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
    """Run the program; returns the exit code (0 ok, 1 a failed demo check or an internal error,
    2 bad input or a plan too large for this machine, 130 interrupted). No traceback is printed
    (set MEMOPT_BPTT_TRACEBACK=1 to see one)."""
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
    except MemoryError as exc:
        # the planner refuses what cannot fit before allocating, naming the bytes it would need
        where = f"{PROG} {command}" if command else PROG
        line = " ".join(str(exc).split()) or "out of memory"
        print(f"{where}: error: {line}", file=sys.stderr)
        return 2
    except Exception as exc:  # never a traceback for a user; MEMOPT_BPTT_TRACEBACK=1 shows it
        if os.environ.get("MEMOPT_BPTT_TRACEBACK"):
            raise
        where = f"{PROG} {command}" if command else PROG
        line = " ".join(str(exc).split())
        print(f"{where}: internal error: {type(exc).__name__}: {line} (please report it; "
              "MEMOPT_BPTT_TRACEBACK=1 shows where)", file=sys.stderr)
        return 1

