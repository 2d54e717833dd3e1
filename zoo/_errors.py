"""Errors a user can fix: the CLI prints them as one line (`user_error = True`) instead of a traceback."""

from __future__ import annotations


class ZooError(Exception):
    """A model cannot be built or loaded as asked; the message says what to do instead."""

    user_error = True


class UnknownEncoderError(ZooError, LookupError):
    """No registered encoder or plugin family knows the name."""


class InputSizeError(ZooError, ValueError):
    """The input tensor does not fit the model (rank, channels, or a side that is not a multiple)."""
