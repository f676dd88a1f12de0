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

With ``--store`` the gallery routes give way to the store's (:mod:`.store_routes`:
``/api/store/stats``, ``/api/store/search``, ``/api/store/search_tracklet``,
``/api/store/crops/{id}``, ``/api/store/delete``) and the page is the store's.

Access (:mod:`.access`): ``GET /api/auth``, ``POST /api/login`` (JSON ``{"token": ...}``, sets
an HttpOnly cookie), ``POST /api/logout``. With ``--token-file`` every other ``/api/*`` route
answers 401 without the token; a ``--host`` other than loopback needs one.

The pages (``/``, :mod:`.pages`: one shell around ``templates/gallery.html`` or
``templates/store.html``) load ``app.js`` or ``store.js``, with ``auth.js``, ``page.js`` (the
helpers both scripts use) and ``style.css`` from ``static/``: no build step and nothing loaded
from elsewhere.
"""

import logging
import os
from dataclasses import dataclass
from typing import Any, Callable, Optional, Tuple

from ..deploy.runtime import build_extractor
from ..errors import InvalidValueError
from ..store import GalleryStore, open_store, scheme_of
from ..utils.logs import setup_logging
from ..utils.model_match import ModelDescription, check_same_model
from .access import AuditLog, Throttle, auth_router, check_exposure
from .error_responses import add_error_handlers, missing_extra, require_serve_extra
from .gallery import default_cache_dir, load_gallery
from .identity_routes import identity_router
from .middleware import add_size_limit_and_nosniff
from .pages import GALLERY_PAGE, STORE_PAGE
from .routes import add_page, gallery_router, health_router, heatmap_router, search_router
from .store_routes import StoreService, store_admin_router, store_health_router, store_search_router
from .worker import SearchWorker, ServeLimits, install_pixel_limit

log = logging.getLogger("partreid")


def create_app(
    worker: SearchWorker,
    limits: Optional[ServeLimits] = None,
    title: str = "partreid search",
    store: Optional[GalleryStore] = None,
    token: Optional[str] = None,
    audit: Optional[AuditLog] = None,
) -> Any:
    """The FastAPI application over a :class:`SearchWorker` (its gallery; its limits unless
    ``limits`` is given), or over an open gallery ``store`` (the worker then only embeds).

    ``token``: every ``/api/*`` route needs it; ``audit``: where store searches and deletions
    are logged."""
    require_serve_extra()
    from fastapi import FastAPI

    limits = limits or worker.limits
    what = (
        f"a gallery of crops ({len(worker.gallery)} items)"
        if store is None
        else f"the gallery store {store.uri}"
    )
    app = FastAPI(
        title=title,
        version="1",
        docs_url=None,  # served by add_page from local files: no CDN
        description=f"Person re-identification search over {what}. Errors are JSON "
        '`{"detail": message}` with a 4xx status.',
    )
    app.state.worker = worker
    app.state.throttle = throttle = Throttle(audit)  # wrong tokens: login and every route
    add_error_handlers(app)
    app.include_router(auth_router(token, audit, throttle))
    if store is None:
        app.include_router(health_router(worker, limits))
        app.include_router(gallery_router(worker.gallery, limits))
        app.include_router(search_router(worker, limits))
    else:
        service = StoreService(store, audit)
        app.state.store = service
        app.include_router(store_health_router(service, worker, limits, token is not None))
        app.include_router(store_search_router(service, worker, limits))
        app.include_router(store_admin_router(service))
        app.include_router(identity_router(service, limits))  # people: routes, forget
    app.include_router(heatmap_router(worker, limits))
    add_page(app, GALLERY_PAGE if store is None else STORE_PAGE)
    add_size_limit_and_nosniff(app, limits.max_upload_bytes, token, throttle)
    return app


def check_store_model(worker: SearchWorker, store: GalleryStore) -> None:
    """Refuse a store whose features come from another model than the served one (the one
    rule, :func:`partreid.utils.model_match.check_same_model`)."""
    ckpt = getattr(worker.info, "path", "") or worker.extractor.source_path
    check_same_model(
        ModelDescription.from_record(store.info.get("model"), store.dim),
        f"store {store.uri}",
        ModelDescription.of_model(worker.info, worker.extractor.feature_dim, ckpt),
        "the served checkpoint",
        "serve the store with the model it was built with",
    )


def default_audit_path(store_uri: str, cache_dir: Optional[str]) -> str:
    """``audit.log`` in an embedded store's folder, else in the serve cache folder."""
    scheme = scheme_of(store_uri)
    if scheme in ("", "file"):
        folder = store_uri.partition("://")[2] if scheme else store_uri
        return os.path.join(folder, "audit.log")
    return os.path.join(cache_dir or default_cache_dir(), "audit.log")


def build_worker(
    checkpoint: str,
    gallery: Optional[str],
    cache_dir: Optional[str] = None,
    limits: Optional[ServeLimits] = None,
    device: str = "auto",
    batch_size: int = 64,
    num_workers: int = 2,
    runtime: str = "auto",
) -> SearchWorker:
    """Load the model and the gallery (extracting and caching a folder) into a SearchWorker;
    ``gallery=None``: the model only (a worker that embeds queries for a store).

    ``runtime`` runs the model's forward pass (:func:`partreid.deploy.runtime.build_extractor`:
    ``auto``, ``onnx`` or ``torch``; its ONNX export is cached in ``cache_dir`` too). Heat maps
    always come from the PyTorch module.
    """
    extractor, module = build_extractor(
        checkpoint, cache_dir or default_cache_dir(), runtime, device, batch_size, num_workers
    )
    served = (
        None if gallery is None else load_gallery(gallery, checkpoint, lambda: extractor, cache_dir)
    )
    return SearchWorker(extractor, served, limits or ServeLimits(), module=module)


@dataclass
class Access:
    """Who may use a server and where its audit goes: ``token`` (None: anyone who reaches it),
    ``audit_log`` (a path for a store server's audit; None: :func:`default_audit_path`)."""

    token: Optional[str] = None
    audit_log: Optional[str] = None


def _build_app(
    worker: SearchWorker, store_uri: Optional[str], access: Access, cache_dir: Optional[str]
) -> Tuple[Any, Callable[[], None]]:
    """The app over the worker's gallery or the store at ``store_uri``, and its closer."""
    if store_uri is None:
        return create_app(worker, token=access.token), (lambda: None)
    store = open_store(store_uri)
    try:
        check_store_model(worker, store)
        audit = AuditLog(access.audit_log or default_audit_path(store_uri, cache_dir))
    except Exception:
        store.close()
        raise
    log.info("audit log: %s", audit.path)
    app = create_app(worker, store=store, token=access.token, audit=audit)

    def close() -> None:
        audit.close()
        store.close()

    return app, close


def serve(
    checkpoint: str,
    gallery: Optional[str],
    host: str = "127.0.0.1",
    port: int = 8000,
    cache_dir: Optional[str] = None,
    limits: Optional[ServeLimits] = None,
    device: str = "auto",
    batch_size: int = 64,
    log_level: str = "info",
    runtime: str = "auto",
    store: Optional[str] = None,
    access: Optional[Access] = None,
) -> None:
    """``partreid serve``: load everything, then serve HTTP on ``host:port`` until stopped
    (over ``gallery``, or over the gallery store at ``store``)."""
    try:
        import uvicorn
    except ImportError as exc:
        raise missing_extra(exc) from exc
    setup_logging()
    access = access or Access()
    if access.token is None:
        check_exposure(host, None)  # reachable from other machines: refused without a token
    limits = limits or ServeLimits()
    install_pixel_limit(limits.max_pixels)  # process-wide: PIL refuses larger images everywhere
    worker = build_worker(
        checkpoint,
        None if store else gallery,
        cache_dir,
        limits,
        device,
        batch_size,
        runtime=runtime,
    )
    try:
        app, close = _build_app(worker, store, access, cache_dir)
    except Exception:
        worker.close()
        raise
    served = f"store {store}" if store else f"{len(worker.gallery)} gallery items"
    log.info(
        "partreid serve: %s%s; open http://%s:%d/ (API docs at /docs)",
        served,
        ", access token required" if access.token else "",
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
        close()


def serve_command(
    checkpoint: str,
    gallery: Optional[str] = None,
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
    store: Optional[str] = None,
    token_file: Optional[str] = None,
    audit_log: Optional[str] = None,
) -> int:
    """What ``partreid serve`` runs: the limits and access from the options, then :func:`serve`."""
    if not 0 < port < 65536:
        raise InvalidValueError(f"--port must be 1..65535, got {port}")
    if max_upload_mb <= 0:
        raise InvalidValueError(f"--max-upload-mb must be positive, got {max_upload_mb}")
    if (gallery is None) == (store is None):
        raise InvalidValueError("give either --gallery (a fixed gallery) or --store (a store)")
    if audit_log and store is None:
        raise InvalidValueError(
            "--audit-log logs store searches and deletions: use it with --store"
        )
    access = Access(check_exposure(host, token_file), audit_log)  # before loading anything
    limits = ServeLimits(
        max_upload_bytes=int(max_upload_mb * 1024 * 1024),
        max_pixels=max_pixels,
        max_topk=max_topk,
        default_topk=min(10, max_topk),
        max_page_size=max_page_size,
        default_page_size=min(48, max_page_size),
    )
    serve(
        checkpoint,
        gallery,
        host,
        port,
        cache,
        limits,
        device,
        batch_size,
        runtime=runtime,
        store=store,
        access=access,
    )
    return 0
