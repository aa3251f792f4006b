"""What one request, and one client, may take from the front end — each a pure ASGI middleware, wired in
``frontend/main.py``:

* :class:`BodyLimit`: request bodies bounded as their bytes arrive, per route, declared or chunked (413);
* :class:`RateLimit`: requests per client in a moving window (429, when ``EMOSERVE_RATE_LIMIT`` is set);
* :class:`ConcurrencyLimit`: requests per client in flight, streams included (429);
* :class:`OriginCheck`: browsers' state-changing requests from origins not allowed (403).

Clients are told apart by :func:`frontend.deps.client_key`; probes, metrics and docs are never counted.

:class:`BodyLimit` wraps the ASGI ``receive`` channel: a declared length over the route's limit, or the running
count of received bytes passing it, raises :class:`BodyTooLarge` inside the route while it reads its body, so
the app's error handler answers 413 in that route's own error format, and nothing past the limit is read or
spooled to a temporary file. Upload routes get their model's limit plus the multipart framing; every other
route (JSON bodies) gets :data:`JSON_BODY_LIMIT`.
"""

from __future__ import annotations

import time

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse

from frontend.config import Settings
from frontend.deps import client_key
from frontend.errors import PayloadTooLarge, error_body

# multipart framing around an upload: generous, so that only the files' limit decides
MULTIPART_OVERHEAD_BYTES = 64 * 1024
# a JSON body (prompts, configs, session options): far above any valid one
JSON_BODY_LIMIT = 1024 * 1024


class BodyTooLarge(PayloadTooLarge, HTTPException):
    """Raised while FastAPI parses the body: as an ``HTTPException`` it passes through FastAPI's parsing (which turns
    any other exception into a 400), and as a :class:`PayloadTooLarge` the app's handler answers it in the route's
    format (the handler lookup follows the class's MRO, where ``ApiError`` comes first)."""

    def __init__(self, detail: str, error_code: str | None = None):
        PayloadTooLarge.__init__(self, detail, error_code=error_code)  # its super() is HTTPException's __init__ here
        self.status_code, self.headers = PayloadTooLarge.status_code, None


def route_body_limits(settings: Settings, hallo2_upload_path: str, hallo2_error_code: str) -> dict[tuple[str, str], tuple[int, str | None]]:
    """{(method, path): (the files' byte limit, error_code)} of the upload routes (the multipart framing is allowed on
    top); the rest get :data:`JSON_BODY_LIMIT`."""
    return {
        ("POST", "/api/infer"): (settings.lam_a2e.max_upload_bytes, None),
        ("POST", "/api/infer_stream_chunk"): (settings.lam_a2e.max_chunk_bytes, None),
        ("POST", "/api/v1/emotion-llama/analyze"): (settings.emotion_llama.max_video_bytes, None),
        ("POST", hallo2_upload_path): (settings.hallo2.max_upload_bytes, hallo2_error_code),
    }


class BodyLimit:
    """Pure ASGI middleware (it must see ``receive``, which ``BaseHTTPMiddleware`` hides)."""

    def __init__(self, app, limits: dict[tuple[str, str], tuple[int, str | None]], default_limit: int = JSON_BODY_LIMIT):
        self.app = app
        self.limits = limits
        self.default_limit = default_limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        path = scope["path"].rstrip("/") or "/"
        upload = self.limits.get((scope["method"], path))
        stated, error_code = upload or (self.default_limit, None)
        limit = stated + (MULTIPART_OVERHEAD_BYTES if upload else 0)
        declared = next((value for name, value in scope["headers"] if name == b"content-length"), None)
        received = 0

        def too_large(size_text: str) -> BodyTooLarge:
            return BodyTooLarge(f"the request body ({size_text}) exceeds the {stated} byte limit", error_code=error_code)

        async def bounded_receive():
            nonlocal received
            if declared is not None and declared.isdigit() and int(declared) > limit:
                raise too_large(f"{int(declared)} bytes declared")
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise too_large(f"more than {limit} bytes received")
            return message

        await self.app(scope, bounded_receive, send)


SAFE_METHODS = {"GET", "HEAD", "OPTIONS"}


class OriginCheck:
    """A browser's state-changing request (POST, DELETE ...) carries an ``Origin``; one that is not this server's and
    not in ``cors_origins`` is refused with 403 before the route runs (a page elsewhere cannot make a visitor's
    browser submit work here). Requests without an ``Origin`` (curl, SDKs, server-to-server) are not browsers'."""

    def __init__(self, app, allowed: list[str]):
        self.app = app
        self.allowed = {origin.rstrip("/") for origin in allowed}

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and scope["method"] not in SAFE_METHODS:
            headers = dict(scope["headers"])
            origin = headers.get(b"origin", b"").decode("latin-1").rstrip("/")
            host = headers.get(b"host", b"").decode("latin-1")
            if origin and origin not in self.allowed and origin.split("://", 1)[-1] != host:
                response = JSONResponse({"detail": f"requests from the origin {origin} are not allowed (EMOSERVE_CORS_ORIGINS)"},
                                        status_code=403)
                return await response(scope, receive, send)
        return await self.app(scope, receive, send)


# never counted: what probes, scrapers and a reader of the docs call
UNCOUNTED_PATHS = frozenset({"/livez", "/readyz", "/metrics", "/health", "/api/health", "/api/v1/health", "/docs", "/redoc",
                               "/openapi.json"})


def _too_many_requests(request: Request, message: str, error_code: str, retry_after_s: int) -> JSONResponse:
    """A 429 answered before routing, in the error format of the route the request was for."""
    return JSONResponse(error_body(request, 429, message, error_code=error_code), status_code=429,
                        headers={"Retry-After": str(retry_after_s)})


class RateLimit:
    """Requests per client (an API key's digest, or the address without one) within a moving window, counted by the
    ``limits`` library in this process's memory (each replica counts its own). Over the limit: 429 with
    ``Retry-After`` in the route's error format. Health, metrics and the docs are not counted."""

    def __init__(self, app, limit: str, exempt_paths: frozenset[str] = UNCOUNTED_PATHS):
        from limits import parse
        from limits.storage import MemoryStorage
        from limits.strategies import MovingWindowRateLimiter

        self.app = app
        self.limit = parse(limit)
        self.limiter = MovingWindowRateLimiter(MemoryStorage())
        self.exempt_paths = exempt_paths

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["path"] in self.exempt_paths:
            return await self.app(scope, receive, send)
        request = Request(scope)
        key = client_key(request)
        if not self.limiter.hit(self.limit, key):
            reset = self.limiter.get_window_stats(self.limit, key).reset_time
            retry_after = max(1, int(reset - time.time()) + 1)
            message = f"rate limit exceeded: {self.limit} per client; retry after {retry_after} s"
            return await _too_many_requests(request, message, "RATE_LIMITED", retry_after)(scope, receive, send)
        return await self.app(scope, receive, send)


class ConcurrencyLimit:
    """At most ``per_client`` requests of one client (its API key, or its address) in flight at once, a streaming
    answer counting until its last byte: one client cannot hold every worker or every SSE stream. Beyond: 429 with
    ``Retry-After`` in the route's format. Probes and docs are not counted."""

    def __init__(self, app, per_client: int, exempt_paths: frozenset[str] = UNCOUNTED_PATHS):
        self.app = app
        self.per_client = per_client
        self.exempt_paths = exempt_paths
        self.in_flight: dict[str, int] = {}  # one event loop: no lock needed between the check and the count

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["path"] in self.exempt_paths:
            return await self.app(scope, receive, send)
        request = Request(scope)
        key = client_key(request)
        if self.in_flight.get(key, 0) >= self.per_client:
            message = f"this client already has {self.per_client} requests in flight; retry when one has finished"
            return await _too_many_requests(request, message, "TOO_MANY_REQUESTS", 1)(scope, receive, send)
        self.in_flight[key] = self.in_flight.get(key, 0) + 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.in_flight[key] -= 1
            if not self.in_flight[key]:
                del self.in_flight[key]
