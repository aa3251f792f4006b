"""Request-scoped dependencies: settings, the Triton engine, the session registry, the API key check."""

from __future__ import annotations

import hmac
from typing import Annotated

from fastapi import Depends, Request, UploadFile

from frontend.config import Settings
from frontend.errors import BadRequest, PayloadTooLarge, ServiceUnavailable, Unauthorized
from frontend.lam_a2e.sessions import SessionRegistry
from frontend.triton import TritonEngine

_READ_BLOCK = 1 << 20


def get_settings(request: Request) -> Settings:
    return request.app.state.settings


def get_engine(request: Request) -> TritonEngine:
    engine = getattr(request.app.state, "engine", None)
    if engine is None:
        raise ServiceUnavailable("model not initialised: the Triton client is not connected")
    return engine


def get_sessions(request: Request) -> SessionRegistry:
    return request.app.state.sessions


def require_api_key(request: Request) -> None:
    expected = request.app.state.settings.api_key
    if not expected:
        return
    supplied = request.headers.get("x-api-key") or ""
    authorization = request.headers.get("authorization") or ""
    if authorization.lower().startswith("bearer "):
        supplied = supplied or authorization[7:].strip()
    if not hmac.compare_digest(supplied.encode(), expected.encode()):
        raise Unauthorized("missing or invalid API key (send X-API-Key or Authorization: Bearer)")


SettingsDep = Annotated[Settings, Depends(get_settings)]
EngineDep = Annotated[TritonEngine, Depends(get_engine)]
SessionsDep = Annotated[SessionRegistry, Depends(get_sessions)]


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
