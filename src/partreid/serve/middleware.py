"""Pure ASGI middleware of the server: a request-body size limit and ``nosniff`` on every
response.

Pure ASGI on purpose: an exception raised from ``receive`` reaches FastAPI's body parsing as
the 413 HTTPException it is (``BaseHTTPMiddleware`` would wrap it into a 400).
"""

from typing import Any, Awaitable, Callable, Dict, Optional

from .access import Throttle, TokenGuard

Message = Dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

MULTIPART_SLACK = 64 * 1024  # multipart framing and form fields around the file


class BodySizeLimit:
    """Refuse request bodies over ``max_bytes`` with a JSON 413: by their Content-Length, and
    while reading them when it is absent. Messages name ``upload_limit``, the file limit."""

    def __init__(self, app: Any, max_bytes: int, upload_limit: int):
        self.app = app
        self.max_bytes = max_bytes
        self.upload_limit = upload_limit

    def _message(self, size: str) -> str:
        return f"request body {size} exceeds the upload limit of {self.upload_limit} bytes"

    async def __call__(self, scope: Dict[str, Any], receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        from starlette.exceptions import HTTPException
        from starlette.responses import JSONResponse

        length = dict(scope["headers"]).get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > self.max_bytes):
            size = f"of {length.decode(errors='replace')} bytes"
            refusal = JSONResponse({"detail": self._message(size)}, status_code=413)
            await refusal(scope, receive, send)
            return
        seen = 0

        async def limited() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    raise HTTPException(413, self._message(f"of over {self.max_bytes} bytes"))
            return message

        await self.app(scope, limited, send)


class NoSniff:
    """Add ``X-Content-Type-Options: nosniff`` to every HTTP response that lacks it."""

    def __init__(self, app: Any):
        self.app = app

    async def __call__(self, scope: Dict[str, Any], receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_nosniff(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                if not any(k.lower() == b"x-content-type-options" for k, _ in headers):
                    headers.append((b"x-content-type-options", b"nosniff"))
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_nosniff)


def add_size_limit_and_nosniff(
    app: Any, upload_limit: int, token: Optional[str] = None, throttle: Optional[Throttle] = None
) -> None:
    """Wrap ``app`` so bodies over ``upload_limit`` (plus multipart slack) get a 413 and every
    response carries ``nosniff`` (the 413s too); with ``token``, ``/api/*`` requests without it
    get a 401 before their body is read, and wrong tokens are slowed by ``throttle``
    (:class:`~partreid.serve.access.TokenGuard`)."""
    app.add_middleware(
        BodySizeLimit, max_bytes=upload_limit + MULTIPART_SLACK, upload_limit=upload_limit
    )
    if token:
        app.add_middleware(TokenGuard, token=token, throttle=throttle)
    app.add_middleware(NoSniff)  # added last: outermost
