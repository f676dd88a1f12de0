"""Model registry: ``build_model(name, num_classes, **cfg)``.

``build_model`` builds the backbone (options ``backbone``, ``pretrained``, ``last_stride``,
with :func:`~partreid.models.backbones.build_backbone`'s defaults) and gives it to the model:
every model is an ``nn.Module`` whose ``__init__(backbone, num_classes, *, ...)`` takes that
:class:`~partreid.models.backbones.Backbone`, the number of classes and its own keyword
options. The backbone options followed by the model's own are the valid keys of the
``model:`` config section.
"""

from __future__ import annotations

import inspect
from typing import Callable, Dict, List

from torch import nn

from ..errors import InvalidValueError, UnknownNameError
from .backbones import build_backbone

#: build_model's backbone options (``model:`` config keys) -> build_backbone's parameters,
#: whose defaults they take.
BACKBONE_OPTIONS = {"backbone": "name", "pretrained": "pretrained", "last_stride": "last_stride"}

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
    """The keyword options of model ``name`` with their defaults: the backbone's, then its own."""
    cls = _get(name)
    backbone = inspect.signature(build_backbone).parameters
    options = {key: backbone[arg].default for key, arg in BACKBONE_OPTIONS.items()}
    kinds = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    for k, p in inspect.signature(cls.__init__).parameters.items():
        if k not in ("self", "backbone", "num_classes") and p.kind in kinds:
            options[k] = p.default
    return options


def _get(name: str):
    if name not in _MODELS:
        raise UnknownNameError(f"unknown model {name!r}; registered models: {list_models()}")
    return _MODELS[name]


def build_model(name: str, num_classes: int, **cfg) -> nn.Module:
    """Build model ``name`` with ``num_classes`` training identities.

    In ``train()`` mode the model returns a dict of named outputs (``logits``,
    ``triplet``, ``mse``, ...) for the losses; in ``eval()`` mode it returns the
    test feature (N x D). The options ``backbone``, ``pretrained`` and ``last_stride`` build
    its backbone (see :func:`~partreid.models.backbones.build_backbone`), which is built first;
    the others are the model's own.
    """
    cls = _get(name)
    valid = model_options(name)
    unknown = sorted(set(cfg) - set(valid))
    if unknown:
        raise UnknownNameError(
            f"unknown option(s) {unknown} for model {name!r}; valid options: {sorted(valid)}"
        )
    backbone = build_backbone(
        **{arg: cfg.pop(key, valid[key]) for key, arg in BACKBONE_OPTIONS.items()}
    )
    return cls(backbone, num_classes, **cfg)
