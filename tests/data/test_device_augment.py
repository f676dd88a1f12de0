"""Batched device augmentation vs the per-image pipeline of partreid.data.transforms (CPU)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torchvision.transforms as T
import torchvision.transforms.functional as TF

from partreid.data.device_augment import (
    CachedImageDataset,
    DeviceAugment,
    RSAParams,
    adjust_brightness,
    adjust_contrast,
    adjust_hue,
    adjust_saturation,
    apply_rsa,
    build_image_cache,
    cached_batches,
    pad_crop,
    sample_erasing,
    sample_rsa,
)
from partreid.data.transforms import RandomShifting, ShiftParams, TransformsConfig

H, W = 32, 16


def images(n=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 3, H, W), generator=g, dtype=torch.uint8)


def params(**kw):
    base = dict(crop_top=0, crop_h=H, new_h=H, new_w=W, top=0, left=0)
    base.update(kw)
    return RSAParams(torch.tensor([True]), *(torch.tensor([base[k]]) for k in list(base)))


# ----------------------------------------------------------------------------- RSA
def test_rsa_parameter_distribution_matches_per_image():
    cfg = TransformsConfig(rsa=0.7, rsa_pc=0.5)
    n = 6000
    gen = torch.Generator().manual_seed(0)
    b = sample_rsa(n, H, W, cfg, gen)
    ref = RandomShifting(0.7, 0.5, 0.7, 0.5, 0.5, generator=torch.Generator().manual_seed(1))
    draws = [ref.sample_params(H, W) for _ in range(n)]
    got = [d for d in draws if d is not None]
    assert b.applied.float().mean().item() == pytest.approx(len(got) / n, abs=0.03)
    assert abs(b.applied.float().mean().item() - 0.7) < 0.03
    a = b.applied
    for name in ("crop_top", "crop_h", "new_h", "new_w", "top", "left"):
        mine = getattr(b, name)[a].double()
        theirs = torch.tensor([getattr(d, name) for d in got], dtype=torch.float64)
        scale = max(float(theirs.std()), 1.0)
        assert abs(float(mine.mean() - theirs.mean())) < 0.08 * scale, name
        assert abs(float(mine.std() - theirs.std())) < 0.08 * scale, name
    cropped_mine = (b.crop_h[a] < H).double().mean()
    cropped_ref = np.mean([d.crop_h < H for d in got])
    assert abs(float(cropped_mine) - cropped_ref) < 0.03
    # every patch lies inside the canvas
    assert bool(((b.top + b.new_h) <= H).all() and ((b.left + b.new_w) <= W).all())


def per_image_rsa(img_u8, p: RSAParams):
    sp = ShiftParams(
        True, *(int(getattr(p, k)) for k in ("crop_top", "crop_h", "new_h", "new_w", "top", "left"))
    )
    return RandomShifting.apply(img_u8, sp)


@pytest.mark.parametrize(
    "kw",
    [
        dict(crop_top=5, crop_h=20, new_h=20, new_w=W, top=9, left=0),  # pure shift of a band
        dict(crop_top=0, crop_h=H, new_h=H, new_w=W, top=0, left=0),  # identity
    ],
)
def test_rsa_shift_is_exact(kw):
    img = images(1)
    p = params(**kw)
    got = apply_rsa(img.float(), p).round().to(torch.uint8)
    assert torch.equal(got[0], per_image_rsa(img[0], p))


def test_rsa_enlarging_resize_matches_per_image_bilinear():
    img = images(1)
    p = params(crop_top=4, crop_h=16, new_h=28, new_w=W, top=2, left=0)
    got = apply_rsa(img.float(), p)
    ref = per_image_rsa(img[0], p).float()
    assert (got[0] - ref).abs().max() <= 1.0  # the per-image path rounds to uint8
    grey = torch.ones(H, dtype=torch.bool)
    grey[2:30] = False
    assert bool((got[0][:, grey] == 127).all())  # grey fill outside the patch


# ----------------------------------------------------------------------------- flip / pad
def test_pad_crop_equals_torchvision_crop_of_padded_image():
    img = images(3).float()
    top, left = torch.tensor([0, 3, 8]), torch.tensor([8, 0, 5])
    got = pad_crop(img, 4, top, left)
    for i in range(3):
        ref = TF.crop(TF.pad(img[i], [4]), int(top[i]), int(left[i]), H, W)
        assert torch.equal(got[i], ref)


def test_flip_and_pad_probabilities_and_offsets():
    cfg = TransformsConfig(flip=1.0, pad=0)
    aug = DeviceAugment(cfg, H, W, mean=(0, 0, 0), std=(1, 1, 1))
    img = images(4)
    torch.testing.assert_close(aug(img), img.flip(3).float() / 255)
    cfg = TransformsConfig(flip=0.3, pad=0)
    aug = DeviceAugment(cfg, H, W, generator=torch.Generator().manual_seed(0))
    one = images(1).expand(4000, 3, H, W).contiguous()
    out = aug(one)
    flipped = (out - out[:, :, :, :].flip(3)).abs().sum((1, 2, 3)) > 0
    same_as_first = torch.isclose(
        out, DeviceAugment(TransformsConfig(flip=0), H, W, train=False)(one[:1])
    ).all(dim=(1, 2, 3))
    assert flipped.all()  # random content: a flip always changes the image
    assert abs(1 - same_as_first.double().mean().item() - 0.3) < 0.03
    # pad-and-crop offsets: uniform on [0, 2 * pad] like T.RandomCrop
    cfg = TransformsConfig(flip=0, pad=2)
    aug = DeviceAugment(
        cfg, H, W, mean=(0, 0, 0), std=(1, 1, 1), generator=torch.Generator().manual_seed(1)
    )
    ones = torch.full((3000, 3, H, W), 255, dtype=torch.uint8)
    out = aug(ones)[:, 0]
    lit = (out[:, :, W // 2] > 0).float()  # black rows come from the padding
    black_top, black_bottom = lit.argmax(1), lit.flip(1).argmax(1)
    top = 2 - black_top + black_bottom  # the crop offset in the padded image
    counts = torch.bincount(top.long(), minlength=5).double() / 3000
    assert bool(((counts - 0.2).abs() < 0.03).all())


# ----------------------------------------------------------------------------- colour jitter
def test_jitter_ops_equal_torchvision_functional():
    img = images(3).float() / 255
    f = torch.tensor([0.8, 1.0, 1.15])
    for mine, theirs in (
        (adjust_brightness, TF.adjust_brightness),
        (adjust_contrast, TF.adjust_contrast),
        (adjust_saturation, TF.adjust_saturation),
    ):
        got = mine(img, f)
        for i in range(3):
            torch.testing.assert_close(got[i], theirs(img[i], float(f[i])), atol=1e-5, rtol=0)
    hue = torch.tensor([-0.1, 0.0, 0.07])
    got = adjust_hue(img, hue)
    for i in range(3):
        torch.testing.assert_close(got[i], TF.adjust_hue(img[i], float(hue[i])), atol=1e-4, rtol=0)


def test_jitter_probability_and_brightness_range():
    cfg = TransformsConfig(
        flip=0,
        color_jitter=0.4,
        color_jitter_brightness=0.2,
        color_jitter_contrast=0,
        color_jitter_saturation=0,
        color_jitter_hue=0,
    )
    aug = DeviceAugment(
        cfg, H, W, mean=(0, 0, 0), std=(1, 1, 1), generator=torch.Generator().manual_seed(0)
    )
    grey = torch.full((4000, 3, H, W), 100, dtype=torch.uint8)
    out = aug(grey)[:, 0, 0, 0] * 255 / 100  # the brightness factor
    changed = (out - 1).abs() > 1e-6
    assert abs(changed.double().mean().item() - 0.4) < 0.03
    fac = out[changed]
    assert fac.min() >= 0.8 - 1e-5 and fac.max() <= 1.2 + 1e-5
    assert abs(fac.mean().item() - 1.0) < 0.01  # U(0.8, 1.2)


# ----------------------------------------------------------------------------- random erasing
def test_erasing_distribution_matches_torchvision():
    n = 4000
    p = sample_erasing(n, H, W, 0.5, gen=torch.Generator().manual_seed(0))
    assert abs(p.applied.double().mean().item() - 0.5) < 0.03
    a = p.applied
    torch.manual_seed(0)
    ref = [
        T.RandomErasing.get_params(torch.zeros(3, H, W), (0.02, 0.4), (0.3, 1 / 0.3), [0])
        for _ in range(n)
    ]
    ref_hw = torch.tensor([(r[2], r[3]) for r in ref if r[2] < H], dtype=torch.float64)
    mine_hw = torch.stack([p.h[a], p.w[a]], 1).double()
    for j in range(2):
        assert abs(mine_hw[:, j].mean() - ref_hw[:, j].mean()) < 0.05 * ref_hw[:, j].std() + 0.3
    assert bool(((p.top + p.h) <= H).all() and ((p.left + p.w) <= W).all())
    cfg = TransformsConfig(flip=0, random_erasing=1.0)
    aug = DeviceAugment(cfg, H, W, generator=torch.Generator().manual_seed(3))
    out = aug(torch.full((200, 3, H, W), 255, dtype=torch.uint8))
    erased = (out == 0).all(1).double().mean((1, 2))  # 'mean' fill = 0 after normalising
    assert erased.min() > 0 and erased.max() <= 0.45


# ----------------------------------------------------------------------------- pipeline / cache
def test_test_mode_equals_per_image_test_transform_and_cache(tmp_path):
    from PIL import Image

    from partreid.data.transforms import build_test_transform

    rng = np.random.default_rng(0)
    paths = []
    for i in range(3):
        arr = rng.integers(0, 256, (50 + 7 * i, 23, 3), dtype=np.uint8)
        paths.append(str(tmp_path / f"{i}.png"))
        Image.fromarray(arr).save(paths[-1])
    items = [(p, i, 0) for i, p in enumerate(paths)]
    cache = build_image_cache(items, H, W, num_threads=2)
    assert cache.shape == (3, 3, H, W) and cache.dtype == torch.uint8
    ref = torch.stack([build_test_transform(H, W)(Image.open(p).convert("RGB")) for p in paths])
    got = DeviceAugment(TransformsConfig(), H, W, train=False)(cache)
    torch.testing.assert_close(got, ref, atol=1e-6, rtol=0)
    ds = CachedImageDataset(items, cache, build_test_transform(H, W))
    torch.testing.assert_close(torch.stack([ds[i][0] for i in range(3)]), ref, atol=1e-6, rtol=0)
    assert ds[2][1:] == (2, 0, 2)
    pids, cams = torch.arange(3), torch.zeros(3, dtype=torch.long)
    batches = list(cached_batches(cache, pids, cams, [2, 0, 1, 2], 2, torch.device("cpu")))
    assert len(batches) == 2 and torch.equal(batches[0][0][0], cache[2])
    assert batches[1][1].tolist() == [1, 2]


def test_full_pipeline_shapes_and_unsupported_steps():
    cfg = TransformsConfig(flip=0.5, pad=4, random_erasing=0.5, color_jitter=0.5, rsa=0.5)
    aug = DeviceAugment(
        cfg,
        H,
        W,
        generator=torch.Generator().manual_seed(0),
        channels_last=True,
        out_dtype=torch.bfloat16,
    )
    out = aug(images(8))
    assert out.shape == (8, 3, H, W) and out.dtype == torch.bfloat16
    assert (
        out.is_contiguous(memory_format=torch.channels_last) and torch.isfinite(out.float()).all()
    )
    with pytest.raises(ValueError, match="rcrs"):
        DeviceAugment(TransformsConfig(rcrs=0.5), H, W)
    with pytest.raises(ValueError, match="uint8"):
        aug(images(2).float())
    with pytest.raises(ValueError, match="32x16"):
        aug(torch.zeros(1, 3, 8, 8, dtype=torch.uint8))
