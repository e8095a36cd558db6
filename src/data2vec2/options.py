"""Range-checked numbers for the command line's options: argparse refuses a value out of range
with one line naming the option, before any work starts (`--steps 0`: "argument --steps: must be
>= 1, not 0")."""

from __future__ import annotations

import argparse
import math


def integer(minimum: int):
    """An argparse type: a whole number >= `minimum`."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be >= {minimum}, not {value}")
        return value
    return parse


def number(minimum: float | None = None, above: float | None = None):
    """An argparse type: a finite number >= `minimum` or > `above` (None: no bound)."""
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        if not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"must be a finite number, not {text}")
        if minimum is not None and value < minimum:
            raise argparse.ArgumentTypeError(f"must be >= {minimum:g}, not {text}")
        if above is not None and value <= above:
            raise argparse.ArgumentTypeError(f"must be > {above:g}, not {text}")
        return value
    return parse
