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

from frontend.serving import PortInUse, add_serving_arguments, apply_serving_arguments, bind_sockets, serve
from stack.supervision import TritonSupervisor
from stack.triton_server import (
    DEFAULT_GRPC_PORT,
    DEFAULT_HTTP_PORT,
    DEFAULT_METRICS_PORT,
    MOVED_PORTS,
    TritonServer,
    TritonServerOptions,
)

log = logging.getLogger("stack")


def main(argv: list[str] | None = None) -> int:
    from export.build_repository import SOURCE_REPOSITORY, BuildSettings, build_repository, repository_is_built

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--host", default="127.0.0.1", help="REST bind address (0.0.0.0: every interface, for other machines)")
    parser.add_argument("--port", type=int, default=8080, help="REST port")
    parser.add_argument("--config-file", type=Path, default=None,
                        help="settings file (.env syntax: EMOSERVE_API_KEY, EMOSERVE_HALLO2__DATABASE_URL ...)")
    parser.add_argument("--weight", type=Path, default=None, help="official LAM-A2E checkpoint; rebuilds the repository")
    parser.add_argument("--log-level", default="info", choices=("critical", "error", "warning", "info", "debug"))
    parser.add_argument("--triton-url", default=None, help="use this Triton gRPC address instead of starting one")
    parser.add_argument("--model-repository", type=Path, default=SOURCE_REPOSITORY)
    parser.add_argument("--profile", choices=("full", "tiny"), default="full")
    parser.add_argument("--rebuild", action="store_true", help="rebuild the model repository even if present")
    parser.add_argument("--triton-http-port", type=int, default=None,
                        help=f"default {DEFAULT_HTTP_PORT}; {MOVED_PORTS[0]} with --documented-ports")
    parser.add_argument("--triton-grpc-port", type=int, default=None,
                        help=f"default {DEFAULT_GRPC_PORT}; {MOVED_PORTS[1]} with --documented-ports")
    parser.add_argument("--triton-metrics-port", type=int, default=None,
                        help=f"default {DEFAULT_METRICS_PORT}; {MOVED_PORTS[2]} with --documented-ports")
    add_serving_arguments(parser)
    args = parser.parse_args(argv)

    from prometheus_client import REGISTRY

    from frontend.config import load_settings
    from frontend.main import create_app
    from frontend.observability import configure_logging

    settings = apply_serving_arguments(load_settings(args.config_file, log_level=args.log_level), args)
    configure_logging(settings.log_level, settings.log_format)
    triton_ports = triton_port_choice(settings.documented_ports, args.triton_http_port, args.triton_grpc_port,
                                      args.triton_metrics_port)
    try:
        listeners = bind_sockets(settings, args.host, args.port)  # before Triton: a port in use fails at once
    except PortInUse as exc:
        parser.exit(2, f"error: {exc}\n")
    taken = {listener.port for listener in listeners} & set(triton_ports) if args.triton_url is None else set()
    if taken:
        parser.exit(2, f"error: Triton's port {min(taken)} is also a REST port; pick others with --triton-*-port\n")

    server = supervisor = None
    if args.triton_url is None:
        if args.rebuild or args.weight is not None or not repository_is_built(args.model_repository):
            log.info("building the model repository (profile %s) ...", args.profile)
            build_repository(args.model_repository, BuildSettings(profile=args.profile, checkpoint=args.weight))
        log_path = Path("logs") / "tritonserver.log"
        server = TritonServer(TritonServerOptions(args.model_repository, *triton_ports, log_path=log_path))
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
        for listener in listeners:
            print(f"REST API   {listener.url}  {listener.label}  (docs: /docs, /redoc)", flush=True)
        if server is not None:
            print(f"Triton     http://{server.http_url}  grpc {server.grpc_url}  metrics {server.metrics_url}", flush=True)
            print(f"Triton log {server.log_path}", flush=True)
        # uvicorn re-raises the SIGTERM it handled once it has shut down; with the default action that would end
        # the process before the finally below stops Triton in order
        signal.signal(signal.SIGTERM, lambda signum, _frame: log.info("%s handled: stopping Triton", signal.Signals(signum).name))
        # SIGTERM: uvicorn stops accepting, lets requests finish within the grace, then the app's lifespan ends the
        # streaming sessions and re-queues running Hallo2 tasks; Triton is stopped after that (below)
        serve(create_app(settings), settings, listeners)
    finally:
        if supervisor is not None:
            supervisor.stop(stop_server=True)
        if server is not None:
            server.stop()
    return 0


def triton_port_choice(documented_ports: bool, http: int | None, grpc: int | None, metrics: int | None) -> tuple[int, int, int]:
    """Triton's HTTP, gRPC and metrics ports: the given ones, else Triton's defaults, else (the documents' servers
    taking 8000 and 8001) :data:`MOVED_PORTS`."""
    defaults = MOVED_PORTS if documented_ports else (DEFAULT_HTTP_PORT, DEFAULT_GRPC_PORT, DEFAULT_METRICS_PORT)
    return tuple(given if given is not None else default for given, default in zip((http, grpc, metrics), defaults, strict=True))


if __name__ == "__main__":
    sys.exit(main())
