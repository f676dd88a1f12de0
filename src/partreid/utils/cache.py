"""partreid's cache folders: ``$XDG_CACHE_HOME/partreid/...`` (``~/.cache/partreid/...``)."""

from __future__ import annotations

import os


def cache_dir(*parts: str) -> str:
    """``$XDG_CACHE_HOME/partreid/<parts>`` (``~/.cache`` without the variable); not created."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "partreid", *parts)
