"""A procedurally drawn pedestrian data set in the Market-1501 layout (CPU only, seeded).

Each identity is a fixed outfit: skin tone, hair (style and colour, or a cap), a top with a
pattern (solid, stripes, checks, two-tone, open jacket, chest logo) and sleeve length, trousers /
shorts / a skirt, shoes, an optional bag (backpack, handbag, shoulder bag) and a body build. Each
camera has its own colour cast, brightness, contrast, blur, noise, resolution, background, shear,
person scale and preferred viewpoint (front / back / side: a logo or an open jacket is seen only
from the front, a backpack mostly from the back). Every image adds pose jitter (arm swing,
stride), box jitter (shift / scale), a random horizontal flip, background clutter, and, with
the given probabilities, an occluder (box, pole, sign or another person) or a cut-off body
(head or legs outside the box).

Output (``root``)::

    bounding_box_train/  query/  bounding_box_test/  synthetic.json

with names ``PPPP_cC_fFFFF.jpg`` (pid, camera 1..9, frame) readable by the Market-1501 parser.
Train and test identities are disjoint; per test identity and camera one image is a query and
the rest are gallery images; the gallery also holds distractors (pid 0, people seen nowhere
else) and junk (pid -1: empty or badly cut boxes). The same parameters and seed give
byte-identical files. ``synthetic.json`` records the parameters, so that
``build_dataset("synthetic", root, ...)`` reuses a folder made with the same ones and
regenerates it otherwise.

Command line: ``python -m partreid.data.datasets.synthetic OUT [--num-ids 100 ...]``.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import shutil
import time
from dataclasses import asdict, dataclass, fields, replace
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from .base import DatasetError, ReIDDataset, register_dataset
from .market1501 import GALLERY_DIR, QUERY_DIR, TRAIN_DIR, load_market_layout

logger = logging.getLogger("partreid.data")

GENERATOR_VERSION = 1
MARKER = "synthetic.json"
SUPERSAMPLE = 2  # draw at 2x and box-filter down: cheap anti-aliasing

Color = Tuple[int, int, int]

# Clothing colours: several pairs are close on purpose (navy/blue, red/maroon, white/beige,
# grey/light blue...), so that under a camera's colour cast they can be confused.
CLOTH: Tuple[Color, ...] = (
    (200, 30, 35),
    (130, 20, 50),
    (235, 120, 30),
    (230, 200, 40),
    (60, 150, 60),
    (30, 90, 40),
    (40, 170, 170),
    (40, 80, 190),
    (20, 30, 90),
    (110, 150, 210),
    (120, 60, 170),
    (220, 110, 170),
    (240, 240, 235),
    (200, 175, 130),
    (150, 150, 150),
    (60, 60, 62),
    (20, 20, 22),
    (130, 85, 50),
)
BOTTOM_IDX = (7, 8, 9, 13, 14, 15, 16, 17, 5, 1, 12)  # trousers lean to denim / dark / neutral
SKIN: Tuple[Color, ...] = (
    (255, 220, 190),
    (235, 190, 150),
    (200, 150, 110),
    (150, 100, 70),
    (95, 65, 45),
)
HAIR: Tuple[Color, ...] = (
    (20, 18, 18),
    (60, 40, 25),
    (110, 70, 40),
    (210, 180, 110),
    (160, 160, 160),
    (150, 60, 30),
)
SHOES: Tuple[Color, ...] = (
    (15, 15, 15),
    (240, 240, 240),
    (100, 70, 45),
    (60, 60, 90),
    (180, 40, 40),
)
PATTERNS = ("solid", "hstripes", "vstripes", "checks", "twotone", "jacket", "logo")
VIEWS = ("front", "back", "side")


def _rng(seed: int, *keys: int) -> np.random.Generator:
    """An independent generator per (seed, keys): images do not depend on generation order."""
    return np.random.default_rng(
        np.random.SeedSequence([int(seed) & 0xFFFFFFFF, *[k & 0xFFFFFFFF for k in keys]])
    )


def _jitter(rng: np.random.Generator, color: Color, amount: int = 14) -> Color:
    c = np.clip(np.asarray(color) + rng.integers(-amount, amount + 1, 3), 0, 255)
    return (int(c[0]), int(c[1]), int(c[2]))


# --------------------------------------------------------------------------------------------
# Identities and cameras
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Identity:
    """The outfit and build of one person (fixed across cameras and images)."""

    skin: Color
    hair: Color
    hair_style: str  # short, long, bald, cap
    cap: Color
    top: Color
    top2: Color
    pattern: str
    stripe: float  # stripe period as a fraction of the person height
    long_sleeves: bool
    bottom: Color
    bottom_type: str  # trousers, shorts, skirt
    shoes: Color
    bag: str  # none, backpack, handbag, shoulder
    bag_color: Color
    height: float
    width: float


def sample_identity(rng: np.random.Generator) -> Identity:
    """Draw a random outfit."""
    top_i, top2_i = rng.choice(len(CLOTH), 2, replace=False)
    bottom_i = BOTTOM_IDX[rng.integers(len(BOTTOM_IDX))]
    return Identity(
        skin=_jitter(rng, SKIN[rng.integers(len(SKIN))], 8),
        hair=_jitter(rng, HAIR[rng.integers(len(HAIR))], 10),
        hair_style=str(rng.choice(["short", "long", "bald", "cap"], p=[0.45, 0.3, 0.1, 0.15])),
        cap=_jitter(rng, CLOTH[rng.integers(len(CLOTH))]),
        top=_jitter(rng, CLOTH[top_i]),
        top2=_jitter(rng, CLOTH[top2_i]),
        pattern=str(rng.choice(PATTERNS, p=[0.3, 0.14, 0.1, 0.1, 0.12, 0.12, 0.12])),
        stripe=float(rng.uniform(0.035, 0.07)),
        long_sleeves=bool(rng.random() < 0.55),
        bottom=_jitter(rng, CLOTH[bottom_i]),
        bottom_type=str(rng.choice(["trousers", "shorts", "skirt"], p=[0.7, 0.15, 0.15])),
        shoes=_jitter(rng, SHOES[rng.integers(len(SHOES))], 10),
        bag=str(
            rng.choice(["none", "backpack", "handbag", "shoulder"], p=[0.45, 0.25, 0.15, 0.15])
        ),
        bag_color=_jitter(rng, CLOTH[rng.integers(len(CLOTH))]),
        height=float(rng.uniform(0.88, 1.0)),
        width=float(rng.uniform(0.85, 1.15)),
    )


@dataclass(frozen=True)
class Camera:
    """What one camera does to every image it takes."""

    gain: Tuple[float, float, float]
    brightness: float
    contrast: float
    blur: float
    noise: float
    lowres: float
    shear: float
    scale: float
    view_p: Tuple[float, float, float]
    wall: Color
    floor: Color
    horizon: float


def sample_camera(rng: np.random.Generator, index: int) -> Camera:
    """Draw a camera; its preferred viewpoint cycles front, back, side with the index."""
    view_p = [0.2, 0.2, 0.2]
    view_p[index % 3] = 0.6
    gain = np.exp(rng.normal(0.0, 0.13, 3))
    return Camera(
        gain=tuple(float(g) for g in gain / gain.mean() * rng.uniform(0.9, 1.1)),
        brightness=float(rng.uniform(-25, 25)),
        contrast=float(rng.uniform(0.75, 1.15)),
        blur=float(rng.choice([0.0, 0.5, 0.9])),
        noise=float(rng.uniform(2, 7)),
        lowres=float(rng.choice([1.0, 1.0, 1.6, 2.2])),
        shear=float(rng.uniform(-0.1, 0.1)),
        scale=float(rng.uniform(0.8, 0.92)),
        view_p=tuple(view_p),
        wall=tuple(int(v) for v in rng.integers(60, 200, 3)),
        floor=tuple(int(v) for v in rng.integers(40, 170, 3)),
        horizon=float(rng.uniform(0.5, 0.8)),
    )


# --------------------------------------------------------------------------------------------
# Drawing
# --------------------------------------------------------------------------------------------
def _background(cam: Camera, rng: np.random.Generator, h: int, w: int) -> Image.Image:
    """Wall / floor gradient of the camera's scene, shifted per image, plus random clutter."""
    y = np.arange(h, dtype=np.float32)[:, None] / h
    horizon = cam.horizon + rng.uniform(-0.06, 0.06)
    wall = np.asarray(cam.wall, np.float32) * (0.85 + 0.3 * y[..., None])
    floor = np.asarray(cam.floor, np.float32) * (1.1 - 0.3 * (y[..., None] - horizon))
    arr = np.where((y < horizon)[..., None], wall, floor)
    arr = np.broadcast_to(arr, (h, w, 3)) + rng.uniform(-12, 12, 3).astype(np.float32)
    img = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(img)
    for _ in range(int(rng.integers(2, 6))):
        color = tuple(int(v) for v in rng.integers(30, 220, 3))
        x0, y0 = rng.uniform(-0.2, 1.0) * w, rng.uniform(-0.1, 1.0) * h
        x1, y1 = x0 + rng.uniform(0.1, 0.6) * w, y0 + rng.uniform(0.05, 0.5) * h
        shape = rng.integers(3)
        if shape == 0:
            draw.rectangle([x0, y0, x1, y1], fill=color)
        elif shape == 1:
            draw.ellipse([x0, y0, x1, y1], fill=color)
        else:
            draw.line([x0, y0, x1, y1], fill=color, width=int(rng.integers(2, 8)))
    return img


class _Body:
    """Maps person-relative coordinates (units of the person height, x from the body axis,
    y from the top of the head) to pixels, with the camera's shear."""

    def __init__(self, cx: float, top: float, height: float, shear: float):
        self.cx, self.top, self.u, self.shear = cx, top, height, shear

    def p(self, x: float, y: float) -> Tuple[float, float]:
        py = self.top + y * self.u
        return self.cx + x * self.u + self.shear * (py - (self.top + 0.5 * self.u)), py

    def box(self, x: float, y: float, rx: float, ry: float) -> List[float]:
        cx, cy = self.p(x, y)
        return [cx - rx * self.u, cy - ry * self.u, cx + rx * self.u, cy + ry * self.u]

    def width(self, v: float) -> int:
        return max(1, int(round(v * self.u)))


def _limb(
    draw: ImageDraw.ImageDraw,
    b: _Body,
    start,
    angle: float,
    length: float,
    width: float,
    colors: Sequence[Tuple[float, Color]],
) -> Tuple[float, float]:
    """Draw a limb from ``start`` at ``angle`` (radians from straight down) in segments
    ``(fraction of length, colour)``; return its end point (person units)."""
    x, y = start
    dx, dy = math.sin(angle) * length, math.cos(angle) * length
    done = 0.0
    for frac, color in colors:
        a = (x + dx * done, y + dy * done)
        done = min(1.0, done + frac)
        e = (x + dx * done, y + dy * done)
        draw.line([b.p(*a), b.p(*e)], fill=color, width=b.width(width))
        r = width / 2
        draw.ellipse(b.box(e[0], e[1], r, r), fill=color)  # round joint
    return x + dx, y + dy


def _torso(img: Image.Image, b: _Body, ident: Identity, view: str, sw: float, hw: float) -> None:
    """Torso polygon filled with the identity's pattern (view-dependent for jacket and logo)."""
    pts = [b.p(-sw, 0.15), b.p(sw, 0.15), b.p(hw, 0.5), b.p(-hw, 0.5)]
    draw = ImageDraw.Draw(img)
    pattern = ident.pattern
    if pattern in ("jacket", "logo") and view != "front":
        pattern = "solid"
    if pattern == "solid" or pattern == "logo":
        draw.polygon(pts, fill=ident.top)
        if pattern == "logo":
            draw.ellipse(b.box(0.0, 0.27, 0.045, 0.04), fill=ident.top2)
        return
    layer = Image.new("RGB", img.size, ident.top)
    ld = ImageDraw.Draw(layer)
    period = max(2.0, ident.stripe * b.u)
    x0, y0 = b.p(-0.3, 0.15)
    x1, y1 = b.p(0.3, 0.5)
    x0, x1 = min(x0, x1) - b.u * 0.2, max(x0, x1) + b.u * 0.2
    if pattern in ("hstripes", "checks"):
        for yy in np.arange(y0, y1, period):
            ld.rectangle([x0, yy, x1, yy + period / 2], fill=ident.top2)
    if pattern in ("vstripes", "checks"):
        for xx in np.arange(x0, x1, period):
            ld.rectangle(
                [xx, y0, xx + period / 2, y1],
                fill=ident.top2 if pattern == "vstripes" else ident.top,
            )
    if pattern == "twotone":
        ld.rectangle([x0, y0 + 0.5 * (y1 - y0), x1, y1], fill=ident.top2)
    if pattern == "jacket":
        ld.polygon(
            [b.p(-0.035, 0.15), b.p(0.035, 0.15), b.p(0.035, 0.5), b.p(-0.035, 0.5)],
            fill=ident.top2,
        )
    mask = Image.new("L", img.size, 0)
    ImageDraw.Draw(mask).polygon(pts, fill=255)
    img.paste(layer, (0, 0), mask)


def draw_person(
    img: Image.Image, ident: Identity, view: str, b: _Body, rng: np.random.Generator
) -> None:
    """Draw one pedestrian (legs, bag, torso, arms, head) with a random pose."""
    side = view == "side"
    sw = (0.075 if side else 0.12) * ident.width  # shoulder half-width
    hw = (0.07 if side else 0.1) * ident.width  # hip half-width
    stride = rng.uniform(0.05, 0.35) * (1.6 if side else 1.0)
    swing = rng.uniform(0.05, 0.45)
    draw = ImageDraw.Draw(img)
    _legs(draw, b, ident, side, hw, stride)
    _behind_torso(draw, b, ident, view, sw)
    _torso(img, b, ident, view, sw, hw)
    draw = ImageDraw.Draw(img)
    _bag_over_torso(draw, b, ident, view, sw, hw)
    _arms(draw, b, ident, side, sw, swing, rng)
    _head(draw, b, ident, view)


def _legs(
    draw: ImageDraw.ImageDraw, b: _Body, ident: Identity, side: bool, hw: float, stride: float
) -> None:
    """Legs in trousers / shorts / a skirt, then shoes, and the hips or the skirt on top."""
    leg_len, leg_w = 0.45, 0.075
    if ident.bottom_type == "trousers":
        segs = [(1.0, ident.bottom)]
    elif ident.bottom_type == "shorts":
        segs = [(0.45, ident.bottom), (0.55, ident.skin)]
    else:
        segs = [(1.0, ident.skin)]
    for sign in (-1, 1):
        hip = (sign * (0.02 if side else 0.05) * ident.width, 0.5)
        foot = _limb(draw, b, hip, sign * stride * 0.6, leg_len, leg_w, segs)
        draw.ellipse(
            b.box(foot[0] + (0.02 if side else 0.0), foot[1] + 0.01, 0.045, 0.022), fill=ident.shoes
        )
    if ident.bottom_type == "skirt":
        draw.polygon(
            [b.p(-hw, 0.48), b.p(hw, 0.48), b.p(hw * 1.5, 0.72), b.p(-hw * 1.5, 0.72)],
            fill=ident.bottom,
        )
    else:
        draw.polygon(
            [b.p(-hw, 0.48), b.p(hw, 0.48), b.p(hw * 0.9, 0.56), b.p(-hw * 0.9, 0.56)],
            fill=ident.bottom,
        )


def _behind_torso(
    draw: ImageDraw.ImageDraw, b: _Body, ident: Identity, view: str, sw: float
) -> None:
    """What the torso hides in part: a backpack seen from the side, long hair from the front."""
    if ident.bag == "backpack" and view == "side":
        draw.rounded_rectangle(
            b.box(-sw - 0.04, 0.3, 0.055, 0.12), radius=b.width(0.02), fill=ident.bag_color
        )
    if ident.hair_style == "long" and view == "front":
        draw.rectangle(b.box(0.0, 0.12, 0.065, 0.05), fill=ident.hair)  # hair falling behind


def _bag_over_torso(
    draw: ImageDraw.ImageDraw, b: _Body, ident: Identity, view: str, sw: float, hw: float
) -> None:
    """A backpack from the back (or its straps from the front), a shoulder bag and its strap."""
    if ident.bag == "backpack":
        if view == "back":
            draw.rounded_rectangle(
                b.box(0.0, 0.3, sw * 0.75, 0.12), radius=b.width(0.025), fill=ident.bag_color
            )
        elif view == "front":
            for sign in (-1, 1):
                draw.line(
                    [b.p(sign * sw * 0.55, 0.15), b.p(sign * sw * 0.6, 0.36)],
                    fill=ident.bag_color,
                    width=b.width(0.018),
                )
    if ident.bag == "shoulder":
        draw.line([b.p(-sw * 0.8, 0.16), b.p(hw, 0.47)], fill=ident.bag_color, width=b.width(0.018))
        draw.rectangle(b.box(hw + 0.02, 0.5, 0.045, 0.04), fill=ident.bag_color)


def _arms(
    draw: ImageDraw.ImageDraw,
    b: _Body,
    ident: Identity,
    side: bool,
    sw: float,
    swing: float,
    rng: np.random.Generator,
) -> None:
    """Arms with sleeves in the top colour (short sleeves show skin), hands, a handbag."""
    arm_segs = [(1.0, ident.top)] if ident.long_sleeves else [(0.38, ident.top), (0.62, ident.skin)]
    signs = (1,) if side else (-1, 1)
    for sign in signs:
        if side:  # the near arm, swinging forward or back
            shoulder, angle = (0.0, 0.17), swing - 0.2
        else:  # both arms, a little away from the body
            shoulder, angle = (
                (sign * (sw - 0.02), 0.17),
                sign * (rng.uniform(0.08, 0.2) + 0.4 * swing),
            )
        hand = _limb(draw, b, shoulder, angle, 0.33, 0.055, arm_segs)
        draw.ellipse(b.box(hand[0], hand[1], 0.028, 0.028), fill=ident.skin)
        if ident.bag == "handbag" and sign == signs[-1]:
            draw.rectangle(b.box(hand[0], hand[1] + 0.06, 0.05, 0.05), fill=ident.bag_color)


def _head(draw: ImageDraw.ImageDraw, b: _Body, ident: Identity, view: str) -> None:
    """The head: face from the front and side, hair from the back, or a cap."""
    side = view == "side"
    head = b.box(0.0 if not side else 0.01, 0.075, 0.05, 0.065)
    if ident.hair_style == "long" and view != "front":
        draw.rectangle(b.box(0.0, 0.12, 0.058, 0.06), fill=ident.hair)
    draw.ellipse(head, fill=ident.skin)
    if ident.hair_style in ("short", "long"):
        if view == "back":
            draw.ellipse(head, fill=ident.hair)
        else:
            draw.chord(head, 180, 360, fill=ident.hair)
    elif ident.hair_style == "cap":
        draw.chord(b.box(0.0, 0.07, 0.055, 0.06), 180, 360, fill=ident.cap)
        if view != "back":
            draw.rectangle(
                b.box(0.03 if side else 0.0, 0.07, 0.05 if side else 0.06, 0.008), fill=ident.cap
            )


def _occluder(
    draw: ImageDraw.ImageDraw, rng: np.random.Generator, b: _Body, h: int, w: int
) -> None:
    """Something between the camera and the person: a box, a pole, a sign or another person."""
    kind = int(rng.integers(4))
    color = tuple(int(v) for v in rng.integers(20, 235, 3))
    if kind == 0:  # low box (car, bench, bin) hiding the legs
        top = b.top + rng.uniform(0.45, 0.75) * b.u
        draw.rectangle([rng.uniform(-0.3, 0.2) * w, top, rng.uniform(0.8, 1.3) * w, h], fill=color)
        draw.line(
            [0, top + 0.05 * h, w, top + 0.05 * h],
            fill=tuple(c // 2 for c in color),
            width=max(1, h // 60),
        )
    elif kind == 1:  # pole / tree trunk
        x = b.cx + rng.uniform(-0.15, 0.15) * w
        half = rng.uniform(0.07, 0.15) * w
        draw.rectangle([x - half, 0, x + half, h], fill=color)
    elif kind == 2:  # sign / board hiding the upper body from one side
        left = rng.random() < 0.5
        edge = b.cx + (-1 if left else 1) * rng.uniform(-0.05, 0.15) * w
        y0 = b.top + rng.uniform(0.05, 0.35) * b.u
        box = (
            [-1, y0, edge, y0 + rng.uniform(0.25, 0.5) * b.u]
            if left
            else [edge, y0, w + 1, y0 + rng.uniform(0.25, 0.5) * b.u]
        )
        draw.rectangle(box, fill=color)
    else:  # another pedestrian passing in front
        sign = -1 if rng.random() < 0.5 else 1
        ox = b.cx + sign * rng.uniform(0.25, 0.45) * w
        oy = b.top + rng.uniform(0.0, 0.15) * b.u
        u = b.u * rng.uniform(0.95, 1.15)
        draw.ellipse(
            [ox - 0.055 * u, oy, ox + 0.055 * u, oy + 0.13 * u],
            fill=tuple(int(v) for v in rng.integers(90, 255, 3)),
        )
        draw.rectangle([ox - 0.14 * u, oy + 0.15 * u, ox + 0.14 * u, oy + 0.55 * u], fill=color)
        draw.rectangle(
            [ox - 0.1 * u, oy + 0.55 * u, ox + 0.1 * u, oy + 1.0 * u],
            fill=tuple(int(v) for v in rng.integers(10, 160, 3)),
        )


def _camera_effects(img: Image.Image, cam: Camera, rng: np.random.Generator) -> Image.Image:
    """Resolution loss, blur, contrast/brightness, colour cast, illumination gradient, noise."""
    w, h = img.size
    if cam.lowres > 1.0:
        small = (max(8, int(w / cam.lowres)), max(8, int(h / cam.lowres)))
        img = img.resize(small, Image.BILINEAR).resize((w, h), Image.BILINEAR)
    if cam.blur > 0:
        img = img.filter(ImageFilter.GaussianBlur(cam.blur))
    arr = np.asarray(img, dtype=np.float32)
    light = 1.0 + rng.uniform(-0.15, 0.15) * np.linspace(-1, 1, h, dtype=np.float32)[:, None, None]
    gain = np.asarray(cam.gain, np.float32) * rng.uniform(0.9, 1.1)
    arr = ((arr - 128.0) * cam.contrast + 128.0 + cam.brightness) * gain * light
    arr += rng.normal(0.0, cam.noise, arr.shape).astype(np.float32)
    return Image.fromarray(np.clip(arr + 0.5, 0, 255).astype(np.uint8))


def render_image(
    ident: Optional[Identity],
    cam: Camera,
    rng: np.random.Generator,
    height: int,
    width: int,
    occlusion: float,
    cutoff: float,
    junk: bool = False,
) -> Image.Image:
    """One ``height x width`` crop of ``ident`` seen by ``cam`` (``ident=None``: background only).

    ``junk=True`` draws a badly cut box (only the legs or a sliver of the person).
    """
    h, w = height * SUPERSAMPLE, width * SUPERSAMPLE
    img = _background(cam, rng, h, w)
    if ident is not None:
        u = h * cam.scale * ident.height * rng.uniform(0.94, 1.06)
        top = (h - u) / 2 + rng.uniform(-0.04, 0.04) * h
        cx = w / 2 + rng.uniform(-0.08, 0.08) * w
        if junk:
            top -= rng.uniform(0.55, 0.7) * u
            cx += (-1 if rng.random() < 0.5 else 1) * rng.uniform(0.0, 0.35) * w
        elif rng.random() < cutoff:
            top += (
                -rng.uniform(0.15, 0.3) * u if rng.random() < 0.5 else rng.uniform(0.18, 0.35) * u
            )
        view = VIEWS[int(rng.choice(3, p=cam.view_p))]
        body = _Body(cx, top, u, cam.shear + rng.uniform(-0.03, 0.03))
        draw_person(img, ident, view, body, rng)
        if not junk and rng.random() < occlusion:
            _occluder(ImageDraw.Draw(img), rng, body, h, w)
    if rng.random() < 0.5:
        img = img.transpose(Image.FLIP_LEFT_RIGHT)
    img = img.reduce(SUPERSAMPLE)
    return _camera_effects(img, cam, rng)


# --------------------------------------------------------------------------------------------
# The data set
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class SyntheticParams:
    """What a synthetic set is made from (``synthetic.json`` records it); see
    :func:`generate_synthetic` for the meaning of each field."""

    num_ids: int = 100
    test_fraction: float = 0.4
    num_cams: int = 4
    images_per_id_per_cam: int = 3
    cams_per_id: Optional[int] = None
    seed: int = 0
    height: int = 128
    width: int = 64
    occlusion: float = 0.15
    cutoff: float = 0.08
    num_distractors: int = 20
    num_junk: int = 10
    quality: int = 90

    def record(self) -> Dict[str, object]:
        """The parameters as the marker file stores them (JSON values), for comparison."""
        return json.loads(json.dumps(asdict(self)))

    def check(self) -> int:
        """Validate the parameters; return the number of test identities."""
        if not 2 <= self.num_cams <= 9:
            raise DatasetError(
                f"num_cams must be in 2..9 (one digit in the file names), got {self.num_cams}"
            )
        if self.cams_per_id is not None and not 2 <= self.cams_per_id <= self.num_cams:
            raise DatasetError(
                f"cams_per_id must be in 2..num_cams={self.num_cams} or None, "
                f"got {self.cams_per_id}"
            )
        if self.images_per_id_per_cam < 2:
            raise DatasetError(
                "images_per_id_per_cam must be >= 2 (one query + gallery), "
                f"got {self.images_per_id_per_cam}"
            )
        if not 0 <= self.test_fraction <= 1:
            raise DatasetError(f"test_fraction must be in [0, 1], got {self.test_fraction}")
        num_test = int(round(self.num_ids * self.test_fraction))
        if self.num_ids < 2 or self.num_ids - num_test < 1 or num_test < 1 or self.num_ids > 9999:
            raise DatasetError(
                f"num_ids={self.num_ids} with test_fraction={self.test_fraction} must leave at "
                "least one train and one test identity (and num_ids <= 9999)"
            )
        if self.height < 16 or self.width < 8:
            raise DatasetError(
                f"image size {self.height}x{self.width} (h x w) is too small; use at least 16x8"
            )
        for name, p in (("occlusion", self.occlusion), ("cutoff", self.cutoff)):
            if not 0 <= p <= 1:
                raise DatasetError(f"{name} is a probability in [0, 1], got {p}")
        if self.num_distractors < 0 or self.num_junk < 0 or not 1 <= self.quality <= 100:
            raise DatasetError("num_distractors and num_junk must be >= 0 and quality in 1..100")
        return num_test


class _SplitFolders:
    """The three Market-layout folders of a new set: writes crops into them and counts them."""

    def __init__(self, root: str, quality: int):
        self.dirs = {s: os.path.join(root, s) for s in (TRAIN_DIR, QUERY_DIR, GALLERY_DIR)}
        for d in self.dirs.values():
            os.makedirs(d)
        self.quality = quality
        self.counts = {TRAIN_DIR: 0, QUERY_DIR: 0, GALLERY_DIR: 0}

    def save(self, img: Image.Image, subset: str, name: str) -> None:
        img.save(os.path.join(self.dirs[subset], name), quality=self.quality)
        self.counts[subset] += 1


def _file_name(pid: int, cam: int, frame: int) -> str:
    """``PPPP_cC_fFFFF.jpg`` (camera 0-based here, 1-based in the name)."""
    return f"{pid:04d}_c{cam + 1}_f{frame:04d}.jpg"


def _identity_cameras(p: SyntheticParams, pid: int) -> List[int]:
    """The cameras that see identity ``pid`` (``cams_per_id`` of them, or all), sorted."""
    pick = _rng(p.seed, 4, pid)
    return sorted(pick.choice(p.num_cams, p.cams_per_id or p.num_cams, replace=False).tolist())


def _write_identities(
    out: _SplitFolders, p: SyntheticParams, cams: Sequence[Camera], num_train: int
) -> None:
    """Every identity's images: train ids into train; per test id and camera one query, the
    rest gallery."""
    order = _rng(p.seed, 2)  # which image of a test identity and camera is the query
    for pid in range(1, p.num_ids + 1):
        ident = sample_identity(_rng(p.seed, 3, pid))
        is_test = pid > num_train
        for cam in _identity_cameras(p, pid):
            query_k = int(order.integers(p.images_per_id_per_cam)) if is_test else -1
            for k in range(p.images_per_id_per_cam):
                rng = _rng(p.seed, 5, pid, cam, k)
                img = render_image(ident, cams[cam], rng, p.height, p.width, p.occlusion, p.cutoff)
                subset = TRAIN_DIR if not is_test else (QUERY_DIR if k == query_k else GALLERY_DIR)
                out.save(img, subset, _file_name(pid, cam, k))


def _write_distractors(out: _SplitFolders, p: SyntheticParams, cams: Sequence[Camera]) -> None:
    """pid 0: people seen once, in the gallery only."""
    for k in range(p.num_distractors):
        rng = _rng(p.seed, 6, k)
        cam = int(rng.integers(p.num_cams))
        ident = sample_identity(rng)
        img = render_image(ident, cams[cam], rng, p.height, p.width, p.occlusion, p.cutoff)
        out.save(img, GALLERY_DIR, _file_name(0, cam, k))


def _write_junk(out: _SplitFolders, p: SyntheticParams, cams: Sequence[Camera]) -> None:
    """pid -1: background only or a badly cut box, in the gallery."""
    for k in range(p.num_junk):
        rng = _rng(p.seed, 7, k)
        cam = int(rng.integers(p.num_cams))
        ident = sample_identity(rng) if rng.random() < 0.6 else None
        img = render_image(ident, cams[cam], rng, p.height, p.width, 0.0, 0.0, junk=True)
        out.save(img, GALLERY_DIR, f"-1_c{cam + 1}_f{k:04d}.jpg")


def _write_marker(
    root: str, p: SyntheticParams, num_train: int, counts: Dict[str, int]
) -> Dict[str, object]:
    """Write ``synthetic.json`` (last: it marks a complete set); return what it holds."""
    meta = {
        "generator": "partreid.data.datasets.synthetic",
        "version": GENERATOR_VERSION,
        "params": p.record(),
        "train_ids": list(range(1, num_train + 1)),
        "test_ids": list(range(num_train + 1, p.num_ids + 1)),
        "counts": counts,
    }
    with open(os.path.join(root, MARKER), "w", encoding="utf-8") as f:
        json.dump(meta, f, indent=1)
    return meta


def generate_synthetic(
    root: str | os.PathLike[str], params: Optional[SyntheticParams] = None, **options: object
) -> Dict[str, object]:
    """Write a synthetic Market-1501-layout data set into ``root``; return its metadata.

    ``params`` (default :class:`SyntheticParams`) with ``options`` (any of its fields, e.g.
    ``num_ids=8``) replaced. ``num_ids`` identities (pids 1..num_ids),
    ``round(num_ids * test_fraction)`` of them (the highest pids) for test. Each identity is
    seen by ``cams_per_id`` random cameras (``None``: all ``num_cams``),
    ``images_per_id_per_cam`` images each. ``occlusion`` / ``cutoff`` are the per-image
    probabilities of an occluder / of losing the head or legs out of the box. Images are
    ``height x width`` JPEGs at ``quality``. An existing ``root`` is replaced only if it holds
    a previous synthetic set (its ``synthetic.json``) or is empty.
    """
    p = replace(params or SyntheticParams(), **options)
    num_train = p.num_ids - p.check()
    root = os.fspath(root)
    _prepare_root(root)
    start = time.perf_counter()
    cams = [sample_camera(_rng(p.seed, 1, c), c) for c in range(p.num_cams)]
    out = _SplitFolders(root, p.quality)
    _write_identities(out, p, cams, num_train)
    _write_distractors(out, p, cams)
    _write_junk(out, p, cams)
    seconds = time.perf_counter() - start
    meta = _write_marker(root, p, num_train, out.counts)
    total = sum(out.counts.values())
    logger.info("generated %d synthetic images in %s in %.2f s", total, root, seconds)
    return {**meta, "seconds": seconds}


def _prepare_root(root: str) -> None:
    """Make ``root`` ready for a fresh set: remove a previous synthetic set, refuse anything else."""
    if os.path.isdir(root) and os.listdir(root):
        if not os.path.exists(os.path.join(root, MARKER)) and not _is_partial_synthetic(root):
            raise DatasetError(
                f"{root} is not empty and holds no {MARKER}: it does not look like a synthetic set "
                "made by partreid, so it is left alone; choose an empty or a new folder"
            )
        for name in (MARKER, TRAIN_DIR, QUERY_DIR, GALLERY_DIR):
            path = os.path.join(root, name)
            if os.path.isdir(path):
                shutil.rmtree(path)
            elif os.path.exists(path):
                os.remove(path)
    os.makedirs(root, exist_ok=True)


def _is_partial_synthetic(root: str) -> bool:
    """An interrupted generation: only our three folders, holding only our file names."""
    entries = set(os.listdir(root))
    if not entries <= {TRAIN_DIR, QUERY_DIR, GALLERY_DIR}:
        return False
    return all(
        n.endswith(".jpg") and "_c" in n and "_f" in n
        for d in entries
        for n in os.listdir(os.path.join(root, d))
    )


def read_marker(root: str) -> Optional[Dict[str, object]]:
    """The metadata of the synthetic set in ``root``, or None when there is none (or unreadable)."""
    try:
        with open(os.path.join(root, MARKER), encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def load_synthetic(
    root: str,
    *,
    num_ids: int = 100,
    test_fraction: float = 0.4,
    num_cams: int = 4,
    images_per_id_per_cam: int = 3,
    cams_per_id: Optional[int] = None,
    seed: int = 0,
    height: int = 128,
    width: int = 64,
    occlusion: float = 0.15,
    cutoff: float = 0.08,
    num_distractors: int = 20,
    num_junk: int = 10,
    quality: int = 90,
    carve_val: Optional[int] = None,
    train_only: bool = False,
) -> ReIDDataset:
    """Synthetic pedestrians; generated into ``root`` unless it holds a set made with these options."""
    params = SyntheticParams(
        num_ids=num_ids,
        test_fraction=test_fraction,
        num_cams=num_cams,
        images_per_id_per_cam=images_per_id_per_cam,
        cams_per_id=cams_per_id,
        seed=seed,
        height=height,
        width=width,
        occlusion=occlusion,
        cutoff=cutoff,
        num_distractors=num_distractors,
        num_junk=num_junk,
        quality=quality,
    )
    meta = read_marker(root)
    notes = []
    if meta and meta.get("version") == GENERATOR_VERSION and meta.get("params") == params.record():
        notes.append(f"reused the synthetic set in {root} ({MARKER} matches)")
    else:
        why = "no synthetic set there yet" if meta is None else "its parameters differ"
        logger.info("generating a synthetic data set in %s (%s)", root, why)
        info = generate_synthetic(root, params)
        notes.append(f"generated into {root} in {info['seconds']:.1f} s (seed {seed})")
    ds = load_market_layout(
        root,
        name="synthetic",
        title="synthetic data set",
        candidates=(),
        carve_val=carve_val,
        seed=seed,
        train_only=train_only,
        name_example="0001_c1_f0000.jpg",
        notes=notes,
    )
    return ds


if __name__ != "__main__":  # under ``python -m`` the package has registered it already
    register_dataset("synthetic", load_synthetic)


def main(argv: Optional[List[str]] = None) -> None:
    """``python -m partreid.data.datasets.synthetic OUT [options]``: generate and summarise."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("out", help="output folder (empty, new, or a previous synthetic set)")
    for f in fields(SyntheticParams):
        kind = float if isinstance(f.default, float) else int
        parser.add_argument(
            "--" + f.name.replace("_", "-"),
            type=kind,
            default=f.default,
            help=f"default {f.default}",
        )
    args = vars(parser.parse_args(argv))
    out = args.pop("out")
    info = generate_synthetic(out, SyntheticParams(**args))
    counts = info["counts"]
    print(f"wrote {sum(counts.values())} images to {out} in {info['seconds']:.2f} s: {counts}")


if __name__ == "__main__":
    main()
