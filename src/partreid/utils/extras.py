"""Optional dependencies (``pip install 'partreid[EXTRA]'``), imported only where used."""

from __future__ import annotations

import importlib
from types import ModuleType

from ..errors import MissingExtraError


def require(module: str, extra: str) -> ModuleType:
    """Import ``module`` or fail with a message naming the extra that installs it."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise MissingExtraError(
            f"this needs {module}: pip install 'partreid[{extra}]' (or pip install {module})"
        ) from None
