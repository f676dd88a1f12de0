"""The server's routes on FastAPI routers: health, gallery, search, heat map, the page and docs.

Each ``*_router`` builds an ``APIRouter`` over a :class:`~partreid.serve.worker.SearchWorker`
(or its gallery) and the request limits (they set the query parameters' defaults and bounds).
FastAPI is imported inside these functions: it is an optional extra.
"""

import asyncio
import base64
import logging
import os
import time
from typing import Annotated, Any, Dict, Optional, Tuple

import numpy as np

from ..utils.times import shown
from .gallery import ServedGallery
from .pages import GALLERY_PAGE, Page, render_page
from .worker import SearchWorker, ServeLimits, UploadError, decode_upload

log = logging.getLogger("partreid")

STATIC_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "static")
PAGE_CSP = (
    "default-src 'self'; img-src 'self' data: blob:; style-src 'self'; script-src 'self'; "
    "connect-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'"
)
IMAGE_CACHING = {"Cache-Control": "public, max-age=3600"}
MAX_INDEX = 2**31 - 1  # gallery rows, offsets, identities and cameras of a fixed gallery
MAX_PATH_CHARS = 4096
UPLOAD_TYPES = "image/jpeg, image/png, image/webp, image/bmp, image/gif, image/tiff"


# a 2 x 4 plain-text PPM (a person in red over blue legs): an image that is also valid JSON
# text, so the schema can carry an example upload that reaches the search
EXAMPLE_UPLOAD = "P3 2 4 255 " + " ".join(["200 40 40"] * 4 + ["40 40 200"] * 4)


def image_field(description: str = "the query crop (JPEG, PNG, ...)") -> Any:
    """The ``image`` form field of an upload route, with :data:`EXAMPLE_UPLOAD` as example."""
    from fastapi import File

    return File(description=description, examples=[EXAMPLE_UPLOAD])


def upload_schema(limits: ServeLimits) -> Dict[str, Any]:
    """OpenAPI of a multipart upload's ``image`` field: the image types it takes (a fuzzer
    sends images of those types) and the size and pixel limits."""
    desc = (
        f"the query crop: {UPLOAD_TYPES}; at most {limits.max_upload_bytes} bytes and "
        f"{limits.max_pixels} pixels (413 beyond)"
    )
    field = {"contentType": UPLOAD_TYPES}
    return {
        "requestBody": {
            "description": desc,
            "content": {"multipart/form-data": {"encoding": {"image": field}}},
        }
    }


def health_router(worker: SearchWorker, limits: ServeLimits) -> Any:
    """``GET /api/health``: model, gallery, limits and the worker's counters."""
    from fastapi import APIRouter

    router = APIRouter()

    @router.get("/api/health", summary="Server, model, gallery and limits")
    def health() -> Dict[str, Any]:
        return {
            "status": "ok",
            "model": worker.model_summary(),
            "gallery": worker.gallery.summary(),
            "limits": limits.to_dict(),
            "worker": worker.stats(),
        }

    return router


def gallery_router(gallery: ServedGallery, limits: ServeLimits) -> Any:
    """``GET /api/gallery...``: pages of items, one item, and crops by index or by path."""
    from fastapi import APIRouter, Path, Query
    from fastapi.responses import FileResponse

    router = APIRouter()
    index_p = Path(ge=0, le=MAX_INDEX, description="a gallery row")

    @router.get("/api/gallery", summary="One page of gallery items, optionally filtered")
    def gallery_page(
        offset: int = Query(0, ge=0, le=MAX_INDEX, description="first item of the page"),
        limit: int = Query(
            limits.default_page_size, ge=1, le=limits.max_page_size, description="page size"
        ),
        camid: Optional[int] = Query(None, ge=-1, le=MAX_INDEX, description="only this camera"),
        pid: Optional[int] = Query(None, ge=-1, le=MAX_INDEX, description="only this identity"),
    ) -> Dict[str, Any]:
        total, rows = gallery.page(offset, limit, camid, pid)
        return {
            "total": int(total),
            "offset": offset,
            "limit": limit,
            "items": [gallery.item(int(i)) for i in rows],
        }

    # before /api/gallery/{index}, which would take "image" for an index
    @router.get(
        "/api/gallery/image",
        summary="A gallery crop by its path relative to the gallery folder",
        response_class=FileResponse,
    )
    def gallery_image_by_path(
        path: str = Query(
            ...,
            max_length=MAX_PATH_CHARS,
            description="e.g. bounding_box_test/x.jpg",
        ),
    ):
        _, full = gallery.resolve(path)
        return FileResponse(full, headers=IMAGE_CACHING)

    @router.get("/api/gallery/{index}", summary="One gallery item")
    def gallery_item(index: int = index_p) -> Dict[str, Any]:
        return gallery.item(gallery.check_index(index))

    @router.get(
        "/api/gallery/{index}/image", summary="A gallery item's crop", response_class=FileResponse
    )
    def gallery_image(index: int = index_p):
        return FileResponse(gallery.image_file(index), headers=IMAGE_CACHING)

    return router


def _results(
    gallery: ServedGallery, dist: np.ndarray, idx: np.ndarray, qpid: Optional[int]
) -> list:
    """Ranked gallery items with their distances; ``match`` only when both identities are
    known."""
    out = []
    for rank, (d, i) in enumerate(zip(dist.tolist(), idx.tolist()), 1):
        if i < 0:  # an index that returned fewer than K
            continue
        item = gallery.item(i)
        item["rank"] = rank
        item["distance"] = float(d)
        item["match"] = None if qpid is None or qpid < 0 or item["pid"] < 0 else item["pid"] == qpid
        out.append(item)
    return out


async def _read_upload(image: Any, limits: ServeLimits) -> bytes:
    """An uploaded file's bytes: 415 when it says it is no image, 413 over the limit."""
    ctype = (image.content_type or "").split(";")[0].strip().lower()
    name = shown(image.filename)
    if ctype and not (ctype.startswith("image/") or ctype == "application/octet-stream"):
        raise UploadError(
            f"image: the uploaded file {name} has content type {shown(ctype)}; send an image "
            f"({UPLOAD_TYPES})",
            415,
        )
    data = await image.read(limits.max_upload_bytes + 1)
    if len(data) > limits.max_upload_bytes:
        raise UploadError(
            f"image: the uploaded file {name} exceeds the upload limit of "
            f"{limits.max_upload_bytes} bytes",
            413,
        )
    return data


async def read_upload_tensor(
    worker: SearchWorker, limits: ServeLimits, image: Any
) -> Tuple[bytes, Any, Any]:
    """``(bytes, PIL image, model input tensor)`` of an upload, decoded off the event loop."""
    from starlette.concurrency import run_in_threadpool

    data = await _read_upload(image, limits)

    def decode():
        img = decode_upload(data, limits, f"image: upload {shown(image.filename)}")
        return img, worker.preprocess(img)

    img, tensor = await run_in_threadpool(decode)
    return data, img, tensor


async def _upload_tensor(worker: SearchWorker, limits: ServeLimits, image: Any) -> Tuple[Any, Any]:
    """``(PIL image, model input tensor)`` of an upload, decoded off the event loop."""
    _, img, tensor = await read_upload_tensor(worker, limits, image)
    return img, tensor


def _need_heatmap(worker: SearchWorker) -> None:
    if not worker.has_heatmap:
        raise UploadError(f"model {worker.info.name} has no activation maps", 400)


def search_router(worker: SearchWorker, limits: ServeLimits) -> Any:
    """``/api/search``: top-K gallery items for an uploaded crop or for a gallery item."""
    from fastapi import APIRouter, Path, Query, UploadFile

    router = APIRouter()
    gallery = worker.gallery

    @router.post(
        "/api/search",
        summary="Top-K gallery items for an uploaded crop",
        openapi_extra=upload_schema(limits),
    )
    async def search_upload(
        image: Annotated[UploadFile, image_field()],
        topk: int = Query(limits.default_topk, ge=1, le=limits.max_topk),
        rerank: bool = Query(False, description="k-reciprocal re-ranking of the shortlist"),
        heatmap: bool = Query(False, description="also return the query's activation map"),
        pid: Optional[int] = Query(
            None, ge=-1, le=MAX_INDEX, description="the query's identity, if known"
        ),
        camid: Optional[int] = Query(
            None, ge=-1, le=MAX_INDEX, description="the query's camera, if known"
        ),
    ) -> Dict[str, Any]:
        t0 = time.perf_counter()
        img, tensor = await _upload_tensor(worker, limits, image)
        if heatmap:
            _need_heatmap(worker)
        dist, idx = await asyncio.wrap_future(worker.submit_image(tensor, topk, rerank))
        out: Dict[str, Any] = {
            "query": {"width": img.width, "height": img.height, "pid": pid, "camid": camid},
            "topk": topk,
            "rerank": rerank,
            "results": _results(gallery, dist, idx, pid),
        }
        if heatmap:
            png = await asyncio.wrap_future(worker.submit_heatmap(tensor))
            out["heatmap"] = "data:image/png;base64," + base64.b64encode(png).decode()
        out["took_ms"] = round(1000 * (time.perf_counter() - t0), 1)
        return out

    @router.get("/api/search/item/{index}", summary="Top-K for a gallery item (itself left out)")
    async def search_item(
        index: int = Path(ge=0, le=MAX_INDEX, description="a gallery row"),
        topk: int = Query(limits.default_topk, ge=1, le=limits.max_topk),
        rerank: bool = Query(False),
    ) -> Dict[str, Any]:
        t0 = time.perf_counter()
        feat = gallery.features.features[gallery.check_index(index)]
        k = min(topk + 1, len(gallery))
        dist, idx = await asyncio.wrap_future(worker.submit_feature(feat, k, rerank))
        keep = idx != index
        item = gallery.item(index)
        return {
            "query": item,
            "topk": topk,
            "rerank": rerank,
            "results": _results(gallery, dist[keep][:topk], idx[keep][:topk], item["pid"]),
            "took_ms": round(1000 * (time.perf_counter() - t0), 1),
        }

    return router


def heatmap_router(worker: SearchWorker, limits: ServeLimits) -> Any:
    """``POST /api/heatmap``: an uploaded crop's activation map as a PNG."""
    from fastapi import APIRouter, UploadFile
    from fastapi.responses import Response

    router = APIRouter()

    @router.post(
        "/api/heatmap",
        summary="The uploaded crop's activation map, all branches combined (PNG)",
        openapi_extra=upload_schema(limits),
        response_class=Response,
        responses={200: {"content": {"image/png": {}}}},
    )
    async def heatmap_upload(image: Annotated[UploadFile, image_field("the crop")]):
        _need_heatmap(worker)
        _, tensor = await _upload_tensor(worker, limits, image)
        png = await asyncio.wrap_future(worker.submit_heatmap(tensor))
        return Response(png, media_type="image/png")

    return router


def _swagger_assets() -> Optional[str]:
    """The Swagger UI files the ``fastapi-offline`` package ships (part of the ``serve`` extra),
    or ``None`` when it is not installed."""
    try:
        import fastapi_offline
    except ImportError:
        log.info("fastapi-offline is not installed: /docs loads Swagger UI from its CDN")
        return None
    return os.path.join(os.path.dirname(fastapi_offline.__file__), "static")


def page_router(swagger_urls: Dict[str, str], page: Page = GALLERY_PAGE) -> Any:
    """``GET /`` (the web ``page``, rendered once here, under its Content-Security-Policy) and
    ``GET /docs`` (Swagger UI from ``swagger_urls``; FastAPI's CDN files when empty)."""
    from fastapi import APIRouter, Request
    from fastapi.openapi.docs import get_swagger_ui_html
    from fastapi.responses import HTMLResponse

    router = APIRouter()
    html = render_page(page)

    @router.get("/", include_in_schema=False)
    def page_html():
        return HTMLResponse(
            html, headers={"Content-Security-Policy": PAGE_CSP, "Cache-Control": "no-cache"}
        )

    @router.get("/docs", include_in_schema=False)
    async def docs(request: Request):
        app = request.app
        return get_swagger_ui_html(
            openapi_url=app.openapi_url, title=f"{app.title} - API", **swagger_urls
        )

    return router


def add_page(app: Any, page: Page = GALLERY_PAGE) -> None:
    """The web ``page`` (:mod:`.pages`), its static files (``/static``) and the API docs
    (``/docs``, offline when ``fastapi-offline`` is installed) on ``app``."""
    from fastapi.staticfiles import StaticFiles

    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    assets = _swagger_assets()
    urls: Dict[str, str] = {}
    if assets is not None:
        app.mount("/docs-static", StaticFiles(directory=assets), name="docs-static")
        urls = {
            "swagger_js_url": "/docs-static/swagger-ui-bundle.js",
            "swagger_css_url": "/docs-static/swagger-ui.css",
            "swagger_favicon_url": "/docs-static/favicon.png",
        }
    app.include_router(page_router(urls, page))
