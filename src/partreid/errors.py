"""The one base of every error a user can cause (a missing folder, a bad config key, a foreign
checkpoint, a bad upload, ...).

The command line prints a :class:`PartreidError` in one line and exits with status 2; anything
else is a bug and shows its traceback. Each concrete error also derives from the built-in type
it has always been (``ValueError``, ``RuntimeError``, ...), so ``except ValueError`` keeps working.
"""

from __future__ import annotations


class PartreidError(Exception):
    """An error in what the user gave (file, folder, config, request): the message says what."""


class MissingExtraError(PartreidError, ImportError):
    """An optional dependency is not installed; the message names the extra to install."""
