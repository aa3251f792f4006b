"""The Hallo2 task worker: asyncio tasks in the front end's event loop that take queued tasks from the
database (up to ``max_concurrent_tasks`` at once) and hand each to an injected runner.

The runner is the only piece that talks to the model (the app passes
:meth:`frontend.hallo2.engine.TritonHallo2Engine.run`, which streams the Triton ``hallo2`` pipeline); here it
is an async callable::

    async def runner(inputs: TaskInputs, progress: ProgressCallback, cancel: asyncio.Event) -> Hallo2Video:
        await progress(10, "Preprocessing image...")
        ...
        if cancel.is_set(): raise asyncio.CancelledError  # or just return / raise anything: the task is cancelled already
        return Hallo2Video(mp4_bytes, result_metadata)  # the pipeline's RESULT_METADATA: frames, fps, width, height ...

Cancellation (``DELETE /api/v1/tasks/{id}`` on a running task): the store marks the row ``cancelled`` first,
then the worker that runs it sets the task's ``cancel`` event — directly when the DELETE reached the same
process, otherwise at its next heartbeat or progress write, which the database refuses because the row is no
longer this worker's. The runner should stop its Triton work and return or raise; after
``cancel_grace_s`` the worker cancels the runner's asyncio task anyway (cancelling the gRPC call). Whatever
the runner returns afterwards is discarded: the task stays ``cancelled``.

Shutdown (:meth:`TaskWorker.stop`): running tasks are interrupted and put back to ``queued`` (without
counting an attempt), so the next start — this process or another replica — runs them again from the start.
A process that dies without stopping leaves them ``processing``; :meth:`TaskStore.recover_on_startup` and
the periodic stale-heartbeat sweep re-queue them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import socket
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import anyio

from emoserve.hallo2.defaults import HALLO2
from frontend.errors import ServiceUnavailable
from frontend.hallo2.tasks import Task, TaskStore, TaskStoreUnavailable
from frontend.observability import HALLO2_OUTCOMES

log = logging.getLogger(__name__)

_DIGITS = re.compile(r"\d+")


@dataclass
class TaskInputs:
    """What a runner gets for one task (the bytes exactly as uploaded, validated by content)."""

    task_id: str
    image: bytes
    audio: bytes
    use_cache: bool
    guidance_scale: float
    inference_steps: int
    image_path: str = ""
    audio_path: str = ""


@dataclass
class Hallo2Video:
    """What a runner returns: the MP4, and the pipeline's ``RESULT_METADATA`` (frames, fps, width, height ...)."""

    video: bytes
    metadata: dict = field(default_factory=dict)


# progress(percent 0-100, message): the message becomes the task's status_message and a log line
ProgressCallback = Callable[[int, str], Awaitable[None]]
Hallo2Runner = Callable[[TaskInputs, ProgressCallback, asyncio.Event], Awaitable[Hallo2Video]]


def describe_video(metadata: dict) -> dict:
    """frames / fps / duration / size of the video (for the task's ``result``) from the pipeline's metadata;
    {} if it lacks them. ``duration`` is the video track's, ``frames / fps``."""
    try:
        frames, fps = int(metadata["frames"]), float(metadata["fps"])
        return {"frames": frames, "fps": fps, "duration": round(frames / fps, 3),
                "width": int(metadata["width"]), "height": int(metadata["height"])}
    except (KeyError, TypeError, ValueError, ZeroDivisionError) as exc:  # the video is served as it is; the description is a courtesy
        log.warning("the hallo2 result metadata does not describe the video (%r): %s", exc, metadata)
        return {}


@dataclass(frozen=True)
class RetryPolicy:
    """A runner that raises :class:`ServiceUnavailable` (Triton restarting, a model reloading, a deadline) is run
    again from the start after ``backoff_s``, doubling up to ``max_backoff_s``, at most ``retries`` times."""

    retries: int = HALLO2.unavailable_retries
    backoff_s: float = HALLO2.retry_backoff_s
    max_backoff_s: float = HALLO2.max_retry_backoff_s

    def wait_before(self, retry: int) -> float:
        return min(self.backoff_s * 2 ** (retry - 1), self.max_backoff_s)


class _Running:
    def __init__(self, task: Task):
        self.task = task
        self.cancel = asyncio.Event()
        self.job: asyncio.Task | None = None
        self.shutting_down = False


class TaskWorker:
    def __init__(
        self,
        store: TaskStore,
        runner: Hallo2Runner,
        max_concurrent_tasks: int = HALLO2.max_concurrent_tasks,
        *,
        poll_interval_s: float = HALLO2.poll_interval_s,
        heartbeat_interval_s: float = HALLO2.heartbeat_interval_s,
        stale_after_s: float = HALLO2.stale_after_s,
        cancel_grace_s: float = HALLO2.cancel_grace_s,
        retry: RetryPolicy = RetryPolicy(),
        progress_interval_s: float = HALLO2.progress_interval_s,
        worker_id: str | None = None,
    ):
        if max_concurrent_tasks < 1:
            raise ValueError("max_concurrent_tasks must be at least 1")
        self.store = store
        self.runner = runner
        self.max_concurrent_tasks = max_concurrent_tasks
        self.poll_interval_s = poll_interval_s
        self.heartbeat_interval_s = heartbeat_interval_s
        self.stale_after_s = stale_after_s
        self.cancel_grace_s = cancel_grace_s
        self.retry = retry
        self.progress_interval_s = progress_interval_s
        self.worker_id = worker_id or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.running: dict[str, _Running] = {}
        self.peak_running = 0
        self._wake = asyncio.Event()
        self._stopping = False
        self._loops: list[asyncio.Task] = []
        self.loop_at = time.monotonic()

    # -- lifecycle ---------------------------------------------------------------------------------

    async def start(self) -> None:
        self._stopping = False
        self._loops = [asyncio.create_task(self._claim_loop(), name="hallo2-claim"),
                       asyncio.create_task(self._heartbeat_loop(), name="hallo2-heartbeat")]
        log.info("hallo2 worker %s started (max %d concurrent tasks)", self.worker_id, self.max_concurrent_tasks)

    async def stop(self) -> None:
        """Stop claiming; interrupt running tasks and put them back in the queue."""
        self._stopping = True
        self._wake.set()
        for loop in self._loops:
            loop.cancel()
        for loop in self._loops:
            with contextlib.suppress(asyncio.CancelledError):
                await loop
        self._loops = []
        running = list(self.running.values())
        for entry in running:
            entry.shutting_down = True
            entry.cancel.set()
            if entry.job is not None:
                entry.job.cancel()
        for entry in running:
            if entry.job is not None:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await entry.job
        # a claim that was in flight when the loops were cancelled, or a re-queue that failed: none stays ours
        with contextlib.suppress(Exception):
            await self.store.requeue_worker(self.worker_id, "the server shut down while processing it")
        log.info("hallo2 worker %s stopped", self.worker_id)

    def wake(self) -> None:
        """A task was queued: look for it now rather than at the next poll."""
        self._wake.set()

    def notify_cancelled(self, task_id: str) -> bool:
        """The task was cancelled in the store: stop it if it runs here. True when it did."""
        entry = self.running.get(task_id)
        if entry is None:
            return False
        entry.cancel.set()
        return True

    # -- loops -------------------------------------------------------------------------------------

    def alive(self, within_s: float) -> bool:
        """The claim loop went round within ``within_s`` (a liveness probe: a wedged worker is restarted)."""
        return bool(self._loops) and not any(loop.done() for loop in self._loops) and time.monotonic() - self.loop_at < within_s

    async def _claim_loop(self) -> None:
        while not self._stopping:
            self.loop_at = time.monotonic()
            claimed = False
            if len(self.running) < self.max_concurrent_tasks:
                try:
                    task = await self.store.claim_next(self.worker_id)
                except Exception:
                    log.exception("hallo2 worker: claiming a task failed")
                    task = None
                if task is not None and self._stopping:
                    await self.store.requeue(task.task_id, self.worker_id, "the server is shutting down")
                    return
                if task is not None:
                    claimed = True
                    entry = _Running(task)
                    self.running[task.task_id] = entry
                    self.peak_running = max(self.peak_running, len(self.running))
                    entry.job = asyncio.create_task(self._execute(entry), name=f"hallo2-task-{task.task_id}")
            if claimed:
                continue  # maybe more room and more work
            self._wake.clear()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=self.poll_interval_s)

    async def _heartbeat_loop(self) -> None:
        while not self._stopping:
            await asyncio.sleep(self.heartbeat_interval_s)
            try:
                if self.running:
                    for task_id in await self.store.heartbeat(list(self.running), self.worker_id):
                        self.notify_cancelled(task_id)  # cancelled elsewhere (another replica's DELETE) or taken away
                await self.store.requeue_stale(self.stale_after_s, exclude_worker=self.worker_id)
            except Exception:
                log.exception("hallo2 worker: heartbeat failed")

    # -- one task ----------------------------------------------------------------------------------

    async def _execute(self, entry: _Running) -> None:
        task = entry.task
        try:
            await self._run_task(entry)
        except Exception:  # bookkeeping itself failed (database down): the stale sweep retries the task later
            log.exception("hallo2 task %s: bookkeeping failed", task.task_id)
        finally:
            self.running.pop(task.task_id, None)
            self._wake.set()  # a slot is free

    async def _run_task(self, entry: _Running) -> None:
        task, store = entry.task, self.store
        try:
            image, audio = await anyio.to_thread.run_sync(lambda: (store.read_input(task, "image"), store.read_input(task, "audio")))
        except OSError as exc:
            log.error("hallo2 task %s: its input files cannot be read: %s", task.task_id, exc)
            await self._fail(task, "the task's input files cannot be read")
            return
        inputs = TaskInputs(task.task_id, image, audio, task.use_cache, task.guidance_scale, task.inference_steps,
                            task.image_path, task.audio_path)

        last_write, seen_shapes, last_percent = -float("inf"), set(), -1.0

        async def progress(percent: int, message: str) -> None:
            nonlocal last_write, last_percent
            if entry.cancel.is_set():
                return
            # coalesced: a row update and a log line per denoising step and clip ("clip 1/7 step 3/40", "clip 1/7
            # decoded") would grow the task's logs with its length, and each costs the front end a write and a
            # status event; so within progress_interval_s of the last write only the first message of each kind
            # ("Preprocessing image...", the first "clip # step #") is written, and the end (100 %) and a start
            # again (a retry's 0 %) always are
            shape = _DIGITS.sub("#", message)
            advancing = last_percent < percent < 100
            if shape in seen_shapes and advancing and time.monotonic() - last_write < self.progress_interval_s:
                return
            seen_shapes.add(shape)
            last_write, last_percent = time.monotonic(), percent
            try:
                if not await store.update_progress(task.task_id, self.worker_id, percent, message):
                    entry.cancel.set()  # no longer ours: cancelled (or re-queued) in the database
            except TaskStoreUnavailable:  # progress is a courtesy; the lease decides whether the task stays ours
                pass

        started = time.perf_counter()
        runner_job = asyncio.create_task(self._run_with_retries(inputs, progress, entry.cancel))
        cancel_wait = asyncio.create_task(entry.cancel.wait())
        try:
            await asyncio.wait({runner_job, cancel_wait}, return_when=asyncio.FIRST_COMPLETED)
            if entry.cancel.is_set() and not runner_job.done():
                # give the runner the chance to stop its Triton work itself, then cancel it
                await asyncio.wait({runner_job}, timeout=0 if entry.shutting_down else self.cancel_grace_s)
                if not runner_job.done():
                    runner_job.cancel()
                with contextlib.suppress(BaseException):
                    await runner_job
                await self._interrupted(entry)
                return
        except asyncio.CancelledError:  # stop() cancelled this job
            runner_job.cancel()
            with contextlib.suppress(BaseException):
                await runner_job
            await self._interrupted(entry, shutting_down=True)
            raise
        finally:
            cancel_wait.cancel()

        elapsed = time.perf_counter() - started
        if entry.cancel.is_set():  # cancelled as the runner finished: the result is discarded
            await self._interrupted(entry)
            return
        try:
            output = runner_job.result()
        except asyncio.CancelledError:
            await self._fail(task, "the inference was cancelled by the server")
            return
        except Exception as exc:
            detail = getattr(exc, "detail", None) or str(exc) or type(exc).__name__
            log.warning("hallo2 task %s failed: %s", task.task_id, detail)
            await self._fail(task, f"inference failed: {detail}")
            return
        if not isinstance(output, Hallo2Video) or not isinstance(output.video, (bytes, bytearray)) or not output.video:
            await self._fail(task, "inference failed: the model produced no video")
            return
        result = describe_video(output.metadata)
        result["processing_time"] = round(elapsed, 3)
        if not await store.complete(task.task_id, self.worker_id, bytes(output.video), result):
            log.info("hallo2 task %s finished after it was cancelled; its video is discarded", task.task_id)
            return
        HALLO2_OUTCOMES.labels("completed").inc()

    async def _fail(self, task: Task, message: str) -> None:
        if await self.store.fail(task.task_id, self.worker_id, message):
            HALLO2_OUTCOMES.labels("failed").inc()

    async def _run_with_retries(self, inputs: TaskInputs, progress: ProgressCallback, cancel: asyncio.Event) -> Hallo2Video:
        retry = 0
        while True:
            try:
                return await self.runner(inputs, progress, cancel)
            except ServiceUnavailable as exc:
                retry += 1
                if retry > self.retry.retries or cancel.is_set():
                    raise
                wait = self.retry.wait_before(retry)
                log.warning("hallo2 task %s: %s; running it again in %.0fs (retry %d of %d)", inputs.task_id, exc.detail, wait,
                            retry, self.retry.retries)
                HALLO2_OUTCOMES.labels("retried").inc()
                await progress(0, f"Waiting for the inference server (retry {retry} of {self.retry.retries} in {wait:.0f}s)")
                await asyncio.sleep(wait)

    async def _interrupted(self, entry: _Running, shutting_down: bool = False) -> None:
        task_id = entry.task.task_id
        if shutting_down or entry.shutting_down:
            await self.store.requeue(task_id, self.worker_id, "the server shut down while processing it")
            HALLO2_OUTCOMES.labels("requeued").inc()
            return
        HALLO2_OUTCOMES.labels("cancelled").inc()
        await self.store.append_log(task_id, "Processing stopped (task cancelled)")
