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

import logging
from typing import Any, Optional

from ..deploy.runtime import build_extractor
from ..errors import InvalidValueError
from ..utils.logs import setup_logging
from .error_responses import add_error_handlers, missing_extra, require_serve_extra
from .gallery import default_cache_dir, load_gallery
from .middleware import add_size_limit_and_nosniff
from .routes import add_page, gallery_router, health_router, heatmap_router, search_router
from .worker import SearchWorker, ServeLimits, install_pixel_limit

log = logging.getLogger("partreid")


def create_app(
    worker: SearchWorker, limits: Optional[ServeLimits] = None, title: str = "partreid search"
) -> Any:
    """The FastAPI application over a :class:`SearchWorker` (its gallery; its limits unless
    ``limits`` is given)."""
    require_serve_extra()
    from fastapi import FastAPI

    limits = limits or worker.limits
    app = FastAPI(
        title=title,
        version="1",
        docs_url=None,  # served by add_page from local files: no CDN
        description="Person re-identification search over a gallery of crops "
        f'({len(worker.gallery)} items). Errors are JSON `{{"detail": message}}` with a 4xx status.',
    )
    app.state.worker = worker
    add_error_handlers(app)
    app.include_router(health_router(worker, limits))
    app.include_router(gallery_router(worker.gallery, limits))
    app.include_router(search_router(worker, limits))
    app.include_router(heatmap_router(worker, limits))
    add_page(app)
    add_size_limit_and_nosniff(app, limits.max_upload_bytes)
    return app


def build_worker(
    checkpoint: str,
    gallery: str,
    cache_dir: Optional[str] = None,
    limits: Optional[ServeLimits] = None,
    device: str = "auto",
    batch_size: int = 64,
    num_workers: int = 2,
    runtime: str = "auto",
) -> SearchWorker:
    """Load the model and the gallery (extracting and caching a folder) into a SearchWorker.

    ``runtime`` runs the model's forward pass (:func:`partreid.deploy.runtime.build_extractor`:
    ``auto``, ``onnx`` or ``torch``; its ONNX export is cached in ``cache_dir`` too). Heat maps
    always come from the PyTorch module.
    """
    extractor, module = build_extractor(
        checkpoint, cache_dir or default_cache_dir(), runtime, device, batch_size, num_workers
    )
    served = load_gallery(gallery, checkpoint, lambda: extractor, cache_dir)
    return SearchWorker(extractor, served, limits or ServeLimits(), module=module)


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
        raise missing_extra(exc) from exc
    setup_logging()
    limits = limits or ServeLimits()
    install_pixel_limit(limits.max_pixels)  # process-wide: PIL refuses larger images everywhere
    worker = build_worker(
        checkpoint, gallery, cache_dir, limits, device, batch_size, runtime=runtime
    )
    app = create_app(worker)
    if host not in ("127.0.0.1", "localhost", "::1"):
        log.warning("serving on %s: reachable from other machines (no authentication)", host)
    log.info(
        "partreid serve: %d gallery items; open http://%s:%d/ (API docs at /docs)",
        len(worker.gallery),
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
        worker.close()


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
