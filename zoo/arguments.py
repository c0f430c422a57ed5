"""argparse types and helpers shared by zoo's commands: a wrong number is refused by the parser with its reason,
a command group typed alone prints its help."""
from __future__ import annotations

import argparse


def whole_number(minimum: int):
    """An argparse type: a whole number of at least ``minimum``."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}, got {value}")
        return value
    return parse


def _number(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None


def positive_number(text: str) -> float:
    """An argparse type: a number above 0 (a budget in ms or MB)."""
    value = _number(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be above 0, got {text}")
    return value


def non_negative_number(text: str) -> float:
    """An argparse type: a number of at least 0 (GPUs per Ray run: 0 for none, a fraction to share one)."""
    value = _number(text)
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {text}")
    return value


def port_number(text: str) -> int:
    """An argparse type: a TCP port, 1-65535."""
    value = whole_number(1)(text)
    if value > 65535:
        raise argparse.ArgumentTypeError(f"a port is at most 65535, got {value}")
    return value


def help_of(parser):
    """A command's handler that prints its help: `zoo` or `zoo data` alone asks what there is to do."""
    def show(args) -> int:
        parser.print_help()
        return 0
    return show
