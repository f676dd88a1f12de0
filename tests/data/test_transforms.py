from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from PIL import Image

from partreid.data.transforms import (
    RandomCropResize,
    RandomCropResizeShift,
    RandomShifting,
    ShiftParams,
    TransformsConfig,
    build_transforms,
)

H, W = 48, 20
COLOUR = (200, 10, 30)


def constant_images():
    """The same constant-colour image as PIL, uint8 tensor and float tensor."""
    pil = Image.new("RGB", (W, H), COLOUR)
    u8 = torch.tensor(COLOUR, dtype=torch.uint8)[:, None, None].expand(3, H, W).contiguous()
    return pil, u8, u8.float() / 255.0


def to_array(img) -> np.ndarray:
    """(H, W, C) float array of a PIL image or a CxHxW tensor."""
    if isinstance(img, Image.Image):
        return np.asarray(img, dtype=np.float64)
    return img.permute(1, 2, 0).double().numpy()


def fill_of(img) -> float:
    return 0.5 if isinstance(img, torch.Tensor) and img.is_floating_point() else 127.0


def colour_of(img) -> np.ndarray:
    c = np.array(COLOUR, dtype=np.float64)
    return c / 255.0 if isinstance(img, torch.Tensor) and img.is_floating_point() else c


@pytest.mark.parametrize("kind", [0, 1, 2], ids=["pil", "uint8", "float"])
def test_rsa_p0_returns_input_unchanged(kind):
    img = constant_images()[kind]
    assert RandomShifting(p=0.0)(img) is img


@pytest.mark.parametrize("kind", [0, 1, 2], ids=["pil", "uint8", "float"])
def test_rsa_constant_image_fill_exactly_outside_patch(kind):
    img = constant_images()[kind]
    rsa = RandomShifting(p=1.0, pc=0.5, generator=torch.Generator().manual_seed(kind))
    for _ in range(25):
        params = rsa.sample_params(H, W)
        out = rsa.apply(img, params)
        assert type(out) is type(img)
        if isinstance(img, torch.Tensor):
            assert out.dtype == img.dtype and out.shape == img.shape
        else:
            assert out.size == img.size and out.mode == img.mode
        arr = to_array(out)
        inside = np.zeros((H, W), dtype=bool)
        inside[params.top : params.top + params.new_h, params.left : params.left + params.new_w] = (
            True
        )
        assert np.all(arr[~inside] == fill_of(img))
        np.testing.assert_allclose(
            arr[inside], np.broadcast_to(colour_of(img), arr[inside].shape), atol=1e-6
        )


def test_rsa_params_within_paper_ranges_and_canvas():
    rc_min, rh_min, rw_min = 0.7, 0.5, 0.5
    rsa = RandomShifting(
        p=1.0,
        pc=1.0,
        rc_min=rc_min,
        rh_min=rh_min,
        rw_min=rw_min,
        generator=torch.Generator().manual_seed(0),
    )
    for _ in range(500):
        q = rsa.sample_params(H, W)
        assert q.cropped
        assert round(rc_min * H) <= q.crop_h <= H and 0 <= q.crop_top <= H - q.crop_h
        # the patch is rescaled by r_h in [rh_min, 1/r_c] -> new height in [rh_min*crop_h, H]
        assert rh_min * q.crop_h - 1 <= q.new_h <= H
        assert round(rw_min * W) <= q.new_w <= W
        assert 0 <= q.top <= H - q.new_h and 0 <= q.left <= W - q.new_w


def test_rsa_band_crop_and_application_frequencies():
    g = torch.Generator().manual_seed(123)
    rsa = RandomShifting(p=0.4, pc=0.3, generator=g)
    draws = [rsa.sample_params(H, W) for _ in range(3000)]
    applied = [d for d in draws if d is not None]
    assert abs(len(applied) / len(draws) - 0.4) < 0.05
    cropped = np.mean([d.cropped for d in applied])
    assert abs(cropped - 0.3) < 0.06
    # without a crop the band is the whole image
    assert all(d.crop_h == H and d.crop_top == 0 for d in applied if not d.cropped)


def test_rsa_apply_matches_reference_slicing_without_resize():
    rng = np.random.default_rng(0)
    arr = rng.integers(0, 256, size=(3, H, W), dtype=np.uint8)
    img = torch.from_numpy(arr)
    params = ShiftParams(cropped=True, crop_top=5, crop_h=30, new_h=30, new_w=W, top=11, left=0)
    out = RandomShifting.apply(img, params).numpy()
    expected = np.full_like(arr, 127)
    expected[:, 11:41, :] = arr[:, 5:35, :]
    np.testing.assert_array_equal(out, expected)
    # the same draw on the PIL version of the image gives the same pixels
    pil = Image.fromarray(arr.transpose(1, 2, 0))
    np.testing.assert_array_equal(
        np.asarray(RandomShifting.apply(pil, params)), expected.transpose(1, 2, 0)
    )


def test_rsa_is_identity_when_nothing_can_change():
    img = torch.rand(3, H, W)
    rsa = RandomShifting(
        p=1.0, pc=0.0, rh_min=1.0, rw_min=1.0, generator=torch.Generator().manual_seed(1)
    )
    assert torch.equal(rsa(img), img)


def test_rsa_generators_reproducible():
    a = RandomShifting(p=1.0, generator=random.Random(7))
    b = RandomShifting(p=1.0, generator=random.Random(7))
    pa = [a.sample_params(H, W) for _ in range(20)]
    assert pa == [b.sample_params(H, W) for _ in range(20)]
    assert len(set(pa)) > 1
    torch.manual_seed(3)
    g1 = [RandomShifting(p=1.0).sample_params(H, W) for _ in range(5)]
    torch.manual_seed(3)
    assert g1 == [RandomShifting(p=1.0).sample_params(H, W) for _ in range(5)]


@pytest.mark.parametrize("kind", [0, 1, 2], ids=["pil", "uint8", "float"])
def test_random_crop_and_rcrs_keep_size_and_type(kind):
    img = constant_images()[kind]
    torch.manual_seed(0)
    for t in (
        RandomCropResize(p=1.0, min_frac=0.5),
        RandomCropResizeShift(p=1.0, min_frac=0.5, max_shift=0.3),
    ):
        out = t(img)
        assert type(out) is type(img)
        assert to_array(out).shape == to_array(img).shape


def test_rc_and_rcrs_are_identity_at_full_size_and_no_shift():
    img = torch.rand(3, H, W)
    assert torch.equal(RandomCropResize(p=1.0, min_frac=1.0)(img), img)
    assert torch.equal(RandomCropResizeShift(p=1.0, min_frac=1.0, max_shift=0.0)(img), img)


def test_rcrs_shift_loses_content_and_fills_border():
    _, u8, _ = constant_images()
    torch.manual_seed(5)
    max_shift = 0.3
    seen_shift = False
    for _ in range(20):
        out = RandomCropResizeShift(p=1.0, min_frac=0.6, max_shift=max_shift)(u8)[0].numpy()
        assert set(np.unique(out)) <= {127, COLOUR[0]}
        content = out == COLOUR[0]
        rows, cols = np.where(content.any(1))[0], np.where(content.any(0))[0]
        # the content is one rectangle touching the frame: resized to the full size, then translated
        assert content[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1].all()
        assert rows.min() == 0 or rows.max() == H - 1
        assert cols.min() == 0 or cols.max() == W - 1
        assert H - len(rows) <= round(max_shift * H) and W - len(cols) <= round(max_shift * W)
        seen_shift |= len(rows) < H or len(cols) < W
    assert seen_shift


def test_config_validation_names_key():
    with pytest.raises(ValueError, match=r"transforms\.rsa\b"):
        TransformsConfig(rsa=1.5)
    with pytest.raises(ValueError, match=r"transforms\.pad"):
        TransformsConfig(pad=-1)
    cfg = TransformsConfig()
    cfg.rsa_rc_min = 0.0
    with pytest.raises(ValueError, match=r"transforms\.rsa_rc_min"):
        build_transforms(cfg, H, W, is_train=True)


MEAN = np.array([0.485, 0.456, 0.406])
STD = np.array([0.229, 0.224, 0.225])


def test_test_transform_matches_reference():
    rng = np.random.default_rng(1)
    pil = Image.fromarray(rng.integers(0, 256, size=(60, 25, 3), dtype=np.uint8))
    out = build_transforms(TransformsConfig(), H, W, is_train=False)(pil)
    assert out.shape == (3, H, W) and out.dtype == torch.float32
    ref = (np.asarray(pil.resize((W, H), Image.BILINEAR), dtype=np.float64) / 255.0 - MEAN) / STD
    np.testing.assert_allclose(out.permute(1, 2, 0).numpy(), ref, atol=1e-5)


def test_train_transform_shape_and_all_steps_run():
    cfg = TransformsConfig(
        flip=0.5, pad=4, random_erasing=0.5, color_jitter=0.5, random_crop=0.5, rcrs=0.5, rsa=0.5
    )
    t = build_transforms(cfg, H, W, is_train=True)
    rng = np.random.default_rng(2)
    pil = Image.fromarray(rng.integers(0, 256, size=(60, 25, 3), dtype=np.uint8))
    torch.manual_seed(0)
    for _ in range(10):
        out = t(pil)
        assert out.shape == (3, H, W) and out.dtype == torch.float32


def test_train_rsa_fill_is_grey_before_normalisation():
    pil, _, _ = constant_images()
    t = build_transforms(TransformsConfig(flip=0.0, rsa=1.0), H, W, is_train=True)
    torch.manual_seed(0)
    out = t(pil).permute(1, 2, 0).numpy()
    grey = (127 / 255.0 - MEAN) / STD
    colour = (np.array(COLOUR) / 255.0 - MEAN) / STD
    is_grey = np.isclose(out, grey, atol=1e-5).all(-1)
    is_colour = np.isclose(out, colour, atol=1e-5).all(-1)
    assert is_grey.any() and is_colour.any() and (is_grey | is_colour).all()


def test_train_random_erasing_fills_with_mean():
    pil, _, _ = constant_images()
    t = build_transforms(TransformsConfig(flip=0.0, random_erasing=1.0), H, W, is_train=True)
    torch.manual_seed(0)
    out = t(pil)
    erased = (out == 0).all(0)
    assert 0 < erased.sum() <= 0.4 * H * W + W  # area at most 40% (plus rounding)


def test_train_without_augmentation_equals_test():
    rng = np.random.default_rng(3)
    pil = Image.fromarray(rng.integers(0, 256, size=(60, 25, 3), dtype=np.uint8))
    cfg = TransformsConfig(flip=0.0)
    assert torch.equal(
        build_transforms(cfg, H, W, True)(pil), build_transforms(cfg, H, W, False)(pil)
    )
