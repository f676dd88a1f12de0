"""Image reading and the torch ``Dataset`` over ``(path, pid, camid)`` items.

Every failure names the file: an unreadable image is never silently dropped.
"""

from __future__ import annotations

import os
from typing import Callable, List, Optional, Sequence, Tuple

from PIL import Image
from torch.utils.data import Dataset

Item = Tuple[str, int, int]


class UnreadableImageError(RuntimeError):
    """Raised when one or more images cannot be opened or decoded."""


def read_image(path: str) -> Image.Image:
    """Open ``path`` as an RGB PIL image, or raise an error that names it."""
    if not os.path.exists(path):
        raise UnreadableImageError(f"image not found: {path}")
    try:
        with Image.open(path) as img:
            return img.convert("RGB")
    except Exception as exc:  # PIL raises several types for corrupt files
        raise UnreadableImageError(
            f"cannot read image {path}: {exc}. To list every unreadable image of the data set at "
            "once, run with data.verify_images=true."
        ) from exc


def find_unreadable(paths: Sequence[str]) -> List[Tuple[str, str]]:
    """Return ``(path, reason)`` for every image in ``paths`` that fails to decode fully."""
    bad = []
    for p in paths:
        try:
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
