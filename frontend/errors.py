"""Typed API errors and the one place they become HTTP responses.

The body depends on the route's tags: ``{"detail"}`` by default, ``{"error", "code", "details"}`` for the
Emotion-LLaMA routes (:data:`ERROR_FIELD_TAG`), ``{"detail", "error_code"}`` for the Hallo2 routes
(:data:`ERROR_CODE_TAG`, plus ``"status": "error"`` where a route also carries :data:`ERROR_STATUS_TAG`).
"""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

log = logging.getLogger(__name__)


class ApiError(Exception):
    status_code = 500
    default_error_code = "INTERNAL_ERROR"

    def __init__(self, detail: str, details: str | None = None, error_code: str | None = None):
        super().__init__(detail)
        self.detail = detail
        self.details = details  # extra context for APIs whose error body has a "details" field
        self.error_code = error_code or self.default_error_code  # stable code for APIs whose body has "error_code"


class BadRequest(ApiError):
    status_code = 400
    default_error_code = "BAD_REQUEST"


class Unauthorized(ApiError):
    status_code = 401
    default_error_code = "UNAUTHORIZED"


class NotFound(ApiError):
    status_code = 404
    default_error_code = "NOT_FOUND"


class PayloadTooLarge(ApiError):
    status_code = 413
    default_error_code = "PAYLOAD_TOO_LARGE"


class InferenceFailed(ApiError):
    status_code = 500
    default_error_code = "INFERENCE_FAILED"


class TooManyRequests(ApiError):
    status_code = 429
    default_error_code = "TOO_MANY_REQUESTS"
    retry_after_s = 5


class ServiceUnavailable(ApiError):
    status_code = 503
    default_error_code = "SERVICE_UNAVAILABLE"
    retry_after_s = 5  # sent as Retry-After: a restarting model or server is back within seconds


# Routes tagged with this use the Emotion-LLaMA error body {"error", "code", "details"}; all others {"detail"}.
ERROR_FIELD_TAG = "error-body"
# Routes tagged with this use the Hallo2 error body {"detail", "error_code"} ...
ERROR_CODE_TAG = "error-code-body"
# ... and those also tagged with this add "status": "error" (the documented DELETE /api/v1/tasks/{id} error).
ERROR_STATUS_TAG = "error-status-body"
# error_code of a request that fails FastAPI's parameter validation on an ERROR_CODE_TAG route
INVALID_REQUEST = "INVALID_REQUEST"
_HTTP_ERROR_CODES = {404: "NOT_FOUND", 405: "METHOD_NOT_ALLOWED"}


class DetailError(BaseModel):
    """The LAM-A2E API's error body (and the app's default)."""

    detail: str


class FieldsError(BaseModel):
    """The Emotion-LLaMA API overview's error body."""

    error: str
    code: int
    details: str | None = None


class CodeError(BaseModel):
    """The Hallo2 API's error body (``DELETE /api/v1/tasks/{id}`` adds ``"status": "error"``)."""

    detail: str
    error_code: str
    status: str | None = None


_DESCRIPTIONS = {400: "bad input: the message names the problem", 401: "missing or invalid API key",
                 403: "a state-changing request from a browser page of an origin not allowed (cors_origins)",
                 404: "unknown resource (session, task, file)", 413: "body over the route's limit",
                 429: "this client's share is used up; see Retry-After", 500: "inference or server failure",
                 503: "a model or Triton is unavailable, or a queue is full; see Retry-After"}


def documented_errors(body: type[BaseModel], codes: tuple[int, ...] = (400, 401, 403, 404, 413, 429, 500, 503)) -> dict:
    """``APIRouter(responses=...)``: the error statuses an API's routes answer, each with that API's body."""
    return {code: {"model": body, "description": _DESCRIPTIONS[code]} for code in codes}


def _slice_routes(request: Request) -> list:
    """The slices' own routes (``app.routes`` may hold wrappers of included routers, without their tags)."""
    return getattr(request.app.state, "api_routes", None) or getattr(request.app, "routes", [])


def _api_route(request: Request):
    """The route that answers: the matched one; before routing (a middleware's answer) the route that will match;
    for a method the path does not take (405), the route of that path."""
    route = request.scope.get("route")
    if route is None:
        routes = _slice_routes(request)
        for wanted in (Match.FULL, Match.PARTIAL):
            for candidate in routes:
                if candidate.matches(request.scope)[0] is wanted:
                    return candidate
    return route


def error_body(request: Request, status_code: int, message: str, details: str | None = None, error_code: str | None = None) -> dict:
    route = _api_route(request)
    return error_body_for_route(route, status_code, message, details, error_code)


def error_body_for_route(route, status_code: int, message: str, details: str | None = None, error_code: str | None = None) -> dict:
    """The error body of the API ``route`` belongs to (LAM-A2E's ``{"detail"}`` for None)."""
    tags = (getattr(route, "tags", None) or []) if route is not None else []
    if ERROR_FIELD_TAG in tags:
        return {"error": message, "code": status_code, "details": details}
    if ERROR_CODE_TAG in tags:
        body = {"status": "error"} if ERROR_STATUS_TAG in tags else {}
        return {**body, "detail": message, "error_code": error_code or INVALID_REQUEST}
    return {"detail": message}


def internal_error_response(request: Request, request_id: str) -> JSONResponse:
    """The answer to a request whose handler raised something unexpected: 500 in the route's format, naming only the
    request id (the log line under that id has the exception)."""
    message = f"internal error: the server log has the details under request id {request_id}"
    return JSONResponse(error_body(request, 500, message, error_code="INTERNAL_ERROR"), status_code=500)


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError) -> JSONResponse:
        if exc.status_code >= 500:
            log.error("%s %s -> %d: %s", request.method, request.url.path, exc.status_code, exc.detail)
        else:
            log.info("%s %s -> %d: %s", request.method, request.url.path, exc.status_code, exc.detail)
        headers = {"WWW-Authenticate": "Bearer"} if exc.status_code == 401 else None
        if isinstance(exc, (ServiceUnavailable, TooManyRequests)):
            headers = {"Retry-After": str(exc.retry_after_s)}
        body = error_body(request, exc.status_code, exc.detail, exc.details, exc.error_code)
        return JSONResponse(body, status_code=exc.status_code, headers=headers)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        # routing's own answers (404 of an unknown path, 405 of a method a path does not take) in the API's format
        code = _HTTP_ERROR_CODES.get(exc.status_code, "HTTP_ERROR")
        headers = dict(exc.headers or {})
        if exc.status_code == 405:  # every method of the path, not only those of the first route that has it
            methods = {method for route in _slice_routes(request) if route.matches(request.scope)[0] is Match.PARTIAL
                       for method in getattr(route, "methods", ())}
            headers["Allow"] = ", ".join(sorted(methods))
        return JSONResponse(error_body(request, exc.status_code, str(exc.detail), error_code=code), status_code=exc.status_code,
                            headers=headers)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        # The documented APIs answer bad parameters with 400, not FastAPI's default 422.
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc'] if p != 'body')}: {e['msg']}" for e in exc.errors())
        return JSONResponse(error_body(request, 400, f"invalid request: {problems}", error_code=INVALID_REQUEST), status_code=400)
