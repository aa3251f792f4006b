"""The FastAPI application: settings, the pooled Triton client and the session sweeper live in its lifespan."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from contextlib import asynccontextmanager

import numpy as np
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from frontend.config import Settings
from emoserve.model_catalog import HALLO2_MODELS, HALLO2_PIPELINE_MODEL
from frontend.errors import ServiceUnavailable, install_error_handlers
from frontend.hallo2.service import install_hallo2
from frontend.hallo2.worker import TaskInputs
from frontend.emotion_llama import router as emotion_llama
from frontend.lam_a2e import router as lam_a2e
from frontend.lam_a2e.sessions import SessionRegistry, StreamSession
from frontend.triton import TritonEngine

log = logging.getLogger(__name__)

# multipart framing around an upload: generous, so that only the body limit decides
_MULTIPART_OVERHEAD_BYTES = 64 * 1024


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        engine = TritonEngine(settings.triton_grpc_url, settings.triton_timeout_s)

        async def end_sequence(session: StreamSession) -> None:
            await engine.stream_chunk(session.correlation_id, np.zeros(0, np.float32), start=False, end=True)

        sessions = SessionRegistry(settings.max_sessions, settings.session_idle_timeout_s, end_sequence)
        app.state.engine, app.state.sessions = engine, sessions
        sweeper = asyncio.create_task(sessions.sweep_forever(settings.session_sweep_interval_s))
        log.info("front end connected to Triton gRPC at %s", settings.triton_grpc_url)
        try:
            yield
        finally:
            sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sweeper
            await sessions.close_all()
            await engine.close()
            app.state.engine = None

    app = FastAPI(
        title="Emotion-AI serving stack",
        description="LAM-A2E (audio → ARKit blendshapes), Emotion-LLaMA (video + prompt → text) and Hallo2 (portrait + audio → "
        "talking-head video) served by NVIDIA Triton Inference Server.",
        version=lam_a2e.SERVICE_VERSION,
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.engine = None
    install_error_handlers(app)

    @app.middleware("http")
    async def refuse_oversized_bodies(request: Request, call_next):
        declared = request.headers.get("content-length")
        limit = max(settings.max_upload_bytes, settings.max_chunk_bytes, settings.max_video_bytes, settings.max_hallo2_upload_bytes)
        limit += _MULTIPART_OVERHEAD_BYTES
        if declared and declared.isdigit() and int(declared) > limit:
            return JSONResponse({"detail": f"request body of {declared} bytes exceeds the {limit} byte limit"}, status_code=413)
        return await call_next(request)

    app.include_router(lam_a2e.router)
    app.include_router(lam_a2e.protected)
    app.include_router(emotion_llama.router)

    async def hallo2_runner(inputs: TaskInputs, progress, cancel: asyncio.Event) -> bytes:
        engine = app.state.engine
        if engine is None:
            raise ServiceUnavailable("model not initialised: the Triton client is not connected")
        video, _ = await engine.run_hallo2(
            inputs.image, inputs.audio, steps=inputs.inference_steps, guidance_scale=inputs.guidance_scale,
            use_cache=inputs.use_cache, progress=progress, cancel=cancel,
        )
        return video

    async def hallo2_models() -> list[str]:
        engine = app.state.engine
        return [HALLO2_PIPELINE_MODEL] if engine is not None and await engine.models_ready(HALLO2_MODELS) else []

    install_hallo2(app, settings, hallo2_runner, hallo2_models)
    return app
