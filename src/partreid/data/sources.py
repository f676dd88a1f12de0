"""What ``partreid extract`` and ``partreid ingest`` read: a folder of crops, a manifest CSV,
one image, or a video plus a MOT box file. Each becomes a :class:`Source`: per-item columns (path, pid, camid, frame,
track id, box) and a torch dataset that yields ``(tensor or None, index, error)`` per item, so
an unreadable item is named and counted instead of stopping the run.

Folder crops named like Market-1501 (``0002_c1s1_000451_03.jpg``) get their pid and 0-based
camid from the name, as the data sets do; other folders get -1. A manifest gives them in its
``pid`` and ``camid`` (or ``camera``) columns, with track ids, frames and times where it has
them (:mod:`partreid.data.list_files`). Video crops carry their frame (1-based, as in MOT), track id and
box (clipped to the frame).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset, IterableDataset, get_worker_info

from ..errors import MissingExtraError, NotFoundError, PartreidError
from .io import IMAGE_EXTENSIONS, list_image_files
from .list_files import read_manifest_rows, shown_lines
from .names import market_labels

log = logging.getLogger("partreid")

VIDEO_EXTENSIONS = (".mp4", ".avi", ".mkv", ".mov", ".webm", ".mpg", ".mpeg", ".m4v", ".wmv")


class SourceError(PartreidError, ValueError):
    """An extract input that cannot be used (empty folder, unknown file type, bad box file...)."""


@dataclass
class Source:
    """The items of one extract input, in output order, and how to load them."""

    kind: str  # "folder" | "manifest" | "image" | "video"
    location: str
    paths: List[str]
    pids: np.ndarray
    camids: np.ndarray
    frames: np.ndarray
    track_ids: np.ndarray
    boxes: np.ndarray  # (N, 4) float32 x, y, w, h; NaN for images
    notes: Dict[str, object] = field(default_factory=dict)
    timestamps: Optional[np.ndarray] = None  # float64 epoch seconds: a manifest's column
    cameras: Optional[np.ndarray] = None  # int64 camera numbers: a manifest's camera column

    def __len__(self) -> int:
        return len(self.paths)

    def dataset(self, transform: Callable, start: int = 0, stop: Optional[int] = None) -> Dataset:
        """A dataset over items ``start..stop`` yielding ``(tensor | None, index, error)``."""
        stop = len(self) if stop is None else stop
        if self.kind == "video":
            return VideoCrops(self, transform, start, stop)
        return ImageFiles(self.paths, transform, start, stop)


# --------------------------------------------------------------------------------------------
# images
# --------------------------------------------------------------------------------------------
def _load_image(path: str, transform: Callable):
    try:
        with Image.open(path) as img:
            return transform(img.convert("RGB")), ""
    except Exception as exc:  # PIL raises several types for corrupt or foreign files
        return None, f"{type(exc).__name__}: {exc}"


class ImageFiles(Dataset):
    """Image files ``paths[start:stop]``; an unreadable one yields ``None`` and its error."""

    def __init__(self, paths: Sequence[str], transform: Callable, start: int, stop: int):
        self.paths = paths
        self.transform = transform
        self.start = start
        self.stop = stop

    def __len__(self) -> int:
        return self.stop - self.start

    def __getitem__(self, i: int):
        index = self.start + i
        tensor, error = _load_image(self.paths[index], self.transform)
        return tensor, index, error


def _image_source(kind: str, location: str, paths: List[str], pids=None, camids=None) -> Source:
    n = len(paths)
    unknown = np.full(n, -1, np.int64)
    return Source(
        kind=kind,
        location=location,
        paths=paths,
        pids=unknown.copy() if pids is None else np.asarray(pids, np.int64),
        camids=unknown.copy() if camids is None else np.asarray(camids, np.int64),
        frames=unknown.copy(),
        track_ids=unknown.copy(),
        boxes=np.full((n, 4), np.nan, np.float32),
    )


def folder_source(root: str) -> Source:
    """Every image under ``root``; pid/camid from Market-style names when all names have them."""
    paths, other = list_image_files(root)
    if not paths:
        raise SourceError(
            f"no images found under {root} (searched recursively for "
            f"{', '.join(IMAGE_EXTENSIONS)}; {other} other file(s) there)"
        )
    if other:
        log.info("%s: %d file(s) without an image extension were ignored", root, other)
    labels = market_labels(paths)
    src = _image_source("folder", root, paths, *(labels or (None, None)))
    src.notes["labels"] = "market file names" if labels else "unknown (-1)"
    src.notes["ignored_files"] = other
    return src


def manifest_source(csv_path: str) -> Source:
    """The rows of a manifest CSV (:func:`partreid.data.list_files.read_manifest_rows`: image
    and optional pid, camid or camera, track_id, frame, timestamp, split; paths relative to the
    CSV)."""
    m = read_manifest_rows(csv_path)
    src = _image_source("manifest", csv_path, m.paths, m.pids, m.camids)
    src.frames, src.track_ids = m.frames, m.track_ids
    src.timestamps, src.cameras = m.timestamps, m.cameras
    if m.splits:
        src.notes["splits"] = {s: m.splits.count(s) for s in sorted(set(m.splits))}
    if m.notes:
        src.notes["manifest"] = m.notes
    return src


# --------------------------------------------------------------------------------------------
# video + MOT boxes
# --------------------------------------------------------------------------------------------
def read_mot_boxes(path: str) -> np.ndarray:
    """A MOT box file ``frame,id,x,y,w,h[,...]`` (frames 1-based) -> float64 (M, 6) rows in
    file order; one clear error listing the bad rows (line numbers) otherwise."""
    if not os.path.isfile(path):
        raise NotFoundError(f"boxes file not found: {path}")
    rows, bad = [], []
    with open(path, encoding="utf-8", errors="replace") as f:
        for line_no, line in enumerate(f, start=1):
            text = line.strip()
            if not text or text.startswith("#"):
                continue
            fields = [v.strip() for v in text.replace(";", ",").split(",")]
            if len(fields) == 1:
                fields = text.split()
            try:
                vals = [float(v) for v in fields[:6]]
            except ValueError:
                vals = []
            if len(vals) < 6 or not np.all(np.isfinite(vals)):
                bad.append(f"line {line_no}: {text[:80]!r} (need 6 numbers frame,id,x,y,w,h)")
            elif vals[0] < 1 or vals[0] != int(vals[0]):
                bad.append(f"line {line_no}: frame {fields[0]!r} must be an integer >= 1")
            elif vals[4] <= 0 or vals[5] <= 0:
                bad.append(f"line {line_no}: box width/height must be > 0, got {fields[4:6]}")
            else:
                rows.append(vals)
    if bad:
        raise SourceError(
            f"{len(bad)} bad row(s) in boxes file {path} (MOT format: frame,id,x,y,w,h,... with "
            f"frames counted from 1):\n{shown_lines(bad)}"
        )
    if not rows:
        raise SourceError(f"boxes file {path} holds no boxes (MOT format: frame,id,x,y,w,h,...)")
    return np.asarray(rows, dtype=np.float64)


def _open_video(path: str):
    try:
        import av
    except ImportError:
        raise MissingExtraError(
            "reading videos needs PyAV: pip install 'partreid[video]' (or pip install av)"
        ) from None
    try:
        return av.open(path)
    except Exception as exc:
        raise SourceError(f"cannot open video {path}: {type(exc).__name__}: {exc}") from None


def video_info(path: str) -> Tuple[int, int, int]:
    """``(width, height, frame count or 0 when the container does not say)`` of a video."""
    with _open_video(path) as container:
        if not container.streams.video:
            raise SourceError(f"{path} has no video stream")
        stream = container.streams.video[0]
        return int(stream.width), int(stream.height), int(stream.frames or 0)


def video_frame_rate(path: str) -> float:
    """Frames per second the video's stream declares (0.0 when it does not say)."""
    with _open_video(path) as container:
        rate = container.streams.video[0].average_rate
    return float(rate) if rate else 0.0


def clip_boxes(boxes: np.ndarray, width: int, height: int) -> Tuple[np.ndarray, np.ndarray]:
    """Clip x, y, w, h boxes to a ``width x height`` frame (integer pixel edges).

    Returns the clipped boxes and a mask of those that keep at least one pixel.
    """
    x0 = np.clip(np.floor(boxes[:, 0]), 0, width)
    y0 = np.clip(np.floor(boxes[:, 1]), 0, height)
    x1 = np.clip(np.ceil(boxes[:, 0] + boxes[:, 2]), 0, width)
    y1 = np.clip(np.ceil(boxes[:, 1] + boxes[:, 3]), 0, height)
    out = np.stack([x0, y0, x1 - x0, y1 - y0], axis=1).astype(np.float32)
    return out, (x1 > x0) & (y1 > y0)


def video_source(video: str, boxes_path: Optional[str]) -> Source:
    """Crops of ``video`` at the boxes of a MOT file, ordered by frame then file order."""
    if not boxes_path:
        raise SourceError(
            f"{video} is a video: give the person boxes to cut with --boxes FILE "
            "(MOT format: frame,id,x,y,w,h,... with frames counted from 1)"
        )
    rows = read_mot_boxes(boxes_path)
    width, height, num_frames = video_info(video)
    order = np.argsort(rows[:, 0], kind="stable")
    rows = rows[order]
    clipped, inside = clip_boxes(rows[:, 2:6], width, height)
    partly = int(np.sum(inside & np.any(np.abs(clipped - rows[:, 2:6]) > 1.0, axis=1)))
    outside = int(np.sum(~inside))
    late = int(np.sum(rows[:, 0] > num_frames)) if num_frames else 0
    if outside:
        log.warning(
            "%s: %d of %d boxes lie entirely outside the %dx%d frame and were skipped",
            boxes_path,
            outside,
            len(rows),
            width,
            height,
        )
    if partly:
        log.info("%s: %d boxes extend past the frame and were clipped to it", boxes_path, partly)
    keep = inside
    n = int(keep.sum())
    if n == 0:
        raise SourceError(f"no box of {boxes_path} overlaps the {width}x{height} frames of {video}")
    src = Source(
        kind="video",
        location=video,
        paths=[video] * n,
        pids=np.full(n, -1, np.int64),
        camids=np.full(n, -1, np.int64),
        frames=rows[keep, 0].astype(np.int64),
        track_ids=rows[keep, 1].astype(np.int64),
        boxes=clipped[keep],
    )
    src.notes.update(
        boxes_file=os.path.abspath(boxes_path),
        boxes_total=len(rows),
        boxes_outside_frame=outside,
        boxes_clipped=partly,
        frame_size=[width, height],
        frames_in_video=num_frames,
        boxes_after_last_frame=late,
    )
    return src


class VideoCrops(IterableDataset):
    """Decode the video once, front to back, and yield the crops of items ``start..stop``.

    Meant for one loader worker (a background process decoding while the model runs); items
    whose frame never comes (past the end of the video) yield ``None`` with an error.
    """

    def __init__(self, src: Source, transform: Callable, start: int, stop: int):
        self.video = src.location
        self.frames = src.frames[start:stop]
        self.boxes = src.boxes[start:stop].astype(np.int64)
        self.transform = transform
        self.start = start
        self.stop = stop

    def __len__(self) -> int:
        return self.stop - self.start

    def __iter__(self):
        info = get_worker_info()
        if info is not None and info.id > 0:  # one decoder; other workers have nothing to do
            return
        if len(self) == 0:
            return
        pos, last = 0, int(self.frames[-1])
        with _open_video(self.video) as container:
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"
            for frame_no, frame in enumerate(container.decode(stream), start=1):
                if frame_no < self.frames[pos]:
                    continue
                img = None
                while pos < len(self) and self.frames[pos] == frame_no:
                    if img is None:
                        img = frame.to_image()  # RGB PIL
                    x, y, w, h = (int(v) for v in self.boxes[pos])
                    crop = img.crop((x, y, x + w, y + h))
                    yield self.transform(crop), self.start + pos, ""
                    pos += 1
                if pos >= len(self) or frame_no >= last:
                    break
        for p in range(pos, len(self)):
            yield None, self.start + p, f"frame {int(self.frames[p])} is past the end of the video"


def collate_items(samples):
    """``[(tensor | None, index, error)]`` -> ``(images or None, indices, [(index, error)])``."""
    good = [(t, i) for t, i, _ in samples if t is not None]
    failed = [(i, e) for t, i, e in samples if t is None]
    images = torch.stack([t for t, _ in good]) if good else None
    return images, torch.as_tensor([i for _, i in good], dtype=torch.long), failed


# --------------------------------------------------------------------------------------------
# dispatch
# --------------------------------------------------------------------------------------------
def open_source(source: str, boxes: Optional[str] = None) -> Source:
    """The :class:`Source` for an extract input; a clear error for anything unusable."""
    if os.path.isdir(source):
        if boxes:
            raise SourceError(f"--boxes goes with a video file, but {source} is a folder")
        return folder_source(source)
    if not os.path.exists(source):
        raise NotFoundError(f"input not found: {source}")
    low = source.lower()
    if low.endswith(VIDEO_EXTENSIONS) or (boxes and not low.endswith(IMAGE_EXTENSIONS)):
        return video_source(source, boxes)
    if boxes:
        raise SourceError(f"--boxes goes with a video file, but {source} is not a video")
    if low.endswith(".csv"):
        return manifest_source(source)
    if low.endswith(IMAGE_EXTENSIONS):
        return _image_source("image", source, [source])
    raise SourceError(
        f"cannot extract from {source}: expected a folder of images, a manifest .csv "
        f"(image[,pid,camid,...]), an image ({', '.join(IMAGE_EXTENSIONS)}) or a video "
        f"({', '.join(VIDEO_EXTENSIONS)}) with --boxes"
    )
