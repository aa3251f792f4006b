"""``python -m stack``: the whole stack — model repository, tritonserver, REST front end.

The LAM-A2E document's server options keep their meaning: ``--host/--port`` bind the REST API,
``--weight`` points at an official checkpoint (the model repository is rebuilt from it),
``--config-file`` is the stack's settings file, ``--log-level`` sets logging. ``--triton-url`` uses an
external Triton (e.g. the NGC container on a GPU host) instead of starting the bundled one.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
from pathlib import Path

from stack.supervision import TritonSupervisor
from stack.triton_server import DEFAULT_GRPC_PORT, DEFAULT_HTTP_PORT, DEFAULT_METRICS_PORT, TritonServer, TritonServerOptions

log = logging.getLogger("stack")


def main(argv: list[str] | None = None) -> int:
    from export.build_repository import SOURCE_REPOSITORY, BuildSettings, build_repository, repository_is_built

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--host", default="127.0.0.1", help="REST bind address")
    parser.add_argument("--port", type=int, default=8080, help="REST port")
    parser.add_argument("--config-file", type=Path, default=None,
                        help="settings file (.env syntax: EMOSERVE_API_KEY, EMOSERVE_HALLO2__DATABASE_URL ...)")
    parser.add_argument("--weight", type=Path, default=None, help="official LAM-A2E checkpoint; rebuilds the repository")
    parser.add_argument("--log-level", default="info", choices=("critical", "error", "warning", "info", "debug"))
    parser.add_argument("--triton-url", default=None, help="use this Triton gRPC address instead of starting one")
    parser.add_argument("--model-repository", type=Path, default=SOURCE_REPOSITORY)
    parser.add_argument("--profile", choices=("full", "tiny"), default="full")
    parser.add_argument("--rebuild", action="store_true", help="rebuild the model repository even if present")
    parser.add_argument("--triton-http-port", type=int, default=DEFAULT_HTTP_PORT)
    parser.add_argument("--triton-grpc-port", type=int, default=DEFAULT_GRPC_PORT)
    parser.add_argument("--triton-metrics-port", type=int, default=DEFAULT_METRICS_PORT)
    args = parser.parse_args(argv)

    import uvicorn
    from prometheus_client import REGISTRY

    from frontend.config import load_settings
    from frontend.main import create_app
    from frontend.observability import configure_logging

    settings = load_settings(args.config_file, log_level=args.log_level)
    configure_logging(settings.log_level, settings.log_format)

    server = supervisor = None
    if args.triton_url is None:
        if args.rebuild or args.weight is not None or not repository_is_built(args.model_repository):
            log.info("building the model repository (profile %s) ...", args.profile)
            build_repository(args.model_repository, BuildSettings(profile=args.profile, checkpoint=args.weight))
        log_path = Path("logs") / "tritonserver.log"
        server = TritonServer(TritonServerOptions(args.model_repository, args.triton_http_port, args.triton_grpc_port,
                                                  args.triton_metrics_port, log_path=log_path))
        server.start()
        supervisor = TritonSupervisor(server).start()
        REGISTRY.register(supervisor)
        triton_url = server.grpc_url
    else:
        if args.weight is not None:
            parser.error("--weight rebuilds the local repository; with --triton-url build the remote one instead")
        triton_url = args.triton_url
    try:
        settings = settings.model_copy(update={"triton_grpc_url": triton_url})
        print(f"REST API   http://{args.host}:{args.port}  (docs: /docs, /redoc)", flush=True)
        if server is not None:
            print(f"Triton     http://{server.http_url}  grpc {server.grpc_url}  metrics {server.metrics_url}", flush=True)
            print(f"Triton log {server.log_path}", flush=True)
        # uvicorn re-raises the SIGTERM it handled once it has shut down; with the default action that would end
        # the process before the finally below stops Triton in order
        signal.signal(signal.SIGTERM, lambda signum, _frame: log.info("%s handled: stopping Triton", signal.Signals(signum).name))
        # SIGTERM: uvicorn stops accepting, lets requests finish within the grace, then the app's lifespan ends the
        # streaming sessions and re-queues running Hallo2 tasks; Triton is stopped after that (below)
        uvicorn.run(create_app(settings), host=args.host, port=args.port, log_level=args.log_level, log_config=None,
                    timeout_graceful_shutdown=settings.shutdown_grace_s)
    finally:
        if supervisor is not None:
            supervisor.stop(stop_server=True)
        if server is not None:
            server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
