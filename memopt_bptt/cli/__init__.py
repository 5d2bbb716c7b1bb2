"""The ``memopt-bptt`` command line: plan, compare and demo.

``memopt-bptt plan`` prints the schedule :func:`memopt_bptt.plan` makes for a
sequence length and a memory budget (text, JSON or one action per line, with
an ASCII timeline for short sequences and an optional PNG plot);
``memopt-bptt compare`` tabulates every policy's cost over a list of budgets;
``memopt-bptt demo`` trains an LSTM on the adding problem under 5% of plain
BPTT's memory and checks one gradient bit-for-bit against plain BPTT.
``python -m memopt_bptt`` is the same program.

Bad input prints one line on stderr naming the option and the fix, and exits
with code 2 (so does a plan too large for this machine's memory, naming the
bytes it would need); anything else that goes wrong prints one line and exits
with code 1, never a traceback (``MEMOPT_BPTT_TRACEBACK=1`` shows it). A long
schedule is printed from its codes, a chunk at a time. Only the public API of :mod:`memopt_bptt` is used here (and
:func:`memopt_bptt.testing.least_budget`). One idea per module: ``_args``
(option types and the parser), ``_target`` (the model a plan is for and the
least budget), ``_plan_compare`` (the plan and compare commands),
``_timeline`` (the ASCII timeline and plots), ``_demo`` and ``_main``.

Example::

    memopt-bptt plan --steps 1000 --budget 5%
    memopt-bptt plan --steps 10 --slots 3 --policy hsm
    memopt-bptt compare --steps 500 --budgets 1%,5%,20%
    memopt-bptt demo
"""

from ._args import build_parser
from ._args import parse_cli_budget
from ._main import main

__all__ = ["build_parser", "main", "parse_cli_budget"]
