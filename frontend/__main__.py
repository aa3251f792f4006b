"""``python -m frontend``: run the REST front end against a running Triton (see ``stack`` for both)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from frontend.config import load_settings
from frontend.main import create_app
from frontend.observability import configure_logging
from frontend.serving import PortInUse, add_serving_arguments, apply_serving_arguments, bind_sockets, serve


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Emotion-AI REST front end (LAM-A2E API) over Triton")
    parser.add_argument("--host", default="127.0.0.1", help="bind address (0.0.0.0: every interface, for other machines)")
    parser.add_argument("--port", type=int, default=8080)
    parser.add_argument("--config-file", type=Path, default=None,
                        help="settings file (.env syntax: EMOSERVE_API_KEY, EMOSERVE_HALLO2__DATABASE_URL ...)")
    parser.add_argument("--triton-url", default=None, help="Triton gRPC address host:port")
    parser.add_argument("--log-level", default=None, choices=("critical", "error", "warning", "info", "debug"))
    add_serving_arguments(parser)
    args = parser.parse_args(argv)
    overrides = {}
    if args.triton_url:
        overrides["triton_grpc_url"] = args.triton_url
    if args.log_level:
        overrides["log_level"] = args.log_level
    settings = apply_serving_arguments(load_settings(args.config_file, **overrides), args)
    configure_logging(settings.log_level, settings.log_format)
    try:
        listeners = bind_sockets(settings, args.host, args.port)
    except PortInUse as exc:
        parser.exit(2, f"error: {exc}\n")
    serve(create_app(settings), settings, listeners)
    return 0


if __name__ == "__main__":
    sys.exit(main())
