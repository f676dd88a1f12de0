"""``partreid serve --store``: the page's questions to a gallery store, over HTTP.

    GET  /api/store/stats                          crops, tracklets, cameras, span, model
    POST /api/store/search (multipart 'image')     top-K tracklets (or crops) of an upload
         ?topk=&by=tracklet|crop&cameras=3,4|3-7&after=ISO&before=ISO
    GET  /api/store/search_tracklet?tracklet=3:17&topk=&by=&cameras=&after=&before=
                                                   the same for a stored tracklet (itself left out)
    GET  /api/store/crops/{id}                     a returned crop (JPEG), by the id of a result
    POST /api/store/delete?before=ISO&camera=&track=   forget crops (at least one condition)

Results are the records of :func:`partreid.store.query.search_store`'s hits, each with
``crop_id`` and ``image_url`` added. Times are UTC. Every search and deletion is audited.

Every parameter is checked before it costs anything, by the parsers of
:mod:`partreid.store.query` and :mod:`partreid.utils.times`; the OpenAPI schema states the same
patterns and bounds (so generated requests reach the logic) and a bad value is a 422 whose
message starts with the parameter's name. Camera ranges stay ranges (``1-300000000`` is one
``BETWEEN``); ``filters.cameras`` of an answer lists them as ``[[first, last], ...]``.
"""

import asyncio
import threading
import time
from dataclasses import dataclass
from typing import Annotated, Any, Callable, Dict, List, Optional, Tuple

import numpy as np

from ..errors import PartreidError
from ..store import GalleryStore, Hit, TrackletNotFoundError
from ..store.query import (
    CAMERA_PATTERN,
    CAMERAS_MAX_CHARS,
    CAMERAS_PATTERN,
    MAX_CAMERA_TERMS,
    TRACKLET_MAX_CHARS,
    TRACKLET_PATTERN,
    AnyHit,
    CameraRanges,
    camera_id,
    parse_cameras,
    search_store,
    track_ref,
    tracklet_id,
)
from ..utils.times import MAX_TIME_CHARS, TIME_HELP, TIME_PATTERN, format_time, parse_time
from .access import AuditLog, sha256_hex
from .crops import CropRef, CropRegistry, crop_jpeg
from .error_responses import RequestError
from .routes import image_field, read_upload_tensor, upload_schema
from .worker import SearchWorker, ServeLimits

BY_PATTERN = "^(tracklet|crop)$"
CROP_ID_PATTERN = "^[0-9a-f]{24}$"  # CropRegistry ids
TRACK_PATTERN = f"^$|^[0-9]{{1,19}}$|{TRACKLET_PATTERN}"  # none, a track of ?camera=, or an id
OPTIONAL_TIME_PATTERN = f"^ *$|{TIME_PATTERN}"  # blank: no such bound


@dataclass
class Filters:
    """A search's filters, parsed: camera ids, ``[after, before)`` in epoch seconds, by, top-K."""

    cameras: Optional[CameraRanges]
    after: Optional[float]
    before: Optional[float]
    by: str = "tracklet"
    topk: int = 10

    def to_dict(self) -> Dict[str, Any]:
        """JSON copy, times as ISO 8601 UTC, cameras as ``[[first, last], ...]``."""
        return {
            "cameras": None if self.cameras is None else [list(r) for r in self.cameras],
            "after": None if self.after is None else format_time(self.after),
            "before": None if self.before is None else format_time(self.before),
            "by": self.by,
            "topk": self.topk,
        }


def _time_field(value: Optional[str], name: str) -> Optional[float]:
    if value is None or not str(value).strip():
        return None
    return _field(parse_time, value, name)


def _field(parse: Any, value: Any, name: str) -> Any:
    """``parse(value, name)``; its error as a 422 whose message starts with ``name``."""
    try:
        return parse(value, name)
    except PartreidError as exc:
        raise RequestError(f"{name}: {exc}", 422) from None


def parse_filters(
    cameras: Optional[str], after: Optional[str], before: Optional[str], by: str, topk: int
) -> Filters:
    """Filters from query strings; a malformed one is a 422 naming its field."""
    cams = _field(parse_cameras, cameras, "cameras")
    t_after, t_before = _time_field(after, "after"), _time_field(before, "before")
    if t_after is not None and t_before is not None and t_before <= t_after:
        raise RequestError(f"before: {before} is not later than after ({after})", 422)
    return Filters(cams, t_after, t_before, by, topk)


def _client(request: Any) -> Optional[str]:
    return request.client.host if request.client else None


class StoreService:
    """The served store (one request at a time), the registry of returned crops, the audit."""

    def __init__(
        self,
        store: GalleryStore,
        audit: Optional[AuditLog],
        registry: Optional[CropRegistry] = None,
    ):
        self.store = store
        self.audit = audit
        self.registry = registry or CropRegistry()
        self.lock = threading.Lock()

    def summary(self) -> Dict[str, Any]:
        """Crops, tracklets, cameras, time span (UTC) and model of the store (JSON-ready)."""
        with self.lock:
            st = self.store.stats()
        model = st.model or {}
        first, last = st.first, st.last
        return {
            "uri": self.store.uri,
            "backend": st.backend,
            "crops": st.crops,
            "tracklets": st.tracklets,
            "cameras": [{"camera": c, "crops": n} for c, n in sorted(st.cameras.items())],
            "first": None if first is None else format_time(first),
            "last": None if last is None else format_time(last),
            "dim": st.dim,
            "model": {
                k: model.get(k) for k in ("name", "feature_dim", "fingerprint", "checkpoint")
            },
        }

    def tracklet_feature(self, tracklet: str) -> Tuple[np.ndarray, Dict[str, Any]]:
        """A stored tracklet's feature row and metadata; 404 naming it when there is none."""
        try:
            with self.lock:
                feat, meta = self.store.get_tracklet(tracklet)
        except TrackletNotFoundError as exc:
            raise RequestError(f"tracklet: {exc}", 404) from None
        except PartreidError as exc:
            raise RequestError(f"tracklet: {exc}", 422) from None
        meta = {**meta, "start": format_time(meta["start"]), "end": format_time(meta["end"])}
        return np.asarray(feat, np.float32)[None, :], meta

    def search(
        self, feature: np.ndarray, f: Filters, exclude: Optional[str] = None
    ) -> List[Dict[str, Any]]:
        """The records of :func:`search_store`'s hits, each with the URL of its (best) crop."""
        with self.lock:
            hits = search_store(
                self.store, feature, f.topk, f.by, f.cameras, f.after, f.before, exclude
            )
        return [self._with_image(h, rank) for rank, h in enumerate(hits, 1)]

    def _with_image(self, hit: AnyHit, rank: int) -> Dict[str, Any]:
        rec = hit.record(rank)
        crop = hit if isinstance(hit, Hit) else hit.best
        if crop is None:
            return {**rec, "crop_id": None, "image_url": None}
        ref = CropRef(
            path=crop.path,
            frame=int(crop.frame),
            box=tuple(round(float(v), 1) for v in crop.box),  # type: ignore[arg-type]
            camera=int(crop.camera),
            timestamp=float(crop.timestamp),
            tracklet=hit.tracklet,
        )
        cid = self.registry.register(ref)
        return {**rec, "crop_id": cid, "image_url": f"/api/store/crops/{cid}"}

    def crop(self, cid: str) -> bytes:
        """JPEG bytes of a crop this server returned."""
        ref = self.registry.get(cid)
        return crop_jpeg(ref.path, ref.frame, ref.box)

    def delete(self, before: Optional[float], camera: Optional[int], track: Optional[str]) -> int:
        """Delete the matching crops from the store (and from the served crops)."""
        with self.lock:
            n = self.store.delete(before=before, camera=camera, track=track)
        self.registry.forget(before, camera, track)
        return n

    def audit_event(self, request: Any, event: str, **fields: Any) -> None:
        """One audit line for ``event`` of ``request`` (when the server keeps an audit log)."""
        if self.audit is not None:
            self.audit.write(event, _client(request), request.url.path, **fields)

    def audit_search(self, request: Any, f: Filters, query: Dict[str, Any], n: int) -> None:
        """One audit line for a search."""
        self.audit_event(request, "search", filters=f.to_dict(), query=query, results=n)


def _answer(query: Dict[str, Any], f: Filters, recs: List[Dict[str, Any]], t0: float) -> Dict:
    return {
        "query": query,
        "filters": f.to_dict(),
        "results": recs,
        "took_ms": round(1000 * (time.perf_counter() - t0), 1),
    }


def _text_query(default: Any, pattern: str, max_chars: int, description: str, example: str) -> Any:
    """A query parameter whose schema states its pattern and length; the length is enforced by
    FastAPI, the pattern by the parameter's parser (for a message that says what is expected)."""
    from fastapi import Query

    return Query(
        default,
        max_length=max_chars,
        description=description,
        examples=[example],
        json_schema_extra={"pattern": pattern},
    )


def _result_links() -> Dict[str, Any]:
    """OpenAPI links from a search answer to the crop and tracklet of its first result (the
    stateful fuzzing phase follows them)."""
    links = {
        "CropOfFirstResult": {
            "operationId": "store_crop",
            "parameters": {"crop_id": "$response.body#/results/0/crop_id"},
        },
        "SearchFirstResultsTracklet": {
            "operationId": "store_search_tracklet",
            "parameters": {"tracklet": "$response.body#/results/0/tracklet"},
        },
    }
    return {200: {"description": "the ranked results", "links": links}}


# the search filters as given, in :func:`parse_filters`'s order: cameras, after, before, by, topk
FilterArgs = Tuple[Optional[str], Optional[str], Optional[str], str, int]


def filter_params(limits: ServeLimits) -> Callable[..., FilterArgs]:
    """A FastAPI dependency: the search filters' query parameters (defaults, bounds, patterns),
    one definition for every search route. The route parses them (:func:`parse_filters`), so
    that a parameter FastAPI rejects is answered before a filter that does not parse."""
    from fastapi import Query

    q = {
        "topk": Query(
            limits.default_topk, ge=1, le=limits.max_topk, description="results", examples=[10]
        ),
        "by": Query("tracklet", pattern=BY_PATTERN, description="tracklet (grouped) or crop"),
        "cameras": _text_query(
            None,
            CAMERAS_PATTERN,
            CAMERAS_MAX_CHARS,
            f"camera ids and ranges: 3,4,7 or 1-300 (all when empty); at most "
            f"{MAX_CAMERA_TERMS} terms, ids 0..2^63-1",
            "1,3-5",
        ),
        "after": _text_query(
            None,
            OPTIONAL_TIME_PATTERN,
            MAX_TIME_CHARS,
            f"from this time on: {TIME_HELP}",
            "2026-12-03T14:00Z",
        ),
        "before": _text_query(
            None,
            OPTIONAL_TIME_PATTERN,
            MAX_TIME_CHARS,
            f"before this time: {TIME_HELP}",
            "2026-12-03T16:00Z",
        ),
    }

    def filters(
        topk: int = q["topk"],
        by: str = q["by"],
        cameras: Optional[str] = q["cameras"],
        after: Optional[str] = q["after"],
        before: Optional[str] = q["before"],
    ) -> FilterArgs:
        return cameras, after, before, by, topk

    return filters


def tracklet_param() -> Callable[..., str]:
    """A FastAPI dependency: the ``tracklet`` query parameter, one definition for the routes
    that take it (a dependency, so that its errors come before the filters' ones)."""
    q = _text_query(
        ..., TRACKLET_PATTERN, TRACKLET_MAX_CHARS, "a tracklet id: camera:track or crop:id", "1:3"
    )

    def tracklet(tracklet: str = q) -> str:
        return tracklet

    return tracklet


def store_search_router(service: StoreService, worker: SearchWorker, limits: ServeLimits) -> Any:
    """``POST /api/store/search`` (an upload) and ``GET /api/store/search_tracklet``."""
    from fastapi import APIRouter, Depends, Request, UploadFile
    from starlette.concurrency import run_in_threadpool

    router = APIRouter()
    filters = Depends(filter_params(limits))
    tracklet_q = Depends(tracklet_param())

    @router.post(
        "/api/store/search",
        summary="Top-K of the store for an uploaded crop",
        operation_id="store_search",
        openapi_extra=upload_schema(limits),
        responses=_result_links(),
    )
    async def search_upload(
        request: Request,
        image: Annotated[UploadFile, image_field()],
        given: FilterArgs = filters,
    ) -> Dict[str, Any]:
        t0 = time.perf_counter()
        f = parse_filters(*given)
        data, img, tensor = await read_upload_tensor(worker, limits, image)
        feature = await asyncio.wrap_future(worker.submit_embed(tensor))
        recs = await run_in_threadpool(service.search, feature[None, :], f)
        query = {"sha256": sha256_hex(data), "width": img.width, "height": img.height}
        service.audit_search(request, f, query, len(recs))
        return _answer(query, f, recs, t0)

    @router.get(
        "/api/store/search_tracklet",
        summary="Top-K for a stored tracklet (not itself)",
        operation_id="store_search_tracklet",
        responses=_result_links(),
    )
    async def search_tracklet(
        request: Request,
        tracklet: str = tracklet_q,
        given: FilterArgs = filters,
    ) -> Dict[str, Any]:
        t0 = time.perf_counter()
        f = parse_filters(*given)
        tracklet = _field(tracklet_id, tracklet, "tracklet")
        feature, meta = await run_in_threadpool(service.tracklet_feature, tracklet)
        recs = await run_in_threadpool(service.search, feature, f, tracklet)
        service.audit_search(request, f, {"tracklet": tracklet}, len(recs))
        return _answer(meta, f, recs, t0)

    return router


def store_admin_router(service: StoreService) -> Any:
    """``GET /api/store/stats``, ``GET /api/store/crops/{id}``, ``POST /api/store/delete``."""
    from fastapi import APIRouter, Path, Request
    from fastapi.responses import Response
    from starlette.concurrency import run_in_threadpool

    router = APIRouter()

    @router.get("/api/store/stats", summary="Crops, tracklets, cameras, time span, model")
    def stats() -> Dict[str, Any]:
        return service.summary()

    @router.get(
        "/api/store/crops/{crop_id}",
        summary="The crop of a search result (JPEG), by its crop_id",
        operation_id="store_crop",
        response_class=Response,
        responses={200: {"content": {"image/jpeg": {}}}},
    )
    async def crop(
        crop_id: str = Path(
            description="the crop_id of a result (24 hex digits)",
            max_length=24,
            json_schema_extra={"pattern": CROP_ID_PATTERN},
        ),
    ):
        jpeg = await run_in_threadpool(service.crop, crop_id)
        return Response(jpeg, media_type="image/jpeg", headers={"Cache-Control": "private"})

    @router.post(
        "/api/store/delete",
        summary="Forget crops: before a time, of a camera/track",
        operation_id="store_delete",
    )
    async def delete(
        request: Request,
        before: Optional[str] = _text_query(
            None,
            OPTIONAL_TIME_PATTERN,
            MAX_TIME_CHARS,
            f"crops seen before this time: {TIME_HELP}",
            "2026-12-03T14:00Z",
        ),
        camera: Optional[str] = _text_query(
            None, CAMERA_PATTERN, 64, "crops of this camera (0..2^63-1)", "3"
        ),
        track: Optional[str] = _text_query(
            None,
            TRACK_PATTERN,
            TRACKLET_MAX_CHARS,
            "crops of this tracklet (3:17, crop:42; or a track of ?camera=)",
            "3:17",
        ),
    ) -> Dict[str, Any]:
        t_before = _time_field(before, "before")
        cam = _field(camera_id, camera, "camera")
        ref = _field(lambda v, name: track_ref(v, cam, name), track or None, "track")
        n = await run_in_threadpool(service.delete, t_before, cam, ref)
        cond = {"before": before or None, "camera": cam, "track": ref}
        service.audit_event(request, "delete", conditions=cond, deleted=n)
        return {"deleted": n, "conditions": cond, "store": service.summary()}

    return router


def store_health_router(
    service: StoreService, worker: SearchWorker, limits: ServeLimits, auth: bool
) -> Any:
    """``GET /api/health`` of a store server: model, store summary, limits, worker counters."""
    from fastapi import APIRouter

    router = APIRouter()

    @router.get("/api/health", summary="Server, model, store and limits")
    def health() -> Dict[str, Any]:
        return {
            "status": "ok",
            "mode": "store",
            "model": worker.model_summary(),
            "store": service.summary(),
            "limits": limits.to_dict(),
            "worker": worker.stats(),
            "auth": auth,
            "audit": service.audit is not None,
        }

    return router
