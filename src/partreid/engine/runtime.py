"""What every engine command shares: device choice, logging, data loading, test preprocessing."""

from __future__ import annotations

import logging
import os
import sys
from typing import Any, Dict

import torch

from ..config import Config
from ..data import build_dataset
from ..data.transforms import build_test_transform

log = logging.getLogger("partreid")


def resolve_device(name: str) -> torch.device:
    """``auto`` -> CUDA when available, else the CPU; a clear error for CUDA without CUDA."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError(f"train.device={name} but CUDA is not available; use train.device=cpu")
    return torch.device(name)


def setup_logging(output_dir: str) -> None:
    """Log to the console and to ``output_dir/log.txt``."""
    os.makedirs(output_dir, exist_ok=True)
    log.setLevel(logging.INFO)
    for h in list(log.handlers):
        log.removeHandler(h)
    fmt = logging.Formatter("%(asctime)s %(message)s", "%H:%M:%S")
    for h in (
        logging.StreamHandler(sys.stdout),
        logging.FileHandler(os.path.join(output_dir, "log.txt")),
    ):
        h.setFormatter(fmt)
        log.addHandler(h)
    log.propagate = False


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
