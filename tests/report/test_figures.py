"""Activation-map and ABP-border figures drawn from one prepared batch."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from partreid.data.transforms import build_test_transform
from partreid.errors import InvalidValueError
from partreid.models import build_model
from partreid.report.abp import draw_abp_borders
from partreid.report.activations import draw_activation_maps
from partreid.report.image_batch import ImageBatch


@pytest.fixture(scope="module")
def batch(tmp_path_factory):
    """Three random 64 x 32 images as the test transform gives them."""
    root = tmp_path_factory.mktemp("figures")
    rng = np.random.default_rng(1)
    items = []
    for i in range(3):
        path = str(root / f"{i}.png")
        Image.fromarray(rng.integers(0, 256, (64, 32, 3), dtype=np.uint8)).save(path)
        items.append((path, i, 0))
    return ImageBatch.read(items, build_test_transform(64, 32), torch.device("cpu"))


@pytest.fixture(scope="module")
def rmgl():
    torch.manual_seed(0)
    return build_model("rmgl", 4, backbone="resnet18", pretrained=False)


def _figure(path) -> np.ndarray:
    return np.asarray(Image.open(path))


@pytest.mark.parametrize("draw", [draw_activation_maps, draw_abp_borders])
def test_figures_are_drawn_and_the_mode_is_kept(draw, batch, rmgl, tmp_path):
    rmgl.train()
    out = str(tmp_path / "fig.png")
    assert draw(rmgl, batch, out) == out
    assert rmgl.training  # drawing does not leave a training model in eval mode
    assert _figure(out)[..., :3].std() > 0  # not a blank page


def test_abp_needs_a_model_with_abp(batch, tmp_path):
    bot = build_model("bot", 4, backbone="resnet18", pretrained=False)
    with pytest.raises(InvalidValueError, match="no activation balanced pooling"):
        draw_abp_borders(bot, batch, str(tmp_path / "abp.png"))
    assert not (tmp_path / "abp.png").exists()
