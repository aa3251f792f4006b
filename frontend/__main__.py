"""``python -m frontend``: run the REST front end against a running Triton (see ``stack`` for both)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import uvicorn

from frontend.config import load_settings
from frontend.main import create_app
from frontend.observability import configure_logging


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Emotion-AI REST front end (LAM-A2E API) over Triton")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8080)
    parser.add_argument("--config-file", type=Path, default=None,
                        help="settings file (.env syntax: EMOSERVE_API_KEY, EMOSERVE_HALLO2__DATABASE_URL ...)")
    parser.add_argument("--triton-url", default=None, help="Triton gRPC address host:port")
    parser.add_argument("--log-level", default=None, choices=("critical", "error", "warning", "info", "debug"))
    args = parser.parse_args(argv)
    overrides = {}
    if args.triton_url:
        overrides["triton_grpc_url"] = args.triton_url
    if args.log_level:
        overrides["log_level"] = args.log_level
    settings = load_settings(args.config_file, **overrides)
    configure_logging(settings.log_level, settings.log_format)
    uvicorn.run(create_app(settings), host=args.host, port=args.port, log_level=settings.log_level, log_config=None,
                timeout_graceful_shutdown=settings.shutdown_grace_s)
    return 0


if __name__ == "__main__":
    sys.exit(main())
