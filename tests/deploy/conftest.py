"""Shared fixtures of the deployment tests."""

from __future__ import annotations

import pytest
import torch

from partreid.checkpoint import model_meta, save_checkpoint
from partreid.config import load_config
from partreid.models import build_model


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    """A resnet18 BoT (random weights, 64 x 32 input, eval.distance=cosine) checkpoint."""
    path = tmp_path_factory.mktemp("ckpt") / "bot.pth"
    cfg = load_config(
        None,
        [
            "model.name=bot",
            "model.backbone=resnet18",
            "model.pretrained=false",
            "input.height=64",
            "input.width=32",
            "eval.distance=cosine",
        ],
    )
    torch.manual_seed(0)
    model = build_model("bot", 5, backbone="resnet18", pretrained=False)
    save_checkpoint(str(path), model.state_dict(), model_meta(cfg, model, 5))
    return str(path)
