"""The tracker-facing appearance embedder: one batch per frame, rows equal to the Extractor's
features of the same crops, L2-normalised, BGR/RGB handled, degenerate boxes give zero rows."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from partreid.errors import InvalidValueError
from partreid.inference import AppearanceEmbedder, Extractor


@pytest.fixture(scope="module")
def frame():
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (120, 160, 3), dtype=np.uint8)


def test_rows_match_the_extractor_on_the_same_crops(ckpt, frame):
    ext = Extractor(ckpt, device="cpu", num_workers=0, progress=False)
    embed = AppearanceEmbedder(ext, channels="rgb")
    boxes = np.array([[10, 5, 42, 85], [100.4, 20.6, 150.2, 119.9], [-8, -8, 20, 40]])
    feats = embed(frame, boxes)
    assert feats.shape == (3, ext.feature_dim) and feats.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(feats, axis=1), 1.0, atol=1e-5)
    img = Image.fromarray(frame)
    crops = [img.crop((10, 5, 42, 85)), img.crop((100, 20, 151, 120)), img.crop((0, 0, 20, 40))]
    ref = ext(crops)
    ref /= np.linalg.norm(ref, axis=1, keepdims=True)
    np.testing.assert_allclose(feats, ref, atol=1e-5)


def test_bgr_frames_are_flipped_to_rgb(ckpt, frame):
    ext = Extractor(ckpt, device="cpu", num_workers=0, progress=False)
    boxes = np.array([[0, 0, 60, 110]])
    rgb = AppearanceEmbedder(ext, channels="rgb")(frame, boxes)
    bgr = AppearanceEmbedder(ext, channels="bgr")(np.ascontiguousarray(frame[..., ::-1]), boxes)
    np.testing.assert_allclose(rgb, bgr, atol=1e-6)


def test_empty_and_outside_boxes(ckpt, frame):
    embed = AppearanceEmbedder(ckpt, device="cpu")
    assert embed(frame, np.zeros((0, 4))).shape == (0, embed.feature_dim)
    feats = embed(frame, np.array([[500, 500, 600, 600], [10, 10, 10, 50], [0, 0, 30, 60]]))
    assert not feats[:2].any() and abs(np.linalg.norm(feats[2]) - 1) < 1e-5
    with pytest.raises(InvalidValueError, match="H x W x 3 uint8"):
        embed(frame.astype(np.float32), np.zeros((1, 4)))
    with pytest.raises(InvalidValueError, match="channels"):
        AppearanceEmbedder(embed.extractor, channels="yuv")
