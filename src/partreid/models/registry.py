"""Model registry: ``build_model(name, num_classes, **cfg)``.

Every model is an ``nn.Module`` whose ``__init__`` takes ``num_classes`` and keyword
options; those keyword names are the valid keys of the ``model:`` config section.
"""

from __future__ import annotations

import inspect
from typing import Callable, Dict, List

from torch import nn

from ..errors import InvalidValueError, UnknownNameError

_MODELS: Dict[str, Callable[..., nn.Module]] = {}


def register_model(name: str):
    """Class decorator: make ``build_model(name, ...)`` build this model."""

    def deco(cls):
        if name in _MODELS:
            raise InvalidValueError(f"model {name!r} registered twice")
        _MODELS[name] = cls
        cls.model_name = name
        return cls

    return deco


def list_models() -> List[str]:
    return sorted(_MODELS)


def model_options(name: str) -> Dict[str, object]:
    """The keyword options of model ``name`` with their defaults."""
    cls = _get(name)
    sig = inspect.signature(cls.__init__)
    kinds = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    return {
        k: p.default
        for k, p in sig.parameters.items()
        if k not in ("self", "num_classes") and p.kind in kinds
    }


def _get(name: str):
    if name not in _MODELS:
        raise UnknownNameError(f"unknown model {name!r}; registered models: {list_models()}")
    return _MODELS[name]


def build_model(name: str, num_classes: int, **cfg) -> nn.Module:
    """Build model ``name`` with ``num_classes`` training identities.

    In ``train()`` mode the model returns a dict of named outputs (``logits``,
    ``triplet``, ``mse``, ...) for the losses; in ``eval()`` mode it returns the
    test feature (N x D).
    """
    cls = _get(name)
    valid = model_options(name)
    unknown = sorted(set(cfg) - set(valid))
    if unknown:
        raise UnknownNameError(
            f"unknown option(s) {unknown} for model {name!r}; valid options: {sorted(valid)}"
        )
    return cls(num_classes=num_classes, **cfg)
