"""Routes for orchestrators and operators, beside the three APIs: ``/livez``, ``/readyz`` and ``/metrics``.

* ``/livez``: the process answers (its event loop runs). Restart the container when this fails.
* ``/readyz``: 200 only when this replica can serve: Triton answers within its probe timeout and every model of
  each slice in Triton's repository is READY (a model whose stub just died is not), and the Hallo2 task store
  answers. 503 otherwise, naming what is missing. Take the replica out of the load balancer when this fails.
* ``/metrics``: Prometheus text format (``frontend/observability.py``); Triton's own metrics stay on its port.
"""

from __future__ import annotations

import logging

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from emoserve.model_catalog import SLICE_MODELS
from frontend.observability import HALLO2_TASKS, STREAM_SESSIONS

log = logging.getLogger(__name__)

router = APIRouter(tags=["Operations"])


@router.get("/livez", summary="Liveness: the process answers")
async def livez() -> dict:
    return {"status": "alive"}


async def readiness(request: Request) -> tuple[bool, dict]:
    state = request.app.state
    triton = getattr(state, "triton", None)
    states = await triton.model_states() if triton is not None else {}
    apis = {}
    for slice_name, models in SLICE_MODELS.items():
        present = [model for model in models if model in states]
        if present:  # a repository built with some slices only serves those
            apis[slice_name] = all(states[model] == "READY" for model in models)
    not_ready = sorted(model for model, model_state in states.items() if model_state != "READY")
    task_store = False
    service = getattr(state, "hallo2", None)
    if service is not None and service.store is not None:
        try:
            await service.store.counts()
            task_store = True
        except Exception as exc:  # the database is down: this replica cannot take Hallo2 tasks
            log.warning("readiness: the Hallo2 task store does not answer: %s", exc)
    ready = bool(states) and bool(apis) and all(apis.values()) and task_store
    return ready, {"status": "ready" if ready else "not_ready", "triton": bool(states), "apis": apis,
                   "models_not_ready": not_ready, "task_store": task_store}


@router.get("/readyz", summary="Readiness: every served model can take requests (503 when not)",
            responses={503: {"description": "not ready: the body names what is missing"}})
async def readyz(request: Request) -> JSONResponse:
    ready, body = await readiness(request)
    return JSONResponse(body, status_code=200 if ready else 503, headers=None if ready else {"Retry-After": "5"})


@router.get("/metrics", summary="Prometheus metrics of the front end", response_class=Response)
async def metrics(request: Request) -> Response:
    state = request.app.state
    sessions = getattr(state, "sessions", None)
    STREAM_SESSIONS.set(len(sessions) if sessions is not None else 0)
    service = getattr(state, "hallo2", None)
    if service is not None and service.store is not None:
        try:
            for status, count in (await service.store.counts()).items():
                HALLO2_TASKS.labels(status).set(count)
        except Exception as exc:
            log.warning("metrics: the Hallo2 task store does not answer: %s", exc)
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)
