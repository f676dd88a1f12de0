"""Deterministic test-time alterations of pedestrian crops: occluders and cut-off bodies.

Kinds (``KINDS``); ``severity`` is always the fraction of the crop that is lost, in [0, 1):

* ``<fill>_<place>`` -- an occluder covering ``severity`` of the crop's area, where ``place`` is
  ``bottom`` / ``top`` (a full-width band), ``side`` (a full-height band on the left or the
  right) or ``random`` (a rectangle of random aspect and position inside the crop), and ``fill``
  is ``person`` (content of a TRAINING image of another identity, as when a pedestrian walks in
  front; see :class:`DonorPool`) or ``clutter`` (procedural texture: smooth colour field, noise,
  rectangles and bars -- cars, bushes, signs).
* ``keep_top`` / ``keep_bottom`` -- a cut-off body: only the top (bottom) ``1 - severity`` of the
  crop's height is kept and resized back to the crop size (what detectors produce and the
  Partial-REID protocol uses).

Every alteration is seeded per image: the random draws depend only on ``(seed, kind part, key)``
where ``key`` names the image (:func:`image_key`: its folder and file name), not on the order of
the images or on the severity, so the same image gets the same occluder place, donor and aspect
at every severity (the curves measure the severity, not a new draw). Size and PIL mode are kept.
This module knows no models.
"""

from __future__ import annotations

import math
import os
import zlib
from collections import OrderedDict
from typing import Callable, Dict, Iterable, List, NamedTuple, Optional, Sequence, Tuple

import numpy as np
from PIL import Image, ImageDraw

from ..errors import InvalidValueError
from .io import Item, read_image

FILLS = ("person", "clutter")
PLACES = ("bottom", "top", "side", "random")
CUTS = ("keep_top", "keep_bottom")
KINDS = tuple(f"{f}_{p}" for f in FILLS for p in PLACES) + CUTS
DEFAULT_SEVERITIES = (0.1, 0.2, 0.3, 0.4, 0.5)


def check_kinds(kinds: Iterable[str], where: str = "eval.robustness.kinds") -> List[str]:
    """Return ``kinds`` as a list, or raise ValueError naming the unknown ones and the valid."""
    kinds = list(kinds)
    unknown = [k for k in kinds if k not in KINDS]
    if unknown:
        raise InvalidValueError(
            f"{where}: unknown alteration kind(s) {unknown}; valid: {list(KINDS)}"
        )
    if not kinds:
        raise InvalidValueError(f"{where}: no alteration kind given; valid: {list(KINDS)}")
    return kinds


def check_severities(
    severities: Iterable[float], where: str = "eval.robustness.severities"
) -> List[float]:
    """Return the severities as floats, or raise ValueError if one is outside [0, 1)."""
    out = []
    for s in severities:
        if isinstance(s, bool) or not isinstance(s, (int, float)) or not 0 <= s < 1:
            raise InvalidValueError(
                f"{where}: severities are fractions of the crop in [0, 1); got {s!r}"
            )
        out.append(float(s))
    if not out:
        raise InvalidValueError(f"{where}: no severity given (e.g. [0.1, 0.2, 0.3, 0.4, 0.5])")
    return out


def image_key(path: str) -> str:
    """The name that seeds an image's alteration: its folder and file name (not the root, so the
    same data set at another place gets the same alterations)."""
    p = os.path.normpath(str(path))
    return os.path.join(os.path.basename(os.path.dirname(p)), os.path.basename(p))


def _rng(seed: int, part: str, key: str) -> np.random.Generator:
    return np.random.default_rng(
        [int(seed) & 0xFFFFFFFF, zlib.crc32(part.encode()), zlib.crc32(key.encode())]
    )


# --------------------------------------------------------------------------------------------
# occluder content
# --------------------------------------------------------------------------------------------
class DonorPool:
    """Training images that lend their content to ``person_*`` occluders.

    ``items`` are ``(path, pid)`` with ORIGINAL identity labels (those the query/gallery use).
    Images of an identity in ``exclude_pids`` (the test identities) or whose path is in
    ``exclude_paths`` are never used; :meth:`pick` also avoids the altered image's own identity.
    """

    def __init__(
        self,
        items: Sequence[Tuple[str, int]],
        exclude_pids: Iterable[int] = (),
        exclude_paths: Iterable[str] = (),
        cache_size: int = 512,
        loader: Callable[[str], Image.Image] = read_image,
    ):
        bad_pids = {int(p) for p in exclude_pids}
        bad_paths = {os.path.normpath(str(p)) for p in exclude_paths}
        self.items = [
            (str(p), int(pid))
            for p, pid in items
            if int(pid) not in bad_pids and os.path.normpath(str(p)) not in bad_paths
        ]
        self.num_excluded = len(items) - len(self.items)
        self.pids = np.asarray([pid for _, pid in self.items], dtype=np.int64)
        self.loader = loader
        self.cache_size = int(cache_size)
        self._cache: OrderedDict[str, Image.Image] = OrderedDict()
        if not self.items:
            raise InvalidValueError(
                f"no training image can lend occluder content: all {len(items)} belong to test "
                "identities (person_* occluders need training images of other identities)"
            )

    @classmethod
    def from_dataset(cls, ds, **kwargs) -> DonorPool:
        """The pool of ``ds.train`` (pids mapped back to the original labels through
        ``ds.train_pid_map``), without the identities and images of ``ds.query``/``ds.gallery``."""
        inverse = {label: pid for pid, label in getattr(ds, "train_pid_map", {}).items()}
        items = [(p, inverse.get(label, label)) for p, label, _ in ds.train]
        if not items:
            raise InvalidValueError(
                f"{getattr(ds, 'name', 'data set')}: no training images to take person "
                "occluders from (person_* kinds need the train split; use clutter_* kinds)"
            )
        test = list(ds.query) + list(ds.gallery)
        return cls(
            items,
            exclude_pids={pid for _, pid, _ in test},
            exclude_paths=[p for p, _, _ in test],
            **kwargs,
        )

    def __len__(self) -> int:
        return len(self.items)

    def pick(self, rng: np.random.Generator, avoid_pid: Optional[int] = None) -> Tuple[str, int]:
        """A donor ``(path, pid)`` drawn with ``rng``, never of identity ``avoid_pid``."""
        if avoid_pid is None:
            idx = np.arange(len(self.items))
        else:
            idx = np.flatnonzero(self.pids != int(avoid_pid))
            if len(idx) == 0:
                raise InvalidValueError(f"no donor image of an identity other than {avoid_pid}")
        return self.items[int(idx[rng.integers(len(idx))])]

    def image(self, path: str) -> Image.Image:
        """The donor image as RGB (a small LRU cache avoids re-reading it)."""
        img = self._cache.pop(path, None)
        if img is None:
            img = self.loader(path).convert("RGB")
        self._cache[path] = img
        while len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)
        return img


def clutter_texture(width: int, height: int, rng: np.random.Generator) -> np.ndarray:
    """A (height, width, 3) uint8 texture: smooth colour field + noise + rectangles and bars."""
    w, h = max(1, int(width)), max(1, int(height))
    coarse = rng.integers(0, 256, size=(int(rng.integers(2, 6)), int(rng.integers(2, 6)), 3))
    field = Image.fromarray(coarse.astype(np.uint8)).resize((w, h), Image.BILINEAR)
    img = Image.fromarray(
        np.clip(np.asarray(field, np.float32) + rng.normal(0, 18, (h, w, 3)), 0, 255).astype(
            np.uint8
        )
    )
    draw = ImageDraw.Draw(img)
    for _ in range(int(rng.integers(3, 9))):  # blobs: rectangles / ellipses
        x0, x1 = sorted(rng.integers(-w // 4, w + w // 4, size=2).tolist())
        y0, y1 = sorted(rng.integers(-h // 4, h + h // 4, size=2).tolist())
        color = tuple(int(c) for c in rng.integers(0, 256, size=3))
        (draw.ellipse if rng.random() < 0.4 else draw.rectangle)([x0, y0, x1 + 1, y1 + 1], color)
    for _ in range(int(rng.integers(1, 5))):  # bars: poles, railings
        color = tuple(int(c) for c in rng.integers(0, 256, size=3))
        width_px = int(rng.integers(1, max(2, min(w, h) // 4 + 1)))
        pts = rng.integers(0, [w, h, w, h]).tolist()
        draw.line(pts, fill=color, width=width_px)
    return np.asarray(img, dtype=np.uint8)


# --------------------------------------------------------------------------------------------
# geometry
# --------------------------------------------------------------------------------------------
def occluder_box(
    place: str, severity: float, width: int, height: int, rng: np.random.Generator
) -> Tuple[int, int, int, int]:
    """``(x0, y0, x1, y1)`` of an occluder covering ``severity`` of a ``width x height`` crop.

    The draws (side, aspect, position) are made whatever the severity, so one image's rng gives
    nested boxes of the same kind of place at growing severities."""
    W, H, s = int(width), int(height), float(severity)
    u_side, u_aspect, u_x, u_y = rng.random(4)
    if place == "bottom":
        h = int(round(s * H))
        return 0, H - h, W, H
    if place == "top":
        return 0, 0, W, int(round(s * H))
    if place == "side":
        w = int(round(s * W))
        return (0, 0, w, H) if u_side < 0.5 else (W - w, 0, W, H)
    if place == "random":
        if s <= 0:
            return 0, 0, 0, 0
        area = s * W * H
        h_min = max(1, math.ceil(area / W))
        h = int(round(h_min + u_aspect * (H - h_min)))
        w = min(W, max(1, int(round(area / h))))
        x0 = min(W - w, int(u_x * (W - w + 1)))
        y0 = min(H - h, int(u_y * (H - h + 1)))
        return x0, y0, x0 + w, y0 + h
    raise InvalidValueError(f"unknown occluder place {place!r}; valid: {list(PLACES)}")


# --------------------------------------------------------------------------------------------
# the alteration
# --------------------------------------------------------------------------------------------
class Altered(NamedTuple):
    """What :func:`alter` made of an image; unpacks as ``image, mask, info``.

    ``image`` has the input's size and mode; ``mask`` is the (H, W) bool array of the occluded
    pixels (None for the ``keep_*`` kinds, which move every pixel); ``info`` says what was done
    (``kind``, ``severity`` and the ``box``, ``donor`` path and ``donor_pid``, or ``kept_rows``).
    """

    image: Image.Image
    mask: Optional[np.ndarray]
    info: Dict[str, object]


def alter(
    img: Image.Image,
    kind: str,
    severity: float,
    seed: int = 0,
    key: str = "",
    donors: Optional[DonorPool] = None,
    pid: Optional[int] = None,
) -> Altered:
    """Alter ``img`` by ``kind`` at ``severity``; return the :class:`Altered` image, mask, info.

    ``key`` names the image for seeding (see :func:`image_key`); ``pid`` is its identity, which
    a person occluder never comes from. The image has ``img``'s size and mode.
    """
    check_kinds([kind], "kind")
    s = check_severities([severity], "severity")[0]
    mode, (W, H) = img.mode, img.size
    rgb = img.convert("RGB")
    info: Dict[str, object] = {"kind": kind, "severity": s}
    if kind in CUTS:
        keep = min(H, max(1, int(round((1.0 - s) * H))))
        info["kept_rows"] = keep
        if keep == H:
            out = rgb.copy()
        else:
            box = (0, 0, W, keep) if kind == "keep_top" else (0, H - keep, W, H)
            out = rgb.crop(box).resize((W, H), Image.BILINEAR)
        return Altered(out if mode == "RGB" else out.convert(mode), None, info)
    fill, place = kind.split("_", 1)
    x0, y0, x1, y1 = occluder_box(place, s, W, H, _rng(seed, "place:" + place, key))
    info["box"] = (x0, y0, x1, y1)
    mask = np.zeros((H, W), dtype=bool)
    if x1 <= x0 or y1 <= y0:
        return Altered(rgb.copy() if mode == "RGB" else img.copy(), mask, info)
    mask[y0:y1, x0:x1] = True
    w, h = x1 - x0, y1 - y0
    frng = _rng(seed, "fill:" + fill, key)
    if fill == "person":
        if donors is None:
            raise InvalidValueError(f"{kind}: person occluders need a DonorPool of training images")
        dpath, dpid = donors.pick(frng, avoid_pid=pid)
        info["donor"], info["donor_pid"] = dpath, dpid
        donor = donors.image(dpath).resize((W, H), Image.BILINEAR)
        # the donor's body: a window centred horizontally on the donor crop, at the box's rows
        dx0 = (W - w) // 2
        patch = np.asarray(donor.crop((dx0, y0, dx0 + w, y0 + h)), dtype=np.uint8)
    else:
        patch = clutter_texture(w, h, frng)
    arr = np.array(rgb, dtype=np.uint8)
    arr[y0:y1, x0:x1] = patch
    out = Image.fromarray(arr, "RGB")
    return Altered(out if mode == "RGB" else out.convert(mode), mask, info)


class AlteredImageDataset:
    """Like :class:`~partreid.data.io.ImageDataset` over ``(path, pid, camid)`` items, each image
    altered by ``kind`` at ``severity`` before ``transform``; yields ``(image, pid, camid,
    index)``. ``prefix`` separates the seeding of different roles (query / gallery)."""

    def __init__(
        self,
        items: Sequence[Item],
        kind: str,
        severity: float,
        seed: int = 0,
        donors: Optional[DonorPool] = None,
        transform: Optional[Callable] = None,
        prefix: str = "",
    ):
        self.items = list(items)
        self.kind, self.severity = check_kinds([kind])[0], check_severities([severity])[0]
        self.seed, self.donors, self.transform, self.prefix = seed, donors, transform, prefix
        if kind.startswith("person_") and severity > 0 and donors is None:
            raise InvalidValueError(f"{kind}: person occluders need a DonorPool of training images")

    def __len__(self) -> int:
        return len(self.items)

    def altered(self, index: int) -> Image.Image:
        """The altered PIL image of item ``index`` (before ``transform``)."""
        path, pid, _ = self.items[index]
        img = read_image(path)
        return alter(
            img,
            self.kind,
            self.severity,
            self.seed,
            self.prefix + image_key(path),
            self.donors,
            pid,
        ).image

    def __getitem__(self, index: int):
        _, pid, camid = self.items[index]
        img = self.altered(index)
        if self.transform is not None:
            img = self.transform(img)
        return img, pid, camid, index
