"""The plan and compare commands: one schedule in full, or every policy's cost side by side.

``memopt-bptt plan`` prints the schedule :func:`memopt_bptt.plan` makes (text
with the cost model's figures and, for short sequences, an ASCII timeline;
``Schedule.to_json()``; or one action per line); ``memopt-bptt compare``
tabulates forward steps, predicted time and peak memory per policy and
budget, naming the least budget where a policy does not fit.
"""

from __future__ import annotations

import argparse
import json
import textwrap
from typing import Any, Sequence as Seq

import memopt_bptt as mb

from .._plans import measured
from ._args import BUDGET_HELP, TIMELINE_MAX_T, CliError
from ._target import Target, build_target, least_budget, least_text, plan_for
from ._timeline import ascii_timeline, check_plot_path, code_chunks, plot_compare, plot_schedule

__all__ = ["cmd_compare", "cmd_plan", "plan_text"]


def cmd_plan(args: argparse.Namespace, out: Any) -> int:
    """``memopt-bptt plan``: one schedule as text, JSON or actions (and a plot)."""
    T = args.steps
    check_plot_path(args.plot)
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
        raise CliError("--budget is required with a cell: give " + BUDGET_HELP)
    target = build_target(args, T, alpha=args.alpha, abstract=abstract)
    try:  # traced unless it compiles the planner (a machine's first run): then the peak is None
        schedule, planning = measured(lambda: plan_for(target, T, args.policy, budget=args.budget,
                                                       slots=args.slots), args.policy)
    except mb.MemoryBudgetError as exc:
        what = f"--slots {args.slots:g}" if args.slots is not None else "--budget"
        least, fix = least_text(exc, target, T, args.policy)
        raise CliError(f"{what} is below the least that works for T={T} with --policy {args.policy}: "
                       f"{least}; use {fix} or more") from None
    if args.format == "json":
        schedule.write_json(out)
        print(file=out)
    elif args.format == "actions":
        for rows in code_chunks(schedule.codes):
            out.write("".join(f"{mb.OPS[op]} {step} {slot}\n" for op, step, slot in rows))
    else:
        print("\n".join(plan_text(schedule, target)), file=out)
        peak = (f"{mb.format_bytes(planning.peak_bytes)} at its peak (tables and schedule"
                if planning.peak_bytes is not None
                else "peak not measured (this machine's first run: it included compiling the planner")
        print(f"planning         {planning.seconds:.3f} s, {peak}; outside the budget, which covers the sweep)",
              file=out)
    if args.plot:
        plot_schedule(schedule, args.plot,
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
        peak_detail = (f" = checkpoints {mb.format_bytes(schedule.pool_bytes)} + working buffers "
                       f"{mb.format_bytes(schedule.working_bytes)}")
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
    codes = schedule.codes  # only the actions shown become Actions: a long schedule has millions
    n = len(codes)
    shown = _actions(codes) if n <= 60 else (_actions(codes[:45]) + [f"... ({n - 55} more; --format actions "
                                                                       "lists all) ..."] + _actions(codes[-10:]))
    lines += _wrap(f"actions ({n}) ", shown)
    if T <= TIMELINE_MAX_T:
        lines += ascii_timeline(schedule)
    return lines


def cmd_compare(args: argparse.Namespace, out: Any) -> int:
    """``memopt-bptt compare``: every policy's cost at every budget, as a table or JSON."""
    T = args.steps
    check_plot_path(args.plot)
    abstract = args.alpha is not None
    if abstract:
        for text, value in args.budgets:
            if isinstance(value, int):
                raise CliError(f"--budgets entry {text!r} is in bytes, which needs a cell; with --alpha give "
                               "fractions (e.g. --budgets 1%,5%,20%)")
    target = build_target(args, T, alpha=args.alpha, abstract=abstract)
    rows = []
    for text, value in args.budgets:
        amount = value * target.plain if isinstance(value, float) else float(value)
        for policy in args.policies:
            row: dict[str, Any] = {"budget": text, "budget_fraction": amount / target.plain, "policy": policy}
            try:
                s = plan_for(target, T, policy, budget=value)
            except mb.MemoryBudgetError as exc:
                row.update(fits=False, least=least_budget(exc, target, T, policy))
            else:
                row.update(fits=True, forward_steps=s.forward_steps, time_ratio=s.time_ratio,
                           peak=s.peak_units if abstract else s.peak_bytes)
            rows.append(row)
    unit = "units" if abstract else "bytes"
    if args.format == "json":
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
        plot_compare(rows, args.plot, T, target)
        if args.format == "text":
            print(f"plot written to {args.plot}", file=out)
    return 0


def _actions(codes: Any) -> list[str]:
    return [str(mb.Action(mb.OPS[op], step, slot)) for op, step, slot in codes.tolist()]


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
