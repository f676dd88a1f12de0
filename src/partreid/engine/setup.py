"""What the engine's commands share: the config's data set, test preprocessing and model options."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Dict

from ..config import Config
from ..data import build_dataset
from ..data.transforms import build_test_transform

if TYPE_CHECKING:  # annotations only
    import torch
    from torch import nn

    from ..data.datasets.base import ReIDDataset

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


@dataclass
class EvalTarget:
    """What is evaluated and where: a config's model on its data set, on ``device``, with
    autocast (``use_amp``) or not."""

    cfg: Config
    model: nn.Module
    ds: ReIDDataset
    device: torch.device
    use_amp: bool = False

    @property
    def transform(self):
        """The config's test transform."""
        return test_transform(self.cfg)
