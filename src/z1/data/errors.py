"""Errors raised by the data layer. Each message names the file (or directory) and the field at fault."""

from __future__ import annotations

from z1.errors import Z1Error


class DatasetError(Z1Error, ValueError):
    """A dataset that is missing, corrupt, empty, or does not match what the caller expects."""
