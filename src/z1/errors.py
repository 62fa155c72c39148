"""The base of every error z1 raises on purpose, and helpers for checking numeric limits.

A `Z1Error` is a problem with the user's input (a flag, a file, a dataset, a checkpoint) whose message
names the flag, file or field at fault and says how to fix it. The `z1` command prints such an error as
one or a few lines and exits with code 1 (2 for a bad flag); `--debug` or Z1_DEBUG=1 shows the traceback.

This module imports nothing from z1, so every layer can derive its error classes from it.
"""

from __future__ import annotations

import math


class Z1Error(Exception):
    """A user-facing error: the message alone (no traceback) tells the user what to change."""


class TrainingError(Z1Error, RuntimeError):
    """Training cannot continue (e.g. a non-finite loss or gradient); nothing of the bad step was saved."""


class RunDirError(Z1Error, ValueError):
    """A run directory that z1 refuses to write into (it holds files z1 would overwrite)."""


def check_int(value: object, flag: str, *, low: int | None = None, high: int | None = None) -> None:
    """Raise `LimitError` unless `value` is an int (not a bool) within [low, high]."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise LimitError(f"{flag} must be an integer, got {value!r} ({type(value).__name__})")
    _check_range(value, flag, low, high)


def check_float(
    value: object,
    flag: str,
    *,
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
    high_open: bool = False,
) -> None:
    """Raise unless `value` is a finite number within the interval (`*_open`: the bound is excluded)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise LimitError(f"{flag} must be a number, got {value!r} ({type(value).__name__})")
    if not math.isfinite(value):
        raise LimitError(f"{flag} must be finite, got {value!r}")
    if low is not None and (value <= low if low_open else value < low):
        raise LimitError(f"{flag} must be {'>' if low_open else '>='} {low:g}, got {value!r}")
    if high is not None and (value >= high if high_open else value > high):
        raise LimitError(f"{flag} must be {'<' if high_open else '<='} {high:g}, got {value!r}")


def _check_range(value: int, flag: str, low: int | None, high: int | None) -> None:
    if low is not None and value < low:
        raise LimitError(f"{flag} must be >= {low}, got {value}")
    if high is not None and value > high:
        raise LimitError(f"{flag} must be <= {high}, got {value}")


class LimitError(Z1Error, ValueError):
    """A flag or config field outside its allowed range or of the wrong type."""
