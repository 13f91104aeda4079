"""The project's own error type (a user error with a one-line, actionable message) and its metadata warning."""

from __future__ import annotations


class ConfocalizeError(Exception):
    """A problem with the user's input or environment.

    The message is one line that names the file (or setting) and says how to fix it. The CLI
    prints it without a traceback and exits with :attr:`exit_code` (2: a user error).
    """

    exit_code: int = 2


class RegistrationError(ConfocalizeError):
    """A pair of images could not be registered with enough confidence to be used."""


class MetadataWarning(UserWarning):
    """A file's metadata was read only in part (e.g. a resolution tag without a usable unit)."""
