"""Memory budgets: parsing "64MiB"-style strings, and the budget error."""

from __future__ import annotations

import math
import numbers
import re

import numpy as np

__all__ = ["MemoryBudgetError", "parse_budget", "format_bytes"]


class MemoryBudgetError(ValueError):
    """No schedule fits the budget. ``least_bytes`` (or ``least_units`` in the
    abstract model) is the smallest budget that works."""

    def __init__(self, message: str, *, least_bytes: int | None = None, least_units: float | None = None):
        super().__init__(message)
        self.least_bytes = least_bytes
        self.least_units = least_units


_UNITS = {
    "": 1, "b": 1,
    "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
    "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40,
    "k": 2**10, "m": 2**20, "g": 2**30,
}
_PATTERN = re.compile(r"^\s*((?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?)\s*([A-Za-z]*)\s*$")


def parse_budget(budget: object, *, name: str = "budget") -> tuple[str, float]:
    """Read a budget: ``("bytes", n)`` or ``("fraction", f)``.

    Accepts an int (bytes), a string with a unit ("512KiB", "64MiB", "1GB",
    "2.5e6B"), a percentage string ("5%"), or a float in (0, 1] (a fraction
    of what plain BPTT keeps). A string without a unit reads as the number
    it spells: "4096" is bytes, "0.05" a fraction, as on the command line
    (a bare decimal with a dot is a fraction; "2.5e6" is bytes).

    Example::

        parse_budget("64MiB")   # ("bytes", 67108864)
        parse_budget(0.05)      # ("fraction", 0.05)
        parse_budget("0.05")    # ("fraction", 0.05)
    """
    if isinstance(budget, bool):
        raise TypeError(f"{name}={budget!r}: expected bytes (int), a size string like '64MiB', or a fraction in (0, 1]")
    if isinstance(budget, numbers.Integral):
        budget = int(budget)
        if budget <= 0:
            raise ValueError(f"{name}={budget}: a byte budget must be a positive integer")
        return "bytes", float(budget)
    if isinstance(budget, (float, np.floating)):
        budget = float(budget)
        if not math.isfinite(budget) or not 0.0 < budget <= 1.0:
            raise ValueError(f"{name}={budget!r}: a float budget is a fraction of plain BPTT's memory, in (0, 1];"
                             " give bytes as an int or a string like '64MiB'")
        return "fraction", budget
    if isinstance(budget, str):
        text = budget.strip()
        if text.endswith("%"):
            try:
                pct = float(text[:-1])
            except ValueError:
                pct = float("nan")
            if not math.isfinite(pct) or not 0.0 < pct <= 100.0:
                raise ValueError(f"{name}={budget!r}: a percentage must be in (0%, 100%]")
            return "fraction", pct / 100.0
        match = _PATTERN.match(text)
        unit = match.group(2).lower() if match else None
        if match is None or unit not in _UNITS:
            raise ValueError(f"{name}={budget!r} is not a size: use e.g. 4096, '512KiB', '64MiB', '1GB', '5%' "
                             "or a fraction in (0, 1] like 0.05")
        number = match.group(1)
        if not unit and "." in number and "e" not in number.lower():
            # a bare decimal with a dot is a fraction, as on the command line: budget="0.05" and
            # --budget 0.05 mean the same (an exponent, "2.5e6", still counts bytes)
            value = float(number)
            if not 0.0 < value <= 1.0:
                raise ValueError(f"{name}={budget!r}: a bare number with a dot is a fraction of plain BPTT's "
                                 "memory and must be in (0, 1]; give bytes as an integer (4096) or with a unit "
                                 "('64MiB')")
            return "fraction", value
        value = float(match.group(1)) * _UNITS[unit]
        if value < 1:
            raise ValueError(f"{name}={budget!r}: a byte budget must be at least 1 byte")
        return "bytes", float(math.floor(value))
    raise TypeError(f"{name}={budget!r}: expected bytes (int), a size string like '64MiB', or a fraction in (0, 1]")


def format_bytes(n: float | int | None) -> str:
    """Human-readable bytes with binary units ("1.50 MiB")."""
    if n is None:
        return "-"
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(value) < 1024 or unit == "GiB":
            return f"{int(value)} B" if unit == "B" else f"{value:.2f} {unit}"
        value /= 1024
    return f"{value:.2f} GiB"
