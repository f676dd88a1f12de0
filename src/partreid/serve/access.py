"""Who may use the server, and what they did: the bind-address rule, the access token, the
audit log.

- A server reachable from other machines (``--host`` not loopback) refuses to start without
  ``--token-file`` (:func:`check_exposure`); the file holds one token of at least
  :data:`MIN_TOKEN_CHARS` characters and must not be world-readable.
- With a token every ``/api/*`` route answers 401 without it (:class:`TokenGuard`, pure ASGI).
  A client sends ``Authorization: Bearer <token>``; the page posts the token once to
  ``POST /api/login``, which sets it as an HttpOnly, ``SameSite=Strict`` cookie, so ``<img>``
  tags load crops without script access to the token. Tokens are compared in constant time.
- :class:`AuditLog` appends one JSON line per search, deletion and failed login (UTC time,
  client address, route, filters, SHA-256 of the query image or the tracklet id, counts),
  flushed and synced per line, from any thread.
"""

import hashlib
import hmac
import ipaddress
import json
import logging
import os
import re
import stat
import threading
from datetime import datetime, timezone
from typing import Any, Awaitable, Callable, Dict, Optional

from ..errors import InvalidValueError, NotFoundError

log = logging.getLogger("partreid")

MIN_TOKEN_CHARS = 16
TOKEN_CHARS = re.compile(r"[A-Za-z0-9._~+/=-]+")  # safe in a header and a cookie as they are
COOKIE = "partreid_token"
OPEN_PATHS = frozenset({"/api/login", "/api/logout", "/api/auth"})  # usable without a token
TOKEN_HINT = (
    'make one with: python -c "import secrets; print(secrets.token_urlsafe(32))" > token.txt'
    " && chmod 600 token.txt"
)

Message = Dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


def is_loopback(host: str) -> bool:
    """Whether ``host`` is reachable from this machine only (127.0.0.0/8, ::1, localhost)."""
    h = str(host).strip().strip("[]").lower()
    if h == "localhost":
        return True
    try:
        return ipaddress.ip_address(h).is_loopback
    except ValueError:  # a host name (could resolve to anything) or "" (every interface)
        return False


def read_token(path: str) -> str:
    """The token in ``path``: refused when missing, world-readable, empty or too short."""
    if not os.path.isfile(path):
        raise NotFoundError(f"--token-file {path}: no such file ({TOKEN_HINT})")
    if os.name == "posix" and os.stat(path).st_mode & stat.S_IROTH:
        raise InvalidValueError(
            f"--token-file {path} is readable by every user of this machine: chmod 600 {path}"
        )
    with open(path, encoding="utf-8") as f:
        token = f.read().strip()
    if not token:
        raise InvalidValueError(f"--token-file {path} is empty ({TOKEN_HINT})")
    if len(token) < MIN_TOKEN_CHARS or not TOKEN_CHARS.fullmatch(token):
        raise InvalidValueError(
            f"--token-file {path}: the token must be one word of at least {MIN_TOKEN_CHARS} "
            f"letters, digits or . _ ~ + / = - ({TOKEN_HINT})"
        )
    return token


def check_exposure(host: str, token_file: Optional[str]) -> Optional[str]:
    """The access token for serving on ``host`` (None: no token). Refuses a server reachable
    from other machines without ``--token-file``."""
    if token_file:
        return read_token(token_file)
    if not is_loopback(host):
        raise InvalidValueError(
            f"--host {host or '(every interface)'} makes the server reachable from other "
            "machines, and it serves biometric data: give --token-file FILE (a file holding an "
            f"access token; {TOKEN_HINT}), or serve on 127.0.0.1"
        )
    return None


def token_matches(given: Optional[str], token: str) -> bool:
    """Constant-time comparison of a presented token with the server's."""
    if not given:
        return False
    return hmac.compare_digest(given.encode("utf-8"), token.encode("utf-8"))


def presented_token(headers: Dict[str, str]) -> Optional[str]:
    """The token a request carries: ``Authorization: Bearer ...`` or the login cookie."""
    auth = headers.get("authorization", "")
    scheme, _, value = auth.partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip()
    for part in headers.get("cookie", "").split(";"):
        name, _, value = part.strip().partition("=")
        if name == COOKIE and value:
            return value
    return None


class TokenGuard:
    """Answer 401 JSON to every ``/api/*`` request (but :data:`OPEN_PATHS`) without the token."""

    def __init__(self, app: Any, token: str):
        self.app = app
        self.token = token

    async def __call__(self, scope: Dict[str, Any], receive: Receive, send: Send) -> None:
        path = scope.get("path", "")
        if scope["type"] != "http" or not path.startswith("/api/") or path in OPEN_PATHS:
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        if token_matches(presented_token(headers), self.token):
            await self.app(scope, receive, send)
            return
        from starlette.responses import JSONResponse

        refusal = JSONResponse(
            {"detail": "this server needs its access token: Authorization: Bearer <token>"},
            status_code=401,
            headers={"WWW-Authenticate": 'Bearer realm="partreid"'},
        )
        await refusal(scope, receive, send)


def utc_now() -> str:
    """Now, ISO 8601 in UTC to the millisecond."""
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def sha256_hex(data: bytes) -> str:
    """SHA-256 of ``data`` as hex."""
    return hashlib.sha256(data).hexdigest()


class AuditLog:
    """An append-only JSON-lines file: one line per event, flushed and synced, thread-safe."""

    def __init__(self, path: str):
        self.path = os.path.abspath(path)
        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        self._file = os.fdopen(fd, "a", encoding="utf-8")
        self._lock = threading.Lock()

    def write(self, event: str, client: Optional[str], route: str, **fields: Any) -> None:
        """Append ``{"time", "event", "client", "route", **fields}`` as one line."""
        rec = {"time": utc_now(), "event": event, "client": client, "route": route, **fields}
        line = json.dumps(rec, sort_keys=False, default=str) + "\n"
        with self._lock:
            if self._file.closed:
                log.warning("audit log %s is closed; event not written: %s", self.path, line)
                return
            self._file.write(line)
            self._file.flush()
            os.fsync(self._file.fileno())

    def close(self) -> None:
        """Close the file."""
        with self._lock:
            self._file.close()


def auth_router(token: Optional[str], audit: Optional[AuditLog]) -> Any:
    """``GET /api/auth`` (is a token needed, is this client in), ``POST /api/login`` (JSON
    ``{"token": ...}`` -> HttpOnly cookie) and ``POST /api/logout``."""
    from fastapi import APIRouter, Request
    from fastapi.responses import JSONResponse

    router = APIRouter()

    @router.get("/api/auth", summary="Whether this server needs a token, and if this client has it")
    def auth_state(request: Request) -> Dict[str, Any]:
        given = presented_token({k.lower(): v for k, v in request.headers.items()})
        return {"required": token is not None, "ok": token is None or token_matches(given, token)}

    @router.post("/api/login", summary="Present the token once; the page then uses a cookie")
    async def login(request: Request):
        try:
            body = await request.json()
            given = str(body.get("token", "")) if isinstance(body, dict) else ""
        except ValueError:
            given = ""
        if token is None:
            return {"ok": True, "required": False}
        if not token_matches(given.strip(), token):
            if audit is not None:
                host = request.client.host if request.client else None
                audit.write("login_failed", host, "/api/login")
            return JSONResponse({"detail": "token: wrong access token"}, status_code=401)
        res = JSONResponse({"ok": True, "required": True})
        res.set_cookie(COOKIE, given.strip(), httponly=True, samesite="strict", path="/")
        return res

    @router.post("/api/logout", summary="Forget the login cookie")
    def logout():
        res = JSONResponse({"ok": True})
        res.delete_cookie(COOKIE, path="/")
        return res

    return router
