"""LAM-A2E: whole-file inference and stateful streaming sessions (``lam-a2e-api.zh.md``)."""

from __future__ import annotations

import time
from typing import Annotated, Literal

import anyio
import numpy as np
from fastapi import APIRouter, Depends, File, Form, Request, UploadFile

from emoserve.audio import (
    DOCUMENTED_PCM,
    MAX_CHANNELS,
    MAX_SOURCE_RATE,
    MIN_SOURCE_RATE,
    RAW_ENCODINGS,
    AudioDecodeError,
    AudioTooLong,
    RawPcm,
    container_format,
    decode_audio,
)
from emoserve.constants import ARKIT_BLENDSHAPE_NAMES, FPS, NUM_BLENDSHAPES, NUM_IDENTITIES, SAMPLE_RATE
from emoserve.lam_a2e.defaults import LAM_A2E
from frontend.deps import SettingsDep, client_key, engine_from_state, read_upload, require_api_key
from frontend.errors import BadRequest, DetailError, ServiceUnavailable, documented_errors
from frontend.lam_a2e.engine import EngineDep
from frontend.lam_a2e.schemas import (
    Frame,
    Health,
    InferMetadata,
    InferResponse,
    ServiceInfo,
    StreamChunkResponse,
    StreamCloseResponse,
    StreamInitRequest,
    StreamInitResponse,
    StreamMetadata,
)
from frontend.lam_a2e.sessions import SessionRegistry

SERVICE_NAME = "LAM-A2E API"
SERVICE_VERSION = "1.0.0"

public = APIRouter(tags=["LAM-A2E"], responses=documented_errors(DetailError))
protected = APIRouter(prefix="/api", tags=["LAM-A2E"], dependencies=[Depends(require_api_key)], responses=documented_errors(DetailError))


async def get_sessions(request: Request) -> SessionRegistry:
    return engine_from_state(request, "sessions")


SessionsDep = Annotated[SessionRegistry, Depends(get_sessions)]

IdIdx = Annotated[int, Form(ge=0, le=NUM_IDENTITIES - 1, description="identity / style index")]


def frames_payload(frames: np.ndarray) -> list[Frame]:
    """Frames with ``time`` from the start of this response, as the documented server does."""
    return [Frame(weights=row.tolist(), time=i / FPS, rotation=[]) for i, row in enumerate(np.asarray(frames, dtype=np.float64))]


class RawPcmFields:
    """The optional form fields that describe a headerless upload (none given: the document's s16le 16 kHz mono)."""

    def __init__(
        self,
        sample_rate: Annotated[int | None, Form(ge=MIN_SOURCE_RATE, le=MAX_SOURCE_RATE,
                                                description=f"raw PCM only: samples per second (default {SAMPLE_RATE})")] = None,
        encoding: Annotated[Literal[tuple(RAW_ENCODINGS)] | None, Form(
            description=f"raw PCM only: sample format (default {DOCUMENTED_PCM.encoding})")] = None,
        channels: Annotated[int | None, Form(ge=1, le=MAX_CHANNELS, description="raw PCM only: interleaved channels (default 1)")] = None,
    ):
        self.given = [name for name, value in (("sample_rate", sample_rate), ("encoding", encoding), ("channels", channels))
                      if value is not None]
        self.pcm = RawPcm(encoding or DOCUMENTED_PCM.encoding, sample_rate or DOCUMENTED_PCM.sample_rate,
                          channels or DOCUMENTED_PCM.channels)


RawPcmDep = Annotated[RawPcmFields, Depends()]

HEADERLESS_RULE = (f"bytes in no known container (WAV, FLAC, OGG, MP3, M4A ...) are read as raw PCM, "
                   f"{DOCUMENTED_PCM.describe()} unless sample_rate/encoding/channels say otherwise")


async def decode_upload(data: bytes, vocals_only: bool, max_seconds: float, what: str, raw: RawPcmFields) -> np.ndarray:
    """Decoded 16 kHz mono; the length limit is checked from the header and while decoding, never after."""
    container = container_format(data)
    if container is not None and raw.given:
        raise BadRequest(f"{what} is a {container} file: {', '.join(raw.given)} describe raw PCM only; "
                         f"drop them or send the bare samples")
    try:
        audio = await anyio.to_thread.run_sync(lambda: decode_audio(data, SAMPLE_RATE, vocals_only, max_seconds, headerless=raw.pcm))
    except AudioTooLong:
        raise BadRequest(f"{what} is longer than the {max_seconds:g} s limit") from None
    except AudioDecodeError as exc:
        rule = "" if container is not None else f" ({HEADERLESS_RULE})"
        raise BadRequest(f"{what} is not valid audio: {exc}{rule}") from None
    if audio.size > max_seconds * SAMPLE_RATE:  # resampling rounds: the limit holds for what the model gets
        raise BadRequest(f"{what} is longer than the {max_seconds:g} s limit")
    return audio


@public.get("/", response_model=ServiceInfo)
async def service_info() -> ServiceInfo:
    return ServiceInfo(
        service=SERVICE_NAME,
        version=SERVICE_VERSION,
        endpoints={
            "infer": "/api/infer",
            "stream_init": "/api/infer_stream_init",
            "stream_chunk": "/api/infer_stream_chunk",
            "stream_close": "/api/infer_stream_close/{session_id}",
            "health": "/api/health",
        },
    )


@public.get("/api/health", response_model=Health)
async def health(engine: EngineDep, sessions: SessionsDep) -> Health:
    ready = await engine.ready()
    return Health(
        status="healthy" if ready else "not_ready",
        model_loaded=ready,
        gpu_available=await engine.gpu_available() if ready else False,
        sessions=len(sessions),
    )


@protected.post("/infer", response_model=InferResponse)
async def infer(
    engine: EngineDep,
    settings: SettingsDep,
    raw: RawPcmDep,
    audio_file: Annotated[UploadFile, File(description="audio file: WAV, MP3, OGG, FLAC, M4A (any rate and channels), "
                                                       "or raw PCM samples (see sample_rate/encoding/channels)")],
    id_idx: IdIdx = 0,
    ex_vol: Annotated[bool, Form(description="extract the vocal track first (DSP, see README)")] = False,
    movement_smooth: Annotated[bool, Form(description="damp mouth movement during silence")] = False,
    brow_movement: Annotated[bool, Form(description="add brow movement on loud passages")] = False,
) -> InferResponse:
    data = await read_upload(audio_file, settings.lam_a2e.max_upload_bytes, "audio_file")
    audio = await decode_upload(data, ex_vol, settings.lam_a2e.max_audio_seconds, "audio_file", raw)
    if audio.size < LAM_A2E.min_audio_samples:
        raise BadRequest(f"audio_file is too short ({audio.size / SAMPLE_RATE * 1000:.1f} ms; at least "
                         f"{LAM_A2E.min_audio_samples / SAMPLE_RATE * 1000:.0f} ms)")
    started = time.perf_counter()
    frames = await engine.infer_whole_audio(audio, id_idx, movement_smooth, brow_movement)
    elapsed = time.perf_counter() - started
    weights = await engine.weights()
    return InferResponse(
        names=list(ARKIT_BLENDSHAPE_NAMES),
        metadata=InferMetadata(fps=float(FPS), frame_count=len(frames), blendshape_count=NUM_BLENDSHAPES, inference_time=elapsed,
                               weights=weights),
        frames=frames_payload(frames),
    )


@protected.post("/infer_stream_init", response_model=StreamInitResponse)
async def stream_init(request: Request, sessions: SessionsDep, engine: EngineDep,
                      body: StreamInitRequest | None = None) -> StreamInitResponse:
    body = body or StreamInitRequest()
    if not await engine.ready():  # a session that could not take a single chunk is not opened
        raise ServiceUnavailable("LAM-A2E is not ready to serve (the inference server or a model is down); retry shortly")
    session = await sessions.create(body.id_idx, body.movement_smooth, body.brow_movement, client=client_key(request))
    return StreamInitResponse(session_id=session.session_id, message="Streaming session initialized", id_idx=session.id_idx)


@protected.post("/infer_stream_chunk", response_model=StreamChunkResponse)
async def stream_chunk(
    request: Request,
    sessions: SessionsDep,
    settings: SettingsDep,
    raw: RawPcmDep,
    session_id: Annotated[str, Form(min_length=1, description="from /api/infer_stream_init")],
    audio_chunk: Annotated[UploadFile, File(description="about 1 s of audio (0.5-2 s recommended): an audio file, or raw "
                                                        "PCM samples such as a microphone's s16le 16 kHz mono frames")],
) -> StreamChunkResponse:
    sessions.get(session_id, adopt=False)  # 404 before reading the upload
    data = await read_upload(audio_chunk, settings.lam_a2e.max_chunk_bytes, "audio_chunk")
    audio = await decode_upload(data, False, settings.lam_a2e.max_chunk_seconds, "audio_chunk", raw)
    session, output, elapsed = await sessions.chunk(session_id, audio, client=client_key(request))
    weights = await session.replica.engine.weights()
    return StreamChunkResponse(
        names=list(ARKIT_BLENDSHAPE_NAMES),
        metadata=StreamMetadata(
            fps=float(FPS),
            frame_count=len(output.frames),
            blendshape_count=NUM_BLENDSHAPES,
            inference_time=elapsed,
            weights=weights,
            session_id=session.session_id,
            chunk_index=output.chunk_index,
            start_time=output.first_frame_index / FPS,
        ),
        frames=frames_payload(output.frames),
    )


@protected.delete("/infer_stream_close/{session_id}", response_model=StreamCloseResponse)
async def stream_close(session_id: str, sessions: SessionsDep) -> StreamCloseResponse:
    await sessions.close(session_id)
    return StreamCloseResponse(message="Session closed", session_id=session_id)
