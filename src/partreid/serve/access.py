"""Who may use the server, and what they did: the bind-address rule, the access token, the
audit log.

- A server reachable from other machines (``--host`` not loopback) refuses to start without
  ``--token-file`` (:func:`check_exposure`); the file holds one token of at least
  :data:`MIN_TOKEN_CHARS` characters and must not be world-readable.
- With a token every ``/api/*`` route answers 401 without it (:class:`TokenGuard`, pure ASGI).
  A client sends ``Authorization: Bearer <token>``; the page posts the token once to
  ``POST /api/login``, which sets it as an HttpOnly, ``SameSite=Strict`` cookie, so ``<img>``
  tags load crops without script access to the token. Tokens are compared in constant time.
- Guessing is slowed per client (:class:`Throttle`): after :data:`FREE_GUESSES` different
  wrong tokens (at ``/api/login`` or as a Bearer token or cookie on any route), each further one
  shuts that client out for twice as long as the last, from 1 s up to 15 min: every request of
  it that carries a token then gets 429 with ``Retry-After``, without its token being looked at.
  Repeating one wrong token (a page with a stale cookie) is not a new guess. A client is an IP
  address (an IPv6 address by its /64 network); other clients, and their right token, are not
  affected. ``POST /api/login`` reads at most :data:`MAX_LOGIN_BYTES` of JSON ``{"token": ...}``.
- :class:`AuditLog` appends one JSON line per search, deletion, failed login or wrong token and
  shut-out (UTC time, client address, route, filters, SHA-256 of the query image or the tracklet
  id, counts), flushed and synced per line, from any thread. Its file and any folder it makes are
  the owner's only (0600/0700); an existing file readable by others gets a warning.
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
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Awaitable, Callable, Dict, List, Optional

from ..errors import InvalidValueError, NotFoundError
from ..utils.private import make_private_dir, warn_loose_modes

log = logging.getLogger("partreid")

MIN_TOKEN_CHARS = 16
TOKEN_CHARS = re.compile(r"[A-Za-z0-9._~+/=-]+")  # safe in a header and a cookie as they are
COOKIE = "partreid_token"
OPEN_PATHS = frozenset({"/api/login", "/api/logout", "/api/auth"})  # usable without a token
MAX_TOKEN_CHARS = 512
MAX_LOGIN_BYTES = 4096  # the JSON body of /api/login
FREE_GUESSES = 5  # different wrong tokens a client may present before it is slowed down
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


def client_key(host: Optional[str]) -> str:
    """Who a request comes from, for throttling: its IP address, an IPv6 one by its /64."""
    h = str(host or "?")
    try:
        ip = ipaddress.ip_address(h)
    except ValueError:
        return h
    if ip.version == 4:
        return str(ip)
    if ip.ipv4_mapped is not None:
        return str(ip.ipv4_mapped)
    return str(ipaddress.ip_network(f"{ip}/64", strict=False))


@dataclass
class _Guesses:
    digests: List[bytes] = field(default_factory=list)  # the last different wrong tokens
    count: int = 0  # different wrong tokens since the last right one (or a quiet hour)
    until: float = 0.0  # shut out until this time (the throttle's clock)
    last: float = 0.0  # time of the last wrong token
    refused: int = 0  # requests refused since the last audit line


class Throttle:
    """Per client, the different wrong tokens it presented; after ``free`` of them each further
    one shuts it out for ``first`` seconds, doubling up to ``longest``. A client quiet for
    ``forget`` seconds (or that presents the right token) starts over. At most ``max_clients``
    are remembered (the least recent are forgotten first). Wrong tokens and shut-outs go to
    ``audit``."""

    def __init__(
        self,
        audit: Optional["AuditLog"] = None,
        free: int = FREE_GUESSES,
        first: float = 1.0,
        longest: float = 900.0,
        forget: float = 3600.0,
        max_clients: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.audit, self.free, self.first, self.longest = audit, free, first, longest
        self.forget, self.max_clients, self.clock = forget, max_clients, clock
        self._clients: OrderedDict[str, _Guesses] = OrderedDict()
        self._lock = threading.Lock()

    def refuse(self, host: Optional[str]) -> int:
        """Seconds ``host`` must still wait (0: it may try); a refusal is counted."""
        with self._lock:
            g = self._clients.get(client_key(host))
            wait = 0.0 if g is None else g.until - self.clock()
            if wait <= 0:
                return 0
            g.refused += 1
            return max(1, int(wait + 0.999))

    def wrong(self, host: Optional[str], token: str, route: str, audit_repeats: bool) -> int:
        """Record a wrong token from ``host``; returns the seconds it is now shut out (0: none).
        A new guess is audited (a repeated one too when ``audit_repeats``)."""
        digest = hashlib.sha256(token.encode("utf-8", "surrogateescape")).digest()
        now = self.clock()
        with self._lock:
            key = client_key(host)
            g = self._clients.pop(key, None) or _Guesses()
            if g.count and now - g.last > self.forget:
                g = _Guesses()
            self._clients[key] = g  # the most recent last
            while len(self._clients) > self.max_clients:
                self._clients.popitem(last=False)
            new = digest not in g.digests
            shut = 0.0
            if new:
                g.digests = (g.digests + [digest])[-16:]
                g.count += 1
                g.last = now
                if g.count > self.free:
                    shut = min(self.first * 2.0 ** (g.count - self.free - 1), self.longest)
                    g.until = now + shut
            refused, g.refused = g.refused, 0
            count = g.count
        if self.audit is not None and (new or audit_repeats):
            event = "login_failed" if route == "/api/login" else "token_failed"
            self.audit.write(
                event, host, route, guesses=count, shut_out_s=shut, refused_before=refused
            )
        return int(shut + 0.999)

    def right(self, host: Optional[str]) -> None:
        """``host`` presented the right token: its wrong ones are forgotten."""
        with self._lock:
            self._clients.pop(client_key(host), None)


def too_many(wait: int) -> Any:
    """The 429 answer to a client shut out for ``wait`` more seconds."""
    from starlette.responses import JSONResponse

    return JSONResponse(
        {
            "detail": f"token: too many wrong tokens from this address; try again in {wait} s "
            f"(each further wrong token doubles the wait)"
        },
        status_code=429,
        headers={"Retry-After": str(wait)},
    )


class TokenGuard:
    """Answer 401 JSON to every ``/api/*`` request (but :data:`OPEN_PATHS`) without the token,
    and 429 to one that carries a token while its client is shut out (:class:`Throttle`)."""

    def __init__(self, app: Any, token: str, throttle: Optional[Throttle] = None):
        self.app = app
        self.token = token
        self.throttle = throttle or Throttle()

    async def __call__(self, scope: Dict[str, Any], receive: Receive, send: Send) -> None:
        path = scope.get("path", "")
        if scope["type"] != "http" or not path.startswith("/api/") or path in OPEN_PATHS:
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        given = presented_token(headers)
        host = (scope.get("client") or (None,))[0]
        if given is not None:
            wait = self.throttle.refuse(host)
            if wait:
                await too_many(wait)(scope, receive, send)
                return
            if token_matches(given, self.token):
                self.throttle.right(host)
                await self.app(scope, receive, send)
                return
            self.throttle.wrong(host, given, path, audit_repeats=False)
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
        make_private_dir(os.path.dirname(self.path))
        warn_loose_modes([self.path], f"the audit log {self.path}")
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


LOGIN_SCHEMA = {
    "requestBody": {
        "required": True,
        "description": f"JSON, at most {MAX_LOGIN_BYTES} bytes",
        "content": {
            "application/json": {
                "schema": {
                    "type": "object",
                    "required": ["token"],
                    "properties": {
                        "token": {"type": "string", "minLength": 1, "maxLength": MAX_TOKEN_CHARS}
                    },
                }
            }
        },
    }
}


class LoginBodyError(InvalidValueError):
    """A login body that is no JSON ``{"token": "..."}`` of the allowed size (``status``)."""

    def __init__(self, message: str, status: int):
        super().__init__(message)
        self.status = status


LOGIN_ANSWERS: Dict[Any, Any] = {
    401: {"description": "a wrong token (audited; counts towards the client's wait)"},
    413: {"description": f"a body over {MAX_LOGIN_BYTES} bytes"},
    429: {
        "description": f"too many wrong tokens from this client (after {FREE_GUESSES} different "
        "ones, each further one doubles the wait, 1 s to 15 min); not even the right token is "
        "looked at before Retry-After",
        "headers": {"Retry-After": {"schema": {"type": "integer", "minimum": 1}}},
    },
}


async def login_token(request: Any) -> str:
    """The token of a login body (JSON ``{"token": "..."}``, at most :data:`MAX_LOGIN_BYTES`),
    else :class:`LoginBodyError` (413, 422) naming ``token``."""
    too_big = LoginBodyError(f"token: the login body is over {MAX_LOGIN_BYTES} bytes", 413)
    length = request.headers.get("content-length", "")
    if length.isdigit() and int(length) > MAX_LOGIN_BYTES:
        raise too_big
    data = bytearray()
    async for chunk in request.stream():
        data += chunk
        if len(data) > MAX_LOGIN_BYTES:
            raise too_big
    try:
        body = json.loads(bytes(data))
    except (ValueError, RecursionError):
        body = None
    given = body.get("token") if isinstance(body, dict) else None
    if not isinstance(given, str) or not 0 < len(given.strip()) <= MAX_TOKEN_CHARS:
        raise LoginBodyError(
            f'token: expected a JSON body {{"token": "..."}} with a token of 1 to '
            f"{MAX_TOKEN_CHARS} characters",
            422,
        )
    return given.strip()


def auth_router(
    token: Optional[str], audit: Optional[AuditLog], throttle: Optional[Throttle] = None
) -> Any:
    """``GET /api/auth`` (is a token needed, is this client in), ``POST /api/login`` (JSON
    ``{"token": ...}`` -> HttpOnly cookie, wrong tokens slowed by ``throttle``) and
    ``POST /api/logout``."""
    from fastapi import APIRouter, Request
    from fastapi.responses import JSONResponse

    router = APIRouter()
    throttle = throttle or Throttle(audit)

    @router.get("/api/auth", summary="Whether this server needs a token, and if this client has it")
    def auth_state(request: Request) -> Dict[str, Any]:
        given = presented_token({k.lower(): v for k, v in request.headers.items()})
        return {"required": token is not None, "ok": token is None or token_matches(given, token)}

    @router.post(
        "/api/login",
        summary="Present the token once; the page then uses a cookie",
        openapi_extra=LOGIN_SCHEMA,
        responses=LOGIN_ANSWERS,
    )
    async def login(request: Request):
        host = request.client.host if request.client else None
        wait = 0 if token is None else throttle.refuse(host)
        if wait:
            return too_many(wait)
        try:
            given = await login_token(request)
        except LoginBodyError as exc:
            return JSONResponse({"detail": str(exc)}, status_code=exc.status)
        if token is None:
            return {"ok": True, "required": False}
        if not token_matches(given, token):
            throttle.wrong(host, given, "/api/login", audit_repeats=True)
            return JSONResponse({"detail": "token: wrong access token"}, status_code=401)
        throttle.right(host)
        res = JSONResponse({"ok": True, "required": True})
        res.set_cookie(COOKIE, given, httponly=True, samesite="strict", path="/")
        return res

    @router.post("/api/logout", summary="Forget the login cookie")
    def logout():
        res = JSONResponse({"ok": True})
        res.delete_cookie(COOKIE, path="/")
        return res

    return router
