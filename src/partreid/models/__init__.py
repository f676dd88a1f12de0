"""Models: ``build_model(name, num_classes, **cfg)`` and the backbones they stand on."""

# Importing a model module registers it.
from . import bot, cgpn, mgn, pcb, rmgl  # noqa: F401
from .backbones import Backbone, build_backbone
from .registry import build_model, list_models, model_options, register_model

__all__ = [
    "Backbone",
    "build_backbone",
    "build_model",
    "list_models",
    "model_options",
    "register_model",
]
