"""Image transforms for training and testing, including RMGL's random shifting augmentation.

Train pipeline (``build_transforms(..., is_train=True)``), in this order:

1. ``Resize((H, W))`` -- every image is brought to the network input size first, so all the
   geometric augmentations below work on an H x W PIL image and return H x W.
2. ``RandomCropResize`` (``random_crop``, RMGL's "RC"): crop a random box, resize it back to H x W.
3. ``RandomCropResizeShift`` (``rcrs``, RMGL's "RCRS"): RC followed by a random translation.
4. ``RandomShifting`` (``rsa``, RMGL's "RSA"): crop band -> aspect-changing resize -> paste.
5. ``RandomHorizontalFlip`` (``flip``).
6. Pad-and-random-crop (``pad``): zero (black) padding of ``pad`` pixels on every side, then a
   random H x W crop.
7. ``ColorJitter`` applied with probability ``color_jitter``.
8. ``ToTensor`` (floats in [0, 1]) -> ``Normalize(mean, std)``.
9. ``RandomErasing`` (``random_erasing``; Zhong et al.: area 2%-40%, aspect 0.3-3.33).

Test pipeline: ``Resize((H, W))`` -> ``ToTensor`` -> ``Normalize``.

Every random transform here draws from torch's global RNG (or an explicit generator given to
it), like torchvision's own transforms, so seeding torch before a sample fixes its augmentation
(``partreid.data.loader`` does that per sample).
"""

from __future__ import annotations

import random
from dataclasses import dataclass, fields
from typing import Callable, Optional, Sequence, Tuple, Union

import torch
import torchvision.transforms as T
import torchvision.transforms.functional as TF
from PIL import Image

from ..errors import InvalidValueError

ImageLike = Union[Image.Image, torch.Tensor]
RNG = Union[torch.Generator, random.Random, None]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


# --------------------------------------------------------------------------------------------
# configuration
# --------------------------------------------------------------------------------------------
@dataclass
class TransformsConfig:
    """The ``transforms:`` section of a config. Probabilities are in [0, 1]; 0 turns a step off."""

    flip: float = 0.5  # probability of a horizontal flip
    pad: int = 0  # pixels of zero padding on each side before a random HxW crop; 0 = off
    random_erasing: float = (
        0.0  # probability of random erasing (Zhong et al.) on the normalised tensor
    )
    random_erasing_fill: str = (
        "mean"  # erased value: "mean" (0 after Normalize) or "random" (per-pixel normal noise)
    )
    color_jitter: float = 0.0  # probability of applying ColorJitter with the strengths below
    color_jitter_brightness: float = 0.15  # ColorJitter brightness strength
    color_jitter_contrast: float = 0.15  # ColorJitter contrast strength
    color_jitter_saturation: float = 0.1  # ColorJitter saturation strength
    color_jitter_hue: float = 0.1  # ColorJitter hue strength (at most 0.5)
    random_crop: float = 0.0  # probability of RC: crop a random box (sides U(random_crop_min,1) of H, W), resize back
    random_crop_min: float = 0.8  # smallest side fraction of the RC box
    rcrs: float = 0.0  # probability of RCRS: RC box (sides U(rcrs_crop_min,1)) resized to HxW, then translated
    rcrs_crop_min: float = 0.7  # smallest side fraction of the RCRS crop box
    rcrs_shift: float = (
        0.2  # largest RCRS translation, as a fraction of H (vertical) and W (horizontal)
    )
    rsa: float = 0.0  # probability p of random shifting augmentation (RMGL)
    rsa_pc: float = 0.5  # RSA: probability p_c of cropping a horizontal band first
    rsa_rc_min: float = 0.7  # RSA: band height ratio r_c ~ U(rsa_rc_min, 1)
    rsa_rh_min: float = 0.5  # RSA: height rescale r_h ~ U(rsa_rh_min, 1/r_c) of the (cropped) patch
    rsa_rw_min: float = 0.5  # RSA: width rescale r_w ~ U(rsa_rw_min, 1)

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise ``ValueError`` naming ``transforms.<key>`` for any out-of-range value."""
        probs = ("flip", "random_erasing", "color_jitter", "random_crop", "rcrs", "rsa", "rsa_pc")
        for name in probs:
            v = getattr(self, name)
            if not 0.0 <= float(v) <= 1.0:
                raise InvalidValueError(
                    f"transforms.{name} is a probability and must be in [0, 1], got {v!r}"
                )
        for name in ("random_crop_min", "rcrs_crop_min", "rsa_rc_min", "rsa_rh_min", "rsa_rw_min"):
            v = getattr(self, name)
            if not 0.0 < float(v) <= 1.0:
                raise InvalidValueError(
                    f"transforms.{name} is a size ratio and must be in (0, 1], got {v!r}"
                )
        if int(self.pad) != self.pad or self.pad < 0:
            raise InvalidValueError(
                f"transforms.pad must be a non-negative integer (pixels), got {self.pad!r}"
            )
        if not 0.0 <= float(self.rcrs_shift) <= 1.0:
            raise InvalidValueError(
                f"transforms.rcrs_shift must be in [0, 1], got {self.rcrs_shift!r}"
            )
        for name in ("color_jitter_brightness", "color_jitter_contrast", "color_jitter_saturation"):
            if float(getattr(self, name)) < 0:
                raise InvalidValueError(
                    f"transforms.{name} must be >= 0, got {getattr(self, name)!r}"
                )
        if not 0.0 <= float(self.color_jitter_hue) <= 0.5:
            raise InvalidValueError(
                f"transforms.color_jitter_hue must be in [0, 0.5], got {self.color_jitter_hue!r}"
            )
        if self.random_erasing_fill not in ("mean", "random"):
            raise InvalidValueError(
                f"transforms.random_erasing_fill must be 'mean' or 'random', got {self.random_erasing_fill!r}"
            )

    @classmethod
    def keys(cls) -> Tuple[str, ...]:
        """Names of all fields (for config validation / help)."""
        return tuple(f.name for f in fields(cls))


# --------------------------------------------------------------------------------------------
# small helpers shared by the geometric transforms (PIL images and CxHxW tensors)
# --------------------------------------------------------------------------------------------
def _rand(gen: RNG) -> float:
    """One U(0, 1) draw from ``gen`` (torch.Generator, random.Random or torch's global RNG)."""
    if isinstance(gen, random.Random):
        return gen.random()
    return float(torch.rand((), generator=gen))


def _uniform(gen: RNG, lo: float, hi: float) -> float:
    return lo + (hi - lo) * _rand(gen)


def _randint(gen: RNG, lo: int, hi: int) -> int:
    """Uniform integer in [lo, hi] (both inclusive)."""
    if hi <= lo:
        return lo
    if isinstance(gen, random.Random):
        return gen.randint(lo, hi)
    return int(torch.randint(lo, hi + 1, (), generator=gen))


def _size(img: ImageLike) -> Tuple[int, int]:
    """(height, width) of a PIL image or a (..., H, W) tensor."""
    if isinstance(img, Image.Image):
        return img.height, img.width
    if isinstance(img, torch.Tensor) and img.ndim >= 2:
        return int(img.shape[-2]), int(img.shape[-1])
    raise TypeError(f"expected a PIL image or a (C, H, W) tensor, got {type(img).__name__}")


def _fill_value(img: ImageLike):
    """The mid-grey RSA fill: 127 for uint8 data, 0.5 for float tensors."""
    if isinstance(img, Image.Image):
        bands = len(img.getbands())
        return 127 if bands == 1 else (127,) * bands
    return 127 if img.dtype == torch.uint8 else 0.5


def _crop(img: ImageLike, top: int, left: int, h: int, w: int) -> ImageLike:
    if isinstance(img, Image.Image):
        return img.crop((left, top, left + w, top + h))
    return img[..., top : top + h, left : left + w]


def _resize(img: ImageLike, h: int, w: int) -> ImageLike:
    if _size(img) == (h, w):
        return img
    if isinstance(img, Image.Image):
        return img.resize((w, h), Image.BILINEAR)
    return TF.resize(img, [h, w], interpolation=T.InterpolationMode.BILINEAR, antialias=True)


def _paste_on_canvas(
    patch: ImageLike, height: int, width: int, top: int, left: int, like: ImageLike
) -> ImageLike:
    """Paste ``patch`` with its top-left corner at (top, left) on a HxW grey canvas.

    Parts of the patch that fall outside the canvas are cut off; uncovered canvas stays grey.
    """
    ph, pw = _size(patch)
    # visible window of the patch inside the canvas
    y0, x0 = max(top, 0), max(left, 0)
    y1, x1 = min(top + ph, height), min(left + pw, width)
    if isinstance(like, Image.Image):
        canvas = Image.new(like.mode, (width, height), _fill_value(like))
        if y1 > y0 and x1 > x0:
            canvas.paste(patch.crop((x0 - left, y0 - top, x1 - left, y1 - top)), (x0, y0))
        return canvas
    canvas = torch.full(
        (*like.shape[:-2], height, width), _fill_value(like), dtype=like.dtype, device=like.device
    )
    if y1 > y0 and x1 > x0:
        canvas[..., y0:y1, x0:x1] = patch[..., y0 - top : y1 - top, x0 - left : x1 - left]
    return canvas


# --------------------------------------------------------------------------------------------
# RSA
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ShiftParams:
    """One draw of RSA: crop rows [crop_top, crop_top + crop_h) (full width), resize the band to
    new_h x new_w, paste it with its top-left corner at (top, left) of the HxW grey canvas."""

    cropped: bool
    crop_top: int
    crop_h: int
    new_h: int
    new_w: int
    top: int
    left: int


class RandomShifting:
    """Random shifting augmentation (RSA) of RMGL (paper section III-D, Fig. 6).

    With probability ``p``:

    1. Crop -- with probability ``pc``, keep a full-width horizontal band of height r_c*H,
       r_c ~ U(rc_min, 1), at a uniformly random vertical offset; otherwise keep the whole
       image (r_c = 1).
    2. Resize -- rescale the kept patch by (r_h, r_w): r_h ~ U(rh_min, 1/r_c), r_w ~ U(rw_min, 1),
       independently. The rates apply to the patch, so its new size is
       (r_h * r_c * H) x (r_w * W); the upper bound 1/r_c lets a cropped band be stretched back
       to (at most) the full height H, and the patch always fits in the H x W canvas.
    3. Shift -- paste the patch at a uniformly random position of an H x W canvas filled with
       mid-grey (0.5 for float tensors, 127 for uint8 tensors and PIL images) so that it lies
       entirely inside the canvas.

    Input: a PIL image, or a (C, H, W) uint8 / float tensor; the output has the same type, size
    and dtype. With ``p=0`` (or when the draw says "not applied") the input object is returned
    unchanged. ``generator`` (a ``torch.Generator`` or ``random.Random``) makes draws reproducible;
    by default torch's global RNG is used, like torchvision's transforms.
    """

    def __init__(
        self,
        p: float = 0.5,
        pc: float = 0.5,
        rc_min: float = 0.7,
        rh_min: float = 0.5,
        rw_min: float = 0.5,
        generator: RNG = None,
    ):
        for name, v in (("p", p), ("pc", pc)):
            if not 0.0 <= v <= 1.0:
                raise InvalidValueError(
                    f"RandomShifting: {name} must be a probability in [0, 1], got {v}"
                )
        for name, v in (("rc_min", rc_min), ("rh_min", rh_min), ("rw_min", rw_min)):
            if not 0.0 < v <= 1.0:
                raise InvalidValueError(f"RandomShifting: {name} must be in (0, 1], got {v}")
        self.p, self.pc = float(p), float(pc)
        self.rc_min, self.rh_min, self.rw_min = float(rc_min), float(rh_min), float(rw_min)
        self.generator = generator

    def sample_params(self, height: int, width: int) -> Optional[ShiftParams]:
        """Draw one RSA configuration for an image of ``height`` x ``width``; None = not applied."""
        g = self.generator
        if self.p <= 0.0 or _rand(g) >= self.p:
            return None
        cropped = self.pc > 0.0 and _rand(g) < self.pc
        rc = _uniform(g, self.rc_min, 1.0) if cropped else 1.0
        crop_h = min(height, max(1, round(rc * height)))
        crop_top = _randint(g, 0, height - crop_h)
        rh = _uniform(g, self.rh_min, 1.0 / rc)
        rw = _uniform(g, self.rw_min, 1.0)
        new_h = min(height, max(1, round(rh * crop_h)))
        new_w = min(width, max(1, round(rw * width)))
        top = _randint(g, 0, height - new_h)
        left = _randint(g, 0, width - new_w)
        return ShiftParams(cropped, crop_top, crop_h, new_h, new_w, top, left)

    @staticmethod
    def apply(img: ImageLike, params: ShiftParams) -> ImageLike:
        """Apply a given RSA draw to ``img`` (deterministic)."""
        h, w = _size(img)
        patch = _crop(img, params.crop_top, 0, params.crop_h, w)
        patch = _resize(patch, params.new_h, params.new_w)
        return _paste_on_canvas(patch, h, w, params.top, params.left, like=img)

    def __call__(self, img: ImageLike) -> ImageLike:
        params = self.sample_params(*_size(img))
        return img if params is None else self.apply(img, params)

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(p={self.p}, pc={self.pc}, rc_min={self.rc_min}, "
            f"rh_min={self.rh_min}, rw_min={self.rw_min})"
        )


# --------------------------------------------------------------------------------------------
# RC and RCRS (the ablations RMGL compares RSA with, Table VI)
# --------------------------------------------------------------------------------------------
def _random_box(g: RNG, height: int, width: int, min_frac: float) -> Tuple[int, int, int, int]:
    """A box (top, left, h, w) with sides U(min_frac, 1) of (H, W) at a uniform position."""
    h = min(height, max(1, round(_uniform(g, min_frac, 1.0) * height)))
    w = min(width, max(1, round(_uniform(g, min_frac, 1.0) * width)))
    return _randint(g, 0, height - h), _randint(g, 0, width - w), h, w


class RandomCropResize:
    """RMGL's "RC" (random cropping): with probability ``p`` crop a box whose height and width are
    independent fractions U(min_frac, 1) of H and W, at a uniformly random position, and resize it
    back to H x W (bilinear). No content is shifted out; the aspect ratio is distorted."""

    def __init__(self, p: float = 0.5, min_frac: float = 0.8, generator: RNG = None):
        if not 0.0 <= p <= 1.0 or not 0.0 < min_frac <= 1.0:
            raise InvalidValueError(
                f"RandomCropResize: need 0<=p<=1 and 0<min_frac<=1, got p={p}, min_frac={min_frac}"
            )
        self.p, self.min_frac, self.generator = float(p), float(min_frac), generator

    def __call__(self, img: ImageLike) -> ImageLike:
        if self.p <= 0.0 or _rand(self.generator) >= self.p:
            return img
        h, w = _size(img)
        top, left, ch, cw = _random_box(self.generator, h, w, self.min_frac)
        return _resize(_crop(img, top, left, ch, cw), h, w)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(p={self.p}, min_frac={self.min_frac})"


class RandomCropResizeShift:
    """RMGL's "RCRS" ablation (section IV, "RSA vs other data augmentations"): with probability
    ``p`` (i) crop a random box with sides U(min_frac, 1) of (H, W), (ii) resize it to the full
    input size H x W, (iii) translate the result by (t_y, t_x), t_y ~ U(-max_shift*H, max_shift*H),
    t_x ~ U(-max_shift*W, max_shift*W) (the affine T = [[1, 0, t_x], [0, 1, t_y]]). Content moved
    outside the frame is lost and the uncovered area is filled with the same mid-grey as RSA.
    This is the "shift-after-resize on the exact box" the paper contrasts with RSA, where the
    patch is first shrunk and then placed wholly inside the canvas."""

    def __init__(
        self, p: float = 0.5, min_frac: float = 0.7, max_shift: float = 0.2, generator: RNG = None
    ):
        if not 0.0 <= p <= 1.0 or not 0.0 < min_frac <= 1.0 or not 0.0 <= max_shift <= 1.0:
            raise InvalidValueError(
                "RandomCropResizeShift: need 0<=p<=1, 0<min_frac<=1, 0<=max_shift<=1, "
                f"got p={p}, min_frac={min_frac}, max_shift={max_shift}"
            )
        self.p, self.min_frac, self.max_shift = float(p), float(min_frac), float(max_shift)
        self.generator = generator

    def __call__(self, img: ImageLike) -> ImageLike:
        g = self.generator
        if self.p <= 0.0 or _rand(g) >= self.p:
            return img
        h, w = _size(img)
        top, left, ch, cw = _random_box(g, h, w, self.min_frac)
        patch = _resize(_crop(img, top, left, ch, cw), h, w)
        dy = round(_uniform(g, -self.max_shift, self.max_shift) * h)
        dx = round(_uniform(g, -self.max_shift, self.max_shift) * w)
        return _paste_on_canvas(patch, h, w, dy, dx, like=img)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(p={self.p}, min_frac={self.min_frac}, max_shift={self.max_shift})"


# --------------------------------------------------------------------------------------------
# the pipelines
# --------------------------------------------------------------------------------------------
def build_transforms(
    cfg: TransformsConfig,
    height: int,
    width: int,
    is_train: bool,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
) -> Callable:
    """PIL image -> normalised float tensor (3, height, width); see the module docstring for the order."""
    cfg.validate()
    size = (int(height), int(width))
    steps: list = [T.Resize(size, interpolation=T.InterpolationMode.BILINEAR)]
    if is_train:
        if cfg.random_crop > 0:
            steps.append(RandomCropResize(cfg.random_crop, cfg.random_crop_min))
        if cfg.rcrs > 0:
            steps.append(RandomCropResizeShift(cfg.rcrs, cfg.rcrs_crop_min, cfg.rcrs_shift))
        if cfg.rsa > 0:
            steps.append(
                RandomShifting(cfg.rsa, cfg.rsa_pc, cfg.rsa_rc_min, cfg.rsa_rh_min, cfg.rsa_rw_min)
            )
        if cfg.flip > 0:
            steps.append(T.RandomHorizontalFlip(cfg.flip))
        if cfg.pad > 0:
            steps.append(T.RandomCrop(size, padding=int(cfg.pad), fill=0, padding_mode="constant"))
        if cfg.color_jitter > 0:
            jitter = T.ColorJitter(
                brightness=cfg.color_jitter_brightness,
                contrast=cfg.color_jitter_contrast,
                saturation=cfg.color_jitter_saturation,
                hue=cfg.color_jitter_hue,
            )
            steps.append(T.RandomApply([jitter], p=cfg.color_jitter))
    steps += [T.ToTensor(), T.Normalize(mean=list(mean), std=list(std))]
    if is_train and cfg.random_erasing > 0:
        value = 0 if cfg.random_erasing_fill == "mean" else "random"
        steps.append(
            T.RandomErasing(
                p=cfg.random_erasing, scale=(0.02, 0.4), ratio=(0.3, 1 / 0.3), value=value
            )
        )
    return T.Compose(steps)


def build_test_transform(
    height: int,
    width: int,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
) -> Callable:
    """Test-time preprocessing: resize to ``(height, width)``, to tensor, normalise."""
    return build_transforms(TransformsConfig(), height, width, is_train=False, mean=mean, std=std)
