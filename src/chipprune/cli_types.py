"""Command-line option types that check their range when parsed, so a bad number stops the run
before any work, in one line; and the parser that prints that line."""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Callable

from .errors import ChipPruneError
from .planning.latency_search import parse_latency_target

__all__ = ["OneLineParser", "integer", "number", "latency_target"]


class OneLineParser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line (cause, then where to read more), with exit status 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        sys.stderr.write(f"{self.prog}: error: {message} (see {self.prog} --help)\n")
        sys.exit(2)


def integer(minimum: int) -> Callable[[str], int]:
    """An int option of at least ``minimum``."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number, got '{text}'") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}, got {value}")
        return value

    parse.__name__ = "integer"  # what argparse names in its own messages
    return parse


def number(low: float, high: float = math.inf, *, low_open: bool = False, high_open: bool = True) -> Callable[[str], float]:
    """A finite float option within [low, high) (``low_open``/``high_open`` choose the ends)."""
    interval = f"{'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got '{text}'") from None
        inside = (value > low if low_open else value >= low) and (value < high if high_open else value <= high)
        if not math.isfinite(value) or not inside:
            raise argparse.ArgumentTypeError(f"must be a number in {interval}, got {text}")
        return value

    parse.__name__ = "number"
    return parse


def latency_target(text: str) -> str:
    """A latency budget (``0.65`` or ``12ms``), checked as parsed and kept as given."""
    try:
        parse_latency_target(text)
    except ChipPruneError as exc:
        raise argparse.ArgumentTypeError(str(exc).removeprefix(f"--target-latency {text}: ")) from None
    return text
