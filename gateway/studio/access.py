"""Who may use the studio, and from where.

The studio can rewrite the policies the gateway enforces, so it is as sensitive as the
gateway's config. On loopback it needs no token (whoever can reach it already has the host),
but a web page open in the same browser can still reach 127.0.0.1: without a token every
request must name a loopback host in `Host` (no DNS rebinding). Every write must be a
same-origin JSON request (no cross-site form posts). Bound anywhere else it refuses to start
without an admin token, and every request must then carry it: as a bearer token, or as the
session cookie (SameSite=Strict, so no other site's page sends it) that the login form sets
after comparing the token in constant time.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import secrets
import uuid
from dataclasses import dataclass, field

from aiohttp import web
from aiohttp.typedefs import Handler, Middleware
from yarl import URL

from gateway.observability.logging import get_logger

log = get_logger("veil.studio")
SESSION_COOKIE = "veil_studio_session"
OPEN_PATHS = frozenset({"/login", "/static/studio.css"})


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True)
class Access:
    """The admin token; None only on loopback."""

    token: str | None
    session_salt: bytes = field(default_factory=lambda: secrets.token_bytes(32))

    @classmethod
    def for_bind(cls, host: str, token: str | None) -> Access:
        if token is None and not is_loopback(host):
            raise ValueError(f"the studio is bound to {host}, not loopback: set an admin token "
                             "(--token-env NAME, the token in that environment variable)")
        if token is not None and len(token) < 16:
            raise ValueError("the admin token must be at least 16 characters")
        return cls(token)

    def session(self) -> str:
        """The cookie value a correct token earns: useless without this process's salt."""
        return hmac.new(self.session_salt, (self.token or "").encode(),
                        hashlib.sha256).hexdigest()

    def token_matches(self, offered: str) -> bool:
        return self.token is not None and hmac.compare_digest(offered.encode(),
                                                              self.token.encode())

    def authenticated(self, request: web.Request) -> bool:
        if self.token is None:
            return True
        bearer = request.headers.get("Authorization", "")
        if bearer.startswith("Bearer ") and self.token_matches(bearer[7:]):
            return True
        cookie = request.cookies.get(SESSION_COOKIE)
        return cookie is not None and hmac.compare_digest(cookie.encode(),
                                                          self.session().encode())

    def cross_site(self, request: web.Request) -> str | None:
        """Why a state-changing request looks forged, or None. Only the login form posts
        a form; everything else must be JSON, which a cross-site page cannot send without a
        CORS preflight that this server never answers."""
        if request.path != "/login" and request.content_type != "application/json":
            return "write requests must be JSON"
        origin = request.headers.get("Origin")
        if origin is not None and URL(origin).host != request.url.host:
            return "cross-origin request"
        return None


def middleware(access: Access) -> Middleware:
    @web.middleware
    async def guard(request: web.Request, handler: Handler) -> web.StreamResponse:
        if access.token is None and not is_loopback(request.url.host or ""):
            return _refuse(421, "misdirected_request", "without an admin token this studio "
                           "answers only to loopback host names")
        if request.method not in ("GET", "HEAD"):
            why = access.cross_site(request)
            if why:
                return _refuse(403, "forbidden", why)
        if request.path not in OPEN_PATHS and not access.authenticated(request):
            if request.path.startswith("/api/"):
                return _refuse(401, "unauthorized", "the admin token is required")
            raise web.HTTPFound("/login")
        try:
            response = await handler(request)
        except web.HTTPException:
            raise
        except Exception as exc:
            if not request.path.startswith("/api/"):
                raise
            # an API answer is JSON even when a view fails; the log names the failure's type,
            # never its message (which may quote a prompt or a policy)
            request_id = uuid.uuid4().hex
            log.error("studio_request_failed", path=request.path,  # noqa: TRY400
                      error=type(exc).__name__, request_id=request_id)
            return _refuse(500, "internal_error",
                           f"the studio failed on this request (request id {request_id})")
        _harden(response)
        return response

    return guard


def _harden(response: web.StreamResponse) -> None:
    """Nothing but our own files runs on the page; it is never framed or cached."""
    response.headers.setdefault(
        "Content-Security-Policy", "default-src 'self'; img-src 'self' data:; "
        "frame-ancestors 'none'; base-uri 'none'; form-action 'self'")
    response.headers.setdefault("X-Content-Type-Options", "nosniff")
    # not no-referrer: with it a browser sends `Origin: null` on its own form posts
    response.headers.setdefault("Referrer-Policy", "same-origin")
    response.headers.setdefault("Cache-Control", "no-store")


def _refuse(status: int, code: str, message: str) -> web.Response:
    response = web.json_response({"error": {"message": message, "type": code, "code": code}},
                                 status=status)
    _harden(response)
    return response
