"""The Hallo2 task service: the task store (database + files) and, where this process runs one, the task worker,
over a :class:`Hallo2Engine`.

The app's one lifespan (``frontend/main.py``) builds it after the Triton client, :meth:`Hallo2Service.start`\\ s
it (open the database and migrate it, :meth:`TaskStore.recover_on_startup`, start the :class:`TaskWorker` unless
``embedded_worker`` is false) and puts it in ``app.state.hallo2`` for the routes; at shutdown
:meth:`Hallo2Service.stop` runs first (the worker puts its running tasks back in the queue), before the Triton
client closes. ``python -m frontend.hallo2 worker`` runs the same service with a worker and no routes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

import anyio

from emoserve.model_catalog import HALLO2_PIPELINE_MODEL
from frontend.config import Hallo2Settings
from frontend.hallo2.engine import Hallo2Engine
from frontend.hallo2.schemas import GpuInfo
from frontend.hallo2.tasks import InferenceConfig, TaskStore
from frontend.hallo2.worker import RetryPolicy, TaskWorker

log = logging.getLogger(__name__)


class Hallo2Service:
    def __init__(self, settings: Hallo2Settings, engine: Hallo2Engine, model_name: str = HALLO2_PIPELINE_MODEL):
        self.settings = settings
        self.engine = engine
        self.model_name = model_name  # health reports "degraded" without it
        self.store: TaskStore | None = None
        self.worker: TaskWorker | None = None
        self._retention: asyncio.Task | None = None
        self.started_at = time.monotonic()

    async def start(self, *, standalone: bool = False) -> None:
        """Open the store; run a worker when this is the worker process (``standalone``) or the front end embeds one."""
        settings = self.settings
        defaults = InferenceConfig(settings.guidance_scale, settings.inference_steps, settings.enable_cache)
        store = await anyio.to_thread.run_sync(
            lambda: TaskStore(settings.database_url, settings.data_dir, settings.max_attempts, defaults))
        self.store = store
        if standalone or settings.embedded_worker:
            self.worker = await self._start_worker(store, standalone)
        self.started_at = time.monotonic()
        self._retention = asyncio.create_task(self._expire_forever(), name="hallo2-retention")

    async def _start_worker(self, store: TaskStore, standalone: bool) -> TaskWorker:
        settings = self.settings
        await store.recover_on_startup(0.0 if settings.recovers_all(standalone) else settings.stale_after_s)
        worker = TaskWorker(store, self.engine.run, settings.max_concurrent_tasks, poll_interval_s=settings.poll_interval_s,
                            heartbeat_interval_s=settings.heartbeat_interval_s, stale_after_s=settings.stale_after_s,
                            cancel_grace_s=settings.cancel_grace_s, progress_interval_s=settings.progress_interval_s,
                            retry=RetryPolicy(settings.unavailable_retries, settings.retry_backoff_s, settings.max_retry_backoff_s))
        await worker.start()
        return worker

    def wake(self) -> None:
        """A task was queued: the embedded worker looks now (separate workers find it at their next poll)."""
        if self.worker is not None:
            self.worker.wake()

    def notify_cancelled(self, task_id: str) -> None:
        """Stop the task now if it runs in this process; a worker elsewhere sees the row at its next heartbeat."""
        if self.worker is not None:
            self.worker.notify_cancelled(task_id)

    async def _expire_forever(self) -> None:
        settings = self.settings
        while True:
            try:
                expired = await self.store.expire(settings.retention_s, settings.max_storage_bytes)
                if expired:
                    log.info("hallo2 retention: deleted %d finished tasks", len(expired))
            except Exception:  # the database is down: the next sweep tries again
                log.exception("hallo2 retention sweep failed")
            await asyncio.sleep(settings.retention_sweep_interval_s)

    async def stop(self) -> None:
        if self._retention is not None:
            self._retention.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._retention
            self._retention = None
        if self.worker is not None:
            await self.worker.stop()
        if self.store is not None:
            self.store.close()
        self.store, self.worker = None, None

    def uptime(self) -> float:
        return time.monotonic() - self.started_at

    async def models_loaded(self) -> list[str]:
        try:
            return list(await self.engine.models_loaded())
        except Exception as exc:
            log.warning("hallo2 models probe failed: %s", exc)
            return []

    async def gpu_info(self) -> GpuInfo:
        try:
            info = await self.engine.gpu_info()
            return info if isinstance(info, GpuInfo) else GpuInfo.model_validate(info)
        except Exception as exc:
            log.warning("hallo2 GPU probe failed: %s", exc)
            return GpuInfo()

