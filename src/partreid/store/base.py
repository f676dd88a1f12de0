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

import contextlib
from dataclasses import asdict, dataclass, field
from typing import Any, ContextManager, Dict, Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np

from partreid.errors import PartreidError
from partreid.utils.times import format_time

TrackRef = Union[str, Tuple[int, int]]
CameraFilter = Sequence[Union[int, Tuple[int, int]]]  # camera ids and/or inclusive ranges

MAX_ID = 2**63 - 1  # ids, cameras and track ids are 64-bit integers (SQLite, Milvus Int64)
MAX_CAMERA_RANGES = 100


class StoreError(PartreidError, ValueError):
    """A store that cannot be opened or used as asked: the message names the store and why."""


MAKE_ONE = "`partreid ingest ... --store URI` makes one; in Python, open_store(URI, create=True)"


class TrackletNotFoundError(StoreError):
    """The store holds no tracklet of that id (a 404 for the server)."""


class IdentityNotFoundError(StoreError):
    """The store holds no tracklet of that site identity (a 404 for the server)."""


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


def chunks(a: Sequence[Any], n: int) -> Iterator[Sequence[Any]]:
    """``a`` in consecutive pieces of at most ``n`` (for ``IN (...)`` lists of bounded size)."""
    for i in range(0, len(a), n):
        yield a[i : i + n]


def sum_by_group(values: np.ndarray, group: np.ndarray, n_groups: int) -> np.ndarray:
    """float64 sums (n_groups, D) of the rows of ``values`` by ``group``.

    Each group's rows are added in their order, from zero, so the sums equal ``np.add.at``'s to
    the bit; but in as many vector steps as the largest group has rows, where ``np.add.at`` adds
    row after row (about half the time at 1,000 x 1,280 in tracks of 4).
    """
    values = np.asarray(values, np.float64)
    counts = np.bincount(group, minlength=n_groups)
    order = np.argsort(group, kind="stable")
    rank = np.empty(len(group), np.int64)  # each row's place within its group
    rank[order] = np.arange(len(group)) - np.repeat(np.cumsum(counts) - counts, counts)
    by_rank = np.argsort(rank, kind="stable")
    bounds = np.searchsorted(rank[by_rank], np.arange(counts.max(initial=0) + 1))
    sums = np.zeros((n_groups, values.shape[1]), np.float64)
    for a, b in zip(bounds[:-1], bounds[1:]):
        rows = by_rank[a:b]  # at most one row of each group
        sums[group[rows]] += values[rows]
    return sums


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
class NewCrops:
    """What ``add`` hands a backend's ``_insert``: crops the store does not hold (ids unique),
    their L2-normalised ``features`` (float32 (N, D)) and the batch's tracklets.

    ``keys``: the batch's tracklet ids, sorted (every ``"camera:track"`` id sorts before the
    ``"crop:id"`` ones); ``of_crop`` (N,): each crop's position in ``keys``; ``first`` (G,): the
    position in the batch of each tracklet's first crop; ``counts`` (G,): its crops in the batch;
    ``start`` / ``end`` (G,): their min / max timestamp; :meth:`sum`: their features' sum.
    """

    batch: CropBatch
    features: np.ndarray
    keys: List[str]
    of_crop: np.ndarray
    first: np.ndarray
    counts: np.ndarray
    start: np.ndarray
    end: np.ndarray
    _sums: np.ndarray = field(repr=False)  # the sums of the tracklets of 2+ crops
    _slot: np.ndarray = field(repr=False)  # (G,) each tracklet's row in _sums (-1: one crop)

    @classmethod
    def group(cls, batch: CropBatch) -> NewCrops:
        """The batch's features normalised and its crops grouped by tracklet."""
        feats = normalize(batch.features)
        cols = (batch.camera.tolist(), batch.track_id.tolist(), batch.ids.tolist())
        keys = [tracklet_key(c, t, i) for c, t, i in zip(*cols)]
        uniq, first, inv = np.unique(np.array(keys), return_index=True, return_inverse=True)
        inv = inv.reshape(-1)
        counts = np.bincount(inv)
        start = np.full(len(uniq), np.inf)
        end = np.full(len(uniq), -np.inf)
        np.minimum.at(start, inv, batch.timestamp)
        np.maximum.at(end, inv, batch.timestamp)
        multi = np.nonzero(counts > 1)[0]
        slot = np.full(len(uniq), -1, np.int64)
        slot[multi] = np.arange(len(multi))
        in_multi = counts[inv] > 1
        sums = sum_by_group(feats[in_multi], slot[inv[in_multi]], len(multi))
        return cls(batch, feats, uniq.tolist(), inv, first, counts, start, end, sums, slot)

    def sum(self, j: int) -> np.ndarray:
        """The float64 sum (D,) of the normalised features of tracklet ``j``'s crops in the batch
        (added in the batch's order, from zero)."""
        if self._slot[j] < 0:  # one crop: 0.0 + its feature
            return self.features[self.first[j]].astype(np.float64) + 0.0
        return self._sums[self._slot[j]]

    def __len__(self) -> int:
        return len(self.batch)


@dataclass(frozen=True)
class SearchFilter:
    """The filters of one search as given to :meth:`GalleryStore.search` (None: no filter)."""

    cameras: Optional[CameraFilter] = None  # camera ids and/or inclusive (first, last) ranges
    after: Optional[float] = None
    before: Optional[float] = None


@dataclass(frozen=True)
class DeleteFilter:
    """What :meth:`GalleryStore.delete` removes: the crops matching every condition given (None:
    no condition; at least one is given). ``track`` a checked tracklet id, ``ids`` int64."""

    before: Optional[float] = None
    camera: Optional[int] = None
    track: Optional[str] = None
    ids: Optional[np.ndarray] = None


@dataclass
class StoreStats:
    """What a store holds: crops and tracklets, crops per camera (by camera), the crops' time
    span (None when empty), dim and info; ``extra``: the backend's own figures (the embedded
    store: ``vector_rows``, ``disk_bytes``)."""

    backend: str
    uri: str
    crops: int
    tracklets: int
    cameras: Dict[int, int]
    first: Optional[float]
    last: Optional[float]
    dim: int
    info: Dict[str, Any]
    extra: Dict[str, Any] = field(default_factory=dict)

    @property
    def model(self) -> Optional[Dict[str, Any]]:
        """The model description kept in ``info`` (None if there is none)."""
        return self.info.get("model")

    def to_dict(self) -> Dict[str, Any]:
        """The JSON-ready dict ``partreid store stats --json`` prints (extra figures last)."""
        d = {k: v for k, v in asdict(self).items() if k not in ("info", "extra")}
        return {**d, "model": self.model, "info": self.info, **self.extra}


@dataclass
class TrackletTable:
    """Tracklets as parallel arrays (see :meth:`GalleryStore.tracklets`), in time order (start,
    end, id): ``keys`` their ids, ``camera``/``track_id``/``n_crops`` int64, ``start``/``end``
    float64, ``identity`` int64 (the site identity, -1 none yet), ``features`` float32 (N, D)
    normalised (None when not asked for)."""

    keys: List[str]
    camera: np.ndarray
    track_id: np.ndarray
    start: np.ndarray
    end: np.ndarray
    n_crops: np.ndarray
    identity: np.ndarray
    features: Optional[np.ndarray] = None

    @classmethod
    def of_rows(cls, rows: Sequence[tuple], features: Optional[np.ndarray]) -> TrackletTable:
        """From rows ``(key, camera, track_id, start, end, n_crops, identity)`` and, when given,
        their features in the same order: sorted into time order."""
        order = sorted(range(len(rows)), key=lambda i: (rows[i][3], rows[i][4], rows[i][0]))
        cols = list(zip(*[rows[i] for i in order])) if rows else [()] * 7

        def col(j: int, dtype: Any) -> np.ndarray:
            return np.asarray(cols[j], dtype).reshape(-1)

        feats = None if features is None else np.asarray(features, np.float32)[order]
        return cls(
            keys=[str(k) for k in cols[0]],
            camera=col(1, np.int64),
            track_id=col(2, np.int64),
            start=col(3, np.float64),
            end=col(4, np.float64),
            n_crops=col(5, np.int64),
            identity=col(6, np.int64),
            features=feats,
        )

    def __len__(self) -> int:
        return len(self.keys)

    def records(self) -> List[Dict[str, Any]]:
        """``camera, track_id, start, end, n, identity, tracklet`` per tracklet (times ISO 8601;
        identity None when there is none), as ``partreid store tracklets`` writes them."""
        return [
            {
                "camera": int(self.camera[i]),
                "track_id": int(self.track_id[i]),
                "start": format_time(self.start[i]),
                "end": format_time(self.end[i]),
                "n": int(self.n_crops[i]),
                "identity": int(self.identity[i]) if self.identity[i] >= 0 else None,
                "tracklet": self.keys[i],
            }
            for i in range(len(self))
        ]


@dataclass
class IdentityLog:
    """What a store remembers of its site identities besides the tracklets' own: the next new
    id (ids are never reused) and each merge ``(absorbed, into, time)``, oldest first."""

    next_id: int = 1
    merges: List[Tuple[int, int, float]] = field(default_factory=list)


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
class TrackletSpan:
    """A tracklet's id, where and when it was seen and its number of crops (the first fields of
    a tracklet hit and of a route's step)."""

    tracklet: str
    camera: int
    track_id: int
    start: float
    end: float
    n_crops: int


@dataclass
class TrackletHit(TrackletSpan):
    """One tracklet found: id, span, size, ``distance`` of its feature and its nearest crop."""

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
    """A growing gallery of crops and their tracklets (see the module docstring).

    The public methods are written here once: the checks, the locking and the shape of each
    operation. A backend is one module whose subclass sets ``backend`` (its name), ``uri``,
    ``info`` (with ``"dim"``) and ``_lock`` (a ``threading.RLock``) and implements the storage
    steps, each called under ``_lock``:

    - ``_present(ids)``: for each id (int64 array), whether it holds a crop of that id;
    - ``_insert(new)``: store :class:`NewCrops` (none of them held yet): the crops, and their
      tracklets (``new.keys``: add each group to the stored tracklet of that id or create it);
    - ``_search(q, k, by, flt)``: the k nearest of normalised queries, filtered by
      :class:`SearchFilter` (see :meth:`search` for the order and the filters);
    - ``_delete(flt)``: delete the crops matching :class:`DeleteFilter` and update their
      tracklets (remove the emptied ones);
    - ``_tracklet(key)``: a tracklet's normalised feature and a :class:`TrackletHit` of its
      metadata, or None;
    - ``_stats()``: :class:`StoreStats` (made with :meth:`_stats_of`);
    - site identities: ``_tracklet_table(flt, identities, keys, features)`` (:class:`TrackletTable`),
      ``_set_identities(assign, merges, next_id)``, ``_identity_log()`` and
      ``_forget_identity(identity)``; a backend's delete also drops the identity of every
      tracklet it empties;
    - ``close()``;
    - ``_repair(cameras)`` where a write is not atomic (see :meth:`repair`; default: nothing);

    and where other processes may write too, ``_writing()``: a context manager held (inside
    ``_lock``) around every add and delete (the embedded store's lock across processes).
    """

    backend: str = ""
    uri: str = ""
    info: Dict[str, Any]
    _lock: Any

    @property
    def dim(self) -> int:
        """Feature dimension of the store."""
        return int(self.info["dim"])

    def add(self, batch: CropBatch) -> int:
        """Add a batch atomically (features L2-normalised here); ids already present, or repeated
        in the batch, are skipped. Returns the number added."""
        with self._lock, self._writing():
            if batch.dim != self.dim:
                raise StoreError(
                    f"{self.uri}: the batch's features are {batch.dim}-d, the store's dim is"
                    f" {self.dim}"
                )
            batch = batch.unique()
            self._repair(np.unique(batch.camera).tolist())
            new = batch.select(~self._present(batch.ids))
            if len(new) == 0:
                return 0
            self._insert(NewCrops.group(new))
            return len(new)

    def contains(self, ids: Sequence[int]) -> np.ndarray:
        """For each id, whether the store holds a crop with that id."""
        with self._lock:
            return self._present(np.asarray(ids, dtype=np.int64).reshape(-1))

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
            return self._search(q, int(k), by, SearchFilter(cameras, after, before))

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
        if before is None and camera is None and track is None and ids is None:
            raise StoreError(
                f"store {self.uri}: delete needs at least one condition (before, camera, track"
                " or ids); it never deletes everything"
            )
        flt = DeleteFilter(
            before=before,
            camera=camera,
            track=None if track is None else parse_track(track),
            ids=None if ids is None else np.asarray(ids, np.int64).reshape(-1),
        )
        with self._lock, self._writing():
            return self._delete(flt)

    def repair(self, cameras: Optional[Sequence[int]] = None) -> int:
        """Finish the writes that a writer killed midway left half done: on the store's
        tracklets of ``cameras`` (None: of writers gone for a while); returns the number of
        tracklets recomputed. ``add`` does it for its batch's cameras first; an ingest for its
        input's cameras. A store whose writes are atomic has none: 0."""
        with self._lock, self._writing():
            return self._repair(None if cameras is None else [int(c) for c in cameras])

    def stats(self) -> StoreStats:
        """Counts of crops and tracklets, per camera, the time span, dim and info."""
        with self._lock:
            return self._stats()

    def get_tracklet(self, tracklet_id: TrackRef) -> Tuple[np.ndarray, Dict[str, Any]]:
        """A stored tracklet's normalised feature (D,) and its metadata (for query by tracklet)."""
        key = parse_track(tracklet_id)
        with self._lock:
            found = self._tracklet(key)
        if found is None:
            raise TrackletNotFoundError(f"store {self.uri}: no tracklet {key!r}")
        feat, h = found
        meta = dict(
            tracklet=h.tracklet,
            camera=h.camera,
            track_id=h.track_id,
            start=h.start,
            end=h.end,
            n_crops=h.n_crops,
        )
        return feat, meta

    # -- site identities (partreid.store.link decides them; the store keeps them) -----------

    def tracklets(
        self,
        cameras: Optional[CameraFilter] = None,
        after: Optional[float] = None,
        before: Optional[float] = None,
        identities: Optional[Sequence[int]] = None,
        keys: Optional[Sequence[TrackRef]] = None,
        features: bool = False,
    ) -> TrackletTable:
        """Every tracklet matching the filters (as :meth:`search`'s; ``identities``: of those
        site identities; ``keys``: those tracklet ids), with its identity and, with
        ``features``, its feature."""
        flt = SearchFilter(cameras, after, before)
        ids = None if identities is None else sorted({int(i) for i in identities})
        wanted = None if keys is None else sorted({parse_track(k) for k in keys})
        with self._lock:
            return self._tracklet_table(flt, ids, wanted, bool(features))

    def set_identities(
        self,
        assign: Dict[str, int],
        merges: Sequence[Tuple[int, int]] = (),
        next_id: Optional[int] = None,
        at: float = 0.0,
    ) -> int:
        """Give tracklets (by id) their site identity, record ``merges`` ``(absorbed, into)``
        made at time ``at`` and raise the next new id to at least ``next_id`` and past every
        id given. Ids of tracklets the store does not hold are skipped; returns how many
        tracklets it set."""
        assign = {parse_track(k): int(v) for k, v in assign.items()}
        if any(v < 1 for v in assign.values()):
            raise StoreError(f"store {self.uri}: identities are ids >= 1")
        top = max([int(next_id or 1)] + [v + 1 for v in assign.values()])
        log = [(int(a), int(b), float(at)) for a, b in merges]
        with self._lock, self._writing():
            return self._set_identities(assign, log, top)

    def identity_log(self) -> IdentityLog:
        """The next new identity id and the merges recorded so far."""
        with self._lock:
            return self._identity_log()

    def delete_identity(self, identity: int) -> int:
        """Forget a person: delete every crop of the tracklets of site identity ``identity``
        (each tracklet in one step of :meth:`delete`'s), then the identity itself. Returns the
        number of crops deleted; raises :class:`IdentityNotFoundError` if no tracklet has it."""
        with self._lock, self._writing():
            table = self._tracklet_table(SearchFilter(), [int(identity)], None, False)
            if not len(table):
                raise IdentityNotFoundError(f"store {self.uri}: no identity {int(identity)}")
            n = sum(self._delete(DeleteFilter(track=key)) for key in table.keys)
            self._forget_identity(int(identity))
            return n

    def close(self) -> None:
        """Release files and connections."""

    def __enter__(self) -> GalleryStore:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # -- the backend's steps (see the class docstring) --------------------------------------

    def _writing(self) -> ContextManager[Any]:
        """Held around every add and delete, inside ``_lock``; nothing more by default."""
        return contextlib.nullcontext()

    def _repair(self, cameras: Optional[List[int]]) -> int:
        """Finish half-done writes touching ``cameras`` (see :meth:`repair`); none by default."""
        return 0

    def _present(self, ids: np.ndarray) -> np.ndarray:
        """For each id (int64), whether the store holds a crop with that id."""
        raise NotImplementedError

    def _insert(self, new: NewCrops) -> None:
        """Store crops none of which the store holds, and update or create their tracklets."""
        raise NotImplementedError

    def _search(self, q: np.ndarray, k: int, by: str, flt: SearchFilter) -> List[List[Any]]:
        """The backend's search of checked, normalised queries."""
        raise NotImplementedError

    def _delete(self, flt: DeleteFilter) -> int:
        """The backend's delete of the crops matching ``flt``; returns how many it deleted."""
        raise NotImplementedError

    def _tracklet(self, key: str) -> Optional[Tuple[np.ndarray, TrackletHit]]:
        """A tracklet's normalised feature and metadata (``distance`` unused), or None."""
        raise NotImplementedError

    def _stats(self) -> StoreStats:
        """The backend's :class:`StoreStats`."""
        raise NotImplementedError

    def _tracklet_table(
        self,
        flt: SearchFilter,
        identities: Optional[List[int]],
        keys: Optional[List[str]],
        features: bool,
    ) -> TrackletTable:
        """The tracklets matching ``flt`` (and, when given, of ``identities`` / ids ``keys``)."""
        raise NotImplementedError

    def _set_identities(
        self, assign: Dict[str, int], merges: List[Tuple[int, int, float]], next_id: int
    ) -> int:
        """Store the tracklets' identities and the merges, raise the next id (one write)."""
        raise NotImplementedError

    def _identity_log(self) -> IdentityLog:
        """The stored :class:`IdentityLog`."""
        raise NotImplementedError

    def _forget_identity(self, identity: int) -> None:
        """Remove what is left of an identity (its tracklets' rows, its merges)."""
        raise NotImplementedError

    def _stats_of(
        self,
        cameras: Dict[int, int],
        tracklets: int,
        first: Optional[float],
        last: Optional[float],
        **extra: Any,
    ) -> StoreStats:
        """:class:`StoreStats` of this store from its crops per camera (sorted by camera), its
        tracklet count, the time span and the backend's own figures."""
        return StoreStats(
            backend=self.backend,
            uri=self.uri,
            crops=sum(cameras.values()),
            tracklets=tracklets,
            cameras=cameras,
            first=first,
            last=last,
            dim=self.dim,
            info=self.info,
            extra=extra,
        )
