"""Errors a user can fix: the CLI prints them as one line (`user_error = True`) instead of a traceback."""

from __future__ import annotations


class ZooError(Exception):
    """A model cannot be built or loaded as asked; the message says what to do instead."""

    user_error = True


class UnknownEncoderError(ZooError, LookupError):
    """No registered encoder or plugin family knows the name."""


class InputSizeError(ZooError, ValueError):
    """The input tensor does not fit the model (rank, channels, or a side that is not a multiple)."""


def one_line(err: BaseException, typed: bool = True) -> str:
    """`Type: first line of the message` (or the line alone, `typed=False`) for a library's error that must print
    as one line; shared by the zoo, the plugin loader and the engine."""
    text = next((line.strip() for line in str(err).splitlines() if line.strip()), "")
    if not typed:
        return text
    return f"{type(err).__name__}: {text}" if text else type(err).__name__
