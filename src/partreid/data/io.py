"""Image reading and the torch ``Dataset`` over ``(path, pid, camid)`` items.

Every failure names the file: an unreadable image is never silently dropped.

What :func:`read_image` does with each kind of file (every image comes out RGB, 8 bits):

* RGB, grayscale (``L``), 1-bit, palette (``P``, transparency dropped), ``RGBA``/``LA`` (alpha
  dropped), ``CMYK`` and ``YCbCr``: converted to RGB by Pillow;
* 16-bit grayscale (``I;16*``, ``I``): scaled to 8 bits (``value / 257``, 65535 -> 255), then
  grayscale -> RGB; 16-bit-per-channel colour PNGs are read by Pillow as 8-bit RGB;
  32-bit float (``F``): values in [0, 1] are scaled by 255, others clipped to [0, 255];
* an empty (0-byte), missing, truncated or non-image file: :class:`UnreadableImageError` naming
  the file. Raised inside a data loader worker, the error the main process sees still is an
  :class:`UnreadableImageError` whose one-line message (and ``.path``) names the file.
"""

from __future__ import annotations

import os
import re
from typing import Callable, List, Optional, Sequence, Tuple

import numpy as np
from PIL import Image
from torch.utils.data import Dataset

from ..errors import PartreidError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".pgm", ".tif", ".tiff", ".webp")

Item = Tuple[str, int, int]

_PATH_IN_MESSAGE = re.compile(r"(?:cannot read image|image not found:) (.+?)(?:: |$)")


class UnreadableImageError(PartreidError, RuntimeError):
    """Raised when one or more images cannot be opened or decoded; ``.path`` names the file.

    A DataLoader re-raises a worker's exception as ``type(exc)(text with the worker's
    traceback)``: that text is cut back to the original one-line message here, so the error
    reads the same from a worker process as from the main process.
    """

    def __init__(self, message: str, path: Optional[str] = None):
        worker = re.match(r"Caught \w+ in DataLoader (worker process \d+)", message)
        if worker:
            last = [ln for ln in message.strip().splitlines() if ln.strip()][-1]
            message = last.split("UnreadableImageError: ", 1)[-1] + f" (in data loader {worker[1]})"
        super().__init__(message)
        if path is None:
            m = _PATH_IN_MESSAGE.search(message)
            path = m.group(1) if m else None
        self.path = path


def _to_rgb8(img: Image.Image) -> Image.Image:
    """Any Pillow mode -> RGB with 8 bits per channel (see the module docstring)."""
    if img.mode == "RGB":
        return img.copy()
    if img.mode.startswith("I") or img.mode == "F":
        arr = np.asarray(img, dtype=np.float64)
        if img.mode == "F":
            arr = arr * 255.0 if arr.size and arr.max() <= 1.0 else arr
        else:
            arr = arr / 257.0
        gray = np.clip(np.rint(arr), 0, 255).astype(np.uint8)
        return Image.fromarray(gray, mode="L").convert("RGB")
    if img.mode == "P" and "transparency" in img.info:
        return img.convert("RGBA").convert("RGB")
    return img.convert("RGB")


def read_image(path: str) -> Image.Image:
    """Open ``path`` as an RGB 8-bit PIL image, or raise an error that names it."""
    if not os.path.exists(path):
        raise UnreadableImageError(f"image not found: {path}", path)
    try:
        if os.path.getsize(path) == 0:
            raise OSError("the file is empty (0 bytes)")
        with Image.open(path) as img:
            img.load()
            return _to_rgb8(img)
    except Exception as exc:  # PIL raises several types for corrupt files
        raise UnreadableImageError(
            f"cannot read image {path}: {exc}. To list every unreadable image of the data set at "
            "once, run with data.verify_images=true.",
            path,
        ) from exc


def find_unreadable(paths: Sequence[str]) -> List[Tuple[str, str]]:
    """Return ``(path, reason)`` for every image in ``paths`` that fails to decode fully."""
    bad = []
    for p in paths:
        try:
            if os.path.getsize(p) == 0:
                raise OSError("the file is empty (0 bytes)")
            with Image.open(p) as img:
                img.load()
        except Exception as exc:
            bad.append((p, str(exc) or type(exc).__name__))
    return bad


def check_images(paths: Sequence[str], what: str = "images") -> None:
    """Decode every image; raise one error that counts and lists the unreadable ones."""
    bad = find_unreadable(paths)
    if bad:
        shown = "\n".join(f"  {p}: {r}" for p, r in bad[:20])
        more = f"\n  ... and {len(bad) - 20} more" if len(bad) > 20 else ""
        raise UnreadableImageError(
            f"{len(bad)} of {len(paths)} {what} could not be read:\n{shown}{more}\n"
            "Remove or replace these files (or fix the list that names them) and run again."
        )


class ImageDataset(Dataset):
    """A list of ``(path, pid, camid)`` items; returns ``(image, pid, camid, index)``."""

    def __init__(self, items: Sequence[Item], transform: Optional[Callable] = None):
        self.items = list(items)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int):
        path, pid, camid = self.items[index]
        img = read_image(path)
        if self.transform is not None:
            img = self.transform(img)
        return img, pid, camid, index


def list_image_files(
    root: str, recursive: bool = True, limit: Optional[int] = None
) -> Tuple[List[str], int]:
    """The image files under ``root`` (by extension, sorted folder by folder; symlinked folders
    not followed) and the number of other files there: the one folder listing of partreid.
    With ``limit`` the walk stops once more than ``limit`` images are found."""
    found, other = [], 0
    for folder, dirs, files in os.walk(root):
        dirs.sort()
        for name in sorted(files):
            if name.lower().endswith(IMAGE_EXTENSIONS):
                found.append(os.path.join(folder, name))
            else:
                other += 1
        if not recursive or (limit is not None and len(found) > limit):
            break
    return found, other
