"""User-facing errors.

Anything a user can fix (a bad subnet.json, a missing file, an unknown target) raises
:class:`OfaDeployError` with one line that says what is wrong, where, and what is allowed.
The CLI turns it into that line on stderr and exit code 2; everything else is a bug and keeps
its traceback.
"""

from __future__ import annotations


class OfaDeployError(Exception):
    """An error caused by the user's input or environment (CLI exit code 2)."""


class ConfigError(OfaDeployError):
    """A subnet config, search-space name or other setting is invalid."""


class CheckpointError(OfaDeployError):
    """A checkpoint is missing, unreadable, or does not fit the search space."""
