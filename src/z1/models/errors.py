"""Errors raised by the model layer. Each message names the file (or field) at fault and how to fix it."""

from __future__ import annotations

from z1.errors import Z1Error


class CheckpointError(Z1Error, ValueError):
    """A checkpoint that cannot be read or does not fit the model."""
