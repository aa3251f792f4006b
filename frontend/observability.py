"""What the front end tells its operators: Prometheus metrics, a request id on every response and log line, and
text or JSON logs.

The metrics live in prometheus_client's default registry (one front-end process, one set); the gauges that
describe state owned elsewhere (live streaming sessions, the Hallo2 queue) are read when ``/metrics`` is
scraped, so they can never drift from the state itself.
"""

from __future__ import annotations

import contextvars
import json
import logging
import re
import time
import uuid

from fastapi import Request
from prometheus_client import Counter, Gauge, Histogram
from starlette.datastructures import Headers, MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from frontend.errors import internal_error_response

REQUEST_ID_HEADER = "X-Request-ID"
# a client's own id is kept when it is short and plain (it ends up in log lines); anything else gets a new one
_CLIENT_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")

log = logging.getLogger(__name__)

request_id_var: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="-")

HTTP_REQUESTS = Counter("emoserve_http_requests_total", "HTTP requests answered, by route template and status code",
                        ["method", "route", "status"])
HTTP_LATENCY = Histogram("emoserve_http_request_duration_seconds", "time to the response's start, by route template",
                         ["method", "route"], buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120))
STREAM_SESSIONS = Gauge("emoserve_lam_a2e_stream_sessions", "live LAM-A2E streaming sessions")
HALLO2_TASKS = Gauge("emoserve_hallo2_tasks", "Hallo2 tasks in the task store, by status", ["status"])
HALLO2_OUTCOMES = Counter("emoserve_hallo2_task_outcomes_total",
                          "Hallo2 tasks finished by this front end's worker, by outcome (retried: run again after Triton "
                          "was unavailable; requeued: put back at shutdown)", ["outcome"])
UNMATCHED_ROUTE = "unmatched"


def _route_template(scope: Scope) -> str:
    route = scope.get("route")
    return getattr(route, "path", None) or UNMATCHED_ROUTE  # templates, not paths: one series per route


class RequestTracking:
    """A request id (the client's ``X-Request-ID`` or a new one) on the response and every log line of the request;
    request counts and latencies by route template.

    Pure ASGI rather than ``@app.middleware("http")``: ``BaseHTTPMiddleware`` runs every request in a task group
    with a memory stream between it and the server, about 0.3 ms of CPU per request, which a status poll or a
    streaming chunk pays on cores shared with Triton.
    """

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        offered = Headers(scope=scope).get(REQUEST_ID_HEADER, "")
        request_id = offered if _CLIENT_REQUEST_ID.fullmatch(offered) else uuid.uuid4().hex
        token = request_id_var.set(request_id)
        started = time.perf_counter()
        status, time_to_start = 500, None

        async def send_tagged(message: Message) -> None:
            nonlocal status, time_to_start
            if message["type"] == "http.response.start":
                status, time_to_start = message["status"], time.perf_counter() - started
                MutableHeaders(scope=message)[REQUEST_ID_HEADER] = request_id
            await send(message)

        try:
            await self.app(scope, receive, send_tagged)
        except Exception:  # a defect: logged with its traceback, answered without one
            log.exception("%s %s failed", scope["method"], scope["path"])
            if time_to_start is not None:
                raise  # the response is under way: the server can only drop the connection
            await internal_error_response(Request(scope), request_id)(scope, receive, send_tagged)
        finally:
            route = _route_template(scope)
            HTTP_REQUESTS.labels(scope["method"], route, str(status)).inc()
            HTTP_LATENCY.labels(scope["method"], route).observe(time_to_start if time_to_start is not None
                                                                 else time.perf_counter() - started)
            request_id_var.reset(token)


class RequestIdFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = request_id_var.get()
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object a line: time, level, logger, message, request_id (and the exception, if any)."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S") + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "request_id": getattr(record, "request_id", "-"),
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


TEXT_LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s [%(request_id)s]: %(message)s"
LOG_FORMATS = ("text", "json")


def configure_logging(level: str, log_format: str = "text") -> None:
    """The root logger (and uvicorn's, which keep their own handlers otherwise) in one format, with request ids."""
    if log_format not in LOG_FORMATS:
        raise ValueError(f"log format must be one of {LOG_FORMATS}, got {log_format!r}")
    handler = logging.StreamHandler()
    handler.addFilter(RequestIdFilter())
    formatter = JsonFormatter() if log_format == "json" else logging.Formatter(TEXT_LOG_FORMAT)
    formatter.converter = time.gmtime
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logger = logging.getLogger(name)
        logger.handlers[:] = []
        logger.propagate = True


