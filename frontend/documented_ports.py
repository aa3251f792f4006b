"""Documented-ports mode (``--documented-ports``, ``EMOSERVE_DOCUMENTED_PORTS``): besides its own port, the one
app also listens on the port each API's document names, and there answers that API's routes only (plus ``/docs``,
``/redoc`` and an ``/openapi.json`` of those routes), so the documents' base URLs and client code work unchanged.

One app on several sockets rather than one app per port: streaming sessions, Hallo2 tasks and the Triton client
are shared, so a session opened on :8000 can also be fed on the main port.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from starlette.routing import Match
from starlette.types import ASGIApp, Receive, Scope, Send

from frontend.config import Settings
from frontend.emotion_llama import router as emotion_llama
from frontend.errors import error_body_for_route
from frontend.hallo2 import router as hallo2
from frontend.lam_a2e import router as lam_a2e

GRADIO_PATHS = frozenset({"/api/predict/"})  # the rest of Emotion-LLaMA's routes are the FastAPI server's
DOCS_PATHS = frozenset({"/docs", "/docs/oauth2-redirect", "/redoc"})


def _routes(*modules) -> list:
    return [route for module in modules for router in (module.public, module.protected) for route in router.routes]


def documented_routes() -> dict[str, list]:
    """Each documented server's routes, by its key in ``Settings.documented_port_numbers``."""
    emotion_llama_routes = _routes(emotion_llama)
    return {
        "lam_a2e": _routes(lam_a2e),
        "hallo2": _routes(hallo2),
        "emotion_llama_gradio": [route for route in emotion_llama_routes if route.path in GRADIO_PATHS],
        "emotion_llama_fastapi": [route for route in emotion_llama_routes if route.path not in GRADIO_PATHS],
    }


TITLES = {"lam_a2e": "LAM-A2E API", "hallo2": "Hallo2 API", "emotion_llama_gradio": "Emotion-LLaMA (Gradio API)",
          "emotion_llama_fastapi": "Emotion-LLaMA (FastAPI)"}


@dataclass
class _Server:
    name: str
    routes: list
    schema: bytes | None = None


class DocumentedPorts:
    """ASGI middleware: a request that arrived on a documented port reaches only that server's routes."""

    def __init__(self, app: ASGIApp, settings: Settings):
        self.app = app
        routes = documented_routes()
        self.servers = {port: _Server(name, routes[name]) for name, port in settings.documented_port_numbers.items()}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        server = self.servers.get((scope.get("server") or (None, None))[1]) if scope["type"] == "http" else None
        if server is None or scope["path"] in DOCS_PATHS:
            await self.app(scope, receive, send)
            return
        if scope["path"] == "/openapi.json":
            await self._send_json(send, 200, self._schema(scope, server))
            return
        if any(route.matches(scope)[0] is not Match.NONE for route in server.routes):
            await self.app(scope, receive, send)
            return
        body = error_body_for_route(server.routes[0], 404, "Not Found",
                                    details=f"this port serves the {TITLES[server.name]} only", error_code="NOT_FOUND")
        await self._send_json(send, 404, json.dumps(body).encode())

    @staticmethod
    def _schema(scope: Scope, server: _Server) -> bytes:
        if server.schema is None:
            from frontend.openapi import api_schema

            server.schema = json.dumps(api_schema(scope["app"], server.routes, TITLES[server.name])).encode()
        return server.schema

    @staticmethod
    async def _send_json(send: Send, status: int, body: bytes) -> None:
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})
