"""The FastAPI application: the three model slices' routers, one body-size limit (``frontend/limits.py``), and one lifespan that starts
the pooled Triton client and the models' engines, the LAM-A2E session sweeper and the Hallo2 task service
(and stops them in reverse order)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware

from frontend import ops
from frontend.config import Settings
from frontend.documented_ports import DocumentedPorts
from frontend.emotion_llama import router as emotion_llama
from frontend.emotion_llama.engine import EmotionLlamaEngine, TritonEmotionLlamaEngine
from frontend.errors import install_error_handlers
from frontend.hallo2 import router as hallo2
from frontend.hallo2.engine import Hallo2Engine, TritonHallo2Engine
from frontend.hallo2.service import Hallo2Service
from frontend.lam_a2e import router as lam_a2e
from frontend.lam_a2e.engine import LamA2EEngine, Replica, ReplicaSet, TritonLamA2EEngine
from frontend.lam_a2e.sessions import SessionRegistry
from frontend.lam_a2e.tokens import SessionTokens
from frontend.limits import BodyLimit, ConcurrencyLimit, OriginCheck, RateLimit, route_body_limits
from frontend.observability import RequestTracking
from frontend.openapi import install_openapi
from frontend.triton import TritonEngine
from frontend.ui.router import install_ui

log = logging.getLogger(__name__)


def create_app(
    settings: Settings | None = None,
    *,
    lam_a2e_engine: LamA2EEngine | None = None,
    emotion_llama_engine: EmotionLlamaEngine | None = None,
    hallo2_engine: Hallo2Engine | None = None,
) -> FastAPI:
    """The app; an engine given here replaces that model's Triton engine (tests)."""
    settings = settings or Settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        triton = TritonEngine(settings.triton_grpc_url, settings.triton_timeout_s, settings.triton_probe_timeout_s)
        app.state.triton = triton
        key = settings.lam_a2e.session_key
        tokens = SessionTokens(key.get_secret_value().encode() if key is not None else None)
        # LAM-A2E's replicas: one pooled client each (the primary's own when it is one of them)
        clients = {url: triton if url == settings.triton_grpc_url else
                   TritonEngine(url, settings.triton_timeout_s, settings.triton_probe_timeout_s)
                   for url in settings.lam_a2e.replica_urls(settings.triton_grpc_url)}
        replicas = [Replica(tokens.replica_tag(url), lam_a2e_engine or TritonLamA2EEngine(client)) for url, client in clients.items()]
        lam = ReplicaSet(replicas)
        sessions = SessionRegistry(replicas, tokens, settings.lam_a2e.max_sessions, settings.lam_a2e.session_idle_timeout_s,
                                   settings.lam_a2e.max_sessions_per_client,
                                   recheck_after_s=2 * settings.lam_a2e.session_sweep_interval_s)
        app.state.lam_a2e_engine, app.state.sessions = lam, sessions
        app.state.emotion_llama_engine = emotion_llama_engine or TritonEmotionLlamaEngine(triton)
        sweeper = asyncio.create_task(sessions.sweep_forever(settings.lam_a2e.session_sweep_interval_s))
        log.info("front end connected to Triton gRPC at %s", settings.triton_grpc_url)
        if len(replicas) > 1:
            log.info("LAM-A2E streaming sessions over %d Triton replicas", len(replicas))
            if tokens.ephemeral:
                log.warning("EMOSERVE_LAM_A2E__SESSION_KEY is unset: streaming sessions are served only by this front end")
        tasks = Hallo2Service(settings.hallo2, hallo2_engine or TritonHallo2Engine(
            triton, task_timeout_s=settings.hallo2.task_timeout_s, progress_timeout_s=settings.hallo2.progress_timeout_s))
        try:
            await tasks.start()
            app.state.hallo2 = tasks
            yield
        finally:
            app.state.hallo2 = None
            await tasks.stop()
            sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sweeper
            await sessions.close_all()
            for client in {triton, *clients.values()}:
                await client.close()
            app.state.lam_a2e_engine = app.state.emotion_llama_engine = app.state.triton = app.state.sessions = None

    app = FastAPI(
        title="Emotion-AI serving stack",
        description="LAM-A2E (audio → ARKit blendshapes), Emotion-LLaMA (video + prompt → text) and Hallo2 (portrait + audio → "
        "talking-head video) served by NVIDIA Triton Inference Server.",
        version=lam_a2e.SERVICE_VERSION,
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.lam_a2e_engine = app.state.emotion_llama_engine = app.state.hallo2 = app.state.triton = app.state.sessions = None
    install_error_handlers(app)

    app.add_middleware(BodyLimit, limits=route_body_limits(settings, hallo2.UPLOAD_PATH, hallo2.Codes.FILE_TOO_LARGE))
    app.add_middleware(OriginCheck, allowed=settings.cors_origins)
    app.add_middleware(ConcurrencyLimit, per_client=settings.max_requests_per_client)
    if settings.rate_limit:
        app.add_middleware(RateLimit, limit=settings.rate_limit)
    if settings.cors_origins:
        app.add_middleware(CORSMiddleware, allow_origins=settings.cors_origins, allow_methods=["*"], allow_headers=["*"],
                           expose_headers=["X-Request-ID", "Retry-After"])
    if settings.documented_ports:
        app.add_middleware(DocumentedPorts, settings=settings)
    install_openapi(app)
    app.add_middleware(RequestTracking)  # outermost: counts and tags every answer
    app.include_router(ops.router)
    install_ui(app)
    slice_routers = [router for model in (lam_a2e, emotion_llama, hallo2) for router in (model.public, model.protected)]
    for router in slice_routers:
        app.include_router(router)
    app.state.api_routes = [route for router in slice_routers for route in router.routes]  # error bodies before routing
    return app
