"""The images a figure is drawn over: read once, the normalisation of the transform undone."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torchvision.transforms as T
from PIL import Image

from partreid.data.transforms import build_test_transform
from partreid.report.image_batch import ImageBatch, eval_mode


@pytest.fixture
def items(tmp_path):
    """Two random 64 x 32 images (path, pid, camid)."""
    rng = np.random.default_rng(0)
    out = []
    for i in range(2):
        a = rng.integers(0, 256, size=(64, 32, 3), dtype=np.uint8)
        path = str(tmp_path / f"{i}.png")
        Image.fromarray(a).save(path)
        out.append((path, 10 + i, i))
    return out


def _raw(path: str) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"), dtype=np.float32) / 255


@pytest.mark.parametrize(
    "mean, std",
    [((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)), ((0.5, 0.4, 0.3), (0.2, 0.3, 0.4))],
)
def test_pictures_undo_the_transforms_own_normalisation(items, mean, std):
    tf = build_test_transform(64, 32, mean, std)
    batch = ImageBatch.read(items, tf, torch.device("cpu"))
    assert batch.tensor.shape == (2, 3, 64, 32) and batch.size == (64, 32)
    assert [it[1] for it in batch.items] == [10, 11]
    for (path, _, _), pic in zip(items, batch.pictures):
        assert pic.shape == (64, 32, 3)
        assert np.abs(pic - _raw(path)).max() < 1e-5  # the image as read, not as normalised


def test_without_normalize_the_tensor_is_shown_as_is(items):
    tf = T.Compose([T.Resize((64, 32)), T.Compose([T.ToTensor()])])
    batch = ImageBatch.read(items, tf, torch.device("cpu"))
    assert np.abs(batch.pictures[0] - _raw(items[0][0])).max() < 1e-6


def test_nested_normalize_is_found(items):
    norm = T.Normalize([0.2, 0.3, 0.4], [0.5, 0.5, 0.5])
    tf = T.Compose([T.Resize((64, 32)), T.Compose([T.ToTensor(), norm])])
    batch = ImageBatch.read(items, tf, torch.device("cpu"))
    assert np.abs(batch.pictures[1] - _raw(items[1][0])).max() < 1e-5


@pytest.mark.parametrize("training", [True, False])
def test_eval_mode_restores_the_mode(training):
    model = torch.nn.Sequential(torch.nn.Dropout()).train(training)
    with eval_mode(model) as m:
        assert m is model and not model.training
    assert model.training is training
    with pytest.raises(RuntimeError), eval_mode(model):
        raise RuntimeError("a failed forward")
    assert model.training is training
