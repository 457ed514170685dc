"""User-facing errors.

Anything a user can fix (a bad subnet.json, a missing file, an unknown target) raises
:class:`OfaDeployError` with one line that says what is wrong, where, and what is allowed
(:func:`shown` quotes a value from the input so that it cannot break or flood that line).
The CLI turns it into that line on stderr and exit code 2; everything else is a bug and keeps
its traceback.
"""

from __future__ import annotations

from typing import Any

SHOWN_CHARS = 40


class OfaDeployError(Exception):
    """An error caused by the user's input or environment (CLI exit code 2).

    The message is one line; ``details`` (a worker's or compiler's last output) are kept apart,
    for ``-v`` and ``--debug``, so the line a user reads stays one line.
    """

    def __init__(self, message: str, *, details: str | None = None) -> None:
        super().__init__(message)
        self.details = details
        if details and hasattr(self, "add_note"):  # Python 3.11+: shown under the traceback (--debug)
            self.add_note(details)


class ConfigError(OfaDeployError):
    """A subnet config, search-space name or other setting is invalid."""


class CheckpointError(OfaDeployError):
    """A checkpoint is missing, unreadable, or does not fit the search space."""


class NotACheckpointError(CheckpointError):
    """The file is no supernet checkpoint at all (missing, a folder, text, truncated, pickled objects, other tensors).

    Unlike a checkpoint of another space or shape, which "does not match".
    """


def shown(value: Any, limit: int = SHOWN_CHARS) -> str:
    """A value from the user's input, quoted for a one-line message: ``repr`` cut to ``limit`` characters.

    Input can be huge (a megabyte list, an integer past Python's 4300-digit ``repr`` limit); the
    message must stay one readable line.
    """
    try:
        text = repr(value)
    except ValueError:  # an integer past the digit limit
        return f"<a {value.bit_length()}-bit integer>"
    return text if len(text) <= limit else text[:limit] + "..."
