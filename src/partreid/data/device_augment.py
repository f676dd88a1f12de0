"""The fast input path: decoded images cached as uint8 tensors, augmentations batched on the device.

Two independent switches (``train.cache_images``, ``train.device_augment``):

* :func:`build_image_cache` decodes every training image once, resizes it to H x W exactly like
  the per-image pipeline's first step (PIL bilinear ``Resize``) and keeps them all in one
  ``(N, 3, H, W)`` uint8 tensor (Market-1501 at 384x128: 1.9 GB).  :func:`cached_batches` then
  turns the PK sampler's indices into uint8 batches on the device without any decoding.
* :class:`DeviceAugment` applies the training augmentations of
  :mod:`partreid.data.transforms` to a whole ``(B, 3, H, W)`` uint8 batch on its device and
  returns the normalised float batch.  Order, probabilities, parameter distributions and fill
  values are those of the per-image pipeline: RSA (grey 127 fill) -> flip -> pad-and-crop (black
  fill) -> colour jitter (with probability ``color_jitter``, the four adjustments in a random
  order per image) -> ``/255`` -> normalise -> random erasing (``mean`` = 0 after normalising, or
  per-pixel normal noise).  Every image gets its own draw.

Differences from the per-image path, by design: RSA's resize is plain bilinear sampling (the
per-image ``Resize`` antialiases when it shrinks), and colour jitter works on floats without
rounding to uint8 between its steps.  RC / RCRS (``random_crop``, ``rcrs``: RMGL's ablations)
are not implemented here; :class:`DeviceAugment` refuses a config that enables them.

Randomness comes from ``generator`` (a ``torch.Generator`` on the batch's device) or torch's
global RNG; give every DDP process its own seed (``engine.distributed.process_seed``).
"""

from __future__ import annotations

import logging
import math
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Iterator, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from ..errors import InvalidValueError
from .io import ImageDataset, Item, read_image
from .transforms import IMAGENET_MEAN, IMAGENET_STD, TransformsConfig

log = logging.getLogger("partreid")

__all__ = [
    "CachedImageDataset",
    "DeviceAugment",
    "ErasingParams",
    "RSAParams",
    "adjust_brightness",
    "adjust_contrast",
    "adjust_hue",
    "adjust_saturation",
    "apply_erasing",
    "apply_rsa",
    "build_image_cache",
    "cached_batches",
    "pad_crop",
    "sample_erasing",
    "sample_rsa",
]

RSA_FILL = 127  # the per-image RSA's mid-grey (uint8)


# --------------------------------------------------------------------------------------------
# decoded-image cache
# --------------------------------------------------------------------------------------------
def _decode(path: str, height: int, width: int) -> np.ndarray:
    img = read_image(path).resize((width, height), Image.BILINEAR)
    return np.ascontiguousarray(np.asarray(img, dtype=np.uint8).transpose(2, 0, 1))


def build_image_cache(
    items: Sequence[Item], height: int, width: int, num_threads: int = 4
) -> torch.Tensor:
    """All images of ``items`` decoded and resized to ``height x width``: ``(N, 3, H, W)`` uint8.

    Unreadable files raise the clear error of :func:`partreid.data.io.read_image`.
    """
    n = len(items)
    if n == 0:
        raise InvalidValueError("build_image_cache: the item list is empty")
    out = torch.empty((n, 3, int(height), int(width)), dtype=torch.uint8)
    paths = [str(it[0]) for it in items]
    with ThreadPoolExecutor(max(1, int(num_threads))) as pool:
        for i, arr in enumerate(pool.map(lambda p: _decode(p, height, width), paths)):
            out[i] = torch.from_numpy(arr)
    log.info("image cache: %d images at %dx%d (%.2f GB)", n, height, width, out.numel() / 2**30)
    return out


class CachedImageDataset(ImageDataset):
    """:class:`~partreid.data.io.ImageDataset` that reads the decoded uint8 cache instead of the
    files (``train.cache_images`` without ``train.device_augment``): the per-image transforms
    then run on the cached H x W image (their first ``Resize`` becomes a no-op)."""

    def __init__(self, items: Sequence[Item], cache: torch.Tensor, transform=None):
        super().__init__(items, transform)
        if cache.shape[0] != len(self.items):
            raise InvalidValueError(
                f"CachedImageDataset: the cache holds {cache.shape[0]} images for "
                f"{len(self.items)} items"
            )
        self.cache = cache

    def __getitem__(self, index: int):
        _, pid, camid = self.items[index]
        img = Image.fromarray(self.cache[index].permute(1, 2, 0).numpy())
        if self.transform is not None:
            img = self.transform(img)
        return img, pid, camid, index


def cached_batches(
    cache: torch.Tensor,
    pids: torch.Tensor,
    camids: torch.Tensor,
    sampler: Sequence[int],
    batch_size: int,
    device: torch.device,
) -> Iterator[Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]]:
    """``(images uint8 on device, pids, camids, indices)`` for consecutive ``batch_size`` indices of
    ``sampler`` (e.g. a :class:`~partreid.data.sampler.PKSampler`; an incomplete last batch is
    dropped).  Pin ``cache`` (``cache.pin_memory()``) for asynchronous copies to a GPU."""
    idx = torch.as_tensor(list(sampler), dtype=torch.long)
    n = idx.numel() // int(batch_size) * int(batch_size)
    non_blocking = cache.is_pinned()
    for a in range(0, n, int(batch_size)):
        b = idx[a : a + int(batch_size)]
        imgs = cache.index_select(0, b).to(device, non_blocking=non_blocking)
        yield imgs, pids[b].to(device), camids[b].to(device), b


# --------------------------------------------------------------------------------------------
# random helpers (batched; draws from ``generator`` on its device)
# --------------------------------------------------------------------------------------------
def _rand(n: int, gen: Optional[torch.Generator], device) -> torch.Tensor:
    return torch.rand(n, generator=gen, device=device, dtype=torch.float64)


def _uniform(n, lo, hi, gen, device) -> torch.Tensor:
    return lo + (hi - lo) * _rand(n, gen, device)


def _randint(lo: torch.Tensor, hi: torch.Tensor, gen, device) -> torch.Tensor:
    """Uniform integers in [lo, hi] (inclusive; per element)."""
    u = _rand(lo.numel(), gen, device)
    span = (hi - lo + 1).clamp(min=1)
    return lo + torch.minimum((u * span).floor().long(), span - 1)


# --------------------------------------------------------------------------------------------
# RSA (random shifting augmentation, RMGL) -- same draws as transforms.RandomShifting
# --------------------------------------------------------------------------------------------
@dataclass
class RSAParams:
    """Per-image RSA draws (int64 tensors of length B); ``applied`` False = image unchanged."""

    applied: torch.Tensor
    crop_top: torch.Tensor
    crop_h: torch.Tensor
    new_h: torch.Tensor
    new_w: torch.Tensor
    top: torch.Tensor
    left: torch.Tensor


def sample_rsa(
    n: int, height: int, width: int, cfg: TransformsConfig, gen=None, device="cpu"
) -> RSAParams:
    """``n`` RSA draws with the distribution of ``RandomShifting.sample_params``."""
    applied = _rand(n, gen, device) < cfg.rsa
    cropped = (_rand(n, gen, device) < cfg.rsa_pc) & (cfg.rsa_pc > 0)
    rc = torch.where(cropped, _uniform(n, cfg.rsa_rc_min, 1.0, gen, device), 1.0)
    crop_h = torch.round(rc * height).long().clamp(1, height)
    zero = torch.zeros(n, dtype=torch.long, device=device)
    crop_top = _randint(zero, height - crop_h, gen, device)
    rh = cfg.rsa_rh_min + (1.0 / rc - cfg.rsa_rh_min) * _rand(n, gen, device)
    rw = _uniform(n, cfg.rsa_rw_min, 1.0, gen, device)
    new_h = torch.round(rh * crop_h).long().clamp(1, height)
    new_w = torch.round(rw * width).long().clamp(1, width)
    top = _randint(zero, height - new_h, gen, device)
    left = _randint(zero, width - new_w, gen, device)
    return RSAParams(applied, crop_top, crop_h, new_h, new_w, top, left)


def apply_rsa(images: torch.Tensor, p: RSAParams) -> torch.Tensor:
    """RSA on a float batch (values 0..255): band crop, bilinear resize, paste on grey 127."""
    b, _, h, w = images.shape
    dev, dt = images.device, images.dtype
    ys = torch.arange(h, device=dev, dtype=dt).view(1, h)
    xs = torch.arange(w, device=dev, dtype=dt).view(1, w)
    f = lambda t: t.to(dt).view(b, 1)  # noqa: E731
    # half-pixel (align_corners=False) mapping from the pasted patch back into the band
    sy = (ys - f(p.top) + 0.5) * f(p.crop_h) / f(p.new_h) - 0.5
    sy = sy.clamp(min=0).minimum(f(p.crop_h) - 1) + f(p.crop_top)
    sx = ((xs - f(p.left) + 0.5) * w / f(p.new_w) - 0.5).clamp(0, w - 1)
    gy = (sy + 0.5) * 2 / h - 1  # grid_sample coordinates (align_corners=False)
    gx = (sx + 0.5) * 2 / w - 1
    grid = torch.stack(torch.broadcast_tensors(gx.view(b, 1, w), gy.view(b, h, 1)), dim=-1)
    out = F.grid_sample(images, grid, mode="bilinear", align_corners=False)
    inside_y = (ys >= f(p.top)) & (ys < f(p.top + p.new_h))
    inside_x = (xs >= f(p.left)) & (xs < f(p.left + p.new_w))
    inside = (inside_y.view(b, 1, h, 1) & inside_x.view(b, 1, 1, w)).expand_as(out)
    out = torch.where(inside, out, torch.full_like(out, RSA_FILL))
    return torch.where(p.applied.view(b, 1, 1, 1), out, images)


# --------------------------------------------------------------------------------------------
# pad-and-crop (T.RandomCrop(size, padding=pad, fill=0)) and flip
# --------------------------------------------------------------------------------------------
def pad_crop(images: torch.Tensor, pad: int, top: torch.Tensor, left: torch.Tensor) -> torch.Tensor:
    """Zero-pad every side by ``pad`` and crop H x W at per-image offsets ``(top, left)`` in
    ``[0, 2 * pad]`` (the padded image's coordinates), like ``T.RandomCrop(padding=pad)``."""
    b, c, h, w = images.shape
    padded = F.pad(images, (pad, pad, pad, pad))
    rows = top.view(b, 1) + torch.arange(h, device=images.device)  # (b, h)
    cols = left.view(b, 1) + torch.arange(w, device=images.device)  # (b, w)
    bi = torch.arange(b, device=images.device).view(b, 1, 1)
    out = padded.permute(0, 2, 3, 1)[bi, rows.view(b, h, 1), cols.view(b, 1, w)]
    return out.permute(0, 3, 1, 2).contiguous()


# --------------------------------------------------------------------------------------------
# colour jitter on float images in [0, 1] (per-image factors, shape (B,))
# --------------------------------------------------------------------------------------------
def _gray(img: torch.Tensor) -> torch.Tensor:
    r, g, b = img.unbind(1)
    return (0.2989 * r + 0.587 * g + 0.114 * b).unsqueeze(1)


def _blend(img: torch.Tensor, other: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    f = factor.to(img.dtype).view(-1, 1, 1, 1)
    return (f * img + (1 - f) * other).clamp(0, 1)


def adjust_brightness(img: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """Per-image brightness (as torchvision's ``adjust_brightness`` on float tensors)."""
    return _blend(img, torch.zeros_like(img), factor)


def adjust_contrast(img: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """Per-image contrast: blend with the mean grey level of the image."""
    return _blend(img, _gray(img).mean(dim=(1, 2, 3), keepdim=True), factor)


def adjust_saturation(img: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """Per-image saturation: blend with the grey-scale image."""
    return _blend(img, _gray(img), factor)


def adjust_hue(img: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """Per-image hue shift in [-0.5, 0.5] turns (RGB -> HSV -> RGB, like torchvision)."""
    r, g, b = img.unbind(1)
    maxc, _ = img.max(1)
    minc, _ = img.min(1)
    eqc = maxc == minc
    cr = maxc - minc
    ones = torch.ones_like(maxc)
    s = cr / torch.where(eqc, ones, maxc)
    cr_div = torch.where(eqc, ones, cr)
    rc, gc, bc = (maxc - r) / cr_div, (maxc - g) / cr_div, (maxc - b) / cr_div
    hr = (maxc == r) * (bc - gc)
    hg = ((maxc == g) & (maxc != r)) * (2.0 + rc - bc)
    hb = ((maxc != g) & (maxc != r)) * (4.0 + gc - rc)
    hue = torch.fmod((hr + hg + hb) / 6.0 + 1.0, 1.0)
    hue = torch.remainder(hue + shift.to(img.dtype).view(-1, 1, 1), 1.0)
    v = maxc
    i = torch.floor(hue * 6.0)
    f = hue * 6.0 - i
    i = i.long() % 6
    p = (v * (1 - s)).clamp(0, 1)
    q = (v * (1 - s * f)).clamp(0, 1)
    t = (v * (1 - s * (1 - f))).clamp(0, 1)
    mask = i.unsqueeze(1) == torch.arange(6, device=img.device).view(1, -1, 1, 1)
    a1 = torch.stack((v, q, p, p, t, v), dim=1)
    a2 = torch.stack((t, v, v, q, p, p), dim=1)
    a3 = torch.stack((p, p, t, v, v, q), dim=1)
    a4 = torch.stack((a1, a2, a3), dim=1)  # (B, 3, 6, H, W)
    return torch.einsum("bjhw,bcjhw->bchw", mask.to(img.dtype), a4)


# --------------------------------------------------------------------------------------------
# random erasing (T.RandomErasing(scale=(0.02, 0.4), ratio=(0.3, 1/0.3)) on normalised tensors)
# --------------------------------------------------------------------------------------------
@dataclass
class ErasingParams:
    """Per-image erasing boxes; ``applied`` False = nothing erased."""

    applied: torch.Tensor
    top: torch.Tensor
    left: torch.Tensor
    h: torch.Tensor
    w: torch.Tensor


def sample_erasing(
    n: int,
    height: int,
    width: int,
    p: float,
    scale=(0.02, 0.4),
    ratio=(0.3, 1 / 0.3),
    gen=None,
    device="cpu",
    attempts: int = 10,
) -> ErasingParams:
    """``n`` draws with torchvision ``RandomErasing.get_params``'s distribution: up to 10
    (area, log-aspect) attempts, the first box that fits inside the image is used."""
    area = height * width
    shape = (n, attempts)
    ea = area * (scale[0] + (scale[1] - scale[0]) * _rand(n * attempts, gen, device).view(shape))
    lr = math.log(ratio[0]) + (math.log(ratio[1]) - math.log(ratio[0])) * _rand(
        n * attempts, gen, device
    ).view(shape)
    aspect = torch.exp(lr)
    h = torch.round(torch.sqrt(ea * aspect)).long()
    w = torch.round(torch.sqrt(ea / aspect)).long()
    ok = (h < height) & (w < width)
    first = torch.argmax(ok.to(torch.int8), dim=1)  # first fitting attempt (0 if none)
    found = ok.any(1)
    h = h.gather(1, first.view(-1, 1)).squeeze(1).clamp(0, height - 1)
    w = w.gather(1, first.view(-1, 1)).squeeze(1).clamp(0, width - 1)
    zero = torch.zeros(n, dtype=torch.long, device=device)
    top = _randint(zero, height - h, gen, device)
    left = _randint(zero, width - w, gen, device)
    applied = (_rand(n, gen, device) < p) & found
    return ErasingParams(applied, top, left, h, w)


def apply_erasing(
    images: torch.Tensor, p: ErasingParams, fill: str = "mean", gen=None
) -> torch.Tensor:
    """Erase each image's box: value 0 (``mean``) or per-pixel standard normal noise (``random``)."""
    b, c, h, w = images.shape
    ys = torch.arange(h, device=images.device).view(1, h)
    xs = torch.arange(w, device=images.device).view(1, w)
    iy = (ys >= p.top.view(b, 1)) & (ys < (p.top + p.h).view(b, 1))
    ix = (xs >= p.left.view(b, 1)) & (xs < (p.left + p.w).view(b, 1))
    mask = (iy.view(b, 1, h, 1) & ix.view(b, 1, 1, w)) & p.applied.view(b, 1, 1, 1)
    if fill == "random":
        value = torch.randn(images.shape, generator=gen, device=images.device, dtype=images.dtype)
    else:
        value = torch.zeros((), device=images.device, dtype=images.dtype)
    return torch.where(mask.expand_as(images), value, images)


# --------------------------------------------------------------------------------------------
# the batched pipeline
# --------------------------------------------------------------------------------------------
class DeviceAugment:
    """uint8 ``(B, 3, H, W)`` batch on any device -> normalised float batch, training augmented.

    ``train=False`` only converts and normalises (the test preprocessing of cached images).
    ``out_dtype`` (e.g. ``torch.bfloat16``) and ``channels_last`` shape the returned batch for
    the model.  See the module docstring for the order and the differences from the per-image
    pipeline.
    """

    def __init__(
        self,
        cfg: TransformsConfig,
        height: int,
        width: int,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
        train: bool = True,
        generator: Optional[torch.Generator] = None,
        channels_last: bool = False,
        out_dtype: torch.dtype = torch.float32,
    ):
        cfg.validate()
        unsupported = [k for k in ("random_crop", "rcrs") if getattr(cfg, k) > 0]
        if train and unsupported:
            raise InvalidValueError(
                f"device augmentation does not implement transforms.{'/'.join(unsupported)} "
                "(RMGL's RC/RCRS ablations); set train.device_augment=false for these configs"
            )
        self.cfg, self.height, self.width, self.train = cfg, int(height), int(width), bool(train)
        self.mean = torch.tensor(list(mean), dtype=torch.float32).view(1, 3, 1, 1)
        self.std = torch.tensor(list(std), dtype=torch.float32).view(1, 3, 1, 1)
        self.generator = generator
        self.channels_last, self.out_dtype = bool(channels_last), out_dtype

    def _jitter(self, x: torch.Tensor) -> torch.Tensor:
        cfg, gen, dev, b = self.cfg, self.generator, x.device, x.shape[0]
        applied = _rand(b, gen, dev) < cfg.color_jitter
        ops = []
        for s, fn in (
            (cfg.color_jitter_brightness, adjust_brightness),
            (cfg.color_jitter_contrast, adjust_contrast),
            (cfg.color_jitter_saturation, adjust_saturation),
        ):
            if s > 0:
                ops.append((fn, _uniform(b, max(0.0, 1 - s), 1 + s, gen, dev)))
        if cfg.color_jitter_hue > 0:
            h = cfg.color_jitter_hue
            ops.append((adjust_hue, _uniform(b, -h, h, gen, dev)))
        if not ops:
            return x
        # a random order of the adjustments per image (torchvision permutes them per call)
        order = torch.argsort(_rand(b * len(ops), gen, dev).view(b, len(ops)), dim=1)
        for step in range(len(ops)):
            for o, (fn, factor) in enumerate(ops):
                sel = torch.nonzero(applied & (order[:, step] == o)).squeeze(1)
                if sel.numel():
                    x[sel] = fn(x[sel], factor[sel])
        return x

    @torch.no_grad()
    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        if images.dtype != torch.uint8 or images.dim() != 4 or images.shape[1] != 3:
            raise InvalidValueError(
                f"DeviceAugment: expected a (B, 3, H, W) uint8 batch, got {tuple(images.shape)} "
                f"{images.dtype}"
            )
        b, _, h, w = images.shape
        if (h, w) != (self.height, self.width):
            raise InvalidValueError(
                f"DeviceAugment: expected {self.height}x{self.width} images, got {h}x{w} "
                "(build the image cache at the input size)"
            )
        cfg, gen, dev = self.cfg, self.generator, images.device
        x = images.float()
        if self.train:
            if cfg.rsa > 0:
                x = apply_rsa(x, sample_rsa(b, h, w, cfg, gen, dev))
            if cfg.flip > 0:
                flip = (_rand(b, gen, dev) < cfg.flip).view(b, 1, 1, 1)
                x = torch.where(flip, x.flip(3), x)
            if cfg.pad > 0:
                zero = torch.zeros(b, dtype=torch.long, device=dev)
                top = _randint(zero, zero + 2 * cfg.pad, gen, dev)
                left = _randint(zero, zero + 2 * cfg.pad, gen, dev)
                x = pad_crop(x, int(cfg.pad), top, left)
        x = x / 255.0
        if self.train and cfg.color_jitter > 0:
            x = self._jitter(x)
        x = (x - self.mean.to(dev)) / self.std.to(dev)
        if self.train and cfg.random_erasing > 0:
            params = sample_erasing(b, h, w, cfg.random_erasing, gen=gen, device=dev)
            x = apply_erasing(x, params, cfg.random_erasing_fill, gen)
        x = x.to(self.out_dtype)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return x
