"""The questions asked of a store, as typed answers: the camera filter, tracklet references and
one query's top-K with its own tracklet left out. The CLI and the server format the hits.

Every value a user types is checked here before it costs memory or time, against limits stated
once (the server's OpenAPI schema shows the same patterns):

- cameras: ``3,4,7``, ``3-7`` or both, at most :data:`MAX_CAMERA_TERMS` terms of ids 0 to
  :data:`~partreid.store.base.MAX_ID`; ranges stay ranges down to the backend's filter;
- a camera: one such id; a tracklet: ``CAMERA:TRACK`` or ``crop:ID`` with ids in that range;
- top-K: 1 to :data:`MAX_TOPK`.
"""

from __future__ import annotations

import re
from typing import Any, List, Optional, Sequence, Tuple, Union

import numpy as np

from partreid.errors import InvalidValueError
from partreid.store.base import MAX_ID, GalleryStore, Hit, TrackletHit, camera_ranges
from partreid.utils.times import shown

AnyHit = Union[Hit, TrackletHit]
CameraRanges = List[Tuple[int, int]]

MAX_TOPK = 10_000  # results of one query: each is a record in memory and in the answer
MAX_CAMERA_TERMS = 64  # comma-separated ids or ranges in one camera filter
_ID = "[0-9]{1,19}"  # a 64-bit id has at most 19 digits (and is at most MAX_ID)
_TERM = rf" *{_ID}( *- *{_ID})? *"
# blank (no filter) or 1..64 terms
CAMERAS_PATTERN = rf"^ *$|^{_TERM}(,{_TERM}){{0,{MAX_CAMERA_TERMS - 1}}}$"
CAMERAS_MAX_CHARS = MAX_CAMERA_TERMS * 48
CAMERA_PATTERN = rf"^ *$|^ *{_ID} *$"  # blank: none
TRACKLET_PATTERN = rf"^({_ID}:{_ID}|crop:{_ID})$"
TRACKLET_MAX_CHARS = 45
_CAMERAS_RE, _CAMERA_RE = re.compile(CAMERAS_PATTERN), re.compile(CAMERA_PATTERN)
_TRACKLET_RE = re.compile(TRACKLET_PATTERN)


def _ids_in_range(values: Sequence[int], what: str, text: Any) -> None:
    big = [v for v in values if v > MAX_ID]
    if big:
        raise InvalidValueError(f"{what} {shown(text)}: id {big[0]} is above the largest, {MAX_ID}")


def parse_cameras(text: Optional[str], what: str = "--cameras") -> Optional[CameraRanges]:
    """``"3,4,7"`` or ``"3-7"`` (or both, ``"1,3-5"``) -> sorted, merged inclusive ranges
    ``[(first, last), ...]``, never expanded into ids; None (empty) for no filter."""
    if text is None or str(text).strip() == "":
        return None
    text = str(text)
    if len(text) > CAMERAS_MAX_CHARS or not _CAMERAS_RE.fullmatch(text):
        raise InvalidValueError(
            f"{what} {shown(text)}: expected camera ids such as 3,4,7 or ranges such as 3-7, "
            f"at most {MAX_CAMERA_TERMS} terms of ids 0..{MAX_ID}"
        )
    spans = []
    for part in text.split(","):
        a, _, b = part.partition("-")
        lo, hi = int(a), int(b) if b.strip() else int(a)
        spans.append((min(lo, hi), max(lo, hi)))
    _ids_in_range([v for s in spans for v in s], what, text)
    return camera_ranges(spans, what)


def format_cameras(ranges: Optional[CameraRanges]) -> Optional[str]:
    """The canonical text of a camera filter: ``"1-3,9"`` (None: no filter)."""
    if ranges is None:
        return None
    return ",".join(str(a) if a == b else f"{a}-{b}" for a, b in ranges)


def camera_id(value: Any, what: str = "--camera") -> Optional[int]:
    """One camera id (0..MAX_ID) from an int or its text; None for None or empty."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        ok = 0 <= int(value) <= MAX_ID
    else:
        ok = len(str(value)) <= 64 and bool(_CAMERA_RE.fullmatch(str(value)))
        ok = ok and int(value) <= MAX_ID
    if not ok:
        raise InvalidValueError(f"{what} {shown(value)}: expected a camera id, 0..{MAX_ID}")
    return int(value)


def tracklet_id(value: Any, what: str = "--tracklet") -> str:
    """A tracklet id, checked: ``CAMERA:TRACK`` or ``crop:ID``, ids 0..MAX_ID."""
    text = str(value)
    if len(text) > TRACKLET_MAX_CHARS or not _TRACKLET_RE.fullmatch(text):
        raise InvalidValueError(
            f"{what} {shown(value)}: expected a tracklet id CAMERA:TRACK (such as 3:17) or "
            f"crop:ID, ids 0..{MAX_ID}"
        )
    a, _, b = text.partition(":")
    _ids_in_range([int(v) for v in (a, b) if v != "crop"], what, value)
    return f"{a if a == 'crop' else int(a)}:{int(b)}"  # as the store writes it: 3:017 is 3:17


def track_ref(track: Optional[str], camera: Optional[int], what: str = "--track") -> Optional[str]:
    """``--track 3:17``, or ``--track 17`` with ``--camera 3``, as the store's tracklet id."""
    if track is None:
        return None
    if ":" in str(track):
        return tracklet_id(track, what)
    if camera is None:
        raise InvalidValueError(f"{what} {shown(track)}: give CAMERA:TRACK, or a camera with it")
    return tracklet_id(f"{camera_id(camera)}:{str(track).strip()}", what)


def check_topk(topk: Any, what: str = "--topk") -> int:
    """``topk`` as an int in 1..:data:`MAX_TOPK`."""
    if isinstance(topk, bool) or not isinstance(topk, (int, np.integer)):
        raise InvalidValueError(f"{what} {shown(topk)}: expected a whole number 1..{MAX_TOPK}")
    if not 1 <= int(topk) <= MAX_TOPK:
        raise InvalidValueError(f"{what} {topk}: expected 1..{MAX_TOPK} results")
    return int(topk)


def search_store(
    store: GalleryStore,
    feature: np.ndarray,
    topk: int,
    by: str = "tracklet",
    cameras: Optional[Sequence[Any]] = None,
    after: Optional[float] = None,
    before: Optional[float] = None,
    exclude: Optional[str] = None,
) -> List[AnyHit]:
    """The top-``topk`` crops or tracklets of one query feature (``exclude``: a tracklet id
    left out, the query's own; ``cameras``: ids and/or ``(first, last)`` ranges)."""
    topk = check_topk(topk)
    extra = 0  # places the excluded tracklet can take: one as a tracklet, each crop by crop
    if exclude:
        extra = 1 if by == "tracklet" else int(store.get_tracklet(exclude)[1].get("n_crops") or 1)
    hits = store.search(feature, topk + extra, by=by, cameras=cameras, after=after, before=before)
    return [h for h in hits[0] if not exclude or (h.tracklet != exclude)][:topk]


def records(hits: Sequence[AnyHit]) -> List[dict]:
    """JSON-ready records of ranked hits (rank from 1)."""
    return [h.record(i) for i, h in enumerate(hits, 1)]
