"""``partreid serve --store``: the people in a store (site identities, ``partreid link``).

    GET  /api/store/route?tracklet=3:17        the route of the person of a tracklet: every
                                               tracklet of its identity in time order, with
                                               camera, span, size and a crop (image_url)
    GET  /api/store/search_route?identity=7&topk=&by=&cameras=&after=&before=
                                               top-K for the person's route (the mean of its
                                               tracklets' features; its own left out)
    POST /api/store/delete_identity?identity=7 forget the person everywhere (audited)

A tracklet not linked yet is a route of one (``identity`` null). Parameters are checked by the
parsers of :mod:`partreid.store.query` / :mod:`partreid.store.identity`; a bad value is a 422
naming it, an unknown tracklet or identity a 404. Searches and deletions are audited as the
other store routes' are.
"""

import time
from typing import Any, Callable, Dict, List, Optional, Tuple

import numpy as np

from ..errors import PartreidError
from ..store import IdentityNotFoundError, TrackletHit
from ..store.base import MAX_ID
from ..store.identity import RouteStep, identity_id, route_of
from ..store.query import MAX_TOPK, tracklet_id
from .error_responses import RequestError
from .store_routes import (
    FilterArgs,
    Filters,
    StoreService,
    _answer,
    _field,
    filter_params,
    parse_filters,
    tracklet_param,
)
from .worker import ServeLimits


def _step_hit(service: StoreService, step: RouteStep) -> Optional[TrackletHit]:
    """The step's tracklet as a hit with its best crop (the crop nearest its own feature)."""
    feat, _ = service.store.get_tracklet(step.tracklet)
    hits = service.store.search(
        feat, 8, by="tracklet", cameras=[step.camera], after=step.start, before=step.end + 1e-3
    )[0]
    return next((h for h in hits if h.tracklet == step.tracklet), None)


def route_record(service: StoreService, tracklet: str) -> Dict[str, Any]:
    """The route of a tracklet's person, each step with its crop's URL; 404 if unknown."""
    with service.lock:
        table = service.store.tracklets(keys=[tracklet])
        if not len(table):
            raise RequestError(
                f"tracklet: store {service.store.uri}: no tracklet {tracklet!r}", 404
            )
        ident = int(table.identity[0])
        if ident >= 0:
            steps = route_of(service.store, ident)
        else:
            steps = [
                RouteStep(
                    tracklet,
                    int(table.camera[0]),
                    int(table.track_id[0]),
                    float(table.start[0]),
                    float(table.end[0]),
                    int(table.n_crops[0]),
                )
            ]
        hits = [_step_hit(service, s) for s in steps]
    route = []
    for step, hit in zip(steps, hits):
        rec = step.record()
        image = service._with_image(hit, 0) if hit is not None else {}  # noqa: SLF001
        rec.update(crop_id=image.get("crop_id"), image_url=image.get("image_url"))
        route.append(rec)
    cams: List[int] = []
    for r in route:
        if not cams or cams[-1] != r["camera"]:
            cams.append(r["camera"])
    return {
        "tracklet": tracklet,
        "identity": ident if ident >= 0 else None,
        "cameras": cams,
        "start": route[0]["start"],
        "end": max(r["end"] for r in route),
        "route": route,
    }


def _route_feature(service: StoreService, identity: int) -> tuple:
    """The normalised mean feature of an identity's tracklets, their ids and their crops'
    count; 404 if none."""
    with service.lock:
        table = service.store.tracklets(identities=[identity], features=True)
    if not len(table):
        raise RequestError(f"identity: store {service.store.uri}: no identity {identity}", 404)
    assert table.features is not None
    mean = table.features.astype(np.float64).mean(0)
    mean /= max(float(np.linalg.norm(mean)), 1e-12)
    return mean.astype(np.float32)[None, :], table.keys, int(table.n_crops.sum())


def forget_identity(service: StoreService, identity: int) -> Tuple[int, List[str]]:
    """Delete ``identity``'s crops, tracklets and identity from the served store and drop its
    tracklets' cached features; ``(crops deleted, tracklet ids)``."""
    with service.lock:
        keys = service.store.tracklets(identities=[identity]).keys
        n = service.store.delete_identity(identity)
    for key in keys:
        service.registry.forget(None, None, key)
    return n, keys


def identity_param() -> Callable[..., int]:
    """A FastAPI dependency: the ``identity`` query parameter (a dependency, so that its errors
    come before the filters' ones)."""
    from fastapi import Query

    def identity(
        identity: int = Query(
            ..., ge=1, le=MAX_ID, description="a site identity (partreid link)", examples=[7]
        ),
    ) -> int:
        return identity

    return identity


def identity_router(service: StoreService, limits: ServeLimits) -> Any:
    """The routes of the module docstring."""
    from fastapi import APIRouter, Depends, Request
    from starlette.concurrency import run_in_threadpool

    router = APIRouter()
    filters = Depends(filter_params(limits))
    tracklet_q = Depends(tracklet_param())

    identity_q = Depends(identity_param())

    @router.get(
        "/api/store/route",
        summary="The route of a tracklet's person: its tracklets in time order, with crops",
        operation_id="store_route",
    )
    async def route(request: Request, tracklet: str = tracklet_q) -> Dict[str, Any]:
        tracklet = _field(tracklet_id, tracklet, "tracklet")
        rec = await run_in_threadpool(route_record, service, tracklet)
        service.audit_event(
            request,
            "route",
            tracklet=tracklet,
            identity=rec["identity"],
            tracklets=len(rec["route"]),
        )
        return rec

    @router.get(
        "/api/store/search_route",
        summary="Top-K for a person's route (its own tracklets left out)",
        operation_id="store_search_route",
    )
    async def search_route(
        request: Request,
        identity: int = identity_q,
        given: FilterArgs = filters,
    ) -> Dict[str, Any]:
        t0 = time.perf_counter()
        f = parse_filters(*given)
        ident = _field(identity_id, identity, "identity")
        feature, own, crops = await run_in_threadpool(_route_feature, service, ident)
        extra = len(own) if f.by == "tracklet" else crops  # room for its own, left out below
        wide = Filters(f.cameras, f.after, f.before, f.by, min(f.topk + extra, MAX_TOPK))
        recs = await run_in_threadpool(service.search, feature, wide)
        mine = set(own)
        recs = [r for r in recs if r["tracklet"] not in mine][: f.topk]
        for rank, r in enumerate(recs, 1):
            r["rank"] = rank
        query = {"identity": ident, "tracklets": len(own)}
        service.audit_search(request, f, query, len(recs))
        return _answer(query, f, recs, t0)

    @router.post(
        "/api/store/delete_identity",
        summary="Forget a person everywhere: its crops, tracklets and identity",
        operation_id="store_delete_identity",
    )
    async def delete_identity(request: Request, identity: int = identity_q) -> Dict[str, Any]:
        ident = _field(identity_id, identity, "identity")
        try:
            n, keys = await run_in_threadpool(forget_identity, service, ident)
        except IdentityNotFoundError as exc:
            raise RequestError(f"identity: {exc}", 404) from None
        except PartreidError as exc:
            raise RequestError(f"identity: {exc}", 422) from None
        cond = {"identity": ident}
        service.audit_event(request, "delete", conditions=cond, deleted=n, tracklets=keys)
        return {
            "deleted": n,
            "tracklets": len(keys),
            "conditions": cond,
            "store": service.summary(),
        }

    return router
