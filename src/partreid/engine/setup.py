"""What the engine's commands share: the config's data set, test preprocessing and model options."""

from __future__ import annotations

import logging
from typing import Any, Dict

from ..config import Config
from ..data import build_dataset
from ..data.transforms import build_test_transform

log = logging.getLogger("partreid")


def test_transform(cfg: Config):
    """The config's test-time preprocessing (resize, to tensor, normalise)."""
    return build_test_transform(cfg.input.height, cfg.input.width, cfg.input.mean, cfg.input.std)


def model_kwargs(cfg: Config) -> Dict[str, Any]:
    """The ``model:`` section without its name: keyword options of ``build_model``."""
    return {k: v for k, v in cfg.model.items() if k != "name"}


def load_data(cfg: Config):
    """Build the config's data set (and decode every image first with ``data.verify_images``)."""
    ds = build_dataset(cfg.data.name, cfg.data.root, **cfg.data.options)  # logs its summary
    if cfg.data.verify_images:
        ds.verify()
    return ds
