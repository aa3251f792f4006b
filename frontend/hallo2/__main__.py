"""``python -m frontend.hallo2``: the Hallo2 task worker on its own, and the task database's migrations.

    python -m frontend.hallo2 worker [--triton-url HOST:8001] [--config-file FILE] [--host H --port 8090]
    python -m frontend.hallo2 migrate [--config-file FILE]

``worker`` takes queued tasks from the database in ``EMOSERVE_HALLO2__DATABASE_URL`` and runs them on Triton, writing
results to ``EMOSERVE_HALLO2__DATA_DIR`` — the same settings as the front end, which then runs with
``EMOSERVE_HALLO2__EMBEDDED_WORKER=false``. Any number of workers may share one database (PostgreSQL across machines,
SQLite on one): each task is claimed by exactly one. SIGTERM puts its running tasks back in the queue; a worker that
dies without that loses its lease, and another worker runs the task after ``stale_after_s``. It answers ``GET /livez``
(its loops go round) and ``GET /readyz`` (the database answers and Triton's ``hallo2`` model is ready) on ``--port``
for an orchestrator's probes.

``migrate`` brings the database to the newest schema and exits (the store also does it when it opens one).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import sys
from pathlib import Path

from emoserve.model_catalog import HALLO2_PIPELINE_MODEL
from frontend.config import Hallo2Settings, load_settings
from frontend.observability import configure_logging

log = logging.getLogger("frontend.hallo2.worker")

_LIVE_WITHIN_S = 120.0  # a claim loop silent this long is wedged (each of its waits is bounded well below)


class _Probes:
    """A minimal HTTP/1.0 server for /livez and /readyz: the worker serves no API, so no web framework."""

    def __init__(self, service, triton):
        self.service, self.triton = service, triton

    async def answer(self, path: str) -> tuple[int, str]:
        worker = self.service.worker
        if path == "/livez":
            return (200, "alive") if worker is not None and worker.alive(_LIVE_WITHIN_S) else (503, "the worker's loops stopped")
        if path == "/readyz":
            try:
                await self.service.store.counts()
            except Exception:
                return 503, "the task database does not answer"
            states = await self.triton.model_states()
            if states.get(HALLO2_PIPELINE_MODEL) != "READY":
                return 503, "Triton's hallo2 model is not ready"
            return 200, "ready"
        return 404, "not found"

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            request_line = await asyncio.wait_for(reader.readline(), timeout=5)
            parts = request_line.decode("latin-1").split()
            status, text = await self.answer(parts[1].split("?")[0] if len(parts) >= 2 else "")
            body = (text + "\n").encode()
            writer.write(f"HTTP/1.0 {status} {'OK' if status == 200 else 'Error'}\r\nContent-Type: text/plain\r\n"
                         f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode() + body)
            await writer.drain()
        except (asyncio.TimeoutError, ConnectionError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()


async def run_worker(settings, host: str, port: int) -> None:
    from frontend.hallo2.engine import TritonHallo2Engine
    from frontend.hallo2.service import Hallo2Service
    from frontend.triton import TritonEngine

    hallo2: Hallo2Settings = settings.hallo2
    if hallo2.recover_all_on_startup:
        log.warning("recover_all_on_startup is ignored by a separate worker: others may be running; a dead worker's "
                    "tasks come back after stale_after_s")
    triton = TritonEngine(settings.triton_grpc_url, settings.triton_timeout_s, settings.triton_probe_timeout_s)
    engine = TritonHallo2Engine(triton, task_timeout_s=hallo2.task_timeout_s, progress_timeout_s=hallo2.progress_timeout_s)
    service = Hallo2Service(hallo2, engine)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    try:
        await service.start(standalone=True)
        server = await asyncio.start_server(_Probes(service, triton).handle, host, port)
        log.info("hallo2 worker %s: tasks from the database, Triton at %s, probes on http://%s:%d/livez and /readyz",
                 service.worker.worker_id, settings.triton_grpc_url, host, port)
        print(f"hallo2 worker {service.worker.worker_id} running (probes on {host}:{port})", flush=True)
        async with server:
            await stop.wait()
            log.info("hallo2 worker: stopping (running tasks go back to the queue)")
    finally:
        await service.stop()
        await triton.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m frontend.hallo2", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    worker = commands.add_parser("worker", help="run Hallo2 tasks from the shared database")
    worker.add_argument("--triton-url", default=None, help="Triton gRPC address host:port")
    worker.add_argument("--host", default="127.0.0.1", help="probe address (0.0.0.0 in a container)")
    worker.add_argument("--port", type=int, default=8090, help="probe port (/livez, /readyz)")
    migrate = commands.add_parser("migrate", help="migrate the task database to the newest schema and exit")
    for command in (worker, migrate):
        command.add_argument("--config-file", type=Path, default=None, help="settings file (.env syntax, EMOSERVE_* keys)")
        command.add_argument("--log-level", default=None, choices=("critical", "error", "warning", "info", "debug"))
    args = parser.parse_args(argv)

    overrides = {}
    if getattr(args, "triton_url", None):
        overrides["triton_grpc_url"] = args.triton_url
    if args.log_level:
        overrides["log_level"] = args.log_level
    settings = load_settings(args.config_file, **overrides)
    configure_logging(settings.log_level, settings.log_format)
    if args.command == "migrate":
        from frontend.hallo2 import migrations
        from frontend.hallo2.tasks import make_engine

        engine = make_engine(settings.hallo2.database_url)
        try:
            print(f"hallo2 task database at revision {migrations.upgrade(engine)}", flush=True)
        finally:
            engine.dispose()
        return 0
    asyncio.run(run_worker(settings, args.host, args.port))
    return 0


if __name__ == "__main__":
    sys.exit(main())
