"""Serving the app with uvicorn on its port and, in documented-ports mode, on each documented server's port too.

The sockets are bound before anything else starts (``bind_sockets``), so a port in use is an error at once, not
after Triton has loaded its models."""

from __future__ import annotations

import logging
import socket
from dataclasses import dataclass

import uvicorn
from fastapi import FastAPI

from frontend.config import Settings

log = logging.getLogger(__name__)


class PortInUse(RuntimeError):
    pass


@dataclass
class Listener:
    label: str
    host: str
    port: int
    sock: socket.socket

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"


def _bind(host: str, port: int, label: str) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise PortInUse(f"cannot listen on {host}:{port} ({label}): {exc.strerror}") from None
    return sock


def bind_sockets(settings: Settings, host: str, port: int) -> list[Listener]:
    """The main port (every API) and, in documented-ports mode, each documented server's."""
    from frontend.documented_ports import TITLES

    wanted = [("REST API (all APIs)", port)]
    if settings.documented_ports:
        wanted += [(TITLES[name], number) for name, number in settings.documented_port_numbers.items()]
    listeners: list[Listener] = []
    try:
        for label, number in wanted:
            listeners.append(Listener(label, host, number, _bind(host, number, label)))
    except PortInUse:
        for listener in listeners:
            listener.sock.close()
        raise
    return listeners


def serve(app: FastAPI, settings: Settings, listeners: list[Listener]) -> None:
    for listener in listeners:
        log.info("listening on %s (%s)", listener.url, listener.label)
    config = uvicorn.Config(app, log_level=settings.log_level, log_config=None,
                            timeout_graceful_shutdown=settings.shutdown_grace_s)
    uvicorn.Server(config).run(sockets=[listener.sock for listener in listeners])


def add_serving_arguments(parser) -> None:
    """The options ``python -m frontend`` and ``python -m stack`` share (each overrides its setting)."""
    parser.add_argument("--documented-ports", action="store_true", default=None,
                        help="also serve each API on its document's port, that API only: LAM-A2E 8000, Hallo2 8001, "
                             "Emotion-LLaMA Gradio 7889 and FastAPI 7887 (EMOSERVE_DOCUMENTED_PORTS)")
    parser.add_argument("--media-root", dest="media_roots", action="append", default=None, metavar="DIR",
                        help="a folder Emotion-LLaMA's video_path may read from (repeatable; replaces the setting "
                             "EMOSERVE_EMOTION_LLAMA__MEDIA_ROOTS); relative video paths resolve against the first")


def apply_serving_arguments(settings: Settings, args) -> Settings:
    if args.documented_ports:
        settings = settings.model_copy(update={"documented_ports": True})
    if args.media_roots:
        from frontend.config import EmotionLlamaSettings

        emotion_llama = EmotionLlamaSettings(**{**settings.emotion_llama.model_dump(), "media_roots": args.media_roots})
        settings = settings.model_copy(update={"emotion_llama": emotion_llama})
    return settings
