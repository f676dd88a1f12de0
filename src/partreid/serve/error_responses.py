"""How the server answers a failed request: JSON ``{"detail": message}`` with its status (4xx
for what the client sent, 500 with a pointer to the log for a bug), and the server keeps
serving. Also the one error for a missing ``serve`` extra."""

import logging
from typing import Any

from ..errors import MissingExtraError, PartreidError
from ..store import StoreError
from ..utils.times import shown
from .gallery import GalleryPathError
from .worker import UploadError

log = logging.getLogger("partreid")


class RequestError(PartreidError, ValueError):
    """A request the server cannot answer as asked; ``status`` is the HTTP status, the message
    starts with the field it is about (``"after: ..."``)."""

    def __init__(self, message: str, status: int = 422):
        super().__init__(message)
        self.status = status


def missing_extra(exc: ImportError) -> MissingExtraError:
    """The error to raise when FastAPI, starlette or uvicorn cannot be imported."""
    return MissingExtraError(
        f"partreid serve needs FastAPI and uvicorn ({exc.name} is missing): "
        'pip install "partreid[serve]"'
    )


def require_serve_extra() -> None:
    """Import FastAPI and starlette, or raise :func:`missing_extra`'s error naming the missing
    one."""
    try:
        import fastapi  # noqa: F401
        import fastapi.staticfiles  # noqa: F401
        import starlette.concurrency  # noqa: F401
    except ImportError as exc:
        raise missing_extra(exc) from exc


def _error(status: int, message: str) -> Any:
    from fastapi.responses import JSONResponse

    return JSONResponse({"detail": message}, status_code=status)


def _validation_message(request: Any, exc: Any) -> Any:
    """415 for an upload's body that is not multipart, else 422 naming each invalid field."""
    ctype = request.headers.get("content-type", "")
    in_body = any(tuple(e.get("loc", ()))[:1] == ("body",) for e in exc.errors())
    if in_body and not ctype.startswith("multipart/form-data"):
        return _error(
            415,
            f"expected a multipart/form-data upload with an 'image' file field, got "
            f"content type {shown(ctype or 'none')}",
        )
    parts = []
    for e in exc.errors():
        loc = tuple(e.get("loc", ()))
        if loc[:1] in (("body",), ("query",), ("path",), ("header",), ("cookie",)):
            loc = loc[1:]  # the location, not a name (a parameter may be called "path")
        where = ".".join(str(x) for x in loc)
        parts.append(f"{where or 'request'}: {e.get('msg', 'invalid')}")
    return _error(422, "; ".join(parts))


def add_error_handlers(app: Any) -> None:
    """Answer every failure of ``app`` (a FastAPI application) as JSON ``{"detail": ...}``."""
    from fastapi import Request
    from fastapi.exceptions import RequestValidationError
    from starlette.exceptions import HTTPException

    @app.exception_handler(UploadError)
    async def _upload_error(request: Request, exc: UploadError):
        return _error(exc.status, str(exc))

    @app.exception_handler(GalleryPathError)
    async def _path_error(request: Request, exc: GalleryPathError):
        return _error(exc.status, str(exc))

    @app.exception_handler(RequestError)
    async def _request_error(request: Request, exc: RequestError):
        return _error(exc.status, str(exc))

    @app.exception_handler(StoreError)
    async def _store_error(request: Request, exc: StoreError):
        return _error(400, str(exc))

    @app.exception_handler(PartreidError)
    async def _user_error(request: Request, exc: PartreidError):  # what was asked is wrong
        return _error(400, str(exc))

    @app.exception_handler(HTTPException)
    async def _http_error(request: Request, exc: HTTPException):
        return _error(exc.status_code, str(exc.detail))

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError):
        return _validation_message(request, exc)

    @app.exception_handler(Exception)
    async def _internal_error(request: Request, exc: Exception):
        log.exception("serve: %s %s failed", request.method, request.url.path)
        return _error(500, f"internal error ({type(exc).__name__}); see the server log")
