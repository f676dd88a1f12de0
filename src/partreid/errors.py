"""The one base of every error a user can cause (a missing folder, a bad config key or value, a
foreign checkpoint, a bad upload, a missing optional extra, ...).

The command line prints a :class:`PartreidError` in one line and exits with status 2; anything
else is a bug and shows its traceback. Each error also derives from the built-in type it has
always been (``ValueError``, ``KeyError``, ``FileNotFoundError``, ``ImportError``, ...), so code
that catches those keeps working.
"""

from __future__ import annotations


class PartreidError(Exception):
    """An error in what the user gave (file, folder, config, request): the message says what."""


class InvalidValueError(PartreidError, ValueError):
    """A value (config option, argument, file content) that is not one partreid accepts."""


class UnknownNameError(PartreidError, KeyError):
    """A name (model, loss, config key, ...) that is not registered; the message lists the valid
    ones."""

    def __str__(self) -> str:  # KeyError would quote the whole message
        return str(self.args[0]) if self.args else ""


class NotFoundError(PartreidError, FileNotFoundError):
    """A file or folder the user named does not exist."""


class MissingExtraError(PartreidError, ImportError):
    """An optional dependency is not installed; the message names the extra to install."""
