"""Hallo2 (portrait image + speech → talking-head video) as queued tasks (``emo-hallo-api.zh.md``).

Routes: ``GET /health``, and under ``/api/v1``: ``GET /health``, ``POST /inference/hallo2``,
``POST /inference/hallo2/config`` (and ``GET`` of it, an addition), ``GET /tasks``, ``GET /tasks/{id}``,
``GET /tasks/{id}/video``, ``POST /tasks/{id}/logs``, ``DELETE /tasks/{id}``, and ``GET /tasks/{id}/events`` (an
addition: the status as server-sent events, so a client waits without polling).

Errors: ``{"detail", "error_code"}`` (``DELETE`` adds the documented ``"status": "error"``), with the codes
in :class:`Codes`. Statuses: the documented ``queued``/``processing``/``completed``/``failed`` plus
``cancelled`` (a task cancelled by ``DELETE``, queued or running).

Everything here reads ``request.app.state.hallo2`` (a :class:`frontend.hallo2.service.Hallo2Service`), which
the app's lifespan starts (``frontend/main.py``). A body over the upload limit (declared, or counted as it
arrives) is refused by the app's body limit (``frontend/limits.py``) with a 413 ``FILE_TOO_LARGE``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import AsyncIterator
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Annotated, Any, Literal

import anyio
from fastapi import APIRouter, Body, Depends, File, Form, Query, Request, UploadFile
from fastapi.responses import FileResponse, StreamingResponse
from pydantic import ValidationError

from emoserve.audio import AudioDecodeError, AudioTooLong, decode_audio
from emoserve.constants import SAMPLE_RATE
from emoserve.hallo2.defaults import HALLO2
from emoserve.hallo2.video import ImageDecodeError, probe_image
from frontend.deps import read_upload, require_api_key
from frontend.errors import (
    ERROR_CODE_TAG,
    ERROR_STATUS_TAG,
    ApiError,
    BadRequest,
    CodeError,
    NotFound,
    PayloadTooLarge,
    ServiceUnavailable,
    documented_errors,
    error_body,
)
from frontend.hallo2.schemas import (
    ConfigUpdated,
    DetailedHealth,
    Hallo2Config,
    Hallo2ConfigUpdate,
    SimpleHealth,
    TaskCancelled,
    TaskCreated,
    TaskList,
    TaskLogs,
    TaskStatus,
    task_status,
)
from frontend.hallo2.tasks import (
    CANCELLED,
    COMPLETED,
    FAILED,
    OUTPUT_NAME,
    PROCESSING,
    QUEUED,
    Task,
    iso_utc,
)
from frontend.observability import request_id_var
from frontend.sse import KEEPALIVE, event_stream, event_stream_responses, sse_event

if TYPE_CHECKING:
    from frontend.hallo2.service import Hallo2Service


log = logging.getLogger(__name__)

TaskStatusName = Literal[QUEUED, PROCESSING, COMPLETED, FAILED, CANCELLED]


class Codes:
    INVALID_IMAGE = "INVALID_IMAGE"
    INVALID_AUDIO = "INVALID_AUDIO"
    FILE_TOO_LARGE = "FILE_TOO_LARGE"
    TASK_NOT_FOUND = "TASK_NOT_FOUND"
    TASK_NOT_FINISHED = "TASK_NOT_FINISHED"
    VIDEO_NOT_FOUND = "VIDEO_NOT_FOUND"
    TASK_NOT_CANCELLABLE = "TASK_NOT_CANCELLABLE"
    INVALID_CONFIG = "INVALID_CONFIG"
    SERVICE_NOT_READY = "SERVICE_NOT_READY"
    SUBMIT_FAILED = "SUBMIT_FAILED"
    QUEUE_FULL = "QUEUE_FULL"


API_PREFIX = "/api/v1"
_UPLOAD_ROUTE = "/inference/hallo2"
UPLOAD_PATH = API_PREFIX + _UPLOAD_ROUTE

public = APIRouter(tags=["Hallo2", ERROR_CODE_TAG], responses=documented_errors(CodeError))
protected = APIRouter(prefix=API_PREFIX, tags=["Hallo2", ERROR_CODE_TAG], dependencies=[Depends(require_api_key)],
                      responses=documented_errors(CodeError))


async def get_service(request: Request) -> Hallo2Service:
    service = getattr(request.app.state, "hallo2", None)
    if service is None or service.store is None:
        raise ServiceUnavailable("the Hallo2 task service is not running", error_code=Codes.SERVICE_NOT_READY)
    return service


ServiceDep = Annotated[Any, Depends(get_service)]  # a Hallo2Service


# -- validation by content ----------------------------------------------------------------------------

def image_extension(data: bytes) -> str:
    """``jpg`` or ``png`` by content; its size read from the header (the model's pixel limit) before a real decode."""
    if not data:
        raise BadRequest("Invalid image file format: the image file is empty", error_code=Codes.INVALID_IMAGE)
    try:
        info = probe_image(data)
    except ImageDecodeError as exc:
        raise BadRequest(f"Invalid image file format: {exc}", error_code=Codes.INVALID_IMAGE) from None
    return "jpg" if info.format == "jpeg" else "png"


def audio_extension(data: bytes) -> str:
    if data[:4] == b"RIFF" and data[8:12] == b"WAVE":
        return "wav"
    if data[:4] == b"OggS":
        return "ogg"
    if data[:4] == b"fLaC":
        return "flac"
    if data[4:8] == b"ftyp":
        return "m4a"
    if data[:3] == b"ID3" or (len(data) > 1 and data[0] == 0xFF and data[1] & 0xE0 == 0xE0):
        return "mp3"
    return "audio"


def checked_audio(data: bytes) -> tuple[str, float]:
    """(extension, seconds) of audio that really decodes (WAV/MP3/OGG/M4A, and what else FFmpeg reads)."""
    if not data:
        raise BadRequest("Invalid audio file format: the audio file is empty", error_code=Codes.INVALID_AUDIO)
    try:
        samples = decode_audio(data, SAMPLE_RATE, max_seconds=HALLO2.max_audio_seconds)
    except AudioTooLong:  # the model's own limit, refused at submission rather than minutes later
        raise BadRequest(f"The audio is longer than the {HALLO2.max_audio_seconds:g} s limit", error_code=Codes.INVALID_AUDIO) from None
    except AudioDecodeError as exc:
        raise BadRequest(f"Invalid audio file format: {exc}", error_code=Codes.INVALID_AUDIO) from None
    if samples.size == 0:
        raise BadRequest("Invalid audio file format: the audio holds no samples", error_code=Codes.INVALID_AUDIO)
    return audio_extension(data), samples.size / SAMPLE_RATE


def known_task_id(task_id: str) -> str:
    try:
        return str(uuid.UUID(task_id))
    except ValueError:
        raise NotFound(f"Task {task_id} not found", error_code=Codes.TASK_NOT_FOUND) from None


async def existing_task(service: Hallo2Service, task_id: str) -> Task:
    task = await service.store.get(known_task_id(task_id))
    if task is None:
        raise NotFound(f"Task {task_id} not found", error_code=Codes.TASK_NOT_FOUND)
    return task


# -- health -------------------------------------------------------------------------------------------

@public.get("/health", response_model=SimpleHealth, summary="Simple health check")
async def simple_health(service: ServiceDep) -> SimpleHealth:
    gpu, models = await asyncio.gather(service.gpu_info(), service.models_loaded())
    status = "healthy" if service.model_name in models else "unhealthy"
    return SimpleHealth(status=status, gpu_available=gpu.available, gpu_count=gpu.count,
                        gpu_name=gpu.devices[0].name if gpu.devices else None)


@public.get("/api/v1/health", response_model=DetailedHealth, summary="Detailed health check")
async def detailed_health(service: ServiceDep) -> DetailedHealth:
    models = await service.models_loaded()
    try:
        counts = await service.store.counts()
        tasks = {"queued": counts[QUEUED], "running": counts[PROCESSING], "completed": counts[COMPLETED],
                 "failed": counts[FAILED], "cancelled": counts[CANCELLED]}
    except Exception:
        tasks = None
    status = "unhealthy" if tasks is None else ("healthy" if service.model_name in models else "degraded")
    return DetailedHealth(status=status, timestamp=iso_utc(datetime.now(timezone.utc)), uptime=round(service.uptime(), 3),
                          models_loaded=models, gpu=await service.gpu_info(), tasks=tasks)


# -- inference ----------------------------------------------------------------------------------------

@protected.post(_UPLOAD_ROUTE, response_model=TaskCreated, summary="Create an inference task")
async def create_task(
    service: ServiceDep,
    image_file: Annotated[UploadFile, File(description="source portrait (JPG/PNG)")],
    audio_file: Annotated[UploadFile, File(description="driving audio (WAV/MP3/OGG/M4A)")],
    use_cache: Annotated[bool, Form(description="use cached preprocessing (face embedding, audio features)")] = True,
) -> TaskCreated:
    waiting = (await service.store.counts())[QUEUED]
    if waiting >= service.settings.max_queued_tasks:
        raise ServiceUnavailable(f"the Hallo2 queue is full ({waiting} tasks waiting); retry later", error_code=Codes.QUEUE_FULL)
    limit = service.settings.max_upload_bytes
    too_large = PayloadTooLarge(f"the uploaded files are larger than the {limit} byte limit", error_code=Codes.FILE_TOO_LARGE)
    # one budget for both files; emptiness is judged by content below, with the file's own error code
    image = await read_upload(image_file, limit, "image_file", allow_empty=True, too_large=too_large)
    audio = await read_upload(audio_file, limit - len(image), "audio_file", allow_empty=True, too_large=too_large)
    image_ext = await anyio.to_thread.run_sync(image_extension, image)
    audio_ext, seconds = await anyio.to_thread.run_sync(checked_audio, audio)
    config = await service.store.get_config()
    try:
        task = await service.store.create(image, image_ext, audio, audio_ext, use_cache=use_cache and config.enable_cache,
                                          guidance_scale=config.guidance_scale, inference_steps=config.inference_steps)
        await service.store.append_log(task.task_id, f"Inputs: {image_ext.upper()} image, {audio_ext} audio of {seconds:.2f} s"
                                       + ("" if config.enable_cache or not use_cache else "; caching is disabled by the configuration"))
    except Exception:  # the database or the task folder failed: the log has the details, the answer none of them
        log.exception("submitting a hallo2 task failed")
        raise ApiError(f"Failed to submit task (request id {request_id_var.get()})", error_code=Codes.SUBMIT_FAILED) from None
    service.wake()
    return TaskCreated(task_id=task.task_id)


@protected.get("/inference/hallo2/config", response_model=Hallo2Config, summary="Current inference parameters (addition)")
async def get_config(service: ServiceDep) -> Hallo2Config:
    config = await service.store.get_config()
    return Hallo2Config(**config.__dict__)


@protected.post("/inference/hallo2/config", response_model=ConfigUpdated, summary="Set inference parameters for new tasks")
async def set_config(
    service: ServiceDep,
    # validated below (INVALID_CONFIG); the schema is the update model's, with at least one key
    body: Annotated[dict[str, Any], Body(description="guidance_scale, inference_steps, enable_cache (at least one)",
                                         json_schema_extra={**Hallo2ConfigUpdate.model_json_schema(), "minProperties": 1})],
) -> ConfigUpdated:
    try:
        update = Hallo2ConfigUpdate.model_validate(body)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors())
        raise BadRequest(f"invalid configuration: {problems}", error_code=Codes.INVALID_CONFIG) from None
    changes = update.model_dump(exclude_none=True)
    if not changes:
        raise BadRequest("invalid configuration: give at least one of guidance_scale, inference_steps, enable_cache",
                         error_code=Codes.INVALID_CONFIG)
    config = await service.store.set_config(**changes)
    return ConfigUpdated(config=Hallo2Config(**config.__dict__))


# -- tasks --------------------------------------------------------------------------------------------

@protected.get("/tasks", response_model=TaskList, summary="All tasks")
async def list_tasks(
    service: ServiceDep,
    status: Annotated[TaskStatusName, Query(description="only tasks with this status (addition)")] = None,
    limit: Annotated[int, Query(ge=1, le=HALLO2.max_task_list_page, description="at most this many tasks, oldest first (addition)")]
    = HALLO2.task_list_page,
    offset: Annotated[int, Query(ge=0, le=2**31, description="skip this many tasks (addition)")] = 0,
) -> TaskList:
    tasks = await service.store.list(status=status, limit=limit, offset=offset)
    counts = await service.store.counts()
    total = counts[status] if status is not None else sum(counts.values())
    return TaskList(tasks={task.task_id: task_status(task) for task in tasks}, count=len(tasks), total=total)


@protected.get("/tasks/{task_id}", response_model=TaskStatus, summary="Task status")
async def get_task(task_id: str, service: ServiceDep) -> TaskStatus:
    return task_status(await existing_task(service, task_id))


@protected.get("/tasks/{task_id}/events", summary="Follow a task: its status as server-sent events (addition)",
               response_class=StreamingResponse, responses=event_stream_responses(
                   "a `status` event (the GET /api/v1/tasks/{task_id} body) now and after each change; the stream ends "
                   "after the completed, failed or cancelled one, or with an `error` event; comment lines keep it alive"))
async def follow_task(task_id: str, request: Request, service: ServiceDep) -> StreamingResponse:
    task = await existing_task(service, task_id)  # an unknown task is a 404 before the stream starts
    recheck_s, keepalive_s = service.settings.events_recheck_s, service.settings.events_keepalive_s

    async def events() -> AsyncIterator[bytes]:
        last_sent = time.monotonic()
        try:
            async with contextlib.aclosing(service.store.watch(task.task_id, recheck_s)) as snapshots:
                async for snapshot in snapshots:
                    if snapshot is not None:
                        yield sse_event("status", task_status(snapshot).model_dump_json())
                    elif time.monotonic() - last_sent >= keepalive_s:
                        yield KEEPALIVE
                    else:
                        continue
                    last_sent = time.monotonic()
        except ApiError as exc:  # the task database stopped answering
            yield sse_event("error", error_body(request, exc.status_code, exc.detail, exc.details, exc.error_code))

    return event_stream(events())


@protected.get("/tasks/{task_id}/video", summary="Download the generated video",
            response_class=FileResponse, responses={200: {"content": {"video/mp4": {}}}})
async def get_video(task_id: str, service: ServiceDep) -> FileResponse:
    task = await existing_task(service, task_id)
    if task.status != COMPLETED:
        raise BadRequest(f"Task {task.task_id} is not completed (status: {task.status})", error_code=Codes.TASK_NOT_FINISHED)
    path = service.store.files.local_path(task.task_id, OUTPUT_NAME)
    if path is None:
        raise NotFound(f"the video of task {task.task_id} does not exist", error_code=Codes.VIDEO_NOT_FOUND)
    return FileResponse(path, media_type="video/mp4", filename=f"{task.task_id}.mp4")


@protected.post("/tasks/{task_id}/logs", response_model=TaskLogs, summary="Task logs")
async def get_logs(task_id: str, service: ServiceDep) -> TaskLogs:
    task = await existing_task(service, task_id)
    return TaskLogs(task_id=task.task_id, logs=task.logs or "")


@protected.delete("/tasks/{task_id}", response_model=TaskCancelled, summary="Cancel a queued or running task",
               tags=[ERROR_STATUS_TAG])
async def cancel_task(task_id: str, service: ServiceDep) -> TaskCancelled:
    cancelled, task = await service.store.cancel(known_task_id(task_id))
    if task is None:
        raise NotFound(f"Task {task_id} not found", error_code=Codes.TASK_NOT_FOUND)
    if not cancelled:
        raise BadRequest(f"Task {task.task_id} is already {task.status} and cannot be cancelled", error_code=Codes.TASK_NOT_CANCELLABLE)
    service.notify_cancelled(task.task_id)
    return TaskCancelled(task_id=task.task_id)
