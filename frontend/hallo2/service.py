"""Wiring the Hallo2 task service into the FastAPI app: :func:`install_hallo2`.

Use (in ``create_app``, after the app's own middleware is added)::

    from frontend.hallo2.service import install_hallo2

    async def runner(inputs: TaskInputs, progress: ProgressCallback, cancel: asyncio.Event) -> bytes:
        engine = app.state.engine            # the lifespan's TritonEngine (read at call time)
        ...stream the Triton "hallo2" model, await progress(pct, msg), stop when cancel is set...
        return mp4_bytes

    async def models_probe() -> list[str]:
        return ["hallo2"] if await app.state.engine.models_ready(["hallo2"]) else []

    install_hallo2(app, settings, runner, models_probe)          # gpu_probe: optional, see below

What it does:
* includes the router (``GET /health``, ``/api/v1/...``), and a middleware answering 413 ``FILE_TOO_LARGE``
  to a ``POST /api/v1/inference/hallo2`` whose declared body exceeds ``max_hallo2_upload_bytes`` (the app's
  own size middleware must let such bodies through: include ``settings.max_hallo2_upload_bytes`` in its max);
* sets ``app.state.hallo2`` to the :class:`Hallo2Service`;
* with ``manage_lifespan=True`` (default) wraps the app's lifespan: the service starts AFTER the existing
  lifespan's setup (so ``app.state.engine`` exists when tasks run) and stops BEFORE its teardown. With
  ``manage_lifespan=False`` call ``await service.start()`` / ``await service.stop()`` yourself.

Start = open the database (create tables), :meth:`TaskStore.recover_on_startup`, start the
:class:`TaskWorker`; stop = the worker puts its running tasks back in the queue.

``gpu_probe`` (``GpuProbe``): async callable answering :class:`frontend.hallo2.router.GpuInfo`; the default
reads the ``hallo2`` model's Triton config through ``app.state.engine`` (``KIND_GPU`` instance groups and
their ``gpus`` list; names and memory are not in a model config, so they stay null).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from contextlib import asynccontextmanager

import anyio
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from emoserve.model_catalog import HALLO2_PIPELINE_MODEL
from frontend.config import Settings
from frontend.hallo2.tasks import InferenceConfig, TaskStore
from frontend.hallo2.worker import Hallo2Runner, TaskWorker
from frontend.hallo2 import router as hallo2_routes
from frontend.hallo2.router import GpuDevice, GpuInfo

log = logging.getLogger(__name__)

HALLO2_MODEL = HALLO2_PIPELINE_MODEL  # the Triton model the runner calls; health reports "degraded" without it
_MULTIPART_OVERHEAD_BYTES = 64 * 1024

ModelsProbe = Callable[[], Awaitable[list[str]]]
GpuProbe = Callable[[], Awaitable[GpuInfo]]


def triton_gpu_probe(app: FastAPI, model: str = HALLO2_MODEL, timeout_s: float = 5.0) -> GpuProbe:
    """GPU facts from the model's Triton config (as the LAM-A2E router's health does)."""
    cache: dict[str, GpuInfo] = {}

    async def probe() -> GpuInfo:
        if "info" in cache:
            return cache["info"]
        engine = getattr(app.state, "engine", None)
        if engine is None:
            return GpuInfo()
        try:
            config = (await asyncio.wait_for(engine.client.get_model_config(model, as_json=True), timeout_s))["config"]
        except Exception:
            return GpuInfo()  # not loaded yet: ask again next time
        groups = [g for g in config.get("instance_group", []) if g.get("kind", "KIND_CPU") in ("KIND_GPU", "KIND_AUTO")]
        gpus = sorted({int(i) for g in groups for i in g.get("gpus", [])}) or ([0] if groups else [])
        cache["info"] = GpuInfo(available=bool(groups), count=len(gpus), devices=[GpuDevice(index=i) for i in gpus])
        return cache["info"]

    return probe


class Hallo2Service:
    def __init__(self, settings: Settings, runner: Hallo2Runner, models_probe: ModelsProbe, gpu_probe: GpuProbe,
                 model_name: str = HALLO2_MODEL):
        self.settings = settings
        self.runner = runner
        self.models_probe = models_probe
        self.gpu_probe = gpu_probe
        self.model_name = model_name
        self.store: TaskStore | None = None
        self.worker: TaskWorker | None = None
        self.started_at = time.monotonic()

    async def start(self) -> None:
        settings = self.settings
        defaults = InferenceConfig(settings.hallo2_guidance_scale, settings.hallo2_inference_steps, settings.hallo2_enable_cache)
        store = await anyio.to_thread.run_sync(
            lambda: TaskStore(settings.hallo2_database_url, settings.hallo2_data_dir, settings.hallo2_max_attempts, defaults))
        await store.recover_on_startup(0.0 if settings.hallo2_recover_all_on_startup else settings.hallo2_stale_after_s)
        worker = TaskWorker(store, self.runner, settings.max_concurrent_tasks, poll_interval_s=settings.hallo2_poll_interval_s,
                            heartbeat_interval_s=settings.hallo2_heartbeat_interval_s, stale_after_s=settings.hallo2_stale_after_s,
                            cancel_grace_s=settings.hallo2_cancel_grace_s)
        await worker.start()
        self.store, self.worker = store, worker
        self.started_at = time.monotonic()

    async def stop(self) -> None:
        if self.worker is not None:
            await self.worker.stop()
        if self.store is not None:
            self.store.close()
        self.store, self.worker = None, None

    def uptime(self) -> float:
        return time.monotonic() - self.started_at

    async def models_loaded(self) -> list[str]:
        try:
            return list(await self.models_probe())
        except Exception as exc:
            log.warning("hallo2 models probe failed: %s", exc)
            return []

    async def gpu_info(self) -> GpuInfo:
        try:
            info = await self.gpu_probe()
            return info if isinstance(info, GpuInfo) else GpuInfo.model_validate(info)
        except Exception as exc:
            log.warning("hallo2 GPU probe failed: %s", exc)
            return GpuInfo()


def install_hallo2(app: FastAPI, settings: Settings, runner: Hallo2Runner, models_probe: ModelsProbe,
                   gpu_probe: GpuProbe | None = None, *, manage_lifespan: bool = True) -> Hallo2Service:
    """Add the Hallo2 routes and task service to ``app`` (see the module docstring)."""
    service = Hallo2Service(settings, runner, models_probe, gpu_probe or triton_gpu_probe(app))
    app.state.hallo2 = service
    if getattr(app.state, "settings", None) is None:  # require_api_key reads it
        app.state.settings = settings
    app.include_router(hallo2_routes.public)
    app.include_router(hallo2_routes.router)

    limit = settings.max_hallo2_upload_bytes + _MULTIPART_OVERHEAD_BYTES

    @app.middleware("http")
    async def refuse_oversized_hallo2_uploads(request: Request, call_next):
        declared = request.headers.get("content-length")
        if (request.method == "POST" and request.url.path.rstrip("/") == "/api/v1/inference/hallo2"
                and declared and declared.isdigit() and int(declared) > limit):
            return JSONResponse({"detail": f"the uploaded files ({declared} bytes) exceed the {settings.max_hallo2_upload_bytes} byte limit",
                                 "error_code": hallo2_routes.Codes.FILE_TOO_LARGE}, status_code=413)
        return await call_next(request)

    if manage_lifespan:
        inner = app.router.lifespan_context

        @asynccontextmanager
        async def lifespan(app_: FastAPI):
            async with inner(app_) as state:
                await service.start()
                try:
                    yield state
                finally:
                    await service.stop()

        app.router.lifespan_context = lifespan
    return service
