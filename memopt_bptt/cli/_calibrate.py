"""``memopt-bptt calibrate``: mb.calibrate for the model the cell options describe."""

from __future__ import annotations

import argparse
from typing import Any

import memopt_bptt as mb
from memopt_bptt._calibrate import calibration_path

from ._args import CELL_DEFAULTS, CELL_OPTIONS, CliError
from ._target import model_of

__all__ = ["cmd_calibrate"]


def cmd_calibrate(args: argparse.Namespace, out: Any) -> int:
    opts = {k: (getattr(args, k) if getattr(args, k) is not None else CELL_DEFAULTS[k]) for k in CELL_OPTIONS}
    model = model_of(opts)
    if not args.dry_run and calibration_path() is None:
        raise CliError("memopt-bptt calibrate: MEMOPT_BPTT_CALIBRATION=off, so nothing could be kept; unset it, "
                       "or pass --dry-run to only measure")
    print(f"{model.describe()}, batch {opts['batch']}, {opts['dtype']}", file=out)
    print(f"before: {model.describe_split(opts['batch'], dtype=opts['dtype'])}", file=out, flush=True)
    result = mb.calibrate(model, opts["batch"], dtype=opts["dtype"], seconds=args.seconds, rounds=args.rounds,
                          save=not args.dry_run)
    if result.seconds:
        print(f"{'split':24s} {'median s':>10s} {'over the rule':>14s}   (T={result.T}, {result.rounds} rounds)",
              file=out)
        for c, sec in result.seconds.items():
            mark = "  <- kept" if c == result.chosen else ""
            rule = " (the rule's)" if c == result.rule else ""
            print(f"{c:24s} {sec:10.4f} {result.over_rule[c]:13.2f}x{mark}{rule}", file=out)
    else:
        print(f"only one split for this model and batch: {result.rule}", file=out)
    verb = "would keep" if args.dry_run else "kept"
    print(f"{verb} {result.chosen} ({result.calibration_seconds:.1f} s)"
          + ("" if args.dry_run else f" in {result.path}"), file=out)
    if not args.dry_run:
        fresh = model_of(opts)
        print(f"now: {fresh.describe_split(opts['batch'], dtype=opts['dtype'])}", file=out)
    return 0
