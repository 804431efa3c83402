"""Checking numeric settings before any work: finite, in range, an integer where a count is meant.

Python's `float()` reads "nan" and "inf" without complaint, and a NaN passes every `<` test as
False, so a check written `if x < 0: raise` lets it through; `check_number` states what is wanted
positively. Every config class and command states its ranges as tables of `Range`s.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from alignlab.errors import AlignlabError

SEED_MAX = 2**32 - 1  # numpy's seed range, which accelerate's set_seed also seeds


@dataclass(frozen=True)
class Range:
    """Where a number may lie: [minimum, maximum], either end open or absent; always finite."""

    minimum: float | None = None
    maximum: float | None = None
    integer: bool = False
    exclusive_min: bool = False
    exclusive_max: bool = False

    def within_bounds(self, value: float) -> bool:
        above = self.minimum is None or (value > self.minimum if self.exclusive_min else value >= self.minimum)
        below = self.maximum is None or (value < self.maximum if self.exclusive_max else value <= self.maximum)
        return above and below

    def bounds(self) -> str:
        """E.g. "> 0", "in [0, 1)", "" when unbounded."""
        if self.minimum is not None and self.maximum is not None:
            return (f"in {'(' if self.exclusive_min else '['}{_shown(self.minimum)}, "
                    f"{_shown(self.maximum)}{')' if self.exclusive_max else ']'}")
        if self.minimum is not None:
            return f"{'>' if self.exclusive_min else '>='} {_shown(self.minimum)}"
        if self.maximum is not None:
            return f"{'<' if self.exclusive_max else '<='} {_shown(self.maximum)}"
        return ""


def _shown(bound: float) -> str:
    return str(int(bound)) if float(bound).is_integer() else f"{bound:g}"


POSITIVE = Range(0, exclusive_min=True)
NON_NEGATIVE = Range(0)
COUNT = Range(1, integer=True)  # how many of something: at least one
STEPS_OR_NEVER = Range(0, integer=True)  # every N steps, 0 meaning never
FRACTION = Range(0, 1, exclusive_min=True, exclusive_max=True)
SEED = Range(0, SEED_MAX, integer=True)


def check_number(where: str, name: str, value, allowed: Range, fix: str | None = None) -> None:
    """Raise `where: name must be <what>, got <value>` (and the fix) unless `allowed` contains the value;
    <what> says what is wrong with it: not a number, not finite, not whole, or out of bounds."""
    bounds = allowed.bounds()
    kind = "an integer" if allowed.integer else "a finite number"
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or (
            allowed.integer and not float(value).is_integer()):
        wanted = f"{kind} {bounds}".strip()
    elif not allowed.within_bounds(value):
        wanted = bounds
    else:
        return
    raise AlignlabError(f"{where}: {name} must be {wanted}, got {value!r}" + (f"; {fix}" if fix else ""))


def check_numbers(where: str, values: dict, ranges: dict[str, Range], label=lambda name: f"'{name}'") -> None:
    """`check_number` for each of `ranges` present in `values` (None: not set); `label` spells a
    name, e.g. as a command-line option."""
    for name, allowed in ranges.items():
        if values.get(name) is not None:
            check_number(where, label(name), values[name], allowed)
