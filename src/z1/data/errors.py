"""Errors raised by the data layer. Each message names the file (or directory) and the field at fault."""

from __future__ import annotations


class DatasetError(ValueError):
    """A dataset that is missing, corrupt, empty, or does not match what the caller expects."""
