"""The questions asked of a store's site identities (given by :mod:`partreid.store.link`): which
people look like a query, each with their route, and how many people a camera saw.

A route is every tracklet of one identity in time order, with its camera, span and distance to
the query; a tracklet not linked yet is a route of its own (identity None). The CLI and the
server format the answers (``record``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence

import numpy as np

from partreid.errors import InvalidValueError
from partreid.store.base import (
    MAX_ID,
    GalleryStore,
    TrackletHit,
    TrackletSpan,
    TrackletTable,
    normalize,
)
from partreid.store.query import check_topk
from partreid.utils.times import format_time, shown

POOL = 20  # tracklets searched per identity asked for
MAX_POOL = 5000  # tracklets searched at most, whatever the top-K


def identity_id(value: Any, what: str = "--identity") -> int:
    """A site identity id (1..MAX_ID) from an int or its text."""
    text = str(value)
    ok = isinstance(value, (int, np.integer)) and not isinstance(value, bool)
    if not ok:
        ok = len(text) <= 64 and text.strip().isdigit() and text.strip().isascii()
    if not ok or not 1 <= int(text) <= MAX_ID:
        raise InvalidValueError(f"{what} {shown(value)}: expected an identity id, 1..{MAX_ID}")
    return int(text)


@dataclass
class RouteStep(TrackletSpan):
    """One tracklet of a route: where and when, and its ``distance`` (``2 - 2 cos``) to the
    query (None when the route was asked for without a query)."""

    distance: Optional[float] = None

    def record(self) -> Dict[str, Any]:
        """JSON-ready as a tracklet hit's record (times in ISO 8601 UTC), without a rank."""
        hit = TrackletHit(
            self.tracklet, self.camera, self.track_id, self.start, self.end, self.n_crops, 0.0
        )
        rec = hit.record(0)
        del rec["rank"]
        rec["distance"] = None if self.distance is None else round(float(self.distance), 6)
        return rec


@dataclass
class IdentityHit:
    """One person found: the site ``identity`` (None: a tracklet not linked yet), the
    ``distance`` of its nearest tracklet and its ``route`` in time order."""

    identity: Optional[int]
    distance: float
    route: List[RouteStep] = field(default_factory=list)

    def record(self, rank: int) -> Dict[str, Any]:
        """JSON-ready: rank, identity, distance, cameras in route order, span and the route."""
        cams: List[int] = []
        for step in self.route:
            if not cams or cams[-1] != step.camera:
                cams.append(step.camera)
        return {
            "rank": rank,
            "identity": self.identity,
            "distance": round(float(self.distance), 6),
            "cameras": cams,
            "start": format_time(min(s.start for s in self.route)) if self.route else None,
            "end": format_time(max(s.end for s in self.route)) if self.route else None,
            "tracklets": len(self.route),
            "route": [s.record() for s in self.route],
        }


def _steps(
    table: TrackletTable, rows: Sequence[int], query: Optional[np.ndarray]
) -> List[RouteStep]:
    """Route steps of the table's rows (in the table's time order)."""
    dist = None
    if query is not None and table.features is not None and len(rows):
        dist = np.maximum(2.0 - 2.0 * table.features[list(rows)] @ query, 0.0)
    return [
        RouteStep(
            tracklet=table.keys[i],
            camera=int(table.camera[i]),
            track_id=int(table.track_id[i]),
            start=float(table.start[i]),
            end=float(table.end[i]),
            n_crops=int(table.n_crops[i]),
            distance=None if dist is None else float(dist[j]),
        )
        for j, i in enumerate(sorted(rows))
    ]


def route_of(
    store: GalleryStore, identity: int, query: Optional[np.ndarray] = None
) -> List[RouteStep]:
    """Identity ``identity``'s route (empty if the store has no such identity)."""
    table = store.tracklets(identities=[int(identity)], features=query is not None)
    q = None if query is None else normalize(np.asarray(query).reshape(1, -1))[0]
    return _steps(table, range(len(table)), q)


def search_identities(
    store: GalleryStore,
    feature: np.ndarray,
    topk: int,
    cameras: Optional[Sequence[Any]] = None,
    after: Optional[float] = None,
    before: Optional[float] = None,
) -> List[IdentityHit]:
    """The top-``topk`` people for one query feature: the nearest tracklets (filtered as a
    tracklet search) grouped by identity, each person ranked by its nearest tracklet and
    answered with its whole route (every camera and time, the filters only choose who)."""
    topk = check_topk(topk)
    q = normalize(np.asarray(feature, np.float32).reshape(1, -1))
    pool = min(max(POOL * topk, 100), MAX_POOL)
    hits = store.search(q, pool, by="tracklet", cameras=cameras, after=after, before=before)[0]
    if not hits:
        return []
    near = store.tracklets(keys=[h.tracklet for h in hits])
    ident = dict(zip(near.keys, near.identity.tolist()))
    best: Dict[Any, float] = {}
    for h in hits:  # in distance order: the first of each person is its nearest
        who = ident.get(h.tracklet, -1)
        key = who if who >= 0 else h.tracklet
        best.setdefault(key, h.distance)
        if len(best) >= topk and key not in best:
            break
    chosen = sorted(best.items(), key=lambda kv: (kv[1], str(kv[0])))[:topk]
    people = [int(k) for k, _ in chosen if isinstance(k, int)]
    lone = [str(k) for k, _ in chosen if not isinstance(k, int)]
    table = store.tracklets(identities=people, features=True) if people else None
    singles = store.tracklets(keys=lone, features=True) if lone else None
    out = []
    for key, dist in chosen:
        t = table if isinstance(key, int) else singles
        assert t is not None
        rows = [
            i
            for i in range(len(t))
            if (t.identity[i] == key if isinstance(key, int) else t.keys[i] == key)
        ]
        out.append(
            IdentityHit(key if isinstance(key, int) else None, float(dist), _steps(t, rows, q[0]))
        )
    return out


def identity_counts(
    store: GalleryStore,
    cameras: Optional[Sequence[Any]] = None,
    after: Optional[float] = None,
    before: Optional[float] = None,
) -> Dict[str, Any]:
    """How many site identities the tracklets matching the filters show, in all and per
    camera, and how many of those tracklets are not linked yet."""
    table = store.tracklets(cameras=cameras, after=after, before=before)
    linked = table.identity >= 0
    per = {
        int(c): int(np.unique(table.identity[linked & (table.camera == c)]).shape[0])
        for c in np.unique(table.camera).tolist()
    }
    return {
        "identities": int(np.unique(table.identity[linked]).shape[0]),
        "per_camera": per,
        "tracklets": len(table),
        "unlinked_tracklets": int((~linked).sum()),
    }
