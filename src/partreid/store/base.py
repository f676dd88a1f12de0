"""The gallery store's interface: a batch of crops, the hits, and :class:`GalleryStore`.

Conventions shared by every backend:

- features are L2-normalised by the store, on ``add`` and on ``search`` (a zero vector stays 0);
- ranking is by inner product of the normalised vectors; ``distance`` is the squared Euclidean
  distance between them, ``2 - 2 cos`` (clipped at 0), ascending; ties are broken by the id
  (crop id, or tracklet id as a string), so results are deterministic;
- a *tracklet* is every crop of one ``track_id >= 0`` in one ``camera``; its id is the string
  ``"{camera}:{track_id}"``. A crop with ``track_id == -1`` is a one-crop tracklet of its own,
  id ``"crop:{id}"``, so tracklet search also covers crops without tracks. A tracklet's feature
  is the L2-normalised mean of its crops' normalised features; ``start``/``end`` the min/max
  timestamp of its crops;
- filters: ``cameras`` (camera in the set: camera ids and/or inclusive ``(first, last)`` ranges,
  kept as ranges down to the backend's filter, at most :data:`MAX_CAMERA_RANGES` of them once
  adjacent ids are merged); crops: ``after <= timestamp < before``; tracklets:
  the span overlaps ``[after, before)``, i.e. ``end >= after and start < before``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

from partreid.errors import PartreidError
from partreid.utils.times import format_time

TrackRef = Union[str, Tuple[int, int]]
CameraFilter = Sequence[Union[int, Tuple[int, int]]]  # camera ids and/or inclusive ranges

MAX_ID = 2**63 - 1  # ids, cameras and track ids are 64-bit integers (SQLite, Milvus Int64)
MAX_CAMERA_RANGES = 100


class StoreError(PartreidError, ValueError):
    """A store that cannot be opened or used as asked: the message names the store and why."""


class TrackletNotFoundError(StoreError):
    """The store holds no tracklet of that id (a 404 for the server)."""


def normalize(x: np.ndarray) -> np.ndarray:
    """Rows of ``x`` L2-normalised in float32 (zero rows stay zero)."""
    x = np.asarray(x, dtype=np.float32)
    n = np.linalg.norm(x, axis=-1, keepdims=True)
    return (x / np.maximum(n, 1e-12)).astype(np.float32, copy=False)


def tracklet_key(camera: int, track_id: int, crop_id: int) -> str:
    """The tracklet id of a crop: ``"{camera}:{track_id}"``, or ``"crop:{id}"`` without a track."""
    return f"{int(camera)}:{int(track_id)}" if track_id >= 0 else f"crop:{int(crop_id)}"


def parse_track(track: TrackRef) -> str:
    """A tracklet id from ``"3:17"``, ``"crop:42"`` or ``(camera, track_id)``."""
    if isinstance(track, tuple):
        if len(track) != 2:
            raise StoreError(f"track {track!r}: expected (camera, track_id)")
        return f"{int(track[0])}:{int(track[1])}"
    s = str(track)
    a, sep, b = s.partition(":")
    ok = sep and b.lstrip("-").isdigit() and (a == "crop" or a.lstrip("-").isdigit())
    if not ok:
        raise StoreError(f"tracklet id {s!r}: expected 'camera:track_id' or 'crop:id'")
    return s


def camera_ranges(cameras: CameraFilter, where: str = "cameras") -> List[Tuple[int, int]]:
    """A camera filter as sorted, merged inclusive ``(first, last)`` ranges (an id ``c`` is
    ``(c, c)``); ids outside 0..:data:`MAX_ID` or more than :data:`MAX_CAMERA_RANGES` ranges
    raise :class:`StoreError`."""
    spans = []
    for c in cameras:
        a, b = (c, c) if isinstance(c, (int, np.integer)) else c
        if not 0 <= int(a) <= int(b) <= MAX_ID:
            raise StoreError(f"{where}: camera range {a}..{b} is not within 0..{MAX_ID}")
        spans.append((int(a), int(b)))
    merged: List[Tuple[int, int]] = []
    for a, b in sorted(spans):
        if merged and a <= merged[-1][1] + 1:
            merged[-1] = (merged[-1][0], max(merged[-1][1], b))
        else:
            merged.append((a, b))
    if len(merged) > MAX_CAMERA_RANGES:
        raise StoreError(
            f"{where}: {len(merged)} separate camera ranges; at most {MAX_CAMERA_RANGES}"
        )
    return merged


def to_distance(score: np.ndarray) -> np.ndarray:
    """Squared L2 distance of unit vectors from their inner product: ``2 - 2 cos``, >= 0."""
    return np.maximum(2.0 - 2.0 * np.asarray(score, dtype=np.float64), 0.0)


def _col(x: Any, n: int, dtype: Any, fill: Any, name: str) -> np.ndarray:
    if x is None:
        return np.full(n, fill, dtype=dtype)
    a = np.asarray(x, dtype=dtype).reshape(-1)
    if a.shape[0] != n:
        raise StoreError(f"CropBatch.{name} has {a.shape[0]} values for {n} crops")
    return a


@dataclass
class CropBatch:
    """Crops to add, as parallel arrays (N rows). Optional columns default to 'unknown'.

    ``ids`` int64, chosen by the caller and stable (re-adding an id adds nothing);
    ``features`` float32 (N, D), normalised by the store; ``camera`` int64; ``timestamp``
    float64 seconds since the Unix epoch (UTC); ``track_id`` int64 (-1 none); ``frame`` int64
    (-1 none); ``box`` float32 (N, 4) x1, y1, x2, y2 (zeros if none); ``path`` str (image or
    video path); ``pid`` int64 (-1 unknown).
    """

    ids: np.ndarray
    features: np.ndarray
    camera: np.ndarray
    timestamp: np.ndarray
    track_id: Optional[np.ndarray] = None
    frame: Optional[np.ndarray] = None
    box: Optional[np.ndarray] = None
    path: Optional[Sequence[str]] = None
    pid: Optional[np.ndarray] = None

    def __post_init__(self) -> None:
        self.ids = np.asarray(self.ids, dtype=np.int64).reshape(-1)
        n = self.ids.shape[0]
        f = np.asarray(self.features, dtype=np.float32)
        if f.ndim != 2 or f.shape[0] != n:
            raise StoreError(f"CropBatch.features has shape {f.shape}, expected ({n}, dim)")
        if not np.isfinite(f).all():
            raise StoreError("CropBatch.features contains NaN or infinity")
        self.features = f
        self.camera = _col(self.camera, n, np.int64, 0, "camera")
        self.timestamp = _col(self.timestamp, n, np.float64, 0.0, "timestamp")
        if not np.isfinite(self.timestamp).all():
            raise StoreError("CropBatch.timestamp contains NaN or infinity")
        self.track_id = _col(self.track_id, n, np.int64, -1, "track_id")
        self.frame = _col(self.frame, n, np.int64, -1, "frame")
        self.pid = _col(self.pid, n, np.int64, -1, "pid")
        if self.box is None:
            self.box = np.zeros((n, 4), np.float32)
        else:
            self.box = np.asarray(self.box, dtype=np.float32)
            if self.box.shape != (n, 4):
                raise StoreError(f"CropBatch.box has shape {self.box.shape}, expected ({n}, 4)")
        if self.path is None:
            self.path = [""] * n
        else:
            self.path = [str(p) for p in self.path]
            if len(self.path) != n:
                raise StoreError(f"CropBatch.path has {len(self.path)} values for {n} crops")

    def __len__(self) -> int:
        return int(self.ids.shape[0])

    @property
    def dim(self) -> int:
        """Feature dimension."""
        return int(self.features.shape[1])

    def select(self, idx: np.ndarray) -> CropBatch:
        """The crops at positions ``idx`` (an index array or a boolean mask)."""
        idx = np.asarray(idx)
        if idx.dtype == bool:
            idx = np.nonzero(idx)[0]
        assert self.path is not None and self.box is not None
        return CropBatch(
            ids=self.ids[idx],
            features=self.features[idx],
            camera=self.camera[idx],
            timestamp=self.timestamp[idx],
            track_id=self.track_id[idx],
            frame=self.frame[idx],
            box=self.box[idx],
            path=[self.path[i] for i in idx],
            pid=self.pid[idx],
        )

    def unique(self) -> CropBatch:
        """The batch without repeated ids (the first occurrence of each id is kept)."""
        _, first = np.unique(self.ids, return_index=True)
        if first.shape[0] == len(self):
            return self
        return self.select(np.sort(first))


@dataclass
class Hit:
    """One crop found: its id, ``distance`` (``2 - 2 cos``) and metadata."""

    id: int
    distance: float
    camera: int
    timestamp: float
    track_id: int
    frame: int
    box: Tuple[float, float, float, float]
    path: str
    pid: int

    @property
    def tracklet(self) -> str:
        """The id of the tracklet this crop belongs to."""
        return tracklet_key(self.camera, self.track_id, self.id)

    def record(self, rank: int) -> Dict[str, Any]:
        """The hit as a JSON-ready record (time in ISO 8601 UTC), as the CLI and server answer."""
        return {
            "rank": rank,
            "id": int(self.id),
            "distance": round(float(self.distance), 6),
            "camera": int(self.camera),
            "time": format_time(self.timestamp),
            "tracklet": self.tracklet,
            "frame": int(self.frame),
            "box": [round(float(v), 1) for v in self.box],
            "path": self.path,
            "pid": int(self.pid),
        }


@dataclass
class TrackletHit:
    """One tracklet found: id, span, size, ``distance`` of its feature and its nearest crop."""

    tracklet: str
    camera: int
    track_id: int
    start: float
    end: float
    n_crops: int
    distance: float
    best: Optional[Hit] = field(default=None)

    def record(self, rank: int) -> Dict[str, Any]:
        """The hit as a JSON-ready record, its best crop as ``best_*`` fields."""
        rec = {
            "rank": rank,
            "tracklet": self.tracklet,
            "distance": round(float(self.distance), 6),
            "camera": int(self.camera),
            "track_id": int(self.track_id),
            "start": format_time(self.start),
            "end": format_time(self.end),
            "n_crops": int(self.n_crops),
        }
        if self.best is not None:
            best = self.best.record(0)
            rec.update(best_time=best["time"], best_frame=best["frame"], best_path=best["path"])
            rec.update(best_box=best["box"], best_distance=best["distance"])
        return rec


def check_search_args(queries: Any, k: int, by: str, dim: int, where: str) -> np.ndarray:
    """The queries as normalised float32 (Q, D) after checking k, by and the dimension."""
    q = np.asarray(queries, dtype=np.float32)
    if q.ndim == 1:
        q = q[None, :]
    if q.ndim != 2 or q.shape[1] != dim:
        raise StoreError(f"{where}: queries have shape {q.shape}, the store's dim is {dim}")
    if by not in ("crop", "tracklet"):
        raise StoreError(f"{where}: by={by!r}, expected 'crop' or 'tracklet'")
    if int(k) < 1:
        raise StoreError(f"{where}: k={k}, expected k >= 1")
    return normalize(q)


class GalleryStore:
    """A growing gallery of crops and their tracklets (see the module docstring)."""

    uri: str = ""
    info: Dict[str, Any]

    @property
    def dim(self) -> int:
        """Feature dimension of the store."""
        return int(self.info["dim"])

    def add(self, batch: CropBatch) -> int:
        """Add a batch atomically; ids already present are skipped. Returns the number added."""
        raise NotImplementedError

    def search(
        self,
        queries: np.ndarray,
        k: int,
        by: str = "crop",
        cameras: Optional[CameraFilter] = None,
        after: Optional[float] = None,
        before: Optional[float] = None,
    ) -> List[List[Any]]:
        """The k nearest crops (``Hit``) or tracklets (``TrackletHit``) of each query.

        Queries are L2-normalised; ``distance`` is ``2 - 2 cos`` ascending, ties by id. Crops:
        ``after <= timestamp < before``; tracklets: span overlaps, ``end >= after and start <
        before``; ``best`` is the tracklet's crop nearest the query (among all its crops). The
        filters run inside the backend.
        """
        q = check_search_args(queries, k, by, self.dim, f"store {self.uri}")
        with self._lock:
            return self._search(q, int(k), by, cameras, after, before)

    def _search(
        self,
        q: np.ndarray,
        k: int,
        by: str,
        cameras: Optional[CameraFilter],
        after: Optional[float],
        before: Optional[float],
    ) -> List[List[Any]]:
        """The backend's search of checked, normalised queries (under the store's lock)."""
        raise NotImplementedError

    def delete(
        self,
        before: Optional[float] = None,
        camera: Optional[int] = None,
        track: Optional[TrackRef] = None,
        ids: Optional[Sequence[int]] = None,
    ) -> int:
        """Delete the crops matching every given condition (AND); returns the number deleted.

        ``before``: timestamp < before; ``camera``: that camera; ``track``: a tracklet id
        (``"3:17"``, ``"crop:42"`` or ``(camera, track_id)``); ``ids``: those crop ids. Without
        any condition it raises :class:`StoreError`. Tracklets are updated, removed when empty.
        """
        self._delete_conditions(before, camera, track, ids, f"store {self.uri}")
        with self._lock:
            return self._delete(before, camera, track, ids)

    def _delete(
        self,
        before: Optional[float],
        camera: Optional[int],
        track: Optional[TrackRef],
        ids: Optional[Sequence[int]],
    ) -> int:
        """The backend's delete, at least one condition given (under the store's lock)."""
        raise NotImplementedError

    def stats(self) -> Dict[str, Any]:
        """Counts of crops and tracklets, per camera, the time span, dim and info."""
        raise NotImplementedError

    def get_tracklet(self, tracklet_id: TrackRef) -> Tuple[np.ndarray, Dict[str, Any]]:
        """A stored tracklet's normalised feature (D,) and its metadata."""
        raise NotImplementedError

    def contains(self, ids: Sequence[int]) -> np.ndarray:
        """For each id, whether the store holds a crop with that id."""
        raise NotImplementedError

    def close(self) -> None:
        """Release files and connections."""

    def __enter__(self) -> GalleryStore:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def _check_dim(self, batch: CropBatch) -> None:
        if batch.dim != self.dim:
            raise StoreError(
                f"{self.uri}: the batch's features are {batch.dim}-d, the store's dim is {self.dim}"
            )

    @staticmethod
    def _delete_conditions(
        before: Optional[float], camera: Optional[int], track: Any, ids: Any, where: str
    ) -> None:
        if before is None and camera is None and track is None and ids is None:
            raise StoreError(
                f"{where}: delete needs at least one condition (before, camera, track or ids);"
                " it never deletes everything"
            )
