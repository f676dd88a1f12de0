"""``partreid serve``: a FastAPI application over a gallery, with one static web page.

JSON API (all errors are ``{"detail": "<message>"}`` with a 4xx status; OpenAPI at ``/docs``):

    GET  /api/health                         model, gallery and limits
    GET  /api/gallery?offset=&limit=&camid=&pid=   one page of gallery items (filters optional)
    GET  /api/gallery/{index}                 one gallery item
    GET  /api/gallery/{index}/image           its crop file
    GET  /api/gallery/image?path=REL          a crop by its path relative to the gallery folder
    POST /api/search  (multipart 'image')     top-K gallery items for an uploaded crop
         ?topk=&rerank=&heatmap=&pid=&camid=  (pid/camid: the query's identity, if known)
    GET  /api/search/item/{index}?topk=&rerank=   top-K for a gallery item (itself left out)
    POST /api/heatmap (multipart 'image')     the query's combined activation map (PNG)

The page (``/``) is ``static/index.html`` + ``app.js`` + ``style.css``: no build step and
nothing loaded from elsewhere.
"""

import asyncio
import base64
import logging
import os
import time
from typing import Annotated, Any, Dict, Optional

import numpy as np

from ..errors import InvalidValueError, MissingExtraError
from ..utils.logs import setup_logging
from .gallery import GalleryPathError
from .worker import SearchEngine, ServeLimits, UploadError, decode_upload, install_pixel_limit

log = logging.getLogger("partreid")

STATIC_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "static")
MULTIPART_SLACK = 64 * 1024  # multipart framing and form fields around the file
PAGE_CSP = (
    "default-src 'self'; img-src 'self' data: blob:; style-src 'self'; script-src 'self'; "
    "connect-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'"
)


def _missing_extra(exc: ImportError) -> ImportError:
    return MissingExtraError(
        f"partreid serve needs FastAPI and uvicorn ({exc.name} is missing): "
        'pip install "partreid[serve]"'
    )


class _Guard:
    """ASGI middleware: refuse request bodies over ``max_bytes`` (by their Content-Length, and
    while reading them when it is absent) and add ``X-Content-Type-Options: nosniff``.

    Pure ASGI on purpose: an exception raised from ``receive`` reaches FastAPI's body parsing
    as the 413 HTTPException it is (``BaseHTTPMiddleware`` would wrap it into a 400)."""

    def __init__(self, app, max_bytes: int, upload_limit: int):
        self.app = app
        self.max_bytes = max_bytes
        self.upload_limit = upload_limit

    def _message(self, size: str) -> str:
        return f"request body {size} exceeds the upload limit of {self.upload_limit} bytes"

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        from starlette.exceptions import HTTPException
        from starlette.responses import JSONResponse

        async def send_nosniff(message):
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                if not any(k.lower() == b"x-content-type-options" for k, _ in headers):
                    headers.append((b"x-content-type-options", b"nosniff"))
                message = {**message, "headers": headers}
            await send(message)

        length = dict(scope["headers"]).get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > self.max_bytes):
            size = f"of {length.decode(errors='replace')} bytes"
            await JSONResponse({"detail": self._message(size)}, status_code=413)(
                scope, receive, send_nosniff
            )
            return
        seen = 0

        async def limited():
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    raise HTTPException(413, self._message(f"of over {self.max_bytes} bytes"))
            return message

        await self.app(scope, limited, send_nosniff)


def _mount_docs(app, static_files) -> None:
    """``/docs``: Swagger UI from the files the ``fastapi-offline`` package ships (part of the
    ``serve`` extra), so the API page works without internet; FastAPI's CDN page otherwise."""
    from fastapi.openapi.docs import get_swagger_ui_html

    try:
        import fastapi_offline

        assets = os.path.join(os.path.dirname(fastapi_offline.__file__), "static")
        app.mount("/docs-static", static_files(directory=assets), name="docs-static")
        urls = {
            "swagger_js_url": "/docs-static/swagger-ui-bundle.js",
            "swagger_css_url": "/docs-static/swagger-ui.css",
            "swagger_favicon_url": "/docs-static/favicon.png",
        }
    except ImportError:
        log.info("fastapi-offline is not installed: /docs loads Swagger UI from its CDN")
        urls = {}

    @app.get("/docs", include_in_schema=False)
    async def _docs():
        return get_swagger_ui_html(openapi_url=app.openapi_url, title=f"{app.title} - API", **urls)


def create_app(
    engine: SearchEngine, limits: Optional[ServeLimits] = None, title: str = "partreid search"
):
    """The FastAPI application over a :class:`SearchEngine` (its gallery; its limits unless
    ``limits`` is given)."""
    try:
        from fastapi import FastAPI, File, Query, Request, UploadFile
        from fastapi.exceptions import RequestValidationError
        from fastapi.responses import FileResponse, JSONResponse, Response
        from fastapi.staticfiles import StaticFiles
        from starlette.concurrency import run_in_threadpool
        from starlette.exceptions import HTTPException as StarletteHTTPException
    except ImportError as exc:
        raise _missing_extra(exc) from exc

    limits = limits or engine.limits
    gallery = engine.gallery
    app = FastAPI(
        title=title,
        version="1",
        docs_url=None,  # served below from local files: no CDN
        description="Person re-identification search over a gallery of crops "
        f'({len(gallery)} items). Errors are JSON `{{"detail": message}}` with a 4xx status.',
    )
    app.state.engine = engine

    # ------------------------------------------------------------------ errors
    def _error(status: int, message: str) -> JSONResponse:
        return JSONResponse({"detail": message}, status_code=status)

    @app.exception_handler(UploadError)
    async def _upload_error(request: Request, exc: UploadError):
        return _error(exc.status, str(exc))

    @app.exception_handler(GalleryPathError)
    async def _path_error(request: Request, exc: GalleryPathError):
        return _error(exc.status, str(exc))

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException):
        return _error(exc.status_code, str(exc.detail))

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError):
        ctype = request.headers.get("content-type", "")
        if request.method == "POST" and not ctype.startswith("multipart/form-data"):
            return _error(
                415,
                f"expected a multipart/form-data upload with an 'image' file field, got "
                f"content type {ctype or 'none'!r}",
            )
        parts = []
        for e in exc.errors():
            where = ".".join(str(x) for x in e.get("loc", ()) if x not in ("body", "query", "path"))
            parts.append(f"{where or 'request'}: {e.get('msg', 'invalid')}")
        return _error(422, "; ".join(parts))

    @app.exception_handler(Exception)
    async def _internal_error(request: Request, exc: Exception):
        log.exception("serve: %s %s failed", request.method, request.url.path)
        return _error(500, f"internal error ({type(exc).__name__}); see the server log")

    # ------------------------------------------------------------------ helpers
    def _results(dist: np.ndarray, idx: np.ndarray, qpid: Optional[int]) -> list:
        out = []
        for rank, (d, i) in enumerate(zip(dist.tolist(), idx.tolist()), 1):
            if i < 0:  # an index that returned fewer than K
                continue
            item = gallery.item(i)
            item["rank"] = rank
            item["distance"] = float(d)
            item["match"] = (
                None if qpid is None or qpid < 0 or item["pid"] < 0 else item["pid"] == qpid
            )
            out.append(item)
        return out

    async def _read_upload(image: UploadFile) -> bytes:
        ctype = (image.content_type or "").split(";")[0].strip().lower()
        if ctype and not (ctype.startswith("image/") or ctype == "application/octet-stream"):
            raise UploadError(
                f"the uploaded file {image.filename!r} has content type {ctype!r}; send an image "
                "(image/jpeg, image/png, ...)",
                415,
            )
        data = await image.read(limits.max_upload_bytes + 1)
        if len(data) > limits.max_upload_bytes:
            raise UploadError(
                f"the uploaded file {image.filename!r} exceeds the upload limit of "
                f"{limits.max_upload_bytes} bytes",
                413,
            )
        return data

    def _decode(data: bytes, name: str):
        img = decode_upload(data, limits, name)
        return img, engine.preprocess(img)

    # ------------------------------------------------------------------ API
    @app.get("/api/health", summary="Server, model, gallery and limits")
    def health() -> Dict[str, Any]:
        return {
            "status": "ok",
            "model": engine.model_summary(),
            "gallery": gallery.summary(),
            "limits": limits.to_dict(),
            "worker": engine.stats(),
        }

    @app.get("/api/gallery", summary="One page of gallery items, optionally filtered")
    def gallery_page(
        offset: int = Query(0, ge=0, description="first item of the page"),
        limit: int = Query(
            limits.default_page_size, ge=1, le=limits.max_page_size, description="page size"
        ),
        camid: Optional[int] = Query(None, description="only this camera"),
        pid: Optional[int] = Query(None, description="only this identity"),
    ) -> Dict[str, Any]:
        total, rows = gallery.page(offset, limit, camid, pid)
        return {
            "total": int(total),
            "offset": offset,
            "limit": limit,
            "items": [gallery.item(int(i)) for i in rows],
        }

    @app.get(
        "/api/gallery/image",
        summary="A gallery crop by its path relative to the gallery folder",
        response_class=FileResponse,
    )
    def gallery_image_by_path(path: str = Query(..., description="e.g. bounding_box_test/x.jpg")):
        _, full = gallery.resolve(path)
        return FileResponse(full, headers={"Cache-Control": "public, max-age=3600"})

    @app.get("/api/gallery/{index}", summary="One gallery item")
    def gallery_item(index: int) -> Dict[str, Any]:
        return gallery.item(gallery.check_index(index))

    @app.get(
        "/api/gallery/{index}/image", summary="A gallery item's crop", response_class=FileResponse
    )
    def gallery_image(index: int):
        return FileResponse(
            gallery.image_file(index), headers={"Cache-Control": "public, max-age=3600"}
        )

    @app.post("/api/search", summary="Top-K gallery items for an uploaded crop")
    async def search_upload(
        image: Annotated[UploadFile, File(description="the query crop (JPEG, PNG, ...)")],
        topk: int = Query(limits.default_topk, ge=1, le=limits.max_topk),
        rerank: bool = Query(False, description="k-reciprocal re-ranking of the shortlist"),
        heatmap: bool = Query(False, description="also return the query's activation map"),
        pid: Optional[int] = Query(None, description="the query's identity, if known"),
        camid: Optional[int] = Query(None, description="the query's camera, if known"),
    ) -> Dict[str, Any]:
        t0 = time.perf_counter()
        data = await _read_upload(image)
        img, tensor = await run_in_threadpool(_decode, data, f"upload {image.filename!r}")
        if heatmap and not engine.has_heatmap:
            raise UploadError(f"model {engine.info.name} has no activation maps", 400)
        dist, idx = await asyncio.wrap_future(engine.submit_image(tensor, topk, rerank))
        out: Dict[str, Any] = {
            "query": {"width": img.width, "height": img.height, "pid": pid, "camid": camid},
            "topk": topk,
            "rerank": rerank,
            "results": _results(dist, idx, pid),
        }
        if heatmap:
            png = await asyncio.wrap_future(engine.submit_heatmap(tensor))
            out["heatmap"] = "data:image/png;base64," + base64.b64encode(png).decode()
        out["took_ms"] = round(1000 * (time.perf_counter() - t0), 1)
        return out

    @app.get("/api/search/item/{index}", summary="Top-K for a gallery item (itself left out)")
    async def search_item(
        index: int,
        topk: int = Query(limits.default_topk, ge=1, le=limits.max_topk),
        rerank: bool = Query(False),
    ) -> Dict[str, Any]:
        t0 = time.perf_counter()
        gallery.check_index(index)
        k = min(topk + 1, len(gallery))
        feat = gallery.features.features[index]
        dist, idx = await asyncio.wrap_future(engine.submit_feature(feat, k, rerank))
        keep = idx != index
        dist, idx = dist[keep][:topk], idx[keep][:topk]
        item = gallery.item(index)
        return {
            "query": item,
            "topk": topk,
            "rerank": rerank,
            "results": _results(dist, idx, item["pid"]),
            "took_ms": round(1000 * (time.perf_counter() - t0), 1),
        }

    @app.post(
        "/api/heatmap",
        summary="The uploaded crop's activation map, all branches combined (PNG)",
        response_class=Response,
        responses={200: {"content": {"image/png": {}}}},
    )
    async def heatmap_upload(image: Annotated[UploadFile, File(description="the crop")]):
        if not engine.has_heatmap:
            raise UploadError(f"model {engine.info.name} has no activation maps", 400)
        data = await _read_upload(image)
        _, tensor = await run_in_threadpool(_decode, data, f"upload {image.filename!r}")
        png = await asyncio.wrap_future(engine.submit_heatmap(tensor))
        return Response(png, media_type="image/png")

    # ------------------------------------------------------------------ page
    @app.get("/", include_in_schema=False)
    def page():
        return FileResponse(
            os.path.join(STATIC_DIR, "index.html"),
            headers={"Content-Security-Policy": PAGE_CSP, "Cache-Control": "no-cache"},
        )

    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    _mount_docs(app, StaticFiles)

    app.add_middleware(
        _Guard,
        max_bytes=limits.max_upload_bytes + MULTIPART_SLACK,
        upload_limit=limits.max_upload_bytes,
    )
    return app


RUNTIMES = ("auto", "onnx", "torch")


def _onnx_available() -> bool:
    import importlib.util

    return all(importlib.util.find_spec(m) for m in ("onnx", "onnxruntime", "onnxscript"))


def build_engine(
    checkpoint: str,
    gallery: str,
    cache_dir: Optional[str] = None,
    limits: Optional[ServeLimits] = None,
    device: str = "auto",
    batch_size: int = 64,
    num_workers: int = 2,
    runtime: str = "auto",
) -> SearchEngine:
    """Load the model and the gallery (extracting and caching a folder) into a SearchEngine.

    ``runtime`` runs the model's forward pass: ``onnx`` (ONNX Runtime on an export of the
    checkpoint made and checked once, cached in ``cache_dir``), ``torch``, or ``auto`` = ONNX
    Runtime on the CPU when the ``deploy`` extra is installed (1.8x the throughput of PyTorch
    with the demo model, benchmarks/serve_load.py), else PyTorch. Heat maps always come from
    the PyTorch module.
    """
    from ..inference import Extractor, load_model
    from ..utils.device import resolve_device
    from .gallery import default_cache_dir, load_gallery

    if runtime not in RUNTIMES:
        raise InvalidValueError(f"unknown runtime {runtime!r}; valid: {', '.join(RUNTIMES)}")
    limits = limits or ServeLimits()
    module = None
    if checkpoint.endswith(".onnx"):
        if runtime == "torch":
            raise InvalidValueError(
                f"--runtime torch needs a partreid checkpoint (.pth), not {checkpoint}"
            )
        model: Any = checkpoint
    else:
        module = model = load_model(checkpoint)
        on_cpu = resolve_device(str(device)).type == "cpu"
        if runtime == "onnx" and not on_cpu:
            raise InvalidValueError(
                f"--runtime onnx runs on the CPU here; use --device cpu, not {device}"
            )
        if runtime == "onnx" or (runtime == "auto" and on_cpu and _onnx_available()):
            from ..deploy.export import cached_onnx

            try:
                model = cached_onnx(module, checkpoint, cache_dir or default_cache_dir())
            except Exception as exc:
                if runtime == "onnx":
                    raise
                log.warning("ONNX export failed (%s); serving with PyTorch", exc)
        elif runtime == "auto" and on_cpu:
            log.info("serving with PyTorch; `pip install partreid[deploy]` for ONNX Runtime")
    extractor = Extractor(model, device=device, batch_size=batch_size, num_workers=num_workers)
    log.info("model runtime: %s", "ONNX Runtime" if extractor.onnx is not None else "PyTorch")
    served = load_gallery(gallery, checkpoint, lambda: extractor, cache_dir)
    return SearchEngine(extractor, served, limits, module=module)


def serve(
    checkpoint: str,
    gallery: str,
    host: str = "127.0.0.1",
    port: int = 8000,
    cache_dir: Optional[str] = None,
    limits: Optional[ServeLimits] = None,
    device: str = "auto",
    batch_size: int = 64,
    log_level: str = "info",
    runtime: str = "auto",
) -> None:
    """``partreid serve``: load everything, then serve HTTP on ``host:port`` until stopped."""
    try:
        import uvicorn
    except ImportError as exc:
        raise _missing_extra(exc) from exc
    setup_logging()
    limits = limits or ServeLimits()
    install_pixel_limit(limits.max_pixels)  # process-wide: PIL refuses larger images everywhere
    engine = build_engine(
        checkpoint, gallery, cache_dir, limits, device, batch_size, runtime=runtime
    )
    app = create_app(engine)
    if host not in ("127.0.0.1", "localhost", "::1"):
        log.warning("serving on %s: reachable from other machines (no authentication)", host)
    log.info(
        "partreid serve: %d gallery items; open http://%s:%d/ (API docs at /docs)",
        len(engine.gallery),
        host if ":" not in host else f"[{host}]",
        port,
    )
    try:
        uvicorn.run(
            app,
            host=host,
            port=port,
            log_level=log_level,
            timeout_keep_alive=5,
            limit_concurrency=128,  # beyond that: 503 at once, not unbounded buffered uploads
        )
    finally:
        engine.close()


def serve_command(
    checkpoint: str,
    gallery: str,
    host: str = "127.0.0.1",
    port: int = 8000,
    cache: Optional[str] = None,
    device: str = "auto",
    batch_size: int = 64,
    max_upload_mb: float = 8.0,
    max_pixels: int = 16_777_216,
    max_topk: int = 100,
    max_page_size: int = 200,
    runtime: str = "auto",
) -> int:
    """What ``partreid serve`` runs: the limits from the options, then :func:`serve`."""
    if not 0 < port < 65536:
        raise InvalidValueError(f"--port must be 1..65535, got {port}")
    if max_upload_mb <= 0:
        raise InvalidValueError(f"--max-upload-mb must be positive, got {max_upload_mb}")
    limits = ServeLimits(
        max_upload_bytes=int(max_upload_mb * 1024 * 1024),
        max_pixels=max_pixels,
        max_topk=max_topk,
        default_topk=min(10, max_topk),
        max_page_size=max_page_size,
        default_page_size=min(48, max_page_size),
    )
    serve(checkpoint, gallery, host, port, cache, limits, device, batch_size, runtime=runtime)
    return 0
