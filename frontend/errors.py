"""Typed API errors and the one place they become HTTP responses (``{"detail": ...}``)."""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

log = logging.getLogger(__name__)


class ApiError(Exception):
    status_code = 500

    def __init__(self, detail: str, details: str | None = None):
        super().__init__(detail)
        self.detail = detail
        self.details = details  # extra context for APIs whose error body has a "details" field


class BadRequest(ApiError):
    status_code = 400


class Unauthorized(ApiError):
    status_code = 401


class NotFound(ApiError):
    status_code = 404


class PayloadTooLarge(ApiError):
    status_code = 413


class InferenceFailed(ApiError):
    status_code = 500


class ServiceUnavailable(ApiError):
    status_code = 503


# Routes tagged with this use the Emotion-LLaMA error body {"error", "code", "details"}; all others {"detail"}.
ERROR_FIELD_TAG = "error-body"


def error_body(request: Request, status_code: int, message: str, details: str | None = None) -> dict:
    route = request.scope.get("route")
    if route is not None and ERROR_FIELD_TAG in (getattr(route, "tags", None) or []):
        return {"error": message, "code": status_code, "details": details}
    return {"detail": message}


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError) -> JSONResponse:
        if exc.status_code >= 500:
            log.error("%s %s -> %d: %s", request.method, request.url.path, exc.status_code, exc.detail)
        else:
            log.info("%s %s -> %d: %s", request.method, request.url.path, exc.status_code, exc.detail)
        headers = {"WWW-Authenticate": "Bearer"} if exc.status_code == 401 else None
        return JSONResponse(error_body(request, exc.status_code, exc.detail, exc.details), status_code=exc.status_code, headers=headers)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        # The documented APIs answer bad parameters with 400, not FastAPI's default 422.
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc'] if p != 'body')}: {e['msg']}" for e in exc.errors())
        return JSONResponse(error_body(request, 400, f"invalid request: {problems}"), status_code=400)
