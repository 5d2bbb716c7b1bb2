"""What a command plans for: a model from the cell options, or the abstract model.

A :class:`Target` holds the model (bytes) or the abstract model's alpha
(memory in hidden-state units), plain BPTT's memory for the sequence length
(what budgets are shown against) and, with ``--measure``, the b/f ratio and
byte cost timed here. :func:`plan_for` plans for it and :func:`least_budget`
finds the least budget that plans, which every "does not fit" message names.
"""

from __future__ import annotations

import argparse
from typing import Any, NamedTuple

import memopt_bptt as mb
from memopt_bptt.testing import least_budget as least_model_budget

from ._args import CELL_DEFAULTS, CELL_OPTIONS, CELLS, CliError

__all__ = ["Target", "build_target", "least_budget", "least_text", "plan_for"]


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
        return f"{value:g} units" if self.abstract else mb.format_bytes(value)

    def describe(self) -> str:
        if self.abstract:
            return f"abstract model, alpha={self.alpha:g}"
        return f"{self.model.describe()}, batch {self.batch}, {self.dtype}"


def build_target(args: argparse.Namespace, T: int, *, alpha: float | None, abstract: bool) -> Target:
    """The target of a plan or compare command from its options."""
    if abstract:
        given = [f"--{k}" for k in CELL_OPTIONS if getattr(args, k) is not None]
        given += ["--measure"] if args.measure else []
        if given:
            raise CliError(f"{given[0]} is for a cell, but --slots/--alpha select the abstract model; "
                           "drop one or the other")
        a = 1.0 if alpha is None else alpha
        plain = mb.plan(T, budget=1.0, alpha=a, policy="full").peak_units
        return Target(None, None, None, a, plain)
    opts = {k: (getattr(args, k) if getattr(args, k) is not None else CELL_DEFAULTS[k]) for k in CELL_OPTIONS}
    model = model_of(opts)
    plain = mb.plan(T, budget=1.0, model=model, batch=opts["batch"], dtype=opts["dtype"], policy="full").peak_bytes
    rho = byte_cost = None
    if args.measure:
        f, b = mb.measure_step_times(model, batch=opts["batch"], dtype=opts["dtype"])
        m = mb.measure_byte_cost(model, batch=opts["batch"], dtype=opts["dtype"], T=min(T, 1000))
        rho, byte_cost = b / f, m / f
    return Target(model, opts["batch"], opts["dtype"], None, float(plain), rho, byte_cost)


def model_of(opts: dict) -> mb.Sequence:
    """The model the cell options describe: one cell, or --layers of them, after an embedding with --vocab."""
    factory, n_in, H, n_layers, vocab = (CELLS[opts["cell"]], opts["input"], opts["hidden"], opts["layers"],
                                         opts["vocab"])
    if n_layers == 1 and not vocab:
        return mb.Sequence(factory(input_size=n_in, hidden_size=H), output_size=opts["output"], loss="mse")
    if opts["cell"] == "jordan":
        raise CliError("--cell jordan feeds its output back and cannot be stacked or follow an embedding; "
                       "use --layers 1 and --vocab 0, or another cell")
    layers = [mb.Embedding(vocab, n_in)] if vocab else []
    layers += [factory(input_size=n_in if k == 0 else H, hidden_size=H) for k in range(n_layers)]
    return mb.Sequence(layers, output_size=opts["output"], loss="cross_entropy" if vocab else "mse")


def plan_for(target: Target, T: int, policy: str, *, budget: int | float | None = None,
             slots: float | None = None) -> mb.Schedule:
    """``mb.plan`` for the target: a budget (bytes or a fraction), or slots in the abstract model."""
    if target.abstract:
        if slots is not None:
            return mb.plan(T, slots=slots, alpha=target.alpha, policy=policy)
        return mb.plan(T, budget=budget, alpha=target.alpha, policy=policy)
    return mb.plan(T, budget=budget, model=target.model, batch=target.batch, dtype=target.dtype, policy=policy,
                   backward_forward_ratio=target.rho, byte_cost=target.byte_cost)


def least_budget(exc: mb.MemoryBudgetError, target: Target, T: int, policy: str) -> float | None:
    """The least budget that plans, after ``exc``: bytes (model) or units (abstract).

    For a model, :func:`memopt_bptt.testing.least_budget` finds the boundary
    (that budget plans, one byte less does not). In the abstract model the
    planner's ``least_units`` is already the least number of slots.
    """
    if target.abstract:
        return exc.least_units
    return least_model_budget(target.model, T=T, batch=target.batch, policy=policy, dtype=target.dtype)


def least_text(exc: mb.MemoryBudgetError, target: Target, T: int, policy: str) -> tuple[str, str]:
    """(the least budget, the option that asks for it) from a MemoryBudgetError."""
    least = least_budget(exc, target, T, policy)
    if least is None:
        return "unknown", "a larger budget"
    if not target.abstract:
        least = int(least)
        return (f"{least} bytes ({mb.format_bytes(least)}, {least / target.plain:.2%} of plain BPTT)",
                f"--budget {least}")
    return f"{least:g} units ({least / target.plain:.2%} of plain BPTT)", f"--slots {least:g}"
