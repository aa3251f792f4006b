"""Request-scoped dependencies shared by the slices: settings, a model engine from the app state, the API key
check, bounded upload reads. Each slice's own engine dependency is in ``frontend/<model>/engine.py``.

Dependencies that do not block are ``async def``: FastAPI runs a plain ``def`` dependency in its thread pool, a
thread hand-off per dependency per request (a Hallo2 status poll paid two)."""

from __future__ import annotations

import hashlib
import hmac
from typing import Annotated

from fastapi import Depends, Request, UploadFile

from frontend.config import Settings
from frontend.errors import BadRequest, PayloadTooLarge, ServiceUnavailable, Unauthorized

_READ_BLOCK = 1 << 20


async def get_settings(request: Request) -> Settings:
    return request.app.state.settings


def engine_from_state(request: Request, name: str):
    """A model engine the lifespan put in ``app.state.<name>``; 503 outside the lifespan."""
    engine = getattr(request.app.state, name, None)
    if engine is None:
        raise ServiceUnavailable("model not initialised: the Triton client is not connected")
    return engine


def supplied_api_key(request: Request) -> str:
    """The key a request carries: ``X-API-Key``, else ``Authorization: Bearer``; '' without one."""
    supplied = request.headers.get("x-api-key") or ""
    authorization = request.headers.get("authorization") or ""
    if authorization.lower().startswith("bearer "):
        supplied = supplied or authorization[7:].strip()
    return supplied


def client_key(request: Request) -> str:
    """Who is asking, for per-client caps: the API key's digest when one is sent, else the client's address."""
    supplied = supplied_api_key(request)
    if supplied:
        return "key:" + hashlib.sha256(supplied.encode()).hexdigest()[:16]
    return "address:" + (request.client.host if request.client else "unknown")


async def require_api_key(request: Request) -> None:
    expected = request.app.state.settings.api_key
    if not expected:
        return
    if not hmac.compare_digest(supplied_api_key(request).encode(), expected.encode()):
        raise Unauthorized("missing or invalid API key (send X-API-Key or Authorization: Bearer)")


SettingsDep = Annotated[Settings, Depends(get_settings)]


async def read_upload(upload: UploadFile, limit_bytes: int, field_name: str, *, allow_empty: bool = False,
                      too_large: PayloadTooLarge | None = None) -> bytes:
    """The upload's bytes, refusing more than ``limit_bytes`` (413, ``too_large`` when given) without
    reading the rest; an empty upload is a 400 unless ``allow_empty``."""
    parts, total = [], 0
    while True:
        block = await upload.read(_READ_BLOCK)
        if not block:
            break
        total += len(block)
        if total > limit_bytes:
            raise too_large or PayloadTooLarge(f"{field_name} is larger than the {limit_bytes} byte limit")
        parts.append(block)
    await upload.close()
    if total == 0 and not allow_empty:
        raise BadRequest(f"{field_name} is empty")
    return b"".join(parts)
