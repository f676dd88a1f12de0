"""Optional dependencies (``pip install 'partreid[EXTRA]'``), imported only where used."""

from __future__ import annotations

import importlib
import logging
from types import ModuleType
from typing import Optional

from ..errors import MissingExtraError

FAISS_HINT = "pip install 'partreid[deploy]' (or faiss-cpu / faiss-gpu)"


def require(module: str, extra: str) -> ModuleType:
    """Import ``module`` or fail with a message naming the extra that installs it."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise MissingExtraError(
            f"this needs {module}: pip install 'partreid[{extra}]' (or pip install {module})"
        ) from None


def load_faiss(needed_for: Optional[str] = None) -> Optional[ModuleType]:
    """faiss (its loader's INFO lines silenced); when it is not installed: None, or with
    ``needed_for`` (what needs it, e.g. ``"the faiss backend"``) a :class:`MissingExtraError`
    naming the extra that installs it."""
    logging.getLogger("faiss.loader").setLevel(logging.WARNING)  # no INFO lines on import
    try:
        return importlib.import_module("faiss")
    except ImportError:
        if needed_for is None:
            return None
        raise MissingExtraError(
            f"{needed_for} needs faiss, which is not installed: {FAISS_HINT}"
        ) from None
