"""The questions asked of a store, as typed answers: the camera filter, tracklet references and
one query's top-K with its own tracklet left out. The CLI and the server format the hits."""

from __future__ import annotations

from typing import List, Optional, Sequence, Union

import numpy as np

from partreid.errors import InvalidValueError
from partreid.store.base import GalleryStore, Hit, TrackletHit

AnyHit = Union[Hit, TrackletHit]


def parse_cameras(text: Optional[str]) -> Optional[List[int]]:
    """``"3,4,7"`` or ``"3-7"`` (or both, ``"1,3-5"``) -> camera ids; None for no filter."""
    if text is None or str(text).strip() == "":
        return None
    cams: List[int] = []
    for part in str(text).split(","):
        a, sep, b = part.strip().partition("-")
        try:
            lo, hi = int(a), int(b) if sep else int(a)
        except ValueError:
            raise InvalidValueError(
                f"--cameras {text!r}: expected camera ids such as 3,4,7 or 3-7"
            ) from None
        cams.extend(range(min(lo, hi), max(lo, hi) + 1))
    return sorted(set(cams))


def track_ref(track: Optional[str], camera: Optional[int]) -> Optional[str]:
    """``--track 3:17``, or ``--track 17`` with ``--camera 3``, as the store's tracklet id."""
    if track is None:
        return None
    if ":" in str(track):
        return str(track)
    if camera is None:
        raise InvalidValueError(f"--track {track}: give CAMERA:TRACK, or --camera with it")
    return f"{int(camera)}:{int(track)}"


def search_store(
    store: GalleryStore,
    feature: np.ndarray,
    topk: int,
    by: str = "tracklet",
    cameras: Optional[Sequence[int]] = None,
    after: Optional[float] = None,
    before: Optional[float] = None,
    exclude: Optional[str] = None,
) -> List[AnyHit]:
    """The top-``topk`` crops or tracklets of one query feature (``exclude``: a tracklet id
    left out, the query's own)."""
    extra = 0  # places the excluded tracklet can take: one as a tracklet, each crop by crop
    if exclude:
        extra = 1 if by == "tracklet" else int(store.get_tracklet(exclude)[1].get("n_crops") or 1)
    hits = store.search(feature, topk + extra, by=by, cameras=cameras, after=after, before=before)
    return [h for h in hits[0] if not exclude or (h.tracklet != exclude)][:topk]


def records(hits: Sequence[AnyHit]) -> List[dict]:
    """JSON-ready records of ranked hits (rank from 1)."""
    return [h.record(i) for i, h in enumerate(hits, 1)]
