"""Server-sent events, as the streaming routes write them (``POST /process_video/stream``,
``GET /api/v1/tasks/{id}/events``)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

from fastapi.responses import StreamingResponse

EVENT_STREAM = "text/event-stream"
KEEPALIVE = b": keepalive\n\n"  # a comment line: clients ignore it, proxies see traffic


def sse_event(event: str, payload: dict | str) -> bytes:
    """One event; ``payload`` is a JSON object, or JSON text already serialised."""
    data = payload if isinstance(payload, str) else json.dumps(payload, ensure_ascii=False)
    return f"event: {event}\ndata: {data}\n\n".encode()


def event_stream(events: AsyncIterator[bytes]) -> StreamingResponse:
    # no-cache: a proxy must not store (or wait to store) a stream
    return StreamingResponse(events, media_type=EVENT_STREAM, headers={"Cache-Control": "no-cache"})


def event_stream_responses(description: str) -> dict:
    """The OpenAPI ``responses`` of a route answering :func:`event_stream` (200 is ``text/event-stream``, not JSON)."""
    return {200: {"description": description, "content": {EVENT_STREAM: {"schema": {"type": "string"}}}}}
