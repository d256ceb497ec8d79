"""Query and path parameters parsed strictly: what a client sends is either
a value inside its bounds or a 400 with a reason, never a 500.

`str.isdigit()` accepts `²` and `int()` accepts `٣`, `+5`, ` 5`, `5_0` and
thousands of digits; `float()` accepts `nan` and `inf`. Here a whole number
is 1 to 18 ASCII digits (so that it fits SQLite's 64-bit integers before the
bounds are checked) and a decimal number is finite.
"""

from __future__ import annotations

import math
import re

from transcode.server.errors import Problem

_WHOLE = re.compile(r"[0-9]{1,18}")
_DECIMAL = re.compile(r"[+-]?(?:[0-9]{1,15}(?:\.[0-9]{0,15})?|\.[0-9]{1,15})(?:[eE][+-]?[0-9]{1,3})?")
#: The bound of numbers with no other bound: what SQLite and numpy index with.
MAX_WHOLE = 2**31 - 1


def whole(value: str, name: str, reason: str, low: int = 0, high: int = MAX_WHOLE) -> int:
    """`value` as a whole number from `low` to `high`; else `Problem` 400 with `reason`."""
    if _WHOLE.fullmatch(value) and low <= (number := int(value)) <= high:
        return number
    raise Problem(400, reason, f"{name} is a whole number from {low} to {high} (ASCII digits)")


def decimal(value: str, name: str, reason: str) -> float:
    """`value` as a finite decimal number (no nan, no inf, no digits other
    than ASCII); else `Problem` 400 with `reason`."""
    value = value.strip()
    if _DECIMAL.fullmatch(value) and math.isfinite(number := float(value)):
        return number
    raise Problem(400, reason, f"{name} is a finite decimal number")
