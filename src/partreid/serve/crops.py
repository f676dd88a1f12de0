"""The crop images of store hits: only crops the server itself returned, cut on demand.

A store hit names a file: an image crop, or a video with a frame number and a box. Results
register each hit's ``(path, frame, box)`` in a :class:`CropRegistry` under an unguessable id
(a keyed hash, stable for the server's life) and carry ``/api/store/crops/{id}``; the crop
route serves registered ids only, so no request can name a file. Video crops are decoded with
PyAV (seeking to the frame) and cropped; a few decoded frames and many encoded crops are kept
in LRU caches.
"""

from __future__ import annotations

import hashlib
import hmac
import io
import os
import secrets
import threading
from collections import OrderedDict
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Optional, Tuple

from PIL import Image

from ..data.io import IMAGE_EXTENSIONS
from .error_responses import RequestError

Box = Tuple[float, float, float, float]


class CropError(RequestError):
    """A crop that cannot be served; ``status`` is the HTTP status (404 unknown, 410 gone)."""


@dataclass(frozen=True)
class CropRef:
    """Where a returned crop is, and what it belongs to (to forget it on deletion)."""

    path: str
    frame: int
    box: Box
    camera: int
    timestamp: float
    tracklet: str


class CropRegistry:
    """Ids of the crops returned in results -> :class:`CropRef`; at most ``capacity`` (LRU)."""

    def __init__(self, capacity: int = 100_000):
        self.capacity = capacity
        self._key = secrets.token_bytes(16)
        self._refs: OrderedDict = OrderedDict()
        self._lock = threading.Lock()

    def register(self, ref: CropRef) -> str:
        """The id under which ``ref`` may now be fetched."""
        msg = f"{ref.path}\0{ref.frame}\0{ref.box}".encode("utf-8", "surrogateescape")
        cid = hmac.new(self._key, msg, hashlib.sha256).hexdigest()[:24]
        with self._lock:
            self._refs[cid] = ref
            self._refs.move_to_end(cid)
            while len(self._refs) > self.capacity:
                self._refs.popitem(last=False)
        return cid

    def get(self, cid: str) -> CropRef:
        """The crop of a returned id, else :class:`CropError` (404)."""
        with self._lock:
            ref = self._refs.get(cid)
        if ref is None:
            raise CropError(f"crop {cid!r}: no such crop among this server's results", 404)
        return ref

    def forget(self, before: Optional[float], camera: Optional[int], track: Optional[str]) -> int:
        """Drop the crops a deletion with these conditions removed; returns how many."""

        def gone(r: CropRef) -> bool:
            return (
                (before is None or r.timestamp < before)
                and (camera is None or r.camera == camera)
                and (track is None or r.tracklet == track)
            )

        with self._lock:
            drop = [k for k, r in self._refs.items() if gone(r)]
            for k in drop:
                del self._refs[k]
        return len(drop)

    def __len__(self) -> int:
        with self._lock:
            return len(self._refs)


def _has_box(box: Box) -> bool:
    return box[2] > box[0] and box[3] > box[1]


def _seek_frame(container: Any, stream: Any, frame_no: int) -> Optional[Image.Image]:
    """Frame ``frame_no`` (from 1) by seeking to the keyframe before it (constant rate)."""
    rate = float(stream.average_rate or 0)
    if rate <= 0 or stream.time_base is None:
        return None
    t0 = float(stream.start_time * stream.time_base) if stream.start_time is not None else 0.0
    target = t0 + (frame_no - 1) / rate
    container.seek(int(target / stream.time_base), stream=stream, backward=True, any_frame=False)
    for f in container.decode(stream):
        if f.pts is None:
            return None
        n = int(round((float(f.pts * stream.time_base) - t0) * rate)) + 1
        if n == frame_no:
            return f.to_image()
        if n > frame_no:
            return None
    return None


@lru_cache(maxsize=8)
def video_frame(path: str, frame_no: int) -> Image.Image:
    """Frame ``frame_no`` (counted from 1, as MOT files and ingest count) of a video, RGB."""
    try:
        import av
    except ImportError:
        raise CropError("video crops need PyAV: pip install 'partreid[video]'", 503) from None
    try:
        with av.open(path) as container:
            stream = container.streams.video[0]
            img = _seek_frame(container, stream, frame_no)
        if img is not None:
            return img
        with av.open(path) as container:  # no usable seek: decode from the start, as ingest
            for n, f in enumerate(container.decode(container.streams.video[0]), start=1):
                if n == frame_no:
                    return f.to_image()
    except (OSError, ValueError, IndexError) as exc:  # av errors derive from these
        raise CropError(f"cannot decode {os.path.basename(path)}: {exc}", 410) from None
    raise CropError(f"{os.path.basename(path)} has no frame {frame_no}", 410)


@lru_cache(maxsize=512)
def crop_jpeg(path: str, frame: int, box: Box) -> bytes:
    """The crop as JPEG bytes: a whole image file, its box, or a video frame's box."""
    if not os.path.isfile(path):
        raise CropError(f"the crop's file {os.path.basename(path)} is no longer there", 410)
    if path.lower().endswith(IMAGE_EXTENSIONS):
        try:
            with Image.open(path) as im:
                img = im.convert("RGB")
        except (OSError, ValueError) as exc:
            raise CropError(f"cannot read {os.path.basename(path)}: {exc}", 410) from None
    else:
        img = video_frame(path, int(frame))
    if _has_box(box):
        x1, y1, x2, y2 = (int(round(v)) for v in box)
        img = img.crop((max(0, x1), max(0, y1), min(img.width, x2), min(img.height, y2)))
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=90)
    return buf.getvalue()
