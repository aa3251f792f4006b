"""Emotion-LLaMA: the Gradio-style ``/api/predict/`` and FastAPI-style ``/process_video`` of its API guide,
plus an upload endpoint and a server-sent-events variant of the same job.

Errors follow the API overview: ``{"error", "code", "details"}`` with 400 (bad input), 404 (video file not
found), 413 (too large), 500 (inference failed), 503 (model not loaded / Triton unreachable).
"""

from __future__ import annotations

import os
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Annotated

import anyio
from fastapi import APIRouter, Depends, File, Form, Request, UploadFile
from fastapi.responses import StreamingResponse

from emoserve.emotion_llama.defaults import EMOTION_LLAMA
from emoserve.emotion_llama.prompts import validate_question
from frontend.config import MEDIA_ROOTS_ENV, Settings
from frontend.deps import SettingsDep, read_upload, require_api_key
from frontend.emotion_llama.engine import EmotionLlamaEngine, EngineDep, GenerationEvent
from frontend.emotion_llama.schemas import SEED_LIMIT, PredictRequest, PredictResponse, Sampling, VideoAnswer, VideoQuestion
from frontend.errors import (
    ERROR_FIELD_TAG,
    ApiError,
    BadRequest,
    FieldsError,
    NotFound,
    PayloadTooLarge,
    documented_errors,
    error_body,
)
from frontend.sse import event_stream, event_stream_responses, sse_event

# every Emotion-LLaMA route needs the API key: ``public`` is empty, kept for the same shape as the other slices
public = APIRouter(tags=["Emotion-LLaMA", ERROR_FIELD_TAG], responses=documented_errors(FieldsError))
protected = APIRouter(tags=["Emotion-LLaMA", ERROR_FIELD_TAG], dependencies=[Depends(require_api_key)],
                      responses=documented_errors(FieldsError))




# paths a file system can take (Linux: NAME_MAX 255 per component, PATH_MAX 4096)
_MAX_PATH_CHARS = 4096
_MAX_NAME_BYTES = 255


def resolve_media_path(raw: str, roots: list[Path]) -> Path:
    """The real path of a server-side video, refused unless it is a regular file inside a media root.

    A relative path is relative to the first media root (as the documents' ``video1.mp4`` examples expect), not to
    the server's working directory. Answers name the client's own path, never the server's roots or what the path
    resolved to; outside the roots is a 400 (the documents list no 403) that says how the operator opens a folder."""
    if not raw:
        raise BadRequest("video_path is empty")
    if "\x00" in raw or len(raw) > _MAX_PATH_CHARS or any(len(part.encode()) > _MAX_NAME_BYTES for part in raw.split("/")):
        raise BadRequest("video_path is not a valid path (a NUL byte, or a name or path longer than the file system allows)")
    candidate = Path(raw)
    if not candidate.is_absolute() and roots:
        candidate = roots[0] / candidate
    real = Path(os.path.realpath(candidate))  # resolves "..", and symlinks, before the root check
    allowed = [Path(os.path.realpath(root)) for root in roots]
    if not any(real == root or root in real.parents for root in allowed):
        raise BadRequest("video_path is outside the configured media roots",
                         details=f"{raw}: the server reads videos only inside its media roots; relative paths are "
                                 f"relative to the first one. To allow a folder, start the stack with --media-root DIR "
                                 f"(repeatable) or set {MEDIA_ROOTS_ENV} (a JSON list)")
    try:
        if not real.exists():
            raise NotFound("Video file not found", details=f"{raw} does not exist")
        if not real.is_file():
            raise BadRequest("video_path is not a regular file", details=raw)
    except OSError:
        raise BadRequest("video_path cannot be read", details=raw) from None
    return real


async def read_media(raw: str, settings: Settings) -> bytes:
    path = resolve_media_path(raw, settings.emotion_llama.media_roots)
    size = path.stat().st_size
    if size > settings.emotion_llama.max_video_bytes:
        raise PayloadTooLarge(f"video is {size} bytes; the limit is {settings.emotion_llama.max_video_bytes}", details=raw)
    if size == 0:
        raise BadRequest("the video file is empty", details=raw)
    return await anyio.to_thread.run_sync(path.read_bytes)


def naming_the_video(exc: BadRequest, where: str) -> BadRequest:
    """The pipeline says what is wrong with the video ("invalid video: ..."); the route adds which one it was."""
    exc.details = exc.details or where
    return exc


def checked_question(question: str, settings: Settings) -> str:
    try:
        validate_question(question, settings.emotion_llama.max_prompt_chars)
    except ValueError as exc:
        raise BadRequest(str(exc)) from None
    return question


async def answer(engine: EmotionLlamaEngine, video: bytes, where: str, question: str, sampling: Sampling,
                 settings: Settings) -> GenerationEvent:
    """The final event of the pipeline's stream (the unary endpoints wait for the whole answer). The video is sent
    unopened: the pipeline decodes it once, and one it cannot decode is its 400."""
    try:
        return await engine.generate(video, question, sampling.as_inputs(), settings.emotion_llama.generation_timeout_s)
    except BadRequest as exc:
        raise naming_the_video(exc, where) from None


def video_answer(event: GenerationEvent, duration: float) -> VideoAnswer:
    metadata = dict(event.metadata or {})
    return VideoAnswer(
        response=event.text or "",
        emotion=metadata.pop("emotion", None),
        confidence=metadata.pop("confidence", None),
        label_probs=metadata.pop("label_probs", None),
        duration=duration,
        metadata=metadata,
    )


@protected.post("/api/predict/", response_model=PredictResponse, summary="Gradio-style prediction")
async def predict(body: PredictRequest, engine: EngineDep, settings: SettingsDep) -> PredictResponse:
    started = time.perf_counter()
    video_path, prompt = body.data
    question = checked_question(prompt, settings)
    video = await read_media(video_path, settings)
    event = await answer(engine, video, video_path, question, body, settings)
    result = video_answer(event, time.perf_counter() - started)
    metadata = dict(result.metadata, emotion=result.emotion, confidence=result.confidence, label_probs=result.label_probs)
    return PredictResponse(data=[result.response], duration=round(result.duration, 4), metadata=metadata)


@protected.post("/process_video", response_model=VideoAnswer, summary="FastAPI-style video question")
async def process_video(body: VideoQuestion, engine: EngineDep, settings: SettingsDep) -> VideoAnswer:
    started = time.perf_counter()
    question = checked_question(body.question, settings)
    video = await read_media(body.video_path, settings)
    return video_answer(await answer(engine, video, body.video_path, question, body, settings), time.perf_counter() - started)


@protected.post("/api/v1/emotion-llama/analyze", response_model=VideoAnswer, summary="Upload a video and ask about it")
async def analyze_upload(
    engine: EngineDep,
    settings: SettingsDep,
    video_file: Annotated[UploadFile, File(description="MP4, AVI, MOV, MKV or WebM")],
    question: Annotated[str, Form(min_length=1, max_length=EMOTION_LLAMA.max_prompt_chars, pattern=r"\S",
                                  description="the prompt, e.g. '[emotion] What is the emotion expressed in this video?'")],
    # a form field is absent or a value, never null: typed without None so that the schema says so
    temperature: Annotated[float, Form(ge=0.0, le=2.0)] = None,
    max_new_tokens: Annotated[int, Form(ge=1, le=EMOTION_LLAMA.max_new_tokens_limit)] = None,
    seed: Annotated[int, Form(ge=0, lt=SEED_LIMIT)] = None,
) -> VideoAnswer:
    started = time.perf_counter()
    question = checked_question(question, settings)
    upload = await read_upload(video_file, settings.emotion_llama.max_video_bytes, "video_file")
    sampling = Sampling(temperature=temperature, max_new_tokens=max_new_tokens, seed=seed)
    event = await answer(engine, upload, video_file.filename or "video_file", question, sampling, settings)
    return video_answer(event, time.perf_counter() - started)


@protected.post("/process_video/stream", summary="The /process_video job as server-sent events", response_class=StreamingResponse,
                responses=event_stream_responses("`token` events {delta}, then `done` (the /process_video body) or `error`"))
async def process_video_stream(body: VideoQuestion, request: Request, engine: EngineDep, settings: SettingsDep) -> StreamingResponse:
    started = time.perf_counter()
    question = checked_question(body.question, settings)
    video = await read_media(body.video_path, settings)
    stream = engine.stream(video, question, body.as_inputs(), settings.emotion_llama.generation_timeout_s)
    try:  # what fails before the first token (a video the pipeline cannot decode, a busy model) keeps its status code
        first = await anext(stream)
    except BadRequest as exc:
        raise naming_the_video(exc, body.video_path) from None

    async def events() -> AsyncIterator[bytes]:
        try:
            event = first
            while True:
                if await request.is_disconnected():
                    return  # closing the stream cancels the Triton request
                if event.final:
                    yield sse_event("done", video_answer(event, time.perf_counter() - started).model_dump())
                    return
                yield sse_event("token", {"delta": event.delta})
                event = await anext(stream)
        except StopAsyncIteration:
            return
        except ApiError as exc:
            yield sse_event("error", error_body(request, exc.status_code, exc.detail, exc.details))
        finally:
            await stream.aclose()

    return event_stream(events())
